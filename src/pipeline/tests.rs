//! The pipeline's stages driven without sockets, through [`decide`].

use super::*;
use crate::app::test_app;
use crate::auth::{Door, RequestContext};
use crate::tokens::{Actor, NewToken};
use base64::Engine;
use http_body_util::BodyExt;
use hyper::Method;

fn basic(user: &str, secret: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"));
    format!("Basic {encoded}")
}

fn conn(app: &App) -> Connection {
    Connection::new(ConnInfo::new("10.0.0.9:40000".parse().unwrap(), false), app)
}

async fn token(app: &App, limit_to: &str) -> String {
    let new = NewToken {
        label: "ci-bot".into(),
        user: Some("alice".into()),
        limit_to: Some(limit_to.into()),
        ..NewToken::default()
    };
    app.tokens.create(new, &Actor::cli()).await.unwrap().value
}

fn request(method: Method, target: &str, headers: &[(&str, &str)], body: &'static str) -> Request<Full<Bytes>> {
    let mut builder = Request::builder()
        .method(method)
        .uri(target)
        .header("host", "wiki.example.com");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(Bytes::from_static(body.as_bytes()))).unwrap()
}

async fn decided(app: &App, req: Request<Full<Bytes>>) -> Result<Next<Full<Bytes>>, GatewayError> {
    let mut trail = Trail::new(tracing::Span::none(), true);
    decide(app, &conn(app), req, &mut trail).await
}

async fn refusal(app: &App, req: Request<Full<Bytes>>) -> &'static str {
    match decided(app, req).await {
        Err(error) => error.reason.code(),
        Ok(_) => panic!("the request was let through"),
    }
}

#[tokio::test]
async fn a_token_request_is_forwarded_as_its_user_on_the_canonical_path() {
    let (app, _, _dir) = test_app(|_| {}).await;
    let secret = token(&app, "").await;
    let auth = basic("Alice", &secret);
    let req = request(
        Method::GET,
        "/rest/api/./space/../space?x=%2F",
        &[("authorization", &auth)],
        "",
    );
    let Ok(Next::Forward { req, target, identity }) = decided(&app, req).await else {
        panic!("not forwarded");
    };
    assert_eq!(identity, Identity::User("alice".into()));
    assert_eq!(target.forwarded().unwrap(), "/rest/api/space?x=%2F");
    assert!(matches!(req.body(), Either::Left(_)), "the body streams on");
}

#[tokio::test]
async fn other_credentials_and_anonymous_requests_pass_through() {
    let (app, _, _dir) = test_app(|_| {}).await;
    let password = basic("alice", "password");
    for headers in [&[("authorization", password.as_str())][..], &[]] {
        let Ok(Next::Forward { identity, .. }) = decided(&app, request(Method::GET, "/x", headers, "")).await else {
            panic!("not forwarded");
        };
        assert_eq!(identity, Identity::Passthrough);
    }
    let (strict, _, _dir) = test_app(|c| {
        c.allow_anonymous = false;
        c.passthrough = false;
    })
    .await;
    assert_eq!(
        refusal(&strict, request(Method::GET, "/x", &[], "")).await,
        "credentials_required"
    );
    let req = request(Method::GET, "/x", &[("authorization", &password)], "");
    assert_eq!(refusal(&strict, req).await, "invalid_token");
}

#[tokio::test]
async fn malformed_and_hostile_requests_are_refused_before_anything_is_forwarded() {
    let (app, _, _dir) = test_app(|_| {}).await;
    let secret = token(&app, "").await;
    let unknown = basic("alice", "tgw_unknownunknownunknownunknownunknown");
    let good = basic("alice", &secret);
    let cases: Vec<(Request<Full<Bytes>>, &str)> = vec![
        (
            request(Method::GET, "/rest/api/space", &[("authorization", &unknown)], ""),
            "invalid_token",
        ),
        (request(Method::GET, "/rest/%2e%2e/admin", &[], ""), "bad_path"),
        (
            request(Method::GET, "/rest/api/space", &[("authorization", "Basic !!!")], ""),
            "bad_credentials",
        ),
        (
            request(Method::GET, "/rest/api/space", &[("host", "evil.example")], ""),
            "bad_request",
        ),
        (
            request(Method::GET, "/rest/api/space", &[("x-api-key", &secret)], ""),
            "bad_credentials",
        ),
        (
            request(
                Method::GET,
                "/rest/api/space",
                &[("cookie", &format!("t={secret}"))],
                "",
            ),
            "bad_credentials",
        ),
        (
            request(
                Method::GET,
                &format!("/login.action?os_username=alice&os_password={secret}"),
                &[],
                "",
            ),
            "bad_credentials",
        ),
        (
            request(Method::GET, "/rest/api/space;x=1", &[("authorization", &good)], ""),
            "bad_path",
        ),
        (
            request(Method::GET, "/admin", &[("authorization", &good)], ""),
            "out_of_scope",
        ),
    ];
    for (req, reason) in cases {
        let what = format!("{} {:?}", req.uri(), req.headers().keys().collect::<Vec<_>>());
        assert_eq!(refusal(&app, req).await, reason, "{what}");
    }
}

