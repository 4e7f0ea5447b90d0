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
        out.push(sluice::uapi::client::format_show(n, &state, now));
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
