//! A real headless Chromium, driven through chromedriver (WebDriver) with
//! fantoccini. Elements are found as a person finds them: by their
//! accessible names, which Chromium computes (WebDriver "Get Computed
//! Label"). Without Chromium or chromedriver, [`Browser::start`] prints a
//! notice and returns `None`, and the test skips.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use tokio::process::{Child, Command};

/// How long the page may take to show what a step waits for.
const PATIENCE: Duration = Duration::from_secs(15);

pub struct Browser {
    pub client: Client,
    _driver: Child,
}

/// Where a program is: `$ENV_NAME`, else the first of `candidates` that exists.
fn program(env_name: &str, candidates: &[&str]) -> Option<PathBuf> {
    std::env::var_os(env_name)
        .map(PathBuf::from)
        .or_else(|| candidates.iter().map(PathBuf::from).find(|p| p.exists()))
        .filter(|p| p.exists())
}

impl Browser {
    /// A new browser window of `width`×`height`. The tests that call it
    /// are ignored unless Chromium and chromedriver were found when they
    /// were built (see build.rs); run without them, they fail rather than pass.
    pub async fn start(width: u32, height: u32) -> Browser {
        let chromium = program("CHROMIUM", &["/usr/bin/chromium", "/usr/bin/chromium-browser"]);
        let chromedriver = program("CHROMEDRIVER", &["/usr/bin/chromedriver"]);
        let (Some(chromium), Some(chromedriver)) = (chromium, chromedriver) else {
            panic!("this test needs Chromium and chromedriver (Debian: chromium chromium-driver)");
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let mut capabilities = Capabilities::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                    "--no-first-run", "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--disable-extensions", format!("--window-size={width},{height}"),
                ],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + PATIENCE;
        let client = loop {
            match ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(e) if std::time::Instant::now() > deadline => panic!("no WebDriver session: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        client.set_window_size(width, height).await.unwrap();
        Browser {
            client,
            _driver: driver,
        }
    }

    pub async fn open(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// The one displayed element among `css` whose accessible name is
    /// `name`, waiting for it to appear.
    pub async fn by_name(&self, css: &str, name: &str) -> Element {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let mut found = Vec::new();
            for element in self.client.find_all(Locator::Css(css)).await.unwrap_or_default() {
                if element.is_displayed().await.unwrap_or(false) && self.accessible_name(&element).await == name {
                    found.push(element);
                }
            }
            match found.len() {
                1 => return found.pop().unwrap(),
                0 if std::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
                0 => panic!("no displayed {css} named {name:?} on the page"),
                n => panic!("{n} displayed {css} named {name:?}: names must tell them apart"),
            }
        }
    }

    /// A form field by its label.
    pub async fn field(&self, label: &str) -> Element {
        self.by_name("input, textarea, select", label).await
    }

    pub async fn button(&self, name: &str) -> Element {
        self.by_name("button", name).await
    }

    pub async fn link(&self, name: &str) -> Element {
        self.by_name("a", name).await
    }

    /// Every displayed button named `name` (rows each have their own "Delete").
    pub async fn buttons(&self, name: &str) -> Vec<Element> {
        let mut found = Vec::new();
        for element in self.client.find_all(Locator::Css("button")).await.unwrap() {
            if element.is_displayed().await.unwrap_or(false) && self.accessible_name(&element).await == name {
                found.push(element);
            }
        }
        found
    }

    /// Chromium's accessible name of an element.
    pub async fn accessible_name(&self, element: &Element) -> String {
        let label = ComputedLabel(element.element_id().to_string());
        match self.client.issue_cmd(label).await {
            Ok(serde_json::Value::String(name)) => name.trim().to_owned(),
            _ => String::new(),
        }
    }

    /// Replaces a field's text.
    pub async fn fill(&self, label: &str, text: &str) {
        let field = self.field(label).await;
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    /// Chooses the option of value `value` in the select labelled `label`.
    pub async fn choose(&self, label: &str, value: &str) {
        self.field(label).await.select_by_value(value).await.unwrap();
    }

    /// Runs `script` in the page; returns what it returns.
    pub async fn js(&self, script: &str) -> serde_json::Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Waits until `script` (an expression) is true in the page.
    pub async fn until(&self, what: &str, script: &str) {
        let deadline = std::time::Instant::now() + PATIENCE;
        while self.js(&format!("return Boolean({script});")).await != serde_json::Value::Bool(true) {
            assert!(std::time::Instant::now() < deadline, "never true: {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Resizes the window.
    pub async fn resize(&self, width: u32, height: u32) {
        self.client.set_window_size(width, height).await.unwrap();
    }

    pub async fn click(&self, button: &str) {
        self.button(button).await.click().await.unwrap();
    }

    /// Waits until the text of the element `id` satisfies `ready`; returns it.
    pub async fn text_of(&self, id: &str, ready: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let text = match self.client.find(Locator::Id(id)).await {
                Ok(element) => element.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if ready(&text) {
                return text;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "#{id} never became ready: {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A PNG of the window, written to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let png = self.client.screenshot().await.unwrap();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }

    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}

/// WebDriver's "Get Computed Label" (the accessible name), which fantoccini
/// does not wrap.
#[derive(Debug)]
struct ComputedLabel(String);

impl WebDriverCompatibleCommand for ComputedLabel {
    fn endpoint(&self, base_url: &url::Url, session_id: Option<&str>) -> Result<url::Url, url::ParseError> {
        let session = session_id.unwrap_or_default();
        base_url.join(&format!("session/{session}/element/{}/computedlabel", self.0))
    }

    fn method_and_body(&self, _: &url::Url) -> (hyper::http::Method, Option<String>) {
        (hyper::http::Method::GET, None)
    }
}
