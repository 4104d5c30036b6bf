//! Real clients inside and outside their space (SPEC §17, "Real clients"):
//! every request atlassian-python-api's `Confluence` class sends, read out
//! of its source into `fixtures/atlassian_python_api.json`, sent by a token
//! confined to DOCS twice: once inside DOCS (forwarded, unless the table
//! refuses it by design) and once aimed at SECRET (refused, or confined);
//! and each through the dry run, which must say what the gateway did.

use hyper::Method;
use serde::Deserialize;
use serde_json::Value;

use crate::common::fake_confluence::ADMIN_PASSWORD;
use crate::common::{basic, send};
use crate::spaces::{confined, outcome};

/// One request of the library, with placeholders for ids and keys.
#[derive(Debug, Deserialize)]
struct Shape {
    call: String,
    method: String,
    target: String,
    /// JSON, `"multipart"` for an upload, or `null`.
    body: Value,
    /// `forward`, `refuse` (by design) or `nospace` (touches no space).
    expect: String,
    why: String,
}

/// The values a placeholder takes inside DOCS and aimed at SECRET
/// (`fake_confluence::CONTENT`).
const INSIDE: [(&str, &str); 8] = [
    ("{page}", "100"),
    ("{parent}", "101"),
    ("{attachment}", "att500"),
    ("{space}", "DOCS"),
    ("{user}", "alice"),
    ("{group}", "confluence-users"),
    ("{label}", "howto"),
    ("{file}", "a.txt"),
];
const OUTSIDE: [(&str, &str); 8] = [
    ("{page}", "200"),
    ("{parent}", "200"),
    ("{attachment}", "att600"),
    ("{space}", "SECRET"),
    ("{user}", "alice"),
    ("{group}", "confluence-users"),
    ("{label}", "howto"),
    ("{file}", "a.txt"),
];

fn fill(text: &str, values: &[(&str, &str)]) -> String {
    values
        .iter()
        .fold(text.to_owned(), |text, (name, value)| text.replace(name, value))
}

const BOUNDARY: &str = "tokengate-fixture";

/// The request's headers and body, as the library sends them.
fn body_of(shape: &Shape, values: &[(&str, &str)]) -> (Vec<(&'static str, String)>, String) {
    match &shape.body {
        Value::Null => (Vec::new(), String::new()),
        Value::String(kind) if kind == "multipart" => (
            vec![
                ("content-type", format!("multipart/form-data; boundary={BOUNDARY}")),
                ("x-atlassian-token", "no-check".to_owned()),
            ],
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\r\nhello\r\n--{BOUNDARY}--\r\n"
            ),
        ),
        json => (
            vec![("content-type", "application/json".to_owned())],
            fill(&json.to_string(), values),
        ),
    }
}

/// Whether the forwarded target shows the confinement: the CQL confined to
/// DOCS, or DOCS's `spaceKey` added.
fn confined_target(target: &str) -> bool {
    target.contains("space+in+%28%22DOCS%22%29") || target.contains("spaceKey=DOCS")
}

#[tokio::test]
async fn every_call_of_atlassian_python_api_inside_its_space_and_aimed_outside() {
    let shapes: Vec<Shape> =
        serde_json::from_str(include_str!("fixtures/atlassian_python_api.json")).expect("the fixture is JSON");
    assert!(shapes.len() > 150, "the fixture holds the library's calls");
    let (gw, auth) = confined("DOCS", "", true).await;
    let admin = basic("admin", ADMIN_PASSWORD);
    let (mut inside_forwarded, mut inside_refused, mut outside_refused, mut outside_confined, mut no_space) =
        (0, 0, 0, 0, 0);
    let mut failures = Vec::new();
    for shape in &shapes {
        let method = Method::from_bytes(shape.method.as_bytes()).unwrap();
        for (values, inside) in [(&INSIDE, true), (&OUTSIDE, false)] {
            let target = fill(&shape.target, values);
            let (extra, body) = body_of(shape, values);
            let mut headers: Vec<(&str, &str)> = vec![("authorization", auth.as_str())];
            headers.extend(extra.iter().map(|(n, v)| (*n, v.as_str())));
            let before = gw.upstream.count();
            let reply = send(method.clone(), &gw.url(&target), &headers, body.clone()).await;
            let (status, reason) = outcome(&reply);
            let sent: Vec<String> = gw.upstream.requests()[before..]
                .iter()
                .filter(|r| !r.target.contains("expand=space&status=any"))
                .map(|r| r.target.clone())
                .collect();
            let refused = !reason.is_empty();
            // The dry run says what the gateway does: a refusal it names is
            // the gateway's, and what the gateway forwards it allows.
            let content_type = extra.iter().find(|(n, _)| *n == "content-type").map(|(_, v)| v.clone());
            let mut check = serde_json::json!({"limitTo": "", "method": shape.method, "url": target, "spaces": "DOCS"});
            if !body.is_empty() {
                check["body"] = Value::String(body);
                check["contentType"] = content_type.map_or(Value::Null, Value::String);
            }
            let dry = send(
                Method::POST,
                &gw.url("/rest/extender/1.0/tokenTools/check"),
                &[("authorization", &admin), ("content-type", "application/json")],
                check.to_string(),
            )
            .await
            .json();
            let dry_allows = dry["allowed"] == Value::Bool(true);
            let dry_reason = dry["explanation"].to_string();
            let agrees = match (dry_allows, refused) {
                (true, false) => true,
                // Allowed only if Confluence places its content ids in DOCS.
                (true, true) => reason == "space_not_allowed" && dry_reason.contains("Confluence is asked"),
                (false, true) => dry_reason.contains(&reason),
                (false, false) => false,
            };
            if !agrees {
                failures.push(format!(
                    "dry run: {} {} {target}: gateway {status} {reason}, dry run {dry}",
                    shape.call, shape.method
                ));
            }
            let label = format!("{} {} {target} ({})", shape.call, shape.method, shape.why);
            let expected = match (shape.expect.as_str(), inside) {
                ("nospace", _) => {
                    no_space += usize::from(inside);
                    !refused && sent.len() == 1
                }
                ("forward", true) => {
                    inside_forwarded += usize::from(!refused);
                    !refused && sent.len() == 1
                }
                ("refuse", true) => {
                    inside_refused += usize::from(refused);
                    refused && sent.is_empty()
                }
                (_, false) if refused => {
                    outside_refused += 1;
                    sent.is_empty()
                }
                (_, false) => {
                    outside_confined += 1;
                    sent.len() == 1 && confined_target(&sent[0])
                }
                (other, _) => panic!("{}: unknown expectation {other}", shape.call),
            };
            if !expected {
                failures.push(format!(
                    "{} {label}: {status} {reason}, Confluence got {sent:?}",
                    if inside { "inside" } else { "outside" }
                ));
            }
        }
    }
    println!(
        "{} calls: inside DOCS {inside_forwarded} forwarded, {inside_refused} refused by design, {no_space} touch no space; \
         aimed at SECRET {outside_refused} refused, {outside_confined} confined",
        shapes.len()
    );
    assert!(
        failures.is_empty(),
        "{} calls went wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
