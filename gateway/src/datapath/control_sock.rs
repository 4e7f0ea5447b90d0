//! sluice's own control socket, `/var/run/sluice/<interface>.ctl`, next to (not inside) the wg
//! UAPI socket so the stock `wg` keeps seeing a pure UAPI.
//!
//! Newline-delimited requests, one reply line each: `ha-role master|backup|fault` answers `ok`
//! (or `error: ...`), `ha-status` one JSON object. The directory is 0700 and the socket 0600:
//! only root may change the gateway's role.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub const CTL_DIR: &str = "/var/run/sluice";

/// The control socket of interface `name`.
pub fn path(name: &str) -> PathBuf {
    Path::new(CTL_DIR).join(format!("{name}.ctl"))
}

#[derive(Debug)]
pub struct CtlServer {
    listener: UnixListener,
    path: PathBuf,
}

impl CtlServer {
    /// Bind the socket of `name`, replacing a stale one nobody listens on.
    pub fn bind(name: &str) -> io::Result<CtlServer> {
        std::fs::create_dir_all(CTL_DIR)?;
        std::fs::set_permissions(CTL_DIR, std::fs::Permissions::from_mode(0o700))?;
        let path = path(name);
        if path.exists() {
            if UnixStream::connect(&path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use", path.display()),
                ));
            }
            std::fs::remove_file(&path)?;
        }
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        Ok(CtlServer { listener, path })
    }

    /// Answer requests with `handle` until `stop`.
    pub fn serve(&self, handle: &dyn Fn(&str) -> String, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            match self.listener.accept() {
                Ok((conn, _)) => {
                    if let Err(e) = answer(conn, handle) {
                        tracing::debug!(error = %e, "control socket client");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

impl Drop for CtlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn answer(conn: UnixStream, handle: &dyn Fn(&str) -> String) -> io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut w = conn.try_clone()?;
    let mut line = String::new();
    let mut r = BufReader::new(conn).take(4096);
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let reply = handle(line.trim());
        w.write_all(reply.as_bytes())?;
        w.write_all(b"\n")?;
    }
}

/// Send one request to interface `name`'s control socket; returns the reply line.
pub fn request(name: &str, req: &str) -> io::Result<String> {
    let p = path(name);
    let mut s = UnixStream::connect(&p)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(req.as_bytes())?;
    s.write_all(b"\n")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(line.trim_end().to_string())
}
