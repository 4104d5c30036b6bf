//! The per-request work of the warm token path (SPEC §11): piece by piece
//! (decoding credentials, canonicalising the path, the verified-cache lookup,
//! the token checks) and whole (every stage of the pipeline but the
//! forwarding, on an in-memory request). `cargo bench --bench hot_path`.

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::Full;
use hyper::header::{AUTHORIZATION, HeaderValue};
use hyper::{HeaderMap, Method, Request};
use tokengate::bench::{
    CheckContext, ConnInfo, Next, Scheme, Trail, canonical_path, check_token, credentials_from_headers, decide,
};
use tokengate::{App, Argon2Cost, Config, NewToken, Scope, SqliteStore, SystemClock, TokenAuth};

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
    let (app, secret, limited) = runtime.block_on(async {
        let config = Config {
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
        let new = NewToken {
            label: "bench".into(),
            user: Some("alice".into()),
            limit_to: Some("[get].*/rest/api/space.*[QueryParam::spaceKey==DOCS]".into()),
            ip: Some("127.0.0.0/8".into()),
            author: "bench".into(),
            ..NewToken::default()
        };
        let secret = app.tokens.create(new).await.unwrap().value;
        // The same token with a rate limit it never reaches in a bench run.
        let limited = NewToken {
            label: "bench-limited".into(),
            user: Some("alice".into()),
            limit_to: Some("[get].*/rest/api/space.*[QueryParam::spaceKey==DOCS]".into()),
            ip: Some("127.0.0.0/8".into()),
            rate_limit: Some("1000000/s".into()),
            author: "bench".into(),
            ..NewToken::default()
        };
        let limited = app.tokens.create(limited).await.unwrap().value;
        for secret in [&secret, &limited] {
            app.auth
                .verifier()
                .verify(secret)
                .await
                .unwrap()
                .expect("the token verifies");
        }
        (app, secret, limited)
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
    let conn = ConnInfo::new("127.0.0.1:50000".parse().unwrap(), false);
    for (name, secret) in [
        ("pipeline/decide_warm_token", &secret),
        ("pipeline/decide_warm_token_rate_limited", &limited),
    ] {
        let authorization = format!(
            "Basic {}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("alice:{secret}"))
        );
        c.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| async {
                let req = Request::get("/rest/api/space/DOCS?spaceKey=DOCS")
                    .header(AUTHORIZATION, authorization.as_str())
                    .header("host", "wiki.example.com")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let mut trail = Trail::new(tracing::Span::none(), false);
                match decide(&app, &conn, req, &mut trail).await {
                    Ok(Next::Forward { .. }) => {}
                    _ => panic!("the warm token request is forwarded"),
                }
            })
        });
    }
}

criterion_group!(benches, decoding, canonicalising, warm_token);
criterion_main!(benches);
