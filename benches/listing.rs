//! The admin page's listing with 1 000 tokens (SPEC §15.1), on SQLite: a
//! page of 50 sorted by calls of the last 30 days (every token's days
//! summed, then sorted), by label, filtered by state, and one token's 30
//! days for its chart. The store holds 30 days of counts for every token
//! (30 000 rows). `cargo bench --bench listing`.

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use tokengate::{
    Clock, DAY_MS, SqliteStore, SystemClock, TokenOrder, TokenQuery, TokenRecord, TokenState, TokenStore, UsageDelta,
    day_of,
};

const TOKENS: usize = 1_000;
const DAYS: i64 = 30;

fn token(i: usize, now: i64) -> TokenRecord {
    TokenRecord {
        id: format!("token-{i:04}"),
        label: format!("script {:04}", (i * 7919) % TOKENS),
        user: (i % 10 != 0).then(|| format!("user{}", i % 97)),
        author: "admin".into(),
        limit_to: String::new(),
        ip: String::new(),
        created_at: now - i as i64 * 60_000,
        valid_until: (i % 3 != 0).then_some(now + (i as i64 % 120 - 20) * DAY_MS),
        token_hash: "$argon2id$v=19$m=64,t=1,p=1$c2FsdA$aGFzaA".into(),
        lookup: format!("tgw_{i:08}"),
        counter: 0,
        last_used_at: None,
        last_ip: None,
        sealed_pat: None,
        upstream_token_id: None,
        rate_limit: None,
        enforce: true,
        spaces: (i % 4 == 0).then(|| "DOCS,KB:read".into()),
        previous_hash: None,
        previous_lookup: None,
        previous_sealed_pat: None,
        grace_until: None,
    }
}

async fn thousand_tokens(dir: &std::path::Path) -> Arc<dyn TokenStore> {
    let store = SqliteStore::open(&format!("sqlite://{}/bench.db", dir.display()))
        .await
        .unwrap();
    let now = SystemClock.now_ms();
    for i in 0..TOKENS {
        store.insert_token(&token(i, now), None).await.unwrap();
    }
    for back in 0..DAYS {
        let deltas: Vec<UsageDelta> = (0..TOKENS)
            .map(|i| UsageDelta {
                token_id: format!("token-{i:04}"),
                calls: ((i as i64 * 31 + back * 17) % 400) + 1,
                refused: (i as i64 + back) % 5,
                last_used_at: now - back * DAY_MS,
                last_ip: "10.0.0.1".into(),
                day: day_of(now) - back,
            })
            .collect();
        store.add_usage(&deltas).await.unwrap();
    }
    Arc::new(store)
}

fn listing(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = runtime.block_on(thousand_tokens(dir.path()));
    let now = SystemClock.now_ms();
    let page = |order, ascending, state| TokenQuery {
        order,
        ascending,
        state,
        now,
        soon: now + 7 * DAY_MS,
        start_at: 0,
        max_results: 50,
        ..TokenQuery::default()
    };
    for (name, query) in [
        ("listing/1000_tokens/by_calls", page(TokenOrder::Calls, false, None)),
        ("listing/1000_tokens/by_label", page(TokenOrder::Label, true, None)),
        ("listing/1000_tokens/newest", page(TokenOrder::Created, false, None)),
        (
            "listing/1000_tokens/expiring_by_expiry",
            page(TokenOrder::Expires, true, Some(TokenState::Expiring)),
        ),
    ] {
        let listed = runtime.block_on(store.list_tokens(&query)).unwrap();
        assert_eq!(listed.items.len(), listed.total.min(50) as usize, "{name}");
        c.bench_function(name, |b| {
            b.to_async(&runtime)
                .iter(|| async { store.list_tokens(&query).await.unwrap() })
        });
    }
    let from = day_of(now) - (DAYS - 1);
    c.bench_function("usage_days/30_days", |b| {
        b.to_async(&runtime)
            .iter(|| async { store.usage_days("token-0500", from).await.unwrap() })
    });
}

criterion_group!(benches, listing);
criterion_main!(benches);
