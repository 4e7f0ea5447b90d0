//! The `sluice` command: the gateway daemon and its key tools.

use clap::{Parser, Subcommand};
use sluice::keys::{self, KEY_LEN};
use sluice::OsRng;
use std::io::{self, Read, Write};
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
    /// Print a new private key (base64), as `wg genkey` does.
    Genkey,
    /// Read a private key on stdin, print its public key, as `wg pubkey` does.
    Pubkey,
    /// Print a new preshared key (base64), as `wg genpsk` does.
    Genpsk,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Genkey => print_key(&keys::generate_private(&mut OsRng)),
        Command::Genpsk => print_key(&keys::generate_psk(&mut OsRng)),
        Command::Pubkey => pubkey(),
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
