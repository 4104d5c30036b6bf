//! Findings of a hostile test, each pinned: silent and dribbling clients,
//! cross-site calls to the management API, Confluence sessions escaping a
//! token's restrictions, protocol switches, tokens sent outside
//! `Authorization`, method overrides, compressed JSON, password guessing,
//! and small malformed inputs.

use std::time::Duration;

use hyper::Method;
use serde_json::json;
use tokengate::{AuditKind, AuditQuery, NewToken, TokenQuery, TokenRecord};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::fake_confluence::ADMIN_PASSWORD;
use crate::common::{Gateway, Reply, basic, get, send};

const SPACE: &str = "/rest/api/space";
const SET: &str = "/rest/extender/1.0/tokenTools/set";
const USER_CURRENT: &str = "/rest/api/user/current";

/// Reads whatever the server sends until it closes, at most `limit` of (possibly paused) time.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut answer = Vec::new();
    match tokio::time::timeout(limit, stream.read_to_end(&mut answer)).await {
        Ok(_) => Some(String::from_utf8_lossy(&answer).into_owned()),
        Err(_) => None,
    }
}

async fn raw(gw: &Gateway, request: &str) -> String {
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    read_until_closed(&mut stream, Duration::from_secs(10))
        .await
        .expect("the gateway answers and closes")
}

#[tokio::test]
async fn silent_connections_are_closed_after_the_header_timeout_and_free_their_slots() {
    let gw = Gateway::start_with(|c| c.max_connections = 20).await;
    let mut silent = Vec::new();
    for _ in 0..19 {
        silent.push(TcpStream::connect(gw.addr).await.unwrap());
    }
    // An HTTP/2 client that sends its preface and then nothing.
    let mut preface_only = TcpStream::connect(gw.addr).await.unwrap();
    preface_only
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    silent.push(preface_only);
    // Every slot is taken: a new client is refused.
    let mut extra = TcpStream::connect(gw.addr).await.unwrap();
    let refused = read_until_closed(&mut extra, Duration::from_secs(10)).await.unwrap();
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("x-tokengate-reason: unavailable"), "{refused}");
    // Let the connection tasks arm their timers before time stops.
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::time::pause();
    for stream in &mut silent {
        let closed = read_until_closed(stream, Duration::from_secs(120)).await;
        assert!(closed.is_some(), "a silent connection was never closed");
    }
    tokio::time::resume();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while get(&gw.url(SPACE), &[]).await.status != 200 {
        assert!(std::time::Instant::now() < deadline, "the slots never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(gw.upstream.count(), 1);
}

#[tokio::test]
async fn a_body_dribbled_a_byte_at_a_time_is_cut_off() {
    let gw = Gateway::start().await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"PUT /rest/api/content/1/child/attachment HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\nx")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::time::pause();
    let started = tokio::time::Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    let dribble = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(3)).await;
            if writer.write_all(b"x").await.is_err() {
                return;
            }
        }
    });
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(75), reader.read(&mut answer)).await;
    let waited = started.elapsed();
    tokio::time::resume();
    dribble.abort();
    let n = read
        .expect("the dribbled upload was still being read after 75 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("too slowly"), "{answer}");
    assert!(waited < Duration::from_secs(20), "cut off after {waited:?}");
    assert_eq!(get(&gw.url(SPACE), &[]).await.status, 200, "the gateway keeps serving");
}

async fn admin_call(gw: &Gateway, headers: &[(&str, &str)], body: &str) -> Reply {
    let auth = basic("admin", ADMIN_PASSWORD);
    let mut all = vec![("authorization", auth.as_str())];
    all.extend_from_slice(headers);
    send(Method::POST, &gw.url(SET), &all, body.to_owned()).await
}

