//! The `sluice` command: the gateway daemon and its key tools.

use clap::{Parser, Subcommand};
use sluice::config::{self, Config};
use sluice::datapath::{self, RunOptions};
use sluice::keys::{self, KEY_LEN};
use sluice::log;
use sluice::OsRng;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use zeroize::Zeroizing;

#[derive(Parser, Debug)]
#[command(name = "sluice", version, about = "A WireGuard VPN concentrator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway in the foreground until SIGINT or SIGTERM.
    Up {
        /// The gateway configuration (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Rewrite a JSON status snapshot here about once a second.
        #[arg(long)]
        status_file: Option<PathBuf>,
    },
    /// Show a running interface as `wg show` does (all running sluice interfaces if none named).
    Show {
        /// The interface name (`[interface] name`).
        name: Option<String>,
    },
    /// Validate a configuration without starting anything.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print a new private key (base64), as `wg genkey` does.
    Genkey,
    /// Read a private key on stdin, print its public key, as `wg pubkey` does.
    Pubkey,
    /// Print a new preshared key (base64), as `wg genpsk` does.
    Genpsk,
    /// High availability: role control and the anycast health watcher.
    Ha {
        #[command(subcommand)]
        command: HaCommand,
    },
}

#[derive(Subcommand, Debug)]
enum HaCommand {
    /// Anycast: poll /healthz, run --up when healthy and --down (within one interval) when not.
    Watch(sluice::hawatch::WatchArgs),
    /// Tell the running gateway its VRRP role: `notify --config FILE master|backup|fault`, or
    /// keepalived's generic form `notify --config FILE TYPE NAME STATE [PRIORITY]`.
    Notify {
        #[arg(long, short)]
        config: PathBuf,
        /// STATE, or TYPE NAME STATE [PRIORITY] as keepalived passes them.
        #[arg(required = true, num_args = 1..=4)]
        args: Vec<String>,
    },
    /// Print the running gateway's HA state (one JSON line from its control socket).
    Status {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up {
            config,
            status_file,
        } => up(&config, status_file),
        Command::Check { config } => check(&config),
        Command::Show { name } => show(name),
        Command::Genkey => print_key(&keys::generate_private(&mut OsRng)),
        Command::Genpsk => print_key(&keys::generate_psk(&mut OsRng)),
        Command::Pubkey => pubkey(),
        Command::Ha { command } => match command {
            HaCommand::Watch(args) => ha_watch(&args),
            other => ha_control(other),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_key(key: &[u8; KEY_LEN]) -> Result<(), String> {
    let mut out = io::stdout().lock();
    writeln!(out, "{}", keys::encode_key(key)).map_err(|e| format!("writing key: {e}"))
}

fn pubkey() -> Result<(), String> {
    let mut input = Zeroizing::new(String::new());
    io::stdin()
        .take(1024)
        .read_to_string(&mut input)
        .map_err(|e| format!("reading private key from stdin: {e}"))?;
    let private =
        keys::decode_key(&input).map_err(|e| format!("invalid private key on stdin: {e}"))?;
    print_key(&keys::public_from_private(&private))
}

fn ha_watch(args: &sluice::hawatch::WatchArgs) -> Result<(), String> {
    log::init(None).map_err(|e| e.to_string())?;
    sluice::hawatch::run(args).map_err(|e| e.to_string())
}

fn load(path: &Path) -> Result<Config, String> {
    config::load(path).map_err(|e| e.to_string())
}

fn check(path: &Path) -> Result<(), String> {
    let cfg = load(path)?;
    for note in &cfg.notes {
        println!("note: {note}");
    }
    println!(
        "{}: OK: interface {}, {} peers, listen port {}, mode {:?}, {} workers",
        path.display(),
        cfg.name,
        cfg.peers.len(),
        cfg.listen_port,
        cfg.dataplane.mode,
        cfg.dataplane.workers
    );
    if let Some(h) = &cfg.ha {
        let members: Vec<String> = h.members.iter().map(|m| m.to_string()).collect();
        let vips: Vec<String> = h.vips.iter().map(|v| v.to_string()).collect();
        println!(
            "ha: mode {}, node {} of {} ({}), members {}, vips [{}], sync {}, secret {}",
            h.mode.label(),
            h.node,
            h.members.len(),
            h.own_address(),
            members.join(" "),
            vips.join(" "),
            if h.sync { "on" } else { "off" },
            h.secret_file.display()
        );
    }
    Ok(())
}

fn up(path: &Path, status_file: Option<PathBuf>) -> Result<(), String> {
    let cfg = load(path)?;
    log::init(cfg.log_level.as_deref()).map_err(|e| e.to_string())?;
    for note in &cfg.notes {
        log::info(&format!("note: {note}"));
    }
    datapath::run(&cfg, &RunOptions { status_file }).map_err(|e| e.to_string())
}

/// keepalived passes `TYPE NAME STATE PRIORITY` to a generic notify script; a bare state works
/// too.
fn notify_state(args: &[String]) -> Result<&str, String> {
    match args {
        [state] | [_, _, state] | [_, _, state, _] => Ok(state),
        _ => Err(format!(
            "ha notify: expected STATE or TYPE NAME STATE [PRIORITY], got {args:?}"
        )),
    }
}

/// `sluice ha notify` and `sluice ha status`: one request on the control socket.
fn ha_control(command: HaCommand) -> Result<(), String> {
    let (config, request) = match &command {
        HaCommand::Notify { config, args } => {
            let state = notify_state(args)?.to_ascii_lowercase();
            if !["master", "backup", "fault"].contains(&state.as_str()) {
                return Err(format!(
                    "ha notify: unknown state '{state}' (master, backup or fault)"
                ));
            }
            (config, format!("ha-role {state}"))
        }
        HaCommand::Status { config } => (config, "ha-status".to_string()),
        HaCommand::Watch(_) => return Err("ha watch is not a control request".into()),
    };
    let cfg = load(config)?;
    if cfg.ha.is_none() {
        return Err(format!("{}: no [ha] section", config.display()));
    }
    let reply = datapath::control_sock::request(&cfg.name, &request)
        .map_err(|e| format!("{}: {e} (is sluice running?)", cfg.name))?;
    if let Some(why) = reply.strip_prefix("error: ") {
        return Err(format!("{}: {why}", cfg.name));
    }
    println!("{reply}");
    Ok(())
}

/// The `ha:` block of `sluice show`, from the control socket's `ha-status`.
fn format_ha(status: &serde_json::Value) -> String {
    let s = |k: &str| status[k].as_str().unwrap_or("?").to_string();
    let n = |k: &str| status[k].as_u64().unwrap_or(0);
    let ago = |v: &serde_json::Value| {
        v.as_u64().map_or_else(
            || "never".to_string(),
            |ms| format!("{:.1} s ago", ms as f64 / 1000.0),
        )
    };
    let on = |b: bool| if b { "on" } else { "off" };
    let mut out = format!(
        "  ha: {} (sync {})\n    role: {}\n    node: {}\n",
        s("mode"),
        on(status["sync"].as_bool().unwrap_or(false)),
        s("role"),
        n("node")
    );
    for m in status["members"].as_array().into_iter().flatten() {
        let addr = m["address"].as_str().unwrap_or("?");
        if m["self"].as_bool().unwrap_or(false) {
            out.push_str(&format!("    member {} {addr}: this gateway\n", m["node"]));
        } else {
            out.push_str(&format!(
                "    member {} {addr}: last heard {}, epoch {}, sync lag {}\n",
                m["node"],
                ago(&m["last_heard_ms"]),
                m["epoch"],
                ago(&m["sync_lag_ms"])
            ));
        }
    }
    out.push_str(&format!(
        "    sessions held for others: {}\n    takeovers: {}\n    sync messages: {} sent, {} received; rejected: {} forged, {} replayed, {} malformed\n",
        n("sessions_held"),
        n("takeovers"),
        n("sync_sent"),
        n("sync_received"),
        status["rejected"]["sync_forged"],
        status["rejected"]["sync_replayed"],
        status["rejected"]["sync_malformed"],
    ));
    out
}

fn show(name: Option<String>) -> Result<(), String> {
    let names = match name {
        Some(n) => vec![n],
        None => running_interfaces()?,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut out = Vec::new();
    for n in &names {
        let state = sluice::uapi::client::query(n).map_err(|e| format!("{n}: {e}"))?;
        let mut text = sluice::uapi::client::format_show(n, &state, now);
        if datapath::control_sock::path(n).exists() {
            if let Ok(reply) = datapath::control_sock::request(n, "ha-status") {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&reply) {
                    text.push('\n');
                    text.push_str(&format_ha(&v));
                }
            }
        }
        out.push(text);
    }
    print!("{}", out.join("\n"));
    Ok(())
}

/// Interfaces with a UAPI socket (sluice's, or any userspace WireGuard's).
fn running_interfaces() -> Result<Vec<String>, String> {
    let dir = std::fs::read_dir(sluice::uapi::SOCKET_DIR)
        .map_err(|e| format!("{}: {e} (is sluice running?)", sluice::uapi::SOCKET_DIR))?;
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|s| s.strip_suffix(".sock"))
                .map(String::from)
        })
        .collect();
    names.sort();
    Ok(names)
}
