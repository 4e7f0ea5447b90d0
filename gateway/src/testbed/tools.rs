//! The external programs the test bed drives: finding them, saying how to install the missing
//! ones, and installing them (for the lab).

use super::{cmd, in_ci, is_root, Result};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The boringtun-cli release the test bed is known to work with (builds on Rust 1.95 with
/// `--locked` in about 70 s on 2 cores).
pub const BORINGTUN_CLI_VERSION: &str = "0.7.1";

/// One external program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tool {
    /// `ip` and `ss` (iproute2).
    Iproute2,
    /// `wg` (wireguard-tools).
    Wg,
    WireguardGo,
    BoringtunCli,
    Iperf3,
    /// `sysctl` (procps).
    Sysctl,
    /// keepalived (the VRRP tests and the failover bench).
    Keepalived,
    /// `curl`: keepalived's health check asks `/healthz` with it.
    Curl,
    /// `python3` with `jinja2` (python3-jinja2): renders the `configs/*.j2` templates.
    Jinja2,
}

impl Tool {
    /// Everything the topology, the lab and the interop tests use.
    pub const ALL: [Tool; 6] = [
        Tool::Iproute2,
        Tool::Sysctl,
        Tool::Wg,
        Tool::WireguardGo,
        Tool::BoringtunCli,
        Tool::Iperf3,
    ];

    /// The executable looked for.
    pub fn binary(self) -> &'static str {
        match self {
            Tool::Iproute2 => "ip",
            Tool::Wg => "wg",
            Tool::WireguardGo => "wireguard-go",
            Tool::BoringtunCli => "boringtun-cli",
            Tool::Iperf3 => "iperf3",
            Tool::Sysctl => "sysctl",
            Tool::Keepalived => "keepalived",
            Tool::Curl => "curl",
            Tool::Jinja2 => "python3",
        }
    }

    /// The Debian package that provides it, if it comes from apt.
    pub fn apt_package(self) -> Option<&'static str> {
        match self {
            Tool::Iproute2 => Some("iproute2"),
            Tool::Wg => Some("wireguard-tools"),
            Tool::WireguardGo => Some("wireguard-go"),
            Tool::Iperf3 => Some("iperf3"),
            Tool::Sysctl => Some("procps"),
            Tool::Keepalived => Some("keepalived"),
            Tool::Curl => Some("curl"),
            Tool::Jinja2 => Some("python3-jinja2"),
            Tool::BoringtunCli => None,
        }
    }

    /// Where the executable is: `$PATH`, then `~/.cargo/bin` (where `cargo install` puts it,
    /// which is not always on a root shell's PATH).
    pub fn find(self) -> Option<PathBuf> {
        let path = find_binary(self.binary())?;
        if self == Tool::Jinja2 {
            // python3 alone is not enough: the module must import.
            let ok = Command::new(&path)
                .args(["-c", "import jinja2"])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            return ok.then_some(path);
        }
        Some(path)
    }

    /// The path to run it by: found, or the bare name (so errors name it).
    pub fn path(self) -> PathBuf {
        self.find().unwrap_or_else(|| PathBuf::from(self.binary()))
    }
}