#[tokio::test]
async fn cross_site_calls_to_the_management_api_are_refused_and_audited() {
    let gw = Gateway::start().await;
    let create =
        json!({"label": "planted", "userName": "admin", "token": format!("tgw_{}", "a".repeat(40))}).to_string();
    let origin = format!("http://{}", gw.addr);
    let refused: Vec<Vec<(&str, &str)>> = vec![
        // What an HTML form on any page can send.
        vec![("content-type", "text/plain")],
        vec![("content-type", "application/x-www-form-urlencoded")],
        vec![("content-type", "multipart/form-data; boundary=x")],
        vec![],
        // What a browser says about a script of another site.
        vec![("content-type", "application/json"), ("origin", "https://evil.example")],
        vec![("content-type", "application/json"), ("origin", "null")],
        vec![("content-type", "application/json"), ("sec-fetch-site", "cross-site")],
        vec![("content-type", "application/json"), ("sec-fetch-site", "same-site")],
    ];
    for headers in &refused {
        let reply = admin_call(&gw, headers, &create).await;
        assert_eq!(
            (reply.status.as_u16(), reply.reason()),
            (403, "forbidden".into()),
            "{headers:?}"
        );
        let reply = admin_call(&gw, headers, r#"{"auditLog": false}"#).await;
        assert_eq!(reply.status, 403, "{headers:?}");
    }
    assert_eq!(gw.upstream.count(), 0, "not even the password was checked");
    assert!(gw.app.settings.get().audit_log);
    let refusals = management_entries(&gw, "refused_cross_site").await;
    assert_eq!(refusals.len(), 2 * refused.len());
    assert!(refusals.iter().all(|e| e.user.is_none() && e.status == Some(403)));
    assert!(
        refusals
            .iter()
            .any(|e| e.detail.as_deref().is_some_and(|d| d.contains("evil.example"))),
        "{refusals:?}"
    );

    // Scripts, and the gateway's own origin, are served.
    let served: Vec<Vec<(&str, &str)>> = vec![
        vec![("content-type", "application/json")],
        vec![("content-type", "application/json; charset=utf-8")],
        vec![("content-type", "text/plain"), ("x-atlassian-token", "no-check")],
        vec![
            ("content-type", "application/json"),
            ("origin", &origin),
            ("sec-fetch-site", "same-origin"),
        ],
    ];
    for (i, headers) in served.iter().enumerate() {
        let reply = admin_call(&gw, headers, &json!({"label": format!("script-{i}")}).to_string()).await;
        assert_eq!(reply.status, 200, "{headers:?}: {:?}", reply.body);
    }
    let tokens = all_tokens(&gw).await;
    assert_eq!(tokens.len(), served.len());
    assert!(tokens.iter().all(|t| t.label.starts_with("script-")), "nothing planted");
    let id = tokens[0].id.clone();
    let delete = gw.url(&format!("/rest/extender/1.0/tokenTools/delete?id={id}"));
    let auth = basic("admin", ADMIN_PASSWORD);
    let reply = send(Method::DELETE, &delete, &[("authorization", &auth)], "").await;
    assert_eq!(
        reply.status, 200,
        "curl -X DELETE '...?id=' sends no type: {:?}",
        reply.body
    );
}

async fn all_tokens(gw: &Gateway) -> Vec<TokenRecord> {
    let query = TokenQuery {
        max_results: 1000,
        ..TokenQuery::default()
    };
    let page = gw.app.tokens.list(&query).await.unwrap();
    page.items.into_iter().map(|listed| listed.record).collect()
}

async fn management_entries(gw: &Gateway, action: &str) -> Vec<tokengate::AuditEntry> {
    gw.app.flush_records().await;
    let query = AuditQuery {
        max_results: 1000,
        ..Default::default()
    };
    let entries = gw.app.store.list_audit(&query).await.unwrap().items;
    entries
        .into_iter()
        .filter(|e| e.kind == AuditKind::Management && e.decision == action)
        .collect()
}

#[tokio::test]
async fn a_token_request_neither_rides_on_nor_brings_back_a_confluence_session() {
    let gw = Gateway::start().await;
    let token = gw.token_for("alice").await;
    let auth = basic("alice", &token);
    let reply = get(
        &gw.url("/rest/api/session"),
        &[("authorization", &auth), ("cookie", "JSESSIONID=victims-session")],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(reply.headers.get("set-cookie").is_none(), "{:?}", reply.headers);
    assert_eq!(gw.upstream.last().header("cookie"), None);
    // Anything else passes untouched, sessions included.
    let password = basic("alice", "password");
    let reply = get(
        &gw.url("/rest/api/session"),
        &[("authorization", &password), ("cookie", "JSESSIONID=own-session")],
    )
    .await;
    assert_eq!(reply.headers.get_all("set-cookie").iter().count(), 2);
    assert_eq!(gw.upstream.last().header("cookie"), Some("JSESSIONID=own-session"));
}

#[tokio::test]
async fn only_websocket_upgrades_are_passed_on() {
    let gw = Gateway::start().await;
    let token = gw.token_for("alice").await;
    let auth = basic("alice", &token);
    for authorization in [Some(auth.as_str()), None] {
        let auth_line = authorization
            .map(|a| format!("authorization: {a}\r\n"))
            .unwrap_or_default();
        let answer = raw(
            &gw,
            &format!(
                "GET {SPACE} HTTP/1.1\r\nhost: x\r\nconnection: Upgrade, HTTP2-Settings, close\r\n\
                 upgrade: h2c\r\nhttp2-settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n{auth_line}\r\n"
            ),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let forwarded = gw.upstream.last();
        assert_eq!(forwarded.header("upgrade"), None);
        assert_eq!(forwarded.header("http2-settings"), None);
    }
}

#[tokio::test]
async fn tokens_outside_authorization_are_refused_and_never_forwarded() {
    let gw = Gateway::start().await;
    let token = gw.token_for("alice").await;
    let encoded_t = token.replacen('t', "%74", 1);
    for target in [
        format!("/dologin.action?os_username=alice&os_password={token}"),
        format!("/rest/api/space?os_password={encoded_t}&os_username=alice"),
        format!("/rest/api/space?os_username={token}"),
    ] {
        let reply = get(&gw.url(&target), &[]).await;
        assert_eq!(
            (reply.status.as_u16(), reply.reason()),
            (400, "bad_credentials".into()),
            "{target}"
        );
        assert!(
            !reply.body.windows(4).any(|w| w == b"tgw_"),
            "the answer never echoes it"
        );
    }
    for (name, value) in [
        ("x-api-key", token.clone()),
        ("cookie", format!("JSESSIONID=1; api_token={token}")),
        ("cookie", token.clone()),
        ("x-auth-token", format!("Token {token}")),
    ] {
        let reply = get(&gw.url(SPACE), &[(name, &value)]).await;
        assert_eq!(
            (reply.status.as_u16(), reply.reason()),
            (400, "bad_credentials".into()),
            "{name}"
        );
    }
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test]
async fn method_overrides_never_reach_confluence_with_a_token() {
    let gw = Gateway::start().await;
    let created = gw
        .create_token(NewToken {
            label: "writer".into(),
            user: Some("alice".into()),
            limit_to: Some("[post].*/rest/api/content.*".into()),
            ..NewToken::default()
        })
        .await;
    let auth = basic("alice", &created.value);
    let overrides = [
        ("x-http-method-override", "DELETE"),
        ("x-http-method", "DELETE"),
        ("x-method-override", "DELETE"),
    ];
    let mut headers = vec![("authorization", auth.as_str()), ("content-type", "application/json")];
    headers.extend(overrides);
    let reply = send(Method::POST, &gw.url("/rest/api/content/42"), &headers, "{}").await;
    assert_eq!(reply.status, 200);
    let forwarded = gw.upstream.last();
    assert_eq!(forwarded.method, "POST");
    for (name, _) in overrides {
        assert_eq!(forwarded.header(name), None, "{name}");
    }
}

#[tokio::test]
async fn a_compressed_body_is_not_json_to_a_json_rule() {
    let gw = Gateway::start().await;
    let created = gw
        .create_token(NewToken {
            label: "pages".into(),
            user: Some("alice".into()),
            limit_to: Some("[post].*/rest/api/content/?[JsonData::type==page]".into()),
            ..NewToken::default()
        })
        .await;
    let auth = basic("alice", &created.value);
    let page = r#"{"type":"page","title":"t"}"#;
    for encoding in ["gzip", "deflate", "br", "x-custom, identity"] {
        let headers = [
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
            ("content-encoding", encoding),
        ];
        let reply = send(Method::POST, &gw.url("/rest/api/content"), &headers, page).await;
        assert_eq!(
            (reply.status.as_u16(), reply.reason()),
            (403, "rule_mismatch".into()),
            "{encoding}"
        );
    }
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
        ("content-encoding", "identity"),
    ];
    let reply = send(Method::POST, &gw.url("/rest/api/content"), &headers, page).await;
    assert_eq!(reply.status, 200, "identity is no encoding");
    assert_eq!(gw.upstream.count(), 1);
}

#[tokio::test]
async fn password_guesses_on_the_management_api_are_throttled() {
    let gw = Gateway::start_with(|c| c.failed_auth_per_minute = 5).await;
    let list = gw.url("/rest/extender/1.0/tokenTools/get");
    let right = basic("admin", ADMIN_PASSWORD);
    // A password already accepted keeps working, like a verified token.
    assert_eq!(get(&list, &[("authorization", &right)]).await.status, 200);
    let mut statuses = Vec::new();
    for i in 0..24 {
        let guess = basic("admin", &format!("guess-{}", i % 3));
        statuses.push(get(&list, &[("authorization", &guess)]).await.status.as_u16());
    }
    assert_eq!(statuses[..5], [401; 5]);
    assert_eq!(statuses[5..], [429; 19]);
    let reply = get(&list, &[("authorization", &basic("admin", "guess-9"))]).await;
    assert_eq!(reply.reason(), "too_many_failures");
    assert!(reply.headers.contains_key("retry-after"));
    let checks = gw
        .upstream
        .requests()
        .iter()
        .filter(|r| r.target == USER_CURRENT)
        .count();
    assert_eq!(checks, 1 + 3, "Confluence is not asked once the client is throttled");
    assert_eq!(get(&list, &[("authorization", &right)]).await.status, 200);
    // Failed passwords and failed tokens share one budget.
    let guess = basic("admin", "tgw_guessguessguessguessguessguessguess");
    assert_eq!(get(&gw.url(SPACE), &[("authorization", &guess)]).await.status, 429);
    gw.clock.advance_ms(61_000);
    assert_eq!(
        get(&list, &[("authorization", &basic("admin", "guess-0"))])
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn two_host_headers_are_refused() {
    let gw = Gateway::start().await;
    let answer = raw(
        &gw,
        &format!("GET {SPACE} HTTP/1.1\r\nhost: wiki.example.com\r\nhost: evil.example\r\nconnection: close\r\n\r\n"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("x-tokengate-reason: bad_request"), "{answer}");
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test]
async fn user_names_that_could_confuse_an_identity_header_are_refused() {
    let gw = Gateway::start().await;
    for user in ["   ", " alice", "alice ", "alice,admin", "al\u{7}ice", "alice\u{85}"] {
        let reply = admin_call(
            &gw,
            &[("content-type", "application/json")],
            &json!({"label": "x", "userName": user}).to_string(),
        )
        .await;
        assert_eq!(reply.status, 400, "{user:?}: {:?}", reply.body);
        assert_eq!(reply.json()["field"], "userName", "{user:?}");
    }
    assert!(all_tokens(&gw).await.is_empty());
    // An unbound token cannot be made to act as such a name either.
    let unbound = gw
        .create_token(NewToken {
            label: "shared".into(),
            ..NewToken::default()
        })
        .await;
    let reply = get(
        &gw.url(SPACE),
        &[("authorization", &basic("alice, admin", &unbound.value))],
    )
    .await;
    assert_eq!((reply.status.as_u16(), reply.reason()), (401, "user_mismatch".into()));
    assert_eq!(gw.upstream.requests().iter().filter(|r| r.target == SPACE).count(), 0);
}

#[tokio::test]
async fn guessing_token_values_through_409_is_counted_and_throttled() {
    let gw = Gateway::start_with(|c| c.failed_auth_per_minute = 3).await;
    let set = gw.url("/rest/extender/1.0/tokenTools/set");
    let admin = basic("admin", ADMIN_PASSWORD);
    let create = |value: &str| {
        let body = json!({"label": "guess", "token": value}).to_string();
        let (set, admin) = (set.clone(), admin.clone());
        async move {
            send(
                Method::POST,
                &set,
                &[("authorization", &admin), ("content-type", "application/json")],
                body,
            )
            .await
        }
    };
    let taken = "tgw_someone-elses-value-that-is-long-enough";
    assert_eq!(create(taken).await.status, 200);
    let mut answers = Vec::new();
    for _ in 0..5 {
        answers.push(create(taken).await.reason());
    }
    assert_eq!(
        answers,
        [
            "conflict",
            "conflict",
            "conflict",
            "too_many_failures",
            "too_many_failures"
        ],
        "a taken value counts as a failed attempt, even for a caller whose password is cached"
    );
    let fresh = create("tgw_a-value-nobody-has-taken-so-far-at-all").await;
    assert_eq!(fresh.reason(), "too_many_failures", "no custom value while throttled");
}

#[tokio::test]
async fn a_token_typed_in_any_wrong_field_never_reaches_confluence() {
    let gw = Gateway::start_with(|c| c.forward_as = tokengate::ForwardAs::Pat).await;
    let alice = basic("alice", "alice-password");
    let set_as = |auth: String, body: String| {
        let url = gw.url(SET);
        async move {
            let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
            send(Method::POST, &url, &headers, body).await
        }
    };
    let created = set_as(alice.clone(), r#"{"label":"ci"}"#.into()).await;
    let token = created.json()["token"].as_str().unwrap().to_owned();
    let reached = |gw: &Gateway| gw.upstream.requests().iter().filter(|r| r.contains(&token)).count();

    // As the password of the page's login, pasted with spaces or not.
    for password in [token.clone(), format!("  {token} ")] {
        let body = serde_json::json!({"username": "alice", "password": password}).to_string();
        let reply = send(
            Method::POST,
            &gw.url("/tokengate/ui/login"),
            &[("content-type", "application/json")],
            body,
        )
        .await;
        assert_eq!((reply.status.as_u16(), reply.reason()), (401, "invalid_token".into()));
        assert!(
            reply.json()["message"]
                .as_str()
                .unwrap()
                .contains("not your Confluence password")
        );
    }
    // As the password of a management call, after something else.
    let reply = set_as(basic("alice", &format!("x{token}")), r#"{"label":"x"}"#.into()).await;
    assert_eq!(reply.status, 400, "{:?}", reply.body);
    // As upstreamToken.
    let body = serde_json::json!({"label": "again", "upstreamToken": token}).to_string();
    let reply = set_as(alice.clone(), body).await;
    assert_eq!(
        (reply.status.as_u16(), reply.json()["field"].clone()),
        (400, "upstreamToken".into())
    );
    // In a Seraph parameter whose name is percent-encoded or in another case.
    for query in [
        format!("%6Fs_password={token}"),
        format!("os_username=alice&o%73%5Fpassword={token}"),
        format!("OS_PASSWORD={token}"),
    ] {
        let reply = get(&gw.url(&format!("/rest/api/space?{query}")), &[]).await;
        assert_eq!(
            (reply.status.as_u16(), reply.reason()),
            (400, "bad_credentials".into()),
            "{query}"
        );
    }
    assert_eq!(reached(&gw), 0, "the token reached Confluence");
}

/// Sends the head of a management call and the first part of its body; the
/// caller sends the rest with [`finish`] once something has happened.
async fn slow_call(gw: &Gateway, path: &str, authorization: &str, body: &str, first: usize) -> TcpStream {
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /rest/extender/1.0/tokenTools{path} HTTP/1.1\r\nHost: {}\r\nAuthorization: {authorization}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        gw.addr,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body.as_bytes()[..first]).await.unwrap();
    stream.flush().await.unwrap();
    // The gateway has authenticated the caller and waits for the rest.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stream
}

async fn finish(mut stream: TcpStream, body: &str, first: usize) -> String {
    stream.write_all(&body.as_bytes()[first..]).await.unwrap();
    read_until_closed(&mut stream, Duration::from_secs(10)).await.unwrap()
}

#[tokio::test]
async fn a_token_deleted_while_its_slow_body_is_read_changes_nothing() {
    let gw = Gateway::start().await;
    let admin = gw
        .create_token(NewToken {
            label: "leaked admin token".into(),
            user: Some("admin".into()),
            ..NewToken::default()
        })
        .await;
    let bearer = basic("admin", &admin.value);
    let create = r#"{"label":"sneaky","userName":"admin"}"#;
    let update = format!(r#"{{"id":"{}","limitTo":".*"}}"#, admin.record.id);
    let pending_create = slow_call(&gw, "/set", &bearer, create, 10).await;
    let pending_update = slow_call(&gw, "/update", &bearer, &update, 10).await;
    // The admin deletes the leaked token meanwhile.
    let auth = basic("admin", ADMIN_PASSWORD);
    let url = gw.url(&format!("/rest/extender/1.0/tokenTools/delete?id={}", admin.record.id));
    assert_eq!(
        send(Method::DELETE, &url, &[("authorization", &auth)], "").await.status,
        200
    );

    for (pending, body) in [(pending_create, create), (pending_update, update.as_str())] {
        let answer = finish(pending, body, 10).await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        assert!(answer.contains("invalid_token"), "{answer}");
    }
    assert!(all_tokens(&gw).await.is_empty(), "nothing was created");
}

#[tokio::test]
async fn a_secret_rotated_away_while_its_own_rotation_is_read_cannot_take_the_token_back() {
    let gw = Gateway::start().await;
    let created = gw
        .create_token(NewToken {
            label: "leaked".into(),
            user: Some("alice".into()),
            ..NewToken::default()
        })
        .await;
    let id = created.record.id.clone();
    let leaked = created.value;
    let body = format!(r#"{{"id":"{id}","graceHours":0}}"#);
    let pending = slow_call(&gw, "/rotate", &basic("alice", &leaked), &body, 8).await;
    // The owner rotates it meanwhile, keeping the old secret for a day.
    let auth = basic("alice", "alice-password");
    let reply = send(
        Method::POST,
        &gw.url("/rest/extender/1.0/tokenTools/rotate"),
        &[("authorization", &auth), ("content-type", "application/json")],
        json!({"id": id, "graceHours": 24}).to_string(),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let owners = reply.json()["token"].as_str().unwrap().to_owned();

    let answer = finish(pending, &body, 8).await;
    assert!(answer.starts_with("HTTP/1.1 409"), "{answer}");
    assert!(!answer.contains("tgw_"), "no new value: {answer}");
    // The owner's value still works, and the leaked one only for its grace.
    let space = gw.url("/rest/api/space");
    assert_eq!(
        get(&space, &[("authorization", &basic("alice", &owners))]).await.status,
        200
    );
    // The same leaked secret, fast, now in grace: refused as before (403).
    let again = send(
        Method::POST,
        &gw.url("/rest/extender/1.0/tokenTools/rotate"),
        &[
            ("authorization", &basic("alice", &leaked)),
            ("content-type", "application/json"),
        ],
        body.clone(),
    )
    .await;
    assert_eq!(again.status, 403, "{:?}", again.body);
    assert_eq!(
        get(&space, &[("authorization", &basic("alice", &owners))]).await.status,
        200
    );
}
