//! A bare hyper reverse proxy, the reference target of `benches/load.sh`:
//! hyper's HTTP/1 server and hyper-util's legacy pooled client
//! (`HttpConnector`, keep-alive pool), nothing else. Every request goes to
//! the upstream with only its URI rewritten (the upstream's scheme and
//! authority) and the peer added to `X-Forwarded-For`; the response streams
//! back as it comes. One tokio current-thread runtime, like tokengate with
//! one worker. `bare_proxy --listen ADDR --upstream ADDR`; run without them
//! (as `cargo bench` does) it says what it is and exits.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::http::uri::{Authority, Scheme};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

type Body = Either<Incoming, Empty<Bytes>>;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--listen" || a == "--upstream") {
        println!(
            "bare_proxy: a load-test target for benches/load.sh (--listen ADDR --upstream ADDR); nothing to run here"
        );
        return std::process::ExitCode::SUCCESS;
    }
    let (Some(listen), Some(upstream)) = (value(&args, "--listen"), value(&args, "--upstream")) else {
        eprintln!("usage: bare_proxy --listen ADDR --upstream ADDR (ADDR as 127.0.0.1:8080)");
        return std::process::ExitCode::from(2);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(serve(listen, upstream)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bare_proxy: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The address after `flag`, if it is there and parses.
fn value(args: &[String], flag: &str) -> Option<SocketAddr> {
    let at = args.iter().position(|a| a == flag)?;
    args.get(at + 1)?.parse().ok()
}

async fn serve(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<()> {
    let authority = Authority::try_from(upstream.to_string()).expect("a socket address is an authority");
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .build(connector);
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                eprintln!("bare_proxy: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let forwarded_for = HeaderValue::from_str(&peer.ip().to_string()).expect("an IP address is a header value");
        let (client, authority) = (client.clone(), authority.clone());
        let service = hyper::service::service_fn(move |req| {
            forward(req, client.clone(), authority.clone(), forwarded_for.clone())
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn forward(
    mut req: Request<Incoming>,
    client: Client<HttpConnector, Incoming>,
    authority: Authority,
    forwarded_for: HeaderValue,
) -> Result<Response<Body>, Infallible> {
    let mut uri = Uri::builder().scheme(Scheme::HTTP).authority(authority);
    if let Some(path_and_query) = req.uri().path_and_query() {
        uri = uri.path_and_query(path_and_query.clone());
    }
    *req.uri_mut() = match uri.build() {
        Ok(uri) => uri,
        Err(_) => return Ok(status(StatusCode::BAD_REQUEST)),
    };
    let headers = req.headers_mut();
    // Earlier hops, then the peer, as one header (what nginx's $proxy_add_x_forwarded_for sends).
    let value = if headers.contains_key(&X_FORWARDED_FOR) {
        let mut chain = Vec::new();
        for earlier in headers.get_all(&X_FORWARDED_FOR) {
            chain.extend_from_slice(earlier.as_bytes());
            chain.extend_from_slice(b", ");
        }
        chain.extend_from_slice(forwarded_for.as_bytes());
        HeaderValue::from_bytes(&chain).unwrap_or(forwarded_for)
    } else {
        forwarded_for
    };
    headers.insert(X_FORWARDED_FOR.clone(), value);
    match client.request(req).await {
        Ok(response) => Ok(response.map(Either::Left)),
        Err(_) => Ok(status(StatusCode::BAD_GATEWAY)),
    }
}

fn status(code: StatusCode) -> Response<Body> {
    let mut response = Response::new(Either::Right(Empty::new()));
    *response.status_mut() = code;
    response
}
