//! Token lifecycle through the running gateway: the verified cache, argon2
//! run once under concurrency, expiry with a controlled clock, deletion
//! (in-process and by another process), and creation validation.

use std::time::{Duration, Instant};

use tokengate::DAY_MS;
use tokengate::{Actor, NewToken, TokenError};
use tokengate::{SqliteStore, TokenStore};

use crate::common::{Gateway, basic, get};

const SPACE: &str = "/rest/api/space";

#[tokio::test]
async fn fifty_concurrent_first_uses_run_argon2_once() {
    let gw = Gateway::start().await;
    let token = gw.token_for("alice").await;
    let metrics = &gw.app.metrics;
    let before = metrics.argon2_checks.get();
    let auth = basic("alice", &token);
    let url = gw.url(SPACE);
    let requests = (0..50).map(|_| {
        let (auth, url) = (auth.clone(), url.clone());
        tokio::spawn(async move { get(&url, &[("authorization", &auth)]).await.status })
    });
    for request in requests.collect::<Vec<_>>() {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert_eq!(metrics.argon2_checks.get() - before, 1);
    assert_eq!(gw.upstream.count(), 50);
    // The warm path stays warm.
    assert_eq!(get(&url, &[("authorization", &auth)]).await.status, 200);
    assert_eq!(metrics.argon2_checks.get() - before, 1);
}

#[tokio::test]
async fn unknown_lookup_prefixes_cost_no_argon2() {
    let gw = Gateway::start().await;
    gw.token_for("alice").await;
    let before = gw.app.metrics.argon2_checks.get();
    let secret = "tgw_nosuchprefix_0123456789abcdefghijklmnop";
    assert_eq!(
        get(&gw.url(SPACE), &[("authorization", &basic("a", secret))])
            .await
            .status,
        401
    );
    assert_eq!(gw.app.metrics.argon2_checks.get(), before);
}

#[tokio::test]
async fn an_expired_token_is_refused_even_when_cached() {
    let gw = Gateway::start().await;
    let new = NewToken {
        label: "short-lived".into(),
        user: Some("alice".into()),
        days_until_expiry: Some(2),
        ..NewToken::default()
    };
    let created = gw.create_token(new).await;
    assert_eq!(created.record.valid_until, Some(created.record.created_at + 2 * DAY_MS));
    let auth = basic("alice", &created.value);
    assert_eq!(get(&gw.url(SPACE), &[("authorization", &auth)]).await.status, 200);
    gw.clock.advance_ms(2 * DAY_MS - 1);
    assert_eq!(get(&gw.url(SPACE), &[("authorization", &auth)]).await.status, 200);
    gw.clock.advance_ms(1);
    let reply = get(&gw.url(SPACE), &[("authorization", &auth)]).await;
    assert_eq!((reply.status.as_u16(), reply.reason()), (401, "token_expired".into()));
    assert!(reply.json()["message"].as_str().unwrap().contains("short-lived"));
    assert_eq!(gw.upstream.count(), 2);
}

#[tokio::test]
async fn a_deleted_token_is_refused_at_once_even_right_after_use() {
    let gw = Gateway::start().await;
    let created = gw
        .create_token(NewToken {
            label: "doomed".into(),
            user: Some("alice".into()),
            ..NewToken::default()
        })
        .await;
    let auth = basic("alice", &created.value);
    assert_eq!(get(&gw.url(SPACE), &[("authorization", &auth)]).await.status, 200);
    gw.app.tokens.delete(&created.record.id, &Actor::cli()).await.unwrap();
    let reply = get(&gw.url(SPACE), &[("authorization", &auth)]).await;
    assert_eq!((reply.status.as_u16(), reply.reason()), (401, "invalid_token".into()));
    assert_eq!(gw.upstream.count(), 1);
    assert!(matches!(
        gw.app.tokens.delete(&created.record.id, &Actor::cli()).await,
        Err(TokenError::NotFound(_))
    ));
}

#[tokio::test]
async fn a_token_deleted_by_another_process_is_refused_within_a_second() {
    let gw = Gateway::start().await;
    let created = gw
        .create_token(NewToken {
            label: "revoked-elsewhere".into(),
            user: Some("alice".into()),
            ..NewToken::default()
        })
        .await;
    let auth = basic("alice", &created.value);
    assert_eq!(get(&gw.url(SPACE), &[("authorization", &auth)]).await.status, 200);
    // A second handle on the same database stands in for the CLI.
    let other = SqliteStore::open(&gw.app.config.database_url).await.unwrap();
    assert!(other.delete_token(&created.record.id, 0).await.unwrap().is_some());
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let status = get(&gw.url(SPACE), &[("authorization", &auth)]).await.status;
        if status == 401 {
            break;
        }
        assert!(Instant::now() < deadline, "still accepted after 1 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn deleting_a_users_tokens_revokes_them_all() {
    let gw = Gateway::start().await;
    let a = gw.token_for("carol").await;
    let b = gw.token_for("Carol").await;
    let other = gw.token_for("dave").await;
    for (user, token) in [("carol", &a), ("carol", &b), ("dave", &other)] {
        assert_eq!(
            get(&gw.url(SPACE), &[("authorization", &basic(user, token))])
                .await
                .status,
            200
        );
    }
    assert_eq!(
        gw.app.tokens.delete_user("CAROL", &Actor::cli()).await.unwrap().len(),
        2
    );
    for token in [&a, &b] {
        assert_eq!(
            get(&gw.url(SPACE), &[("authorization", &basic("carol", token))])
                .await
                .status,
            401
        );
    }
    assert_eq!(
        get(&gw.url(SPACE), &[("authorization", &basic("dave", &other))])
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn custom_values_are_validated_and_unique() {
    let gw = Gateway::start().await;
    let custom = |value: &str| NewToken {
        label: "custom".into(),
        token: Some(value.into()),
        ..NewToken::default()
    };
    let value = "tgw_my-own-value-that-is-long-enough";
    let created = gw.app.tokens.create(custom(value), &Actor::cli()).await.unwrap();
    assert_eq!(created.value, value);
    assert!(matches!(
        gw.app.tokens.create(custom(value), &Actor::cli()).await,
        Err(TokenError::Duplicate)
    ));
    for bad in [
        "tgw_short",
        "abc_my-own-value-that-is-long-enough",
        "tgw_my own value that is long enough",
    ] {
        let err = gw.app.tokens.create(custom(bad), &Actor::cli()).await.err().unwrap();
        assert!(
            matches!(err, TokenError::Invalid { field: "token", .. }),
            "{bad}: {err:?}"
        );
    }
    assert_eq!(
        get(&gw.url(SPACE), &[("authorization", &basic("erin", value))])
            .await
            .status,
        200
    );
    assert_eq!(gw.upstream.last().header("x-forwarded-user"), Some("erin"));
}

#[tokio::test]
async fn expiry_respects_the_configured_maximum() {
    let gw = Gateway::start_with(|c| c.max_days_until_expiry = Some(30)).await;
    let new = |days| NewToken {
        label: "x".into(),
        days_until_expiry: days,
        ..NewToken::default()
    };
    let record = gw.app.tokens.create(new(None), &Actor::cli()).await.unwrap().record;
    assert_eq!(record.valid_until, Some(record.created_at + 30 * DAY_MS));
    let record = gw.app.tokens.create(new(Some(0)), &Actor::cli()).await.unwrap().record;
    assert_eq!(record.valid_until, Some(record.created_at + 30 * DAY_MS));
    assert!(gw.app.tokens.create(new(Some(31)), &Actor::cli()).await.is_err());
    assert!(gw.app.tokens.create(new(Some(-1)), &Actor::cli()).await.is_err());
    let record = gw.app.tokens.create(new(Some(7)), &Actor::cli()).await.unwrap().record;
    assert_eq!(record.valid_until, Some(record.created_at + 7 * DAY_MS));
}

#[tokio::test]
async fn tokens_are_stored_hashed_with_the_configured_argon2id_cost() {
    let gw = Gateway::start().await;
    let created = gw
        .create_token(NewToken {
            label: "h".into(),
            ..NewToken::default()
        })
        .await;
    let stored = gw.app.store.token(&created.record.id).await.unwrap().unwrap();
    assert!(stored.token_hash.starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
    assert_eq!(stored.lookup, &created.value[..12]);
    let needle = created.value.as_bytes();
    for file in std::fs::read_dir(gw.dir.path()).unwrap() {
        let raw = std::fs::read(file.unwrap().path()).unwrap();
        assert!(
            !raw.windows(needle.len()).any(|w| w == needle),
            "token value stored in clear"
        );
    }
}
