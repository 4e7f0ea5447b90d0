//! A minimal HTTP/1.1 responder for `/metrics` and `/healthz` on a std `TcpListener`.
//!
//! GET only, one request per connection (`Connection: close`), the request head bounded to
//! [`MAX_HEAD`] bytes and [`READ_DEADLINE`], at most [`MAX_CONNECTIONS`] handled at once.
//! Every blocking call is sliced to [`POLL`] so a stop request is honoured within about that.

use super::{render, MetricsSource, PeerSeries, CONTENT_TYPE};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// Connections handled at once; more get 503 straight away.
pub const MAX_CONNECTIONS: usize = 8;
/// Longest a client may take to send its request head.
pub const READ_DEADLINE: Duration = Duration::from_secs(5);
/// Longest a client may take to read the response.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(30);
/// Longest the request remainder is drained after responding, so the close does not reset.
const DRAIN_DEADLINE: Duration = Duration::from_secs(1);
const DRAIN_MAX: usize = 1 << 20;
/// Slice of every blocking wait, and so the bound on noticing `stop`.
const POLL: Duration = Duration::from_millis(50);

/// The metrics HTTP endpoint.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
    per_peer: PeerSeries,
}

struct Response {
    status: &'static str,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn text(status: &'static str, body: impl Into<String>) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

impl MetricsServer {
    /// Bind the listening socket (port 0 picks a free port; see [`local_addr`](Self::local_addr)).
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(MetricsServer {
            listener,
            per_peer: PeerSeries::default(),
        })
    }

    /// How many peers get series (default [`PeerSeries::default`]).
    pub fn with_peer_series(mut self, per_peer: PeerSeries) -> Self {
        self.per_peer = per_peer;
        self
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until `stop` is set; returns within about [`POLL`] of it (plus the time to finish
    /// encoding a scrape in progress). Run it on its own thread.
    pub fn serve(&self, source: Arc<dyn MetricsSource>, stop: &AtomicBool) {
        let active = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            while !stop.load(Ordering::Relaxed) {
                let stream = match self.listener.accept() {
                    Ok((stream, _)) => stream,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    // Nothing waiting: sleep until a connection arrives (so a health probe is
                    // answered at once, not at the next tick), at most POLL to notice `stop`.
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        wait_readable(&self.listener, POLL);
                        continue;
                    }
                    // A transient error such as EMFILE: wait and retry.
                    Err(_) => {
                        std::thread::sleep(POLL / 2);
                        continue;
                    }
                };
                if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                    active.fetch_sub(1, Ordering::AcqRel);
                    let busy = Response::text("503 Service Unavailable", "busy\n");
                    let _ = respond(stream, &busy, Duration::from_millis(200), stop);
                    continue;
                }
                let (source, active, per_peer) = (&source, &active, self.per_peer);
                let spawned = std::thread::Builder::new()
                    .name("metrics-http".into())
                    .spawn_scoped(scope, move || {
                        handle(stream, &**source, per_peer, stop);
                        active.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    active.fetch_sub(1, Ordering::AcqRel);
                }
            }
        });
    }
}

/// Block until `listener` has a connection to accept, or `timeout` passes.
fn wait_readable(listener: &TcpListener, timeout: Duration) {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid, initialised pollfd that lives across the call, and nfds is 1;
    // the fd is the listener's, open for as long as `listener` is borrowed. Any result
    // (ready, timeout, EINTR) just sends the caller back to `accept`.
    unsafe {
        libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int);
    }
}

/// One connection: read the head, answer, close.
fn handle(stream: TcpStream, source: &dyn MetricsSource, per_peer: PeerSeries, stop: &AtomicBool) {
    if stream.set_nonblocking(false).is_err() || stream.set_nodelay(true).is_err() {
        return;
    }
    let mut stream = stream;
    let response = match read_head(&mut stream, stop) {
        Ok(Some(head)) => catch_unwind(AssertUnwindSafe(|| route(&head, source, per_peer)))
            .unwrap_or_else(|_| Response::text("500 Internal Server Error", "internal error\n")),
        Ok(None) => return,
        Err(bad) => Response::text("400 Bad Request", format!("{bad}\n")),
    };
    let _ = respond(stream, &response, WRITE_DEADLINE, stop);
}

/// Read up to the end of the request head. `Ok(None)`: the client went away (or we stop)
/// before sending anything worth answering. `Err`: answer 400 with this reason.
fn read_head(stream: &mut TcpStream, stop: &AtomicBool) -> Result<Option<String>, &'static str> {
    stream.set_read_timeout(Some(POLL)).map_err(|_| "socket")?;
    let deadline = Instant::now() + READ_DEADLINE;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = head_end(&buf) {
            buf.truncate(end);
            return String::from_utf8(buf)
                .map(Some)
                .map_err(|_| "request is not UTF-8");
        }
        if buf.len() > MAX_HEAD {
            return Err("request too large");
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        if Instant::now() >= deadline {
            return Err("request timed out");
        }
        match stream.read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => return Err("incomplete request"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if is_retry(&e) => {}
            Err(_) => return Ok(None),
        }
    }
}

