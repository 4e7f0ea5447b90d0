//! `sluice ha watch`: the anycast health watcher. It polls `/healthz` and runs one command when
//! the gateway becomes healthy (announce the anycast addresses, e.g. `birdc enable ...`) and
//! another when it stops being healthy (withdraw them), so the routers stop sending users to a
//! member that cannot serve them.
//!
//! - **Down is fast, up is careful.** One failed probe (connection refused, a status other than
//!   200, no answer within the timeout, a garbled reply) runs the down command at once; `rise`
//!   good probes in a row (default 3) run the up command. With the default 200 ms interval
//!   and timeout, a stopped or unhealthy sluice is withdrawn within about 0.4 s plus the
//!   command's own time.
//! - **Re-asserted.** The current state's command runs again every `reassert` (default 2 s),
//!   and at the next probe after a command failed, so a BIRD that restarted (its announcing
//!   protocols start disabled) or missed a command converges again.
//! - **Stopping withdraws.** SIGTERM or SIGINT runs the down command once, then the watcher
//!   exits 0 (the systemd unit also runs it from `ExecStopPost`, which covers a crash).
//! - Commands run through `/bin/sh -c` with a time limit; their output goes to our stderr.
//!
//! Only `http://` URLs: `/healthz` listens on a local address (`[metrics] listen`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The command line of `sluice ha watch`.
#[derive(clap::Args, Debug, Clone)]
pub struct WatchArgs {
    /// The gateway's health URL, e.g. http://127.0.0.1:9586/healthz.
    #[arg(long)]
    pub healthz: String,
    /// How often to probe, in milliseconds.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub interval_ms: u64,
    /// How long one probe may take before it counts as down (default: the interval).
    #[arg(long, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub timeout_ms: Option<u64>,
    /// Good probes in a row before the up command runs.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rise: u32,
    /// Run the current state's command again this often, in milliseconds (0: never).
    #[arg(long, default_value_t = 2000)]
    pub reassert_ms: u64,
    /// How long a command may run before it is killed, in milliseconds.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub command_timeout_ms: u64,
    /// Run through /bin/sh when the gateway becomes healthy (announce).
    #[arg(long)]
    pub up: String,
    /// Run through /bin/sh when the gateway stops being healthy, and when the watcher stops
    /// (withdraw).
    #[arg(long)]
    pub down: String,
}

/// Why the watcher could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("--healthz {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("blocking SIGTERM/SIGINT: {0}")]
    Signals(std::io::Error),
}

/// Where to probe: the address to connect to and the request to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl Target {
    /// Parse `http://HOST[:PORT][/PATH]` (HOST a name, an IPv4 address or `[IPv6]`).
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or("only http:// URLs are supported")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err("no host".into());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or("unclosed '[' in the host")?;
            match after {
                "" => (h, 80),
                p => (h, parse_port(p.strip_prefix(':').ok_or("junk after ']'")?)?),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, parse_port(p)?),
                None => (authority, 80),
            }
        };
        if host.is_empty() || path.chars().any(|c| c.is_ascii_whitespace()) {
            return Err("bad host or path".into());
        }
        Ok(Target {
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }

    fn addrs(&self) -> std::io::Result<Vec<SocketAddr>> {
        Ok((self.host.as_str(), self.port).to_socket_addrs()?.collect())
    }

    fn host_header(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    p.parse::<u16>()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("bad port {p:?}"))
}

