//! Message bodies: the request body every stage is generic over (so the
//! pipeline runs on in-memory bodies in tests), the body a client connection
//! delivers ([`ClientBody`], which ends a body that stops arriving), and
//! the one way the gateway reads a body whole
//! ([`read_limited`], bounded), and the one way it reads a JSON body
//! ([`read_json`]: read once, parsed once, shared by rules and spaces),
//! with [`field`] to take a typed field out of a JSON object.

use std::error::Error as StdError;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{HeaderMap, Request};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio::time::{Instant, Sleep};

use crate::error::{GatewayError, Reason};
use crate::rules::{JsonBody, is_json_media_type};

pub type BoxError = Box<dyn StdError + Send + Sync>;

/// A request body the gateway can read or pass on: a client's streaming
/// body in production, a `Full<Bytes>` in tests.
pub trait RequestBody: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static {}

impl<B> RequestBody for B where B: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static {}

/// A request body on its way on: as it streams in, or read whole (a JSON
/// rule had to read it).
pub type Forwarded<B> = Either<B, Full<Bytes>>;

/// Reads a body whole, refusing one larger than `limit` bytes (413, before
/// reading when `Content-Length` says so). `purpose` ends the 413 message:
/// "the most a JSON rule reads".
pub async fn read_limited<B: RequestBody>(
    headers: &HeaderMap,
    body: B,
    limit: usize,
    purpose: &str,
) -> Result<Bytes, GatewayError> {
    let too_large = || too_large(limit, purpose);
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(too_large()),
        Err(e) => Err(GatewayError::new(
            Reason::BadRequest,
            format!("cannot read the request body: {e}"),
        )),
    }
}

fn too_large(limit: usize, purpose: &str) -> GatewayError {
    GatewayError::new(
        Reason::BodyTooLarge,
        format!("the request body is larger than {limit} bytes, {purpose}"),
    )
}

/// A request body read whole and parsed once: kept in the request's
/// extensions, so that every stage that reads the body (JSON rules, spaces)
/// sees the same bytes and the same parse.
#[derive(Debug, Clone)]
pub struct ParsedBody {
    pub json: Arc<JsonBody>,
    pub empty: bool,
    /// The body has a content coding: its bytes are not JSON text.
    pub encoded: bool,
    /// Whether `json` was parsed as JSON (its type declared it, or it was
    /// read [`Reading::Always`]), rather than taken as not JSON unparsed.
    parsed: bool,
    bytes: Bytes,
}

impl ParsedBody {
    /// Whether the body is empty or only white space.
    pub fn is_blank(&self) -> bool {
        self.bytes.iter().all(u8::is_ascii_whitespace)
    }
}

/// How a body is read as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// As its `Content-Type` declares, as Confluence reads it (rules, spaces).
    Declared,
    /// As JSON whatever it declares (the gateway's own API, which scripts
    /// may call with `X-Atlassian-Token: no-check` and any type).
    Always,
}

/// The request's body read whole (at most `limit` bytes, `purpose` ends the
/// 413 message) and parsed as JSON, once per request: a later call returns
/// the first's parse (it parses only a body the first took as not JSON by
/// its type, when it reads [`Reading::Always`]). The request goes on with
/// the bytes read. `Err` for a body that cannot be read, or has a key
/// twice (400 `ambiguous_json`).
pub async fn read_json<B: RequestBody>(
    req: Request<Forwarded<B>>,
    limit: usize,
    purpose: &str,
    reading: Reading,
) -> Result<(Request<Forwarded<B>>, ParsedBody), GatewayError> {
    let (mut parts, body) = req.into_parts();
    let earlier = parts.extensions.get::<ParsedBody>().cloned();
    // A stage that reads less than an earlier one still holds the body to its own limit.
    if earlier.as_ref().is_some_and(|parsed| parsed.bytes.len() > limit) {
        return Err(too_large(limit, purpose));
    }
    let parsed = match earlier {
        Some(parsed) if parsed.parsed || reading == Reading::Declared => parsed,
        Some(unparsed) => parse(&parts.headers, unparsed.bytes, reading)?,
        None => {
            let bytes = match body {
                Either::Left(body) => read_limited(&parts.headers, body, limit, purpose).await?,
                Either::Right(read) => read.collect().await.map(|c| c.to_bytes()).unwrap_or_default(),
            };
            parse(&parts.headers, bytes, reading)?
        }
    };
    parts.extensions.insert(parsed.clone());
    let body = Either::Right(Full::new(parsed.bytes.clone()));
    Ok((Request::from_parts(parts, body), parsed))
}

/// `bytes` parsed as JSON as `reading` says.
fn parse(headers: &HeaderMap, bytes: Bytes, reading: Reading) -> Result<ParsedBody, GatewayError> {
    let content_type = match reading {
        Reading::Declared => headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()),
        Reading::Always => Some("application/json"),
    };
    let json =
        JsonBody::parse(content_type, &bytes).map_err(|e| GatewayError::new(Reason::AmbiguousJson, e.to_string()))?;
    Ok(ParsedBody {
        parsed: content_type.is_some_and(is_json_media_type),
        json: Arc::new(json),
        empty: bytes.is_empty(),
        encoded: is_encoded(headers),
        bytes,
    })
}

