//! A webhook receiver for the event tests (SPEC §18): records every request
//! it gets (headers and body), and can be told to fail the next requests or
//! to be down (503) until told otherwise.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpListener;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub headers: HeaderMap,
    pub body: String,
    /// Whether the receiver took it (answered 2xx).
    pub taken: bool,
}

impl Delivery {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What the receiver does on each request before answering it.
pub type Hook = Box<dyn Fn() + Send + Sync>;

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    got: Arc<Mutex<Vec<Delivery>>>,
    /// Answer 500 to this many more requests.
    pub fail_next: Arc<AtomicUsize>,
    /// Answer 503 to everything while set.
    pub down: Arc<AtomicBool>,
    /// Called on every request before it is answered: a slow receiver.
    pub on_request: Arc<Mutex<Option<Hook>>>,
    /// How long each answer takes (real time).
    pub delay: Arc<Mutex<Duration>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = Receiver {
            addr: listener.local_addr().unwrap(),
            got: Arc::default(),
            fail_next: Arc::default(),
            down: Arc::default(),
            on_request: Arc::default(),
            delay: Arc::default(),
        };
        let server = receiver.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let server = server.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let server = server.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            if let Some(slow) = server.on_request.lock().unwrap().as_ref() {
                                slow();
                            }
                            let delay = *server.delay.lock().unwrap();
                            tokio::time::sleep(delay).await;
                            let failing = server.down.load(Ordering::SeqCst)
                                || server
                                    .fail_next
                                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                                    .is_ok();
                            server.got.lock().unwrap().push(Delivery {
                                headers: parts.headers,
                                body: String::from_utf8_lossy(&body).into_owned(),
                                taken: !failing,
                            });
                            let status = if failing {
                                StatusCode::SERVICE_UNAVAILABLE
                            } else {
                                StatusCode::NO_CONTENT
                            };
                            let response = Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::new()))
                                .unwrap();
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        receiver
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks/team", self.addr)
    }

    /// Every request so far, taken or not.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.got.lock().unwrap().clone()
    }

    /// The bodies taken so far, in order.
    pub fn taken(&self) -> Vec<Value> {
        self.deliveries()
            .iter()
            .filter(|d| d.taken)
            .map(Delivery::json)
            .collect()
    }

    /// Waits (up to 10 s) until `n` events were taken; returns them.
    pub async fn wait_for(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let taken = self.taken();
            if taken.len() >= n {
                return taken;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} events arrived: {taken:#?}",
                taken.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
