//! The store contract: what every [`TokenStore`] backend must do, written
//! once and run against SQLite (`store_contract::sqlite::*`) and PostgreSQL
//! (`store_contract::postgres::*`, in a fresh schema; skipped when
//! POSTGRES_TEST_URL is unset). Each test gets its own database.

use std::sync::Arc;

use tokengate::EpochMs;
use tokengate::{
    self, AuditEntry, AuditKind, AuditOutcome, AuditQuery, ChangeKind, DAY_MS, EventOutcome, ListedToken, NewEvent,
    Restrictions, Rotation, Settings, TokenOrder, TokenQuery, TokenRecord, TokenState, TokenStore, UsageDay,
    UsageDelta,
};

use crate::common::PgSchema;

/// A throwaway database of one backend; [`TestDb::open`] gives a new handle
/// on it each time, as another process would have.
pub struct TestDb {
    url: String,
    _dir: Option<tempfile::TempDir>,
    _schema: Option<PgSchema>,
}

impl TestDb {
    fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        TestDb {
            url: format!("sqlite://{}/contract.db", dir.path().display()),
            _dir: Some(dir),
            _schema: None,
        }
    }

    async fn postgres() -> TestDb {
        let schema = PgSchema::create().await;
        TestDb {
            url: schema.url.clone(),
            _dir: None,
            _schema: Some(schema),
        }
    }

    async fn open(&self) -> Arc<dyn TokenStore> {
        tokengate::open_store(&self.url).await.unwrap()
    }
}

