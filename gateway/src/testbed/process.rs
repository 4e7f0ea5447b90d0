//! Long-running children (WireGuard daemons, the gateway, iperf3 servers), stopped on drop.

use super::{cmd, registry, tail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a stopped process gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// A child process whose stdout and stderr go to a log file. Dropping it sends SIGTERM, waits
/// up to [`STOP_GRACE`], then SIGKILLs it, and removes the files it was registered with.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    child: Option<Child>,
    pid: u32,
    log: PathBuf,
    files: Vec<PathBuf>,
    exit: Option<ExitStatus>,
    detached: bool,
}

impl Daemon {
    /// Start `cmd` with stdout and stderr appended to `log`. `name` is for messages; `files`
    /// are removed after the process is gone (e.g. a UAPI socket left by a SIGKILL).
    pub fn spawn(name: &str, mut cmd: Command, log: &Path, files: Vec<PathBuf>) -> Result<Daemon> {
        let what = cmd::describe(&cmd);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .ctx(|| format!("opening log {}", log.display()))?;
        let errf = out.try_clone().ctx(|| "duplicating log handle")?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(errf)
            .spawn()
            .ctx(|| format!("starting {name}: `{what}`"))?;
        let pid = child.id();
        registry::add_pid(pid, files.clone());
        if let Some(dir) = log.parent() {
            registry::record_process(dir, pid, &files);
        }
        Ok(Daemon {
            name: name.to_string(),
            child: Some(child),
            pid,
            log: log.to_path_buf(),
            files,
            exit: None,
            detached: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// Its exit status if it has exited (reaping it), else `None`.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(s)) = c.try_wait() {
                    self.exit = Some(s);
                    registry::forget_pid(self.pid);
                }
            }
        }
        self.exit
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_exit().is_none()
    }

    /// Fail with its log if it has exited: for checks while waiting for it to come up.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.try_exit() {
            None => Ok(()),
            Some(s) => Err(err!(
                "{} exited early ({s}); its log {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail(40)
            )),
        }
    }

    /// Send a signal (e.g. `libc::SIGTERM`) if it is still running.
    pub fn signal(&mut self, sig: libc::c_int) {
        if self.is_running() {
            registry::signal(self.pid, sig);
        }
    }

    /// Wait up to `timeout` for it to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_exit() {
                return Some(s);
            }
            if self.child.is_none() || start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. Returns the exit status and whether it
    /// needed the SIGKILL.
    pub fn stop(&mut self, grace: Duration) -> (Option<ExitStatus>, bool) {
        self.stop_with(libc::SIGTERM, grace)
    }

    /// [`Daemon::stop`] with another first signal (e.g. `libc::SIGINT`).
    pub fn stop_with(&mut self, sig: libc::c_int, grace: Duration) -> (Option<ExitStatus>, bool) {
        if let Some(s) = self.try_exit() {
            self.remove_files();
            return (Some(s), false);
        }
        if self.child.is_none() {
            return (None, false);
        }
        registry::signal(self.pid, sig);
        if let Some(s) = self.wait_timeout(grace) {
            self.remove_files();
            return (Some(s), false);
        }
        let s = self.child.as_mut().and_then(|c| {
            let _ = c.kill();
            c.wait().ok()
        });
        self.exit = s;
        registry::forget_pid(self.pid);
        self.remove_files();
        (s, true)
    }

    /// Leave it running when dropped (for `--keep`).
    pub fn detach(&mut self) {
        self.detached = true;
        registry::forget_pid(self.pid);
    }

    fn remove_files(&self) {
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if !self.detached {
            self.stop(STOP_GRACE);
        }
    }
}