/// Where the head ends (the blank line), accepting bare LF line ends as RFC 9112 allows.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = buf.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Parse the head and produce the answer.
fn route(head: &str, source: &dyn MetricsSource, per_peer: PeerSeries) -> Response {
    let (method, path) = match parse_head(head) {
        Ok(p) => p,
        Err(bad) => return Response::text("400 Bad Request", format!("{bad}\n")),
    };
    if method != "GET" {
        return Response::text("405 Method Not Allowed", "only GET\n");
    }
    match path {
        "/metrics" => {
            // The snapshot is an owned copy: nothing is locked while encoding.
            let snap = source.snapshot(per_peer);
            match render(&snap, per_peer) {
                Ok(body) => Response {
                    status: "200 OK",
                    content_type: CONTENT_TYPE,
                    body,
                },
                Err(e) => Response::text("500 Internal Server Error", format!("{e}\n")),
            }
        }
        "/healthz" => match source.healthy() {
            Ok(()) => Response::text("200 OK", "ok\n"),
            Err(why) => Response::text("503 Service Unavailable", format!("{why}\n")),
        },
        _ => Response::text("404 Not Found", "not found\n"),
    }
}

/// The method and the path (query dropped) of a well-formed HTTP/1.x request head.
fn parse_head(head: &str) -> Result<(&str, &str), &'static str> {
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) => (m, t, v),
        _ => return Err("malformed request line"),
    };
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_uppercase());
    if !token(method) {
        return Err("malformed method");
    }
    if !target.starts_with('/') || target.bytes().any(|b| b.is_ascii_control()) {
        return Err("malformed target");
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err("unsupported HTTP version");
    }
    for line in lines.filter(|l| !l.is_empty()) {
        let name = line.split_once(':').map(|(n, _)| n).unwrap_or_default();
        if name.is_empty()
            || name
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err("malformed header");
        }
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    Ok((method, path))
}

/// Write the response within `deadline`, then close gracefully.
fn respond(
    mut stream: TcpStream,
    r: &Response,
    deadline: Duration,
    stop: &AtomicBool,
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        r.status,
        r.content_type,
        r.body.len()
    );
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(POLL))?;
    let until = Instant::now() + deadline;
    write_all(&mut stream, head.as_bytes(), until, stop)?;
    write_all(&mut stream, r.body.as_bytes(), until, stop)?;
    stream.flush()?;
    linger(stream, DRAIN_DEADLINE.min(deadline), stop);
    Ok(())
}

fn write_all(
    s: &mut TcpStream,
    mut buf: &[u8],
    until: Instant,
    stop: &AtomicBool,
) -> io::Result<()> {
    while !buf.is_empty() {
        if stop.load(Ordering::Relaxed) || Instant::now() >= until {
            return Err(ErrorKind::TimedOut.into());
        }
        match s.write(buf) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if is_retry(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Half-close and read what the client still sends (briefly), so unread request bytes do not
/// turn the close into a reset that could destroy the response before the client reads it.
fn linger(mut stream: TcpStream, max: Duration, stop: &AtomicBool) {
    if stream.shutdown(Shutdown::Write).is_err() || stream.set_read_timeout(Some(POLL)).is_err() {
        return;
    }
    let until = Instant::now() + max;
    let (mut drained, mut sink) = (0usize, [0u8; 4096]);
    while drained < DRAIN_MAX && Instant::now() < until && !stop.load(Ordering::Relaxed) {
        match stream.read(&mut sink) {
            Ok(0) => return,
            Ok(n) => drained += n,
            Err(e) if is_retry(&e) => {}
            Err(_) => return,
        }
    }
}

fn is_retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_heads() {
        assert_eq!(
            parse_head("GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n"),
            Ok(("GET", "/metrics"))
        );
        assert_eq!(parse_head("GET /healthz HTTP/1.0"), Ok(("GET", "/healthz")));
        assert!(parse_head("GET /metrics").is_err());
        assert!(parse_head("GET metrics HTTP/1.1").is_err());
        assert!(parse_head("GET /metrics HTTP/2").is_err());
        assert!(parse_head("get /metrics HTTP/1.1").is_err());
        assert!(parse_head("GET /metrics HTTP/1.1\r\nno colon here").is_err());
        assert!(parse_head("GET  /metrics HTTP/1.1").is_err());
    }

    #[test]
    fn finds_the_end_of_the_head() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(14));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(14));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }
}
