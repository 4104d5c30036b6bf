//! Credentials, token resolution and the token checks: one test per reason
//! code, each also showing the refused request never reached Confluence.

use hyper::Method;
use tokengate::NewToken;
use tokengate::{Scope, TokenAuth};

use crate::common::{Gateway, basic, get, send};

const SPACE: &str = "/rest/api/space";

/// Asserts a refusal with `status` and `reason` that Confluence never saw.
async fn assert_refused(gw: &Gateway, headers: &[(&str, &str)], path: &str, status: u16, reason: &str) {
    let before = gw.upstream.count();
    let reply = get(&gw.url(path), headers).await;
    assert_eq!(reply.status.as_u16(), status, "{:?}", reply.body);
    assert_eq!(reply.reason(), reason);
    assert_eq!(reply.json()["source"], "tokengate");
    assert_eq!(reply.json()["statusCode"], status);
    assert_eq!(gw.upstream.count(), before, "a refused request reached Confluence");
}

#[tokio::test]
async fn bound_token_with_basic_is_forwarded_as_its_user_without_the_token() {
    let gw = Gateway::start().await;
    let token = gw.token_for("alice").await;
    let reply = get(&gw.url(SPACE), &[("authorization", &basic("Alice", &token))]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["x-upstream"], "fake-confluence");
    let seen = gw.upstream.last();
    assert_eq!(seen.header("x-forwarded-user"), Some("alice"));
    assert_eq!(seen.header("authorization"), None);
    assert!(!seen.contains(&token) && !seen.contains(&token[4..]));
}

#[tokio::test]
async fn unbound_token_takes_the_basic_user_name() {
    let gw = Gateway::start().await;
    let new = NewToken {
        label: "shared".into(),
        ..NewToken::default()
    };
    let token = gw.create_token(new).await.value;
    let reply = get(&gw.url(SPACE), &[("authorization", &basic("bob@example.com", &token))]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(gw.upstream.last().header("x-forwarded-user"), Some("bob@example.com"));
    assert!(!gw.upstream.last().contains(&token));

    assert_refused(
        &gw,
        &[("authorization", &basic("", &token))],
        SPACE,
        401,
        "user_mismatch",
    )
    .await;
    let gw = Gateway::start_with(|c| c.token_auth = TokenAuth::Both).await;
    let token = gw
        .create_token(NewToken {
            label: "shared".into(),
            ..NewToken::default()
        })
        .await
        .value;
    assert_refused(
        &gw,
        &[("authorization", &format!("Bearer {token}"))],
        SPACE,
        401,
        "unbound_bearer",
    )
    .await;
}

#[tokio::test]
async fn bearer_works_only_when_configured() {
    let gw = Gateway::start().await;
    let token = gw.token_for("alice").await;
    let bearer = format!("Bearer {token}");
    assert_refused(&gw, &[("authorization", &bearer)], SPACE, 401, "scheme_not_allowed").await;

    let gw = Gateway::start_with(|c| c.token_auth = TokenAuth::Bearer).await;
    let token = gw.token_for("alice").await;
    let reply = get(&gw.url(SPACE), &[("authorization", &format!("bearer {token}"))]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(gw.upstream.last().header("x-forwarded-user"), Some("alice"));
    assert_refused(
        &gw,
        &[("authorization", &basic("alice", &token))],
        SPACE,
        401,
        "scheme_not_allowed",
    )
    .await;
}

#[tokio::test]
async fn a_401_names_the_accepted_schemes() {
    let gw = Gateway::start_with(|c| c.token_auth = TokenAuth::Both).await;
    let reply = get(
        &gw.url(SPACE),
        &[("authorization", "Bearer tgw_unknown_unknown_unknown_unknown")],
    )
    .await;
    let schemes: Vec<_> = reply.headers.get_all("www-authenticate").iter().collect();
    assert_eq!(schemes, ["Basic realm=\"tokengate\"", "Bearer realm=\"tokengate\""]);
}

#[tokio::test]
async fn user_mismatch_for_a_bound_token() {
    let gw = Gateway::start().await;
    let token = gw.token_for("alice").await;
    assert_refused(
        &gw,
        &[("authorization", &basic("mallory", &token))],
        SPACE,
        401,
        "user_mismatch",
    )
    .await;
}

#[tokio::test]
async fn invalid_tokens_are_refused_never_passed_through() {
    let gw = Gateway::start().await;
    let token = gw.token_for("alice").await;
    let mut mistyped = token.clone();
    mistyped.pop();
    mistyped.push(if token.ends_with('x') { 'y' } else { 'x' });
    for secret in [
        mistyped.as_str(),
        "tgw_",
        "tgw_short",
        "tgw_zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
    ] {
        assert_refused(
            &gw,
            &[("authorization", &basic("alice", secret))],
            SPACE,
            401,
            "invalid_token",
        )
        .await;
    }
    let reply = get(&gw.url(SPACE), &[("authorization", &basic("alice", &mistyped))]).await;
    assert_eq!(reply.json()["message"], "invalid credentials");
}

#[tokio::test]
async fn malformed_credentials_are_400() {
    let gw = Gateway::start().await;
    let not_utf8 = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [0xff, b':', b'x'])
    );
    for value in ["Basic %%%", "Basic YWxpY2U=", not_utf8.as_str()] {
        assert_refused(&gw, &[("authorization", value)], SPACE, 400, "bad_credentials").await;
    }
    let two = [("authorization", "Basic YTpi"), ("authorization", "Basic YTpj")];
    assert_refused(&gw, &two, SPACE, 400, "bad_credentials").await;
}

