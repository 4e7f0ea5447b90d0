//! The UAPI Unix socket: `/var/run/wireguard/<ifname>.sock`, mode 0600, one thread.

use std::fs::{self, DirBuilder, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::framing::{Framer, Limits, Request};
use super::protocol::{format_get, DeviceState, SetRequest, UapiError};
use crate::log;

/// Where `wg` looks for userspace interfaces (shared by every network namespace).
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// How often the accept loop and a connection's reads look at the stop flag.
const POLL: Duration = Duration::from_millis(50);
const READ_CHUNK: usize = 64 * 1024;

/// What the server needs from the device. Both calls run on the server thread.
pub trait UapiHandler: Sync {
    /// A snapshot for `get=1`.
    fn get(&self) -> DeviceState;
    /// Apply a validated `set=1`. `Err` carries a positive errno for the reply, e.g.
    /// `EADDRINUSE` when the listen port cannot be bound.
    fn set(&self, req: SetRequest) -> Result<(), i32>;
}

/// A bound UAPI socket. Dropping it removes the socket file (if it is still this one).
#[derive(Debug)]
pub struct UapiServer {
    listener: UnixListener,
    path: PathBuf,
    /// (device, inode) of the socket file, so drop never removes a successor's socket.
    identity: (u64, u64),
    limits: Limits,
    idle_timeout: Duration,
    connection_deadline: Duration,
}

impl UapiServer {
    /// Bind `/var/run/wireguard/<ifname>.sock`. Fails with `AddrInUse` if a live process
    /// serves that name; a stale socket file is replaced, anything else at the path is left
    /// alone (`AlreadyExists`).
    pub fn bind(ifname: &str) -> io::Result<Self> {
        Self::bind_in(Path::new(SOCKET_DIR), ifname)
    }

    /// [`UapiServer::bind`] in another directory (tests, or platforms using `/run/wireguard`).
    pub fn bind_in(dir: &Path, ifname: &str) -> io::Result<Self> {
        validate_ifname(ifname)?;
        ensure_dir(dir)?;
        let _lock = DirLock::acquire(dir)?;
        let path = dir.join(format!("{ifname}.sock"));
        clear_stale(&path)?;
        let listener = bind_private(dir, ifname, &path)?;
        let meta = fs::symlink_metadata(&path)?;
        Ok(Self {
            listener,
            path,
            identity: (meta.dev(), meta.ino()),
            limits: Limits::default(),
            idle_timeout: Duration::from_secs(5),
            connection_deadline: Duration::from_secs(60),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// `idle`: longest silence from a client (default 5 s, also the write timeout);
    /// `deadline`: longest life of one connection (default 60 s).
    pub fn with_timeouts(mut self, idle: Duration, deadline: Duration) -> Self {
        self.idle_timeout = idle;
        self.connection_deadline = deadline;
        self
    }

    /// Accept and answer connections, one at a time, until `stop` is set (noticed within
    /// ~50 ms, also in the middle of a connection). Per-connection failures are logged and
    /// never end the loop.
    pub fn serve(&self, handler: &dyn UapiHandler, stop: &AtomicBool) -> io::Result<()> {
        self.listener.set_nonblocking(true)?;
        while !stop.load(Ordering::Relaxed) {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = self.converse(stream, handler, stop) {
                        log::warn(&format!("uapi {}: connection failed: {e}", self.name()));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(POLL),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_transient_accept_error(&e) => {
                    log::warn(&format!("uapi {}: accept failed: {e}", self.name()));
                    thread::sleep(POLL);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn name(&self) -> String {
        self.path.display().to_string()
    }

    /// One connection: any number of requests, until EOF, a fatal framing error, silence
    /// past the idle timeout, the connection deadline, or `stop`.
    fn converse(
        &self,
        mut stream: UnixStream,
        handler: &dyn UapiHandler,
        stop: &AtomicBool,
    ) -> io::Result<()> {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(POLL))?;
        stream.set_write_timeout(Some(self.idle_timeout))?;
        let mut framer = Framer::new(self.limits);
        let mut chunk = Zeroizing::new(vec![0u8; READ_CHUNK]);
        let started = Instant::now();
        let mut last_data = started;
        while !stop.load(Ordering::Relaxed) {
            let expired = last_data.elapsed() >= self.idle_timeout
                || started.elapsed() >= self.connection_deadline;
            if expired {
                if framer.in_request() {
                    reply(&mut stream, respond(Err(UapiError::TimedOut), handler))?;
                }
                return Ok(());
            }
            match stream.read(&mut chunk[..]) {
                Ok(0) => {
                    if let Some(err) = framer.finish() {
                        reply(&mut stream, respond(Err(err), handler))?;
                    }
                    return Ok(());
                }
                Ok(n) => {
                    last_data = Instant::now();
                    framer.push(&chunk[..n]);
                    while let Some(result) = framer.next_request() {
                        reply(&mut stream, respond(result, handler))?;
                    }
                    if framer.is_broken() {
                        return Ok(());
                    }
                }
                Err(e) if is_retry(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Drop for UapiServer {
    fn drop(&mut self) {
        let ours = fs::symlink_metadata(&self.path)
            .map(|m| (m.dev(), m.ino()) == self.identity)
            .unwrap_or(false);
        if ours {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The reply to one framed request (or framing error).
fn respond(result: Result<Request, UapiError>, handler: &dyn UapiHandler) -> Zeroizing<String> {
    match result {
        Ok(Request::Get) => format_get(&handler.get()),
        Ok(Request::Set(req)) => match handler.set(req) {
            Ok(()) => errno_reply(0),
            Err(errno) => errno_reply(normalize_errno(errno)),
        },
        Err(err) => {
            // The error's text names lines and keys, never values.
            log::warn(&format!("uapi: refused a request: {err}"));
            errno_reply(err.errno())
        }
    }
}

fn errno_reply(errno: i32) -> Zeroizing<String> {
    Zeroizing::new(format!("errno={errno}\n\n"))
}

/// Handlers may return `-EINVAL` or `EINVAL`; the wire wants it positive, and never 0 for a
/// failure.
fn normalize_errno(errno: i32) -> i32 {
    match errno.checked_abs() {
        Some(0) | None => libc::EIO,
        Some(e) => e,
    }
}

fn reply(stream: &mut UnixStream, text: Zeroizing<String>) -> io::Result<()> {
    stream.write_all(text.as_bytes())?;
    stream.flush()
}

fn is_retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED | libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Interface names as the kernel accepts them, minus anything awkward in a path.
fn validate_ifname(name: &str) -> io::Result<()> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name must be 1-15 characters of [A-Za-z0-9._-]",
        ))
    }
}

/// Create the socket directory (0755) if missing; leave an existing one as it is.
fn ensure_dir(dir: &Path) -> io::Result<()> {
    match DirBuilder::new().mode(0o755).create(dir) {
        // The umask may have narrowed it; wg needs to be able to list it.
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(0o755)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// An exclusive `flock` on the socket directory, so two servers never both decide a name is
/// free (between the stale check and the link).
struct DirLock {
    _file: File,
}

impl DirLock {
    fn acquire(dir: &Path) -> io::Result<Self> {
        let file = File::open(dir)?;
        loop {
            // SAFETY: flock on a descriptor we own; no memory is involved.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(Self { _file: file });
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

/// Remove a socket file nobody listens on; refuse a live one or a non-socket.
fn clear_stale(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        let msg = format!("{} exists and is not a socket", path.display());
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, msg));
    }
    match UnixStream::connect(path) {
        Ok(_) => {
            let msg = format!("{} is served by a running process", path.display());
            Err(io::Error::new(io::ErrorKind::AddrInUse, msg))
        }
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => fs::remove_file(path),
        Err(e) => Err(e),
    }
}

/// Bind inside a fresh 0700 directory, chmod the socket to 0600, then hard-link it into
/// place: the socket is never reachable at its public path with wider permissions, the
/// process umask (shared with every thread) is never touched, and `link` refuses to replace
/// anything that appeared meanwhile.
fn bind_private(dir: &Path, ifname: &str, path: &Path) -> io::Result<UnixListener> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp_dir = dir.join(format!(".sluice-{ifname}-{}-{seq}.tmp", std::process::id()));
    DirBuilder::new().mode(0o700).create(&tmp_dir)?;
    let tmp_sock = tmp_dir.join("s");
    let result = bind_and_link(&tmp_sock, path);
    let _ = fs::remove_file(&tmp_sock);
    let _ = fs::remove_dir(&tmp_dir);
    result
}

fn bind_and_link(tmp_sock: &Path, path: &Path) -> io::Result<UnixListener> {
    let listener = UnixListener::bind(tmp_sock)?;
    fs::set_permissions(tmp_sock, fs::Permissions::from_mode(0o600))?;
    match fs::hard_link(tmp_sock, path) {
        Ok(()) => Ok(listener),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let msg = format!("{} appeared while binding", path.display());
            Err(io::Error::new(io::ErrorKind::AddrInUse, msg))
        }
        Err(e) => Err(e),
    }
}
