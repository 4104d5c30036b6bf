//! Confluence's REST API, as the gateway calls it on its own behalf (the
//! forwarding of clients' requests is [`crate::proxy`]'s): whom a
//! credential authenticates (`/rest/api/user/current`), personal access
//! tokens minted and revoked (`/rest/pat/latest/tokens`, SPEC §13), and a
//! `GET` as a token's user (a content id's space, SPEC §17). Each call goes
//! over the upstream pool and is read whole, bounded; a 5xx, no answer or
//! no answer in time is `Err`, never a verdict.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::header::{HOST, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::{Method, Request, StatusCode, Uri};
use zeroize::Zeroizing;

use crate::error::{GatewayError, Reason};
use crate::proxy::{ConnInfo, Identity, UpstreamClient};

/// A personal access token Confluence created for a user (SPEC §13).
pub struct MintedPat {
    /// Confluence's id for it, to revoke it by.
    pub id: String,
    /// Its value, zeroed when dropped.
    pub raw: Zeroizing<String>,
}

/// Why Confluence did not create a personal access token.
#[derive(Debug)]
pub enum MintError {
    /// Confluence answered, and refused (PATs disabled, the user's limit
    /// reached, ...): its own message.
    Refused(String),
    /// Confluence could not be asked (502, 504).
    Unavailable(GatewayError),
}

/// The gateway's calls to Confluence.
pub struct Confluence {
    upstream: Arc<UpstreamClient>,
}

impl Confluence {
    pub fn new(upstream: Arc<UpstreamClient>) -> Self {
        Confluence { upstream }
    }

    /// The user Confluence says `authorization` authenticates, from
    /// `GET /rest/api/user/current` sent with exactly that header and nothing
    /// the gateway would add (no identity, no upstream secret).
    ///
    /// `Ok(None)` when Confluence does not accept them: a status other than
    /// 200 and 5xx, or a 200 without a `username` (an anonymous user, which
    /// is how Confluence answers an unknown Bearer value). Unreachable,
    /// timed out or failing with a 5xx is `Err` (502, 504), so that a caller
    /// never takes an outage for a verdict.
    pub async fn current_user(&self, authorization: &HeaderValue) -> Result<Option<String>, GatewayError> {
        let (status, body) = self
            .ask(
                Method::GET,
                PathAndQuery::from_static("/rest/api/user/current"),
                authorization,
                None,
            )
            .await?;
        if status != StatusCode::OK {
            return Ok(None);
        }
        Ok(json_field(&body, "username").and_then(|user| user.as_str().map(str::to_owned)))
    }

    /// Asks Confluence to create a personal access token for the user whose
    /// Basic `authorization` this is (`POST /rest/pat/latest/tokens`).
    pub async fn mint_pat(
        &self,
        authorization: &HeaderValue,
        name: &str,
        expiration_days: i64,
    ) -> Result<MintedPat, MintError> {
        let body = serde_json::json!({"name": name, "expirationDuration": expiration_days});
        let (status, answer) = self
            .ask(
                Method::POST,
                PathAndQuery::from_static(PAT_TOKENS),
                authorization,
                Some(body),
            )
            .await
            .map_err(MintError::Unavailable)?;
        if !status.is_success() {
            return Err(MintError::Refused(confluence_message(status, &answer)));
        }
        let id = json_field(&answer, "id").and_then(|id| match id {
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::String(s) => Some(s),
            _ => None,
        });
        let raw = json_field(&answer, "rawToken").and_then(|raw| raw.as_str().map(str::to_owned));
        match (id, raw) {
            (Some(id), Some(raw)) if !raw.is_empty() => Ok(MintedPat {
                id,
                raw: Zeroizing::new(raw),
            }),
            _ => {
                tracing::warn!(
                    http.status = status.as_u16(),
                    "Confluence's answer to a PAT creation has no id or rawToken"
                );
                Err(MintError::Unavailable(GatewayError::new(
                    Reason::UpstreamUnavailable,
                    "Confluence's answer to the personal access token creation could not be read",
                )))
            }
        }
    }

