//! The web page in a real headless Chromium (SPEC §15), used as a person
//! would: fields, buttons and links found by their accessible names, the
//! keyboard alone where it matters. Skips with a notice where Chromium is
//! not installed; CI installs it. With `TOKENGATE_SCREENSHOTS=DIR` the
//! tests leave screenshots of the page at desktop and 360 px widths there
//! (the README's come from such a run).

use std::path::PathBuf;

use fantoccini::key::Key;
use tokengate::NewToken;

use crate::common::browser::Browser;
use crate::common::fake_confluence::USERS;
use crate::common::{Gateway, basic, get};

pub(crate) fn password_of(user: &str) -> &'static str {
    USERS.iter().find(|(name, _)| *name == user).unwrap().1
}

fn screenshot_dir() -> Option<PathBuf> {
    std::env::var_os("TOKENGATE_SCREENSHOTS").map(PathBuf::from)
}

pub(crate) async fn log_in(browser: &Browser, gw: &Gateway, user: &str) {
    browser.open(&gw.url("/tokengate/ui/")).await;
    browser.fill("Username", user).await;
    browser.fill("Password", password_of(user)).await;
    browser.click("Log in").await;
    browser.button("Log out").await;
}

#[cfg_attr(
    not(have_browser),
    ignore = "needs Chromium and chromedriver (Debian: chromium chromium-driver)"
)]
#[tokio::test]
async fn a_user_logs_in_creates_a_token_uses_it_and_deletes_it() {
    let browser = Browser::start(1280, 900).await;
    let gw = Gateway::start().await;
    browser.open(&gw.url("/tokengate/ui/")).await;

    // A wrong password is refused, the right one lets alice in.
    browser.fill("Username", "alice").await;
    browser.fill("Password", "not-her-password").await;
    browser.click("Log in").await;
    let refused = browser.text_of("login-error", |t| !t.is_empty()).await;
    assert!(refused.contains("did not accept"), "{refused}");
    browser.fill("Password", password_of("alice")).await;
    browser.click("Log in").await;
    browser.button("Log out").await;
    assert!(browser.text_of("user-name", |t| !t.is_empty()).await.contains("alice"));

    // Create: a rule with a mistake is pointed at before anything is sent.
    browser.link("Create a token").await.click().await.unwrap();
    browser.fill("Label", "nightly export").await;
    browser.choose("Expires in days", "30").await;
    browser.fill("Rules", "[get].*/rest/api/(space").await;
    let error = browser.text_of("rules-check", |t| t.starts_with("Line")).await;
    assert!(error.starts_with("Line 1, column "), "{error}");
    browser.fill("Rules", "[get].*/rest/api/space.*").await;
    browser.text_of("rules-check", |t| t.contains("valid")).await;

    // Try a request through the same checker.
    browser.fill("URL", "/rest/api/content").await;
    browser.click("Try").await;
    let verdict = browser
        .text_of("try-result", |t| t.contains("DENY") || t.contains("ALLOW"))
        .await;
    assert!(verdict.starts_with("DENY"), "{verdict}");
    browser.fill("URL", "/rest/api/space?spaceKey=DOCS").await;
    browser.click("Try").await;
    browser.text_of("try-result", |t| t.starts_with("ALLOW")).await;

    browser.fill("Spaces", "DOCS,KB:read").await;
    // The dry run applies the spaces typed in, as the gateway will.
    browser.fill("URL", "/rest/api/space?spaceKey=SECRET").await;
    browser.click("Try").await;
    // The answer to this Try, not the one before it (ALLOW) still shown.
    let verdict = browser.text_of("try-result", |t| t.contains("spaces:")).await;
    assert!(
        verdict.starts_with("DENY") && verdict.contains("space_not_allowed"),
        "{verdict}"
    );
    if let Some(dir) = screenshot_dir() {
        browser.screenshot(&dir.join("ui-create-spaces.png")).await;
    }
    browser.fill("Confluence password", password_of("alice")).await;
    browser.click("Create token").await;
    let new_token = browser.field("New token").await;
    let value = new_token.prop("value").await.unwrap().unwrap();
    assert!(value.starts_with("tgw_"), "{value}");
    browser.button("Copy").await;
    let curl = browser.text_of("snippet-curl", |t| !t.is_empty()).await;
    assert!(curl.contains(&value) && curl.contains("alice:"), "{curl}");
    for snippet in ["snippet-fetch", "snippet-requests", "snippet-atlassian"] {
        assert!(
            browser.text_of(snippet, |t| !t.is_empty()).await.contains(&value),
            "{snippet}"
        );
    }
    let atlassian = browser.text_of("snippet-atlassian", |t| !t.is_empty()).await;
    assert!(atlassian.contains(r#"Confluence(url="http://"#) && atlassian.contains(&format!(r#"password="{value}""#)));
    if let Some(dir) = screenshot_dir() {
        browser.screenshot(&dir.join("ui-new-token.png")).await;
    }

    // The value works, as alice, within its rule.
    let reply = get(
        &gw.url("/rest/api/space"),
        &[("authorization", &basic("alice", &value))],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(gw.upstream.last().header("x-forwarded-user"), Some("alice"));
    assert_eq!(
        gw.upstream.last().target,
        "/rest/api/space?spaceKey=DOCS&spaceKey=KB",
        "confined to the spaces typed in"
    );

    let reply = get(
        &gw.url("/rest/api/content"),
        &[("authorization", &basic("alice", &value))],
    )
    .await;
    assert_eq!(reply.status, 403);

    // She sees what it did, and its use (once counted).
    gw.app.flush_records().await;
    browser.link("Audit log").await.click().await.unwrap();
    let audit = browser
        .text_of("audit-table", |t| t.contains("GET /rest/api/content"))
        .await;
    assert!(
        audit.contains("GET /rest/api/space") && audit.contains("nightly export"),
        "{audit}"
    );
    assert!(audit.contains("refused: no rule allows it"), "{audit}");
    browser.link("My tokens").await.click().await.unwrap();
    let listed = browser.text_of("token-rows", |t| t.contains("nightly export")).await;
    assert!(listed.contains("DOCS, KB:read"), "{listed}");
    browser.click("Details").await;
    let details = browser.text_of("token-rows", |t| t.contains("1 call in all")).await;
    assert!(details.contains("[get].*/rest/api/space.*"), "{details}");
    let deletes = browser.buttons("Delete").await;
    assert_eq!(deletes.len(), 1);
    deletes[0].click().await.unwrap();
    browser.click("Yes, delete").await;
    browser.text_of("tokens-status", |t| t.starts_with("Deleted")).await;
    let reply = get(
        &gw.url("/rest/api/space"),
        &[("authorization", &basic("alice", &value))],
    )
    .await;
    assert_eq!(reply.status, 401, "deleted: refused at once");

    browser.click("Log out").await;
    browser.button("Log in").await;
    let requests_for_the_page = gw
        .upstream
        .requests()
        .iter()
        .filter(|r| r.target.starts_with("/tokengate"))
        .count();
    assert_eq!(requests_for_the_page, 0, "no page or asset was forwarded");
    browser.close().await;
}

#[cfg_attr(
    not(have_browser),
    ignore = "needs Chromium and chromedriver (Debian: chromium chromium-driver)"
)]
#[tokio::test]
async fn an_admin_sees_every_token_the_audit_log_and_the_settings() {
    let browser = Browser::start(1280, 900).await;
    let gw = Gateway::start().await;
    for (user, label) in [("alice", "alice's exporter"), ("bob", "bob's sync")] {
        let created = gw
            .create_token(NewToken {
                label: label.into(),
                user: Some(user.into()),
                days_until_expiry: Some(3),
                ..NewToken::default()
            })
            .await;
        let reply = get(
            &gw.url("/rest/api/space"),
            &[("authorization", &basic(user, &created.value))],
        )
        .await;
        assert_eq!(reply.status, 200);
    }
    gw.app.flush_records().await;
    log_in(&browser, &gw, "admin").await;
    let tokens = browser.text_of("token-rows", |t| t.contains("bob's sync")).await;
    assert!(
        tokens.contains("alice's exporter") && tokens.contains("expires soon"),
        "{tokens}"
    );
    browser.fill("User", "bob").await;
    browser
        .text_of("token-rows", |t| t.contains("bob's sync") && !t.contains("alice"))
        .await;

    browser.link("Audit log").await.click().await.unwrap();
    browser.fill("User", "alice").await;
    let audit = browser
        .text_of("audit-table", |t| {
            t.contains("GET /rest/api/space") && !t.contains("bob")
        })
        .await;
    assert!(audit.contains("alice"), "{audit}");
    browser.field("Token").await;

    browser.link("Settings").await.click().await.unwrap();
    let audit_switch = browser.field("Audit log").await;
    assert!(audit_switch.is_selected().await.unwrap());
    audit_switch.click().await.unwrap();
    browser.fill("Confluence password", password_of("admin")).await;
    browser.click("Save").await;
    browser.text_of("settings-status", |t| t == "Saved.").await;
    assert!(!gw.app.settings.get().audit_log);
    assert!(gw.app.settings.get().usage_details);
    browser.close().await;
}

#[cfg_attr(
    not(have_browser),
    ignore = "needs Chromium and chromedriver (Debian: chromium chromium-driver)"
)]
#[tokio::test]
async fn the_keyboard_alone_logs_in_and_reaches_every_section() {
    let browser = Browser::start(1280, 900).await;
    let gw = Gateway::start().await;
    browser.open(&gw.url("/tokengate/ui/")).await;
    // The login form takes the focus; Tab and Enter do the rest.
    browser.field("Username").await;
    let focused = browser.client.active_element().await.unwrap();
    assert_eq!(browser.accessible_name(&focused).await, "Username");
    focused.send_keys("alice").await.unwrap();
    focused.send_keys(&String::from(char::from(Key::Tab))).await.unwrap();
    let focused = browser.client.active_element().await.unwrap();
    assert_eq!(browser.accessible_name(&focused).await, "Password");
    focused
        .send_keys(&format!("{}{}", password_of("alice"), char::from(Key::Enter)))
        .await
        .unwrap();
    browser.button("Log out").await;
    // Tabbing from the top reaches the sections' links, and Enter opens them.
    let mut names = Vec::new();
    for _ in 0..12 {
        let focused = browser.client.active_element().await.unwrap();
        let name = browser.accessible_name(&focused).await;
        if name == "Audit log" {
            focused.send_keys(&String::from(char::from(Key::Enter))).await.unwrap();
            browser.field("Token").await;
            return browser.close().await;
        }
        names.push(name);
        focused.send_keys(&String::from(char::from(Key::Tab))).await.unwrap();
    }
    panic!("the keyboard never reached the audit log: {names:?}");
}

