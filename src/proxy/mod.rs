//! Forwarding to Confluence (SPEC §2.8): the upstream connections
//! ([`pool`]), the request rewrite (identity, `X-Forwarded-*`, `Host`; no
//! session for a token request), streaming bodies, WebSocket upgrades (the
//! only protocol switch passed on), `Location` rewriting, and 502/504 on
//! failure.

pub mod headers;
pub mod pool;
pub mod tunnel;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::header::{HOST, HeaderName, HeaderValue, LOCATION};
use hyper::http::uri::PathAndQuery;
use hyper::{Request, Response, StatusCode, Uri, Version};
use prometheus_client::metrics::counter::Counter;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

pub use self::pool::{Lease, PooledBody};
use self::pool::{Pool, PoolError};
pub use self::tunnel::{Tunnel, Tunnels};
use crate::body::{ClientBody, ClientBodyError, Forwarded};
use crate::config::{Config, Upstream};
use crate::error::{GatewayError, Reason};
use crate::target::Target;

/// A request body on its way to Confluence.
pub type UpstreamBody = Forwarded<ClientBody>;

/// A response body: Confluence's, streamed back, or one the gateway made.
pub type ResponseBody = Either<PooledBody, Full<Bytes>>;

/// Confluence's answer to a forwarded request.
pub struct Answer {
    pub response: Response<ResponseBody>,
    /// Whom Confluence says it served the request as (`X-AUSERNAME`, SPEC
    /// §19), read before any header of the answer is touched.
    pub served_as: Vec<HeaderValue>,
    /// Both ends of the protocol switch, when Confluence agreed to one: the
    /// caller decides whether to open the tunnel, or drops it.
    pub tunnel: Option<Tunnel>,
}

/// Confluence's answer to a call of the gateway's own, read whole.
pub struct OwnAnswer {
    pub status: StatusCode,
    /// Whom Confluence says it served the call as (`X-AUSERNAME`).
    pub served_as: Vec<HeaderValue>,
    pub body: Bytes,
}

/// Who Confluence should see the request as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A verified token in header mode: the client's `Authorization` is
    /// removed and the identity header names the user.
    User(String),
    /// A verified token with `forward_as = "pat"`: `Authorization` becomes
    /// this value (`Bearer <the user's PAT>`); no identity header.
    Pat(HeaderValue),
    /// Anything else: credentials (if any) forwarded untouched.
    Passthrough,
}

impl Identity {
    /// Whether the request acts as a gateway token's user.
    pub fn is_token(&self) -> bool {
        !matches!(self, Identity::Passthrough)
    }
}

/// What the forwarder needs to know about the client connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The peer's address as `X-Forwarded-For` names it, formatted once per
    /// connection rather than once per request.
    forwarded_for: HeaderValue,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool) -> Self {
        let ip = peer.ip().to_canonical().to_string();
        ConnInfo {
            peer,
            tls,
            forwarded_for: HeaderValue::from_str(&ip).expect("an IP address is a valid header value"),
        }
    }

    /// `ip` as text: the peer's is formatted once per connection.
    pub fn ip_text(&self, ip: IpAddr) -> String {
        match self.forwarded_for.to_str() {
            Ok(peer) if ip == self.peer.ip().to_canonical() => peer.to_owned(),
            _ => ip.to_string(),
        }
    }
}

/// Forwards requests to Confluence, and carries the gateway's own calls
/// ([`crate::confluence`]) over the same connections.
pub struct UpstreamClient {
    pool: Pool,
    upstream: Upstream,
    /// `Host` of a forwarded request (but with `preserve_host`).
    host: HeaderValue,
    timeout: Duration,
    public_url: Option<crate::config::PublicUrl>,
    identity_header: hyper::header::HeaderName,
    secret: Option<(hyper::header::HeaderName, HeaderValue)>,
    preserve_host: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientSetupError {
    #[error("cannot read upstream_ca {path}: {message}")]
    Ca { path: String, message: String },
    #[error("cannot build the TLS client: {0}")]
    Tls(String),
}

impl UpstreamClient {
    /// `connects` counts the connections made.
    pub fn new(config: &Config, connects: Counter) -> Result<Self, ClientSetupError> {
        let pool = Pool::new(config, tls_client_config(config.upstream_ca.as_deref())?, connects)?;
        let host = HeaderValue::from_str(config.upstream.authority.as_str())
            .expect("a URI authority is visible ASCII, a valid header value");
        Ok(UpstreamClient {
            pool,
            upstream: config.upstream.clone(),
            host,
            timeout: config.upstream_timeout,
            public_url: config.public_url.clone(),
            identity_header: config.identity_header.clone(),
            secret: config
                .upstream_secret
                .clone()
                .map(|value| (config.upstream_secret_header.clone(), value)),
            preserve_host: config.preserve_host,
        })
    }

