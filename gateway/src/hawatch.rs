//! `sluice ha watch`: the anycast health watcher. It polls `/healthz` and runs one command when
//! the gateway becomes healthy (announce the anycast addresses, e.g. `birdc enable ...`) and
//! another when it stops being healthy (withdraw them), so the routers stop sending users to a
//! member that cannot serve them.
//!
//! - **Down is fast, up is careful.** A definite failure (connection refused: sluice is not
//!   running; a status other than 200: sluice says it is unhealthy; a garbled reply) runs the
//!   down command at once. No answer within the timeout is only suspicion: `fall` such probes
//!   in a row (default 2) run it, so one answer delayed by a busy machine does not withdraw a
//!   healthy member (and move all its users). `rise` good probes in a row (default 3) run the
//!   up command. With the defaults (200 ms interval, 300 ms timeout), a stopped or unhealthy
//!   sluice is withdrawn within about 0.2 s and a hung one within about 0.8 s, plus the
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
    /// How long one probe may wait for the answer, in milliseconds.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub timeout_ms: u64,
    /// Probes in a row with no answer in time before the down command runs (a refused
    /// connection or a status other than 200 runs it at once).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub fall: u32,
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

/// Why a probe did not find the gateway healthy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// A definite answer: refused, a status other than 200, a garbled reply, an I/O error.
    Down(String),
    /// No answer within the timeout: the gateway may be hung, or the machine just busy.
    Silent(String),
}

impl Failure {
    fn silent(timeout: Duration) -> Failure {
        Failure::Silent(format!("no answer within {} ms", timeout.as_millis()))
    }

    fn io(e: &std::io::Error, timeout: Duration) -> Failure {
        if is_timeout(e) {
            Failure::silent(timeout)
        } else {
            Failure::Down(e.to_string())
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Down(why) | Failure::Silent(why) => f.write_str(why),
        }
    }
}

/// One probe's answer: `Ok(())` for a 200, else why it counts as down.
pub fn probe(target: &Target, timeout: Duration) -> Result<(), Failure> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| Failure::silent(timeout))
    };
    let addrs = target
        .addrs()
        .map_err(|e| Failure::Down(format!("resolving {}: {e}", target.host)))?;
    let addr = addrs
        .first()
        .ok_or_else(|| Failure::Down("the host resolves to nothing".into()))?;
    let mut s = TcpStream::connect_timeout(addr, left()?).map_err(|e| Failure::io(&e, timeout))?;
    s.set_write_timeout(Some(left()?))
        .map_err(|e| Failure::Down(e.to_string()))?;
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        target.path,
        target.host_header()
    );
    s.write_all(req.as_bytes())
        .map_err(|e| Failure::io(&e, timeout))?;
    // The status line is all we need; read until its end (or 1 KiB).
    let mut buf = [0u8; 1024];
    let mut got = 0;
    while !buf[..got].contains(&b'\n') && got < buf.len() {
        s.set_read_timeout(Some(left()?))
            .map_err(|e| Failure::Down(e.to_string()))?;
        match s.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Failure::io(&e, timeout)),
        }
    }
    match status_code(&buf[..got]) {
        Some(200) => Ok(()),
        Some(code) => Err(Failure::Down(format!("status {code}"))),
        None => Err(Failure::Down("not an HTTP reply".into())),
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

/// One probe's result, as the [`Decider`] weighs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// 200.
    Good,
    /// A definite failure ([`Failure::Down`]).
    Down,
    /// No answer in time ([`Failure::Silent`]).
    Silent,
}

impl Probe {
    pub fn of(result: &Result<(), Failure>) -> Probe {
        match result {
            Ok(()) => Probe::Good,
            Err(Failure::Down(_)) => Probe::Down,
            Err(Failure::Silent(_)) => Probe::Silent,
        }
    }
}

/// The decisions of the watcher, apart from probing and running commands (so they can be
/// tested on their own): feed it each probe's result and the time, and it says which command
/// to run, if any.
#[derive(Debug)]
pub struct Decider {
    rise: u32,
    fall: u32,
    reassert: Option<Duration>,
    good_in_row: u32,
    silent_in_row: u32,
    asserted: Option<State>,
    last_run: Option<Instant>,
    last_failed: bool,
}

impl Decider {
    pub fn new(rise: u32, fall: u32, reassert: Option<Duration>) -> Decider {
        Decider {
            rise: rise.max(1),
            fall: fall.max(1),
            reassert,
            good_in_row: 0,
            silent_in_row: 0,
            asserted: None,
            last_run: None,
            last_failed: false,
        }
    }

