//! Usage details, the audit log, metrics and readiness (SPEC §6).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use hyper::Method;
use tokengate::{Actor, NewToken};
use tokengate::{AuditEntry, AuditKind, AuditQuery, SqliteStore, TokenStore};
use tokengate::{AuditLog, SettingsChange};
use tokengate::{Clock, DAY_MS};

use crate::common::process::{GatewayProcess, cli};
use crate::common::{FaultyStore, Gateway, basic, get, send};

/// A token limited to GET on spaces; returns (id, Basic header).
async fn limited_token(gw: &Gateway) -> (String, String) {
    let created = gw
        .create_token(NewToken {
            label: "reader".into(),
            user: Some("alice".into()),
            limit_to: Some("[get]/rest/api/space.*".into()),
            ..NewToken::default()
        })
        .await;
    (created.record.id, basic("alice", &created.value))
}

#[tokio::test]
async fn counters_and_audit_entries_after_known_calls() {
    let gw = Gateway::start().await;
    let (id, auth) = limited_token(&gw).await;
    for _ in 0..3 {
        assert_eq!(
            get(
                &gw.url("/rest/api/space?limit=5&os_password=x"),
                &[("authorization", &auth)]
            )
            .await
            .status,
            200
        );
    }
    assert_eq!(
        send(
            Method::DELETE,
            &gw.url("/rest/api/space/X"),
            &[("authorization", &auth)],
            ""
        )
        .await
        .status,
        403
    );
    assert_eq!(get(&gw.url("/admin"), &[("authorization", &auth)]).await.status, 403);
    let bogus = basic("mallory", "tgw_no-such-token-0000000000000000000000");
    assert_eq!(
        get(&gw.url("/rest/api/space"), &[("authorization", &bogus)])
            .await
            .status,
        401
    );
    assert_eq!(
        get(&gw.url("/rest/api/space"), &[("authorization", &basic("bob", "pw"))])
            .await
            .status,
        200
    );
    assert_eq!(get(&gw.url("/rest/api/space"), &[]).await.status, 200);

    let entries = gw.request_audit().await;
    let stored = gw.app.store.token(&id).await.unwrap().unwrap();
    assert_eq!(stored.counter, 3, "only allowed calls count");
    assert_eq!(stored.last_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(stored.last_used_at, Some(gw.clock.now_ms()));

    assert_eq!(entries.len(), 6, "token requests only: {entries:#?}");
    let decisions: Vec<_> = entries
        .iter()
        .map(|e| (e.decision.as_str(), e.reason.as_deref()))
        .collect();
    assert_eq!(
        decisions,
        [
            ("deny", Some("invalid_token")),
            ("deny", Some("out_of_scope")),
            ("deny", Some("rule_mismatch")),
            ("allow", None),
            ("allow", None),
            ("allow", None),
        ]
    );
    let allowed = &entries[5];
    assert_eq!(allowed.kind, AuditKind::Request);
    assert_eq!(allowed.token_id.as_deref(), Some(id.as_str()));
    assert_eq!(allowed.token_label.as_deref(), Some("reader"));
    assert_eq!(allowed.user.as_deref(), Some("alice"));
    assert_eq!(allowed.client_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        (allowed.method.as_deref(), allowed.path.as_deref()),
        (Some("GET"), Some("/rest/api/space"))
    );
    assert_eq!(allowed.status, Some(200));
    assert!(allowed.duration_ms.is_some());
    assert_eq!(entries[0].token_id, None);
    assert_eq!(entries[0].user.as_deref(), Some("mallory"));
    assert_eq!(entries[1].status, Some(403));
}

#[tokio::test]
async fn settings_switch_usage_and_audit_off() {
    let gw = Gateway::start().await;
    let (id, auth) = limited_token(&gw).await;
    let off = SettingsChange {
        usage_details: Some(false),
        audit_log: Some(false),
    };
    gw.app.settings.change(off).await.unwrap();
    assert_eq!(
        get(&gw.url("/rest/api/space"), &[("authorization", &auth)])
            .await
            .status,
        200
    );
    assert!(gw.request_audit().await.is_empty());
    assert_eq!(gw.app.store.token(&id).await.unwrap().unwrap().counter, 0);
    let on = SettingsChange {
        usage_details: Some(true),
        audit_log: Some(true),
    };
    gw.app.settings.change(on).await.unwrap();
    assert_eq!(
        get(&gw.url("/rest/api/space"), &[("authorization", &auth)])
            .await
            .status,
        200
    );
    assert_eq!(gw.request_audit().await.len(), 1);
    assert_eq!(gw.app.store.token(&id).await.unwrap().unwrap().counter, 1);
}

#[tokio::test]
async fn a_tiny_queue_and_a_slow_store_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/a.db", dir.path().display());
    let store = Arc::new(FaultyStore::new(Arc::new(SqliteStore::open(&url).await.unwrap())));
    store.audit_delay_ms.store(20, Ordering::SeqCst);
    let log = AuditLog::start(store.clone() as Arc<dyn TokenStore>, 2);
    let senders: Vec<_> = (0..200)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move {
                log.record(AuditEntry {
                    at: i,
                    kind: AuditKind::Request,
                    token_id: Some(format!("t{i}")),
                    token_label: None,
                    user: None,
                    client_ip: None,
                    method: None,
                    path: None,
                    status: None,
                    decision: "allow".into(),
                    reason: None,
                    duration_ms: None,
                    detail: None,
                })
                .await
            })
        })
        .collect();
    // While the writer is slow, senders are held back by the full queue.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(log.queue_depth() <= 2);
    for sender in senders {
        sender.await.unwrap();
    }
    log.flush().await;
    let query = AuditQuery {
        max_results: 1000,
        ..Default::default()
    };
    assert_eq!(store.list_audit(&query).await.unwrap().total, 200);
}

