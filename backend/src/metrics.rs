// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The metrics endpoint (`--metrics`): every tenant's counters in the
//! Prometheus text format over HTTP, on a loopback TCP port or a unix socket.
//!
//! One thread answers one request per connection, then closes it. Each
//! connection has [`IO_TIMEOUT`] in all to send its request and take the
//! answer, so a client that stalls or trickles holds the endpoint for at most
//! that long; nothing a client sends reaches the tenants.

use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use log::{debug, info};

use crate::config::MetricsAddr;
use crate::stats::{render, TenantStats};

/// Longest a connection may take to send its request and read the answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest request head read; the rest is ignored.
const MAX_REQUEST: usize = 8192;

/// The tenants whose counters the endpoint reports, in configuration order;
/// the supervisor replaces the list when a reload changes the tenants.
pub type Roster = Arc<RwLock<Vec<Arc<TenantStats>>>>;

/// A roster of `tenants`.
pub fn roster(tenants: Vec<Arc<TenantStats>>) -> Roster {
    Arc::new(RwLock::new(tenants))
}

/// A bound metrics endpoint.
pub enum MetricsServer {
    /// On a loopback TCP address.
    Tcp(TcpListener),
    /// On a unix socket.
    Unix(UnixListener),
}

/// A connection of either kind.
trait Stream: Read + Write {
    fn set_timeouts(&self, timeout: Duration) -> io::Result<()>;
}

impl Stream for std::net::TcpStream {
    fn set_timeouts(&self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout))?;
        self.set_write_timeout(Some(timeout))
    }
}

impl Stream for std::os::unix::net::UnixStream {
    fn set_timeouts(&self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout))?;
        self.set_write_timeout(Some(timeout))
    }
}

impl MetricsServer {
    /// Binds `addr` (a unix socket path is replaced if it exists).
    pub fn bind(addr: &MetricsAddr) -> io::Result<Self> {
        match addr {
            MetricsAddr::Tcp(addr) => TcpListener::bind(addr).map(MetricsServer::Tcp),
            MetricsAddr::Unix(path) => {
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
                UnixListener::bind(path).map(MetricsServer::Unix)
            }
        }
    }

    /// Where it listens, for the log.
    pub fn describe(&self) -> String {
        match self {
            MetricsServer::Tcp(listener) => listener
                .local_addr()
                .map_or_else(|e| format!("tcp ({e})"), |a| format!("http://{a}/metrics")),
            MetricsServer::Unix(listener) => listener.local_addr().map_or_else(
                |e| format!("unix ({e})"),
                |a| {
                    format!(
                        "unix:{}",
                        a.as_pathname()
                            .map_or("?".into(), |p| p.display().to_string())
                    )
                },
            ),
        }
    }

    /// Answers requests with the counters of the tenants of `roster`, as it
    /// is at each request, on a thread of its own.
    pub fn spawn(self, roster: Roster) -> Result<(), crate::ServerError> {
        info!("metrics on {}", self.describe());
        std::thread::Builder::new()
            .name(String::from("metrics"))
            .spawn(move || self.serve(&roster))
            .map(drop)
            .map_err(crate::ServerError::Spawn)
    }

