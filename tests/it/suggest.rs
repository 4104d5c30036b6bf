//! Suggested rules (SPEC §16) from a token's audited calls, through the API
//! and the CLI, and the rollout they exist for: a report-only token, a day of
//! its script's calls, `rules suggest`, `token update --limit-to @rules.txt
//! --enforce` from another process, and the script keeps working while
//! everything else it never did is refused.

use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::{Value, json};
use tokengate::{DAY_MS, NewToken, RequestHead, RuleSet, Verdict};

use crate::common::fake_confluence::ADMIN_PASSWORD;
use crate::common::process::{GatewayProcess, cli};
use crate::common::{FakeConfluence, Gateway, Reply, basic, get, send};

const BASE: &str = "/rest/extender/1.0/tokenTools";

/// What the script does, every day: ids and space keys vary, methods too.
const SCRIPT: [(&str, &str); 9] = [
    ("GET", "/rest/api/content/123"),
    ("GET", "/rest/api/content/456"),
    ("GET", "/rest/api/content/456"),
    ("PUT", "/rest/api/content/123"),
    ("POST", "/rest/api/content"),
    ("GET", "/rest/api/content/123/child/attachment"),
    ("GET", "/rest/api/space/DOCS"),
    ("GET", "/rest/api/space/PM"),
    ("GET", "/rest/api/search?cql=space=DOCS"),
];

/// What it never did.
const NEVER: [(&str, &str); 4] = [
    ("GET", "/rest/api/space/SECRET"),
    ("DELETE", "/rest/api/content/123"),
    ("GET", "/rest/api/user/memberof"),
    ("POST", "/rest/api/space"),
];

async fn run(url: impl Fn(&str) -> String, auth: &str, calls: &[(&str, &str)]) -> Vec<u16> {
    let mut statuses = Vec::new();
    for (method, path) in calls {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let headers = [("authorization", auth), ("content-type", "application/json")];
        statuses.push(send(method, &url(path), &headers, "{}").await.status.as_u16());
    }
    statuses
}

fn allows(limit_to: &str, method: &str, target: &str) -> bool {
    let rules = RuleSet::parse(limit_to).unwrap();
    let (path, query) = target.split_once('?').map_or((target, None), |(p, q)| (p, Some(q)));
    matches!(rules.check(&RequestHead { method, path, query }), Verdict::Permit(_))
}

async fn suggest(gw: &Gateway, auth: &str, query: &str) -> Reply {
    get(&gw.url(&format!("{BASE}/suggest?{query}")), &[("authorization", auth)]).await
}

