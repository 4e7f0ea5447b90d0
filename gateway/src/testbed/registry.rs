//! Everything the test bed has created and not yet removed, process-wide.
//!
//! The RAII guards ([`Netns`](super::Netns), [`Daemon`](super::Daemon),
//! [`RunDir`](super::RunDir)) remove what they made when dropped, which covers normal ends and
//! panics. A signal ends a process without unwinding, so a program that wants Ctrl-C to clean
//! up too (the lab) calls [`cleanup_all`] from its signal handler thread; the guards then find
//! nothing left to do. Every operation here is idempotent.
//!
//! A SIGKILL (a CI timeout, a killed `cargo test`) runs neither guards nor handlers. For that,
//! every run folder records its owner and the processes started for it (`record_owner`,
//! `record_process`), and [`cleanup_stale`] removes what runs whose owner is gone left
//! behind: processes, namespaces `sl-ID-*`, UAPI sockets, the folder.

use std::io::Write as _;
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

/// A process's start time (clock ticks since boot, field 22 of `/proc/PID/stat`), which
/// together with the pid names a process even after the pid is reused.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // After "pid (comm)": state is field 3, so starttime (22) is the 20th here.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// True if `pid` is alive and is still the process that started at `start`.
fn same_process(pid: u32, start: u64) -> bool {
    alive(pid) && start_time(pid) == Some(start)
}

/// Record this process as the owner of run folder `dir` (file `owner`).
pub(crate) fn record_owner(dir: &Path) {
    let me = std::process::id();
    let line = format!("{me} {}\n", start_time(me).unwrap_or(0));
    // Written whole or not at all (a rename): a concurrent `cleanup_stale` must never read a
    // half-written owner, take it for a dead one and remove a live run.
    let tmp = dir.join("owner.tmp");
    if std::fs::write(&tmp, line).is_ok() {
        let _ = std::fs::rename(&tmp, dir.join("owner"));
    }
}

/// Record a process started for run folder `dir`, and files to remove once it is gone.
pub(crate) fn record_process(dir: &Path, pid: u32, files: &[PathBuf]) {
    if !dir.join("owner").exists() {
        return;
    }
    let mut text = format!("pid {pid} {}\n", start_time(pid).unwrap_or(0));
    for f in files {
        text += &format!("file {}\n", f.display());
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("processes"))
    {
        let _ = f.write_all(text.as_bytes());
    }
}

/// Mark run folder `dir` as deliberately kept (`--keep`): [`cleanup_stale`] leaves it alone.
pub(crate) fn record_kept(dir: &Path) {
    let _ = std::fs::write(dir.join("kept"), "");
}

/// Remove what earlier runs left behind when they were killed outright: for every
/// `sluice-testbed-ID` folder in the temp directory whose owner process is gone (and which was
/// not kept on purpose), kill the processes it recorded, delete the namespaces `sl-ID-*`,
/// remove the recorded files and the folder. Runs whose owner is alive are never touched.
/// Returns one line per thing removed.
pub fn cleanup_stale() -> Vec<String> {
    let mut done = Vec::new();
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return done;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_prefix("sluice-testbed-") else {
            continue;
        };
        let dir = e.path();
        let Ok(owner) = std::fs::read_to_string(dir.join("owner")) else {
            continue; // not ours, or too old to say
        };
        let mut it = owner.split_whitespace().map(|x| x.parse::<u64>().ok());
        let (Some(Some(pid)), Some(Some(start))) = (it.next(), it.next()) else {
            continue; // no owner we can judge: leave it alone
        };
        if pid == 0 || dir.join("kept").exists() || same_process(pid as u32, start) {
            continue;
        }
        let procs = std::fs::read_to_string(dir.join("processes")).unwrap_or_default();
        let mut files = Vec::new();
        for line in procs.lines() {
            let mut f = line.split_whitespace();
            match (f.next(), f.next(), f.next()) {
                (Some("pid"), Some(p), Some(st)) => {
                    let (p, st) = (p.parse().unwrap_or(0), st.parse().unwrap_or(u64::MAX));
                    if p > 0 && same_process(p, st) {
                        signal(p, libc::SIGKILL);
                        done.push(format!("killed leftover process {p}"));
                    }
                }
                (Some("file"), Some(path), _) => files.push(PathBuf::from(path)),
                _ => {}
            }
        }
        if let Ok(nss) = std::fs::read_dir("/var/run/netns") {
            let prefix = format!("sl-{id}-");
            for ns in nss.flatten() {
                let n = ns.file_name().to_string_lossy().into_owned();
                if n.starts_with(&prefix) {
                    let ok = std::process::Command::new("ip")
                        .args(["netns", "del", &n])
                        .stderr(std::process::Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success());
                    if ok {
                        done.push(format!("deleted leftover namespace {n}"));
                    }
                }
            }
        }
        for f in files {
            let _ = std::fs::remove_file(f);
        }
        if std::fs::remove_dir_all(&dir).is_ok() {
            done.push(format!("removed leftover {}", dir.display()));
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testbed::unique_id;

    /// A run folder whose owner file is empty or half-written (as a reader can see it while
    /// it is being written) is not taken for a dead run; one whose owner is gone is removed.
    #[test]
    fn cleanup_leaves_unreadable_owners_alone_and_removes_dead_ones() {
        let base = std::env::temp_dir();
        let tag = format!("{}{}", std::process::id(), unique_id());
        let unsure = base.join(format!("sluice-testbed-u{tag}"));
        let dead = base.join(format!("sluice-testbed-d{tag}"));
        let live = base.join(format!("sluice-testbed-l{tag}"));
        for d in [&unsure, &dead, &live] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(unsure.join("owner"), "").unwrap();
        // pid_max is at most 2^22, so this pid cannot be alive.
        std::fs::write(dead.join("owner"), "4294967 1\n").unwrap();
        record_owner(&live);
        assert!(!live.join("owner.tmp").exists());
        cleanup_stale();
        let (u, d, l) = (unsure.exists(), dead.exists(), live.exists());
        for x in [&unsure, &dead, &live] {
            let _ = std::fs::remove_dir_all(x);
        }
        assert_eq!((u, d, l), (true, false, true));
    }
}