    /// A lease on an upstream connection, for one client connection.
    pub fn lease(&self) -> Arc<Lease> {
        self.pool.lease()
    }

    /// Upstream connections idle in the pool (not counting leased ones).
    pub fn idle_connections(&self) -> usize {
        self.pool.idle_count()
    }

    /// Forwards a checked request, on the client connection's `lease`, and
    /// returns Confluence's response as is (but for hop-by-hop headers,
    /// `Location` rewriting, and no session cookie for a token request).
    pub async fn forward(
        &self,
        mut req: Request<UpstreamBody>,
        target: &Target,
        identity: Identity,
        conn: &ConnInfo,
        lease: &Arc<Lease>,
    ) -> Result<Answer, GatewayError> {
        let websocket = headers::websocket_requested(req.headers()) && req.version() == Version::HTTP_11;
        let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
        let forwarded = target
            .forwarded()
            .map_err(|_| GatewayError::new(Reason::BadPath, "the request target cannot be forwarded"))?;
        let token = identity.is_token();
        self.rewrite_request(&mut req, forwarded, identity, conn)?;
        let mut response = match tokio::time::timeout(self.timeout, self.pool.send(lease, req, websocket)).await {
            Err(_) => {
                return Err(GatewayError::new(
                    Reason::UpstreamTimeout,
                    "Confluence did not answer in time",
                ));
            }
            Ok(Err(e)) => return Err(upstream_error(&e)),
            Ok(Ok(response)) => response,
        };
        let served_as = response.headers().get_all(&SERVED_AS).iter().cloned().collect();
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        let tunnel = match (switching, client_upgrade) {
            (false, _) => None,
            (true, Some(client)) => Some(Tunnel {
                client,
                upstream: hyper::upgrade::on(&mut response),
            }),
            (true, None) => {
                tracing::warn!("Confluence switched protocols without being asked to");
                return Err(GatewayError::new(
                    Reason::UpstreamUnavailable,
                    "Confluence switched protocols without being asked to",
                ));
            }
        };
        headers::remove_hop_by_hop(response.headers_mut(), switching);
        if token {
            headers::strip_token_response(response.headers_mut());
        } else {
            headers::strip_session_set_cookie(response.headers_mut());
        }
        self.rewrite_location(&mut response);
        Ok(Answer {
            response: response.map(Either::Left),
            served_as,
            tunnel,
        })
    }

    /// The `Host` a request of the gateway's own carries.
    pub fn host(&self) -> &HeaderValue {
        &self.host
    }