/// Whether a body has a content coding other than none (`identity`).
pub fn is_encoded(headers: &HeaderMap) -> bool {
    headers.get_all(CONTENT_ENCODING).iter().any(|v| {
        v.to_str().map_or(true, |v| {
            v.split(',')
                .any(|c| !c.trim().eq_ignore_ascii_case("identity") && !c.trim().is_empty())
        })
    })
}

/// Whether a request's body is an upload (`multipart/form-data`).
pub fn is_upload(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_upload_type)
}

/// Whether a `Content-Type` value is `multipart/form-data`.
pub fn is_upload_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("multipart/form-data")
}

/// How long the gateway waits in all for a client's body to deliver
/// [`MIN_PROGRESS`] more bytes: a body that arrives slower ends with an
/// error, so an upload that makes no progress cannot hold a connection (and
/// an upstream one) for ever. Only time spent waiting on the client counts,
/// not time the body sits unread because Confluence is slow to take it.
pub const BODY_STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes that count as progress: about 100 bytes a second at the least
/// (Apache's `mod_reqtimeout` asks 500).
pub const MIN_PROGRESS: u64 = 1024;

/// Why a client's body ended before it was complete.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("the request body broke off: {0}")]
    Broken(BoxError),
    #[error(
        "the request body arrived too slowly (less than {MIN_PROGRESS} bytes in {BODY_STALL_TIMEOUT:?} of waiting)"
    )]
    TooSlow,
}

/// A client's request body, which fails with [`ClientBodyError::TooSlow`]
/// when it stalls (see [`BODY_STALL_TIMEOUT`]). Generic so that tests can
/// feed it from a channel; the server wraps hyper's `Incoming`.
pub struct ClientBody<B = Incoming> {
    inner: B,
    /// Waiting time since the last [`MIN_PROGRESS`] bytes, not counting the
    /// wait in progress.
    waited: Duration,
    progress: u64,
    /// Armed while the body waits on the client: when it fires, the body has
    /// stalled. Boxed lazily: most bodies are empty and never wait.
    stall: Option<Pin<Box<Sleep>>>,
    /// When the wait in progress began.
    waiting_since: Option<Instant>,
}

impl<B> ClientBody<B> {
    pub fn new(inner: B) -> Self {
        ClientBody {
            inner,
            waited: Duration::ZERO,
            progress: 0,
            stall: None,
            waiting_since: None,
        }
    }

    fn end_wait(&mut self, received: u64) {
        if let Some(since) = self.waiting_since.take() {
            self.waited += since.elapsed();
        }
        self.progress += received;
        if self.progress >= MIN_PROGRESS {
            self.progress = 0;
            self.waited = Duration::ZERO;
        }
    }

    /// Polls the stall timer of the wait in progress, arming it first.
    fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let since = *self.waiting_since.get_or_insert_with(Instant::now);
        let deadline = since + BODY_STALL_TIMEOUT.saturating_sub(self.waited);
        match &mut self.stall {
            Some(stall) if stall.deadline() != deadline => stall.as_mut().reset(deadline),
            Some(_) => {}
            None => self.stall = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        self.stall.as_mut().expect("armed above").as_mut().poll(cx)
    }
}

