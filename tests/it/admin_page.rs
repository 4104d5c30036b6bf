//! The admin's view of the page (SPEC §15.1) in a real headless Chromium:
//! the token table with 60 tokens (sorted by each column, filtered by each
//! state, paged by 50), revoking three selected tokens with one
//! confirmation, a token's details with its "Calls per day" chart and the
//! numbers as text, create's expiry presets, unbound box and errors at
//! their fields, the audit table in words with its outcome filter, the
//! empty state, and no header or cell that breaks inside a word at 1280
//! and 360 px. With `TOKENGATE_SCREENSHOTS=DIR` they leave the screenshots
//! of docs/ there.

use std::path::PathBuf;

use hyper::Method;
use serde_json::Value;
use tokengate::{Clock, DAY_MS, NewToken, UsageDelta, day_of};

use crate::browser::{log_in, password_of};
use crate::common::browser::Browser;
use crate::common::fake_confluence::ADMIN_PASSWORD;
use crate::common::{Gateway, basic, get, send};

const BASE: &str = "/rest/extender/1.0/tokenTools";

async fn screenshot(browser: &Browser, name: &str) {
    if let Some(dir) = std::env::var_os("TOKENGATE_SCREENSHOTS").map(PathBuf::from) {
        browser.screenshot(&dir.join(name)).await;
    }
}

