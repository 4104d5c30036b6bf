//! `forward_as = "pat"` (SPEC §13) against a fake Confluence that, like a
//! stock Confluence, ignores `X-Forwarded-User` and knows only passwords and
//! its own personal access tokens: minting at creation, supplied PATs and
//! their checks, forwarding as the user, PATs Confluence stops accepting,
//! revocation on deletion, the seal key, and where the PAT must never appear.

use hyper::Method;
use serde_json::{Value, json};
use tokengate::{AuditQuery, ForwardAs, TokenAuth, TokenQuery};

use crate::common::fake_confluence::{PersonalAccessToken, USERS};
use crate::common::process::{GatewayProcess, cli, cli_with};
use crate::common::{FakeConfluence, Gateway, Reply, basic, get, send};

const BASE: &str = "/rest/extender/1.0/tokenTools";
const SPACE: &str = "/rest/api/space";

fn pat_mode(c: &mut tokengate::Config) {
    c.forward_as = ForwardAs::Pat;
    c.token_auth = TokenAuth::Both;
}

/// `user`'s password as Basic credentials.
fn password(user: &str) -> String {
    let (_, pass) = USERS
        .iter()
        .find(|(name, _)| *name == user)
        .expect("a fake Confluence user");
    basic(user, pass)
}

async fn set(gw: &Gateway, auth: &str, body: Value) -> Reply {
    let headers = [("authorization", auth), ("content-type", "application/json")];
    send(
        Method::POST,
        &gw.url(&format!("{BASE}/set")),
        &headers,
        body.to_string(),
    )
    .await
}

async fn delete(gw: &Gateway, auth: &str, id: &str) -> Reply {
    let url = gw.url(&format!("{BASE}/delete?id={id}"));
    send(Method::DELETE, &url, &[("authorization", auth)], "").await
}

fn assert_refused(reply: &Reply, status: u16, field: &str, says: &str) {
    assert_eq!(reply.status.as_u16(), status, "{:?}", reply.body);
    let json = reply.json();
    assert_eq!(json["field"], field, "{json}");
    let message = json["message"].as_str().unwrap();
    assert!(message.contains(says), "{message:?} should say {says:?}");
}

async fn stored_tokens(gw: &Gateway) -> usize {
    let all = TokenQuery {
        max_results: 1000,
        ..TokenQuery::default()
    };
    gw.app.store.list_tokens(&all).await.unwrap().items.len()
}

fn last_pat(gw: &Gateway) -> PersonalAccessToken {
    gw.upstream.pats().pop().expect("Confluence minted a PAT")
}