/// A gateway whose token was verified (and used once) before its store went down.
async fn warm_token_then_store_down() -> (Gateway, Arc<FaultyStore>, String) {
    let (gw, faulty) = Gateway::start_faulty().await;
    let (_, auth) = limited_token(&gw).await;
    assert_eq!(
        get(&gw.url("/rest/api/space"), &[("authorization", &auth)])
            .await
            .status,
        200
    );
    faulty.down.store(true, Ordering::SeqCst);
    (gw, faulty, auth)
}

#[tokio::test]
async fn an_unavailable_store_delays_audit_entries_but_keeps_them() {
    let (gw, faulty, auth) = warm_token_then_store_down().await;
    // Warm token: still served during a short store outage.
    assert_eq!(
        get(&gw.url("/rest/api/space"), &[("authorization", &auth)])
            .await
            .status,
        200
    );
    assert_eq!(get(&gw.url("/tokengate/readyz"), &[]).await.status, 503);
    faulty.down.store(false, Ordering::SeqCst);
    assert_eq!(get(&gw.url("/tokengate/readyz"), &[]).await.status, 200);
    assert_eq!(gw.request_audit().await.len(), 2);
}

#[tokio::test]
async fn old_audit_entries_are_purged() {
    let gw = Gateway::start().await;
    let (_, auth) = limited_token(&gw).await;
    get(&gw.url("/rest/api/space"), &[("authorization", &auth)]).await;
    gw.clock.advance_ms(89 * DAY_MS);
    get(&gw.url("/rest/api/space"), &[("authorization", &auth)]).await;
    gw.app.flush_records().await;
    let cursor = gw.app.store.revocation_cursor().await.unwrap();
    for user in ["x", "y", "z"] {
        let token = gw.token_for(user).await;
        let id = gw.app.store.tokens_by_lookup(&token[..12]).await.unwrap()[0].id.clone();
        gw.app.tokens.delete(&id, &Actor::cli()).await.unwrap();
    }
    gw.clock.advance_ms(2 * DAY_MS);
    gw.app.purge_expired().await;
    let left = gw.request_audit().await;
    assert_eq!(left.len(), 1, "the 91-day-old entry is gone, the 2-day-old one stays");
    let revocations = gw.app.store.revocations_after(cursor).await.unwrap();
    assert_eq!(
        revocations.len(),
        1,
        "revocations older than a day are gone but the newest, the cursor"
    );
}

#[tokio::test]
async fn shutdown_with_the_store_down_still_ends() {
    let (gw, _faulty, _auth) = warm_token_then_store_down().await;
    // The writer retries for ever; shutdown gives up after its grace period
    // (virtual time here, so the test does not wait for it).
    tokio::time::pause();
    tokio::time::timeout(std::time::Duration::from_secs(120), gw.stop())
        .await
        .expect("shutdown hung with the store down");
}

