//! The per-request work of the warm token path (SPEC §11): piece by piece
//! (decoding credentials, canonicalising the path, the verified-cache lookup,
//! the token checks) and whole (every stage of the pipeline but the
//! forwarding, on an in-memory request), also for a rate-limited token and
//! for a token confined to spaces on a content id whose space is cached
//! (beside the same read by an unconfined token), and for a confined
//! token's change, which asks Confluence afresh (one round trip to a
//! stand-in on loopback).
//! `cargo bench --bench hot_path`.

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::Full;
use hyper::header::{AUTHORIZATION, HeaderValue};
use hyper::{HeaderMap, Method, Request};
use tokengate::bench::{
    CheckContext, ConnInfo, Connection, Next, Scheme, Trail, canonical_path, check_token, credentials_from_headers,
    decide,
};
use tokengate::{Actor, App, Argon2Cost, Config, NewToken, Scope, SqliteStore, SystemClock, TokenAuth, Upstream};

/// A stand-in Confluence that places every content id in space DOCS: the
/// spaces bench's one lookup asks it, every later request hits the cache.
async fn content_in_docs() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(|_req| async {
                let body = Full::new(Bytes::from_static(
                    br#"{"id":"100","status":"current","space":{"key":"DOCS"}}"#,
                ));
                // Confluence names the user it served (SPEC §19), as Seraph does.
                let mut response = hyper::Response::new(body);
                response
                    .headers_mut()
                    .insert("x-ausername", HeaderValue::from_static("alice"));
                Ok::<_, std::convert::Infallible>(response)
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    addr
}

fn decoding(c: &mut Criterion) {
    let mut headers = HeaderMap::new();
    let basic = "Basic YWxpY2VAZXhhbXBsZS5jb206dGd3X2FiY2RlZmdoaWprbG1ub3BxcnN0dXZ3eHl6MDEyMzQ1Njc4OUFCQ0Q=";
    headers.insert(AUTHORIZATION, HeaderValue::from_static(basic));
    c.bench_function("credentials/basic", |b| {
        b.iter(|| credentials_from_headers(black_box(&headers)))
    });
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_static("Bearer tgw_abcdefghijklmnopqrstuvwxyz0123456789ABCD"),
    );
    c.bench_function("credentials/bearer", |b| {
        b.iter(|| credentials_from_headers(black_box(&headers)))
    });
}

fn canonicalising(c: &mut Criterion) {
    c.bench_function("canonical_path/plain", |b| {
        b.iter(|| canonical_path(black_box("/rest/api/content/123456/child/attachment")))
    });
    c.bench_function("canonical_path/encoded_and_dots", |b| {
        b.iter(|| canonical_path(black_box("/rest/api/./content/%31%32/../123456/child/My%20Page")))
    });
}