impl<B> Body for ClientBody<B>
where
    B: Body<Data = Bytes, Error: Into<BoxError>> + Unpin,
{
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let received = match &frame {
                    Some(Ok(frame)) => frame.data_ref().map_or(0, |data| data.len() as u64),
                    _ => 0,
                };
                this.end_wait(received);
                Poll::Ready(frame.map(|frame| frame.map_err(|e| ClientBodyError::Broken(e.into()))))
            }
            Poll::Pending => {
                ready!(this.poll_stalled(cx));
                Poll::Ready(Some(Err(ClientBodyError::TooSlow)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a JSON field must be, for the message that names it.
pub const TEXT: &str = "a string";
pub const SWITCH: &str = "true or false";

/// A field of a JSON object body as `T`; absent or `null` is `None`. The
/// error names the field and what it must be (`expected`), never the value
/// sent (it could be a secret).
pub fn field<T: DeserializeOwned>(
    body: &Map<String, Value>,
    name: &'static str,
    expected: &str,
) -> Result<Option<T>, GatewayError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => T::deserialize(value)
            .map(Some)
            .map_err(|_| GatewayError::invalid(name, format!("{name} must be {expected}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bodies_are_read_whole_up_to_the_limit() {
        let headers = HeaderMap::new();
        let body = Full::new(Bytes::from_static(b"{\"a\":1}"));
        assert_eq!(read_limited(&headers, body, 7, "x").await.unwrap(), &b"{\"a\":1}"[..]);
        let error = read_limited(
            &headers,
            Full::new(Bytes::from_static(b"12345678")),
            7,
            "the most it reads",
        )
        .await
        .unwrap_err();
        assert_eq!(error.reason, Reason::BodyTooLarge);
        assert_eq!(
            error.message,
            "the request body is larger than 7 bytes, the most it reads"
        );
    }

    fn json_request(content_type: &str, body: &'static str) -> Request<Forwarded<Full<Bytes>>> {
        Request::builder()
            .header(CONTENT_TYPE, content_type)
            .body(Either::Left(Full::new(Bytes::from_static(body.as_bytes()))))
            .unwrap()
    }

    #[tokio::test]
    async fn a_body_is_read_and_parsed_once_and_every_stage_gets_the_same_parse() {
        let req = json_request("application/json", r#"{"type":"page"}"#);
        let (req, first) = read_json(req, 100, "x", Reading::Declared).await.unwrap();
        let (req, again) = read_json(req, 100, "x", Reading::Always).await.unwrap();
        assert!(Arc::ptr_eq(&first.json, &again.json), "parsed once");
        assert!(matches!(req.body(), Either::Right(_)));
        let forwarded = req.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(forwarded, r#"{"type":"page"}"#, "forwarded byte for byte");
    }

    #[tokio::test]
    async fn a_body_its_type_says_is_not_json_is_parsed_only_by_a_stage_that_reads_it_as_json() {
        let req = json_request("text/plain", r#"{"label":"x"}"#);
        let (req, declared) = read_json(req, 100, "x", Reading::Declared).await.unwrap();
        assert_eq!(*declared.json, JsonBody::NotJson, "as Confluence reads it");
        let (_, always) = read_json(req, 100, "x", Reading::Always).await.unwrap();
        assert!(matches!(&*always.json, JsonBody::Json(v) if v["label"] == "x"));
        let twice = json_request("text/plain", r#"{"a":1,"a":2}"#);
        let (twice, _) = read_json(twice, 100, "x", Reading::Declared).await.unwrap();
        let error = read_json(twice, 100, "x", Reading::Always).await.unwrap_err();
        assert_eq!(error.reason, Reason::AmbiguousJson);
    }

    #[tokio::test]
    async fn a_later_stage_holds_a_body_read_earlier_to_its_own_limit() {
        let req = json_request("application/json", r#"{"label":"0123456789"}"#);
        let (req, _) = read_json(req, 100, "the most a rule reads", Reading::Declared)
            .await
            .unwrap();
        let error = read_json(req, 10, "the most the API reads", Reading::Always)
            .await
            .unwrap_err();
        assert_eq!(error.reason, Reason::BodyTooLarge);
        assert!(error.message.contains("the most the API reads"), "{}", error.message);
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_before_reading() {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, "1000".parse().unwrap());
        let error = read_limited(&headers, Full::new(Bytes::new()), 10, "x")
            .await
            .unwrap_err();
        assert_eq!(error.reason, Reason::BodyTooLarge);
    }

    /// A body fed by hand, one chunk at a time, wrapped as a client's.
    fn dribbled() -> (
        http_body_util::channel::Sender<Bytes, std::io::Error>,
        ClientBody<http_body_util::Channel<Bytes, std::io::Error>>,
    ) {
        let (sender, body) = http_body_util::Channel::new(4);
        (sender, ClientBody::new(body))
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_ends_with_too_slow() {
        let (mut sender, body) = dribbled();
        let feeder = tokio::spawn(async move {
            for _ in 0..100 {
                if sender.send_data(Bytes::from_static(b"x")).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        });
        let started = Instant::now();
        let error = body.collect().await.expect_err("a dribbled body fails");
        assert!(matches!(error, ClientBodyError::TooSlow), "{error}");
        let waited = started.elapsed();
        assert!(
            waited >= BODY_STALL_TIMEOUT && waited < BODY_STALL_TIMEOUT + Duration::from_secs(4),
            "{waited:?}"
        );
        feeder.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_body_that_keeps_making_progress_is_read_whole() {
        let (mut sender, body) = dribbled();
        tokio::spawn(async move {
            // 1 KiB every 9 s: slow, but always progress within the timeout.
            for _ in 0..20 {
                sender.send_data(Bytes::from(vec![b'x'; 1024])).await.unwrap();
                tokio::time::sleep(Duration::from_secs(9)).await;
            }
        });
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes.len(), 20 * 1024);
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_body_sits_unread_is_not_waiting_on_the_client() {
        let (mut sender, mut body) = dribbled();
        let feeder = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(6)).await;
            sender.send_data(Bytes::from_static(b"a")).await.unwrap();
            // The reader (Confluence) is slow: a minute passes before it reads again.
            tokio::time::sleep(Duration::from_secs(63)).await;
            sender.send_data(Bytes::from_static(b"b")).await.unwrap();
        });
        assert!(body.frame().await.unwrap().is_ok(), "6 s of waiting");
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(body.frame().await.unwrap().is_ok(), "3 s more: 9 s in all");
        feeder.await.unwrap();
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn a_broken_body_says_so() {
        let (sender, body) = dribbled();
        sender.abort(std::io::Error::other("connection reset"));
        let error = body.collect().await.expect_err("an aborted body fails");
        assert!(matches!(error, ClientBodyError::Broken(_)), "{error}");
    }
}
