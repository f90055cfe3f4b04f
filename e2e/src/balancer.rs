//! A small TCP load balancer for tests, on loopback: each connection goes to the next backend in turn, and to
//! the one after when a backend refuses (it was killed), as a layer-4 balancer with connect failover does. TLS
//! passes through untouched: clients see the replicas' own certificate. [`Balancer::cut`] severs every
//! connection and refuses new ones: a network partition between its clients and its backends.

use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug)]
pub struct Balancer {
    pub addr: std::net::SocketAddr,
    /// Connections forwarded to each backend, in the order given.
    pub forwarded: Arc<Vec<AtomicUsize>>,
    stop: Arc<AtomicBool>,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Balancer {
    /// Balances 127.0.0.1:(free port) over `backends` (`host:port` each).
    pub fn start(backends: Vec<String>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the balancer");
        let addr = listener.local_addr().expect("address");
        listener.set_nonblocking(true).expect("nonblocking");
        let (stop, cut) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let forwarded: Arc<Vec<AtomicUsize>> = Arc::new(backends.iter().map(|_| AtomicUsize::new(0)).collect());
        let (s, f, c, o) = (stop.clone(), forwarded.clone(), cut.clone(), open.clone());
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
                if c.load(Ordering::Relaxed) {
                    continue; // partitioned: the connection is dropped
                }
                let _ = client.set_nonblocking(false);
                let chosen = (0..backends.len()).find_map(|i| {
                    let b = (next + i) % backends.len();
                    TcpStream::connect_timeout(&backends[b].parse().ok()?, Duration::from_secs(1)).ok().map(|s| (b, s))
                });
                next = next.wrapping_add(1);
                let Some((b, server)) = chosen else { continue };
                f[b].fetch_add(1, Ordering::Relaxed);
                if let (Ok(a), Ok(b)) = (client.try_clone(), server.try_clone()) {
                    o.lock().expect("lock").extend([a, b]);
                }
                splice(client, server);
            }
        });
        Self { addr, forwarded, stop, cut, open }
    }

    /// Severs every connection and refuses new ones from now on.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
        for s in self.open.lock().expect("lock").drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// `host:port`, for a URL of another scheme (a database's).
    pub fn host_port(&self) -> String {
        self.addr.to_string()
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