async fn as_admin(gw: &Gateway, path: &str) -> Value {
    let auth = basic("admin", ADMIN_PASSWORD);
    let reply = send(
        Method::GET,
        &gw.url(&format!("{BASE}{path}")),
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(reply.status, 200, "{path}");
    reply.json()
}

const NAMES: [&str; 6] = [
    "nightly export",
    "docs publisher",
    "MCP agent",
    "ci-bot",
    "backup",
    "search indexer",
];

/// 60 tokens in several states: 6 expired, some expiring, some unbound,
/// some confined to spaces, with calls counted today. Returns the values
/// by label.
async fn sixty_tokens(gw: &Gateway) -> Vec<(String, String)> {
    let mut made = Vec::new();
    for i in 0..6 {
        let created = gw
            .create_token(NewToken {
                label: format!("old export {i}"),
                user: Some("alice".into()),
                days_until_expiry: Some(1),
                ..NewToken::default()
            })
            .await;
        made.push((created.record.label, created.value));
        gw.clock.advance_ms(1);
    }
    gw.clock.advance_ms(2 * DAY_MS);
    let mut deltas = Vec::new();
    for i in 0..54_i64 {
        let created = gw
            .create_token(NewToken {
                label: format!("{} {i:02}", NAMES[i as usize % 6]),
                user: match i % 7 {
                    3 => None,
                    n => Some(["alice", "bob", "carol"][n as usize % 3].into()),
                },
                days_until_expiry: match i % 5 {
                    0 => Some(3),
                    1 => None,
                    _ => Some(30 + i),
                },
                spaces: match i % 3 {
                    0 => Some("DOCS".into()),
                    1 => Some("KB:read,DOCS".into()),
                    _ => None,
                },
                ..NewToken::default()
            })
            .await;
        let now = gw.clock.now_ms();
        if i % 4 != 2 {
            deltas.push(UsageDelta {
                token_id: created.record.id.clone(),
                calls: (i * 37) % 500,
                refused: i % 3,
                last_used_at: now - i * 3_600_000,
                last_ip: "10.0.0.7".into(),
                day: day_of(now),
            });
        }
        made.push((created.record.label, created.value));
        gw.clock.advance_ms(1);
    }
    gw.app.store.add_usage(&deltas).await.unwrap();
    made
}

/// Clicks a column header (found among the headers: a page of rows holds
/// 200 other buttons).
async fn sort_by(browser: &Browser, header: &str) {
    let button = browser.by_name("#token-table thead button", header).await;
    button.click().await.unwrap();
}

/// The labels of the table's rows, top to bottom.
async fn row_labels(browser: &Browser) -> Vec<String> {
    let labels = browser
        .js("return [...document.querySelectorAll('#token-rows > tr:not(.details) th.label > span:first-child')].map(e => e.textContent);")
        .await;
    serde_json::from_value(labels).unwrap()
}

/// One column's cells, top to bottom (`n`: its position, from 1).
async fn column(browser: &Browser, n: usize) -> Vec<String> {
    let cells = browser
        .js(&format!(
            "return [...document.querySelectorAll('#token-rows > tr:not(.details) > :nth-child({n})')].map(e => e.textContent.trim());"
        ))
        .await;
    serde_json::from_value(cells).unwrap()
}

fn labels_of(page: &Value) -> Vec<String> {
    let tokens = page["tokens"].as_array().unwrap();
    tokens.iter().map(|t| t["label"].as_str().unwrap().to_owned()).collect()
}

/// Waits until the table shows the rows of the API answer to `query`.
async fn shows(browser: &Browser, gw: &Gateway, query: &str) -> Vec<String> {
    let expected = labels_of(&as_admin(gw, &format!("/get?maxResults=50&{query}")).await);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let shown = row_labels(browser).await;
        if shown == expected {
            return shown;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{query}: {shown:?} != {expected:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[cfg_attr(
    not(have_browser),
    ignore = "needs Chromium and chromedriver (Debian: chromium chromium-driver)"
)]
#[tokio::test]
async fn an_admin_sorts_filters_and_pages_sixty_tokens() {
    let browser = Browser::start(1280, 900).await;
    let gw = Gateway::start_with(|c| c.max_tokens_per_user = 100).await;
    sixty_tokens(&gw).await;
    log_in(&browser, &gw, "admin").await;
    browser.text_of("tokens-status", |t| t == "60 tokens").await;
    assert_eq!(
        shows(&browser, &gw, "orderBy=-created").await.len(),
        50,
        "50 rows a page"
    );
    browser.text_of("tokens-page", |t| t == "Page 1 of 2").await;
    screenshot(&browser, "ui-tokens.png").await;

    // Each header sorts by its column, and again the other way round.
    for (header, by, first) in [
        ("Label", "label", "label"),
        ("User", "user", "user"),
        ("Spaces", "spaces", "spaces"),
        ("Expires", "expires", "expires"),
        ("Last used", "lastUsed", "-lastUsed"),
        ("Calls (30 days)", "calls", "-calls"),
    ] {
        sort_by(&browser, header).await;
        shows(&browser, &gw, &format!("orderBy={first}")).await;
        let flipped = first.strip_prefix('-').map_or(format!("-{by}"), str::to_owned);
        sort_by(&browser, header).await;
        shows(&browser, &gw, &format!("orderBy={flipped}")).await;
        let sort = browser
            .js(&format!(
                "return document.querySelector('th[data-sort=\"{by}\"]').getAttribute('aria-sort');"
            ))
            .await;
        let expected = if flipped.starts_with('-') {
            "descending"
        } else {
            "ascending"
        };
        assert_eq!(sort, expected, "{header}");
    }
    // The busiest first, by the counts the table shows.
    sort_by(&browser, "Calls (30 days)").await;
    shows(&browser, &gw, "orderBy=-calls").await;
    let calls: Vec<i64> = column(&browser, 7).await.iter().map(|c| c.parse().unwrap()).collect();
    assert!(calls.windows(2).all(|w| w[0] >= w[1]) && calls[0] > 0, "{calls:?}");
    // A header is a button: Enter on it sorts too.
    let label_header = browser.by_name("#token-table thead button", "Label").await;
    label_header.send_keys("\u{E007}").await.unwrap();
    let labels = shows(&browser, &gw, "orderBy=label").await;
    let mut sorted = labels.clone();
    sorted.sort_by_key(|l| l.to_lowercase());
    assert_eq!(labels, sorted);

    // The second page holds the other 10.
    browser.click("Next page").await;
    browser.text_of("tokens-page", |t| t == "Page 2 of 2").await;
    assert_eq!(shows(&browser, &gw, "orderBy=label&startAt=50").await.len(), 10);
    browser.click("Previous page").await;
    browser.text_of("tokens-page", |t| t == "Page 1 of 2").await;

    // Each state, with its badge on every row.
    for (state, badge, total) in [
        ("expired", Some("expired"), 6),
        ("expiring", Some("expires soon"), 11),
        ("unbound", Some("unbound"), 8),
        ("active", None, 54),
        ("all", None, 60),
    ] {
        browser.choose("State", state).await;
        let told = if total == 1 {
            "1 token".to_owned()
        } else {
            format!("{total} tokens")
        };
        browser.text_of("tokens-status", |t| t == told).await;
        shows(&browser, &gw, &format!("orderBy=label&state={state}")).await;
        let labels = column(&browser, 2).await;
        if let Some(badge) = badge {
            assert!(labels.iter().all(|l| l.contains(badge)), "{state}: {labels:?}");
        }
        if state == "active" {
            assert!(labels.iter().all(|l| !l.contains("expired")), "{labels:?}");
        }
    }
    screenshot(&browser, "ui-tokens-unbound.png").await;
    browser.choose("State", "all").await;
    browser.fill("User", "bob").await;
    browser.text_of("tokens-status", |t| t == "16 tokens").await;
    assert!(column(&browser, 3).await.iter().all(|u| u == "bob"));
    browser.fill("Label", "MCP").await;
    browser.text_of("tokens-status", |t| t == "3 tokens").await;
    browser.fill("User", "nobody").await;
    browser
        .text_of("tokens-status", |t| t == "No tokens match these filters.")
        .await;

    browser.resize(360, 740).await;
    browser.fill("User", "").await;
    browser.fill("Label", "").await;
    browser.text_of("tokens-status", |t| t == "60 tokens").await;
    let width = browser.js("return document.documentElement.scrollWidth;").await;
    let wide = browser
        .js("return [...document.querySelectorAll('body *')].filter(e => (!e.closest('.table-wrap') || e.classList.contains('table-wrap') || e.tagName === 'TABLE') && e.getBoundingClientRect().right > 361).map(e => e.tagName + '#' + e.id + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right));")
        .await;
    assert!(
        width.as_u64().unwrap() <= 360,
        "the page is {width} px wide: the table scrolls in its box; too wide: {wide}"
    );
    browser
        .js("document.getElementById('tokens-status').scrollIntoView(); return 0;")
        .await;
    screenshot(&browser, "ui-tokens-360.png").await;
    browser.close().await;
}

#[cfg_attr(
    not(have_browser),
    ignore = "needs Chromium and chromedriver (Debian: chromium chromium-driver)"
)]
#[tokio::test]
async fn an_admin_revokes_three_selected_tokens_with_one_confirmation() {
    let browser = Browser::start(1280, 900).await;
    let gw = Gateway::start().await;
    let mut made = Vec::new();
    for label in ["alpha", "bravo", "charlie", "delta", "echo"] {
        let created = gw
            .create_token(NewToken {
                label: label.into(),
                user: Some("alice".into()),
                ..NewToken::default()
            })
            .await;
        made.push((label, created.value));
        gw.clock.advance_ms(1);
    }
    log_in(&browser, &gw, "admin").await;
    browser.text_of("tokens-status", |t| t == "5 tokens").await;
    assert!(!browser.button("Revoke selected").await.is_enabled().await.unwrap());
    for label in ["bravo", "charlie", "echo"] {
        browser.field(&format!("Select {label}")).await.click().await.unwrap();
    }
    browser.text_of("selected-count", |t| t == "3 tokens selected").await;
    // The selection outlives a filter; the confirmation lists all of it, and says so.
    browser.fill("Label", "alpha").await;
    browser.text_of("tokens-status", |t| t == "1 token").await;
    browser.click("Revoke selected").await;
    let listed = browser.text_of("revoke-list", |t| !t.is_empty()).await;
    assert_eq!(
        listed.lines().collect::<Vec<_>>(),
        ["bravo (alice)", "charlie (alice)", "echo (alice)"]
    );
    assert_eq!(
        browser.text_of("revoke-title", |t| !t.is_empty()).await,
        "Revoke 3 tokens?"
    );
    let text = browser.text_of("revoke-text", |t| !t.is_empty()).await;
    assert!(text.ends_with("3 of them are not on this page."), "{text}");
    browser.click("Yes, revoke them").await;
    browser.text_of("tokens-status", |t| t == "Revoked 3 tokens.").await;
    browser.fill("Label", "").await;
    browser.text_of("tokens-status", |t| t == "2 tokens").await;
    assert_eq!(row_labels(&browser).await, ["delta", "alpha"]);
    for (label, value) in &made {
        let reply = get(&gw.url("/rest/api/space"), &[("authorization", &basic("alice", value))]).await;
        let revoked = ["bravo", "charlie", "echo"].contains(label);
        assert_eq!(reply.status, if revoked { 401 } else { 200 }, "{label}");
    }
    assert!(!browser.button("Revoke selected").await.is_enabled().await.unwrap());
    // Cancel revokes nothing.
    browser.field("Select alpha").await.click().await.unwrap();
    browser.click("Revoke selected").await;
    browser.click("Cancel").await;
    assert_eq!(as_admin(&gw, "/get").await["total"], 2);
    // Nothing selected carries over to the next login.
    browser.text_of("selected-count", |t| t == "1 token selected").await;
    browser.click("Log out").await;
    log_in(&browser, &gw, "admin").await;
    browser.text_of("tokens-status", |t| t == "2 tokens").await;
    assert_eq!(browser.text_of("selected-count", |_| true).await, "");
    assert!(!browser.button("Revoke selected").await.is_enabled().await.unwrap());
    browser.close().await;
}

#[cfg_attr(
    not(have_browser),
    ignore = "needs Chromium and chromedriver (Debian: chromium chromium-driver)"
)]
#[tokio::test]
async fn details_show_the_calls_per_day_chart_with_its_numbers_as_text() {
    let browser = Browser::start(1280, 900).await;
    let gw = Gateway::start().await;
    let created = gw
        .create_token(NewToken {
            label: "docs publisher".into(),
            user: Some("alice".into()),
            limit_to: Some("[get].*/rest/api/space.*".into()),
            spaces: Some("DOCS,KB:read".into()),
            rate_limit: Some("60/min".into()),
            ..NewToken::default()
        })
        .await;
    let auth = basic("alice", &created.value);
    // Two days ago 4 calls and 1 refused; today 2 calls.
    gw.clock.advance_ms(-2 * DAY_MS);
    for path in [
        "/rest/api/space",
        "/rest/api/space",
        "/rest/api/space",
        "/rest/api/space",
        "/rest/api/content",
    ] {
        get(&gw.url(path), &[("authorization", &auth)]).await;
    }
    gw.app.flush_records().await;
    gw.clock.advance_ms(2 * DAY_MS);
    for _ in 0..2 {
        get(&gw.url("/rest/api/space"), &[("authorization", &auth)]).await;
    }
    gw.app.flush_records().await;

    log_in(&browser, &gw, "alice").await;
    browser.text_of("tokens-status", |t| t == "1 token").await;
    assert_eq!(column(&browser, 7).await, ["6"], "calls of the last 30 days");
    browser.click("Details").await;
    let details = browser.text_of("token-rows", |t| t.contains("Last 30 days")).await;
    for shown in [
        "[get].*/rest/api/space.*",
        "60/min",
        "enforced",
        "identity header",
        &created.record.id,
    ] {
        assert!(details.contains(shown), "{shown}: {details}");
    }
    let summary = browser.text_of("token-rows", |t| t.contains("busiest")).await;
    assert!(summary.contains("Last 30 days (UTC): 6 calls, 1 refused"), "{summary}");
    let chart = browser.by_name("svg", "Calls per day").await;
    assert_eq!(chart.attr("role").await.unwrap().as_deref(), Some("img"));
    let bars = browser
        .js("return document.querySelectorAll('svg.chart g').length;")
        .await;
    assert_eq!(bars, 30);
    // The numbers as text: every day, oldest first, zero days too.
    let numbers = browser
        .js("return [...document.querySelectorAll('.chart-numbers tbody tr')].map(r => [...r.children].map(c => c.textContent));")
        .await;
    let numbers: Vec<Vec<String>> = serde_json::from_value(numbers).unwrap();
    let today = day_of(gw.clock.now_ms());
    assert_eq!(numbers.len(), 30);
    assert_eq!(numbers[29], [tokengate::day_text(today), "2".into(), "0".into()]);
    assert_eq!(numbers[27], [tokengate::day_text(today - 2), "4".into(), "1".into()]);
    assert_eq!(numbers[28][1..], ["0", "0"]);
    assert_eq!(numbers[0][0], tokengate::day_text(today - 29));
    let expanded = browser.button("Details").await.attr("aria-expanded").await.unwrap();
    assert_eq!(expanded.as_deref(), Some("true"));
    screenshot(&browser, "ui-details.png").await;
    browser.resize(360, 740).await;
    browser
        .until(
            "the chart fits",
            "document.querySelector('svg.chart').getBoundingClientRect().width <= 360",
        )
        .await;
    browser
        .js("document.querySelector('tr.details').scrollIntoView(); return 0;")
        .await;
    screenshot(&browser, "ui-details-360.png").await;
    browser.click("Details").await;
    browser
        .until("details closed", "document.querySelector('tr.details').hidden")
        .await;
    browser.close().await;
}

