//! A TCP forwarder placed between the server and PostgreSQL, so a test can take the database
//! away (every connection cut, new ones refused) and give it back on the same address.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// Forwards `127.0.0.1:<port>` to a target address while running.
#[derive(Debug)]
pub struct Forwarder {
    addr: SocketAddr,
    target: String,
    accept: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
}

fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

impl Forwarder {
    /// Starts forwarding a fresh loopback port to `target` (`host:port`).
    pub async fn start(target: &str) -> Forwarder {
        let listener = listen(SocketAddr::from(([127, 0, 0, 1], 0)))
            .unwrap_or_else(|e| panic!("forwarder cannot listen: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("forwarder has no address: {e}"));
        let mut f = Forwarder {
            addr,
            target: target.to_owned(),
            accept: None,
            conns: Arc::default(),
        };
        f.run(listener);
        f
    }

    fn run(&mut self, listener: tokio::net::TcpListener) {
        let target = self.target.clone();
        let conns = Arc::clone(&self.conns);
        self.accept = Some(tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                let mut list = conns.lock().unwrap();
                list.retain(|h| !h.is_finished());
                list.push(task.abort_handle());
            }
        }));
    }

    /// The address to give the server.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops: closes the listening socket (new connections are refused) and cuts every
    /// forwarded connection.
    pub async fn stop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
            let _ = accept.await;
        }
        let handles: Vec<AbortHandle> = self.conns.lock().unwrap().drain(..).collect();
        for h in handles {
            h.abort();
        }
        // Let the aborted tasks drop their sockets.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    /// Starts forwarding again on the same address.
    pub async fn resume(&mut self) {
        assert!(self.accept.is_none(), "the forwarder is running");
        let mut last = None;
        for _ in 0..100 {
            match listen(self.addr) {
                Ok(l) => {
                    self.run(l);
                    return;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("forwarder cannot listen on {} again: {last:?}", self.addr);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
        }
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}