    /// Sends one request of the gateway's own ([`crate::confluence`]) and
    /// reads the answer whole (at most 64 KiB). A 5xx, no answer or no
    /// answer in time is `Err`.
    pub async fn exchange(&self, req: Request<UpstreamBody>) -> Result<OwnAnswer, GatewayError> {
        const MAX_ANSWER: usize = 64 << 10;
        let exchange = async {
            let response = self
                .pool
                .send(&self.pool.lease(), req, false)
                .await
                .map_err(|e| upstream_error(&e))?;
            let status = response.status();
            let served_as = response.headers().get_all(&SERVED_AS).iter().cloned().collect();
            if status.is_server_error() {
                tracing::warn!(
                    http.status = status.as_u16(),
                    "Confluence failed a call of the gateway's"
                );
                return Err(GatewayError::new(
                    Reason::UpstreamUnavailable,
                    format!("Confluence could not answer ({status})"),
                ));
            }
            let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "cannot read Confluence's answer");
                    GatewayError::new(Reason::UpstreamUnavailable, "Confluence's answer could not be read")
                })?
                .to_bytes();
            Ok(OwnAnswer {
                status,
                served_as,
                body,
            })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(answer) => answer,
            Err(_) => Err(GatewayError::new(
                Reason::UpstreamTimeout,
                "Confluence did not answer in time",
            )),
        }
    }

    /// Addresses a request to Confluence at `forwarded` as `identity` (the
    /// identity header or the user's PAT), with the upstream secret,
    /// `X-Forwarded-*` and `Host`: a forwarded request, or one of the
    /// gateway's own made as a token's user ([`crate::confluence`]).
    pub fn rewrite_request<B>(
        &self,
        req: &mut Request<B>,
        forwarded: PathAndQuery,
        identity: Identity,
        conn: &ConnInfo,
    ) -> Result<(), GatewayError> {
        let original_host = req.headers().get(HOST).cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        *req.uri_mut() = Uri::from(forwarded);
        *req.version_mut() = Version::HTTP_11;
        let keep_upgrade = headers::websocket_requested(req.headers());
        let headers = req.headers_mut();
        headers::remove_hop_by_hop(headers, keep_upgrade);
        let host = match (&original_host, self.preserve_host) {
            (Some(host), true) => host.clone(),
            _ => self.host.clone(),
        };
        headers.insert(HOST, host);
        match identity {
            Identity::User(user) => {
                headers::strip_token_request(headers);
                // The name's own bytes become the value: no copy.
                let value = HeaderValue::from_maybe_shared(Bytes::from(user.into_bytes())).map_err(|_| {
                    GatewayError::new(Reason::BadCredentials, "the user name cannot be sent in a header")
                })?;
                headers.insert(self.identity_header.clone(), value);
            }
            Identity::Pat(authorization) => {
                headers::strip_token_request(headers);
                headers.insert(hyper::header::AUTHORIZATION, authorization);
            }
            Identity::Passthrough => headers::strip_session_cookie(headers),
        }
        if let Some((name, value)) = &self.secret {
            headers.insert(name.clone(), value.clone());
        }
        append_forwarded_for(headers, conn);
        let proto = if conn.tls { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
        if let Some(host) = original_host {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
        Ok(())
    }

    /// Points a redirect at the upstream origin back at the gateway.
    fn rewrite_location<B>(&self, response: &mut Response<B>) {
        let Some(public_url) = &self.public_url else {
            return;
        };
        let Some(location) = response.headers().get(LOCATION).and_then(|v| v.to_str().ok()) else {
            return;
        };
        let origin = self.upstream.origin();
        let Some(rest) = strip_prefix_ignore_case(location, &origin) else {
            return;
        };
        if !(rest.is_empty() || rest.starts_with(['/', '?', '#'])) {
            return; // http://upstream:80 must not match http://upstream:8090
        }
        if let Ok(value) = HeaderValue::from_str(&format!("{}{rest}", public_url.url)) {
            response.headers_mut().insert(LOCATION, value);
        }
    }
}

/// The header Confluence's authentication layer (Seraph) names the served user in.
pub static SERVED_AS: HeaderName = HeaderName::from_static("x-ausername");

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &text[prefix.len()..])
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Appends the peer to `X-Forwarded-For` (as one header: earlier hops, then the peer).
fn append_forwarded_for(headers: &mut hyper::HeaderMap, conn: &ConnInfo) {
    if !headers.contains_key(&X_FORWARDED_FOR) {
        headers.insert(X_FORWARDED_FOR.clone(), conn.forwarded_for.clone());
        return;
    }
    let mut chain = Vec::new();
    for earlier in headers.get_all(&X_FORWARDED_FOR).iter().filter(|v| v.to_str().is_ok()) {
        chain.extend_from_slice(earlier.as_bytes());
        chain.extend_from_slice(b", ");
    }
    chain.extend_from_slice(conn.forwarded_for.as_bytes());
    if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(chain)) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
}