    fn serve(&self, roster: &Roster) {
        loop {
            let accepted: io::Result<Box<dyn Stream>> = match self {
                MetricsServer::Tcp(listener) => listener
                    .accept()
                    .map(|(stream, _)| Box::new(stream) as Box<dyn Stream>),
                MetricsServer::Unix(listener) => listener
                    .accept()
                    .map(|(stream, _)| Box::new(stream) as Box<dyn Stream>),
            };
            match accepted {
                Ok(mut stream) => {
                    let tenants = roster
                        .read()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clone();
                    if let Err(e) = answer(stream.as_mut(), &tenants) {
                        debug!("metrics client: {e}");
                    }
                }
                Err(e) => {
                    debug!("metrics accept: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

/// Reads one request head and answers it, all before `IO_TIMEOUT` is over.
fn answer(stream: &mut dyn Stream, tenants: &[Arc<TenantStats>]) -> io::Result<()> {
    let deadline = Instant::now() + IO_TIMEOUT;
    let head = read_head(stream, deadline)?;
    let (status, body) = respond(&head, tenants);
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut rest = reply.as_bytes();
    while !rest.is_empty() {
        stream.set_timeouts(remaining(deadline)?)?;
        let n = stream.write(rest)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        rest = rest.get(n..).unwrap_or_default();
    }
    Ok(())
}

/// Time left before `deadline`, or a timeout error.
fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::ErrorKind::TimedOut.into())
    } else {
        Ok(left)
    }
}

/// The request head, up to the blank line (or [`MAX_REQUEST`] bytes, or the
/// end of the stream).
fn read_head(stream: &mut dyn Stream, deadline: Instant) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while head.len() < MAX_REQUEST && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        stream.set_timeouts(remaining(deadline)?)?;
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
    Ok(head)
}

/// Status line and body for a request head: `GET /metrics` (or `/`) gets
/// the exposition, anything else an error.
fn respond(head: &[u8], tenants: &[Arc<TenantStats>]) -> (&'static str, String) {
    let line = head
        .split(|b| *b == b'\r' || *b == b'\n')
        .next()
        .unwrap_or_default();
    let mut words = line.split(|b| *b == b' ');
    match (words.next(), words.next()) {
        (Some(b"GET"), Some(b"/metrics" | b"/")) => ("200 OK", render(tenants)),
        (Some(b"GET"), Some(_)) => ("404 Not Found", String::from("not found: try /metrics\n")),
        _ => ("400 Bad Request", String::from("bad request\n")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use virtio_accel_spec::Status;

    fn get(addr: &MetricsAddr, request: &[u8]) -> String {
        let mut reply = String::new();
        match addr {
            MetricsAddr::Tcp(addr) => {
                let mut stream = std::net::TcpStream::connect(addr).unwrap();
                stream.write_all(request).unwrap();
                stream.read_to_string(&mut reply).unwrap();
            }
            MetricsAddr::Unix(path) => {
                let mut stream = std::os::unix::net::UnixStream::connect(path).unwrap();
                stream.write_all(request).unwrap();
                stream.read_to_string(&mut reply).unwrap();
            }
        }
        reply
    }

    fn serve(addr: &MetricsAddr) -> (MetricsAddr, Arc<TenantStats>) {
        let server = MetricsServer::bind(addr).unwrap();
        let bound = match &server {
            MetricsServer::Tcp(listener) => MetricsAddr::Tcp(listener.local_addr().unwrap()),
            MetricsServer::Unix(_) => addr.clone(),
        };
        let stats = Arc::new(TenantStats::new("vm1"));
        server.spawn(roster(vec![Arc::clone(&stats)])).unwrap();
        (bound, stats)
    }

    #[test]
    fn tcp_and_unix_endpoints_answer_with_the_counters() {
        let path = std::env::temp_dir().join(format!("accel-metrics-{}.sock", std::process::id()));
        for addr in [
            "127.0.0.1:0".parse().unwrap(),
            MetricsAddr::Unix(path.clone()),
        ] {
            let (bound, stats) = serve(&addr);
            stats.request_done(Status::Ok, 100, Duration::from_micros(3));
            let reply = get(&bound, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
            assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
            assert!(reply.contains("text/plain; version=0.0.4"), "{reply}");
            let (_, body) = reply.split_once("\r\n\r\n").unwrap();
            assert!(body.contains("vhost_user_accel_bytes_total{tenant=\"vm1\"} 100\n"));
            let length: usize = reply
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(length, body.len());
            assert!(get(&bound, b"GET /other HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 404"));
            assert!(get(&bound, b"\x00\x01garbage\r\n\r\n").starts_with("HTTP/1.1 400"));
        }
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_silent_or_trickling_client_holds_the_endpoint_for_io_timeout_at_most() {
        let (bound, _) = serve(&"127.0.0.1:0".parse().unwrap());
        let MetricsAddr::Tcp(addr) = bound else {
            unreachable!()
        };
        let start = Instant::now();
        let _silent = std::net::TcpStream::connect(addr).unwrap();
        // One byte every 0.5 s, each within the socket timeout.
        let trickler = std::thread::spawn(move || {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            for _ in 0..12 {
                if stream.write_all(b"G").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        std::thread::sleep(Duration::from_millis(100));
        let reply = get(&bound, b"GET / HTTP/1.0\r\n\r\n");
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(
            start.elapsed() < IO_TIMEOUT * 2 + Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        trickler.join().unwrap();
    }
}
