//! `neoflixd --config FILE`: the room daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

/// Neoflix room daemon: records the resuscitation room's camera into sealed recordings.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Configuration file.
    #[arg(long, short, default_value = neoflix_config::DEFAULT_PATH)]
    config: PathBuf,
}

fn main() -> ExitCode {
    neoflix_logging::init("neoflixd");
    let args = Args::parse();
    let (cfg, warnings) = match neoflix_config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            log::error!("{e}");
            eprintln!("neoflixd: refusing to start: {e}");
            return ExitCode::from(2);
        }
    };
    for w in warnings {
        log::warn!("config: {w}");
    }
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|rt| {
            rt.block_on(async {
                // Inside the runtime (the handlers need it) and first, so a stop during
                // start-up waits for the daemon to be up.
                neoflix_daemon::run(cfg, neoflix_logging::shutdown_signal()).await
            })
            .context("neoflixd failed")
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            eprintln!("neoflixd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
