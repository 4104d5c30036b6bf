//! PostgreSQL for the tests: each test gets a fresh schema on the server
//! that `POSTGRES_TEST_URL` names, dropped when the test ends, so
//! tests run in parallel and leave nothing behind. Without that variable
//! the PostgreSQL tests print a notice and pass.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::{Connection, Executor, PgConnection};

pub const URL_VAR: &str = "POSTGRES_TEST_URL";

/// A schema of its own on the test server; dropped (with everything in it) on drop.
pub struct PgSchema {
    pub name: String,
    base: String,
    /// The server URL with `search_path` set to the schema.
    pub url: String,
}

impl PgSchema {
    /// A fresh schema. The tests that call it are ignored unless
    /// `POSTGRES_TEST_URL` was set when they were built (see build.rs); run
    /// without it, they fail rather than pass.
    pub async fn create() -> PgSchema {
        let base = std::env::var(URL_VAR)
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| panic!("this test needs PostgreSQL: set {URL_VAR}"));
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
        let name = format!(
            "tg_test_{}_{nanos}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = PgConnection::connect(&base)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {URL_VAR}: {e}"));
        admin.execute(format!("CREATE SCHEMA {name}").as_str()).await.unwrap();
        admin.close().await.unwrap();
        let url = with_search_path(&base, &name);
        PgSchema { name, base, url }
    }

    /// The server's address, from the URL (`host:port`, port 5432 by default).
    pub async fn server_addr(&self) -> SocketAddr {
        let (_, host_port, _) = split_url(&self.base);
        let host_port = if host_port.contains(':') {
            host_port.to_owned()
        } else {
            format!("{host_port}:5432")
        };
        tokio::net::lookup_host(host_port).await.unwrap().next().unwrap()
    }

    /// The schema's URL, but reaching the server through `addr` (a proxy).
    pub fn url_via(&self, addr: SocketAddr) -> String {
        let (head, _, tail) = split_url(&self.url);
        format!("{head}{addr}{tail}")
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let (base, name) = (self.base.clone(), self.name.clone());
        // Drop runs outside async: a thread with a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&base).await?;
                admin.execute("SET lock_timeout = '10s'").await?;
                admin.execute(format!("DROP SCHEMA {name} CASCADE").as_str()).await?;
                admin.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test schema {}: {dropped:?}", self.name);
        }
    }
}

/// `base` with `options=-c search_path=SCHEMA` added to its query.
fn with_search_path(base: &str, schema: &str) -> String {
    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}options=-c%20search_path%3D{schema}")
}

/// `scheme://[user@]`, `host[:port]`, and the rest (`/db?...`) of a URL.
fn split_url(url: &str) -> (&str, &str, &str) {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[after_scheme..]
        .find(['/', '?'])
        .map_or(url.len(), |i| after_scheme + i);
    let host_start = url[after_scheme..authority_end]
        .rfind('@')
        .map_or(after_scheme, |i| after_scheme + i + 1);
    (
        &url[..host_start],
        &url[host_start..authority_end],
        &url[authority_end..],
    )
}

#[test]
fn urls_split_around_the_host() {
    assert_eq!(
        split_url("postgres://postgres@127.0.0.1:5432/test?x=1"),
        ("postgres://postgres@", "127.0.0.1:5432", "/test?x=1")
    );
    assert_eq!(split_url("postgresql://db/test"), ("postgresql://", "db", "/test"));
    assert_eq!(
        with_search_path("postgres://h/db", "s"),
        "postgres://h/db?options=-c%20search_path%3Ds"
    );
}