#[tokio::test]
async fn passwords_and_anonymous_pass_through_untouched() {
    let gw = Gateway::start().await;
    let password = basic("alice", "hunter2");
    let reply = get(&gw.url(SPACE), &[("authorization", &password)]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(gw.upstream.last().header("authorization"), Some(password.as_str()));
    assert_eq!(gw.upstream.last().header("x-forwarded-user"), None);

    let pat = "Bearer NjQ2MDc1NDk0OTQ6confluence-pat";
    assert_eq!(get(&gw.url(SPACE), &[("authorization", pat)]).await.status, 200);
    assert_eq!(gw.upstream.last().header("authorization"), Some(pat));

    assert_eq!(get(&gw.url(SPACE), &[]).await.status, 200);
    assert_eq!(gw.upstream.last().header("authorization"), None);

    // Confluence's own refusals come back untouched.
    let reply = get(&gw.url("/confluence-401"), &[("authorization", &password)]).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["message"], "from confluence");
    assert!(reply.headers.get("x-tokengate-reason").is_none());
}

#[tokio::test]
async fn passthrough_off_and_anonymous_deny() {
    let gw = Gateway::start_with(|c| {
        c.passthrough = false;
        c.allow_anonymous = false;
    })
    .await;
    assert_refused(
        &gw,
        &[("authorization", &basic("alice", "hunter2"))],
        SPACE,
        401,
        "invalid_token",
    )
    .await;
    assert_refused(&gw, &[], SPACE, 401, "credentials_required").await;
    let token = gw.token_for("alice").await;
    assert_eq!(
        get(&gw.url(SPACE), &[("authorization", &basic("alice", &token))])
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn scope_limits_where_tokens_work() {
    let gw = Gateway::start().await;
    let token = gw.token_for("alice").await;
    let auth = basic("alice", &token);
    assert_refused(
        &gw,
        &[("authorization", &auth)],
        "/admin/users.action",
        403,
        "out_of_scope",
    )
    .await;
    assert_refused(&gw, &[("authorization", &auth)], "/rest", 403, "out_of_scope").await;

    let gw = Gateway::start_with(|c| c.scope = Scope::Extender).await;
    let token = gw.token_for("alice").await;
    let auth = basic("alice", &token);
    assert_refused(&gw, &[("authorization", &auth)], SPACE, 403, "out_of_scope").await;
    assert_eq!(
        get(&gw.url("/rest/extender/1.0/x"), &[("authorization", &auth)])
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn ip_allowlist_uses_the_client_ip() {
    let gw = Gateway::start().await;
    let new = |ip: &str| NewToken {
        label: "ip".into(),
        user: Some("alice".into()),
        ip: Some(ip.into()),
        ..NewToken::default()
    };
    let far = gw.create_token(new("10.0.0.0/8, 2001:db8::/32")).await.value;
    assert_refused(
        &gw,
        &[("authorization", &basic("alice", &far))],
        SPACE,
        403,
        "ip_not_allowed",
    )
    .await;
    let near = gw.create_token(new("127.0.0.1")).await.value;
    assert_eq!(
        get(&gw.url(SPACE), &[("authorization", &basic("alice", &near))])
            .await
            .status,
        200
    );
    // An untrusted peer cannot claim another address.
    let spoof = [
        ("authorization", basic("alice", &far)),
        ("x-forwarded-for", "10.1.1.1".into()),
    ];
    let spoof: Vec<_> = spoof.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_refused(&gw, &spoof, SPACE, 403, "ip_not_allowed").await;
}

#[tokio::test]
async fn trusted_proxies_pass_on_the_client_ip() {
    let gw = Gateway::start_with(|c| c.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()]).await;
    let new = NewToken {
        label: "ip".into(),
        user: Some("alice".into()),
        ip: Some("10.0.0.0/8".into()),
        ..NewToken::default()
    };
    let token = gw.create_token(new).await.value;
    let auth = basic("alice", &token);
    let via_proxy = [
        ("authorization", auth.as_str()),
        ("x-forwarded-for", "6.6.6.6, 10.1.1.1"),
    ];
    assert_eq!(get(&gw.url(SPACE), &via_proxy).await.status, 200);
    let outsider = [
        ("authorization", auth.as_str()),
        ("x-forwarded-for", "10.1.1.1, 6.6.6.6"),
    ];
    assert_refused(&gw, &outsider, SPACE, 403, "ip_not_allowed").await;
}

#[tokio::test]
async fn spoofed_identity_headers_never_reach_confluence() {
    let gw = Gateway::start_with(|c| c.upstream_secret = Some("s3cret".parse().unwrap())).await;
    let token = gw.token_for("alice").await;
    let spoofs = [
        ("X-Forwarded-User", "admin"),
        ("x_forwarded_user", "admin"),
        ("X_FORWARDED-USER", "admin"),
        ("x-tokengate-secret", "guess"),
        ("X_Tokengate_Secret", "guess"),
    ];
    let token_auth = basic("alice", &token);
    let password = basic("bob", "pw");
    for auth in [Some(token_auth.as_str()), Some(password.as_str()), None] {
        let mut headers = spoofs.to_vec();
        headers.extend(auth.map(|a| ("authorization", a)));
        assert_eq!(get(&gw.url(SPACE), &headers).await.status, 200);
        let seen = gw.upstream.last();
        let users: Vec<_> = seen
            .headers
            .iter()
            .filter(|(n, _)| n.as_str().replace('_', "-") == "x-forwarded-user")
            .map(|(_, v)| v.to_str().unwrap())
            .collect();
        let expected: &[&str] = if auth == Some(token_auth.as_str()) {
            &["alice"]
        } else {
            &[]
        };
        assert_eq!(users, expected, "auth {auth:?}");
        assert!(!seen.contains("guess") && !seen.contains("admin"));
        assert_eq!(seen.header("x-tokengate-secret"), Some("s3cret"));
    }
}

#[tokio::test]
async fn bad_paths_are_refused_and_dot_segments_forwarded_resolved() {
    let gw = Gateway::start().await;
    for path in [
        "/rest/%2e%2e/admin",
        "/rest/api%2Fspace",
        "/rest/api%5Cx",
        "/rest/x%00",
        "/rest/../../etc",
        "/rest/%zz",
    ] {
        assert_refused(&gw, &[], path, 400, "bad_path").await;
    }
    let token = gw.token_for("alice").await;
    let auth = basic("alice", &token);
    assert_eq!(
        get(&gw.url("/rest/api/x/../space?q=%2F"), &[("authorization", &auth)])
            .await
            .status,
        200
    );
    assert_eq!(gw.upstream.last().target, "/rest/api/space?q=%2F");
    // A token request must not be checked as one path and routed by Tomcat as another.
    assert_refused(
        &gw,
        &[("authorization", &auth)],
        "/rest/api/space/..;/admin",
        400,
        "bad_path",
    )
    .await;
    // The same path without a token is Confluence's business.
    assert_eq!(get(&gw.url("/x/..;/y;jsessionid=1"), &[]).await.status, 200);
}

#[tokio::test]
async fn upstream_failures_are_502_and_504() {
    let gw = Gateway::start_with(|c| {
        c.upstream = tokengate::Upstream {
            https: false,
            authority: "127.0.0.1:1".parse().unwrap(),
        };
    })
    .await;
    let reply = get(&gw.url(SPACE), &[]).await;
    assert_eq!(
        (reply.status.as_u16(), reply.reason()),
        (502, "upstream_unavailable".into())
    );

    let gw = Gateway::start_with(|c| c.upstream_timeout = std::time::Duration::from_millis(300)).await;
    let reply = get(&gw.url("/slow"), &[]).await;
    assert_eq!(
        (reply.status.as_u16(), reply.reason()),
        (504, "upstream_timeout".into())
    );
    assert_eq!(get(&gw.url(SPACE), &[]).await.status, 200, "the gateway keeps serving");
}

#[tokio::test]
async fn internal_store_failure_fails_closed() {
    let gw = Gateway::start().await;
    let token = gw.token_for("alice").await;
    gw.app.store.close().await;
    let reply = send(
        Method::GET,
        &gw.url(SPACE),
        &[("authorization", &basic("alice", &token))],
        "",
    )
    .await;
    assert_eq!((reply.status.as_u16(), reply.reason()), (500, "internal_error".into()));
    assert_eq!(gw.upstream.count(), 0);
    assert!(!String::from_utf8_lossy(&reply.body).contains("sqlx"));
}

#[tokio::test]
async fn a_token_in_any_other_form_never_reaches_confluence() {
    let gw = Gateway::start_with(|c| c.token_auth = TokenAuth::Both).await;
    let token = gw.token_for("alice").await;
    let stray = [
        token.clone(),
        format!("Token {token}"),
        format!("Bearer x{token}"),
        basic(&token, "password"),
        basic("alice", &format!("pw{token}")),
    ];
    for value in &stray {
        assert_refused(&gw, &[("authorization", value)], SPACE, 400, "bad_credentials").await;
    }
    // A tab between scheme and token is read as the separator it is.
    let reply = get(&gw.url(SPACE), &[("authorization", &format!("Bearer\t{token}"))]).await;
    assert_eq!(reply.status, 200);
    assert!(gw.upstream.requests().iter().all(|seen| !seen.contains(&token[4..])));
}
