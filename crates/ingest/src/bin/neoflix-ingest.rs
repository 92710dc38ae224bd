//! `neoflix-ingest --config FILE`: the department server. `--check-config` checks the file (every
//! problem at once, then the TLS files' contents) and exits.
//!
//! Exit codes: 0 success, 1 failure while running, 2 a config that cannot work.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

/// Neoflix department server: receives sealed recordings from room boxes over mutual TLS.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Configuration file.
    #[arg(long, short, default_value = neoflix_ingest::config::DEFAULT_PATH)]
    config: PathBuf,
    /// Check the configuration and the TLS files it names, print every problem, and exit:
    /// 0 when it would start, 2 when not.
    #[arg(long)]
    check_config: bool,
}

fn check_config(path: &std::path::Path) -> ExitCode {
    let (cfg, warnings) = match neoflix_ingest::IngestConfig::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    // The options are right; now what the files hold, as the server reads them at start.
    if let Err(e) = neoflix_ingest::tls::acceptor(&cfg) {
        eprintln!("{}: {e:#}", path.display());
        return ExitCode::from(2);
    }
    println!(
        "{}: config OK{}",
        path.display(),
        match warnings.len() {
            0 => String::new(),
            1 => " (1 warning)".into(),
            n => format!(" ({n} warnings)"),
        }
    );
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.check_config {
        return check_config(&args.config);
    }
    neoflix_logging::init("neoflix-ingest");
    let cfg = match neoflix_ingest::IngestConfig::load(&args.config) {
        Ok((c, warnings)) => {
            for w in warnings {
                log::warn!(option = w.option.as_str(); "{w}");
            }
            c
        }
        Err(e) => {
            eprintln!("neoflix-ingest: refusing to start: {e}");
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