#[cfg_attr(
    not(have_browser),
    ignore = "needs Chromium and chromedriver (Debian: chromium chromium-driver)"
)]
#[tokio::test]
async fn create_offers_expiry_presets_asks_for_the_unbound_box_and_shows_errors_at_their_fields() {
    let browser = Browser::start(1280, 900).await;
    let gw = Gateway::start().await;
    log_in(&browser, &gw, "admin").await;
    browser.link("Create a token").await.click().await.unwrap();
    let options = browser
        .js("return [...document.getElementById('create-days').options].map(o => o.value);")
        .await;
    assert_eq!(options, serde_json::json!(["7", "30", "90", "365", "never"]));
    assert_eq!(
        browser
            .field("Expires in days")
            .await
            .prop("value")
            .await
            .unwrap()
            .as_deref(),
        Some("90")
    );

    // Nothing filled in: each error at its field, the focus on the first.
    browser.click("Create token").await;
    browser.text_of("create-label-error", |t| t.contains("label")).await;
    browser
        .text_of("create-password-error", |t| t.contains("password"))
        .await;
    let focused = browser.client.active_element().await.unwrap();
    assert_eq!(browser.accessible_name(&focused).await, "Label");
    assert_eq!(
        browser
            .field("Label")
            .await
            .attr("aria-invalid")
            .await
            .unwrap()
            .as_deref(),
        Some("true")
    );

    // A wrong password says so, at the password.
    browser.fill("Label", "shared reader").await;
    browser.fill("Confluence password", "not-the-password").await;
    browser.click("Create token").await;
    let said = browser.text_of("create-password-error", |t| !t.is_empty()).await;
    assert!(said.contains("Confluence did not accept this password"), "{said}");
    assert!(browser.text_of("create-label-error", |t| t.is_empty()).await.is_empty());

    // The gateway's refusal, at its field, in plain words.
    browser.fill("Rate limit", "lots").await;
    browser.fill("Confluence password", password_of("admin")).await;
    browser.click("Create token").await;
    let said = browser.text_of("create-rate-error", |t| !t.is_empty()).await;
    assert!(
        said.contains("is not a rate limit") && !said.contains("rateLimit"),
        "{said}"
    );
    assert!(said.starts_with("“lots” is not"), "{said}");
    let focused = browser.client.active_element().await.unwrap();
    assert_eq!(browser.accessible_name(&focused).await, "Rate limit");
    // Typing in the field takes its error away.
    browser.fill("Rate limit", "10/min").await;
    browser
        .until("the error gone", "document.getElementById('create-rate-error').hidden")
        .await;
    assert_eq!(
        browser.field("Rate limit").await.attr("aria-invalid").await.unwrap(),
        None
    );
    browser.fill("Rate limit", "").await;

    // An unbound token needs the box: ticking it empties and locks "For user".
    browser.fill("For user", "bob").await;
    browser
        .field("Any user may use this token")
        .await
        .click()
        .await
        .unwrap();
    let user = browser.field("For user").await;
    assert!(!user.is_enabled().await.unwrap());
    assert_eq!(user.prop("value").await.unwrap().as_deref(), Some(""));
    browser.fill("Confluence password", password_of("admin")).await;
    screenshot(&browser, "ui-create-unbound.png").await;
    browser.click("Create token").await;
    let first = browser.field("New token").await.prop("value").await.unwrap().unwrap();
    let listed = as_admin(&gw, "/get").await;
    assert_eq!(listed["tokens"][0]["label"], "shared reader");
    assert_eq!(listed["tokens"][0]["user"], Value::Null, "unbound");
    let days = (listed["tokens"][0]["validUntil"].as_i64().unwrap()
        - listed["tokens"][0]["dateCreated"].as_i64().unwrap())
        / DAY_MS;
    assert_eq!(days, 90, "90 days unless chosen otherwise");
    assert!(
        browser.field("For user").await.is_enabled().await.unwrap(),
        "the form starts over"
    );

    // Without the box, an empty user is the admin.
    gw.clock.advance_ms(1);
    browser.link("Create a token").await.click().await.unwrap();
    browser.fill("Label", "mine").await;
    browser.choose("Expires in days", "never").await;
    browser.fill("Confluence password", password_of("admin")).await;
    browser.click("Create token").await;
    browser
        .until("a second value", &format!("document.getElementById('new-token').value.startsWith('tgw_') && document.getElementById('new-token').value !== '{first}'"))
        .await;
    let listed = as_admin(&gw, "/get").await;
    assert_eq!(
        (&listed["tokens"][0]["user"], &listed["tokens"][0]["validUntil"]),
        (&"admin".into(), &Value::Null)
    );
    browser.close().await;
}

