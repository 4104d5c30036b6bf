//! Nobody fills the disk through the records (SPEC §12): the real binary,
//! flooded with made-up tokens as fast as one client can send them, and
//! the store and the log measured before and after.

use bytes::Bytes;
use http_body_util::Empty;
use hyper::Request;

use crate::common::process::GatewayProcess;
use crate::common::{FakeConfluence, basic};

/// The store's size in bytes, its write-ahead log first written back
/// into the database file (so that the log's old pages do not count).
async fn store_bytes(dir: &std::path::Path) -> u64 {
    use sqlx::Connection;
    let path = dir.join("data/tokengate.db");
    let mut store = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut store)
        .await
        .unwrap();
    store.close().await.unwrap();
    std::fs::metadata(path).unwrap().len()
}

/// `n` requests with made-up tokens, 16 at a time on kept-alive connections.
async fn flood(addr: std::net::SocketAddr, n: usize, path: &str, user: &str) -> Vec<u16> {
    let user = user.to_owned();
    flood_with(addr, n, path, move |secret| ("authorization", basic(&user, secret))).await
}

/// `n` requests to `path`, 16 at a time on kept-alive connections, each with
/// the header `header` makes of a made-up token.
async fn flood_with(
    addr: std::net::SocketAddr,
    n: usize,
    path: &str,
    header: impl Fn(&str) -> (&'static str, String) + Clone + Send + 'static,
) -> Vec<u16> {
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let (path, header) = (path.to_owned(), header.clone());
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(connection);
            let mut statuses = Vec::new();
            for i in (worker..n).step_by(16) {
                let (name, value) = header(&format!("tgw_{i:0>40}"));
                let req = Request::get(path.as_str())
                    .header("host", "wiki")
                    .header(name, value)
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                sender.ready().await.unwrap();
                let response = sender.send_request(req).await.unwrap();
                statuses.push(response.status().as_u16());
            }
            statuses
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.extend(task.await.unwrap());
    }
    statuses
}

/// What one flood of 3 000 made-up tokens did: the statuses, and how much
/// the store (measured closed, its log checkpointed) and the log grew.
struct Flooded {
    refused: usize,
    throttled: usize,
    stored: u64,
    logged: usize,
    logs: String,
}

async fn flood_once(dir: &std::path::Path, origin: &str, path: &str, user: &str) -> Flooded {
    let before = store_bytes(dir).await;
    let mut gateway = GatewayProcess::spawn(dir, &["--upstream", origin], &[]).await;
    let logged_before = gateway.logs().len();
    let statuses = flood(gateway.addr, 3_000, path, user).await;
    assert!(gateway.terminate().await.success());
    let logs = gateway.logs();
    Flooded {
        refused: statuses.iter().filter(|s| **s == 401).count(),
        throttled: statuses.iter().filter(|s| **s == 429).count(),
        stored: store_bytes(dir).await.saturating_sub(before),
        logged: logs.len() - logged_before,
        logs,
    }
}