/// One probe's answer: `Ok(())` for a 200, else why it counts as down.
pub fn probe(target: &Target, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("no answer within {} ms", timeout.as_millis()))
    };
    let addrs = target
        .addrs()
        .map_err(|e| format!("resolving {}: {e}", target.host))?;
    let addr = addrs.first().ok_or("the host resolves to nothing")?;
    let mut s = TcpStream::connect_timeout(addr, left()?).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(left()?))
        .map_err(|e| e.to_string())?;
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        target.path,
        target.host_header()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    // The status line is all we need; read until its end (or 1 KiB).
    let mut buf = [0u8; 1024];
    let mut got = 0;
    while !buf[..got].contains(&b'\n') && got < buf.len() {
        s.set_read_timeout(Some(left()?))
            .map_err(|e| e.to_string())?;
        match s.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => {
                return Err(format!("no answer within {} ms", timeout.as_millis()))
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    match status_code(&buf[..got]) {
        Some(200) => Ok(()),
        Some(code) => Err(format!("status {code}")),
        None => Err("not an HTTP reply".into()),
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// The status code of an HTTP/1.x status line.
fn status_code(reply: &[u8]) -> Option<u16> {
    let line = reply.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_ascii_whitespace();
    if !words.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = words.next()?;
    (code.len() == 3).then(|| code.parse().ok()).flatten()
}

/// What the watcher asserts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Up,
    Down,
}

impl State {
    fn label(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down => "down",
        }
    }
}

/// The decisions of the watcher, apart from probing and running commands (so they can be
/// tested on their own): feed it each probe's result and the time, and it says which command
/// to run, if any.
#[derive(Debug)]
pub struct Decider {
    rise: u32,
    reassert: Option<Duration>,
    good_in_row: u32,
    asserted: Option<State>,
    last_run: Option<Instant>,
    last_failed: bool,
}

impl Decider {
    pub fn new(rise: u32, reassert: Option<Duration>) -> Decider {
        Decider {
            rise: rise.max(1),
            reassert,
            good_in_row: 0,
            asserted: None,
            last_run: None,
            last_failed: false,
        }
    }

    /// The state that one more probe result leads to, and whether its command is due now.
    pub fn on_probe(&mut self, healthy: bool, now: Instant) -> Option<State> {
        self.good_in_row = if healthy {
            self.good_in_row.saturating_add(1)
        } else {
            0
        };
        let want = if !healthy {
            State::Down
        } else if self.good_in_row >= self.rise || self.asserted == Some(State::Up) {
            State::Up
        } else {
            // Healthy, but not for long enough: stay down (assert it at start).
            State::Down
        };
        let stale = match (self.reassert, self.last_run) {
            (Some(every), Some(at)) => now.duration_since(at) >= every,
            _ => false,
        };
        (self.asserted != Some(want) || stale || self.last_failed).then_some(want)
    }

    /// Record that the command for `state` ran (and whether it succeeded).
    pub fn ran(&mut self, state: State, ok: bool, now: Instant) {
        self.asserted = Some(state);
        self.last_run = Some(now);
        self.last_failed = !ok;
    }

    pub fn asserted(&self) -> Option<State> {
        self.asserted
    }
}

/// Run `cmd` through `/bin/sh -c`, killing it after `timeout`. Ok(status) or why it failed.
pub fn run_command(cmd: &str, timeout: Duration) -> Result<ExitStatus, String> {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("starting /bin/sh: {e}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("killed after {} ms", timeout.as_millis()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("waiting for /bin/sh: {e}")),
        }
    }
}

/// SIGTERM and SIGINT, blocked so the loop can wait for them between probes.
struct Signals(libc::sigset_t);

impl Signals {
    fn block() -> Result<Signals, WatchError> {
        // SAFETY: sigemptyset/sigaddset fill a sigset_t we own; pthread_sigmask only reads it.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(WatchError::Signals(std::io::Error::from_raw_os_error(rc)));
            }
            Ok(Signals(set))
        }
    }

    /// Sleep up to `timeout`; true if a stop signal came.
    fn wait(&self, timeout: Duration) -> bool {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        // SAFETY: the set is initialised; a null siginfo pointer is allowed.
        let s = unsafe { libc::sigtimedwait(&self.0, std::ptr::null_mut(), &ts) };
        s == libc::SIGTERM || s == libc::SIGINT
    }
}

/// Run the watcher until SIGTERM or SIGINT, then withdraw and return.
pub fn run(args: &WatchArgs) -> Result<(), WatchError> {
    let target = Target::parse(&args.healthz).map_err(|reason| WatchError::Url {
        url: args.healthz.clone(),
        reason,
    })?;
    let signals = Signals::block()?;
    let interval = Duration::from_millis(args.interval_ms);
    let timeout = Duration::from_millis(args.timeout_ms.unwrap_or(args.interval_ms));
    let cmd_timeout = Duration::from_millis(args.command_timeout_ms);
    let reassert = (args.reassert_ms > 0).then(|| Duration::from_millis(args.reassert_ms));
    let mut decider = Decider::new(args.rise, reassert);
    tracing::info!(
        healthz = %args.healthz,
        interval_ms = args.interval_ms,
        timeout_ms = timeout.as_millis() as u64,
        rise = args.rise,
        "anycast watch started"
    );
    let mut next = Instant::now();
    let mut last_reason = String::new();
    loop {
        let result = probe(&target, timeout);
        let now = Instant::now();
        if let Err(why) = &result {
            if *why != last_reason {
                tracing::warn!(healthz = %args.healthz, reason = %why, "healthz down");
            }
            last_reason = why.clone();
        } else {
            last_reason.clear();
        }
        if let Some(state) = decider.on_probe(result.is_ok(), now) {
            let changed = decider.asserted() != Some(state);
            let ok = execute(args, state, cmd_timeout, changed);
            decider.ran(state, ok, now);
        }
        next += interval;
        let now = Instant::now();
        if next < now {
            next = now; // a slow probe or command: don't try to catch up
        }
        if signals.wait(next - now) {
            tracing::info!("anycast watch stopping: running the down command");
            execute(args, State::Down, cmd_timeout, true);
            return Ok(());
        }
    }
}