    /// Asks Confluence to revoke the personal access token `id`, with the
    /// owner's Basic `authorization`. Whether Confluence confirmed it.
    pub async fn revoke_pat(&self, authorization: &HeaderValue, id: &str) -> bool {
        let path = form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>();
        let Ok(path) = PathAndQuery::try_from(format!("{PAT_TOKENS}/{path}")) else {
            return false;
        };
        match self.ask(Method::DELETE, path, authorization, None).await {
            Ok((status, _)) if status.is_success() => true,
            Ok((status, answer)) => {
                let message = confluence_message(status, &answer);
                tracing::warn!(upstream_token.id = %id, %message, "Confluence did not revoke the personal access token");
                false
            }
            Err(e) => {
                tracing::warn!(upstream_token.id = %id, error = %e.message, "cannot revoke the personal access token");
                false
            }
        }
    }

    /// One call the gateway makes to Confluence on its own behalf, with the
    /// caller's `authorization` and nothing the gateway would add to a
    /// forwarded request. A 5xx, no answer or no answer in time is `Err`.
    async fn ask(
        &self,
        method: Method,
        path: PathAndQuery,
        authorization: &HeaderValue,
        json: Option<serde_json::Value>,
    ) -> Result<(StatusCode, Bytes), GatewayError> {
        let mut req = Request::builder()
            .method(method)
            .uri(Uri::from(path))
            .header(HOST, self.upstream.host().clone())
            .header(hyper::header::AUTHORIZATION, authorization.clone())
            .header(hyper::header::ACCEPT, "application/json");
        let body = match json {
            Some(json) => {
                req = req
                    .header(hyper::header::CONTENT_TYPE, "application/json")
                    // Confluence's XSRF check for REST calls that change state.
                    .header("x-atlassian-token", "no-check");
                Bytes::from(json.to_string())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Either::Right(Full::new(body)))
            .map_err(|e| GatewayError::internal(&e))?;
        let answer = self.upstream.exchange(req).await?;
        Ok((answer.status, answer.body))
    }

    /// A `GET` of `path` as a forwarded request with `identity` would be
    /// sent (the identity header or the user's PAT, the upstream secret,
    /// `X-Forwarded-*`), with the client's `host`: how the gateway asks
    /// Confluence what the token's user (`user`) may see. A 5xx, no answer
    /// or no answer in time is `Err`; so is an answer Confluence says it
    /// served as anyone but `user` (SPEC §19), whose word would be another's.
    pub async fn get_as(
        &self,
        path: PathAndQuery,
        identity: &Identity,
        user: &str,
        conn: &ConnInfo,
        host: Option<&HeaderValue>,
    ) -> Result<(StatusCode, Bytes), GatewayError> {
        let mut req = Request::builder()
            .method(Method::GET)
            .header(hyper::header::ACCEPT, "application/json");
        if let Some(host) = host {
            req = req.header(HOST, host.clone());
        }
        let mut req = req
            .body(Either::Right(Full::new(Bytes::new())))
            .map_err(|e| GatewayError::internal(&e))?;
        self.upstream.rewrite_request(&mut req, path, identity.clone(), conn)?;
        let answer = self.upstream.exchange(req).await?;
        if let Some(served) = served_as_other(&answer.served_as, user) {
            let (reason, why) = match identity {
                Identity::Pat(_) => (
                    Reason::UpstreamCredentialRejected,
                    "Confluence no longer accepts the token's personal access token",
                ),
                _ => (
                    Reason::UpstreamIdentityIgnored,
                    "Confluence does not honour the identity header",
                ),
            };
            return Err(GatewayError::new(
                reason,
                format!("Confluence answered a lookup as {served}, not as {user}: {why}"),
            ));
        }
        Ok((answer.status, answer.body))
    }
}

/// Whom `X-AUSERNAME` names when any of its values (`served`) names
/// anyone but `user` (SPEC §19), as text fit for a message (cut to 256
/// bytes); `None` when each names `user`, or there is none. Were there two
/// values, either could be the truth: each must name the user.
pub fn served_as_other(served: &[HeaderValue], user: &str) -> Option<String> {
    let other = served.iter().find(|served| !names(served, user))?;
    let other = String::from_utf8_lossy(other.as_bytes());
    Some(crate::record::bounded(&other, crate::record::MAX_USER_BYTES).into_owned())
}

/// Whether `served` names `user`, ASCII case ignored. A value with `%` or
/// `+` in it is URL-encoded (as Java's `URLEncoder` writes a name outside
/// `[A-Za-z0-9.*_-]`) and compared decoded only, so that no name can stand
/// for another spelt differently; any other value is compared as sent.
/// Bytes that are not UTF-8 name nobody.
fn names(served: &HeaderValue, user: &str) -> bool {
    let served = served.as_bytes();
    if !served.iter().any(|b| matches!(b, b'%' | b'+')) {
        return served.eq_ignore_ascii_case(user.as_bytes());
    }
    let mut pair = Vec::with_capacity(served.len() + 2);
    pair.extend_from_slice(b"n=");
    pair.extend_from_slice(served);
    form_urlencoded::parse(&pair)
        .next()
        .is_some_and(|(_, decoded)| decoded.eq_ignore_ascii_case(user))
}

/// Confluence's personal access token API.
const PAT_TOKENS: &str = "/rest/pat/latest/tokens";

/// A field of a JSON object answer, if it is one.
fn json_field(body: &[u8], name: &str) -> Option<serde_json::Value> {
    let mut json: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(json.get_mut(name)?.take())
}

/// What Confluence said when it refused: the `message` of its error body
/// (or of its first error), else the status.
fn confluence_message(status: StatusCode, body: &[u8]) -> String {
    let message = json_field(body, "message")
        .and_then(|m| m.as_str().map(str::to_owned))
        .or_else(|| {
            let errors = json_field(body, "errors")?;
            let first = errors.as_array()?.first()?;
            Some(first.get("message")?.as_str()?.to_owned())
        })
        .filter(|m| !m.trim().is_empty());
    let status = status.as_u16();
    match message {
        Some(message) => format!(
            "Confluence answered {status}: {}",
            message.chars().take(300).collect::<String>()
        ),
        None => format!("Confluence answered {status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_served_user_is_matched_by_name_in_any_ascii_case_or_url_encoded() {
        let names = |served: &'static str, user: &str| names(&HeaderValue::from_static(served), user);
        assert!(names("alice", "alice"));
        assert!(names("Alice", "aLICE"));
        assert!(names("alice@example.com", "alice@example.com"));
        assert!(names("alice%40example.com", "alice@example.com"));
        assert!(names("j%2Bci%40corp", "j+ci@corp"));
        assert!(names("j%C3%BCrgen", "jürgen"));
        assert!(names("J%C3%BCRGEN", "jürgen"));
        assert!(names("Jean+Dupont", "jean dupont"));
        assert!(!names("anonymous", "alice"));
        assert!(!names("alice2", "alice"));
        assert!(!names("", "alice"));
        // An encoded value is read decoded only: it cannot stand for the
        // name spelt as it is sent.
        assert!(!names("a%40b", "a%40b"));
        assert!(names("a%2540b", "a%40b"));
        assert!(!names("j+ci", "j+ci"));
        assert!(!super::names(&HeaderValue::from_bytes(b"\xff").unwrap(), "\u{ff}"));
    }

    #[test]
    fn confluences_refusals_are_quoted_from_either_error_shape() {
        let message = |body: &str| confluence_message(StatusCode::BAD_REQUEST, body.as_bytes());
        assert_eq!(
            message(r#"{"message":"PATs are disabled"}"#),
            "Confluence answered 400: PATs are disabled"
        );
        assert_eq!(
            message(r#"{"errors":[{"message":"limit reached"},{"message":"other"}]}"#),
            "Confluence answered 400: limit reached"
        );
        assert_eq!(message("<html>oops</html>"), "Confluence answered 400");
        assert_eq!(message(r#"{"message":"  "}"#), "Confluence answered 400");
        assert!(message(&format!(r#"{{"message":"{}"}}"#, "x".repeat(1000))).len() < 350);
    }
}
