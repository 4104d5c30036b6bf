//! Every answer is served as the token's user (SPEC §19): the fake
//! Confluence names the user it served in `X-AUSERNAME`, as Seraph does,
//! and can be told to ignore the identity header (a stock Confluence) or
//! to stop accepting a personal access token (revoked in Confluence).

use std::time::Duration;

use hyper::Method;
use serde_json::json;
use tokengate::{AuditQuery, ForwardAs, NewToken, TokenAuth};

use crate::common::fake_confluence::ADMIN_PASSWORD;
use crate::common::{Gateway, Reply, basic, get, open_tunnel, send};

const SPACE: &str = "/rest/api/space";

fn pat_mode(c: &mut tokengate::Config) {
    c.forward_as = ForwardAs::Pat;
    c.token_auth = TokenAuth::Both;
}

async fn metrics(gw: &Gateway) -> String {
    String::from_utf8_lossy(&get(&gw.url("/tokengate/metrics"), &[]).await.body).into_owned()
}

fn mismatches(metrics: &str, mode: &str) -> u64 {
    let line = format!("tokengate_identity_mismatches_total{{mode=\"{mode}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .unwrap_or_else(|| panic!("no {line} in {metrics}"))
        .parse()
        .unwrap()
}

/// The answer is the gateway's refusal, not Confluence's body.
fn assert_withheld(reply: &Reply, status: u16, reason: &str) {
    assert_eq!(reply.status.as_u16(), status, "{:?}", reply.body);
    assert_eq!(reply.reason(), reason);
    assert!(
        !String::from_utf8_lossy(&reply.body).contains("\"ok\""),
        "Confluence's body leaked"
    );
    assert!(reply.headers.get("x-upstream").is_none(), "Confluence's headers leaked");
}

/// A token of alice's in PAT mode, made with her password (the PAT minted).
async fn pat_token(gw: &Gateway) -> (String, String) {
    let headers = [
        ("authorization", basic("alice", "alice-password")),
        ("content-type", "application/json".to_owned()),
    ];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let reply = send(
        Method::POST,
        &gw.url("/rest/extender/1.0/tokenTools/set"),
        &headers,
        json!({"label": "ci"}).to_string(),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let raw = gw.upstream.pats().last().unwrap().raw.clone();
    (basic("alice", reply.json()["token"].as_str().unwrap()), raw)
}

async fn audited_reasons(gw: &Gateway) -> Vec<Option<String>> {
    gw.app.flush_records().await;
    let query = AuditQuery {
        max_results: 100,
        ..Default::default()
    };
    let entries = gw.app.store.list_audit(&query).await.unwrap().items;
    entries.into_iter().map(|e| e.reason).collect()
}

#[tokio::test]
async fn a_stock_confluence_that_ignores_the_identity_header_gets_502_and_the_admin_is_told() {
    let gw = Gateway::start().await;
    let auth = basic("alice", &gw.token_for("alice").await);
    let ok = get(&gw.url(SPACE), &[("authorization", &auth)]).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["as"], "alice", "served as alice through the header");
    assert_eq!(ok.headers["x-ausername"], "alice", "the served user is passed on");

    gw.upstream
        .ignores_identity_header
        .store(true, std::sync::atomic::Ordering::SeqCst);
    // Whatever the method: a change's answer is withheld as a read's is.
    for method in [Method::GET, Method::POST, Method::DELETE] {
        let reply = send(method, &gw.url(SPACE), &[("authorization", &auth)], "").await;
        assert_withheld(&reply, 502, "upstream_identity_ignored");
        let message = reply.json()["message"].as_str().unwrap().to_owned();
        for says in [
            "served this request as anonymous, not as alice",
            "header authenticator",
            "forward_as = \"pat\"",
        ] {
            assert!(message.contains(says), "{message}");
        }
    }
    // A HEAD's answer has no body to withhold, but its headers are not passed on either.
    let head = send(Method::HEAD, &gw.url(SPACE), &[("authorization", &auth)], "").await;
    assert_eq!(head.status, 502);
    assert!(head.headers.get("x-upstream").is_none(), "Confluence's headers leaked");
    assert_eq!(mismatches(&metrics(&gw).await, "header"), 4);
    assert_eq!(mismatches(&metrics(&gw).await, "pat"), 0);
    let reasons = audited_reasons(&gw).await;
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.as_deref() == Some("upstream_identity_ignored"))
            .count(),
        4
    );
    // Requests that are not token requests are not checked: a password
    // request Confluence serves as anonymous is passed on as it is.
    let anonymous = get(&gw.url(SPACE), &[]).await;
    assert_eq!(
        (anonymous.status.as_u16(), anonymous.json()["as"].clone()),
        (200, json!(null))
    );
    let password = get(&gw.url(SPACE), &[("authorization", &basic("admin", ADMIN_PASSWORD))]).await;
    assert_eq!(password.json()["as"], "admin");
}