#[cfg_attr(
    not(have_browser),
    ignore = "needs Chromium and chromedriver (Debian: chromium chromium-driver)"
)]
#[tokio::test]
async fn the_presets_keep_within_the_longest_expiry_allowed() {
    let browser = Browser::start(1280, 900).await;
    let gw = Gateway::start_with(|c| c.max_days_until_expiry = Some(60)).await;
    log_in(&browser, &gw, "alice").await;
    browser.link("Create a token").await.click().await.unwrap();
    let options = browser
        .js("return [...document.getElementById('create-days').options].map(o => o.value);")
        .await;
    assert_eq!(options, serde_json::json!(["7", "30", "60"]), "no never, no 90 or 365");
    assert_eq!(
        browser
            .field("Expires in days")
            .await
            .prop("value")
            .await
            .unwrap()
            .as_deref(),
        Some("60")
    );
    browser.close().await;
}

#[cfg_attr(
    not(have_browser),
    ignore = "needs Chromium and chromedriver (Debian: chromium chromium-driver)"
)]
#[tokio::test]
async fn the_audit_table_says_each_outcome_in_words_and_filters_by_it() {
    let browser = Browser::start(1280, 900).await;
    let gw = Gateway::start().await;
    let created = gw
        .create_token(NewToken {
            label: "docs publisher".into(),
            user: Some("alice".into()),
            limit_to: Some("[get].*/rest/api/space.*".into()),
            spaces: Some("DOCS".into()),
            ..NewToken::default()
        })
        .await;
    let auth = basic("alice", &created.value);
    for path in [
        "/rest/api/space?spaceKey=DOCS",
        "/rest/api/content",
        "/rest/api/space?spaceKey=PM",
    ] {
        get(&gw.url(path), &[("authorization", &auth)]).await;
    }
    let long = format!("/rest/api/space/DOCS/{}", "description/plain/".repeat(12));
    get(&gw.url(&long), &[("authorization", &auth)]).await;
    gw.app.flush_records().await;
    log_in(&browser, &gw, "admin").await;
    browser.link("Audit log").await.click().await.unwrap();
    let all = browser
        .text_of("audit-table", |t| t.contains("refused: space PM is not allowed"))
        .await;
    for said in ["allowed", "refused: no rule allows it", "created", "logged in"] {
        assert!(all.contains(said), "{said}: {all}");
    }
    for code in ["rule_mismatch", "space_not_allowed", "done"] {
        assert!(!all.contains(code), "{code}: {all}");
    }
    let headers = browser
        .js("return [...document.querySelectorAll('#audit-table thead th')].map(h => h.textContent);")
        .await;
    assert_eq!(
        headers,
        serde_json::json!(["Time", "User", "Token", "Request", "Outcome"])
    );
    // The token's id and a long request's whole path are there on hover.
    let token_titles = browser
        .js("return [...document.querySelectorAll('#audit-table td:nth-child(3)')].map(c => c.title);")
        .await;
    let on_hover = format!("docs publisher, id {}", created.record.id);
    assert!(
        token_titles.as_array().unwrap().iter().any(|t| *t == *on_hover),
        "{token_titles}"
    );
    let titles = browser
        .js("return [...document.querySelectorAll('#audit-table td:nth-child(4)')].map(c => c.title);")
        .await;
    assert!(
        titles
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t.as_str().unwrap().ends_with("description/plain/")),
        "{titles}"
    );
    screenshot(&browser, "ui-audit.png").await;

    browser.choose("Outcome", "refused").await;
    browser.text_of("audit-status", |t| t == "2 entries").await;
    let outcomes = browser
        .js("return [...document.querySelectorAll('#audit-table td:nth-child(5)')].map(c => c.textContent);")
        .await;
    assert_eq!(
        outcomes,
        serde_json::json!(["refused: space PM is not allowed", "refused: no rule allows it"])
    );
    browser.choose("Outcome", "allowed").await;
    browser.text_of("audit-status", |t| t == "2 entries").await;
    browser.fill("User", "nobody").await;
    browser
        .text_of("audit-status", |t| t == "No entries match these filters.")
        .await;
    browser.fill("User", "").await;
    browser.fill("Token", &created.record.id).await;
    browser.choose("Outcome", "refused").await;
    browser.text_of("audit-status", |t| t == "2 entries").await;
    browser.choose("Outcome", "all").await;
    browser.text_of("audit-status", |t| t == "5 entries").await;
    browser.resize(360, 740).await;
    browser
        .js("document.getElementById('audit-status').scrollIntoView(); return 0;")
        .await;
    screenshot(&browser, "ui-audit-360.png").await;
    browser.choose("Outcome", "allowed").await;
    browser.fill("Token", "no-such-token").await;
    browser
        .text_of("audit-status", |t| t == "No entries match these filters.")
        .await;
    browser.close().await;
}

