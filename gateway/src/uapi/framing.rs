//! Splitting a UAPI byte stream into requests, sans-IO: the caller pushes whatever bytes it
//! read and pulls complete requests. A request is an operation line (`get=1` or `set=1`),
//! `key=value` lines, and a blank line. Several requests may follow each other on one stream.

use zeroize::Zeroize;

use super::protocol::{parse_set, SetRequest, UapiError};

/// Bounds on what one request may make the server buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest line, without its `\n`. The longest legitimate line is an `endpoint=` with a
    /// named IPv6 scope, well under 100 bytes.
    pub max_line: usize,
    /// Largest request, in bytes. `wg syncconf` spends ~150 bytes a peer (one allowed IP).
    pub max_request: usize,
}

impl Default for Limits {
    /// 4 KiB lines, 64 MiB requests: room for ~400,000 single-prefix peers in one `set`.
    fn default() -> Self {
        Self {
            max_line: 4096,
            max_request: 64 << 20,
        }
    }
}

/// One framed and parsed request.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Get,
    Set(SetRequest),
}

/// Incremental request framer. Its buffer holds secrets, so it is zeroized when consumed,
/// when it grows and on drop.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    /// Where the search for the next `\n` resumes.
    scan: usize,
    /// Start of the line being read.
    line_start: usize,
    limits: Limits,
    /// Set after a fatal error: the stream cannot be framed any more.
    broken: bool,
}

impl Framer {
    pub fn new(limits: Limits) -> Self {
        Self {
            buf: Vec::new(),
            scan: 0,
            line_start: 0,
            limits,
            broken: false,
        }
    }

    /// Append bytes read from the stream. Call [`Framer::next_request`] after each push: the
    /// limits are checked there. Ignored once the stream is broken.
    pub fn push(&mut self, data: &[u8]) {
        if self.broken {
            return;
        }
        let needed = self.buf.len() + data.len();
        if needed > self.buf.capacity() {
            // Grow by hand so the old allocation is wiped rather than freed with secrets in it.
            let mut bigger = Vec::with_capacity(needed.max(2 * self.buf.capacity()).max(4096));
            bigger.extend_from_slice(&self.buf);
            self.buf.zeroize();
            self.buf = bigger;
        }
        self.buf.extend_from_slice(data);
    }

    /// Whether part of a request is buffered (what EOF or a timeout would cut short).
    pub fn in_request(&self) -> bool {
        !self.broken && !self.buf.is_empty()
    }

    /// Whether a fatal error was returned; nothing more will come out of this framer.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// The next complete request, if one is buffered. An `Err` whose
    /// [`UapiError::is_fatal`] is true means the stream is unusable; other errors concern one
    /// request only, and framing carries on after it.
    pub fn next_request(&mut self) -> Option<Result<Request, UapiError>> {
        if self.broken {
            return None;
        }
        loop {
            let Some(pos) = self.buf[self.scan..].iter().position(|&b| b == b'\n') else {
                self.scan = self.buf.len();
                return self.check_limits(self.buf.len() - self.line_start).map(Err);
            };
            let end = self.scan + pos;
            self.scan = end + 1;
            if let Some(err) = self.check_limits(end - self.line_start) {
                return Some(Err(err));
            }
            if end > self.line_start {
                self.line_start = self.scan;
            } else if self.line_start == 0 {
                // A blank line between requests: nothing to answer.
                self.consume(1);
            } else {
                let result = decode(&self.buf[..self.line_start]);
                self.consume(self.scan);
                return Some(result);
            }
        }
    }

    /// The stream ended: an error if it ended inside a request.
    pub fn finish(&mut self) -> Option<UapiError> {
        let cut = self.in_request().then_some(UapiError::Truncated);
        self.fail();
        cut
    }

    fn check_limits(&mut self, line_len: usize) -> Option<UapiError> {
        let err = if line_len > self.limits.max_line {
            UapiError::LineTooLong {
                max: self.limits.max_line,
            }
        } else if self.scan > self.limits.max_request {
            UapiError::RequestTooLarge {
                max: self.limits.max_request,
            }
        } else {
            return None;
        };
        self.fail();
        Some(err)
    }

    fn fail(&mut self) {
        self.broken = true;
        self.buf.zeroize();
        self.buf = Vec::new();
        self.scan = 0;
        self.line_start = 0;
    }

    /// Drop the first `n` bytes, wiping them and the stale tail the shift leaves behind.
    fn consume(&mut self, n: usize) {
        self.buf[..n].zeroize();
        self.buf.drain(..n);
        self.buf.spare_capacity_mut().zeroize();
        self.scan -= n;
        self.line_start = 0;
    }
}

impl Drop for Framer {
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}

/// Decode one request: its lines, each ending in `\n`, without the blank line.
fn decode(bytes: &[u8]) -> Result<Request, UapiError> {
    let text = std::str::from_utf8(bytes).map_err(|_| UapiError::NotUtf8)?;
    let (op, body) = text.split_once('\n').unwrap_or((text, ""));
    match op {
        "get=1" if body.is_empty() => Ok(Request::Get),
        "get=1" => Err(UapiError::GetWithArguments),
        "set=1" => parse_set(body).map(Request::Set),
        _ => Err(UapiError::UnknownOperation),
    }
}