#[cfg_attr(
    not(have_browser),
    ignore = "needs Chromium and chromedriver (Debian: chromium chromium-driver)"
)]
#[tokio::test]
async fn the_page_is_usable_at_360_pixels() {
    let browser = Browser::start(360, 740).await;
    let gw = Gateway::start().await;
    log_in(&browser, &gw, "alice").await;
    browser.link("Create a token").await.click().await.unwrap();
    for label in [
        "Label",
        "Expires in days",
        "Rules",
        "IP addresses",
        "Spaces",
        "Confluence password",
    ] {
        browser.field(label).await;
    }
    browser.fill("Spaces", "DOCS,KB:read").await;
    if let Some(dir) = screenshot_dir() {
        browser.screenshot(&dir.join("ui-360px-spaces.png")).await;
    }
    // Nothing wider than the screen: no sideways scrolling.
    let width = browser
        .client
        .execute("return document.documentElement.scrollWidth;", vec![])
        .await
        .unwrap();
    assert!(width.as_u64().unwrap() <= 360, "the page is {width} px wide");
    browser.fill("Label", "phone-made").await;
    browser.fill("Confluence password", password_of("alice")).await;
    browser.click("Create token").await;
    browser.field("New token").await;
    if let Some(dir) = screenshot_dir() {
        browser.screenshot(&dir.join("ui-360px.png")).await;
    }
    // The edit dialog fits too.
    browser.link("My tokens").await.click().await.unwrap();
    browser.click("Edit").await;
    for label in [
        "Label",
        "Rules",
        "IP addresses",
        "Rate limit",
        "Report only",
        "Confluence password",
    ] {
        browser.field(label).await;
    }
    let dialog_width = browser
        .client
        .execute(
            "return document.getElementById('edit-token').getBoundingClientRect().right;",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        dialog_width.as_f64().unwrap() <= 360.0,
        "the dialog reaches {dialog_width} px"
    );
    browser.click("Cancel").await;
    browser.close().await;
}

