//! README.md stays true: its shell examples run as they are, against a fake
//! Confluence standing where the README says
//! `http://confluence.internal:8090`, with the `tokengate` this build made
//! on `PATH`. Two kinds of ```` ```sh ```` block:
//!
//! - plain (the quick start): each section's blocks are one script, run in
//!   an empty directory; it starts its own gateway;
//! - `sh gateway` (a reference section): the blocks of one `##` section are
//!   one script, run against a gateway this test starts (the quick start's
//!   header path).
//!
//! `sh no-run` blocks are left out (the install, which builds the binary
//! this test runs). A README reader's only substitutes are made here too:
//! the Confluence URL, the gateway's port for `127.0.0.1:8080`, and the
//! users' `PASSWORD`.

use std::path::Path;
use std::time::Duration;

use crate::common::FakeConfluence;
use crate::common::process::{BIN, GatewayProcess};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Runs in an empty directory and starts its own gateway.
    Own,
    /// Runs against a gateway the test starts.
    Gateway,
}

/// One script: the blocks of a section, in order.
struct Example {
    kind: Kind,
    heading: String,
    script: String,
}

/// The README's runnable examples, and the `no-run` blocks.
fn examples(readme: &str) -> (Vec<Example>, Vec<String>) {
    let mut examples: Vec<Example> = Vec::new();
    let (mut heading, mut section, mut skipped) = (String::new(), String::new(), Vec::new());
    let mut block: Option<(Option<Kind>, String)> = None;
    for line in readme.lines() {
        let line = line.trim_end();
        let Some((kind, script)) = &mut block else {
            match line {
                "```sh" => block = Some((Some(Kind::Own), String::new())),
                "```sh gateway" => block = Some((Some(Kind::Gateway), String::new())),
                "```sh no-run" => block = Some((None, String::new())),
                fence if fence.starts_with("```sh") => panic!("an unknown marker: {fence}"),
                title if title.starts_with("## ") => (heading, section) = (title.to_owned(), title.to_owned()),
                title if title.starts_with('#') => heading = title.to_owned(),
                _ => {}
            }
            continue;
        };
        if line != "```" {
            script.push_str(line);
            script.push('\n');
            continue;
        }
        match *kind {
            None => skipped.push(std::mem::take(script)),
            Some(kind) => {
                let group = if kind == Kind::Gateway { &section } else { &heading };
                match examples.last_mut() {
                    Some(last) if last.kind == kind && last.heading == *group => last.script.push_str(script),
                    _ => examples.push(Example {
                        kind,
                        heading: group.clone(),
                        script: script.clone(),
                    }),
                }
            }
        }
        block = None;
    }
    assert!(block.is_none(), "a code block is left open");
    (examples, skipped)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn the_readmes_shell_examples_run_against_a_fake_confluence() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let (examples, skipped) = examples(&readme);
    let headings: Vec<&str> = examples.iter().map(|e| e.heading.as_str()).collect();
    assert!(
        headings.iter().any(|h| h.contains("forward_as = \"pat\"")),
        "{headings:?}"
    );
    assert!(
        headings.iter().any(|h| h.contains("forward_as = \"header\"")),
        "{headings:?}"
    );
    assert!(headings.contains(&"## Management API"), "{headings:?}");
    for script in &skipped {
        assert!(
            script.starts_with("cargo install") || script.starts_with("docker build"),
            "only the install (it builds the binary this test runs) and Docker are not run:\n{script}"
        );
    }
    for example in examples {
        run(example).await;
    }
}

async fn run(example: Example) {
    let Example { kind, heading, script } = example;
    let confluence = FakeConfluence::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (gateway, address) = match kind {
        Kind::Own => (None, format!("127.0.0.1:{}", free_port())),
        Kind::Gateway => {
            let gateway = GatewayProcess::spawn(dir.path(), &["--upstream", &confluence.origin()], &[]).await;
            let address = gateway.url("").trim_start_matches("http://").to_owned();
            (Some(gateway), address)
        }
    };
    let script = script
        .replace("http://confluence.internal:8090", &confluence.origin())
        .replace("127.0.0.1:8080", &address)
        .replace("alice:PASSWORD", "alice:alice-password")
        .replace("admin:PASSWORD", "admin:admin-password");
    let bin_dir = Path::new(BIN).parent().unwrap();
    let run = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{script}"
        ))
        .current_dir(dir.path())
        .env(
            "PATH",
            format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default()),
        )
        .env("TOKENGATE_LISTEN", &address)
        .env("TOKENGATE_ARGON2_MEMORY_KIB", "64")
        .env("TOKENGATE_ARGON2_ITERATIONS", "1")
        .env_remove("TOKENGATE_HOME")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // Its own process group: whatever the script left running (a
        // `tokengate serve &` it did not stop) is ended with it.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let group = format!("-{}", run.id().unwrap());
    let out = tokio::time::timeout(Duration::from_secs(120), run.wait_with_output()).await;
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &group])
        .output();
    let out = out
        .unwrap_or_else(|_| panic!("{heading}: the example did not finish"))
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{heading}: {}\n{stdout}\n{stderr}", out.status);
    // Confluence saw each token call as alice, and never a gateway token.
    // (What carries Basic is the gateway asking about a password.)
    let calls: Vec<_> = confluence
        .requests()
        .into_iter()
        .filter(|call| call.target.starts_with("/rest/api/"))
        .filter(|call| !call.header("authorization").is_some_and(|a| a.starts_with("Basic ")))
        .collect();
    assert!(!calls.is_empty(), "{heading}: no call reached Confluence");
    let alices_pats: Vec<String> = confluence
        .pats()
        .into_iter()
        .filter(|pat| pat.user == "alice")
        .map(|pat| format!("Bearer {}", pat.raw))
        .collect();
    for call in confluence.requests() {
        assert!(!call.contains("tgw_"), "{heading}: a gateway token reached Confluence");
    }
    for call in calls {
        let as_alice = call.header("x-forwarded-user") == Some("alice")
            || call
                .header("authorization")
                .is_some_and(|a| alices_pats.iter().any(|p| p == a));
        assert!(as_alice, "{heading}: a call not made as alice");
    }
    assert!(
        dir.path().join("data/tokengate.db").exists(),
        "{heading}: the store is in the home"
    );
    drop(gateway);
}
