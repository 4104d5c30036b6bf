//! The web page over HTTP (SPEC §15): its headers, the session cookie and
//! its lifetime, CSRF, what a session may and may not do on the management
//! API, and that neither the page nor its cookie ever reaches Confluence.
//! `POST /check`, which the page uses, is here too.

use hyper::Method;
use serde_json::{Value, json};
use tokengate::NewToken;

use crate::common::fake_confluence::USERS;
use crate::common::{Gateway, Reply, basic, get, send};

const UI: &str = "/tokengate/ui";
const API: &str = "/rest/extender/1.0/tokenTools";

fn password_of(user: &str) -> &'static str {
    USERS.iter().find(|(name, _)| *name == user).unwrap().1
}

async fn login_as(gw: &Gateway, user: &str, password: &str) -> Reply {
    let body = json!({"username": user, "password": password}).to_string();
    send(
        Method::POST,
        &gw.url(&format!("{UI}/login")),
        &[("content-type", "application/json")],
        body,
    )
    .await
}

/// A logged-in page: its cookie header and CSRF token.
struct Page {
    cookie: String,
    csrf: String,
}

async fn log_in(gw: &Gateway, user: &str) -> Page {
    let reply = login_as(gw, user, password_of(user)).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let set_cookie = reply.headers["set-cookie"].to_str().unwrap();
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    Page {
        cookie,
        csrf: reply.json()["csrf"].as_str().unwrap().to_owned(),
    }
}

impl Page {
    async fn call(&self, gw: &Gateway, method: Method, path: &str, body: Value, extra: &[(&str, &str)]) -> Reply {
        let mut headers = vec![
            ("cookie", self.cookie.as_str()),
            ("x-tokengate-csrf", self.csrf.as_str()),
            ("content-type", "application/json"),
        ];
        headers.extend_from_slice(extra);
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        send(method, &gw.url(path), &headers, body).await
    }

    fn without_csrf(&self) -> Page {
        Page {
            cookie: self.cookie.clone(),
            csrf: String::new(),
        }
    }
}

