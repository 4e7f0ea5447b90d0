//! Logs through `tracing`: structured events on stderr, one line each, never per packet.
//!
//! The events an operator acts on carry their facts as fields, so they can be filtered and
//! parsed: `handshake completed` / `handshake failed` (`peer`, the public key in base64 as `wg`
//! prints it, and `endpoint`), `endpoint changed`, `reloaded` / `reload rejected`, `wg set
//! applied`, and `worker started` / `worker stopped` (`role`, `index`). The protocol core
//! (`proto/`) never logs: it hands [`crate::proto::effects::Event`]s to the data path, which
//! logs them here.
//!
//! The level comes from `[log] level` in `gateway.toml` (default `info`), and the environment
//! variable [`LOG_ENV`] overrides it. Both take `RUST_LOG`-style directives: a level (`warn`),
//! or per-module ones (`info,sluice::uapi=debug`).
//!
//! [`info`], [`warn`] and [`error`] emit a plain message, for events without fields.

use tracing_subscriber::EnvFilter;

/// The environment variable that sets the log filter, overriding the configuration.
pub const LOG_ENV: &str = "SLUICE_LOG";
/// The filter when neither the configuration nor [`LOG_ENV`] sets one.
pub const DEFAULT_LEVEL: &str = "info";

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{LOG_ENV}={value:?}: {reason}")]
    Env { value: String, reason: String },
    #[error("log level {value:?}: {reason}")]
    Config { value: String, reason: String },
    #[error("setting up logging: {0}")]
    Init(String),
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Parse a filter: comma-separated directives, each a level (`info`) or `target=level`
/// (`sluice::uapi=debug`), as in `RUST_LOG`. Stricter than `RUST_LOG`: a bare word that is not
/// a level (which `RUST_LOG` would take as a target to log in full) is refused, so a typo in
/// a level cannot silently log everything.
pub fn parse_filter(directives: &str) -> Result<EnvFilter, String> {
    const WANT: &str = "expected a level (off, error, warn, info, debug, trace) or target=level";
    let d = directives.trim();
    if d.is_empty() {
        return Err(format!("empty ({WANT})"));
    }
    for part in d.split(',').map(str::trim) {
        let level = match part.split_once('=') {
            Some((target, level)) if !target.trim().is_empty() => level,
            Some(_) => return Err(format!("{part:?} has no target ({WANT})")),
            None => part,
        };
        if !LEVELS.contains(&level.trim().to_ascii_lowercase().as_str()) {
            return Err(format!("{part:?}: {WANT}"));
        }
    }
    EnvFilter::builder()
        .with_regex(false)
        .parse(d)
        .map_err(|e| format!("{e} ({WANT})"))
}

/// Which filter applies: [`LOG_ENV`] if set and non-empty, else the configured one, else
/// [`DEFAULT_LEVEL`].
pub fn filter(config: Option<&str>) -> Result<EnvFilter, LogError> {
    match std::env::var(LOG_ENV) {
        Ok(v) if !v.trim().is_empty() => parse_filter(&v).map_err(|reason| LogError::Env {
            value: v.clone(),
            reason,
        }),
        _ => {
            let value = config.unwrap_or(DEFAULT_LEVEL);
            parse_filter(value).map_err(|reason| LogError::Config {
                value: value.to_string(),
                reason,
            })
        }
    }
}

/// Send events to stderr from now on, filtered by [`filter`]. Call once, at start.
pub fn init(config: Option<&str>) -> Result<(), LogError> {
    let filter = filter(config)?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init()
        .map_err(|e| LogError::Init(e.to_string()))
}

pub fn info(msg: &str) {
    tracing::info!("{msg}");
}

pub fn warn(msg: &str) {
    tracing::warn!("{msg}");
}

pub fn error(msg: &str) {
    tracing::error!("{msg}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_or_say_why_not() {
        for ok in [
            "info",
            "warn",
            "off",
            "TRACE",
            "info,sluice::uapi=debug",
            "sluice=warn",
        ] {
            assert!(parse_filter(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "  ",
            "loud",
            "info,sluice=verbose",
            "=info",
            "info,,warn",
        ] {
            assert!(parse_filter(bad).is_err(), "{bad:?} accepted");
        }
    }
}