#[cfg_attr(
    not(have_browser),
    ignore = "needs Chromium and chromedriver (Debian: chromium chromium-driver)"
)]
#[tokio::test]
async fn a_user_without_tokens_is_shown_how_to_make_the_first() {
    let browser = Browser::start(360, 740).await;
    let gw = Gateway::start().await;
    log_in(&browser, &gw, "bob").await;
    browser.click("Create your first token").await;
    browser.field("Label").await;
    let focused = browser.client.active_element().await.unwrap();
    assert_eq!(
        browser.accessible_name(&focused).await,
        "Label",
        "the form takes the focus"
    );
    browser.field("Confluence password").await;
    assert!(browser.js("return location.hash;").await == "#create");
    browser.close().await;
}

/// Words that a table shows across two lines: for every header and cell
/// (not the open details row, whose rules wrap on purpose), each word of
/// its text must lie on one line.
const BROKEN_WORDS: &str = r#"
const broken = [];
for (const cell of document.querySelectorAll(arguments[0])) {
  if (cell.closest('tr.details') || cell.offsetParent === null) continue;
  const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    for (const match of node.data.matchAll(/\S+/g)) {
      const range = document.createRange();
      range.setStart(node, match.index);
      range.setEnd(node, match.index + match[0].length);
      const lines = new Set([...range.getClientRects()].filter(r => r.width > 0).map(r => Math.round(r.top)));
      if (lines.size > 1) broken.push(match[0]);
    }
  }
}
return broken;
"#;

