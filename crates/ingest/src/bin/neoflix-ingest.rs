//! `neoflix-ingest --config FILE`: the department server. `--check-config` checks the file (every
//! problem at once, then the TLS files' contents) and exits. The subcommands (`reviewer`,
//! `audit`, `recordings`, `hold`, `purge`, `withdraw`) work on the server's database and
//! storage, also while it runs.
//!
//! Exit codes: 0 success, 1 failure (or a broken audit chain), 2 a config that cannot work.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

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
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Manage the reviewers the review chair enrolled (`neoflix reviewer enrol`).
    Reviewer {
        #[command(subcommand)]
        command: ReviewerCmd,
    },
    /// Print the audit log.
    Audit {
        /// As a JSON array.
        #[arg(long)]
        json: bool,
        /// Recompute the hash chain: name the first entry that does not match (exit 1), print
        /// the head hash.
        #[arg(long)]
        verify: bool,
    },
    /// Apply retention now: delete every recording past `[retention] keep_days` that is not
    /// held (key records first), audited.
    Purge {
        /// Print what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Apply it as at this time (RFC 3339, e.g. 2026-12-01T00:00:00Z) instead of now.
        #[arg(long)]
        now: Option<String>,
    },
    /// Place a legal hold on a recording (kept past its retention date), or release one.
    Hold {
        /// The recording id.
        id: String,
        /// The room box that recorded it (needed when several hold the id, or before it
        /// arrives).
        #[arg(long)]
        device: Option<String>,
        /// Why (for the audit log).
        #[arg(long, required_unless_present = "release")]
        reason: Option<String>,
        /// End the hold.
        #[arg(long)]
        release: bool,
    },
    /// List the recordings the index holds, with their retention date and hold.
    Recordings {
        /// As a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Withdraw a recording: delete it from storage (key records first), forget it, and have
    /// its room box delete its copy when it next asks. The audit log keeps why.
    Withdraw {
        /// The recording id.
        id: String,
        /// The room box that recorded it: needed when several hold the id, or when the server
        /// holds nothing of it yet.
        #[arg(long)]
        device: Option<String>,
        /// Why (for the audit log; no names of patients).
        #[arg(long)]
        reason: String,
    },
    /// Move to the PostgreSQL database `[database] url` names.
    Database {
        #[command(subcommand)]
        command: DatabaseCmd,
    },
}

#[derive(Subcommand)]
enum DatabaseCmd {
    /// Copy a unit's SQLite database (reviewers, the index, holds, consent, the teaching
    /// library, the audit log) into the empty PostgreSQL database of the config. Stop the
    /// server first; sessions are not copied (reviewers sign in again).
    CopyFrom {
        /// The SQLite file, e.g. /var/lib/neoflix-ingest/neoflix.db.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum ReviewerCmd {
    /// Import a `.reviewer` file.
    Import {
        /// The file `neoflix reviewer enrol` wrote.
        file: PathBuf,
        /// Replace a reviewer of the same name (its sessions end).
        #[arg(long)]
        replace: bool,
    },
    /// List the reviewers: name, roles, department key id, created, locked by the rate limit.
    List,
    /// Remove a reviewer: it cannot sign in, its sessions end at once.
    Remove {
        /// The reviewer's name.
        name: String,
    },
}

fn admin(path: &std::path::Path, cmd: Cmd) -> ExitCode {
    let cfg = match neoflix_ingest::IngestConfig::load(path) {
        Ok((c, _)) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let run = || -> anyhow::Result<bool> {
        let db = neoflix_ingest::db::Db::open_configured(&cfg.database)
            .context("[database] (run this as the server's user, e.g. sudo -u neoflix-ingest)")?;
        use neoflix_ingest::admin;
        let (text, ok) = match cmd {
            Cmd::Reviewer { command } => match command {
                ReviewerCmd::Import { file, replace } => (
                    admin::import(&db, &file, replace, &mut std::io::stderr())? + "\n",
                    true,
                ),
                ReviewerCmd::List => (admin::list(&db)?, true),
                ReviewerCmd::Remove { name } => (admin::remove(&db, &name)? + "\n", true),
            },
            Cmd::Audit { json, verify } => admin::audit(&db, json, verify)?,
            Cmd::Purge { dry_run, now } => {
                (admin::purge(&cfg, &db, dry_run, now.as_deref())?, true)
            }
            Cmd::Hold {
                id,
                device,
                reason,
                release,
            } => (
                admin::hold(
                    &cfg,
                    &db,
                    &id,
                    device.as_deref(),
                    reason.as_deref(),
                    release,
                )? + "\n",
                true,
            ),
            Cmd::Recordings { json } => (admin::recordings(&cfg, &db, json)?, true),
            Cmd::Withdraw { id, device, reason } => (
                admin::withdraw(&cfg, &db, &id, device.as_deref(), &reason)? + "\n",
                true,
            ),
            Cmd::Database {
                command: DatabaseCmd::CopyFrom { file },
            } => (admin::copy_from(&cfg, &db, &file)?, true),
        };
        print!("{text}");
        Ok(ok)
    };
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("neoflix-ingest: {e:#}");
            ExitCode::FAILURE
        }
    }
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
    if let Some(r) = &cfg.review {
        let review = neoflix_ingest::review::acceptor(&r.cert, &r.key)
            .and_then(|_| neoflix_ingest::review::Assets::load(&r.assets));
        if let Err(e) = review {
            eprintln!("{}: [review]: {e:#}", path.display());
            return ExitCode::from(2);
        }
    }
    // PostgreSQL: its password file and CA read, and a connection made, changing nothing.
    if let neoflix_ingest::config::DatabaseAt::Postgres(pg) = &cfg.database.at {
        let checked = neoflix_ingest::db::PgTarget::of(pg).and_then(|t| t.check().map(|v| (t, v)));
        match checked {
            Ok((t, version)) => println!(
                "[database]: connected to {} (PostgreSQL {version})",
                t.describe()
            ),
            Err(e) => {
                eprintln!("{}: [database]: {e}", path.display());
                return ExitCode::from(2);
            }
        }
    }
    // The object store: the key and bucket usable for all the server does, and a damaged body
    // refused (the probe's object is deleted again; where it cannot be, the error names it).
    if let neoflix_ingest::config::StorageBackend::S3(_) = &cfg.storage.backend {
        let probed = neoflix_ingest::storage::Storage::configured(&cfg.storage, false)
            .map_err(|e| format!("{e:#}"))
            .and_then(|s| match &s {
                neoflix_ingest::storage::Storage::S3(s3) => s3
                    .probe()
                    .map_err(|e| e.to_string())
                    .and_then(|fatal| fatal.map(|()| s.place())),
                neoflix_ingest::storage::Storage::Fs(_) => Ok(s.place()),
            });
        match probed {
            Ok(place) => println!(
                "[storage]: {place} answers, refuses a body that is not the one announced, and lets the key write, read, list and delete"
            ),
            Err(e) => {
                eprintln!("{}: [storage]: {e}", path.display());
                return ExitCode::from(2);
            }
        }
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
    if let Some(cmd) = args.command {
        return admin(&args.config, cmd);
    }
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
                let shutdown = neoflix_logging::shutdown_signal();
                let listener = neoflix_ingest::bind(&cfg).await?;
                neoflix_ingest::run(cfg, listener, shutdown).await
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