#[cfg_attr(
    not(have_browser),
    ignore = "needs Chromium and chromedriver (Debian: chromium chromium-driver)"
)]
#[tokio::test]
async fn with_pat_mode_the_password_mints_the_pat_and_deleting_revokes_it() {
    let browser = Browser::start(1280, 900).await;
    let gw = Gateway::start_with(|c| c.forward_as = tokengate::ForwardAs::Pat).await;
    log_in(&browser, &gw, "bob").await;
    browser.link("Create a token").await.click().await.unwrap();
    browser.fill("Label", "minted from the page").await;
    browser.fill("Confluence password", password_of("bob")).await;
    browser.click("Create token").await;
    let value = browser.field("New token").await.prop("value").await.unwrap().unwrap();
    let reply = get(&gw.url("/rest/api/space"), &[("authorization", &basic("bob", &value))]).await;
    assert_eq!(
        reply.json()["as"],
        "bob",
        "Confluence served it as bob, through his minted PAT"
    );
    let pat = gw.upstream.pats().pop().unwrap();
    assert!(
        pat.name.starts_with("tokengate: minted from the page ("),
        "{}",
        pat.name
    );

    browser.link("My tokens").await.click().await.unwrap();
    browser.click("Details").await;
    browser
        .text_of("token-rows", |t| t.contains("personal access token"))
        .await;
    browser.buttons("Delete").await[0].click().await.unwrap();
    browser.fill("Confluence password", password_of("bob")).await;
    browser.click("Yes, delete").await;
    let status = browser.text_of("tokens-status", |t| t.starts_with("Deleted")).await;
    assert!(status.contains("revoked in Confluence"), "{status}");
    assert!(gw.upstream.pats().pop().unwrap().revoked);
    browser.close().await;
}

