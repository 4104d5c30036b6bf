//! The real `tokengate` binary as a child process, for tests that need a
//! separate process (signals, logs, the CLI). It listens on port 0 and the
//! address is read from its start-up log line, so no port is ever raced for.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const BIN: &str = env!("CARGO_BIN_EXE_tokengate");

pub struct GatewayProcess {
    pub child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<String>>,
}

impl GatewayProcess {
    /// `tokengate serve --listen 127.0.0.1:0 ARGS` in `dir`. Logs at `info`
    /// at least (the start-up line names the address) unless `RUST_LOG`
    /// is given in `envs`.
    pub async fn spawn(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .current_dir(dir)
            .env("RUST_LOG", "info")
            .env_remove("TOKENGATE_HOME")
            .env("TOKENGATE_ARGON2_MEMORY_KIB", "64")
            .env("TOKENGATE_ARGON2_ITERATIONS", "1")
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (name, value) in envs {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("tokengate starts");
        let logs = Arc::new(Mutex::new(String::new()));
        let (found, address) = tokio::sync::oneshot::channel();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = logs.clone();
        tokio::spawn(async move {
            let mut found = Some(found);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = listen_address(&line)
                    && let Some(found) = found.take()
                {
                    let _ = found.send(addr);
                }
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        let addr = tokio::time::timeout(Duration::from_secs(60), address)
            .await
            .expect("the gateway did not start in 60 s")
            .unwrap_or_else(|_| panic!("the gateway exited before serving: {}", logs.lock().unwrap()));
        GatewayProcess { child, addr, logs }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Everything the process has logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// SIGTERM, then waits for the exit (graceful shutdown).
    pub async fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().expect("still running").to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("no exit 30 s after SIGTERM")
            .unwrap()
    }
}

/// The address in the "tokengate serving" line, text or JSON.
fn listen_address(line: &str) -> Option<SocketAddr> {
    if !line.contains("tokengate serving") {
        return None;
    }
    let rest = line
        .split_once("listen=")
        .or_else(|| line.split_once("\"listen\":\""))?
        .1;
    let end = rest.find([' ', '"']).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Runs a `tokengate` CLI command in `dir` (cheap argon2) and returns its output.
pub fn cli(dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("TOKENGATE_ARGON2_MEMORY_KIB", "64")
        .env("TOKENGATE_ARGON2_ITERATIONS", "1")
        // As an admin runs it: a one-shot command logs nothing by default.
        .env_remove("RUST_LOG")
        .env_remove("TOKENGATE_HOME")
        .output()
        .unwrap()
}

/// Runs a `tokengate` CLI command in `dir` (cheap argon2) with `envs` and
/// `stdin`, without blocking the runtime: for commands that talk to a fake
/// Confluence served by this test.
pub async fn cli_with(dir: &Path, args: &[&str], envs: &[(&str, &str)], stdin: &str) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let mut command = Command::new(BIN);
    command
        .args(args)
        .current_dir(dir)
        .env("TOKENGATE_ARGON2_MEMORY_KIB", "64")
        .env("TOKENGATE_ARGON2_ITERATIONS", "1")
        .env_remove("RUST_LOG")
        .env_remove("TOKENGATE_HOME")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in envs {
        command.env(name, value);
    }
    let mut child = command.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    child.wait_with_output().await.unwrap()
}
