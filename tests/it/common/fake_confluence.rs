//! A fake Confluence that records exactly what it receives: method, target,
//! headers, body length and SHA-256 (bodies are hashed as they stream, so
//! uploads of any size can be checked), and answers like Confluence would.
//!
//! Like a stock Confluence Data Center, it authenticates Basic passwords of
//! its users ([`USERS`]) and `Bearer` personal access tokens, which it
//! mints and revokes through `/rest/pat/latest/tokens`; an unknown Bearer
//! value is served as anonymous. It stands for a Confluence with a header
//! authenticator: it serves a request with no credentials as the user
//! `X-Forwarded-User` names, unless told to ignore it
//! ([`FakeConfluence::ignores_identity_header`]), as a stock Confluence
//! does. Like Seraph, it names the user it served every answer as in
//! `X-AUSERNAME` (`anonymous` for nobody; percent-encoded outside ASCII).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request as Confluence saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query, as received.
    pub target: String,
    pub headers: HeaderMap,
    pub body_len: u64,
    pub body_sha256: [u8; 32],
    /// The first 64 KiB of the body.
    pub body_head: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every header name and value (Basic credentials decoded too) and the
    /// body head, for "never reaches upstream" checks.
    pub fn contains(&self, needle: &str) -> bool {
        use base64::Engine;
        let decoded = |value: &str| {
            let (scheme, param) = value.trim().split_once(' ')?;
            let bytes = base64::engine::general_purpose::STANDARD.decode(param.trim()).ok()?;
            scheme
                .eq_ignore_ascii_case("basic")
                .then(|| String::from_utf8_lossy(&bytes).into_owned())
        };
        self.target.contains(needle)
            || self.headers.iter().any(|(n, v)| {
                let value = String::from_utf8_lossy(v.as_bytes());
                n.as_str().contains(needle)
                    || value.contains(needle)
                    || decoded(&value).is_some_and(|d| d.contains(needle))
            })
            || String::from_utf8_lossy(&self.body_head).contains(needle)
    }
}

#[derive(Clone)]
pub struct FakeConfluence {
    pub addr: SocketAddr,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    /// Body bytes received so far across all requests (streaming progress).
    pub bytes_received: Arc<AtomicU64>,
    pats: Arc<Mutex<Vec<PersonalAccessToken>>>,
    /// Answer PAT creations with 403, as with personal access tokens disabled.
    pub pats_disabled: Arc<AtomicBool>,
    /// Answer every call of the PAT API with 500.
    pub pat_api_fails: Arc<AtomicBool>,
    /// Ignore `X-Forwarded-User`, as a stock Confluence without a header authenticator does.
    pub ignores_identity_header: Arc<AtomicBool>,
    /// Send no `X-AUSERNAME`, as when a proxy in between strips it.
    pub hides_served_user: Arc<AtomicBool>,
    /// Send these `X-AUSERNAME` values instead of the served user's name.
    pub names_served_user_as: Arc<Mutex<Vec<&'static str>>>,
    /// The content it holds, [`CONTENT`] at the start; see [`FakeConfluence::move_content`].
    content: Arc<Mutex<Vec<ContentItem>>>,
    /// Connections accepted so far, and those still open.
    accepted: Arc<AtomicU64>,
    open: Arc<AtomicU64>,
}

/// A personal access token this Confluence minted.
#[derive(Debug, Clone)]
pub struct PersonalAccessToken {
    pub id: u64,
    pub user: String,
    pub name: String,
    pub expiration_days: Option<i64>,
    pub raw: String,
    pub revoked: bool,
}