/// `name{labels} value` lines of the exposition, after checking its shape.
fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|line| {
            let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line}"));
            (
                name.to_owned(),
                value.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
            )
        })
        .collect()
}

fn metric(metrics: &[(String, f64)], name: &str) -> f64 {
    metrics.iter().filter(|(n, _)| n == name).map(|(_, v)| v).sum()
}

#[tokio::test]
async fn metrics_parse_and_move() {
    let gw = Gateway::start().await;
    let (_, auth) = limited_token(&gw).await;
    let before = parse_metrics(std::str::from_utf8(&get(&gw.url("/tokengate/metrics"), &[]).await.body).unwrap());
    get(&gw.url("/rest/api/space"), &[("authorization", &auth)]).await;
    get(&gw.url("/rest/api/space"), &[("authorization", &auth)]).await;
    get(&gw.url("/admin"), &[("authorization", &auth)]).await;
    get(&gw.url("/rest/api/space"), &[]).await;
    // The audit writer may still be taking the entries off its queue.
    gw.app.flush_records().await;
    let reply = get(&gw.url("/tokengate/metrics"), &[]).await;
    assert!(
        reply.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let after = parse_metrics(std::str::from_utf8(&reply.body).unwrap());
    let moved = |name: &str| metric(&after, name) - metric(&before, name);
    assert_eq!(
        moved(r#"tokengate_requests_total{decision="allow",reason="none"}"#),
        2.0
    );
    assert_eq!(
        moved(r#"tokengate_requests_total{decision="deny",reason="out_of_scope"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"tokengate_requests_total{decision="passthrough",reason="none"}"#),
        1.0
    );
    assert_eq!(moved("tokengate_verified_cache_hits_total"), 2.0);
    assert_eq!(moved("tokengate_verified_cache_misses_total"), 1.0);
    assert_eq!(moved("tokengate_argon2_checks_total"), 1.0);
    assert!(moved("tokengate_request_duration_seconds_count") >= 4.0);
    assert_eq!(metric(&after, "tokengate_audit_queue_depth"), 0.0);
    assert_eq!(gw.upstream.count(), 3, "metrics are never forwarded");
}

#[tokio::test]
async fn upstream_errors_are_counted() {
    let gw = Gateway::start_with(|c| {
        c.upstream = tokengate::Upstream {
            https: false,
            authority: "127.0.0.1:1".parse().unwrap(),
        }
    })
    .await;
    get(&gw.url("/x"), &[]).await;
    let text = String::from_utf8(get(&gw.url("/tokengate/metrics"), &[]).await.body.to_vec()).unwrap();
    let metrics = parse_metrics(&text);
    assert_eq!(
        metric(&metrics, r#"tokengate_upstream_errors_total{kind="unavailable"}"#),
        1.0
    );
}

/// SIGTERM flushes: every request of a killed gateway is counted and audited.
#[tokio::test]
async fn nothing_is_lost_across_sigterm() {
    let confluence = crate::common::FakeConfluence::start().await;
    let dir = tempfile::tempdir().unwrap();
    let out = cli(
        dir.path(),
        &["token", "create", "--label", "n", "--user", "alice", "--json"],
    );
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (id, value) = (created["id"].as_str().unwrap(), created["token"].as_str().unwrap());
    let mut gateway = GatewayProcess::spawn(dir.path(), &["--upstream", &confluence.origin()], &[]).await;
    let auth = basic("alice", value);
    const N: usize = 40;
    for i in 0..N {
        let path = if i % 4 == 0 { "/admin" } else { "/rest/api/space" };
        get(&gateway.url(path), &[("authorization", &auth)]).await;
    }
    let status = gateway.terminate().await;
    assert!(status.success(), "exit {status}");

    let store = SqliteStore::open(&format!("sqlite://{}/data/tokengate.db", dir.path().display()))
        .await
        .unwrap();
    assert_eq!(store.token(id).await.unwrap().unwrap().counter, (N - N / 4) as i64);
    let query = AuditQuery {
        token_id: Some(id.into()),
        max_results: 1000,
        ..Default::default()
    };
    // Every request, and the CLI's creation of the token.
    assert_eq!(store.list_audit(&query).await.unwrap().total, N as u64 + 1);

    let out = cli(dir.path(), &["audit", "--token", id, "--limit", "5", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(entries.as_array().unwrap().len(), 5);
    assert_eq!(entries[0]["tokenId"], id);
    let out = cli(dir.path(), &["audit", "--user", "alice"]);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().lines().count(),
        1 + 40,
        "a header and the 40 requests that acted as alice"
    );
}

const TOKEN_TOOLS: &str = "/rest/extender/1.0/tokenTools";

fn admin() -> String {
    basic("admin", crate::common::fake_confluence::ADMIN_PASSWORD)
}

#[tokio::test]
async fn management_actions_are_audited_even_with_the_audit_log_off() {
    let gw = Gateway::start().await;
    let url = |path: &str| gw.url(&format!("{TOKEN_TOOLS}{path}"));
    let json = [("authorization", admin()), ("content-type", "application/json".into())];
    let json: Vec<_> = json.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let off = send(Method::POST, &url("/set"), &json, r#"{"auditLog":false}"#).await;
    assert_eq!(off.status, 200, "{:?}", off.body);
    let created = send(
        Method::POST,
        &url("/set"),
        &json,
        r#"{"label":"ci","userName":"alice"}"#,
    )
    .await
    .json();
    let (id, value) = (created["id"].as_str().unwrap(), created["token"].as_str().unwrap());
    assert_eq!(
        get(&gw.url("/rest/api/space"), &[("authorization", &basic("alice", value))])
            .await
            .status,
        200
    );
    let deleted = send(Method::DELETE, &url(&format!("/delete?id={id}")), &json, "").await;
    assert_eq!(deleted.status, 200);

    gw.app.flush_records().await;
    let reply = get(&url("/audit?userName=ADMIN"), &[("authorization", &admin())]).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let page = reply.json();
    assert_eq!(page["status"], "ok");
    assert_eq!(
        page["total"], 3,
        "settings, create and delete; the token call is not audited: {page}"
    );
    let entries = page["entries"].as_array().unwrap();
    let actions: Vec<_> = entries.iter().map(|e| e["decision"].as_str().unwrap()).collect();
    assert_eq!(actions, ["delete", "create", "settings"]);
    for entry in entries {
        assert_eq!(entry["kind"], "management");
        assert_eq!(entry["user"], "admin");
        assert_eq!(entry["clientIp"], "127.0.0.1");
        assert!(entry["detail"].as_str().unwrap().starts_with("via password"));
        assert!(!entry.to_string().contains(value), "a token value in the audit log");
    }
    assert_eq!(entries[1]["tokenId"], id);
    assert_eq!(entries[1]["tokenLabel"], "ci");

    let by_token = get(
        &url(&format!("/audit?tokenId={id}&maxResults=1")),
        &[("authorization", &admin())],
    )
    .await
    .json();
    assert_eq!(
        (by_token["total"].as_u64(), by_token["pages"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(by_token["entries"][0]["decision"], "delete");
    let bad = get(&url("/audit?maxResults=x"), &[("authorization", &admin())]).await;
    assert_eq!(
        (bad.status.as_u16(), bad.json()["field"].clone()),
        (400, "maxResults".into())
    );
    assert_eq!(get(&url("/audit"), &[]).await.status, 401);
}

#[tokio::test]
async fn guessing_admin_tokens_is_throttled_like_any_token() {
    let gw = Gateway::start_with(|c| c.failed_auth_per_minute = 2).await;
    let guess = basic("admin", "tgw_guessguessguessguessguessguessguess");
    let url = gw.url(&format!("{TOKEN_TOOLS}/get"));
    for _ in 0..2 {
        assert_eq!(get(&url, &[("authorization", &guess)]).await.status, 401);
    }
    let reply = get(&url, &[("authorization", &guess)]).await;
    assert_eq!(
        (reply.status.as_u16(), reply.reason()),
        (429, "too_many_failures".into())
    );
    assert!(reply.headers.contains_key("retry-after"));
    // The proxy path shares the same per-client budget.
    let reply = get(&gw.url("/rest/api/space"), &[("authorization", &guess)]).await;
    assert_eq!(reply.status, 429);
}