#[tokio::test]
async fn the_page_and_its_assets_come_with_strict_headers_and_never_reach_confluence() {
    let gw = Gateway::start().await;
    for (path, kind) in [
        ("/", "text/html"),
        ("/app.js", "text/javascript"),
        ("/app.css", "text/css"),
        ("/icon.svg", "image/svg+xml"),
    ] {
        let reply = get(&gw.url(&format!("{UI}{path}")), &[]).await;
        assert_eq!(reply.status, 200, "{path}");
        assert!(
            reply.headers["content-type"].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        let csp = reply.headers["content-security-policy"].to_str().unwrap();
        assert!(
            csp.starts_with("default-src 'self'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
        assert_eq!(reply.headers["x-frame-options"], "DENY");
        assert_eq!(reply.headers["referrer-policy"], "no-referrer");
        assert_eq!(reply.headers["x-content-type-options"], "nosniff");
        assert_eq!(reply.headers["cache-control"], "no-store");
    }
    let reply = get(&gw.url(UI), &[]).await;
    assert_eq!(
        (reply.status.as_u16(), reply.headers["location"].to_str().unwrap()),
        (301, "/tokengate/ui/")
    );
    let reply = get(&gw.url(&format!("{UI}/nothing-here")), &[]).await;
    assert_eq!(reply.status, 404);
    let reply = send(Method::POST, &gw.url(&format!("{UI}/")), &[], "").await;
    assert_eq!(
        (reply.status.as_u16(), reply.headers["allow"].to_str().unwrap()),
        (405, "GET, HEAD")
    );
    // Lists of tokens are not cached either.
    let reply = get(
        &gw.url(&format!("{API}/get")),
        &[("authorization", &basic("admin", password_of("admin")))],
    )
    .await;
    assert_eq!(reply.headers["cache-control"], "no-store");
    assert_eq!(
        gw.upstream
            .requests()
            .iter()
            .filter(|r| r.target.starts_with(UI))
            .count(),
        0
    );

    let off = Gateway::start_with(|c| c.ui = false).await;
    let reply = get(&off.url(&format!("{UI}/")), &[]).await;
    assert_eq!((reply.status.as_u16(), reply.reason()), (404, "not_found".into()));
    assert_eq!(off.upstream.count(), 0, "switched off, and still never forwarded");
}

#[tokio::test]
async fn logging_in_sets_a_strict_session_cookie_and_wrong_passwords_are_throttled() {
    let gw = Gateway::start_with(|c| c.failed_auth_per_minute = 3).await;
    let reply = login_as(&gw, "alice", "wrong").await;
    assert_eq!((reply.status.as_u16(), reply.reason()), (401, "invalid_token".into()));
    assert!(
        reply.headers.get("www-authenticate").is_none(),
        "the browser must not prompt"
    );
    assert!(reply.headers.get("set-cookie").is_none());

    let reply = login_as(&gw, "alice", "alice-password").await;
    assert_eq!(reply.status, 200);
    let cookie = reply.headers["set-cookie"].to_str().unwrap();
    assert!(cookie.starts_with("tokengate_session="));
    for flag in ["; Path=/", "; HttpOnly", "; SameSite=Strict", "; Max-Age=28800"] {
        assert!(cookie.contains(flag), "{cookie} lacks {flag}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP here: {cookie}");
    let session = reply.json();
    assert_eq!((&session["user"], &session["admin"]), (&json!("alice"), &json!(false)));
    let again = login_as(&gw, "alice", "alice-password").await;
    assert_ne!(
        again.headers["set-cookie"], reply.headers["set-cookie"],
        "a new session id at every login"
    );

    for _ in 0..2 {
        login_as(&gw, "alice", "wrong").await;
    }
    let reply = login_as(&gw, "bob", "bob-password").await;
    assert_eq!(
        reply.reason(),
        "too_many_failures",
        "a password not checked yet waits once throttled"
    );
    let reply = login_as(&gw, "alice", "alice-password").await;
    assert_eq!(
        reply.status, 200,
        "one Confluence accepted a minute ago still works, like a verified token"
    );

    let https = Gateway::start_with(|c| c.public_url = Some("https://wiki.example.com".parse().unwrap())).await;
    let reply = login_as(&https, "alice", "alice-password").await;
    assert!(reply.headers["set-cookie"].to_str().unwrap().contains("; Secure"));
}

#[tokio::test]
async fn a_session_lists_and_deletes_but_creating_needs_the_password_and_every_change_the_csrf_token() {
    let gw = Gateway::start().await;
    let page = log_in(&gw, "alice").await;
    let session = get(&gw.url(&format!("{UI}/session")), &[("cookie", &page.cookie)]).await;
    assert_eq!(session.json()["csrf"], page.csrf.as_str());

    // A session alone may not yield access.
    let reply = page
        .call(&gw, Method::POST, &format!("{API}/set"), json!({"label": "x"}), &[])
        .await;
    assert_eq!((reply.status.as_u16(), reply.reason()), (403, "forbidden".into()));
    assert!(reply.json()["message"].as_str().unwrap().contains("password again"));
    assert!(reply.headers.get("www-authenticate").is_none());
    // With the password again (and the CSRF token), it does.
    let password = basic("alice", password_of("alice"));
    let reply = page
        .call(
            &gw,
            Method::POST,
            &format!("{API}/set"),
            json!({"label": "from the page"}),
            &[("authorization", &password)],
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let id = reply.json()["id"].as_str().unwrap().to_owned();

    let listed = page
        .call(&gw, Method::GET, &format!("{API}/get"), Value::Null, &[])
        .await;
    assert_eq!(listed.json()["total"], 1);
    // Without the CSRF token, nothing changes.
    let delete = format!("{API}/delete?id={id}");
    let reply = page
        .without_csrf()
        .call(&gw, Method::DELETE, &delete, Value::Null, &[])
        .await;
    assert_eq!((reply.status.as_u16(), reply.reason()), (403, "forbidden".into()));
    let forged = Page {
        cookie: page.cookie.clone(),
        csrf: "forged-token".into(),
    };
    assert_eq!(
        forged.call(&gw, Method::DELETE, &delete, Value::Null, &[]).await.status,
        403
    );
    assert_eq!(
        page.call(&gw, Method::GET, &format!("{API}/get"), Value::Null, &[])
            .await
            .json()["total"],
        1
    );
    let reply = page.call(&gw, Method::DELETE, &delete, Value::Null, &[]).await;
    assert_eq!(reply.json(), json!({"status": "ok", "deleted": 1}));
    // Settings need an admin, and the password again.
    let admin = log_in(&gw, "admin").await;
    let reply = admin
        .call(
            &gw,
            Method::POST,
            &format!("{API}/set"),
            json!({"auditLog": false}),
            &[],
        )
        .await;
    assert_eq!(reply.status, 403);
    assert!(gw.app.settings.get().audit_log);
    let reply = admin
        .call(&gw, Method::GET, &format!("{API}/settings"), Value::Null, &[])
        .await;
    assert_eq!(reply.status, 200, "reading the settings is fine with a session");
}

#[tokio::test]
async fn logging_out_or_idling_ends_the_session_everywhere() {
    let gw = Gateway::start().await;
    let page = log_in(&gw, "alice").await;
    let session = |cookie: String| {
        let url = gw.url(&format!("{UI}/session"));
        async move { get(&url, &[("cookie", &cookie)]).await.status.as_u16() }
    };
    assert_eq!(session(page.cookie.clone()).await, 200);
    // Logging out needs the CSRF token too (another site must not log you out).
    let reply = page
        .without_csrf()
        .call(&gw, Method::POST, &format!("{UI}/logout"), json!({}), &[])
        .await;
    assert_eq!(reply.status, 403);
    assert_eq!(session(page.cookie.clone()).await, 200);
    let reply = page
        .call(&gw, Method::POST, &format!("{UI}/logout"), json!({}), &[])
        .await;
    assert_eq!(reply.status, 200);
    assert!(reply.headers["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    // The old cookie, replayed, opens nothing: not the page, not the API.
    assert_eq!(session(page.cookie.clone()).await, 401);
    let reply = page
        .call(&gw, Method::GET, &format!("{API}/get"), Value::Null, &[])
        .await;
    assert_eq!(
        (reply.status.as_u16(), reply.reason()),
        (401, "credentials_required".into())
    );

    let idle = log_in(&gw, "alice").await;
    gw.clock.advance_ms(29 * 60_000);
    assert_eq!(session(idle.cookie.clone()).await, 200);
    gw.clock.advance_ms(29 * 60_000);
    assert_eq!(session(idle.cookie.clone()).await, 200, "used 29 minutes ago");
    gw.clock.advance_ms(31 * 60_000);
    assert_eq!(session(idle.cookie.clone()).await, 401, "idle 31 minutes");
    // Sessions live in the store: another gateway over it sees the same.
    let shared = log_in(&gw, "bob").await;
    let other = gw.reopen(|_| {}).await;
    let reply = get(&other.url(&format!("{UI}/session")), &[("cookie", &shared.cookie)]).await;
    assert_eq!(reply.json()["user"], "bob");
}

#[tokio::test]
async fn the_session_cookie_authenticates_nothing_that_is_forwarded_and_never_reaches_confluence() {
    let gw = Gateway::start().await;
    let page = log_in(&gw, "admin").await;
    let cookies = format!("JSESSIONID=theirs; {}", page.cookie);
    let reply = get(&gw.url("/rest/api/space"), &[("cookie", &cookies)]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["as"], Value::Null, "anonymous to Confluence");
    let forwarded = gw.upstream.last();
    assert_eq!(forwarded.header("cookie"), Some("JSESSIONID=theirs"));
    assert_eq!(forwarded.header("x-forwarded-user"), None);
    let secret = page.cookie.split_once('=').unwrap().1;
    assert!(gw.upstream.requests().iter().all(|r| !r.contains(secret)));
    // Nor can Confluence set it.
    let reply = get(&gw.url("/plant-gateway-cookie"), &[]).await;
    let set: Vec<_> = reply.headers.get_all("set-cookie").iter().collect();
    assert_eq!(set, ["JSESSIONID=kept; Path=/"]);
    // A token request carries no cookie at all.
    let token = gw.token_for("alice").await;
    get(
        &gw.url("/rest/api/space"),
        &[("authorization", &basic("alice", &token)), ("cookie", &cookies)],
    )
    .await;
    assert_eq!(gw.upstream.last().header("cookie"), None);
}

#[tokio::test]
async fn logins_are_refused_from_other_sites_and_for_non_admins_without_self_service() {
    let gw = Gateway::start_with(|c| c.self_service = false).await;
    let body = json!({"username": "admin", "password": password_of("admin")}).to_string();
    let headers = [("content-type", "application/json"), ("origin", "https://evil.example")];
    let reply = send(Method::POST, &gw.url(&format!("{UI}/login")), &headers, body).await;
    assert_eq!((reply.status.as_u16(), reply.reason()), (403, "forbidden".into()));
    let reply = login_as(&gw, "alice", password_of("alice")).await;
    assert_eq!(reply.status, 403);
    assert!(reply.headers.get("set-cookie").is_none());
    assert_eq!(login_as(&gw, "admin", password_of("admin")).await.status, 200);
}

#[tokio::test]
async fn check_tries_rules_for_anyone_confluence_accepts() {
    let gw = Gateway::start_with(|c| c.self_service = false).await;
    let check = |auth: String, body: Value| {
        let url = gw.url(&format!("{API}/check"));
        async move {
            let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
            send(Method::POST, &url, &headers, body.to_string()).await
        }
    };
    let alice = basic("alice", password_of("alice"));
    let rules = "[get].*/rest/api/space.*\n[post].*/rest/api/content/?[JsonData::type==page]";
    let reply = check(
        alice.clone(),
        json!({"limitTo": rules, "method": "get", "url": "/rest/api/./space?spaceKey=X"}),
    )
    .await;
    assert_eq!(
        reply.json(),
        json!({"status": "ok", "allowed": true, "line": 1, "explanation": ["line 1: [get].*/rest/api/space.*"]})
    );
    let reply = check(
        alice.clone(),
        json!({"limitTo": rules, "method": "POST", "url": "/rest/api/content", "body": "{\"type\":\"comment\"}"}),
    )
    .await;
    let answer = reply.json();
    assert_eq!((&answer["allowed"], &answer["line"]), (&json!(false), &json!(null)));
    let explanation: Vec<&str> = answer["explanation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(explanation.len(), 2);
    assert!(
        explanation[1].starts_with("line 2:") && explanation[1].contains("comment"),
        "{explanation:?}"
    );
    let reply = check(alice.clone(), json!({"limitTo": rules, "method": "POST", "url": "/rest/api/content", "body": "{\"type\":\"page\",\"type\":\"x\"}"})).await;
    assert!(
        reply.json()["explanation"][0]
            .as_str()
            .unwrap()
            .contains("ambiguous_json")
    );

    let reply = check(
        alice.clone(),
        json!({"limitTo": "[get].*/rest/(api", "method": "GET", "url": "/"}),
    )
    .await;
    assert_eq!(
        (reply.status.as_u16(), &reply.json()["field"]),
        (400, &json!("limitTo"))
    );
    assert_eq!(
        (&reply.json()["line"], reply.json()["column"].as_u64().is_some()),
        (&json!(1), true)
    );
    let reply = check(
        alice.clone(),
        json!({"limitTo": "", "method": "GET", "url": "/rest/%2e%2e/x"}),
    )
    .await;
    assert_eq!(reply.json()["field"], "url");
    let reply = check(alice.clone(), json!({"limitTo": ""})).await;
    assert_eq!(reply.json()["field"], "method");

    // A non-admin's token may check rules, and do nothing else.
    let created = gw
        .create_token(NewToken {
            label: "bot".into(),
            user: Some("alice".into()),
            ..NewToken::default()
        })
        .await;
    let token = basic("alice", &created.value);
    assert_eq!(
        check(token.clone(), json!({"limitTo": "", "method": "GET", "url": "/x"}))
            .await
            .status,
        200
    );
    let reply = get(&gw.url(&format!("{API}/get")), &[("authorization", &token)]).await;
    assert_eq!(reply.status, 403);
    assert_eq!(check("Basic !!!".into(), json!({})).await.status, 400);
    assert_eq!(check(basic("alice", "wrong"), json!({})).await.status, 401);
}
