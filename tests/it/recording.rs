//! Usage details, the audit log, metrics and readiness (SPEC §6).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use hyper::Method;
use tokengate::clock::{Clock, DAY_MS};
use tokengate::record::{self, AuditLog};
use tokengate::store::{AuditEntry, AuditKind, AuditQuery, Settings, SqliteStore, TokenStore};
use tokengate::tokens::NewToken;

use crate::common::{FaultyStore, Gateway, basic, get, send};

async fn audit(gw: &Gateway) -> Vec<AuditEntry> {
    record::flush(&gw.app).await;
    let query = AuditQuery {
        max_results: 1000,
        ..Default::default()
    };
    gw.app.store.list_audit(&query).await.unwrap().items
}

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

    let stored = gw.app.store.token(&id).await.unwrap().unwrap();
    assert_eq!(stored.counter, 0, "not flushed yet");
    let entries = audit(&gw).await;
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
    gw.app.settings.set(Settings {
        usage_details: false,
        audit_log: false,
    });
    assert_eq!(
        get(&gw.url("/rest/api/space"), &[("authorization", &auth)])
            .await
            .status,
        200
    );
    assert!(audit(&gw).await.is_empty());
    assert_eq!(gw.app.store.token(&id).await.unwrap().unwrap().counter, 0);
    gw.app.settings.set(Settings::default());
    assert_eq!(
        get(&gw.url("/rest/api/space"), &[("authorization", &auth)])
            .await
            .status,
        200
    );
    assert_eq!(audit(&gw).await.len(), 1);
    assert_eq!(gw.app.store.token(&id).await.unwrap().unwrap().counter, 1);
}

#[tokio::test]
async fn a_tiny_queue_and_a_slow_store_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/a.db", dir.path().display());
    let store = Arc::new(FaultyStore::new(Arc::new(SqliteStore::open(&url).await.unwrap())));
    store.audit_delay_ms.store(20, Ordering::SeqCst);
    let log = AuditLog::start(store.clone(), 2);
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

#[tokio::test]
async fn an_unavailable_store_delays_audit_entries_but_keeps_them() {
    let (gw, faulty) = Gateway::start_faulty().await;
    let (_, auth) = limited_token(&gw).await;
    assert_eq!(
        get(&gw.url("/rest/api/space"), &[("authorization", &auth)])
            .await
            .status,
        200
    );
    faulty.down.store(true, Ordering::SeqCst);
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
    assert_eq!(audit(&gw).await.len(), 2);
}

#[tokio::test]
async fn old_audit_entries_are_purged() {
    let gw = Gateway::start().await;
    let (_, auth) = limited_token(&gw).await;
    get(&gw.url("/rest/api/space"), &[("authorization", &auth)]).await;
    gw.clock.advance_ms(89 * DAY_MS);
    get(&gw.url("/rest/api/space"), &[("authorization", &auth)]).await;
    record::flush(&gw.app).await;
    gw.clock.advance_ms(2 * DAY_MS);
    record::purge_audit(&gw.app).await;
    let left = audit(&gw).await;
    assert_eq!(left.len(), 1, "the 91-day-old entry is gone, the 2-day-old one stays");
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
    // The writer may still hold the last entry; the depth is 0 once it is stored.
    gw.app.audit.flush().await;
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
        c.upstream = tokengate::config::Upstream {
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
    let bin = env!("CARGO_BIN_EXE_tokengate");
    let out = std::process::Command::new(bin)
        .args(["token", "create", "--label", "n", "--user", "alice", "--json"])
        .current_dir(dir.path())
        .env("TOKENGATE_ARGON2_MEMORY_KIB", "64")
        .output()
        .unwrap();
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (id, value) = (created["id"].as_str().unwrap(), created["token"].as_str().unwrap());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut server = tokio::process::Command::new(bin)
        .args(["serve", "--listen", &listen, "--upstream", &confluence.origin()])
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(&listen).is_err() {
        assert!(std::time::Instant::now() < deadline, "gateway did not start");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let auth = basic("alice", value);
    const N: usize = 40;
    for i in 0..N {
        let path = if i % 4 == 0 { "/admin" } else { "/rest/api/space" };
        get(&format!("http://{listen}{path}"), &[("authorization", &auth)]).await;
    }
    std::process::Command::new("kill")
        .args(["-TERM", &server.id().unwrap().to_string()])
        .status()
        .unwrap();
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), server.wait())
        .await
        .unwrap()
        .unwrap();
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
    assert_eq!(store.list_audit(&query).await.unwrap().total, N as u64);

    let out = std::process::Command::new(bin)
        .args(["audit", "--token", id, "--limit", "5", "--json"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(entries.as_array().unwrap().len(), 5);
    assert_eq!(entries[0]["tokenId"], id);
    let out = std::process::Command::new(bin)
        .args(["audit", "--user", "alice"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 40);
}