#[tokio::test]
async fn a_json_rule_reads_the_body_and_forwards_it_byte_for_byte() {
    let (app, _, _dir) = test_app(|_| {}).await;
    let secret = token(&app, "[post].*/rest/api/content/?[JsonData::type==page]").await;
    let auth = basic("alice", &secret);
    let json = ("content-type", "application/json");
    let body = r#"{"type":"page", "title":"x"}"#;
    let req = request(
        Method::POST,
        "/rest/api/content",
        &[("authorization", &auth), json],
        body,
    );
    let Ok(Next::Forward { req, .. }) = decided(&app, req).await else {
        panic!("not forwarded");
    };
    assert!(matches!(req.body(), Either::Right(_)), "buffered");
    assert_eq!(req.into_body().collect().await.unwrap().to_bytes(), body);
    let comment = request(
        Method::POST,
        "/rest/api/content",
        &[("authorization", &auth), json],
        r#"{"type":"comment"}"#,
    );
    assert_eq!(refusal(&app, comment).await, "rule_mismatch");
    let twice = request(
        Method::POST,
        "/rest/api/content",
        &[("authorization", &auth), json],
        r#"{"type":"page","type":"comment"}"#,
    );
    assert_eq!(refusal(&app, twice).await, "ambiguous_json");
    // Compressed bytes are never read as JSON text, whatever they hold.
    let gzip = request(
        Method::POST,
        "/rest/api/content",
        &[("authorization", &auth), json, ("content-encoding", "gzip")],
        body,
    );
    assert_eq!(refusal(&app, gzip).await, "rule_mismatch");
}

#[tokio::test]
async fn own_routes_are_answered_by_the_gateway() {
    let (app, _, _dir) = test_app(|_| {}).await;
    let Ok(Next::Answer(response)) = decided(&app, request(Method::GET, "/tokengate/healthz", &[], "")).await else {
        panic!("not answered");
    };
    assert_eq!(response.status(), 200);
    let wrong = refusal(&app, request(Method::POST, "/tokengate/healthz", &[], "")).await;
    assert_eq!(wrong, "method_not_allowed");
}

#[tokio::test]
async fn a_refused_token_is_named_in_the_trail() {
    let (app, clock, _dir) = test_app(|_| {}).await;
    let secret = token(&app, "").await;
    clock.advance_ms(1);
    let mut trail = Trail::new(tracing::Span::none(), true);
    let req = request(
        Method::GET,
        "/rest/api/space",
        &[("authorization", &basic("bob", &secret))],
        "",
    );
    let error = decide(&app, &conn(&app), req, &mut trail).await.err().unwrap();
    assert_eq!(error.reason, Reason::UserMismatch);
    assert!(trail.token_presented);
    assert_eq!(trail.token.as_ref().map(|t| t.label.as_str()), Some("ci-bot"));
    assert_eq!(trail.user.as_deref(), Some("bob"), "who it claimed to be");
}

/// What `decide` builds for a request: its context, as own routes read it.
fn context<'a>(conn: &'a Connection, req: &Request<Full<Bytes>>) -> RequestContext<'a> {
    let target = target::canonicalise(req.uri()).unwrap();
    RequestContext::new(target, conn.info.peer.ip(), &conn.info, req.headers()).reading_session(req.headers())
}

async fn at_door(app: &App, door: Door, req: Request<Full<Bytes>>) -> Result<Option<String>, GatewayError> {
    let conn = conn(app);
    let cx = context(&conn, &req);
    match app.auth.authenticate(&cx, req, door).await {
        Ok(authenticated) => Ok(authenticated
            .principal
            .map(|p| format!("{} via {}", p.user, p.via.name()))),
        Err(refused) => Err(refused.error),
    }
}