fn warm_token(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (app, secret, limited, confined, unconfined) = runtime.block_on(async {
        let config = Config {
            upstream: Upstream {
                https: false,
                authority: content_in_docs().await.to_string().parse().unwrap(),
            },
            database_url: format!("sqlite://{}/bench.db", dir.path().display()),
            argon2: Argon2Cost {
                memory_kib: 64,
                iterations: 1,
                parallelism: 1,
            },
            ..Config::default()
        };
        let store = Arc::new(SqliteStore::open(&config.database_url).await.unwrap());
        let app = App::with_store(config, store, Arc::new(SystemClock)).await.unwrap();
        let token = |label: &str, limit_to: &str, rate_limit: Option<&str>, spaces: Option<&str>| NewToken {
            label: label.into(),
            user: Some("alice".into()),
            limit_to: Some(limit_to.into()),
            ip: Some("127.0.0.0/8".into()),
            rate_limit: rate_limit.map(str::to_owned),
            spaces: spaces.map(str::to_owned),
            ..NewToken::default()
        };
        const SPACE_RULE: &str = "[get].*/rest/api/space.*[QueryParam::spaceKey==DOCS]";
        const CONTENT_RULE: &str = "[get|put].*/rest/api/content/[0-9]+";
        let secret = app
            .tokens
            .create(token("bench", SPACE_RULE, None, None), &Actor::cli())
            .await
            .unwrap()
            .value;
        // The same token with a rate limit it never reaches in a bench run.
        let limited = token("bench-limited", SPACE_RULE, Some("1000000/s"), None);
        let limited = app.tokens.create(limited, &Actor::cli()).await.unwrap().value;
        // A token confined to space DOCS, with a rule for content by id, and
        // the same without spaces: what confinement costs on a cached id.
        let confined = token("bench-spaces", CONTENT_RULE, None, Some("DOCS"));
        let confined = app.tokens.create(confined, &Actor::cli()).await.unwrap().value;
        let unconfined = token("bench-content", CONTENT_RULE, None, None);
        let unconfined = app.tokens.create(unconfined, &Actor::cli()).await.unwrap().value;
        for secret in [&secret, &limited, &confined, &unconfined] {
            app.auth
                .verifier()
                .verify(secret)
                .await
                .unwrap()
                .expect("the token verifies");
        }
        (app, secret, limited, confined, unconfined)
    });
    c.bench_function("verified_cache/hit", |b| {
        b.to_async(&runtime)
            .iter(|| app.auth.verifier().cached(black_box(&secret)))
    });
    let token = runtime
        .block_on(app.auth.verifier().cached(&secret))
        .unwrap()
        .expect("cached");
    let cx = CheckContext {
        scheme: Scheme::Basic,
        basic_user: Some("alice"),
        method: &Method::GET,
        path: "/rest/api/space",
        client_ip: "127.0.0.1".parse().unwrap(),
        now: 1,
        token_auth: TokenAuth::Basic,
        scope: Scope::Rest,
    };
    c.bench_function("check_token", |b| {
        b.iter(|| check_token(black_box(&token), black_box(&cx)))
    });
    let info = ConnInfo::new("127.0.0.1:50000".parse().unwrap(), false);
    // A keep-alive connection recalls its last credentials (the memo); a
    // new one for every request shows the path without it.
    const PAGE: &str = r#"{"id":"100","type":"page","title":"t","space":{"key":"DOCS"},"version":{"number":2}}"#;
    for (name, secret, method, target, body) in [
        (
            "pipeline/decide_warm_token",
            &secret,
            Method::GET,
            "/rest/api/space/DOCS?spaceKey=DOCS",
            "",
        ),
        (
            "pipeline/decide_warm_token_new_connection",
            &secret,
            Method::GET,
            "/rest/api/space/DOCS?spaceKey=DOCS",
            "",
        ),
        (
            "pipeline/decide_warm_token_rate_limited",
            &limited,
            Method::GET,
            "/rest/api/space/DOCS?spaceKey=DOCS",
            "",
        ),
        (
            "pipeline/decide_warm_token_content",
            &unconfined,
            Method::GET,
            "/rest/api/content/100",
            "",
        ),
        (
            "pipeline/decide_warm_token_spaces_cached",
            &confined,
            Method::GET,
            "/rest/api/content/100",
            "",
        ),
        (
            "pipeline/decide_change_spaces_fresh_lookup",
            &confined,
            Method::PUT,
            "/rest/api/content/100",
            PAGE,
        ),
    ] {
        let authorization = format!(
            "Basic {}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("alice:{secret}"))
        );
        let keep_alive = Connection::new(info.clone(), &app);
        let fresh = name.ends_with("new_connection");
        c.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| async {
                let new_connection;
                let conn = if fresh {
                    new_connection = Connection::new(info.clone(), &app);
                    &new_connection
                } else {
                    &keep_alive
                };
                let req = Request::builder()
                    .method(method.clone())
                    .uri(target)
                    .header(AUTHORIZATION, authorization.as_str())
                    .header("host", "wiki.example.com")
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(body.as_bytes())))
                    .unwrap();
                let mut trail = Trail::new(tracing::Span::none(), false);
                match decide(&app, conn, req, &mut trail).await {
                    Ok(Next::Forward { .. }) => {}
                    _ => panic!("the warm token request is forwarded"),
                }
            })
        });
    }
}

