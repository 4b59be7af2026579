//! The `reasonrec` command line: parses arguments, loads configuration, starts telemetry and
//! dispatches to the role crates.
//!
//! Layout:
//! - [`cli`]: the clap definitions (every subcommand and flag).
//! - [`telemetry`]: tracing subscriber (human or JSON, to stderr).
//! - [`signals`]: SIGINT/SIGTERM into a cancellation token; a second signal exits at once.
//! - [`commands`]: one module per subcommand group.

pub mod cli;
pub mod commands;
pub mod signals;
pub mod telemetry;

use clap::Parser;
use std::process::ExitCode;

pub fn main() -> ExitCode {
    let args = cli::Cli::parse();
    // One TLS stack: rustls with ring, installed once for reqwest, lapin and sqlx.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::dispatch(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
