//! The `tokengate` binary: token commands, exit codes, configuration errors.

use std::path::Path;
use std::process::Output;

use crate::common::process::{GatewayProcess, cli, cli_with};
use crate::common::{FakeConfluence, basic, get};
use serde_json::json;

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

#[test]
fn token_create_list_delete_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let out = cli(
        dir.path(),
        &[
            "token", "create", "--label", "ci bot", "--user", "alice", "--days", "30",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let value = stdout(&out).trim().to_owned();
    assert!(value.starts_with("tgw_") && value.len() == 44, "{value}");
    // No log lines: stderr says only what is meant for the person.
    let notice = stderr(&out);
    let notice: Vec<&str> = notice.lines().collect();
    assert_eq!(notice.len(), 2, "{notice:?}");
    assert!(notice[0].starts_with("created token 'ci bot'") && notice[1].starts_with("store this value now"));
    assert!(
        Path::new(&dir.path().join("data/tokengate.db")).exists(),
        "default store under data/"
    );

    let out = cli(
        dir.path(),
        &[
            "token",
            "create",
            "--label",
            "json",
            "--unbound",
            "--json",
            "--ip",
            "10.0.0.0/8",
        ],
    );
    let created: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(created["status"], "ok");
    assert_eq!(created["user"], serde_json::Value::Null);
    assert_eq!(created["ip"], "10.0.0.0/8");
    assert!(created["token"].as_str().unwrap().starts_with("tgw_"));
    let json_id = created["id"].as_str().unwrap().to_owned();

    let out = cli(dir.path(), &["token", "list", "--json"]);
    assert_eq!(stderr(&out), "", "a one-shot command logs nothing");
    let listed: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert!(!stdout(&out).contains(&value), "list shows a token value");
    let alice = &listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["user"] == "alice")
        .unwrap();
    assert_eq!(alice["label"], "ci bot");
    assert_eq!(alice["authorKey"], "cli");
    assert_eq!(alice["expired"], false);
    assert!(alice["validUntil"].as_i64().unwrap() > alice["dateCreated"].as_i64().unwrap());

    let out = cli(dir.path(), &["token", "list", "--user", "ALICE"]);
    assert!(stdout(&out).contains("ci bot") && !stdout(&out).contains("json"));

    let out = cli(dir.path(), &["token", "delete", &json_id]);
    assert_eq!((out.status.code(), stdout(&out).trim()), (Some(0), "deleted 1 token"));
    let out = cli(dir.path(), &["token", "delete", &json_id]);
    assert_eq!(out.status.code(), Some(1), "unknown id is a failure");
    // Deleting all of a user's tokens needs --yes where no terminal can ask.
    let out = cli(dir.path(), &["token", "delete", "--user", "alice"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--yes"), "{}", stderr(&out));
    let out = cli(dir.path(), &["token", "list", "--user", "alice", "--json"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stdout(&out))
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1,
        "nothing deleted without confirmation"
    );
    let out = cli(dir.path(), &["token", "delete", "--user", "alice", "--yes", "--json"]);
    assert_eq!(stdout(&out).trim(), r#"{"deleted":1,"status":"ok"}"#);

    // Each change is recorded once, by the token service, naming the CLI.
    let out = cli(dir.path(), &["audit", "--json"]);
    let audit: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let entries = audit.as_array().unwrap();
    let actions: Vec<&str> = entries.iter().map(|e| e["decision"].as_str().unwrap()).collect();
    assert_eq!(actions, ["delete_user", "delete", "create", "create"], "{audit}");
    for entry in entries {
        assert_eq!(entry["user"], "cli");
        assert!(
            entry["detail"].as_str().unwrap().starts_with("via cli (os user "),
            "{entry}"
        );
        assert!(
            !entry.to_string().contains(&value[4..]),
            "a token value in the audit log"
        );
    }
    assert_eq!(entries[1]["tokenId"], json_id.as_str());
    assert_eq!(
        entries[1]["tokenLabel"], "json",
        "a deletion names the token's label too"
    );
    assert!(
        entries[0]["detail"]
            .as_str()
            .unwrap()
            .ends_with("1 tokens of user alice")
    );
}

/// SPEC §9, turn 3: an unbound token is asked for by name, one token can
/// be shown, the audit log and rules dry run read as tables or JSON.
#[test]
fn the_cli_reads_as_a_person_and_a_script_expect() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| cli(dir.path(), args);

    let out = run(&["token", "create", "--label", "shared"]);
    assert_eq!(out.status.code(), Some(2), "an unbound token needs --unbound");
    assert!(stderr(&out).contains("--unbound") && stderr(&out).contains("--user"));
    let out = run(&["token", "create", "--label", "both", "--user", "alice", "--unbound"]);
    assert_eq!(out.status.code(), Some(2), "--user and --unbound conflict");
    let out = run(&["token", "list", "--json"]);
    assert_eq!(out.status.code(), Some(1), "nothing was created, not even a store");
    assert!(stderr(&out).contains("no token store at"), "{}", stderr(&out));
    assert!(!dir.path().join("data").exists(), "a reading command makes no store");

    let out = run(&[
        "token",
        "create",
        "--label",
        "docs bot",
        "--user",
        "alice",
        "--days",
        "30",
        "--limit-to",
        "[get].*/rest/api/space.*",
        "--rate-limit",
        "60/min",
        "--json",
    ]);
    let created: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let (id, value) = (created["id"].as_str().unwrap(), created["token"].as_str().unwrap());
    let out = run(&["token", "show", id]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let shown = stdout(&out);
    for line in [
        "label        docs bot",
        "user         alice",
        "rules        [get].*/rest/api/space.*",
        "rate limit   60/min",
        "mode         enforced",
        "spaces       any",
        "used         never",
    ] {
        assert!(shown.contains(line), "{line:?} in\n{shown}");
    }
    assert!(shown.contains("(in 30d)") && shown.contains("by cli"), "{shown}");
    assert!(!shown.contains(&value[4..]), "show never shows the value");
    let out = run(&["token", "show", id, "--json"]);
    let as_json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let out = run(&["token", "list", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(as_json, listed[0], "show --json is the listed object");
    let out = run(&["token", "show", "no-such-id"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no token with id no-such-id"));
    // What a user stored cannot drive the admin's terminal.
    let out = run(&[
        "token",
        "create",
        "--label",
        "esc",
        "--user",
        "bob",
        "--limit-to",
        "/x\u{1b}]0;pwned\u{7}.*",
        "--json",
    ]);
    let created: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let out = run(&["token", "show", created["id"].as_str().unwrap()]);
    assert!(
        !stdout(&out).contains('\u{1b}') && stdout(&out).contains("/x\\u{1b}]0;pwned\\u{7}.*"),
        "{}",
        stdout(&out)
    );
    let out = run(&["token", "delete", created["id"].as_str().unwrap(), "--yes"]);
    assert_eq!(out.status.code(), Some(2), "--yes confirms a deletion by user only");

    let out = run(&["audit"]);
    let table = stdout(&out);
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    for column in ["TIME", "TOKEN", "LABEL", "USER", "WHAT"] {
        assert!(header.contains(column), "{header}");
    }
    let row = lines.find(|row| row.contains(id)).unwrap();
    assert!(row.contains("docs bot") && row.contains("create"), "{row}");

    let rules = [
        "rules",
        "check",
        "--rules",
        "[get].*/rest/api/space.*",
        "--method",
        "GET",
        "--json",
    ];
    let out = run(&[&rules[..], &["--url", "/rest/api/space"]].concat());
    assert_eq!(out.status.code(), Some(0));
    let answer: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!((&answer["allowed"], &answer["line"]), (&json!(true), &json!(1)));
    let out = run(&[&rules[..], &["--url", "/rest/api/content"]].concat());
    assert_eq!(out.status.code(), Some(1), "a denial still exits 1");
    let answer: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!((&answer["allowed"], &answer["line"]), (&json!(false), &json!(null)));
    let out = run(&["migrate", "--json"]);
    assert_eq!(stdout(&out).trim(), r#"{"status":"ok"}"#);
}

/// SPEC §9: the CLI finds the same store wherever it runs, and an empty
/// listing names the store it read.
#[tokio::test]
async fn every_command_finds_the_homes_store_wherever_it_runs() {
    let (home, here, there) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let env = [("TOKENGATE_HOME", home.path().to_str().unwrap())];
    let store = std::path::absolute(home.path().join("data/tokengate.db")).unwrap();
    // Before there is a store, a reading command says where it looked.
    let out = cli_with(here.path(), &["token", "list"], &env, "").await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let looked = format!("no token store at {}", store.display());
    assert!(stderr(&out).contains(&looked), "{}", stderr(&out));
    let out = cli_with(here.path(), &["migrate"], &env, "").await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = cli_with(there.path(), &["token", "list"], &env, "").await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).trim(),
        format!("no tokens in sqlite://{}", store.display())
    );
    // A relative home is the same home from anywhere: it is made absolute.
    let parent = home.path().parent().unwrap();
    let name = home.path().file_name().unwrap().to_str().unwrap();
    let out = cli_with(parent, &["token", "list"], &[("TOKENGATE_HOME", name)], "").await;
    assert_eq!(
        stderr(&out).trim(),
        format!("no tokens in sqlite://{}", store.display())
    );
    // A home that is not a directory is a configuration error.
    let missing = [("TOKENGATE_HOME", "/nonexistent/tokengate-home")];
    let out = cli_with(here.path(), &["token", "list"], &missing, "").await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("is not a directory"), "{}", stderr(&out));
    let args = ["token", "create", "--label", "a", "--user", "alice"];
    let out = cli_with(here.path(), &args, &env, "").await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = cli_with(there.path(), &["token", "list", "--json"], &env, "").await;
    let listed: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(listed[0]["label"], "a", "the same store from another directory");
    assert!(store.exists() && !here.path().join("data").exists() && !there.path().join("data").exists());
    // With --config, the store is the configuration's home.
    std::fs::create_dir(home.path().join("config")).unwrap();
    let file = home.path().join("config/tokengate.toml");
    std::fs::write(&file, "listen = '127.0.0.1:8080'\n").unwrap();
    let out = cli(
        there.path(),
        &["token", "list", "--json", "--config", file.to_str().unwrap()],
    );
    let listed: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{}", stderr(&out));
}

#[test]
fn exit_codes_for_usage_and_configuration_errors() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(cli(dir.path(), &["token", "delete"]).status.code(), Some(2));
    assert_eq!(cli(dir.path(), &["frobnicate"]).status.code(), Some(2));
    let out = cli(dir.path(), &["token", "create", "--label", " ", "--user", "alice"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("label"));
    let out = cli(
        dir.path(),
        &[
            "token",
            "create",
            "--label",
            "x",
            "--user",
            "alice",
            "--ip",
            "300.1.1.1",
        ],
    );
    assert_eq!(out.status.code(), Some(2));

    std::fs::write(
        dir.path().join("bad.toml"),
        "listen = '127.0.0.1:0'\nlisten_port = 8080\n",
    )
    .unwrap();
    let out = cli(dir.path(), &["serve", "--config", "bad.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown configuration key `listen_port`"),
        "{}",
        stderr(&out)
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(["migrate"])
        .current_dir(dir.path())
        .env("TOKENGATE_SCOPE", "everything")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("`scope`") && stderr(&out).contains("TOKENGATE_SCOPE"));
}

#[test]
fn default_config_file_is_read_and_migrate_creates_a_private_store() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    std::fs::write(
        dir.path().join("config/tokengate.toml"),
        "database_url = 'sqlite://store/x.db'\n",
    )
    .unwrap();
    let out = cli(dir.path(), &["migrate"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("store/x.db"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// `workers = 1` serves on tokio's current-thread scheduler: token requests,
/// their first (argon2) verification and a graceful shutdown all work there.
#[tokio::test]
async fn one_worker_serves_on_a_single_thread() {
    let confluence = FakeConfluence::start().await;
    let dir = tempfile::tempdir().unwrap();
    let origin = confluence.origin();
    let mut gateway = GatewayProcess::spawn(dir.path(), &["--upstream", &origin], &[("TOKENGATE_WORKERS", "1")]).await;
    assert!(
        gateway.logs().contains("scheduler=\"current_thread\""),
        "{}",
        gateway.logs()
    );
    let out = cli(dir.path(), &["token", "create", "--label", "single", "--user", "alice"]);
    let token = stdout(&out).trim().to_owned();
    let requests: Vec<_> = (0..8)
        .map(|_| {
            let (url, auth) = (gateway.url("/rest/api/space"), basic("alice", &token));
            tokio::spawn(async move { get(&url, &[("authorization", &auth)]).await.status })
        })
        .collect();
    let mut replies = Vec::new();
    for request in requests {
        replies.push(request.await.unwrap());
    }
    assert!(replies.iter().all(|&status| status == 200), "{replies:?}");
    assert_eq!(confluence.last().header("x-forwarded-user"), Some("alice"));
    let status = gateway.terminate().await;
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
}

/// The README's quick start: start the gateway against Confluence, create a
/// token with the CLI, call Confluence through it.
#[tokio::test]
async fn readme_quick_start() {
    let confluence = FakeConfluence::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = GatewayProcess::spawn(dir.path(), &["--upstream", &confluence.origin()], &[]).await;
    let out = cli(dir.path(), &["token", "create", "--label", "quick", "--user", "alice"]);
    let token = stdout(&out).trim().to_owned();
    let reply = get(
        &gateway.url("/rest/api/space"),
        &[("authorization", &basic("alice", &token))],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(confluence.last().header("x-forwarded-user"), Some("alice"));
    assert!(!confluence.last().contains(&token));
    let status = gateway.terminate().await;
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
}