#[tokio::test]
async fn the_api_proposes_rules_that_allow_every_call_and_little_else() {
    let gw = Gateway::start().await;
    let created = gw
        .create_token(NewToken {
            label: "sync".into(),
            user: Some("alice".into()),
            limit_to: Some("[get]/rest/api/nothing".into()),
            enforce: Some(false),
            ip: Some("127.0.0.1".into()),
            ..NewToken::default()
        })
        .await;
    let (id, auth) = (created.record.id.clone(), basic("alice", &created.value));
    assert!(run(|p| gw.url(p), &auth, &SCRIPT).await.iter().all(|s| *s == 200));
    // Refused calls are not observed: they are not what the script does.
    let wrong_user = basic("bob", &created.value);
    assert_ne!(
        get(&gw.url("/rest/api/group"), &[("authorization", &wrong_user)])
            .await
            .status,
        200
    );
    gw.app.flush_records().await;

    let admin = basic("admin", ADMIN_PASSWORD);
    let reply = suggest(&gw, &admin, &format!("tokenId={id}")).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let answer = reply.json();
    assert_eq!(
        (answer["status"].as_str(), answer["tokenId"].as_str()),
        (Some("ok"), Some(id.as_str()))
    );
    assert_eq!(answer["observed"], SCRIPT.len());
    assert!(answer["note"].as_str().unwrap().contains("methods and paths only"));
    let rules: Vec<(String, u64)> = answer["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["rule"].as_str().unwrap().to_owned(), r["calls"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        rules,
        [
            ("[post]/rest/api/content".to_owned(), 1),
            ("[get|put]/rest/api/content/[0-9]+".to_owned(), 4),
            ("[get]/rest/api/content/[0-9]+/child/attachment".to_owned(), 1),
            ("[get]/rest/api/search".to_owned(), 1),
            ("[get]/rest/api/space/(DOCS|PM)".to_owned(), 2),
        ]
    );
    let limit_to = answer["limitTo"].as_str().unwrap();
    let lines: Vec<&str> = limit_to.lines().collect();
    assert_eq!(lines, rules.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>());
    for (method, target) in SCRIPT {
        assert!(allows(limit_to, method, target), "{method} {target}");
    }
    for (method, target) in NEVER {
        assert!(!allows(limit_to, method, target), "{method} {target}");
    }
    assert_eq!(
        suggest(&gw, &admin, &format!("tokenId={id}")).await.json(),
        answer,
        "deterministic"
    );

    // Only the last N days count (30 by default).
    gw.clock.advance_ms(31 * DAY_MS);
    let stale = suggest(&gw, &admin, &format!("tokenId={id}")).await;
    assert_eq!((stale.status.as_u16(), stale.reason()), (404, "not_found".into()));
    assert!(stale.json()["message"].as_str().unwrap().contains("30 days"));
    let longer = suggest(&gw, &admin, &format!("tokenId={id}&days=60")).await;
    assert_eq!(longer.json()["observed"], SCRIPT.len());

    // Its user may ask too; nobody else, and bad queries are named.
    let alice = basic("alice", "alice-password");
    assert_eq!(suggest(&gw, &alice, &format!("tokenId={id}&days=60")).await.status, 200);
    let bob = basic("bob", "bob-password");
    assert_eq!(suggest(&gw, &bob, &format!("tokenId={id}&days=60")).await.status, 404);
    for (query, status, field) in [
        ("", 400, Some("tokenId")),
        (&*format!("tokenId={id}&days=0"), 400, Some("days")),
        (&*format!("tokenId={id}&days=x"), 400, Some("days")),
        (&*format!("tokenId={id}&days=99999"), 400, Some("days")),
        ("tokenId=nope", 404, None),
    ] {
        let reply = suggest(&gw, &admin, query).await;
        assert_eq!(reply.status.as_u16(), status, "{query}: {:?}", reply.body);
        assert_eq!(reply.json()["field"].as_str(), field, "{query}");
    }
    let post = send(
        Method::POST,
        &gw.url(&format!("{BASE}/suggest?tokenId={id}")),
        &[("authorization", &admin)],
        "",
    )
    .await;
    assert_eq!(post.status, 405);
}

fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Done means (issue 15): an admin creates a token in report-only mode, lets
/// the script run, runs `tokengate rules suggest`, applies the proposal with
/// `token update --limit-to @rules.txt --enforce`, and the script keeps
/// working while everything else it never did is refused. The gateway and
/// the CLI are separate processes on one SQLite store: the update reaches
/// the gateway within a second.
#[tokio::test]
async fn report_only_then_suggest_then_enforce_keeps_the_script_working() {
    let confluence = FakeConfluence::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = GatewayProcess::spawn(dir.path(), &["--upstream", &confluence.origin()], &[]).await;
    let created: Value = serde_json::from_str(&stdout(&cli(
        dir.path(),
        &[
            "token",
            "create",
            "--label",
            "sync",
            "--user",
            "alice",
            "--report-only",
            "--json",
        ],
    )))
    .unwrap();
    assert_eq!(created["enforce"], false);
    let id = created["id"].as_str().unwrap().to_owned();
    let auth = basic("alice", created["token"].as_str().unwrap());
    let url = |path: &str| gateway.url(path);
    assert!(run(url, &auth, &SCRIPT).await.iter().all(|s| *s == 200));

    // The gateway writes its audit log in the background.
    let deadline = Instant::now() + Duration::from_secs(10);
    let answer: Value = loop {
        let out = cli(dir.path(), &["rules", "suggest", "--token", &id, "--json"]);
        if out.status.success() {
            let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
            if answer["observed"] == SCRIPT.len() {
                break answer;
            }
        }
        assert!(Instant::now() < deadline, "the calls were never audited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let out = cli(dir.path(), &["rules", "suggest", "--token", &id]);
    let rules = stdout(&out);
    assert_eq!(
        rules.trim_end(),
        answer["limitTo"].as_str().unwrap(),
        "stdout is the rules alone"
    );
    let told = String::from_utf8_lossy(&out.stderr);
    assert!(
        told.contains("9 calls") && told.contains("methods and paths only"),
        "{told}"
    );
    assert!(
        told.contains("       4 calls  [get|put]/rest/api/content/[0-9]+"),
        "{told}"
    );
    assert_eq!(
        stdout(&cli(dir.path(), &["rules", "suggest", "--token", &id])),
        rules,
        "deterministic"
    );
    std::fs::write(dir.path().join("rules.txt"), &rules).unwrap();

    let out = cli(
        dir.path(),
        &["token", "update", &id, "--limit-to", "@rules.txt", "--enforce"],
    );
    assert!(stdout(&out).contains("updated token 'sync'"));
    let updated = Instant::now();
    let deadline = updated + Duration::from_secs(1);
    loop {
        let refused = run(url, &auth, &NEVER).await;
        if refused.iter().all(|s| *s == 403) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not enforced 1 s after the update: {refused:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "enforced by the gateway process {:?} after the update",
        updated.elapsed()
    );
    assert!(
        run(url, &auth, &SCRIPT).await.iter().all(|s| *s == 200),
        "the script keeps working"
    );

    let listed: Value = serde_json::from_str(&stdout(&cli(dir.path(), &["token", "list", "--json"]))).unwrap();
    assert_eq!(listed[0]["enforce"], true);
    assert_eq!(listed[0]["rules"].as_array().unwrap().len(), 5);
    // The update sits behind however many calls the polling above made.
    let audit = stdout(&cli(dir.path(), &["audit", "--token", &id, "--limit", "100000"]));
    assert!(
        audit.contains(r#"update via cli"#) && audit.contains(r#""enforce":[false,true]"#),
        "{audit}"
    );
    assert!(gateway.terminate().await.success());
}

#[tokio::test]
async fn the_cli_refuses_bad_updates_with_the_api_messages() {
    let dir = tempfile::tempdir().unwrap();
    let created: Value = serde_json::from_str(&stdout(&cli(
        dir.path(),
        &[
            "token",
            "create",
            "--label",
            "x",
            "--user",
            "alice",
            "--rate-limit",
            "10/min",
            "--json",
        ],
    )))
    .unwrap();
    assert_eq!(created["rateLimit"], "10/min");
    let id = created["id"].as_str().unwrap();
    for (args, code, says) in [
        (
            vec!["--rate-limit", "5/week"],
            2,
            "rateLimit: `5/week` is not a rate limit",
        ),
        (vec!["--limit-to", "[get]/a("], 2, "limitTo: "),
        (vec!["--ip", "300.1.1.1"], 2, "ip: "),
        (vec![], 2, "nothing to change"),
        (vec!["--enforce", "--report-only"], 2, "cannot be used with"),
    ] {
        let mut all = vec!["token", "update", id];
        all.extend(&args);
        let out = cli(dir.path(), &all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    let missing = cli(dir.path(), &["token", "update", "nope", "--label", "y"]);
    assert_eq!(missing.status.code(), Some(1));
    let none = cli(dir.path(), &["token", "update", id, "--rate-limit", "none", "--json"]);
    let after: Value = serde_json::from_str(&stdout(&none)).unwrap();
    assert_eq!(
        (after["rateLimit"].clone(), after["label"].clone()),
        (Value::Null, json!("x"))
    );
    let nothing = cli(dir.path(), &["rules", "suggest", "--token", id]);
    assert_eq!(nothing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&nothing.stderr).contains("nothing to suggest rules from"));
}