#[cfg_attr(
    not(have_browser),
    ignore = "needs Chromium and chromedriver (Debian: chromium chromium-driver)"
)]
#[tokio::test]
async fn a_user_rolls_rules_out_report_only_then_enforces_the_suggested_ones() {
    let browser = Browser::start(1280, 900).await;
    let gw = Gateway::start().await;
    log_in(&browser, &gw, "alice").await;
    browser.link("Create a token").await.click().await.unwrap();
    browser.fill("Label", "nightly sync").await;
    browser.fill("Rate limit", "100/min").await;
    browser.field("Report only").await.click().await.unwrap();
    browser.fill("Confluence password", password_of("alice")).await;
    browser.click("Create token").await;
    let value = browser.field("New token").await.prop("value").await.unwrap().unwrap();
    let auth = basic("alice", &value);
    let script = ["/rest/api/content/12", "/rest/api/content/345", "/rest/api/space/DOCS"];
    for path in script {
        let reply = get(&gw.url(path), &[("authorization", &auth)]).await;
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.headers["x-ratelimit-limit"], "100");
    }
    gw.app.flush_records().await;

    browser.link("My tokens").await.click().await.unwrap();
    browser.text_of("token-rows", |t| t.contains("nightly sync")).await;
    browser.click("Details").await;
    let listed = browser.text_of("token-rows", |t| t.contains("report-only")).await;
    assert!(listed.contains("100/min"), "{listed}");
    browser.click("Edit").await;
    browser.click("Suggest rules from its calls").await;
    let told = browser
        .text_of("edit-suggest-status", |t| t.starts_with("Proposed"))
        .await;
    assert!(
        told.contains("3 calls") && told.contains("methods and paths only"),
        "{told}"
    );
    let rules = browser.field("Rules").await.prop("value").await.unwrap().unwrap();
    assert_eq!(rules, "[get]/rest/api/content/[0-9]+\n[get]/rest/api/space/DOCS");
    browser.field("Report only").await.click().await.unwrap();
    browser.click("Save").await;
    let error = browser.text_of("edit-error", |t| !t.is_empty()).await;
    assert!(error.contains("password"), "{error}");
    browser.fill("Confluence password", password_of("alice")).await;
    if let Some(dir) = screenshot_dir() {
        browser.screenshot(&dir.join("ui-edit.png")).await;
    }
    browser.click("Save").await;
    browser.text_of("tokens-status", |t| t.starts_with("Saved")).await;
    browser.click("Details").await;
    let listed = browser.text_of("token-rows", |t| t.contains("enforced")).await;
    assert!(listed.contains("[get]/rest/api/space/DOCS"), "{listed}");

    for path in script {
        assert_eq!(
            get(&gw.url(path), &[("authorization", &auth)]).await.status,
            200,
            "{path}"
        );
    }
    for path in ["/rest/api/space/SECRET", "/rest/api/content/12/child/attachment"] {
        assert_eq!(
            get(&gw.url(path), &[("authorization", &auth)]).await.status,
            403,
            "{path}"
        );
    }
    browser.close().await;
}