async fn broken_words(browser: &Browser, cells: &str) -> Vec<String> {
    let found = browser
        .client
        .execute(BROKEN_WORDS, vec![Value::String(cells.into())])
        .await
        .unwrap();
    serde_json::from_value(found).unwrap()
}

#[cfg_attr(
    not(have_browser),
    ignore = "needs Chromium and chromedriver (Debian: chromium chromium-driver)"
)]
#[tokio::test]
async fn no_header_or_cell_breaks_inside_a_word_at_1280_or_360_pixels() {
    let browser = Browser::start(1280, 900).await;
    let gw = Gateway::start_with(|c| c.max_tokens_per_user = 100).await;
    let made = sixty_tokens(&gw).await;
    for (label, value) in made.iter().skip(6).take(5) {
        let user = as_admin(&gw, &format!("/get?label={}", label.replace(' ', "%20"))).await["tokens"][0]["user"]
            .as_str()
            .unwrap_or("alice")
            .to_owned();
        for path in [
            "/rest/api/space?spaceKey=DOCS",
            "/rest/api/content/12",
            "/rest/api/space?spaceKey=PM",
        ] {
            get(&gw.url(path), &[("authorization", &basic(&user, value))]).await;
        }
    }
    gw.app.flush_records().await;
    log_in(&browser, &gw, "admin").await;
    browser.text_of("tokens-status", |t| t == "60 tokens").await;
    for width in [1280, 360] {
        browser.resize(width, 800).await;
        browser
            .until("laid out", "document.querySelectorAll('#token-rows tr').length >= 100")
            .await;
        let broken = broken_words(&browser, "#token-table th, #token-table td").await;
        assert!(broken.is_empty(), "at {width} px the token table breaks {broken:?}");
        browser.link("Audit log").await.click().await.unwrap();
        browser.text_of("audit-status", |t| t.ends_with("entries")).await;
        let broken = broken_words(&browser, "#audit-table th, #audit-table td").await;
        assert!(broken.is_empty(), "at {width} px the audit table breaks {broken:?}");
        // The proof that the check can fail: squeezed into a narrow table
        // with wrapping allowed anywhere, it sees the breaks. (Through the
        // CSSOM: the page's CSP refuses a <style> element.)
        browser
            .js("const sheet = document.styleSheets[0]; \
                 sheet.insertRule('#audit-table th, #audit-table td { white-space: normal !important; overflow-wrap: anywhere !important; }', sheet.cssRules.length); \
                 sheet.insertRule('#audit-table { table-layout: fixed !important; width: 240px !important; }', sheet.cssRules.length); return 0;")
            .await;
        assert!(
            !broken_words(&browser, "#audit-table th, #audit-table td")
                .await
                .is_empty()
        );
        browser
            .js("const sheet = document.styleSheets[0]; sheet.deleteRule(sheet.cssRules.length - 1); sheet.deleteRule(sheet.cssRules.length - 1); return 0;")
            .await;
        browser.link("Tokens").await.click().await.unwrap();
    }
    browser.close().await;
}

