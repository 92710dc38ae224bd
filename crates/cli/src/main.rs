//! `neoflix`: the command for IT, review chairs and installers.
//!
//! Exit codes: 0 success, 1 failure (the message says what and what to do), 2 invalid input
//! (a config with errors, a bad command line).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use neoflix_cli::{camera, fleet, review};
use neoflix_format::reviewer::Role;
// Outside text (ids and file names from a manifest) is printed with its control characters
// escaped, so a crafted id cannot move the cursor, retitle or clear the reviewer's terminal.
use neoflix_control::Request;
use neoflix_logging::escape_controls as printable;

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
    /// Check a recording and write it as one MP4 (moov first, markers as chapters) per capture
    /// stream, with the chapters also as WebVTT beside it (OUT.chapters.vtt).
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
        /// The department CA certificate: the recording must be signed by the room box it names
        /// with a certificate this CA issued.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// The department CA's CRL (`ca.crl`): a recording signed with a revoked certificate
        /// is refused.
        #[arg(long)]
        crl: Option<PathBuf>,
        /// Export a recording that is not signed (recorded by a box without a signing
        /// identity): nothing then proves which box recorded it. A signature that is there is
        /// still checked, and a bad one refused.
        #[arg(long)]
        allow_unsigned: bool,
        /// Export from this many seconds after the first frame (from the keyframe at or before).
        #[arg(long, value_name = "SECS", requires = "to")]
        from: Option<f64>,
        /// Export up to this many seconds after the first frame.
        #[arg(long, value_name = "SECS", requires = "from")]
        to: Option<f64>,
    },
    /// Check a recording: its signature (who recorded it, the manifest unchanged), every file
    /// against the manifest and its hash chain, and with the department key every encrypted
    /// chunk.
    Verify {
        /// The recording directory.
        recording: PathBuf,
        /// The department CA certificate, to check the signer's certificate.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// The department CA's CRL (`ca.crl`): a recording signed with a revoked certificate
        /// fails.
        #[arg(long)]
        crl: Option<PathBuf>,
        /// The department secret key (department.key).
        #[arg(long)]
        key: Option<PathBuf>,
        /// Check an unsigned recording's files anyway (it is still reported as unsigned).
        #[arg(long)]
        allow_unsigned: bool,
    },
    /// Configuration files.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Every room box's status from the department's MQTT broker: a table that refreshes in
    /// place, or `--once --json` for scripts.
    Fleet(fleet::Args),
    /// V4L2 cameras: list them with their formats and controls, try controls live.
    Camera {
        #[command(subcommand)]
        action: camera::Action,
    },
    /// A small private CA for departments without one.
    Pki {
        #[command(subcommand)]
        action: PkiAction,
    },
    /// Reviewers of the review page (`docs/review.md`).
    Reviewer {
        #[command(subcommand)]
        action: ReviewerAction,
    },
}

