//! Everything the test bed has created and not yet removed, process-wide.
//!
//! The RAII guards ([`Netns`](super::Netns), [`Daemon`](super::Daemon),
//! [`RunDir`](super::RunDir)) remove what they made when dropped, which covers normal ends and
//! panics. A signal ends a process without unwinding, so a program that wants Ctrl-C to clean
//! up too (the lab) calls [`cleanup_all`] from its signal handler thread; the guards then find
//! nothing left to do. Every operation here is idempotent.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct Registry {
    namespaces: Vec<String>,
    /// Processes to stop, with the files (UAPI sockets) to remove once they are gone.
    pids: Vec<(u32, Vec<PathBuf>)>,
    dirs: Vec<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    namespaces: Vec::new(),
    pids: Vec::new(),
    dirs: Vec::new(),
});

fn registry() -> MutexGuard<'static, Registry> {
    // A panic while holding the lock leaves plain lists behind: still usable.
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn add_netns(name: &str) {
    registry().namespaces.push(name.to_string());
}

pub(crate) fn forget_netns(name: &str) {
    registry().namespaces.retain(|n| n != name);
}

pub(crate) fn add_pid(pid: u32, files: Vec<PathBuf>) {
    registry().pids.push((pid, files));
}

pub(crate) fn forget_pid(pid: u32) {
    registry().pids.retain(|(p, _)| *p != pid);
}

pub(crate) fn add_dir(path: &Path) {
    registry().dirs.push(path.to_path_buf());
}

pub(crate) fn forget_dir(path: &Path) {
    registry().dirs.retain(|d| d != path);
}

/// What the registry currently holds: (namespaces, pids, folders).
pub fn snapshot() -> (Vec<String>, Vec<u32>, Vec<PathBuf>) {
    let r = registry();
    (
        r.namespaces.clone(),
        r.pids.iter().map(|(p, _)| *p).collect(),
        r.dirs.clone(),
    )
}

/// Stop every registered process (SIGTERM, then SIGKILL after 3 s), delete every registered
/// namespace (which removes the veths in it), remove every registered folder. Returns one line
/// per thing removed. Safe to call from a signal-handling thread while guards still exist.
pub fn cleanup_all() -> Vec<String> {
    let (namespaces, pids, dirs) = {
        let mut r = registry();
        (
            std::mem::take(&mut r.namespaces),
            std::mem::take(&mut r.pids),
            std::mem::take(&mut r.dirs),
        )
    };
    let mut done = Vec::new();
    for (pid, _) in &pids {
        signal(*pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    for (pid, files) in &pids {
        while alive(*pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if alive(*pid) {
            signal(*pid, libc::SIGKILL);
        }
        for f in files {
            let _ = std::fs::remove_file(f);
        }
        done.push(format!("stopped process {pid}"));
    }
    for ns in namespaces.iter().rev() {
        let ok = std::process::Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            done.push(format!("deleted namespace {ns}"));
        }
    }
    for d in dirs {
        if std::fs::remove_dir_all(&d).is_ok() {
            done.push(format!("removed {}", d.display()));
        }
    }
    done
}

/// Send `sig` to `pid` (ignoring errors: it may be gone already).
pub fn signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid <= 0 {
        return; // never signal a process group or everything
    }
    // SAFETY: kill(2) with a positive pid only sends a signal; it touches no memory of ours.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// True if `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name: "pid (comm) S ...".
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}
