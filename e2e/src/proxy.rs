//! A small fault-injecting TCP proxy for tests, on loopback: it forwards bytes between a client and an
//! upstream, and for the first `faulty` connections it cuts (closes both ways), corrupts (flips one byte of) or
//! stalls (sends nothing more, holding the connection open) the upstream→client stream after `after` bytes.
//! Under TLS a cut is a truncated download and a flipped byte fails the record's integrity check; a stall is
//! only noticed by a client's read timeout. Either way the client must retry and must never use what it got.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Close both directions after `after` bytes upstream→client.
    Cut,
    /// Flip one byte at offset `after` of the upstream→client stream, then keep forwarding.
    Corrupt,
    /// Forward `after` bytes, then nothing more, holding the connection open until the client gives up.
    Stall,
}

/// What the proxy did, for assertions.
#[derive(Debug, Default)]
pub struct ProxyCounts {
    pub connections: AtomicU64,
    pub faults: AtomicU64,
    pub bytes_down: AtomicU64,
    /// Bytes the clients sent upstream.
    pub bytes_up: AtomicU64,
}

#[derive(Debug)]
pub struct FaultProxy {
    /// `https://127.0.0.1:PORT` when the upstream speaks TLS (the proxy does not care).
    pub addr: std::net::SocketAddr,
    pub counts: Arc<ProxyCounts>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    /// Forwards 127.0.0.1:(free port) to `upstream` (`host:port`); the first `faulty` connections suffer `fault`
    /// after `after` bytes.
    pub fn start(upstream: &str, fault: Fault, after: u64, faulty: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("address");
        listener.set_nonblocking(true).expect("nonblocking");
        let (counts, stop) = (Arc::new(ProxyCounts::default()), Arc::new(AtomicBool::new(false)));
        let upstream = upstream.to_owned();
        let (c, s) = (counts.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                        continue;
                    }
                    Err(_) => break,
                };
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(&upstream) else { continue };
                let n = c.connections.fetch_add(1, Ordering::Relaxed);
                let fault = (n < faulty).then_some(fault);
                pipe(client, server, fault, after, c.clone());
            }
        });
        Self { addr, counts, stop }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn faults(&self) -> u64 {
        self.counts.faults.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn pipe(client: TcpStream, server: TcpStream, fault: Option<Fault>, after: u64, counts: Arc<ProxyCounts>) {
    let (mut c_read, mut s_write) = (client.try_clone().expect("clone"), server.try_clone().expect("clone"));
    // client → upstream: as it is, counted.
    let client_gone = Arc::new(AtomicBool::new(false));
    let gone = client_gone.clone();
    let up = counts.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = c_read.read(&mut buf) {
            if n == 0 || s_write.write_all(&buf[..n]).is_err() {
                break;
            }
            up.bytes_up.fetch_add(n as u64, Ordering::Relaxed);
        }
        let _ = s_write.shutdown(Shutdown::Write);
        gone.store(true, Ordering::Relaxed);
    });
    // upstream → client: counted, and where the fault strikes.
    std::thread::spawn(move || {
        let (mut server, mut client) = (server, client);
        let mut buf = vec![0u8; 16 * 1024];
        let mut sent = 0u64;
        let mut struck = false;
        loop {
            let n = match server.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let chunk = &mut buf[..n];
            if let Some(f) = fault.filter(|_| !struck && sent + n as u64 > after) {
                struck = true;
                counts.faults.fetch_add(1, Ordering::Relaxed);
                let at = (after - sent) as usize;
                match f {
                    Fault::Cut => {
                        let _ = client.write_all(&chunk[..at]);
                        counts.bytes_down.fetch_add(at as u64, Ordering::Relaxed);
                        let _ = client.shutdown(Shutdown::Both);
                        let _ = server.shutdown(Shutdown::Both);
                        return;
                    }
                    Fault::Corrupt => chunk[at] ^= 0x55,
                    Fault::Stall => {
                        let _ = client.write_all(&chunk[..at]);
                        counts.bytes_down.fetch_add(at as u64, Ordering::Relaxed);
                        // Silent until the client hangs up (its side of the pipe ends), then gone.
                        while !client_gone.load(Ordering::Relaxed) {
                            std::thread::sleep(std::time::Duration::from_millis(50));
                        }
                        let _ = server.shutdown(Shutdown::Both);
                        return;
                    }
                }
            }
            if client.write_all(chunk).is_err() {
                break;
            }
            sent += n as u64;
            counts.bytes_down.fetch_add(n as u64, Ordering::Relaxed);
        }
        let _ = client.shutdown(Shutdown::Write);
    });
}