/// Whole requests through the running gateway on loopback, on one
/// keep-alive connection, to the stand-in: what confinement adds to a read
/// of a content id whose space is cached, beside the same read unconfined.
/// Each bench gets a gateway and store of its own (the audit log a run
/// leaves behind would slow the next one), and one thread runs client,
/// gateway and stand-in in turn, so that the two differ by the work done.
fn end_to_end(c: &mut Criterion) {
    for (name, spaces) in [
        ("end_to_end/read_content", None),
        ("end_to_end/read_content_spaces_cached", Some("DOCS")),
    ] {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (gateway, authorization) = runtime.block_on(async {
            let config = Config {
                upstream: Upstream {
                    https: false,
                    authority: content_in_docs().await.to_string().parse().unwrap(),
                },
                database_url: format!("sqlite://{}/bench.db", dir.path().display()),
                ..Config::default()
            };
            let store = Arc::new(SqliteStore::open(&config.database_url).await.unwrap());
            let app = App::with_store(config, store, Arc::new(SystemClock)).await.unwrap();
            let new = NewToken {
                label: "bench".into(),
                user: Some("alice".into()),
                limit_to: Some("[get].*/rest/api/content/[0-9]+".into()),
                spaces: spaces.map(str::to_owned),
                ..NewToken::default()
            };
            let secret = app.tokens.create(new, &Actor::cli()).await.unwrap().value;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let gateway = listener.local_addr().unwrap();
            tokio::spawn(tokengate::serve(listener, app, std::future::pending()));
            let authorization = format!(
                "Basic {}",
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("alice:{secret}"))
            );
            (gateway, authorization)
        });
        let sender = runtime.block_on(async {
            let stream = tokio::net::TcpStream::connect(gateway).await.unwrap();
            let (sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(connection);
            Arc::new(tokio::sync::Mutex::new(sender))
        });
        c.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| {
                let (sender, authorization) = (sender.clone(), authorization.clone());
                async move {
                    let mut sender = sender.lock().await;
                    sender.ready().await.unwrap();
                    let req = Request::get("/rest/api/content/100")
                        .header(AUTHORIZATION, authorization)
                        .header("host", "wiki.example.com")
                        .body(http_body_util::Empty::<Bytes>::new())
                        .unwrap();
                    let response = sender.send_request(req).await.unwrap();
                    assert_eq!(response.status(), 200);
                    http_body_util::BodyExt::collect(response.into_body()).await.unwrap();
                }
            })
        });
    }
}

/// The two steps confinement adds to a read of a cached content id: the
/// route table, and the cache.
fn confinement_steps(c: &mut Criterion) {
    c.bench_function("spaces/plan_content_read", |b| {
        b.iter(|| tokengate::bench::plan_spaces(black_box("GET"), black_box("/rest/api/content/100"), None))
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cache = tokengate::bench::SpaceCache::new(
        std::time::Duration::from_secs(60),
        Arc::new(SystemClock),
        tokengate::bench::Metrics::new(),
    );
    let warmed = runtime.block_on(cache.space_of("100", "alice", false, || async { Ok(Arc::from("DOCS")) }));
    assert!(warmed.is_ok());
    c.bench_function("spaces/cache_hit", |b| {
        b.to_async(&runtime)
            .iter(|| cache.space_of(black_box("100"), "alice", false, || async { Err(Arc::from("cached")) }))
    });
}

criterion_group!(
    benches,
    decoding,
    canonicalising,
    warm_token,
    end_to_end,
    confinement_steps
);
criterion_main!(benches);