#[derive(Subcommand)]
enum ReviewerAction {
    /// Make a reviewer file (needs the department key): NAME signs in to the review page with a
    /// passphrase that opens recordings in their browser. Import the file on the server with
    /// `neoflix-ingest reviewer import`.
    Enrol {
        /// The reviewer's sign-in name (A-Z a-z 0-9 - _ .).
        name: String,
        /// The department secret key (department.key).
        #[arg(long)]
        key: PathBuf,
        /// Read the passphrase from the first line of this file instead of asking twice on the
        /// terminal.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        /// The reviewer file to write (mode 0600; an existing file is never replaced).
        #[arg(short, long)]
        output: PathBuf,
        /// What the person may do; repeat for several: chair (watches; consent, withdrawal,
        /// teaching library), reviewer (watches), privacy-officer (audit log, retention report;
        /// no video), it-admin (rooms' status; no video). Roles without video get no key.
        #[arg(long = "role", value_name = "ROLE", default_value = "reviewer", value_parser = parse_role)]
        roles: Vec<Role>,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| {
        format!("unknown role {s:?}: use chair, reviewer, privacy-officer or it-admin")
    })
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
    /// Renew NAME's certificate before it expires: a new key and certificate in DIR/NAME.crt
    /// and DIR/NAME.key, the old certificate left valid (what it signed still verifies).
    Renew {
        /// The CA directory.
        #[arg(long)]
        dir: PathBuf,
        /// The device id or server name.
        name: String,
        /// Lifetime in days (default 398).
        #[arg(long, allow_hyphen_values = true)]
        days: Option<i64>,
    },
    /// Revoke every certificate issued for NAME (a lost or stolen key) and re-sign DIR/ca.crl:
    /// recordings it signed no longer verify with the CRL.
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

/// An error of verify or export, whose messages quote the manifest: escaped as a whole.
fn printable_error(e: anyhow::Error) -> anyhow::Error {
    anyhow::anyhow!(printable(&format!("{e:#}")).into_owned())
}

fn keygen(out: &Path, force: bool) -> anyhow::Result<()> {
    let k = review::keygen(out, force)?;
    println!(
        "secret key: {} (mode 0600; keep it off room boxes)",
        k.secret.display()
    );
    println!(
        "public key: {} (key id {}; install it on room boxes)",
        k.public.display(),
        k.key_id
    );
    Ok(())
}

fn reviewer(action: ReviewerAction) -> anyhow::Result<()> {
    let ReviewerAction::Enrol {
        name,
        key,
        passphrase_file,
        output,
        mut roles,
    } = action;
    roles.sort();
    roles.dedup();
    let dept = review::read_secret_key(&key)?;
    let passphrase = match passphrase_file {
        Some(f) => neoflix_cli::reviewer::passphrase_from_file(&f)?,
        None => neoflix_cli::reviewer::passphrase_from_terminal(&name)?,
    };
    let now = neoflix_format::utc(std::time::SystemTime::now());
    let file = neoflix_cli::reviewer::enrol(&name, &dept, &passphrase, &roles, &output, &now)?;
    let roles: Vec<&str> = file.roles.iter().map(|r| r.as_str()).collect();
    println!(
        "{} enrolled as {} for department key {}: {} (mode 0600){}",
        file.name,
        roles.join(", "),
        file.department_key_id,
        output.display(),
        if file.wrapped_key.is_none() {
            "; no video: the file holds no department key"
        } else {
            ""
        }
    );
    println!(
        "on the server: neoflix-ingest --config CFG reviewer import {}",
        output.display()
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

fn export(
    recording: &Path,
    key: &Path,
    output: &Path,
    allow_gaps: bool,
    range: Option<(f64, f64)>,
    policy: &review::Policy,
) -> anyhow::Result<()> {
    let sk = review::read_secret_key(key)?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {pos}/{len} fragments opened ({eta})",
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
    let result = review::export(
        recording,
        &sk,
        output,
        policy,
        gaps,
        range,
        |done, total| {
            if let Some(b) = &bar {
                b.set_length(total as u64);
                b.set_position(done as u64);
            }
        },
    );
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let hint = match result
        .as_ref()
        .err()
        .and_then(|e| e.downcast_ref::<neoflix_export::ExportError>())
    {
        Some(neoflix_export::ExportError::Format(neoflix_format::FormatError::Gap { .. })) => {
            "; if the box lost these fragments (its storage failed while it recorded), --allow-gaps writes the rest with the hole"
        }
        _ => "",
    };
    let exported = result
        .map_err(|e| anyhow::anyhow!("{e:#}{hint}"))
        .with_context(|| {
            format!(
                "export of {} failed; nothing was written",
                recording.display()
            )
        })
        .map_err(printable_error)?;
    let m = &exported.manifest;
    eprintln!("{}", printable(&review::describe(&exported.custody)));
    for f in exported.files.iter().chain(&exported.chapter_files) {
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
            neoflix_format::Status::Complete => "complete",
            neoflix_format::Status::Interrupted =>
                "INTERRUPTED (sealed after a crash or power cut)",
        }
    );
    Ok(())
}

fn verify(recording: &Path, key: Option<&Path>, policy: &review::Policy) -> anyhow::Result<()> {
    let key = key.map(review::read_secret_key).transpose()?;
    let v = review::verify(recording, policy, key.as_ref()).map_err(printable_error)?;
    let m = &v.manifest;
    println!(
        "{}: OK, {} fragments, {} s, chain {}{}",
        printable(&m.recording_id),
        m.fragments.len(),
        m.duration_secs,
        printable(m.chain.get(..16).unwrap_or(&m.chain)),
        if v.opened {
            ", every chunk authenticated"
        } else {
            " (files and chain only; add --key to authenticate the video)"
        }
    );
    println!("{}", printable(&review::describe(&v.custody)));
    Ok(())
}

/// The size of the filesystem holding `path` (or, before `path` exists, its nearest existing
/// parent).
fn filesystem_size(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let existing = path.ancestors().find(|p| p.exists())?;
    let c = std::ffi::CString::new(existing.as_os_str().as_bytes()).ok()?;
    // SAFETY: all-zero is a valid statvfs.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_blocks as u64 * st.f_frsize as u64)
}

fn config_validate(file: &Path) -> anyhow::Result<ExitCode> {
    match neoflix_config::load(file) {
        Ok((cfg, warnings)) => {
            let mut warnings: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
            // The ring's filesystem on this machine: `validate` runs on the box it checks.
            let needs = cfg.preroll_bytes();
            if let Some(size) = filesystem_size(&cfg.ring.dir)
                && needs > size
            {
                warnings.push(format!(
                    "ring.dir {}: its filesystem holds {} MiB, and {} s of pre-roll need about {} MiB: the pre-roll will be shorter; give it more room (a larger tmpfs, a disk) or lower ring.preroll_secs",
                    cfg.ring.dir.display(),
                    size >> 20,
                    cfg.ring.preroll_secs,
                    needs >> 20
                ));
            }
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
        PkiAction::Renew { dir, name, days } => {
            let (crt, key) = Ca::open(&dir)?.renew(&name, days)?;
            println!("{}\n{}", crt.display(), key.display());
            eprintln!(
                "renewed '{name}': install both files where the old ones were; the old certificate stays valid until it expires"
            );
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
            ca,
            crl,
            allow_unsigned,
            from,
            to,
        } => review::Policy::new(ca.as_deref(), crl.as_deref(), allow_unsigned)
            .and_then(|p| {
                let range = from.zip(to);
                export(&recording, &key, &output, allow_gaps, range, &p)
            })
            .map(|()| ExitCode::SUCCESS),
        Command::Verify {
            recording,
            ca,
            crl,
            key,
            allow_unsigned,
        } => review::Policy::new(ca.as_deref(), crl.as_deref(), allow_unsigned)
            .and_then(|p| verify(&recording, key.as_deref(), &p))
            .map(|()| ExitCode::SUCCESS),
        Command::Config {
            action: ConfigAction::Validate { file },
        } => config_validate(&file),
        Command::Pki { action } => pki(action).map(|()| ExitCode::SUCCESS),
        Command::Camera { action } => camera::run(action).map(|()| ExitCode::SUCCESS),
        Command::Reviewer { action } => reviewer(action).map(|()| ExitCode::SUCCESS),
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