#[tokio::test]
async fn an_answer_served_as_someone_else_is_withheld_however_the_name_is_spelt() {
    let gw = Gateway::start().await;
    // Names Confluence sends as they are, and names it URL-encodes
    // (outside ASCII, `@`, `+`, a space): each is matched to its user.
    for user in ["ALICE", "jürgen", "alice@example.com", "j+ci@corp", "Jean Dupont"] {
        let secret = gw
            .create_token(NewToken {
                label: format!("{user} bot"),
                user: Some(user.into()),
                ..NewToken::default()
            })
            .await
            .value;
        let reply = get(&gw.url(SPACE), &[("authorization", &basic(user, &secret))]).await;
        assert_eq!(reply.status, 200, "{user}: {:?}", reply.body);
        assert_eq!(reply.json()["as"], user);
    }

    // Whatever else Confluence names is someone else: the answer is withheld.
    let alice = basic("alice", &gw.token_for("alice").await);
    for names in [
        vec!["anonymous"],
        vec![""],
        vec!["alice2"],
        vec!["alice", "anonymous"],
        vec!["anonymous", "alice"],
        vec!["alice%00"],
        vec!["al%69ce+"],
    ] {
        *gw.upstream.names_served_user_as.lock().unwrap() = names;
        let reply = get(&gw.url(SPACE), &[("authorization", &alice)]).await;
        assert_withheld(&reply, 502, "upstream_identity_ignored");
    }
    *gw.upstream.names_served_user_as.lock().unwrap() = vec!["ALICE", "al%69ce"];
    assert_eq!(get(&gw.url(SPACE), &[("authorization", &alice)]).await.status, 200);
}

#[tokio::test]
async fn an_answer_without_the_served_user_is_passed_on() {
    let gw = Gateway::start().await;
    let auth = basic("alice", &gw.token_for("alice").await);
    gw.upstream
        .hides_served_user
        .store(true, std::sync::atomic::Ordering::SeqCst);
    gw.upstream
        .ignores_identity_header
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let reply = get(&gw.url(SPACE), &[("authorization", &auth)]).await;
    assert_eq!(reply.status, 200, "nothing to check against: passed on");
    assert!(reply.headers.get("x-ausername").is_none());
}

#[tokio::test]
async fn a_websocket_upgrade_served_as_anonymous_opens_no_tunnel() {
    let gw = Gateway::start().await;
    let secret = gw.token_for("alice").await;
    gw.upstream
        .ignores_identity_header
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (head, _stream) = open_tunnel(&gw, "/rest/ws", Some(&basic("alice", &secret))).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert!(head.contains("x-tokengate-reason: upstream_identity_ignored"), "{head}");
    assert_eq!(gw.app.tunnels.len(), 0);
}

#[tokio::test]
async fn a_pat_revoked_in_confluence_is_caught_on_its_first_answer_and_refused_until_it_works_again() {
    let gw = Gateway::start_with(pat_mode).await;
    let (auth, raw) = pat_token(&gw).await;
    assert_eq!(get(&gw.url(SPACE), &[("authorization", &auth)]).await.status, 200);
    let checks = gw.upstream.requests_to("/rest/api/user/current").len();
    gw.upstream.revoke_pat(&raw);

    // The first request after the revocation is forwarded, and Confluence
    // serves it as anonymous: the answer is withheld.
    let forwarded = gw.upstream.requests_to(SPACE).len();
    let reply = get(&gw.url(SPACE), &[("authorization", &auth)]).await;
    assert_withheld(&reply, 401, "upstream_credential_rejected");
    let message = reply.json()["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("served this request as anonymous, not as alice"),
        "{message}"
    );
    assert_eq!(gw.upstream.requests_to(SPACE).len(), forwarded + 1);
    // From then on the PAT counts as rejected: nothing is forwarded.
    for _ in 0..3 {
        let reply = get(&gw.url(SPACE), &[("authorization", &auth)]).await;
        assert_withheld(&reply, 401, "upstream_credential_rejected");
    }
    assert_eq!(
        gw.upstream.requests_to(SPACE).len(),
        forwarded + 1,
        "refused without forwarding"
    );
    assert_eq!(
        gw.upstream.requests_to("/rest/api/user/current").len(),
        checks,
        "no check yet"
    );
    assert_eq!(mismatches(&metrics(&gw).await, "pat"), 1);
    assert!(
        audited_reasons(&gw)
            .await
            .contains(&Some("upstream_credential_rejected".into()))
    );

    // A check with Confluence a minute later still finds it revoked...
    gw.clock.advance_ms(61_000);
    get(&gw.url(SPACE), &[("authorization", &auth)]).await;
    wait_until(|| gw.upstream.requests_to("/rest/api/user/current").len() == checks + 1).await;
    let reply = get(&gw.url(SPACE), &[("authorization", &auth)]).await;
    assert_withheld(&reply, 401, "upstream_credential_rejected");
    // ...and once Confluence takes it again, the next check lets it work.
    gw.upstream.restore_pat(&raw);
    gw.clock.advance_ms(61_000);
    get(&gw.url(SPACE), &[("authorization", &auth)]).await;
    wait_until(|| gw.upstream.requests_to("/rest/api/user/current").len() == checks + 2).await;
    let reply = get(&gw.url(SPACE), &[("authorization", &auth)]).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.json()["as"], "alice");
}