/// The admin password `/rest/api/user/current` accepts.
pub const ADMIN_PASSWORD: &str = "admin-password";
/// Users and their passwords; Confluence spells their names this way.
pub const USERS: [(&str, &str); 3] = [
    ("admin", ADMIN_PASSWORD),
    ("alice", "alice-password"),
    ("bob", "bob-password"),
];
/// The content this Confluence holds, answered at `GET
/// /rest/api/content/{id}?expand=space` (how the gateway finds a content
/// id's space): id, space, status, and the one user who may see it (others
/// get 404, as Confluence answers for restricted pages). The user is the
/// one a PAT or password authenticates, else `X-Forwarded-User`: this
/// fixture stands for a Confluence with a header authenticator too.
pub const CONTENT: [(&str, &str, &str, Option<&str>); 12] = [
    ("100", "DOCS", "current", None),
    ("101", "DOCS", "current", None),
    ("102", "docs", "draft", None),
    ("200", "SECRET", "current", None),
    ("300", "PM", "current", None),
    ("att500", "DOCS", "current", None),
    ("att600", "SECRET", "current", None),
    ("400", "DOCS", "trashed", None),
    ("700", "DOCS", "current", Some("admin")),
    // Answers slowly: concurrent requests about it must share one lookup.
    ("800", "DOCS", "current", None),
    ("900", "KB", "current", None),
    ("att901", "KB", "current", None),
];

/// One content item: id, space, status, the one user who may see it.
type ContentItem = (String, String, String, Option<String>);

/// How many personal access tokens one user may have here.
pub const PAT_LIMIT: usize = 8;

impl FakeConfluence {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = FakeConfluence {
            addr: listener.local_addr().unwrap(),
            recorded: Arc::default(),
            bytes_received: Arc::default(),
            pats: Arc::default(),
            pats_disabled: Arc::default(),
            pat_api_fails: Arc::default(),
            ignores_identity_header: Arc::default(),
            hides_served_user: Arc::default(),
            names_served_user_as: Arc::default(),
            content: Arc::new(Mutex::new(
                CONTENT
                    .iter()
                    .map(|(id, space, status, visible)| {
                        (
                            (*id).to_owned(),
                            (*space).to_owned(),
                            (*status).to_owned(),
                            visible.map(str::to_owned),
                        )
                    })
                    .collect(),
            )),
            accepted: Arc::default(),
            open: Arc::default(),
        };
        let server = fake.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let server = server.clone();
                server.accepted.fetch_add(1, Ordering::SeqCst);
                server.open.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let open = server.open.clone();
                    let service = hyper::service::service_fn(move |req| {
                        let server = server.clone();
                        async move { Ok::<_, Infallible>(server.answer(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        fake
    }

    /// Connections the gateway has made to this Confluence.
    pub fn connections_accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections the gateway holds open to this Confluence.
    pub fn connections_open(&self) -> u64 {
        self.open.load(Ordering::SeqCst)
    }

    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.recorded.lock().unwrap().clone()
    }

    pub fn last(&self) -> Recorded {
        self.requests().pop().expect("Confluence received no request")
    }

    pub fn count(&self) -> usize {
        self.recorded.lock().unwrap().len()
    }

    /// Requests received on `path` (without query).
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.target.split('?').next() == Some(path))
            .collect()
    }

    /// Every personal access token minted here, in order.
    pub fn pats(&self) -> Vec<PersonalAccessToken> {
        self.pats.lock().unwrap().clone()
    }

    /// Mints a personal access token for `user` directly (as the user would in Confluence's UI).
    pub fn create_pat(&self, user: &str) -> String {
        self.mint(user, "created in Confluence", None).raw
    }

    /// Revokes a personal access token by its raw value (as in Confluence's UI).
    /// Makes a personal access token act as `user` from now on.
    pub fn reassign_pat(&self, raw: &str, user: &str) {
        for pat in self.pats.lock().unwrap().iter_mut().filter(|p| p.raw == raw) {
            pat.user = user.to_owned();
        }
    }

    /// Makes a revoked personal access token work again (as if it had been
    /// revoked by mistake and the user's access restored).
    pub fn restore_pat(&self, raw: &str) {
        for pat in self.pats.lock().unwrap().iter_mut().filter(|p| p.raw == raw) {
            pat.revoked = false;
        }
    }

    pub fn revoke_pat(&self, raw: &str) {
        for pat in self.pats.lock().unwrap().iter_mut().filter(|p| p.raw == raw) {
            pat.revoked = true;
        }
    }

    fn mint(&self, user: &str, name: &str, expiration_days: Option<i64>) -> PersonalAccessToken {
        use rand::TryRngCore;
        use rand::distr::{Alphanumeric, SampleString};
        let mut pats = self.pats.lock().unwrap();
        let pat = PersonalAccessToken {
            id: 1000 + pats.len() as u64,
            user: user.to_owned(),
            name: name.to_owned(),
            expiration_days,
            raw: format!(
                "NjQ{}",
                Alphanumeric.sample_string(&mut rand::rngs::OsRng.unwrap_err(), 41)
            ),
            revoked: false,
        };
        pats.push(pat.clone());
        pat
    }

    /// Who a request authenticates as, the way Confluence decides it: a
    /// known user's password, or a live personal access token. `Err` for a
    /// wrong password (401); `Ok(None)` for anonymous, which is also what an
    /// unknown Bearer value gets.
    fn authenticate(&self, headers: &HeaderMap) -> Result<Option<String>, ()> {
        use base64::Engine;
        let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
            return Ok(None);
        };
        if let Some(raw) = value.strip_prefix("Bearer ") {
            let pats = self.pats.lock().unwrap();
            return Ok(pats.iter().find(|p| p.raw == raw && !p.revoked).map(|p| p.user.clone()));
        }
        let decoded = value
            .strip_prefix("Basic ")
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or(())?;
        let (user, password) = decoded.split_once(':').ok_or(())?;
        USERS
            .iter()
            .find(|(name, pass)| *name == user && *pass == password)
            .map(|(name, _)| Some((*name).to_owned()))
            .ok_or(())
    }