/// Look up an executable on `$PATH` and in `~/.cargo/bin`.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.push(PathBuf::from("/root/.cargo/bin"));
    dirs.into_iter().map(|d| d.join(name)).find(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// The tools in `wanted` that are not installed.
pub fn missing(wanted: &[Tool]) -> Vec<Tool> {
    wanted
        .iter()
        .copied()
        .filter(|t| t.find().is_none())
        .collect()
}

/// The exact shell commands that install `tools` (empty if none).
pub fn install_commands(tools: &[Tool]) -> Vec<String> {
    let apt: Vec<&str> = tools.iter().filter_map(|t| t.apt_package()).collect();
    let mut cmds = Vec::new();
    if !apt.is_empty() {
        cmds.push("apt-get update".to_string());
        cmds.push(format!(
            "apt-get install -y --no-install-recommends {}",
            apt.join(" ")
        ));
    }
    if tools.contains(&Tool::BoringtunCli) {
        cmds.push(format!(
            "cargo install boringtun-cli --version {BORINGTUN_CLI_VERSION} --locked"
        ));
    }
    cmds
}

/// A message naming the missing tools and the commands that install them.
pub fn missing_message(tools: &[Tool]) -> String {
    let names: Vec<&str> = tools.iter().map(|t| t.binary()).collect();
    format!(
        "missing: {}; install with (as root):\n    {}",
        names.join(", "),
        install_commands(tools).join("\n    ")
    )
}

/// Install `tools` with apt-get and cargo, printing each command first. Fails with the
/// commands still to run if any step fails.
pub fn install(tools: &[Tool]) -> Result<()> {
    if tools.is_empty() {
        return Ok(());
    }
    if !is_root() {
        return Err(err!("not root, cannot install; {}", missing_message(tools)));
    }
    let apt: Vec<&str> = tools.iter().filter_map(|t| t.apt_package()).collect();
    if !apt.is_empty() {
        let mut update = Command::new("apt-get");
        update.args(["update", "-qq"]);
        let mut inst = Command::new("apt-get");
        inst.args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&apt)
            .env("DEBIAN_FRONTEND", "noninteractive");
        for c in [update, inst] {
            eprintln!("+ {}", cmd::describe(&c));
            cmd::check(c, Duration::from_secs(600))
                .map_err(|e| err!("{e}\n{}", missing_message(tools)))?;
        }
    }
    if tools.contains(&Tool::BoringtunCli) {
        let cargo = find_binary("cargo").ok_or_else(|| {
            err!(
                "cargo not found, cannot install boringtun-cli; {}",
                missing_message(tools)
            )
        })?;
        let mut c = Command::new(cargo);
        c.args([
            "install",
            "boringtun-cli",
            "--version",
            BORINGTUN_CLI_VERSION,
            "--locked",
        ]);
        eprintln!("+ {} (takes a minute or two)", cmd::describe(&c));
        cmd::check(c, Duration::from_secs(1200))
            .map_err(|e| err!("{e}\n{}", missing_message(tools)))?;
    }
    let still = missing(tools);
    if still.is_empty() {
        Ok(())
    } else {
        Err(err!(
            "installed, but still not found: {}",
            missing_message(&still)
        ))
    }
}

/// For tests that need root and `tools`: true if everything is there. Otherwise, under CI
/// (`CI=true`), panic with the reason and the install command (CI never skips); outside CI,
/// print a loud SKIPPED line naming the test and return false.
pub fn require_for_test(test: &str, tools: &[Tool]) -> bool {
    let mut problems = Vec::new();
    if !is_root() {
        problems.push("needs root (network namespaces, TUN devices)".to_string());
    }
    let miss = missing(tools);
    if !miss.is_empty() {
        problems.push(missing_message(&miss));
    }
    if problems.is_empty() {
        return true;
    }
    let why = problems.join("; ");
    if in_ci() {
        panic!("{test}: cannot run under CI: {why}");
    }
    eprintln!("\n*** SKIPPED {test}: {why} ***\n");
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_commands_are_exact() {
        let c = install_commands(&[Tool::Iperf3, Tool::BoringtunCli, Tool::WireguardGo]);
        assert_eq!(
            c,
            vec![
                "apt-get update".to_string(),
                "apt-get install -y --no-install-recommends iperf3 wireguard-go".to_string(),
                format!("cargo install boringtun-cli --version {BORINGTUN_CLI_VERSION} --locked"),
            ]
        );
        assert!(install_commands(&[]).is_empty());
    }

    #[test]
    fn finds_sh_and_not_nonsense() {
        assert!(find_binary("sh").is_some());
        assert!(find_binary("no-such-tool-sluice-xyz").is_none());
    }
}
