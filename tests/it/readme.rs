//! README.md stays true: its shell examples (every ```` ```sh ```` block but
//! those marked `no-run`) run as they are, each section's blocks as one
//! script in an empty directory, with the `tokengate` this build made on
//! `PATH`, against a fake Confluence standing where the README says
//! `http://confluence.internal:8090`. A README reader's only substitutes
//! are made here too: the Confluence URL, a free port for `127.0.0.1:8080`,
//! and alice's `PASSWORD`.

use std::path::Path;
use std::time::Duration;

use crate::common::FakeConfluence;
use crate::common::process::BIN;

/// The README's ```` ```sh ```` blocks, each section's joined into one
/// script: `(heading, script)`. `no-run` blocks are left out (counted).
fn shell_examples(readme: &str) -> (Vec<(String, String)>, usize) {
    let mut sections: Vec<(String, String)> = Vec::new();
    let (mut heading, mut block, mut skipped) = (String::new(), None::<String>, 0);
    for line in readme.lines() {
        match (&mut block, line.trim_end()) {
            (None, "```sh") => block = Some(String::new()),
            (None, fence) if fence.starts_with("```sh ") => {
                assert_eq!(fence, "```sh no-run", "an unknown marker");
                skipped += 1;
                block = Some("no-run".into());
            }
            (None, title) if title.starts_with('#') => heading = title.to_owned(),
            (Some(script), "```") => {
                if script != "no-run" {
                    match sections.last_mut() {
                        Some((last, text)) if *last == heading => text.push_str(script),
                        _ => sections.push((heading.clone(), script.clone())),
                    }
                }
                block = None;
            }
            (Some(script), code) if script != "no-run" => {
                script.push_str(code);
                script.push('\n');
            }
            _ => {}
        }
    }
    assert!(block.is_none(), "a code block is left open");
    (sections, skipped)
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
    let (sections, skipped) = shell_examples(&readme);
    let headings: Vec<&str> = sections.iter().map(|(heading, _)| heading.as_str()).collect();
    assert!(
        headings.iter().any(|h| h.contains("forward_as = \"pat\"")),
        "{headings:?}"
    );
    assert!(
        headings.iter().any(|h| h.contains("forward_as = \"header\"")),
        "{headings:?}"
    );
    assert_eq!(
        skipped, 1,
        "only the install block (it builds the binary this test runs)"
    );
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    for (heading, script) in sections {
        let confluence = FakeConfluence::start().await;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let script = script
            .replace("http://confluence.internal:8090", &confluence.origin())
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
            .replace("alice:PASSWORD", "alice:alice-password");
        let run = tokio::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{script}"
            ))
            .current_dir(dir.path())
            .env("PATH", &path)
            .env("TOKENGATE_LISTEN", format!("127.0.0.1:{port}"))
            .env("TOKENGATE_ARGON2_MEMORY_KIB", "64")
            .env("TOKENGATE_ARGON2_ITERATIONS", "1")
            .env_remove("TOKENGATE_HOME")
            .env_remove("RUST_LOG")
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(120), run)
            .await
            .unwrap_or_else(|_| panic!("{heading}: the example did not finish"))
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{heading}: {}\n{stdout}\n{stderr}", out.status);
        // Confluence saw each call as alice, and never a gateway token.
        let calls = confluence.requests_to("/rest/api/space");
        assert!(calls.len() >= 2, "{heading}: {} calls reached Confluence", calls.len());
        let alices_pats: Vec<String> = confluence
            .pats()
            .into_iter()
            .filter(|pat| pat.user == "alice")
            .map(|pat| format!("Bearer {}", pat.raw))
            .collect();
        for call in calls {
            assert!(!call.contains("tgw_"), "{heading}: a gateway token reached Confluence");
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
    }
}