#[tokio::test]
async fn an_anonymous_flood_of_bad_tokens_grows_the_store_and_the_log_by_a_few_kib() {
    let confluence = FakeConfluence::start().await;
    let dir = tempfile::tempdir().unwrap();
    let origin = confluence.origin();
    // A first start makes the store; its size is measured closed.
    let mut first = GatewayProcess::spawn(dir.path(), &["--upstream", &origin], &[]).await;
    assert!(first.terminate().await.success());

    let plain = flood_once(dir.path(), &origin, "/rest/api/space?limit=25", "alice").await;
    eprintln!(
        "3000 bad tokens: {} refused, {} throttled; the store grew by {} bytes, the log by {} bytes",
        plain.refused, plain.throttled, plain.stored, plain.logged
    );
    // failed_auth_per_minute (20), and those already in flight when the throttle closed.
    assert!((20..=36).contains(&plain.refused), "{} refused 401", plain.refused);
    assert_eq!(plain.refused + plain.throttled, 3_000);
    assert!(plain.stored <= 16 << 10, "the store grew by {} bytes", plain.stored);
    assert!(plain.logged <= 16 << 10, "the log grew by {} bytes", plain.logged);
    // Logged once with its count (twice if the flood straddled a minute's end).
    let counts: Vec<usize> = plain
        .logs
        .split("refused=")
        .skip(1)
        .map(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!((1..=2).contains(&counts.len()), "{counts:?}");
    assert_eq!(
        counts.iter().sum::<usize>(),
        plain.throttled,
        "the throttling is logged with its count"
    );

    // Long paths and user names, as an attacker would send: each entry and
    // log line keeps at most 2 KiB of path and 256 bytes of user name.
    let long_path = format!("/rest/api/content/{}?q={}", "a".repeat(6_000), "b".repeat(6_000));
    let long = flood_once(dir.path(), &origin, &long_path, &"u".repeat(2_000)).await;
    eprintln!(
        "3000 bad tokens with 12 KiB paths: the store grew by {} bytes, the log by {} bytes",
        long.stored, long.logged
    );
    assert!(long.stored <= 192 << 10, "the store grew by {} bytes", long.stored);
    assert!(long.logged <= 160 << 10, "the log grew by {} bytes", long.logged);
    assert!(
        !long.logs.contains(&"a".repeat(2_100)),
        "a log line kept the whole path"
    );
    assert!(
        !long.logs.contains(&"u".repeat(300)),
        "a log line kept the whole user name"
    );

    // What was kept: one entry per refusal before the throttle, one for the
    // throttled minute with its count, every field bounded.
    let out = crate::common::process::cli(dir.path(), &["audit", "--json", "--limit", "100"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = entries.as_array().unwrap();
    let one_by_one = entries.iter().filter(|e| e["reason"] == "invalid_token").count();
    assert_eq!(one_by_one, plain.refused + long.refused, "{entries:#?}");
    // One entry per flood, or two where a flood straddled a minute's end.
    let counted = entries.iter().filter(|e| e["reason"] == "too_many_failures").count();
    assert!((2..=4).contains(&counted), "{entries:#?}");
    for entry in entries {
        assert!(entry["path"].as_str().unwrap_or_default().len() <= 2048);
        assert!(entry["user"].as_str().unwrap_or_default().len() <= 256);
    }
    let cut = entries
        .iter()
        .find(|e| e["path"].as_str().is_some_and(|p| p.len() > 100))
        .unwrap();
    assert!(cut["path"].as_str().unwrap().ends_with('…'), "{cut}");
    assert!(cut["user"].as_str().unwrap().ends_with('…'));
    let counted = entries.iter().find(|e| e["reason"] == "too_many_failures").unwrap();
    assert_eq!(counted["status"], 429);
    assert_eq!(counted["clientIp"], "127.0.0.1");
    let detail = counted["detail"].as_str().unwrap();
    assert!(
        detail.ends_with("requests refused in this minute for too many failed attempts"),
        "{counted}"
    );
    let counts: u64 = entries
        .iter()
        .filter(|e| e["reason"] == "too_many_failures")
        .map(|e| {
            e["detail"]
                .as_str()
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(
        counts,
        (plain.throttled + long.throttled) as u64,
        "every throttled request counted"
    );
}

#[tokio::test]
async fn a_flood_of_refusals_that_are_not_throttled_is_logged_up_to_a_budget() {
    let confluence = FakeConfluence::start().await;
    let dir = tempfile::tempdir().unwrap();
    let origin = confluence.origin();
    let mut gateway = GatewayProcess::spawn(dir.path(), &["--upstream", &origin], &[]).await;
    let before = gateway.logs().len();
    // A token in a cookie (400 bad_credentials) is no failed attempt: it is
    // never throttled, and would be a log line each.
    let statuses = flood_with(gateway.addr, 3_000, "/rest/api/space", |secret| {
        ("cookie", format!("session={secret}"))
    })
    .await;
    assert!(statuses.iter().all(|s| *s == 400));
    assert!(gateway.terminate().await.success());
    let logs = gateway.logs();
    let refusals = logs[before..].lines().filter(|l| l.contains("refused:")).count();
    eprintln!(
        "3000 refusals: {refusals} logged, the log grew by {} bytes",
        logs.len() - before
    );
    // 30 a minute (60 if the flood straddled a minute's end).
    assert!(refusals == 30 || refusals == 60, "{refusals} refusals logged");
    assert!(logs.contains("further refusals are not logged until the minute ends"));
    assert!(logs.len() - before <= 16 << 10);
}

#[tokio::test]
async fn nothing_counted_is_lost_when_the_gateway_is_stopped_under_load() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let confluence = FakeConfluence::start().await;
    let dir = tempfile::tempdir().unwrap();
    let out = crate::common::process::cli(dir.path(), &["token", "create", "--label", "load", "--user", "alice"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let auth = basic("alice", String::from_utf8_lossy(&out.stdout).trim());
    let origin = confluence.origin();
    let mut gateway = GatewayProcess::spawn(dir.path(), &["--upstream", &origin], &[]).await;

    // 16 clients send as fast as they can until the gateway stops answering;
    // each counts the answers it saw.
    let seen = Arc::new(AtomicU64::new(0));
    let sending = Arc::new(AtomicBool::new(true));
    let mut clients = Vec::new();
    for _ in 0..16 {
        let (seen, sending, auth, addr) = (seen.clone(), sending.clone(), auth.clone(), gateway.addr);
        clients.push(tokio::spawn(async move {
            while sending.load(Ordering::SeqCst) {
                let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
                    return;
                };
                let Ok((mut sender, connection)) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await
                else {
                    return;
                };
                tokio::spawn(connection);
                loop {
                    let req = Request::get("/rest/api/space")
                        .header("host", "wiki")
                        .header("authorization", auth.as_str())
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    if sender.ready().await.is_err() {
                        break;
                    }
                    match sender.send_request(req).await {
                        Ok(response) if response.status() == 200 => {
                            seen.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(response) => panic!("answered {}", response.status()),
                        Err(_) => break,
                    }
                }
            }
        }));
    }
    // Under load past at least one periodic flush, then SIGTERM.
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    assert!(gateway.terminate().await.success(), "{}", gateway.logs());
    sending.store(false, Ordering::SeqCst);
    for client in clients {
        client.await.unwrap();
    }
    let seen = seen.load(Ordering::SeqCst);
    assert!(seen > 100, "only {seen} answers under load");

    let out = crate::common::process::cli(dir.path(), &["token", "list", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let counted = listed[0]["counter"].as_u64().unwrap();
    let out = crate::common::process::cli(dir.path(), &["audit", "--json", "--limit", "100000"]);
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let audited = entries
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["decision"] == "allow")
        .count() as u64;
    eprintln!("{seen} answers seen; {counted} counted, {audited} audited");
    // Every answer a client saw was counted and audited; at most the
    // requests in flight at the end (one per client) were served but their
    // answers not read.
    assert!((seen..=seen + 16).contains(&counted), "{seen} seen, {counted} counted");
    assert!((seen..=seen + 16).contains(&audited), "{seen} seen, {audited} audited");
}