#[tokio::test]
async fn each_door_accepts_only_what_it_should() {
    let (app, _, _dir) = test_app(|_| {}).await;
    let secret = token(&app, "").await;
    let reporting = NewToken {
        label: "reporting".into(),
        user: Some("alice".into()),
        limit_to: Some("[get].*/rest/api/space".into()),
        enforce: Some(false),
        ..NewToken::default()
    };
    let reporting = app.tokens.create(reporting, &Actor::cli()).await.unwrap().value;
    let get = |target: &str, headers: &[(&str, &str)]| request(Method::GET, target, headers, "");
    let management = Door::Management(crate::auth::RuleCheck::Apply);
    let token = basic("alice", &secret);

    // A token is accepted at the proxy and the management API alike.
    for door in [Door::Proxy, management] {
        let who = at_door(&app, door, get("/rest/api/space", &[("authorization", &token)])).await;
        let who = who.unwrap();
        assert_eq!(who.as_deref(), Some("alice via token"), "{door:?}");
    }
    // Report-only waives rules on forwarded requests only (SPEC §16).
    let report = basic("alice", &reporting);
    let forwarded = at_door(
        &app,
        Door::Proxy,
        get("/rest/api/content", &[("authorization", &report)]),
    )
    .await;
    assert_eq!(forwarded.unwrap().as_deref(), Some("alice via token"));
    let managed = at_door(
        &app,
        management,
        get("/rest/api/content", &[("authorization", &report)]),
    )
    .await;
    assert_eq!(managed.unwrap_err().reason, Reason::RuleMismatch);

    // Anything else passes the proxy door as it was sent, and no other.
    let negotiate = [("authorization", "Negotiate abc")];
    assert_eq!(at_door(&app, Door::Proxy, get("/x", &negotiate)).await.unwrap(), None);
    assert_eq!(at_door(&app, Door::Proxy, get("/x", &[])).await.unwrap(), None);
    let refused = at_door(&app, management, get("/x", &negotiate)).await.unwrap_err();
    assert_eq!(refused.reason, Reason::InvalidToken);
    let refused = at_door(&app, management, get("/x", &[])).await.unwrap_err();
    assert_eq!(refused.reason, Reason::CredentialsRequired);
    assert!(
        refused.message.contains("a token bound to an admin"),
        "{}",
        refused.message
    );

    // Only the proxy door looks for tokens outside Authorization.
    let elsewhere = [("x-api-key", secret.as_str())];
    let refused = at_door(&app, Door::Proxy, get("/x", &elsewhere)).await.unwrap_err();
    assert_eq!(refused.reason, Reason::BadCredentials);

    // The login takes a password only: a token typed there never reaches Confluence.
    let refused = at_door(&app, Door::Login, get("/x", &[("authorization", &token)]))
        .await
        .unwrap_err();
    assert_eq!(refused.reason, Reason::InvalidToken);
    assert!(refused.message.contains("gateway token"), "{}", refused.message);

    // The session door takes a session only.
    let refused = at_door(
        &app,
        Door::Session { changes_state: false },
        get("/x", &[("authorization", &token)]),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.reason, Reason::CredentialsRequired);
    let ended = [("cookie", "tokengate_session=unknown")];
    let refused = at_door(&app, management, get("/x", &ended)).await.unwrap_err();
    assert!(refused.message.contains("session has ended"), "{}", refused.message);
}

#[tokio::test]
async fn a_session_is_accepted_at_the_page_and_the_management_api_with_its_csrf_token_for_changes() {
    let (app, _, _dir) = test_app(|_| {}).await;
    let session = app.auth.sessions().start("admin").await.unwrap();
    let cookie = format!("tokengate_session={}", session.id);
    let management = Door::Management(crate::auth::RuleCheck::Apply);
    let read = request(Method::GET, "/x", &[("cookie", &cookie)], "");
    assert_eq!(
        at_door(&app, management, read).await.unwrap().as_deref(),
        Some("admin via session")
    );
    let change = request(Method::POST, "/x", &[("cookie", &cookie)], "");
    assert_eq!(
        at_door(&app, management, change).await.unwrap_err().reason,
        Reason::Forbidden
    );
    let csrf = [("cookie", cookie.as_str()), ("x-tokengate-csrf", session.csrf.as_str())];
    let change = request(Method::POST, "/x", &csrf, "");
    assert!(at_door(&app, management, change).await.is_ok());
    let door = Door::Session { changes_state: true };
    let without = request(Method::POST, "/x", &[("cookie", &cookie)], "");
    assert_eq!(
        at_door(&app, door, without).await.unwrap_err().reason,
        Reason::Forbidden
    );
}

#[tokio::test]
async fn a_token_request_refused_as_malformed_is_not_audited_one_by_one() {
    // Its 400 never throttles the client: audited, a flood of them would
    // fill the store (SPEC §12). A 401 is audited, and throttled.
    let (app, _, _dir) = test_app(|_| {}).await;
    let secret = token(&app, "").await;
    let auth = basic("alice", &secret);
    let cookie = format!("t={secret}");
    let query = format!("/rest/api/space?os_password={secret}");
    let malformed = [
        request(
            Method::GET,
            "/rest/api/space",
            &[("authorization", &auth), ("cookie", &cookie)],
            "",
        ),
        request(Method::GET, &query, &[("authorization", &auth)], ""),
    ];
    for req in malformed {
        let mut trail = Trail::new(tracing::Span::none(), true);
        let error = decide(&app, &conn(&app), req, &mut trail).await.err().unwrap();
        assert_eq!(error.reason, Reason::BadCredentials);
        assert!(!trail.token_presented, "{}", error.message);
    }
    let unknown = basic("alice", "tgw_unknownunknownunknownunknownunknown");
    let mut trail = Trail::new(tracing::Span::none(), true);
    let req = request(Method::GET, "/rest/api/space", &[("authorization", &unknown)], "");
    let error = decide(&app, &conn(&app), req, &mut trail).await.err().unwrap();
    assert_eq!(error.reason, Reason::InvalidToken);
    assert!(trail.token_presented);
}