#[tokio::test]
async fn a_token_created_with_a_password_gets_a_minted_pat_and_acts_as_its_user() {
    let gw = Gateway::start_with(pat_mode).await;
    let reply = set(
        &gw,
        &password("alice"),
        json!({"label": "ci-bot", "daysUntilExpiry": 30}),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let created = reply.json();
    let (id, value) = (created["id"].as_str().unwrap(), created["token"].as_str().unwrap());
    assert_eq!(created["user"], "alice");
    assert_eq!(created["forwardAs"], "pat");

    // Exactly what Confluence received: the user's own password, a named PAT for 30 days.
    let mint = gw.upstream.requests_to("/rest/pat/latest/tokens");
    assert_eq!(mint.len(), 1);
    assert_eq!(mint[0].method, "POST");
    assert_eq!(mint[0].header("authorization"), Some(password("alice").as_str()));
    assert_eq!(mint[0].header("content-type"), Some("application/json"));
    assert_eq!(mint[0].header("x-forwarded-user"), None);
    let body: Value = serde_json::from_slice(&mint[0].body_head).unwrap();
    assert_eq!(
        body,
        json!({"name": format!("tokengate: ci-bot ({id})"), "expirationDuration": 30})
    );
    let pat = last_pat(&gw);
    assert_eq!(created["upstreamTokenId"], pat.id.to_string());
    assert_eq!(pat.user, "alice");

    for auth in [basic("alice", value), format!("Bearer {value}")] {
        let reply = get(&gw.url("/rest/api/space?spaceKey=DOCS"), &[("authorization", &auth)]).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        assert_eq!(reply.json()["as"], "alice", "Confluence served it as alice");
        let forwarded = gw.upstream.last();
        assert_eq!(
            forwarded.header("authorization"),
            Some(format!("Bearer {}", pat.raw).as_str())
        );
        assert_eq!(forwarded.header("x-forwarded-user"), None);
        assert!(!forwarded.contains(value), "the gateway token reached Confluence");
        assert!(!forwarded.contains("tgw_"));
    }
    let listed = get(
        &gw.url(&format!("{BASE}/get")),
        &[("authorization", &password("alice"))],
    )
    .await;
    let token = &listed.json()["tokens"][0];
    assert_eq!(
        (&token["forwardAs"], &token["upstreamTokenId"]),
        (&json!("pat"), &json!(pat.id.to_string()))
    );
}

#[tokio::test]
async fn a_minted_pat_always_expires() {
    let gw = Gateway::start_with(pat_mode).await;
    assert_eq!(
        set(&gw, &password("alice"), json!({"label": "forever"})).await.status,
        200
    );
    assert_eq!(last_pat(&gw).expiration_days, Some(365));
}

#[tokio::test]
async fn a_supplied_pat_is_checked_with_confluence_and_refusals_say_what_to_do() {
    let gw = Gateway::start_with(pat_mode).await;
    let admin = password("admin");
    let bobs = gw.upstream.create_pat("bob");
    let alices = gw.upstream.create_pat("alice");
    let dead = gw.upstream.create_pat("bob");
    gw.upstream.revoke_pat(&dead);

    let reply = set(
        &gw,
        &admin,
        json!({"label": "x", "userName": "bob", "upstreamToken": alices}),
    )
    .await;
    assert_refused(&reply, 400, "upstreamToken", "belongs to alice, not bob");
    let reply = set(
        &gw,
        &admin,
        json!({"label": "x", "userName": "bob", "upstreamToken": dead}),
    )
    .await;
    assert_refused(
        &reply,
        400,
        "upstreamToken",
        "Confluence does not accept this personal access token",
    );
    let reply = set(
        &gw,
        &admin,
        json!({"label": "x", "userName": "bob", "upstreamToken": "line\nbreak"}),
    )
    .await;
    assert_refused(&reply, 400, "upstreamToken", "not a personal access token");
    let reply = set(&gw, &admin, json!({"label": "x", "userName": "bob"})).await;
    assert_refused(
        &reply,
        400,
        "upstreamToken",
        "let bob create the token with their own password",
    );
    let reply = set(&gw, &admin, json!({"label": "x"})).await;
    assert_refused(&reply, 400, "userName", "give userName");
    let custom = format!("tgw_{}", "c".repeat(40));
    let reply = set(&gw, &admin, json!({"label": "x", "userName": "admin", "token": custom})).await;
    assert_refused(&reply, 400, "token", "always generated");
    // A call made with a token (even an admin's) carries no password to mint with.
    let admins = gw.upstream.create_pat("admin");
    let reply = set(
        &gw,
        &admin,
        json!({"label": "script", "userName": "admin", "upstreamToken": admins}),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let admin_token = basic("admin", reply.json()["token"].as_str().unwrap());
    let reply = set(&gw, &admin_token, json!({"label": "x", "userName": "admin"})).await;
    assert_refused(&reply, 400, "upstreamToken", "call with your Confluence password");
    assert_eq!(stored_tokens(&gw).await, 1, "only the admin's script token");
    assert_eq!(gw.upstream.pats().len(), 4, "nothing minted");

    let reply = set(
        &gw,
        &admin,
        json!({"label": "for bob", "userName": "bob", "upstreamToken": bobs}),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(
        reply.json()["upstreamTokenId"],
        Value::Null,
        "a supplied PAT's id is unknown"
    );
    let value = reply.json()["token"].as_str().unwrap().to_owned();
    let served = get(&gw.url(SPACE), &[("authorization", &basic("bob", &value))]).await;
    assert_eq!(served.json()["as"], "bob");
}

#[tokio::test]
async fn confluence_refusing_or_failing_to_mint_stores_nothing() {
    let gw = Gateway::start_with(pat_mode).await;
    gw.upstream
        .pats_disabled
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let reply = set(&gw, &password("alice"), json!({"label": "x"})).await;
    assert_refused(&reply, 400, "upstreamToken", "Personal access tokens are disabled");
    gw.upstream
        .pats_disabled
        .store(false, std::sync::atomic::Ordering::SeqCst);
    for _ in 0..crate::common::fake_confluence::PAT_LIMIT {
        gw.upstream.create_pat("alice");
    }
    let reply = set(&gw, &password("alice"), json!({"label": "x"})).await;
    assert_refused(&reply, 400, "upstreamToken", "maximum number of personal access tokens");
    gw.upstream
        .pat_api_fails
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let reply = set(&gw, &password("bob"), json!({"label": "x"})).await;
    assert_eq!(
        (reply.status.as_u16(), reply.reason()),
        (502, "upstream_unavailable".into())
    );
    assert_eq!(stored_tokens(&gw).await, 0);
}

#[tokio::test]
async fn a_token_over_the_users_limit_is_refused_before_any_mint() {
    let gw = Gateway::start_with(|c| {
        pat_mode(c);
        c.max_tokens_per_user = 1;
    })
    .await;
    assert_eq!(set(&gw, &password("alice"), json!({"label": "one"})).await.status, 200);
    let reply = set(&gw, &password("alice"), json!({"label": "two"})).await;
    assert_refused(&reply, 400, "userName", "max_tokens_per_user");
    assert_eq!(gw.upstream.pats().len(), 1, "refused before any mint");
}

#[tokio::test]
async fn creations_racing_for_the_last_place_leave_no_minted_pat_alive_but_the_stored_ones() {
    let gw = Gateway::start_with(|c| {
        pat_mode(c);
        c.max_tokens_per_user = 1;
    })
    .await;
    let mut creations = tokio::task::JoinSet::new();
    for n in 0..6 {
        let url = gw.url(&format!("{BASE}/set"));
        creations.spawn(async move {
            let auth = password("alice");
            let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
            send(
                Method::POST,
                &url,
                &headers,
                json!({"label": format!("race {n}")}).to_string(),
            )
            .await
        });
    }
    let mut created = Vec::new();
    while let Some(reply) = creations.join_next().await {
        let reply = reply.unwrap();
        match reply.status.as_u16() {
            200 => created.push(reply.json()["upstreamTokenId"].as_str().unwrap().to_owned()),
            status => assert_eq!(
                (status, reply.json()["field"].clone()),
                (400, json!("userName")),
                "{:?}",
                reply.body
            ),
        }
    }
    assert_eq!(created.len(), 1);
    assert_eq!(stored_tokens(&gw).await, 1);
    for pat in gw.upstream.pats() {
        let kept = created.contains(&pat.id.to_string());
        assert_eq!(
            pat.revoked,
            !kept,
            "PAT {} of a token that {} stored",
            pat.id,
            if kept { "was" } else { "was not" }
        );
    }
}

#[tokio::test]
async fn a_pat_confluence_stops_accepting_is_refused_and_nothing_is_forwarded() {
    let gw = Gateway::start_with(pat_mode).await;
    let reply = set(&gw, &password("alice"), json!({"label": "ci"})).await;
    let value = reply.json()["token"].as_str().unwrap().to_owned();
    let auth = basic("alice", &value);
    assert_eq!(get(&gw.url(SPACE), &[("authorization", &auth)]).await.status, 200);
    gw.upstream.revoke_pat(&last_pat(&gw).raw);

    // The next cold verification (here: after a restart) asks Confluence.
    let gw = gw.reopen(|_| {}).await;
    let forwarded = gw.upstream.requests_to(SPACE).len();
    let reply = get(&gw.url(SPACE), &[("authorization", &auth)]).await;
    assert_eq!(
        (reply.status.as_u16(), reply.reason()),
        (401, "upstream_credential_rejected".into())
    );
    assert!(reply.json()["message"].as_str().unwrap().contains("create a new token"));
    assert_eq!(gw.upstream.requests_to(SPACE).len(), forwarded, "nothing forwarded");
    // Not a guess: the client is not throttled for it.
    for _ in 0..25 {
        get(&gw.url(SPACE), &[("authorization", &auth)]).await;
    }
    let reply = get(&gw.url(SPACE), &[("authorization", &auth)]).await;
    assert_eq!(reply.reason(), "upstream_credential_rejected");
}

#[tokio::test]
async fn a_header_mode_token_has_no_pat_to_forward_in_pat_mode() {
    let gw = Gateway::start().await;
    let value = gw.token_for("alice").await;
    let pat = gw.upstream.create_pat("alice");
    let reply = set(
        &gw,
        &password("admin"),
        json!({"label": "x", "userName": "alice", "upstreamToken": pat}),
    )
    .await;
    assert_refused(&reply, 400, "upstreamToken", "used only with forward_as");
    let gw = gw.reopen(pat_mode).await;
    let reply = get(&gw.url(SPACE), &[("authorization", &basic("alice", &value))]).await;
    assert_eq!(
        (reply.status.as_u16(), reply.reason()),
        (401, "upstream_credential_rejected".into())
    );
    assert!(
        reply.json()["message"]
            .as_str()
            .unwrap()
            .contains("has no Confluence personal access token")
    );
    assert_eq!(gw.upstream.requests_to(SPACE).len(), 0);
}

#[tokio::test]
async fn deleting_with_the_owners_password_revokes_the_minted_pat() {
    let gw = Gateway::start_with(pat_mode).await;
    let mut ids = Vec::new();
    for label in ["one", "two", "three"] {
        let reply = set(&gw, &password("alice"), json!({"label": label})).await;
        ids.push(reply.json()["id"].as_str().unwrap().to_owned());
    }
    let pats = gw.upstream.pats();

    let reply = delete(&gw, &password("alice"), &ids[0]).await;
    assert_eq!(
        reply.json(),
        json!({"status": "ok", "deleted": 1, "upstreamRevoked": true})
    );
    let revocation = gw
        .upstream
        .requests_to(&format!("/rest/pat/latest/tokens/{}", pats[0].id));
    assert_eq!(revocation.len(), 1);
    assert_eq!(revocation[0].method, "DELETE");
    assert_eq!(revocation[0].header("authorization"), Some(password("alice").as_str()));
    assert!(gw.upstream.pats()[0].revoked);

    // An admin deletes: the PAT stays in Confluence, and the answer says so.
    let reply = delete(&gw, &password("admin"), &ids[1]).await;
    assert_eq!(reply.json()["upstreamRevoked"], false);
    assert!(!gw.upstream.pats()[1].revoked);

    // Confluence failing to revoke does not keep the token.
    gw.upstream
        .pat_api_fails
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let reply = delete(&gw, &password("alice"), &ids[2]).await;
    assert_eq!(
        reply.json(),
        json!({"status": "ok", "deleted": 1, "upstreamRevoked": false})
    );
    assert_eq!(stored_tokens(&gw).await, 0);
}

#[tokio::test]
async fn a_seal_key_is_needed_to_unseal_and_a_wrong_one_fails_closed() {
    let keys = tempfile::tempdir().unwrap();
    let (key, other, short) = (
        keys.path().join("seal.key"),
        keys.path().join("other.key"),
        keys.path().join("short.key"),
    );
    std::fs::write(&key, [7u8; 32]).unwrap();
    std::fs::write(&other, [8u8; 32]).unwrap();
    std::fs::write(&short, b"tiny").unwrap();
    let with = |path: &std::path::Path| {
        let path = path.to_owned();
        move |c: &mut tokengate::Config| {
            pat_mode(c);
            c.seal_key_file = Some(path);
        }
    };
    let mut gw = Gateway::start_with(with(&key)).await;
    let reply = set(&gw, &password("alice"), json!({"label": "sealed"})).await;
    let auth = basic("alice", reply.json()["token"].as_str().unwrap());
    assert_eq!(
        get(&gw.url(SPACE), &[("authorization", &auth)]).await.json()["as"],
        "alice"
    );
    let forwarded = gw.upstream.requests_to(SPACE).len();
    for seal_key in [Some(other.clone()), None] {
        let described = format!("{seal_key:?}");
        gw = gw.reopen(|c| c.seal_key_file = seal_key).await;
        let reply = get(&gw.url(SPACE), &[("authorization", &auth)]).await;
        assert_eq!(
            (reply.status.as_u16(), reply.reason()),
            (500, "internal_error".into()),
            "{described}"
        );
        assert_eq!(gw.upstream.requests_to(SPACE).len(), forwarded, "nothing forwarded");
    }
    let gw = gw.reopen(|c| c.seal_key_file = Some(key.clone())).await;
    assert_eq!(
        get(&gw.url(SPACE), &[("authorization", &auth)]).await.status,
        200,
        "the right key opens it again"
    );
    let config = tokengate::Config {
        seal_key_file: Some(short),
        ..gw.app.config.as_ref().clone()
    };
    let error = tokengate::App::with_store(
        config,
        gw.app.store.clone(),
        std::sync::Arc::new(tokengate::SystemClock),
    )
    .await
    .err()
    .expect("a short seal key is refused");
    assert!(
        error.to_string().contains("seal_key_file") && error.to_string().contains("at least 16"),
        "{error}"
    );
}

#[tokio::test]
async fn the_raw_pat_appears_nowhere_but_in_requests_to_confluence() {
    let confluence = FakeConfluence::start().await;
    let dir = tempfile::tempdir().unwrap();
    let args = ["--upstream", &confluence.origin()];
    let envs = [
        ("RUST_LOG", "trace"),
        ("TOKENGATE_FORWARD_AS", "pat"),
        ("TOKENGATE_TOKEN_AUTH", "both"),
    ];
    let mut gateway = GatewayProcess::spawn(dir.path(), &args, &envs).await;
    let url = |path: &str| gateway.url(path);
    let json_headers = |auth: &str| {
        vec![
            ("authorization", auth.to_owned()),
            ("content-type", "application/json".to_owned()),
        ]
    };
    let mut answers = Vec::new();
    let alice = password("alice");
    let headers = json_headers(&alice);
    let headers: Vec<_> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let created = send(
        Method::POST,
        &url(&format!("{BASE}/set")),
        &headers,
        json!({"label": "ci"}).to_string(),
    )
    .await;
    assert_eq!(created.status, 200, "{:?}", created.body);
    let value = created.json()["token"].as_str().unwrap().to_owned();
    let id = created.json()["id"].as_str().unwrap().to_owned();
    // Supplied too, through the CLI, from standard input.
    let bobs = confluence.create_pat("bob");
    let origin = confluence.origin();
    let cli_env = [("TOKENGATE_FORWARD_AS", "pat"), ("TOKENGATE_UPSTREAM", origin.as_str())];
    let create_args = [
        "token",
        "create",
        "--label",
        "from-cli",
        "--user",
        "bob",
        "--upstream-token-file",
        "-",
        "--json",
    ];
    let out = cli_with(dir.path(), &create_args, &cli_env, &format!("{bobs}\n")).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cli_created: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&cli_created["user"], &cli_created["forwardAs"]),
        (&json!("bob"), &json!("pat"))
    );
    answers.push(String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr));
    answers.push(String::from_utf8_lossy(&created.body).into_owned());
    for auth in [basic("alice", &value), format!("Bearer {value}")] {
        let reply = get(&url(SPACE), &[("authorization", &auth)]).await;
        assert_eq!(reply.json()["as"], "alice");
        answers.push(format!("{:?} {}", reply.headers, String::from_utf8_lossy(&reply.body)));
    }
    for path in ["/get", "/audit?maxResults=1000"] {
        let reply = get(&url(&format!("{BASE}{path}")), &[("authorization", &password("admin"))]).await;
        answers.push(String::from_utf8_lossy(&reply.body).into_owned());
    }
    let list = cli(dir.path(), &["token", "list", "--json"]);
    answers.push(String::from_utf8_lossy(&list.stdout).into_owned());
    let audit = cli(dir.path(), &["audit", "--json", "--limit", "1000"]);
    answers.push(String::from_utf8_lossy(&audit.stdout).into_owned());
    let reply = send(
        Method::DELETE,
        &url(&format!("{BASE}/delete?id={id}")),
        &[("authorization", &alice)],
        "",
    )
    .await;
    assert_eq!(reply.json()["upstreamRevoked"], true);
    answers.push(String::from_utf8_lossy(&reply.body).into_owned());
    gateway.terminate().await;

    let pats: Vec<String> = confluence.pats().iter().map(|p| p.raw.clone()).collect();
    assert_eq!(pats.len(), 2);
    let logs = gateway.logs();
    assert!(logs.contains("token request"), "the logs were captured: {logs}");
    let mut store_bytes = Vec::new();
    for entry in std::fs::read_dir(dir.path().join("data")).unwrap() {
        store_bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let store_text = String::from_utf8_lossy(&store_bytes);
    for secret in pats.iter().chain([&value]) {
        assert!(!logs.contains(secret.as_str()), "a secret in the logs");
        assert!(!store_text.contains(secret.as_str()), "a secret in the store's files");
    }
    for (n, answer) in answers.iter().enumerate() {
        for pat in &pats {
            assert!(!answer.contains(pat.as_str()), "a PAT in answer {n}: {answer}");
        }
        // The gateway token is shown once: in its create response.
        assert_eq!(answer.contains(&value), n == 1, "answer {n}: {answer}");
    }
    for pat in &pats {
        let forwarded_with_it = confluence
            .requests()
            .iter()
            .any(|r| r.header("authorization") == Some(format!("Bearer {pat}").as_str()));
        assert!(forwarded_with_it || pat == &bobs, "{pat} was used");
    }
    let audit_entries = gateway_audit(&dir).await;
    assert!(
        audit_entries
            .iter()
            .all(|e| pats.iter().all(|p| !format!("{e:?}").contains(p.as_str())))
    );
}

/// The audit log a stopped gateway left in `dir`.
async fn gateway_audit(dir: &tempfile::TempDir) -> Vec<tokengate::AuditEntry> {
    let url = format!("sqlite://{}/data/tokengate.db", dir.path().display());
    let store = tokengate::open_store(&url).await.unwrap();
    let query = AuditQuery {
        max_results: 1000,
        ..AuditQuery::default()
    };
    let entries = store.list_audit(&query).await.unwrap().items;
    assert!(!entries.is_empty());
    entries
}

#[tokio::test]
async fn the_cli_in_pat_mode_needs_a_pat_and_checks_it() {
    let confluence = FakeConfluence::start().await;
    let dir = tempfile::tempdir().unwrap();
    let origin = confluence.origin();
    let env = [("TOKENGATE_FORWARD_AS", "pat"), ("TOKENGATE_UPSTREAM", origin.as_str())];
    let env_cli = |args: &'static [&'static str]| cli_with(dir.path(), args, &env, "");
    let out = env_cli(&["token", "create", "--label", "x", "--user", "bob"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--upstream-token-file"));
    let alices = dir.path().join("alice.pat");
    std::fs::write(&alices, confluence.create_pat("alice")).unwrap();
    let file = alices.to_str().unwrap();
    let args = [
        "token",
        "create",
        "--label",
        "x",
        "--user",
        "bob",
        "--upstream-token-file",
        file,
    ];
    let out = cli_with(dir.path(), &args, &env, "").await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("belongs to alice, not bob"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = env_cli(&["token", "list", "--json"]).await;
    assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "[]");
}

/// `curl ARGS` (a real client), its standard output.
async fn curl(args: &[&str]) -> String {
    let output = tokio::process::Command::new("curl")
        .args(["-sS"])
        .args(args)
        .output()
        .await
        .expect("curl is installed");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn a_newcomer_in_front_of_a_stock_confluence_with_curl() {
    let confluence = FakeConfluence::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    std::fs::write(dir.path().join("config/tokengate.toml"), "forward_as = \"pat\"\n").unwrap();
    let mut gateway = GatewayProcess::spawn(dir.path(), &["--upstream", &confluence.origin()], &[]).await;
    let body = json!({"label": "ci-bot", "daysUntilExpiry": 90, "limitTo": "[get].*/rest/api/space.*"}).to_string();
    let set_url = gateway.url(&format!("{BASE}/set"));
    let created = curl(&[
        "-u",
        "alice:alice-password",
        "-H",
        "Content-Type: application/json",
        "-d",
        &body,
        &set_url,
    ])
    .await;
    let created: Value = serde_json::from_str(&created).unwrap();
    let token = created["token"].as_str().expect("a token value");
    let credentials = format!("alice:{token}");
    let space = curl(&["-u", &credentials, &gateway.url("/rest/api/space")]).await;
    let space: Value = serde_json::from_str(&space).unwrap();
    assert_eq!(space["as"], "alice", "Confluence served the request as alice");
    let refused = curl(&[
        "-u",
        &credentials,
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        "{}",
        &gateway.url("/rest/api/content"),
    ])
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&refused).unwrap()["reason"],
        "rule_mismatch",
        "alice's restrictions hold"
    );
    assert_eq!(confluence.requests_to("/rest/api/content").len(), 0);
    gateway.terminate().await;
}
