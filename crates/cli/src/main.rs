//! `neoflix`: the command for IT, review chairs and installers.
//!
//! Exit codes: 0 success, 1 failure (the message says what and what to do), 2 invalid input
//! (a config with errors, a bad command line).

use std::fs;
use std::io::{IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use neoflix_cli::fleet;
use neoflix_control::Request;
use neoflix_seal::{DepartmentPublicKey, DepartmentSecretKey};

/// Neoflix: sealed video review of resuscitations.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate the department key pair: department.key (secret, mode 0600) and department.pub.
    Keygen {
        /// Directory to write both files into.
        #[arg(long)]
        out: PathBuf,
        /// Replace existing key files (recordings sealed to the old key then need the old key).
        #[arg(long)]
        force: bool,
    },
    /// Control the local neoflixd.
    Ctl {
        /// The control socket.
        #[arg(long, default_value = "/run/neoflix/control.sock")]
        socket: PathBuf,
        #[command(subcommand)]
        action: CtlAction,
    },
    /// Check a recording and write it as one playable MP4.
    Export {
        /// The recording directory.
        recording: PathBuf,
        /// The department secret key (department.key).
        #[arg(long)]
        key: PathBuf,
        /// The MP4 to write.
        #[arg(short, long)]
        output: PathBuf,
        /// Write a recording with fragments missing from the middle of a capture stream, each
        /// gap a hole in the video (each is named on stderr). Only once you know the box lost
        /// them (its storage failed while it recorded): a gap may also be removed video.
        #[arg(long)]
        allow_gaps: bool,
    },
    /// Check a recording: without a key, every file against the manifest and its hash chain;
    /// with the department key, also every encrypted chunk.
    Verify {
        /// The recording directory.
        recording: PathBuf,
        /// The department secret key (department.key).
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Configuration files.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Every room box's status from the department's MQTT broker: a table that refreshes in
    /// place, or `--once --json` for scripts.
    Fleet(fleet::Args),
    /// A small private CA for departments without one.
    Pki {
        #[command(subcommand)]
        action: PkiAction,
    },
}

#[derive(Subcommand)]
enum PkiAction {
    /// Create the CA: DIR/ca.key (mode 0600), DIR/ca.crt, DIR/ca.crl.
    Init {
        /// The CA directory (keep it off room boxes and the ingest server).
        #[arg(long)]
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "Neoflix department CA")]
        name: String,
    },
    /// Issue a device certificate (--device ID) or a server certificate (--server NAME).
    Issue {
        /// The CA directory.
        #[arg(long)]
        dir: PathBuf,
        /// Device id: the room box's `device_id`; written to DIR/ID.crt and DIR/ID.key.
        #[arg(long, conflicts_with = "server", required_unless_present = "server")]
        device: Option<String>,
        /// Server DNS name or IP address; written to DIR/NAME.crt and DIR/NAME.key.
        #[arg(long)]
        server: Option<String>,
        /// Lifetime in days (default 398).
        #[arg(long, allow_hyphen_values = true)]
        days: Option<i64>,
    },
    /// Revoke the certificate issued for NAME and re-sign DIR/ca.crl.
    Revoke {
        /// The CA directory.
        #[arg(long)]
        dir: PathBuf,
        /// The device id or server name.
        name: String,
    },
    /// Re-sign DIR/ca.crl with a fresh 30-day validity.
    Crl {
        /// The CA directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// List what this CA issued.
    List {
        /// The CA directory.
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum CtlAction {
    /// Start a recording (the pre-roll becomes its beginning).
    Start,
    /// Stop the recording (post-roll applies).
    Stop,
    /// Add a marker, with an optional label.
    Mark {
        /// The label, e.g. "intubation".
        label: Vec<String>,
    },
    /// Print the status as JSON.
    Status,
    /// Switch privacy mode on (nothing recorded or kept) or off.
    Privacy {
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        mode: String,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate a neoflixd config; prints every error and warning.
    Validate {
        /// The file.
        file: PathBuf,
    },
}

/// Outside text (ids and file names from a manifest) as it may be printed: control characters
/// escaped, so a crafted id cannot move the cursor, retitle or clear the reviewer's terminal.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// An error of verify or export, whose messages quote the manifest: escaped as a whole.
fn printable_error(e: anyhow::Error) -> anyhow::Error {
    anyhow::anyhow!(printable(&format!("{e:#}")))
}

fn read_secret_key(path: &Path) -> anyhow::Result<DepartmentSecretKey> {
    // A key file is one short line: anything else (a FIFO, a device, a huge file) is refused
    // before it is read. The path is the operator's, so a symlink to the key is fine.
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("cannot read department key {}", path.display()))?;
    let meta = f.metadata()?;
    if !meta.is_file() || meta.len() > 4096 {
        bail!(
            "department key {} is not a key file (a regular file of one line); give the department.key that `neoflix keygen` wrote",
            path.display()
        );
    }
    let mut text = zeroize::Zeroizing::new(String::new());
    std::io::Read::read_to_string(&mut std::io::Read::take(f, 4096), &mut text)
        .with_context(|| format!("cannot read department key {}", path.display()))?;
    DepartmentSecretKey::from_file_text(&text)
        .with_context(|| format!("department key {}", path.display()))
}

fn keygen(out: &Path, force: bool) -> anyhow::Result<()> {
    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let (skp, pkp) = (out.join("department.key"), out.join("department.pub"));
    if !force && (skp.exists() || pkp.exists()) {
        bail!(
            "{} already holds a department key; recordings sealed to it open only with it. Use --force to replace it",
            out.display()
        );
    }
    let sk = DepartmentSecretKey::generate()?;
    let pk = sk.public_key();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&skp)
        .with_context(|| format!("cannot write {}", skp.display()))?;
    f.write_all(sk.to_file_text().as_bytes())?;
    f.sync_all()?;
    fs::write(&pkp, pk.to_file_text())
        .with_context(|| format!("cannot write {}", pkp.display()))?;
    // Recheck the public file parses, so a truncated write is caught here, not in a room box.
    DepartmentPublicKey::from_file_text(&fs::read_to_string(&pkp)?)?;
    println!(
        "secret key: {} (mode 0600; keep it off room boxes)",
        skp.display()
    );
    println!(
        "public key: {} (key id {}; install it on room boxes)",
        pkp.display(),
        pk.key_id()
    );
    Ok(())
}

fn ctl(socket: &Path, action: CtlAction) -> anyhow::Result<ExitCode> {
    let req = match action {
        CtlAction::Start => Request::Start {},
        CtlAction::Stop => Request::Stop {},
        CtlAction::Mark { label } => Request::Mark {
            label: label.join(" "),
        },
        CtlAction::Status => Request::Status {},
        CtlAction::Privacy { mode } => Request::Privacy { on: mode == "on" },
    };
    let reply = neoflix_control::call(socket, &req)?;
    if !reply.ok {
        eprintln!(
            "neoflix: {}",
            reply.error.unwrap_or_else(|| "refused".into())
        );
        return Ok(ExitCode::FAILURE);
    }
    match (req, reply) {
        (Request::Status {}, r) => println!("{}", serde_json::to_string_pretty(&r.status)?),
        (_, r) => {
            if let Some(id) = r.recording {
                println!("{id}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn export(recording: &Path, key: &Path, output: &Path, allow_gaps: bool) -> anyhow::Result<()> {
    let sk = read_secret_key(key)?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {pos}/{len} fragments ({eta})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        b.set_message("exporting");
        b
    });
    let gaps = if allow_gaps {
        neoflix_export::Gaps::Allow
    } else {
        neoflix_export::Gaps::Refuse
    };
    let result = neoflix_export::export_with(recording, &sk, output, gaps, |done, total| {
        if let Some(b) = &bar {
            b.set_length(total as u64);
            b.set_position(done as u64);
        }
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let hint = match &result {
        Err(neoflix_export::ExportError::Store(neoflix_store::StoreError::Gap { .. })) => {
            "; if the box lost these fragments (its storage failed while it recorded), --allow-gaps writes the rest with the hole"
        }
        _ => "",
    };
    let exported = result
        .map_err(|e| anyhow::anyhow!("{e}{hint}"))
        .with_context(|| {
            format!(
                "export of {} failed; nothing was written",
                recording.display()
            )
        })
        .map_err(printable_error)?;
    let m = &exported.manifest;
    for f in &exported.files {
        println!("{}", f.display());
    }
    for gap in &exported.gaps {
        eprintln!(
            "warning: written with a hole: {}",
            printable(&gap.to_string())
        );
    }
    eprintln!(
        "{}: {} s ({} s pre-roll), {} fragments, {} markers, {}",
        printable(&m.recording_id),
        m.duration_secs,
        m.preroll_secs,
        m.fragments.len(),
        m.markers.len(),
        match m.status {
            neoflix_store::Status::Complete => "complete",
            neoflix_store::Status::Interrupted => "INTERRUPTED (sealed after a crash or power cut)",
        }
    );
    Ok(())
}

fn verify(recording: &Path, key: Option<&Path>) -> anyhow::Result<()> {
    let m = match key {
        None => neoflix_store::verify(recording)
            .map(|v| v.manifest)
            .map_err(|e| printable_error(e.into()))?,
        Some(k) => neoflix_export::check(recording, &read_secret_key(k)?)
            .map_err(|e| printable_error(e.into()))?,
    };
    println!(
        "{}: OK, {} fragments, {} s, chain {}{}",
        printable(&m.recording_id),
        m.fragments.len(),
        m.duration_secs,
        printable(m.chain.get(..16).unwrap_or(&m.chain)),
        if key.is_some() {
            ", every chunk authenticated"
        } else {
            " (files and chain only; add --key to authenticate the video)"
        }
    );
    Ok(())
}

fn config_validate(file: &Path) -> anyhow::Result<ExitCode> {
    match neoflix_config::load(file) {
        Ok((_, warnings)) => {
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            println!(
                "{}: valid{}",
                file.display(),
                if warnings.is_empty() {
                    String::new()
                } else {
                    format!(" ({} warnings)", warnings.len())
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::from(2))
        }
    }
}

fn pki(action: PkiAction) -> anyhow::Result<()> {
    use neoflix_pki::{Ca, Role};
    match action {
        PkiAction::Init { dir, name } => {
            Ca::init(&dir, &name)?;
            println!("{}", dir.join("ca.crt").display());
            eprintln!(
                "CA created; its key {} (mode 0600) signs every certificate: keep it offline",
                dir.join("ca.key").display()
            );
        }
        PkiAction::Issue {
            dir,
            device,
            server,
            days,
        } => {
            let ca = Ca::open(&dir)?;
            let (name, role) = match (device, server) {
                (Some(d), _) => (d, Role::Device),
                (None, Some(s)) => (s, Role::Server),
                (None, None) => bail!("name a --device or a --server"),
            };
            let (crt, key) = ca.issue(&name, role, days)?;
            println!("{}\n{}", crt.display(), key.display());
        }
        PkiAction::Revoke { dir, name } => {
            let crl = Ca::open(&dir)?.revoke(&name)?;
            println!("{}", crl.display());
            eprintln!(
                "revoked '{name}': copy {} to the ingest server (tls.crl); it re-reads the file within seconds, no restart needed",
                crl.display()
            );
        }
        PkiAction::Crl { dir } => println!("{}", Ca::open(&dir)?.refresh_crl()?.display()),
        PkiAction::List { dir } => {
            for i in Ca::open(&dir)?.list()? {
                let state = i
                    .revoked
                    .as_deref()
                    .map(|r| format!("revoked {r}"))
                    .unwrap_or_else(|| format!("valid until {}", i.not_after));
                println!(
                    "{:<24} {:<7} {} {}",
                    i.name,
                    format!("{:?}", i.role).to_lowercase(),
                    i.serial,
                    state
                );
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    // Output piped into `head` or `grep -q` may be closed early: end quietly, as other Unix tools
    // do, instead of panicking on a broken pipe.
    // SAFETY: restoring the default disposition of one signal before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keygen { out, force } => keygen(&out, force).map(|()| ExitCode::SUCCESS),
        Command::Ctl { socket, action } => ctl(&socket, action),
        Command::Export {
            recording,
            key,
            output,
            allow_gaps,
        } => export(&recording, &key, &output, allow_gaps).map(|()| ExitCode::SUCCESS),
        Command::Verify { recording, key } => {
            verify(&recording, key.as_deref()).map(|()| ExitCode::SUCCESS)
        }
        Command::Config {
            action: ConfigAction::Validate { file },
        } => config_validate(&file),
        Command::Pki { action } => pki(action).map(|()| ExitCode::SUCCESS),
        Command::Fleet(args) => fleet::run(args)
            .map(|()| ExitCode::SUCCESS)
            .map_err(Into::into),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("neoflix: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_text_is_printed_without_control_characters() {
        assert_eq!(
            printable("rec\u{1b}]0;owned\u{7}\u{1b}[2J\n"),
            r"rec\u{1b}]0;owned\u{7}\u{1b}[2J\n"
        );
        // Ordinary ids, quotes and non-ASCII letters are left as they are.
        assert_eq!(printable("room-1 'Säal' \"2\""), "room-1 'Säal' \"2\"");
    }
}