#[cfg_attr(
    not(have_browser),
    ignore = "needs Chromium and chromedriver (Debian: chromium chromium-driver)"
)]
#[tokio::test]
async fn with_pat_mode_revoking_selected_tokens_with_the_password_revokes_their_pats() {
    let browser = Browser::start(1280, 900).await;
    let gw = Gateway::start_with(|c| c.forward_as = tokengate::ForwardAs::Pat).await;
    let alice = basic("alice", password_of("alice"));
    for label in ["one", "two", "three"] {
        let headers = [("authorization", alice.as_str()), ("content-type", "application/json")];
        let body = serde_json::json!({ "label": label }).to_string();
        let reply = send(Method::POST, &gw.url(&format!("{BASE}/set")), &headers, body).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        gw.clock.advance_ms(1);
    }
    log_in(&browser, &gw, "alice").await;
    browser.text_of("tokens-status", |t| t == "3 tokens").await;
    browser.field("Select one").await.click().await.unwrap();
    browser.field("Select three").await.click().await.unwrap();
    browser.click("Revoke selected").await;
    browser.fill("Confluence password", password_of("alice")).await;
    browser.click("Yes, revoke them").await;
    browser.text_of("tokens-status", |t| t == "Revoked 2 tokens.").await;
    let revoked: Vec<bool> = gw.upstream.pats().iter().map(|p| p.revoked).collect();
    assert_eq!(revoked, [true, false, true], "the PATs of one and three");

    // Without the password the PAT stays, and the page says so.
    browser.field("Select two").await.click().await.unwrap();
    browser.click("Revoke selected").await;
    browser.click("Yes, revoke them").await;
    let said = browser
        .text_of("tokens-status", |t| t.starts_with("Revoked 1 token."))
        .await;
    assert!(said.contains("1 personal access token stays in Confluence"), "{said}");
    assert!(!gw.upstream.pats()[1].revoked);
    browser.close().await;
}