/// Run the command for `state`; true if it exited 0.
fn execute(args: &WatchArgs, state: State, timeout: Duration, changed: bool) -> bool {
    let cmd = match state {
        State::Up => &args.up,
        State::Down => &args.down,
    };
    let result = run_command(cmd, timeout);
    let ok = matches!(&result, Ok(s) if s.success());
    let outcome = match &result {
        Ok(s) => s.to_string(),
        Err(e) => e.clone(),
    };
    if !ok {
        tracing::warn!(state = state.label(), command = %cmd, outcome = %outcome, "anycast command failed");
    } else if changed {
        tracing::info!(state = state.label(), command = %cmd, "anycast state asserted");
    } else {
        tracing::debug!(state = state.label(), "anycast state re-asserted");
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = Target::parse("http://127.0.0.1:9586/healthz").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 9586, "/healthz")
        );
        let t = Target::parse("http://[::1]:80/x").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.host_header().as_str()),
            ("::1", 80, "[::1]:80")
        );
        let t = Target::parse("http://localhost").unwrap();
        assert_eq!((t.port, t.path.as_str()), (80, "/"));
        for bad in [
            "https://a/",
            "http://",
            "http://a:0/",
            "http://a:x/",
            "http://[::1/",
            "ftp://a",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            status_code(b"HTTP/1.0 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_code(b"HTTP/1.1 20"), None);
        assert_eq!(status_code(b""), None);
    }

    #[test]
    fn down_at_once_up_after_rise_reassert_and_retry() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut d = Decider::new(3, Some(Duration::from_millis(1000)));
        // Start: healthy once is not enough; down is asserted first.
        assert_eq!(d.on_probe(true, ms(0)), Some(State::Down));
        d.ran(State::Down, true, ms(0));
        assert_eq!(d.on_probe(true, ms(200)), None);
        assert_eq!(d.on_probe(true, ms(400)), Some(State::Up));
        d.ran(State::Up, true, ms(400));
        assert_eq!(d.on_probe(true, ms(600)), None);
        // Re-asserted once the interval passed.
        assert_eq!(d.on_probe(true, ms(1400)), Some(State::Up));
        d.ran(State::Up, true, ms(1400));
        // One bad probe: down at once.
        assert_eq!(d.on_probe(false, ms(1600)), Some(State::Down));
        d.ran(State::Down, false, ms(1600));
        // The command failed: retried at the next probe.
        assert_eq!(d.on_probe(false, ms(1800)), Some(State::Down));
        d.ran(State::Down, true, ms(1800));
        assert_eq!(d.on_probe(false, ms(2000)), None);
        // A flap (good, bad) resets the count.
        assert_eq!(d.on_probe(true, ms(2200)), None);
        assert_eq!(d.on_probe(true, ms(2400)), None);
        assert_eq!(d.on_probe(false, ms(2600)), None);
        // 1000 ms since the last command: re-asserted (still down: one good probe).
        assert_eq!(d.on_probe(true, ms(2800)), Some(State::Down));
        d.ran(State::Down, true, ms(2800));
        assert_eq!(d.on_probe(true, ms(3000)), None);
        assert_eq!(d.on_probe(true, ms(3200)), Some(State::Up));
    }

    #[test]
    fn commands_report_status_and_time_out() {
        let s = run_command("exit 3", Duration::from_secs(10)).unwrap();
        assert_eq!(s.code(), Some(3));
        let e = run_command("sleep 5", Duration::from_millis(50)).unwrap_err();
        assert!(e.contains("killed"), "{e}");
    }
}