#[cfg_attr(
    not(have_browser),
    ignore = "needs Chromium and chromedriver (Debian: chromium chromium-driver)"
)]
#[tokio::test]
async fn a_user_rotates_a_token_and_sees_the_new_value_once() {
    let browser = Browser::start(1280, 900).await;
    let gw = Gateway::start().await;
    let old = gw.token_for("alice").await;
    log_in(&browser, &gw, "alice").await;
    browser.text_of("token-rows", |t| t.contains("alice-bot")).await;
    browser.click("Rotate").await;
    browser.fill("Grace hours", "1").await;
    browser.click("Rotate now").await;
    let error = browser.text_of("rotate-error", |t| !t.is_empty()).await;
    assert!(error.contains("password"), "{error}");
    browser.fill("Confluence password", password_of("alice")).await;
    browser.click("Rotate now").await;
    let title = browser.text_of("created-title", |t| t.contains("alice-bot")).await;
    assert!(title.starts_with("New value of"), "{title}");
    let new_token = browser.field("New token").await;
    let new = new_token.prop("value").await.unwrap().unwrap();
    assert!(new.starts_with("tgw_") && new != old, "{new}");
    let curl = browser.text_of("snippet-curl", |t| !t.is_empty()).await;
    assert!(curl.contains(&new), "{curl}");
    for secret in [&old, &new] {
        let reply = get(
            &gw.url("/rest/api/space"),
            &[("authorization", &basic("alice", secret))],
        )
        .await;
        assert_eq!(reply.status, 200, "both work during the grace period");
    }
    gw.clock.advance_ms(3_600_000);
    let reply = get(&gw.url("/rest/api/space"), &[("authorization", &basic("alice", &old))]).await;
    assert_eq!(reply.status, 401, "the old value stops when the grace ends");
    browser.close().await;
}
