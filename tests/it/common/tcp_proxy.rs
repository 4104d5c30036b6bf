//! A TCP proxy the tests put between the gateway and PostgreSQL or Redis,
//! to make them unavailable and bring them back on cue: while not forwarding
//! it accepts connections and closes them at once; `cut` also closes every
//! connection it is carrying; `freeze` keeps them open but lets no byte
//! through (a server that stopped answering).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

pub struct TcpProxy {
    pub addr: SocketAddr,
    forwarding: Arc<AtomicBool>,
    frozen: Arc<AtomicBool>,
    carried: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr, forwarding: bool) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let forwarding = Arc::new(AtomicBool::new(forwarding));
        let frozen = Arc::new(AtomicBool::new(false));
        let carried = Arc::new(Mutex::new(Vec::new()));
        let accept = tokio::spawn(accept_loop(
            listener,
            target,
            forwarding.clone(),
            frozen.clone(),
            carried.clone(),
        ))
        .abort_handle();
        TcpProxy {
            addr,
            forwarding,
            frozen,
            carried,
            accept,
        }
    }

    /// Starts (or stops) forwarding new connections.
    pub fn forward(&self, on: bool) {
        self.forwarding.store(on, Ordering::SeqCst);
    }

    /// Holds every byte (connections stay open) until unfrozen.
    pub fn freeze(&self, on: bool) {
        self.frozen.store(on, Ordering::SeqCst);
    }

    /// Stops forwarding and closes every open connection: an outage.
    pub fn cut(&self) {
        self.forward(false);
        for connection in self.carried.lock().unwrap().drain(..) {
            connection.abort();
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    forwarding: Arc<AtomicBool>,
    frozen: Arc<AtomicBool>,
    carried: Arc<Mutex<Vec<AbortHandle>>>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if !forwarding.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let frozen = frozen.clone();
        let connection = tokio::spawn(async move {
            if let Ok(server) = TcpStream::connect(target).await {
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::join!(
                    pump(client_read, server_write, &frozen),
                    pump(server_read, client_write, &frozen)
                );
            }
        });
        let mut carried = carried.lock().unwrap();
        carried.retain(|c| !c.is_finished());
        carried.push(connection.abort_handle());
    }
}

/// Copies one direction until either side closes, holding bytes while frozen.
async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, frozen: &AtomicBool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