#[tokio::test]
async fn a_pat_that_acts_as_someone_else_is_refused_at_once() {
    let gw = Gateway::start_with(pat_mode).await;
    let (auth, raw) = pat_token(&gw).await;
    assert_eq!(get(&gw.url(SPACE), &[("authorization", &auth)]).await.status, 200);
    // Confluence now maps the PAT to bob (a renamed or reassigned account).
    gw.upstream.reassign_pat(&raw, "bob");
    let reply = get(&gw.url(SPACE), &[("authorization", &auth)]).await;
    assert_withheld(&reply, 401, "upstream_credential_rejected");
    assert!(
        reply.json()["message"]
            .as_str()
            .unwrap()
            .contains("as bob, not as alice")
    );
    let reply = get(&gw.url(SPACE), &[("authorization", &auth)]).await;
    assert!(
        reply.json()["message"].as_str().unwrap().contains("acts as bob"),
        "{:?}",
        reply.body
    );
}

#[tokio::test]
async fn without_the_served_user_a_revoked_pat_is_still_found_by_the_minutely_check() {
    let gw = Gateway::start_with(pat_mode).await;
    gw.upstream
        .hides_served_user
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (auth, raw) = pat_token(&gw).await;
    assert_eq!(get(&gw.url(SPACE), &[("authorization", &auth)]).await.status, 200);
    let checks = gw.upstream.requests_to("/rest/api/user/current").len();
    gw.upstream.revoke_pat(&raw);
    // No X-AUSERNAME to read: within the minute the cached verdict stands
    // (the answer, served as anonymous, is passed on: there is nothing to
    // check it against) and Confluence is not asked.
    let reply = get(&gw.url(SPACE), &[("authorization", &auth)]).await;
    assert_eq!((reply.status.as_u16(), reply.json()["as"].clone()), (200, json!(null)));
    assert_eq!(gw.upstream.requests_to("/rest/api/user/current").len(), checks);
    gw.clock.advance_ms(61_000);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let reply = get(&gw.url(SPACE), &[("authorization", &auth)]).await;
        if reply.status == 401 {
            assert_eq!(reply.reason(), "upstream_credential_rejected");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the revoked PAT kept working");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        gw.upstream.requests_to("/rest/api/user/current").len(),
        checks + 1,
        "one re-check"
    );
}

async fn wait_until(done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_space_lookup_served_as_someone_else_decides_nothing() {
    let gw = Gateway::start().await;
    let secret = gw
        .create_token(NewToken {
            label: "docs".into(),
            user: Some("alice".into()),
            spaces: Some("DOCS".into()),
            ..NewToken::default()
        })
        .await
        .value;
    let auth = basic("alice", &secret);
    gw.upstream
        .ignores_identity_header
        .store(true, std::sync::atomic::Ordering::SeqCst);
    // Content 100 is in DOCS, and anonymous may see it: a lookup answered as
    // anonymous would place it, for a user Confluence never asked about.
    let reply = get(&gw.url("/rest/api/content/100"), &[("authorization", &auth)]).await;
    assert_eq!((reply.status.as_u16(), reply.reason()), (403, "space_unknown".into()));
    let message = reply.json()["message"].as_str().unwrap().to_owned();
    assert!(
        message
            .contains("answered a lookup as anonymous, not as alice: Confluence does not honour the identity header"),
        "{message}"
    );
    assert!(
        gw.upstream
            .requests_to("/rest/api/content/100")
            .iter()
            .all(|r| r.target.contains("expand=space")),
        "only the lookup reached Confluence"
    );
}
