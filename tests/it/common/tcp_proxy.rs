//! A TCP proxy the tests put between the gateway and PostgreSQL, to make the
//! database unavailable and bring it back on cue: while not forwarding it
//! accepts connections and closes them at once; `cut` also closes every
//! connection it is carrying.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

pub struct TcpProxy {
    pub addr: SocketAddr,
    forwarding: Arc<AtomicBool>,
    carried: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr, forwarding: bool) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let forwarding = Arc::new(AtomicBool::new(forwarding));
        let carried = Arc::new(Mutex::new(Vec::new()));
        let accept = tokio::spawn(accept_loop(listener, target, forwarding.clone(), carried.clone())).abort_handle();
        TcpProxy {
            addr,
            forwarding,
            carried,
            accept,
        }
    }

    /// Starts (or stops) forwarding new connections.
    pub fn forward(&self, on: bool) {
        self.forwarding.store(on, Ordering::SeqCst);
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
    carried: Arc<Mutex<Vec<AbortHandle>>>,
) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            continue;
        };
        if !forwarding.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let connection = tokio::spawn(async move {
            if let Ok(mut server) = TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        });
        let mut carried = carried.lock().unwrap();
        carried.retain(|c| !c.is_finished());
        carried.push(connection.abort_handle());
    }
}