    /// The state that one more probe result leads to, and whether its command is due now.
    pub fn on_probe(&mut self, probe: Probe, now: Instant) -> Option<State> {
        let healthy = probe == Probe::Good;
        self.good_in_row = if healthy {
            self.good_in_row.saturating_add(1)
        } else {
            0
        };
        self.silent_in_row = if probe == Probe::Silent {
            self.silent_in_row.saturating_add(1)
        } else {
            0
        };
        let want = if probe == Probe::Down || self.silent_in_row >= self.fall {
            State::Down
        } else if probe == Probe::Silent {
            // Suspicion only: keep what is asserted (down at start).
            self.asserted.unwrap_or(State::Down)
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
    let timeout = Duration::from_millis(args.timeout_ms);
    let cmd_timeout = Duration::from_millis(args.command_timeout_ms);
    let reassert = (args.reassert_ms > 0).then(|| Duration::from_millis(args.reassert_ms));
    let mut decider = Decider::new(args.rise, args.fall, reassert);
    tracing::info!(
        healthz = %args.healthz,
        interval_ms = args.interval_ms,
        timeout_ms = timeout.as_millis() as u64,
        rise = args.rise,
        fall = args.fall,
        "anycast watch started"
    );
    let mut next = Instant::now();
    let mut last_reason = String::new();
    loop {
        let started = Instant::now();
        let result = probe(&target, timeout);
        let now = Instant::now();
        match &result {
            Err(why) => {
                let why = why.to_string();
                if why != last_reason {
                    tracing::warn!(healthz = %args.healthz, reason = %why, "healthz down");
                }
                last_reason = why;
            }
            Ok(()) => {
                last_reason.clear();
                let took = now.duration_since(started);
                if took > timeout / 2 {
                    tracing::info!(took_ms = took.as_millis() as u64, "healthz answered slowly");
                }
            }
        }
        if let Some(state) = decider.on_probe(Probe::of(&result), now) {
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
        use Probe::{Down, Good};
        let mut d = Decider::new(3, 2, Some(Duration::from_millis(1000)));
        // Start: healthy once is not enough; down is asserted first.
        assert_eq!(d.on_probe(Good, ms(0)), Some(State::Down));
        d.ran(State::Down, true, ms(0));
        assert_eq!(d.on_probe(Good, ms(200)), None);
        assert_eq!(d.on_probe(Good, ms(400)), Some(State::Up));
        d.ran(State::Up, true, ms(400));
        assert_eq!(d.on_probe(Good, ms(600)), None);
        // Re-asserted once the interval passed.
        assert_eq!(d.on_probe(Good, ms(1400)), Some(State::Up));
        d.ran(State::Up, true, ms(1400));
        // One bad probe: down at once.
        assert_eq!(d.on_probe(Down, ms(1600)), Some(State::Down));
        d.ran(State::Down, false, ms(1600));
        // The command failed: retried at the next probe.
        assert_eq!(d.on_probe(Down, ms(1800)), Some(State::Down));
        d.ran(State::Down, true, ms(1800));
        assert_eq!(d.on_probe(Down, ms(2000)), None);
        // A flap (good, bad) resets the count.
        assert_eq!(d.on_probe(Good, ms(2200)), None);
        assert_eq!(d.on_probe(Good, ms(2400)), None);
        assert_eq!(d.on_probe(Down, ms(2600)), None);
        // 1000 ms since the last command: re-asserted (still down: one good probe).
        assert_eq!(d.on_probe(Good, ms(2800)), Some(State::Down));
        d.ran(State::Down, true, ms(2800));
        assert_eq!(d.on_probe(Good, ms(3000)), None);
        assert_eq!(d.on_probe(Good, ms(3200)), Some(State::Up));
    }

    #[test]
    fn silence_withdraws_only_after_fall_in_a_row() {
        use Probe::{Down, Good, Silent};
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut d = Decider::new(2, 2, None);
        // At start, silence asserts down like anything that is not good.
        assert_eq!(d.on_probe(Silent, ms(0)), Some(State::Down));
        d.ran(State::Down, true, ms(0));
        // Silence resets the rise count.
        assert_eq!(d.on_probe(Good, ms(200)), None);
        assert_eq!(d.on_probe(Silent, ms(400)), None);
        assert_eq!(d.on_probe(Good, ms(600)), None);
        assert_eq!(d.on_probe(Good, ms(800)), Some(State::Up));
        d.ran(State::Up, true, ms(800));
        // One late answer keeps the member up; a good one clears the suspicion.
        assert_eq!(d.on_probe(Silent, ms(1000)), None);
        assert_eq!(d.on_probe(Good, ms(1200)), None);
        assert_eq!(d.on_probe(Silent, ms(1400)), None);
        // The second silent probe in a row withdraws.
        assert_eq!(d.on_probe(Silent, ms(1600)), Some(State::Down));
        d.ran(State::Down, true, ms(1600));
        assert_eq!(d.on_probe(Silent, ms(1800)), None);
        // A definite failure after a good probe still withdraws at once.
        let mut d = Decider::new(1, 3, None);
        assert_eq!(d.on_probe(Good, ms(0)), Some(State::Up));
        d.ran(State::Up, true, ms(0));
        assert_eq!(d.on_probe(Silent, ms(200)), None);
        assert_eq!(d.on_probe(Down, ms(400)), Some(State::Down));
    }

    #[test]
    fn probe_classifies_refused_and_silent_servers() {
        // Nothing listens: refused, a definite failure.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        let t = Target::parse(&format!("http://127.0.0.1:{port}/healthz")).unwrap();
        let r = probe(&t, Duration::from_millis(500));
        assert!(matches!(r, Err(Failure::Down(_))), "{r:?}");
        // A listener that accepts and never answers: silent.
        let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = mute.local_addr().unwrap().port();
        let t = Target::parse(&format!("http://127.0.0.1:{port}/healthz")).unwrap();
        let r = probe(&t, Duration::from_millis(100));
        assert!(matches!(r, Err(Failure::Silent(_))), "{r:?}");
        // One that answers 503: down.
        let sick = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = sick.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut c, _) = sick.accept().unwrap();
            let mut buf = [0u8; 512];
            let _ = c.read(&mut buf);
            c.write_all(b"HTTP/1.1 503 Service Unavailable\r\n\r\n")
                .unwrap();
        });
        let t = Target::parse(&format!("http://127.0.0.1:{port}/healthz")).unwrap();
        let r = probe(&t, Duration::from_secs(5));
        assert_eq!(r, Err(Failure::Down("status 503".into())));
        server.join().unwrap();
    }

    #[test]
    fn commands_report_status_and_time_out() {
        let s = run_command("exit 3", Duration::from_secs(10)).unwrap();
        assert_eq!(s.code(), Some(3));
        let e = run_command("sleep 5", Duration::from_millis(50)).unwrap_err();
        assert!(e.contains("killed"), "{e}");
    }
}