    /// Confluence's personal access token API.
    fn pat_api(&self, method: &hyper::Method, path: &str, headers: &HeaderMap, body: &[u8]) -> Response<Full<Bytes>> {
        if self.pat_api_fails.load(Ordering::SeqCst) {
            return json(StatusCode::INTERNAL_SERVER_ERROR, r#"{"message":"database down"}"#);
        }
        let Ok(Some(user)) = self.authenticate(headers) else {
            return json(StatusCode::UNAUTHORIZED, r#"{"message":"Unauthorized"}"#);
        };
        if *method == hyper::Method::POST && path == "/rest/pat/latest/tokens" {
            if self.pats_disabled.load(Ordering::SeqCst) {
                return json(
                    StatusCode::FORBIDDEN,
                    r#"{"message":"Personal access tokens are disabled"}"#,
                );
            }
            let live = self.pats().iter().filter(|p| p.user == user && !p.revoked).count();
            if live >= PAT_LIMIT {
                return json(
                    StatusCode::BAD_REQUEST,
                    r#"{"errors":[{"message":"You have reached the maximum number of personal access tokens"}]}"#,
                );
            }
            let request: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            let name = request["name"].as_str().unwrap_or_default();
            let pat = self.mint(&user, name, request["expirationDuration"].as_i64());
            let answer = serde_json::json!({"id": pat.id, "name": pat.name, "createdAt": "2026-11-28T00:00:00.000+0000",
                "expiringAt": "2027-11-28T00:00:00.000+0000", "rawToken": pat.raw});
            return json(StatusCode::CREATED, &answer.to_string());
        }
        let id = path
            .strip_prefix("/rest/pat/latest/tokens/")
            .and_then(|id| id.parse::<u64>().ok());
        if let (true, Some(id)) = (*method == hyper::Method::DELETE, id) {
            let mut pats = self.pats.lock().unwrap();
            return match pats.iter_mut().find(|p| p.id == id && p.user == user) {
                Some(pat) => {
                    pat.revoked = true;
                    json(StatusCode::NO_CONTENT, "")
                }
                None => json(StatusCode::NOT_FOUND, r#"{"message":"No such token"}"#),
            };
        }
        json(StatusCode::NOT_FOUND, r#"{"message":"Not found"}"#)
    }

    /// Whom a request is served as: the user its password or PAT
    /// authenticates, else the user `X-Forwarded-User` names (unless told
    /// to ignore it), else nobody.
    fn served_user(&self, headers: &HeaderMap) -> Option<String> {
        match self.authenticate(headers) {
            Ok(Some(user)) => Some(user),
            Err(()) => None,
            Ok(None) if self.ignores_identity_header.load(Ordering::SeqCst) => None,
            Ok(None) => headers
                .get("x-forwarded-user")
                .and_then(|v| String::from_utf8(v.as_bytes().to_vec()).ok()),
        }
    }

    /// Answers like Confluence, naming the served user as Seraph does.
    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let served = self.served_user(req.headers());
        let mut response = self.answer_as(req, served.as_deref()).await;
        let forced = self.names_served_user_as.lock().unwrap().clone();
        if !forced.is_empty() {
            for name in forced {
                response
                    .headers_mut()
                    .append("x-ausername", HeaderValue::from_static(name));
            }
        } else if !self.hides_served_user.load(Ordering::SeqCst) {
            // URL-encoded as Java's URLEncoder writes it.
            let name = served.as_deref().unwrap_or("anonymous");
            let name: String = form_urlencoded::byte_serialize(name.as_bytes()).collect();
            response
                .headers_mut()
                .insert("x-ausername", HeaderValue::from_str(&name).unwrap());
        }
        response
    }

    async fn answer_as(&self, mut req: Request<Incoming>, served: Option<&str>) -> Response<Full<Bytes>> {
        let on_upgrade = hyper::upgrade::on(&mut req);
        let (parts, mut body) = req.into_parts();
        let mut hasher = Sha256::new();
        let mut body_len = 0u64;
        let mut body_head = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if let Ok(data) = frame.into_data() {
                hasher.update(&data);
                body_len += data.len() as u64;
                self.bytes_received.fetch_add(data.len() as u64, Ordering::SeqCst);
                let room = (64usize << 10).saturating_sub(body_head.len());
                body_head.extend_from_slice(&data[..room.min(data.len())]);
            }
        }
        let target = parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default();
        self.recorded.lock().unwrap().push(Recorded {
            method: parts.method.to_string(),
            target: target.clone(),
            headers: parts.headers.clone(),
            body_len,
            body_sha256: hasher.finalize().into(),
            body_head: body_head.clone(),
        });
        let path = parts.uri.path();
        if parts.headers.contains_key("upgrade") {
            return echo_upgrade(on_upgrade);
        }
        if path.starts_with("/rest/pat/") {
            return self.pat_api(&parts.method, path, &parts.headers, &body_head);
        }
        if let Some(answer) = self.content(&parts, path, served).await {
            return answer;
        }
        match path {
            "/rest/api/user/current" => match self.authenticate(&parts.headers) {
                Ok(Some(user)) => json(
                    StatusCode::OK,
                    &serde_json::json!({"type": "known", "username": user, "userKey": format!("key-{user}")})
                        .to_string(),
                ),
                Ok(None) => json(StatusCode::OK, r#"{"type":"anonymous","displayName":"Anonymous"}"#),
                Err(()) => json(
                    StatusCode::UNAUTHORIZED,
                    r#"{"statusCode":401,"message":"Unauthorized"}"#,
                ),
            },
            "/delay" => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                json(StatusCode::OK, r#"{"delayed":true}"#)
            }
            "/slow" => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                json(StatusCode::OK, "{}")
            }
            "/redirect" => {
                let mut response = json(StatusCode::FOUND, "{}");
                let location = format!("{}/login.action?next=%2Fx", self.origin());
                response
                    .headers_mut()
                    .insert("location", HeaderValue::from_str(&location).unwrap());
                response
            }
            "/rest/api/session" => {
                // A header authenticator that puts the user in a session.
                let mut response = json(StatusCode::OK, "{}");
                for cookie in [
                    "JSESSIONID=upstream-session; Path=/; HttpOnly",
                    "seraph.confluence=remember-me",
                ] {
                    response
                        .headers_mut()
                        .append("set-cookie", HeaderValue::from_static(cookie));
                }
                response
            }
            "/plant-gateway-cookie" => {
                let mut response = json(StatusCode::OK, "{}");
                response.headers_mut().append(
                    "set-cookie",
                    HeaderValue::from_static("tokengate_session=planted-by-confluence; Path=/"),
                );
                response
                    .headers_mut()
                    .append("set-cookie", HeaderValue::from_static("JSESSIONID=kept; Path=/"));
                response
            }
            "/rest/api/rate-limited-by-confluence" => {
                // Confluence Data Center's own rate limiting answers with these.
                let mut response = json(StatusCode::OK, "{}");
                for (name, value) in [
                    ("x-ratelimit-limit", "100"),
                    ("x-ratelimit-remaining", "99"),
                    ("x-ratelimit-interval-seconds", "1"),
                    ("x-ratelimit-fillrate", "10"),
                ] {
                    response.headers_mut().insert(name, HeaderValue::from_static(value));
                }
                response
            }
            "/confluence-401" => json(
                StatusCode::UNAUTHORIZED,
                r#"{"statusCode":401,"message":"from confluence"}"#,
            ),
            _ => {
                let answer = serde_json::json!({"ok": true, "path": path, "as": served});
                let mut response = json(StatusCode::OK, &answer.to_string());
                response
                    .headers_mut()
                    .insert("x-upstream", HeaderValue::from_static("fake-confluence"));
                response
            }
        }
    }
}

impl FakeConfluence {
    /// `GET /rest/api/content/{id}?expand=space...` from [`CONTENT`]: 404
    /// for an unknown id or one the asking user may not see, 500 for `999`.
    async fn content(
        &self,
        parts: &hyper::http::request::Parts,
        path: &str,
        user: Option<&str>,
    ) -> Option<Response<Full<Bytes>>> {
        let id = path.strip_prefix("/rest/api/content/")?;
        let expands_space = parts.uri.query().is_some_and(|q| {
            form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "expand" && v.split(',').any(|e| e == "space"))
        });
        let digits = id.strip_prefix("att").unwrap_or(id);
        let is_id = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
        if parts.method != hyper::Method::GET || !is_id || !expands_space {
            return None;
        }
        if id == "999" {
            return Some(json(
                StatusCode::INTERNAL_SERVER_ERROR,
                r#"{"message":"database down"}"#,
            ));
        }
        if id == "800" {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // Confluence reads `att123`, `0123` and `123` as the same content.
        let number = |id: &str| id.strip_prefix("att").unwrap_or(id).parse::<u64>().ok();
        let found = self
            .content
            .lock()
            .unwrap()
            .iter()
            .find(|(known, _, _, visible_to)| {
                number(known) == number(id) && visible_to.as_deref().is_none_or(|only| user == Some(only))
            })
            .cloned();
        Some(match found {
            None => json(
                StatusCode::NOT_FOUND,
                &format!(r#"{{"statusCode":404,"message":"No content found with id: ContentId{{id={id}}}"}}"#),
            ),
            Some((id, space, status, _)) => json(
                StatusCode::OK,
                &serde_json::json!({"id": id, "type": "page", "status": status, "title": format!("Page {id}"),
                    "space": {"id": 1, "key": space, "name": format!("Space {space}")}})
                .to_string(),
            ),
        })
    }

    /// Moves content `id` to `space`, as someone would in Confluence.
    pub fn move_content(&self, id: &str, space: &str) {
        for item in self.content.lock().unwrap().iter_mut().filter(|item| item.0 == id) {
            item.1 = space.to_owned();
        }
    }

    /// The lookups the gateway made of content `id`'s space.
    pub fn lookups_of(&self, id: &str) -> usize {
        let prefix = format!("/rest/api/content/{id}?expand=space");
        self.requests().iter().filter(|r| r.target.starts_with(&prefix)).count()
    }
}

/// Accepts a WebSocket-style upgrade and echoes bytes back.
fn echo_upgrade(on_upgrade: hyper::upgrade::OnUpgrade) -> Response<Full<Bytes>> {
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 1024];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn json(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}
