//! Several replicas on one PostgreSQL (SPEC §7), as operators run them: two
//! real `tokengate serve` processes on one fresh schema, tokens managed with
//! the real CLI. Skipped without POSTGRES_TEST_URL.

use std::process::Output;
use std::time::{Duration, Instant};

use tokengate::AuditQuery;

use crate::common::process::GatewayProcess;
use crate::common::{FakeConfluence, PgSchema, basic, get};

const BIN: &str = env!("CARGO_BIN_EXE_tokengate");
const SPACE: &str = "/rest/api/space";

/// Cheap argon2 for every process, as the in-process tests use.
const ARGON2_ENV: [(&str, &str); 2] = [
    ("TOKENGATE_ARGON2_MEMORY_KIB", "64"),
    ("TOKENGATE_ARGON2_ITERATIONS", "1"),
];

/// One `tokengate serve` process.
struct Replica(GatewayProcess);

impl Replica {
    /// Starts a replica and waits until it is ready (its store answers).
    async fn start(database_url: &str, confluence: &FakeConfluence, dir: &std::path::Path) -> Replica {
        let args = ["--upstream", &confluence.origin(), "--database", database_url];
        let replica = Replica(GatewayProcess::spawn(dir, &args, &[("RUST_LOG", "info")]).await);
        let deadline = Instant::now() + Duration::from_secs(20);
        while get(&replica.url("/tokengate/readyz"), &[]).await.status != 200 {
            assert!(Instant::now() < deadline, "replica did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        replica
    }

    fn url(&self, path: &str) -> String {
        self.0.url(path)
    }

    /// SIGTERM, then wait for a clean exit (which flushes usage and audit).
    async fn terminate(mut self) {
        let status = self.0.terminate().await;
        assert!(status.success(), "exit {status}");
    }
}

/// Runs the CLI against the shared database.
fn cli(database_url: &str, dir: &std::path::Path, args: &[&str]) -> Output {
    let out = std::process::Command::new(BIN)
        .args(args)
        .args(["--database", database_url])
        .envs(ARGON2_ENV)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tokengate {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Creates a token bound to `user` with the CLI; returns (id, value).
fn create_token(database_url: &str, dir: &std::path::Path, user: &str) -> (String, String) {
    let out = cli(
        database_url,
        dir,
        &["token", "create", "--label", "replicated", "--user", user, "--json"],
    );
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        created["id"].as_str().unwrap().to_owned(),
        created["token"].as_str().unwrap().to_owned(),
    )
}

#[cfg_attr(not(have_postgres), ignore = "needs PostgreSQL: set POSTGRES_TEST_URL")]
#[tokio::test]
async fn a_token_works_through_every_replica_and_a_deletion_reaches_them_all_within_a_second() {
    let schema = PgSchema::create().await;
    let dir = tempfile::tempdir().unwrap();
    let confluence = FakeConfluence::start().await;
    cli(&schema.url, dir.path(), &["migrate"]);
    let a = Replica::start(&schema.url, &confluence, dir.path()).await;
    let b = Replica::start(&schema.url, &confluence, dir.path()).await;

    let (id, value) = create_token(&schema.url, dir.path(), "alice");
    let auth = basic("alice", &value);
    // Verified (and cached) by both.
    for replica in [&a, &b] {
        assert_eq!(get(&replica.url(SPACE), &[("authorization", &auth)]).await.status, 200);
    }
    assert_eq!(confluence.count(), 2);

    // Deleted by a third process on the shared database (the management API
    // of A would do the same: delete the row, record and announce the revocation).
    cli(&schema.url, dir.path(), &["token", "delete", &id]);
    let deleted = Instant::now();
    let deadline = deleted + Duration::from_secs(1);
    let mut refused = [false, false];
    while refused != [true, true] {
        for (i, replica) in [&a, &b].into_iter().enumerate() {
            if !refused[i] {
                let reply = get(&replica.url(SPACE), &[("authorization", &auth)]).await;
                refused[i] = reply.status == 401;
            }
        }
        assert!(
            Instant::now() < deadline,
            "still accepted 1 s after deletion: refused by [A, B] = {refused:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("refused by both replicas {:?} after the deletion", deleted.elapsed());
    a.terminate().await;
    b.terminate().await;
}

#[cfg_attr(not(have_postgres), ignore = "needs PostgreSQL: set POSTGRES_TEST_URL")]
#[tokio::test]
async fn an_update_reaches_every_replica_within_a_second() {
    let schema = PgSchema::create().await;
    let dir = tempfile::tempdir().unwrap();
    let confluence = FakeConfluence::start().await;
    cli(&schema.url, dir.path(), &["migrate"]);
    let a = Replica::start(&schema.url, &confluence, dir.path()).await;
    let b = Replica::start(&schema.url, &confluence, dir.path()).await;
    let out = cli(
        &schema.url,
        dir.path(),
        &[
            "token",
            "create",
            "--label",
            "r",
            "--user",
            "alice",
            "--limit-to",
            "[get]/rest/api/space",
            "--json",
        ],
    );
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = created["id"].as_str().unwrap();
    let auth = basic("alice", created["token"].as_str().unwrap());
    const CONTENT: &str = "/rest/api/content";
    for replica in [&a, &b] {
        assert_eq!(get(&replica.url(SPACE), &[("authorization", &auth)]).await.status, 200);
        assert_eq!(
            get(&replica.url(CONTENT), &[("authorization", &auth)]).await.status,
            403
        );
    }

    cli(
        &schema.url,
        dir.path(),
        &["token", "update", id, "--limit-to", "[get]/rest/api/content"],
    );
    let updated = Instant::now();
    let deadline = updated + Duration::from_secs(1);
    let mut seen = [false, false];
    while seen != [true, true] {
        for (i, replica) in [&a, &b].into_iter().enumerate() {
            if !seen[i] {
                seen[i] = get(&replica.url(CONTENT), &[("authorization", &auth)]).await.status == 200;
            }
        }
        assert!(
            Instant::now() < deadline,
            "old rules 1 s after the update: updated on [A, B] = {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "both replicas had the new rules {:?} after the update",
        updated.elapsed()
    );
    for replica in [&a, &b] {
        assert_eq!(get(&replica.url(SPACE), &[("authorization", &auth)]).await.status, 403);
    }
    a.terminate().await;
    b.terminate().await;
}

#[cfg_attr(not(have_postgres), ignore = "needs PostgreSQL: set POSTGRES_TEST_URL")]
#[tokio::test]
async fn concurrent_calls_through_two_replicas_add_up_exactly() {
    let schema = PgSchema::create().await;
    let dir = tempfile::tempdir().unwrap();
    let confluence = FakeConfluence::start().await;
    let (id, value) = create_token(&schema.url, dir.path(), "bob");
    let a = Replica::start(&schema.url, &confluence, dir.path()).await;
    let b = Replica::start(&schema.url, &confluence, dir.path()).await;

    const CLIENTS_PER_REPLICA: usize = 3;
    const CALLS_PER_CLIENT: usize = 40;
    let auth = basic("bob", &value);
    let mut clients = Vec::new();
    for replica in [&a, &b] {
        for _ in 0..CLIENTS_PER_REPLICA {
            let (url, auth) = (replica.url(SPACE), auth.clone());
            clients.push(tokio::spawn(async move {
                for _ in 0..CALLS_PER_CLIENT {
                    assert_eq!(get(&url, &[("authorization", &auth)]).await.status, 200);
                    // Spread the calls over a few flush periods (2 s each).
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }));
        }
    }
    for client in clients {
        client.await.unwrap();
    }
    a.terminate().await;
    b.terminate().await;

    let total = 2 * CLIENTS_PER_REPLICA * CALLS_PER_CLIENT;
    assert_eq!(confluence.count(), total);
    let store = tokengate::open_store(&schema.url).await.unwrap();
    let stored = store.token(&id).await.unwrap().unwrap();
    assert_eq!(stored.counter, total as i64);
    assert_eq!(stored.last_ip.as_deref(), Some("127.0.0.1"));
    let audit = AuditQuery {
        token_id: Some(id),
        max_results: 1,
        ..Default::default()
    };
    // Every call, and the CLI's creation of the token.
    assert_eq!(store.list_audit(&audit).await.unwrap().total, total as u64 + 1);
    store.close().await;
}