/// Runs each contract test against both backends. `one:` tests take a
/// store; `two:` tests take two handles on the same database.
macro_rules! contract {
    (one: [$($one:ident),* $(,)?], two: [$($two:ident),* $(,)?] $(,)?) => {
        contract!(@backend sqlite, super::TestDb::sqlite(), [$($one),*], [$($two),*], #[cfg_attr(any(), ignore)]);
        contract!(@backend postgres, super::TestDb::postgres().await, [$($one),*], [$($two),*],
            #[cfg_attr(not(have_postgres), ignore = "needs PostgreSQL: set POSTGRES_TEST_URL")]);
    };
    (@backend $backend:ident, $db:expr, [$($one:ident),*], [$($two:ident),*], #[$attr:meta]) => {
        mod $backend {
            $(
                #[tokio::test]
                #[$attr]
                async fn $one() {
                    let db = $db;
                    let store = db.open().await;
                    super::$one(store.clone()).await;
                    store.close().await;
                }
            )*
            $(
                #[tokio::test]
                #[$attr]
                async fn $two() {
                    let db = $db;
                    let (a, b) = (db.open().await, db.open().await);
                    super::$two(a.clone(), b.clone()).await;
                    a.close().await;
                    b.close().await;
                }
            )*
        }
    };
}

contract! {
    one: [
        tokens_round_trip_and_are_found_by_lookup,
        lists_newest_first_with_filters_and_paging,
        filters_fold_ascii_case_only_and_labels_match_literally,
        deletions_are_recorded_as_revocations,
        updates_change_restrictions_only_and_are_recorded,
        observed_calls_count_forwarded_requests_per_method_and_path,
        a_users_token_limit_holds_and_ignores_unbound_tokens,
        usage_adds_up_and_keeps_the_latest_ip,
        usage_days_add_up_per_day_and_are_purged_and_deleted_with_their_token,
        lists_sort_by_each_column_and_filter_by_state,
        audit_filters_by_outcome,
        audit_entries_round_trip_filter_page_and_purge,
        rotations_keep_the_replaced_secret_in_grace_and_apply_once,
        events_queue_once_claim_retry_and_purge,
        expiring_tokens_and_states_are_counted,
        ping_answers,
    ],
    two: [
        a_token_written_through_one_handle_is_read_and_revoked_through_the_other,
        settings_default_on_and_persist_across_handles,
        concurrent_usage_flushes_from_two_handles_add_up_exactly,
        concurrent_creations_cannot_pass_a_users_limit_together,
        a_claimed_event_is_not_claimed_again_until_its_lease_lapses,
    ],
}

async fn rotations_keep_the_replaced_secret_in_grace_and_apply_once(store: Arc<dyn TokenStore>) {
    let before = TokenRecord {
        token_hash: "hash-1".into(),
        lookup: "tgw_lookup01".into(),
        sealed_pat: Some(vec![1, 1]),
        ..record("r", Some("alice"), 1)
    };
    store.insert_token(&before, None).await.unwrap();
    let cursor = store.revocation_cursor().await.unwrap();
    let rotation = Rotation {
        replaces: "hash-1".into(),
        token_hash: "hash-2".into(),
        lookup: "tgw_lookup02".into(),
        sealed_pat: Some(vec![2, 2]),
        grace_until: Some(5_000),
    };
    let after = store.rotate_token("r", &rotation, 10).await.unwrap().unwrap();
    assert_eq!(
        after,
        TokenRecord {
            token_hash: "hash-2".into(),
            lookup: "tgw_lookup02".into(),
            sealed_pat: Some(vec![2, 2]),
            previous_hash: Some("hash-1".into()),
            previous_lookup: Some("tgw_lookup01".into()),
            previous_sealed_pat: Some(vec![1, 1]),
            grace_until: Some(5_000),
            ..before.clone()
        }
    );
    for lookup in ["tgw_lookup01", "tgw_lookup02"] {
        let found = store.tokens_by_lookup(lookup).await.unwrap();
        assert_eq!(
            found.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
            ["r"],
            "{lookup}"
        );
    }
    // Only the secret that is current may be replaced.
    assert!(store.rotate_token("r", &rotation, 11).await.unwrap().is_none());
    assert!(store.rotate_token("missing", &rotation, 11).await.unwrap().is_none());
    // Without grace, nothing of the replaced secret stays.
    let again = Rotation {
        replaces: "hash-2".into(),
        token_hash: "hash-3".into(),
        lookup: "tgw_lookup03".into(),
        sealed_pat: None,
        grace_until: None,
    };
    let after = store.rotate_token("r", &again, 12).await.unwrap().unwrap();
    assert_eq!(
        (
            after.previous_hash,
            after.previous_lookup,
            after.previous_sealed_pat,
            after.grace_until
        ),
        (None, None, None, None)
    );
    assert!(store.tokens_by_lookup("tgw_lookup01").await.unwrap().is_empty());
    let changes = store.revocations_after(cursor).await.unwrap();
    assert_eq!(
        changes.iter().map(|c| c.kind).collect::<Vec<_>>(),
        [ChangeKind::Update, ChangeKind::Update]
    );
}

fn event(id: &str, created_at: EpochMs, once: Option<&str>) -> NewEvent {
    NewEvent {
        id: id.into(),
        event: "token.created".into(),
        body: format!(r#"{{"id":"{id}"}}"#),
        created_at,
        once: once.map(str::to_owned),
    }
}

async fn events_queue_once_claim_retry_and_purge(store: Arc<dyn TokenStore>) {
    assert!(store.enqueue_event(&event("e2", 20, None)).await.unwrap());
    assert!(
        store
            .enqueue_event(&event("e1", 10, Some("expiring:t:7")))
            .await
            .unwrap()
    );
    assert!(
        !store
            .enqueue_event(&event("e3", 30, Some("expiring:t:7")))
            .await
            .unwrap(),
        "once per key"
    );
    assert!(
        store.claim_events(5, 100, 10).await.unwrap().is_empty(),
        "nothing due yet"
    );
    let claimed = store.claim_events(25, 1_000, 10).await.unwrap();
    assert_eq!(
        claimed.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["e1", "e2"],
        "oldest first"
    );
    assert_eq!(claimed[0].body, r#"{"id":"e1"}"#);
    assert_eq!(claimed[0].attempts, 0);
    assert!(store.claim_events(26, 1_000, 10).await.unwrap().is_empty(), "claimed");
    store
        .finish_event("e1", EventOutcome::Delivered { at: 30 })
        .await
        .unwrap();
    store
        .finish_event("e2", EventOutcome::Retry { next_at: 2_000 })
        .await
        .unwrap();
    assert!(store.claim_events(1_999, 3_000, 10).await.unwrap().is_empty());
    let retried = store.claim_events(2_000, 3_000, 10).await.unwrap();
    assert_eq!((retried[0].id.as_str(), retried[0].attempts), ("e2", 1));
    store
        .finish_event("e2", EventOutcome::Abandoned { at: 2_001 })
        .await
        .unwrap();
    assert!(
        store.claim_events(10_000, 20_000, 10).await.unwrap().is_empty(),
        "done either way"
    );
    assert_eq!(store.purge_events(2_001).await.unwrap(), 1, "delivered before 2001");
    assert_eq!(store.purge_events(2_002).await.unwrap(), 1);
}

async fn a_claimed_event_is_not_claimed_again_until_its_lease_lapses(a: Arc<dyn TokenStore>, b: Arc<dyn TokenStore>) {
    for n in 0..20 {
        a.enqueue_event(&event(&format!("e{n:02}"), n, None)).await.unwrap();
    }
    let (first, second) = tokio::join!(a.claim_events(100, 1_000, 15), b.claim_events(100, 1_000, 15));
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(first.len() + second.len(), 20, "every event claimed once");
    let mut ids: Vec<_> = first.iter().chain(&second).map(|e| e.id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20, "none by both");
    assert!(b.claim_events(999, 2_000, 50).await.unwrap().is_empty(), "leased");
    assert_eq!(
        b.claim_events(1_000, 2_000, 50).await.unwrap().len(),
        20,
        "the lease lapsed"
    );
}

async fn expiring_tokens_and_states_are_counted(store: Arc<dyn TokenStore>) {
    let day = 86_400_000;
    for (id, until) in [
        ("never", None),
        ("gone", Some(day)),
        ("soon", Some(5 * day)),
        ("later", Some(30 * day)),
    ] {
        store
            .insert_token(
                &TokenRecord {
                    valid_until: until,
                    lookup: format!("tgw_{id}"),
                    ..record(id, None, 1)
                },
                None,
            )
            .await
            .unwrap();
    }
    let now = 2 * day;
    let states = store.token_states(now, now + 7 * day).await.unwrap();
    assert_eq!((states.active, states.expiring, states.expired), (3, 1, 1));
    let expiring = store.tokens_expiring(0, now + 7 * day).await.unwrap();
    assert_eq!(
        expiring.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        ["gone", "soon"]
    );
}

fn record(id: &str, user: Option<&str>, created_at: EpochMs) -> TokenRecord {
    TokenRecord {
        id: id.into(),
        label: format!("label {id}"),
        user: user.map(Into::into),
        author: "admin".into(),
        limit_to: String::new(),
        ip: String::new(),
        created_at,
        valid_until: None,
        token_hash: "$argon2id$v=19$m=64,t=1,p=1$c2FsdA$aGFzaA".into(),
        lookup: format!("tgw_{id:0>8}"),
        counter: 0,
        last_used_at: None,
        last_ip: None,
        sealed_pat: None,
        upstream_token_id: None,
        rate_limit: None,
        enforce: true,
        spaces: None,
        previous_hash: None,
        previous_lookup: None,
        previous_sealed_pat: None,
        grace_until: None,
    }
}

fn all_tokens() -> TokenQuery {
    TokenQuery {
        max_results: 1000,
        ..Default::default()
    }
}

fn ids(items: &[ListedToken]) -> Vec<&str> {
    items.iter().map(|t| t.record.id.as_str()).collect()
}

async fn tokens_round_trip_and_are_found_by_lookup(store: Arc<dyn TokenStore>) {
    let full = TokenRecord {
        label: "ci-bot ünïcode".into(),
        limit_to: "[get].*/rest/api/space.*\n[post].*/rest/api/content/?[JsonData::type==page]".into(),
        ip: "10.0.0.0/8,2001:db8::/32".into(),
        valid_until: Some(1_900_000_000_000),
        counter: 7,
        last_used_at: Some(1_700_000_000_123),
        last_ip: Some("10.1.2.3".into()),
        // Every byte value survives, NUL included.
        sealed_pat: Some((0..=255u8).chain([0, 0, 1]).collect()),
        upstream_token_id: Some("90210".into()),
        ..record("full-Id_1", Some("Alice@Example.com"), 1_700_000_000_000)
    };
    store.insert_token(&full, None).await.unwrap();
    let twin = TokenRecord {
        lookup: full.lookup.clone(),
        ..record("twin", None, 1)
    };
    store.insert_token(&twin, None).await.unwrap();

    assert_eq!(store.token("full-Id_1").await.unwrap(), Some(full.clone()));
    assert_eq!(store.token("full-id_1").await.unwrap(), None, "ids are exact");
    let mut found = store.tokens_by_lookup(&full.lookup).await.unwrap();
    found.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(found, [full.clone(), twin]);
    assert!(store.tokens_by_lookup("tgw_00000000").await.unwrap().is_empty());
    assert!(
        store.insert_token(&full, None).await.is_err(),
        "a duplicate id is refused"
    );
}

async fn lists_newest_first_with_filters_and_paging(store: Arc<dyn TokenStore>) {
    for (i, user) in [Some("Alice"), Some("bob"), None, Some("alice")]
        .into_iter()
        .enumerate()
    {
        store
            .insert_token(&record(&format!("t{i}"), user, i as i64), None)
            .await
            .unwrap();
    }
    // Same creation time: ids break the tie, compared bytewise.
    for id in ["b", "a", "B"] {
        store.insert_token(&record(id, None, 10), None).await.unwrap();
    }
    let all = store.list_tokens(&all_tokens()).await.unwrap();
    assert_eq!(all.total, 7);
    assert_eq!(ids(&all.items), ["B", "a", "b", "t3", "t2", "t1", "t0"]);

    let alice = TokenQuery {
        user: Some("ALICE".into()),
        max_results: 1,
        start_at: 1,
        ..Default::default()
    };
    let page = store.list_tokens(&alice).await.unwrap();
    assert_eq!((page.total, ids(&page.items)), (2, vec!["t0"]));

    let label = TokenQuery {
        label: Some("BEL T2".into()),
        ..all_tokens()
    };
    assert_eq!(ids(&store.list_tokens(&label).await.unwrap().items), ["t2"]);

    let both = TokenQuery {
        user: Some("alice".into()),
        label: Some("t3".into()),
        ..all_tokens()
    };
    assert_eq!(ids(&store.list_tokens(&both).await.unwrap().items), ["t3"]);

    let beyond = TokenQuery {
        start_at: 7,
        ..all_tokens()
    };
    let page = store.list_tokens(&beyond).await.unwrap();
    assert_eq!((page.total, page.items.len()), (7, 0));
    let huge = TokenQuery {
        start_at: u64::MAX,
        max_results: u64::MAX,
        ..Default::default()
    };
    assert!(store.list_tokens(&huge).await.unwrap().items.is_empty());
}

/// Both backends compare user names ASCII case-insensitively (SQLite's
/// NOCASE), and the label filter is a plain substring: `%` and `_` are literal.
async fn filters_fold_ascii_case_only_and_labels_match_literally(store: Arc<dyn TokenStore>) {
    store.insert_token(&record("e", Some("Émile"), 1), None).await.unwrap();
    store
        .insert_token(
            &TokenRecord {
                label: "50%_OFF".into(),
                ..record("p", None, 2)
            },
            None,
        )
        .await
        .unwrap();
    store.insert_token(&record("q", None, 3), None).await.unwrap();
    let by_user = |user: &str| TokenQuery {
        user: Some(user.into()),
        ..all_tokens()
    };
    assert_eq!(store.list_tokens(&by_user("ÉMILE")).await.unwrap().total, 1);
    assert_eq!(
        store.list_tokens(&by_user("émile")).await.unwrap().total,
        0,
        "É is not folded"
    );
    let by_label = |label: &str| TokenQuery {
        label: Some(label.into()),
        ..all_tokens()
    };
    assert_eq!(ids(&store.list_tokens(&by_label("%_off")).await.unwrap().items), ["p"]);
    assert_eq!(store.list_tokens(&by_label("_")).await.unwrap().total, 1);
    assert_eq!(store.list_tokens(&by_label("%")).await.unwrap().total, 1);
}

async fn a_users_token_limit_holds_and_ignores_unbound_tokens(store: Arc<dyn TokenStore>) {
    for (n, user) in [Some("alice"), Some("ALICE"), None, Some("bob")]
        .into_iter()
        .enumerate()
    {
        assert!(
            store
                .insert_token(&record(&format!("t{n}"), user, 0), Some(2))
                .await
                .unwrap()
        );
    }
    let third = record("t9", Some("Alice"), 0);
    assert!(
        !store.insert_token(&third, Some(2)).await.unwrap(),
        "alice holds two already"
    );
    assert_eq!(store.token("t9").await.unwrap(), None, "nothing stored");
    assert!(
        store.insert_token(&record("u1", None, 0), Some(0)).await.unwrap(),
        "no limit for unbound tokens"
    );
    assert!(store.insert_token(&third, None).await.unwrap(), "no limit given");
    assert!(store.delete_token("t0", 1).await.unwrap().is_some());
    assert!(
        store
            .insert_token(&record("t8", Some("bob"), 0), Some(2))
            .await
            .unwrap()
    );
}

async fn deletions_are_recorded_as_revocations(store: Arc<dyn TokenStore>) {
    for (id, user) in [("a", Some("alice")), ("b", Some("ALICE")), ("c", Some("bob"))] {
        store.insert_token(&record(id, user, 0), None).await.unwrap();
    }
    let cursor = store.revocation_cursor().await.unwrap();
    assert!(store.revocations_after(cursor).await.unwrap().is_empty());
    assert_eq!(
        store.delete_token("c", 10).await.unwrap(),
        Some(record("c", Some("bob"), 0))
    );
    assert!(store.delete_token("c", 11).await.unwrap().is_none());
    let mut deleted = store.delete_user_tokens("Alice", 12).await.unwrap();
    deleted.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(deleted, [record("a", Some("alice"), 0), record("b", Some("ALICE"), 0)]);
    assert!(store.delete_user_tokens("alice", 13).await.unwrap().is_empty());
    let revoked = store.revocations_after(cursor).await.unwrap();
    let revoked_ids: Vec<_> = revoked.iter().map(|r| r.token_id.as_str()).collect();
    assert_eq!(revoked_ids.len(), 3);
    assert_eq!(revoked_ids[0], "c");
    assert!(revoked.windows(2).all(|w| w[0].seq < w[1].seq), "in deletion order");
    assert_eq!(store.revocation_cursor().await.unwrap(), revoked[2].seq);
    assert_eq!(store.revocations_after(revoked[0].seq).await.unwrap(), revoked[1..]);
    assert_eq!(store.list_tokens(&all_tokens()).await.unwrap().total, 0);
    // Purging keeps the newest row, so the cursor never goes back.
    assert_eq!(store.purge_revocations(100).await.unwrap(), 2);
    assert_eq!(store.revocation_cursor().await.unwrap(), revoked[2].seq);
}

async fn updates_change_restrictions_only_and_are_recorded(store: Arc<dyn TokenStore>) {
    let before = TokenRecord {
        valid_until: Some(1_900_000_000_000),
        counter: 7,
        last_used_at: Some(5),
        last_ip: Some("10.1.2.3".into()),
        sealed_pat: Some(vec![1, 2, 3]),
        upstream_token_id: Some("42".into()),
        ..record("u", Some("alice"), 1)
    };
    store.insert_token(&before, None).await.unwrap();
    let cursor = store.revocation_cursor().await.unwrap();
    let restrictions = Restrictions {
        label: "renamed ✓".into(),
        limit_to: "[get]/rest/api/space\n[post]/rest/api/content".into(),
        ip: "10.0.0.0/8".into(),
        rate_limit: Some("60/min".into()),
        enforce: false,
        spaces: Some("DOCS,~alice".into()),
    };
    let after = store.update_token("u", &restrictions, 20).await.unwrap().unwrap();
    let expected = TokenRecord {
        label: restrictions.label.clone(),
        limit_to: restrictions.limit_to.clone(),
        ip: restrictions.ip.clone(),
        rate_limit: restrictions.rate_limit.clone(),
        enforce: false,
        spaces: restrictions.spaces.clone(),
        ..before.clone()
    };
    assert_eq!(after, expected, "only the restrictions change");
    assert_eq!(store.token("u").await.unwrap(), Some(expected));
    let back = Restrictions {
        rate_limit: None,
        enforce: true,
        spaces: None,
        ..restrictions.clone()
    };
    let after = store.update_token("u", &back, 21).await.unwrap().unwrap();
    assert_eq!((after.rate_limit, after.enforce, after.spaces), (None, true, None));
    assert!(store.update_token("missing", &back, 22).await.unwrap().is_none());
    store.delete_token("u", 23).await.unwrap();
    let changes = store.revocations_after(cursor).await.unwrap();
    let kinds: Vec<_> = changes.iter().map(|c| (c.token_id.as_str(), c.kind)).collect();
    assert_eq!(
        kinds,
        [
            ("u", ChangeKind::Update),
            ("u", ChangeKind::Update),
            ("u", ChangeKind::Delete)
        ],
        "an update of nothing records nothing"
    );
}

async fn observed_calls_count_forwarded_requests_per_method_and_path(store: Arc<dyn TokenStore>) {
    let call = |at, token: &str, method: &str, path: &str, decision: &str| AuditEntry {
        method: Some(method.into()),
        path: Some(path.into()),
        decision: decision.into(),
        ..audit_entry(at, Some(token), "alice")
    };
    let entries = [
        call(100, "t", "GET", "/rest/api/content/1", "allow"),
        call(101, "t", "GET", "/rest/api/content/1", "allow"),
        call(102, "t", "GET", "/rest/api/content/2", "report"),
        call(103, "t", "POST", "/rest/api/content", "allow"),
        call(104, "t", "DELETE", "/rest/api/content/1", "deny"),
        call(99, "t", "PUT", "/rest/api/content/1", "allow"),
        call(105, "other", "GET", "/rest/api/space", "allow"),
        AuditEntry {
            kind: AuditKind::Management,
            ..call(106, "t", "POST", "/x", "allow")
        },
    ];
    store.append_audit(&entries).await.unwrap();
    let observed = store.observed_calls("t", 100).await.unwrap();
    let observed: Vec<_> = observed
        .iter()
        .map(|c| (c.method.as_str(), c.path.as_str(), c.calls))
        .collect();
    assert_eq!(
        observed,
        [
            ("GET", "/rest/api/content/1", 2),
            ("GET", "/rest/api/content/2", 1),
            ("POST", "/rest/api/content", 1),
        ],
        "allowed and reported calls since the time given, of that token, in order"
    );
    assert!(store.observed_calls("nobody", 0).await.unwrap().is_empty());
}

async fn usage_adds_up_and_keeps_the_latest_ip(store: Arc<dyn TokenStore>) {
    store.insert_token(&record("a", None, 0), None).await.unwrap();
    let delta = |calls, at, ip: &str| UsageDelta {
        token_id: "a".into(),
        calls,
        refused: 0,
        last_used_at: at,
        last_ip: ip.into(),
        day: 0,
    };
    store.add_usage(&[delta(3, 100, "1.1.1.1")]).await.unwrap();
    store
        .add_usage(&[delta(2, 50, "2.2.2.2"), delta(1, 200, "3.3.3.3")])
        .await
        .unwrap();
    let stored = store.token("a").await.unwrap().unwrap();
    assert_eq!(
        (stored.counter, stored.last_used_at, stored.last_ip.as_deref()),
        (6, Some(200), Some("3.3.3.3"))
    );
    // An older flush arriving late adds its calls but keeps the latest use.
    store.add_usage(&[delta(4, 150, "4.4.4.4")]).await.unwrap();
    let stored = store.token("a").await.unwrap().unwrap();
    assert_eq!(
        (stored.counter, stored.last_used_at, stored.last_ip.as_deref()),
        (10, Some(200), Some("3.3.3.3"))
    );
    // A token deleted meanwhile is skipped; nothing to add is fine.
    store
        .add_usage(&[UsageDelta {
            token_id: "gone".into(),
            ..delta(1, 1, "x")
        }])
        .await
        .unwrap();
    store.add_usage(&[]).await.unwrap();
    assert_eq!(store.token("a").await.unwrap().unwrap().counter, 10);
}

async fn usage_days_add_up_per_day_and_are_purged_and_deleted_with_their_token(store: Arc<dyn TokenStore>) {
    for id in ["a", "b"] {
        store.insert_token(&record(id, None, 0), None).await.unwrap();
    }
    let delta = |id: &str, day, calls, refused| UsageDelta {
        token_id: id.into(),
        calls,
        refused,
        last_used_at: if calls > 0 { day * DAY_MS } else { 0 },
        last_ip: "10.0.0.1".into(),
        day,
    };
    store
        .add_usage(&[delta("a", 20, 3, 1), delta("b", 20, 5, 0), delta("a", 21, 0, 2)])
        .await
        .unwrap();
    // The same day again (another replica, a later flush) adds to it; a
    // delta of refusals only is no use of the token.
    store
        .add_usage(&[delta("a", 20, 1, 1), delta("gone", 20, 9, 9)])
        .await
        .unwrap();
    let day = |day, calls, refused| UsageDay { day, calls, refused };
    assert_eq!(store.usage_days("a", 0).await.unwrap(), [day(20, 4, 2), day(21, 0, 2)]);
    assert_eq!(store.usage_days("a", 21).await.unwrap(), [day(21, 0, 2)]);
    assert_eq!(store.usage_days("gone", 0).await.unwrap(), []);
    let a = store.token("a").await.unwrap().unwrap();
    assert_eq!((a.counter, a.last_used_at), (4, Some(20 * DAY_MS)));
    let b = store.token("b").await.unwrap().unwrap();
    assert_eq!(b.last_ip.as_deref(), Some("10.0.0.1"));

    // The listing's recent calls are the 30 days up to `now`'s.
    let listed = |now_day: i64| {
        let store = store.clone();
        async move {
            let query = TokenQuery {
                now: now_day * DAY_MS,
                order: TokenOrder::Label,
                ascending: true,
                ..all_tokens()
            };
            let page = store.list_tokens(&query).await.unwrap();
            page.items.iter().map(|t| t.recent_calls).collect::<Vec<_>>()
        }
    };
    assert_eq!(listed(21).await, [4, 5]);
    assert_eq!(listed(49).await, [4, 5], "day 20 is the 30th day back from day 49");
    assert_eq!(listed(50).await, [0, 0]);
    assert_eq!(listed(19).await, [0, 0], "days after now do not count");

    assert_eq!(store.purge_usage_days(21).await.unwrap(), 2);
    assert_eq!(store.usage_days("a", 0).await.unwrap(), [day(21, 0, 2)]);
    store.delete_token("a", 1).await.unwrap();
    assert_eq!(store.usage_days("a", 0).await.unwrap(), [], "a token's days go with it");
    assert_eq!(store.purge_usage_days(1000).await.unwrap(), 0, "b's day was purged");
}

async fn lists_sort_by_each_column_and_filter_by_state(store: Arc<dyn TokenStore>) {
    const NOW: EpochMs = 100 * DAY_MS;
    let token =
        |id: &str, label: &str, user: Option<&str>, valid_until, last_used_at, spaces: Option<&str>| TokenRecord {
            label: label.into(),
            valid_until,
            last_used_at,
            spaces: spaces.map(Into::into),
            ..record(id, user, id.as_bytes()[0] as i64)
        };
    let tokens = [
        // expired
        token("a", "beta", Some("carol"), Some(NOW - 1), Some(5), Some("DOCS")),
        // expiring (within 7 days)
        token("b", "Alpha", Some("alice"), Some(NOW + DAY_MS), None, None),
        // active, never expires, unbound
        token("c", "gamma", None, None, Some(9), Some("KB:read")),
        // active
        token(
            "d",
            "delta",
            Some("Bob"),
            Some(NOW + 30 * DAY_MS),
            Some(7),
            Some("ARCH"),
        ),
    ];
    for t in &tokens {
        store.insert_token(t, None).await.unwrap();
    }
    store
        .add_usage(&[
            UsageDelta {
                token_id: "a".into(),
                calls: 2,
                refused: 0,
                last_used_at: 5,
                last_ip: String::new(),
                day: 99,
            },
            UsageDelta {
                token_id: "d".into(),
                calls: 9,
                refused: 0,
                last_used_at: 7,
                last_ip: String::new(),
                day: 100,
            },
            UsageDelta {
                token_id: "c".into(),
                calls: 1,
                refused: 50,
                last_used_at: 9,
                last_ip: String::new(),
                day: 98,
            },
        ])
        .await
        .unwrap();
    let list = |order, ascending, state| {
        let store = store.clone();
        async move {
            let query = TokenQuery {
                order,
                ascending,
                state,
                now: NOW,
                soon: NOW + 7 * DAY_MS,
                ..all_tokens()
            };
            let page = store.list_tokens(&query).await.unwrap();
            assert_eq!(page.total as usize, page.items.len());
            page.items
                .iter()
                .map(|t| t.record.id.clone())
                .collect::<Vec<_>>()
                .join("")
        }
    };
    use TokenOrder::*;
    // Labels compare without case; unbound sorts as the empty name.
    assert_eq!(list(Label, true, None).await, "badc");
    assert_eq!(list(Label, false, None).await, "cdab");
    assert_eq!(list(User, true, None).await, "cbda");
    // Any space (none named) first, then by the keys as written.
    assert_eq!(list(Spaces, true, None).await, "bdac");
    // Never expiring is the latest expiry; never used the earliest use.
    assert_eq!(list(Expires, true, None).await, "abdc");
    assert_eq!(list(LastUsed, false, None).await, "cdab");
    assert_eq!(list(LastUsed, true, None).await, "badc");
    // Calls of the last 30 days, refusals not counted; ties newest first.
    assert_eq!(list(Calls, false, None).await, "dacb");
    assert_eq!(list(Created, false, None).await, "dcba");
    assert_eq!(list(Created, true, None).await, "abcd");
    assert_eq!(list(Created, false, Some(TokenState::Active)).await, "dcb");
    assert_eq!(list(Created, false, Some(TokenState::Expiring)).await, "b");
    assert_eq!(list(Created, false, Some(TokenState::Expired)).await, "a");
    assert_eq!(list(Created, false, Some(TokenState::Unbound)).await, "c");
    // Text folds ASCII only and compares bytewise on both backends, whatever
    // the database's collation: É sorts after every ASCII letter.
    store
        .insert_token(&token("e", "Éclair", Some("émile"), None, None, None), None)
        .await
        .unwrap();
    store
        .insert_token(&token("f", "ZETA", Some("Zoe"), None, None, None), None)
        .await
        .unwrap();
    assert_eq!(list(Label, true, None).await, "badcfe");
    assert_eq!(list(User, true, None).await, "cbdafe");
    for id in ["e", "f"] {
        store.delete_token(id, 0).await.unwrap();
    }
    // The states add up to what the metrics count.
    let states = store.token_states(NOW, NOW + 7 * DAY_MS).await.unwrap();
    assert_eq!((states.active, states.expiring, states.expired), (3, 1, 1));
}

async fn audit_filters_by_outcome(store: Arc<dyn TokenStore>) {
    let refused = AuditEntry {
        decision: "deny".into(),
        status: Some(403),
        reason: Some("rule_denied".into()),
        ..audit_entry(2, Some("t"), "alice")
    };
    let reported = AuditEntry {
        decision: "report".into(),
        ..audit_entry(3, Some("t"), "alice")
    };
    let created = AuditEntry::management(4, "admin", "create");
    let cross_site = AuditEntry::management(5, "", "refused_cross_site");
    store
        .append_audit(&[
            audit_entry(1, Some("t"), "alice"),
            refused,
            reported,
            created,
            cross_site,
        ])
        .await
        .unwrap();
    let times = |outcome| {
        let store = store.clone();
        async move {
            let query = AuditQuery { outcome, ..all_audit() };
            let page = store.list_audit(&query).await.unwrap();
            assert_eq!(page.total as usize, page.items.len());
            page.items.iter().map(|e| e.at).collect::<Vec<_>>()
        }
    };
    assert_eq!(times(None).await, [5, 4, 3, 2, 1]);
    assert_eq!(times(Some(AuditOutcome::Allowed)).await, [3, 1]);
    assert_eq!(
        times(Some(AuditOutcome::Refused)).await,
        [5, 2],
        "a cross-site call refused too"
    );
}

fn audit_entry(at: EpochMs, token: Option<&str>, user: &str) -> AuditEntry {
    AuditEntry {
        at,
        kind: AuditKind::Request,
        token_id: token.map(Into::into),
        token_label: token.map(|t| format!("label {t}")),
        user: Some(user.into()),
        client_ip: Some("10.0.0.1".into()),
        method: Some("GET".into()),
        path: Some("/rest/api/space".into()),
        status: Some(200),
        decision: "allow".into(),
        reason: None,
        duration_ms: Some(3),
        detail: None,
    }
}

fn all_audit() -> AuditQuery {
    AuditQuery {
        max_results: 1000,
        ..Default::default()
    }
}

async fn audit_entries_round_trip_filter_page_and_purge(store: Arc<dyn TokenStore>) {
    let mut entries: Vec<_> = (0..5)
        .map(|i| {
            audit_entry(
                i,
                Some(if i % 2 == 0 { "even" } else { "odd" }),
                if i < 3 { "Alice" } else { "bob" },
            )
        })
        .collect();
    entries[1] = AuditEntry {
        status: Some(403),
        decision: "deny".into(),
        reason: Some("rule_mismatch".into()),
        ..entries[1].clone()
    };
    let management = AuditEntry {
        at: 4,
        kind: AuditKind::Management,
        token_id: Some("even".into()),
        token_label: Some("label even".into()),
        user: Some("admin".into()),
        client_ip: None,
        method: None,
        path: None,
        status: None,
        decision: "delete".into(),
        reason: None,
        duration_ms: None,
        detail: Some("deleted token 'label even'".into()),
    };
    store.append_audit(&entries).await.unwrap();
    store.append_audit(std::slice::from_ref(&management)).await.unwrap();
    store.append_audit(&[]).await.unwrap();

    let all = store.list_audit(&all_audit()).await.unwrap();
    assert_eq!(all.total, 6);
    // Newest first; at the same time, the later written first.
    assert_eq!(all.items[0], management);
    assert_eq!(all.items[1], entries[4]);
    assert_eq!(all.items.iter().map(|e| e.at).collect::<Vec<_>>(), [4, 4, 3, 2, 1, 0]);
    assert_eq!(all.items[4], entries[1]);

    let even = AuditQuery {
        token_id: Some("even".into()),
        max_results: 2,
        start_at: 1,
        ..Default::default()
    };
    let page = store.list_audit(&even).await.unwrap();
    assert_eq!(page.total, 4);
    assert_eq!(page.items.iter().map(|e| e.at).collect::<Vec<_>>(), [4, 2]);
    let alice = AuditQuery {
        user: Some("ALICE".into()),
        ..all_audit()
    };
    assert_eq!(store.list_audit(&alice).await.unwrap().total, 3);
    let both = AuditQuery {
        user: Some("bob".into()),
        token_id: Some("odd".into()),
        ..all_audit()
    };
    assert_eq!(store.list_audit(&both).await.unwrap().total, 1);

    assert_eq!(store.purge_audit(2).await.unwrap(), 2);
    let left = store.list_audit(&all_audit()).await.unwrap();
    assert_eq!(left.items.iter().map(|e| e.at).collect::<Vec<_>>(), [4, 4, 3, 2]);
}

async fn ping_answers(store: Arc<dyn TokenStore>) {
    store.ping().await.unwrap();
}

async fn a_token_written_through_one_handle_is_read_and_revoked_through_the_other(
    a: Arc<dyn TokenStore>,
    b: Arc<dyn TokenStore>,
) {
    let cursor = b.revocation_cursor().await.unwrap();
    a.insert_token(&record("shared", Some("alice"), 5), None).await.unwrap();
    assert_eq!(b.token("shared").await.unwrap().unwrap().user.as_deref(), Some("alice"));
    assert!(b.delete_token("shared", 6).await.unwrap().is_some());
    assert_eq!(a.token("shared").await.unwrap(), None);
    let revoked = a.revocations_after(cursor).await.unwrap();
    assert_eq!(
        revoked.iter().map(|r| r.token_id.as_str()).collect::<Vec<_>>(),
        ["shared"]
    );
}

async fn settings_default_on_and_persist_across_handles(a: Arc<dyn TokenStore>, b: Arc<dyn TokenStore>) {
    assert_eq!(a.settings().await.unwrap(), Settings::default());
    let off = Settings {
        usage_details: false,
        audit_log: true,
    };
    a.save_settings(off).await.unwrap();
    assert_eq!(b.settings().await.unwrap(), off);
    let both_off = Settings {
        usage_details: false,
        audit_log: false,
    };
    b.save_settings(both_off).await.unwrap();
    assert_eq!(a.settings().await.unwrap(), both_off);
    a.save_settings(Settings::default()).await.unwrap();
    assert_eq!(b.settings().await.unwrap(), Settings::default());
}

/// Two replicas flushing the same tokens at the same moment, in opposite
/// orders: every call is counted, and neither flush fails (no deadlock).
async fn concurrent_usage_flushes_from_two_handles_add_up_exactly(a: Arc<dyn TokenStore>, b: Arc<dyn TokenStore>) {
    const TOKENS: usize = 12;
    const FLUSHERS: usize = 4;
    const ROUNDS: i64 = 25;
    for t in 0..TOKENS {
        a.insert_token(&record(&format!("u{t:02}"), None, 0), None)
            .await
            .unwrap();
    }
    let mut flushes = Vec::new();
    for (h, store) in [a.clone(), b.clone()].into_iter().enumerate() {
        for f in 0..FLUSHERS {
            let store = store.clone();
            flushes.push(tokio::spawn(async move {
                for round in 0..ROUNDS {
                    let mut deltas: Vec<_> = (0..TOKENS)
                        .map(|t| UsageDelta {
                            token_id: format!("u{t:02}"),
                            calls: (t + 1) as i64,
                            refused: 1,
                            last_used_at: round * 100 + (h * FLUSHERS + f) as i64,
                            last_ip: format!("10.0.{h}.{f}"),
                            // Two days, so flushes race on both rows.
                            day: round % 2,
                        })
                        .collect();
                    if (h + f) % 2 == 1 {
                        deltas.reverse();
                    }
                    store.add_usage(&deltas).await.unwrap();
                }
            }));
        }
    }
    for flush in flushes {
        flush.await.unwrap();
    }
    let writers = (2 * FLUSHERS) as i64;
    for t in 0..TOKENS {
        let stored = b.token(&format!("u{t:02}")).await.unwrap().unwrap();
        assert_eq!(stored.counter, (t as i64 + 1) * ROUNDS * writers, "token u{t:02}");
        // The latest use is the last round of the highest-numbered writer.
        assert_eq!(stored.last_used_at, Some((ROUNDS - 1) * 100 + writers - 1));
        assert_eq!(stored.last_ip.as_deref(), Some("10.0.1.3"));
        let days = b.usage_days(&format!("u{t:02}"), 0).await.unwrap();
        let on = |day: i64| {
            let rounds = (0..ROUNDS).filter(|round| round % 2 == day).count() as i64;
            UsageDay {
                day,
                calls: (t as i64 + 1) * writers * rounds,
                refused: writers * rounds,
            }
        };
        assert_eq!(days, [on(0), on(1)]);
    }
}

async fn concurrent_creations_cannot_pass_a_users_limit_together(a: Arc<dyn TokenStore>, b: Arc<dyn TokenStore>) {
    let mut creations = tokio::task::JoinSet::new();
    for n in 0..12 {
        let store = if n % 2 == 0 { a.clone() } else { b.clone() };
        creations.spawn(async move {
            store
                .insert_token(&record(&format!("c{n}"), Some("carol"), 0), Some(5))
                .await
        });
    }
    let mut stored = 0;
    while let Some(result) = creations.join_next().await {
        // SQLite may refuse a racing writer outright (busy): never a sixth token.
        if let Ok(Ok(true)) = result {
            stored += 1;
        }
    }
    let carol = TokenQuery {
        user: Some("carol".into()),
        ..all_tokens()
    };
    let held = a.list_tokens(&carol).await.unwrap().total;
    assert_eq!(held, stored);
    assert!(held <= 5, "{held} tokens");
    assert!(held >= 1);
}
