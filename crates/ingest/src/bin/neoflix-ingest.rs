//! `neoflix-ingest --config FILE`: the department server.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

/// Neoflix department server: receives sealed recordings from room boxes over mutual TLS.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Configuration file.
    #[arg(long, short, default_value = "/etc/neoflix/neoflix-ingest.toml")]
    config: PathBuf,
}

fn main() -> ExitCode {
    neoflix_logging::init("neoflix-ingest");
    let args = Args::parse();
    let cfg = match neoflix_ingest::IngestConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("neoflix-ingest: refusing to start: {e:#}");
            return ExitCode::from(2);
        }
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|rt| {
            rt.block_on(async {
                let listener = neoflix_ingest::bind(&cfg).await?;
                neoflix_ingest::run(cfg, listener, neoflix_logging::shutdown_signal()).await
            })
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            eprintln!("neoflix-ingest: {e:#}");
            ExitCode::FAILURE
        }
    }
}
