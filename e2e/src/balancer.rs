//! A small TCP load balancer for tests, on loopback: each connection goes to the next backend in turn, and to
//! the one after when a backend refuses (it was killed), as a layer-4 balancer with connect failover does. TLS
//! passes through untouched: clients see the replicas' own certificate.

use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

#[derive(Debug)]
pub struct Balancer {
    pub addr: std::net::SocketAddr,
    /// Connections forwarded to each backend, in the order given.
    pub forwarded: Arc<Vec<AtomicUsize>>,
    stop: Arc<AtomicBool>,
}

impl Balancer {
    /// Balances 127.0.0.1:(free port) over `backends` (`host:port` each).
    pub fn start(backends: Vec<String>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the balancer");
        let addr = listener.local_addr().expect("address");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let forwarded: Arc<Vec<AtomicUsize>> = Arc::new(backends.iter().map(|_| AtomicUsize::new(0)).collect());
        let (s, f) = (stop.clone(), forwarded.clone());
        std::thread::spawn(move || {
            let mut next = 0usize;
            while !s.load(Ordering::Relaxed) {
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    Err(_) => break,
                };
                let _ = client.set_nonblocking(false);
                let chosen = (0..backends.len()).find_map(|i| {
                    let b = (next + i) % backends.len();
                    TcpStream::connect_timeout(&backends[b].parse().ok()?, Duration::from_secs(1)).ok().map(|s| (b, s))
                });
                next = next.wrapping_add(1);
                let Some((b, server)) = chosen else { continue };
                f[b].fetch_add(1, Ordering::Relaxed);
                splice(client, server);
            }
        });
        Self { addr, forwarded, stop }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies both ways until either side closes, then closes both.
fn splice(client: TcpStream, server: TcpStream) {
    for (mut from, mut to) in
        [(client.try_clone().expect("clone"), server.try_clone().expect("clone")), (server, client)]
    {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
        });
    }
}
