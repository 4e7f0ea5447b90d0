//! Running external commands with a time limit and error messages that say what failed.

use super::{Context, Result};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a plain configuration command (`ip`, `wg`, `ss`) may take.
pub const SHORT: Duration = Duration::from_secs(20);

/// `ip netns exec NS program...` when `ns` is given, else `program...`.
pub fn command(ns: Option<&str>, argv: &[&str]) -> Command {
    match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).args(argv);
            c
        }
        None => {
            let mut c = Command::new(argv.first().copied().unwrap_or("true"));
            c.args(argv.iter().skip(1));
            c
        }
    }
}

/// A command line as text, for messages.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Run to completion (killing it after `timeout`), capturing stdout and stderr. The command
/// also dies if the thread waiting for it does (say, the test process is SIGKILLed), so a
/// hung iperf3 client can't outlive its run.
pub fn output(mut cmd: Command, timeout: Duration) -> Result<Output> {
    let what = describe(&cmd);
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which
    // is async-signal-safe and touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ctx(|| format!("starting `{what}`"))?;
    // Read both pipes on threads so a chatty command never blocks on a full pipe.
    let mut out = child.stdout.take();
    let mut errp = child.stderr.take();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_end(&mut v);
        }
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(e) = errp.as_mut() {
            let _ = e.read_to_end(&mut v);
        }
        v
    });
    let start = Instant::now();
    let status: ExitStatus = loop {
        if let Some(s) = child.try_wait().ctx(|| format!("waiting for `{what}`"))? {
            break s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let _ = out_t.join();
            let stderr = err_t.join().unwrap_or_default();
            return Err(err!(
                "`{what}` did not finish within {:.0} s (killed); stderr: {}",
                timeout.as_secs_f64(),
                String::from_utf8_lossy(&stderr).trim()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ok(Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    })
}

/// Run and require success; returns stdout. The error names the command, its exit status and
/// its stderr.
pub fn check(cmd: Command, timeout: Duration) -> Result<String> {
    let what = describe(&cmd);
    let o = output(cmd, timeout)?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(err!(
            "`{what}` failed ({}): {}{}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim(),
            String::from_utf8_lossy(&o.stdout).trim()
        ))
    }
}

/// [`check`] for an argument list, optionally inside namespace `ns`, with the [`SHORT`] limit.
pub fn run(ns: Option<&str>, argv: &[&str]) -> Result<String> {
    check(command(ns, argv), SHORT)
}