fn upstream_error(error: &PoolError) -> GatewayError {
    match error {
        PoolError::Connect(_) => {
            tracing::warn!(error = %error, "cannot connect to Confluence");
            GatewayError::new(Reason::UpstreamUnavailable, "Confluence is unavailable")
        }
        PoolError::Exchange(e) => {
            if let Some(body_error) = client_body_failed(e) {
                return GatewayError::new(Reason::BadRequest, body_error.to_string());
            }
            tracing::warn!(error = ?e, "Confluence request failed");
            GatewayError::new(Reason::UpstreamUnavailable, "Confluence closed the connection")
        }
    }
}

/// Whether forwarding failed because the client's own request body failed
/// (it went away mid-upload, or stalled) rather than because of Confluence:
/// hyper reports a failing request body as a user error whose cause is the
/// body's own error.
fn client_body_failed(error: &hyper::Error) -> Option<&ClientBodyError> {
    use std::error::Error as _;
    if !error.is_user() {
        return None;
    }
    error.source()?.downcast_ref::<ClientBodyError>()
}

/// A TLS client trusting the system's roots, and `extra_ca`'s certificates
/// when given (`upstream_ca`).
pub fn tls_client_config(extra_ca: Option<&std::path::Path>) -> Result<rustls::ClientConfig, ClientSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra_ca {
        let ca_error = |message: String| ClientSetupError::Ca {
            path: path.display().to_string(),
            message,
        };
        let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ca_error(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_error("no certificate in the file".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientSetupError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(public_url: Option<&str>) -> UpstreamClient {
        let config = Config {
            upstream: Upstream {
                https: false,
                authority: "confluence.internal:8090".parse().unwrap(),
            },
            public_url: public_url.map(|url| url.parse().unwrap()),
            ..Config::default()
        };
        UpstreamClient::new(&config, Counter::default()).unwrap()
    }

    fn location_after(client: &UpstreamClient, location: &str) -> String {
        let mut response = Response::builder().header(LOCATION, location).body(()).unwrap();
        client.rewrite_location(&mut response);
        response.headers()[LOCATION].to_str().unwrap().to_owned()
    }

    #[test]
    fn location_pointing_at_upstream_is_rewritten() {
        let c = client(Some("https://wiki.example.com"));
        assert_eq!(
            location_after(&c, "http://confluence.internal:8090/login.action?os_destination=x"),
            "https://wiki.example.com/login.action?os_destination=x"
        );
        assert_eq!(
            location_after(&c, "HTTP://Confluence.Internal:8090"),
            "https://wiki.example.com"
        );
        assert_eq!(
            location_after(&c, "http://confluence.internal:80901/x"),
            "http://confluence.internal:80901/x"
        );
        assert_eq!(location_after(&c, "https://elsewhere/x"), "https://elsewhere/x");
        assert_eq!(location_after(&c, "/relative"), "/relative");
        assert_eq!(
            location_after(&client(None), "http://confluence.internal:8090/x"),
            "http://confluence.internal:8090/x"
        );
    }

    #[test]
    fn an_ip_is_written_as_the_peer_s_or_formatted() {
        let conn = ConnInfo::new("[::ffff:10.0.0.1]:5000".parse().unwrap(), false);
        assert_eq!(conn.ip_text("10.0.0.1".parse().unwrap()), "10.0.0.1");
        assert_eq!(conn.ip_text("192.0.2.7".parse().unwrap()), "192.0.2.7");
        assert_eq!(conn.ip_text("2001:db8::2".parse().unwrap()), "2001:db8::2");
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut headers = hyper::HeaderMap::new();
        headers.append("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        headers.append("x-forwarded-for", HeaderValue::from_static("2.2.2.2, 3.3.3.3"));
        let conn = ConnInfo::new("[::ffff:10.0.0.1]:5000".parse().unwrap(), false);
        append_forwarded_for(&mut headers, &conn);
        assert_eq!(headers["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.1");
        let mut first = hyper::HeaderMap::new();
        append_forwarded_for(&mut first, &ConnInfo::new("[2001:db8::1]:5000".parse().unwrap(), true));
        assert_eq!(first["x-forwarded-for"], "2001:db8::1");
    }
}
