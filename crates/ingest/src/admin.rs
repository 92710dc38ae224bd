//! The administrator's subcommands (`reviewer import|list|remove`, `audit`, `recordings`,
//! `hold`, `purge`, `withdraw`): they work on the database and the storage while the server
//! runs (SQLite waits for the server's writes to finish; a withdrawal and an upload racing are
//! settled in `storage`).

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use neoflix_format::reviewer::ReviewerFile;
use serde_json::json;

use crate::IngestConfig;
use crate::audit::{Action, Event};
use crate::db::{Added, Db, now_secs};
use crate::lifecycle::{Cause, Keeper, Who};

/// What the subcommands that delete work on besides the database: the storage, and the
/// server's identity that signs withdrawal notices.
struct Parts {
    store: Storage,
    identity: neoflix_format::SigningIdentity,
}

impl Parts {
    fn open(cfg: &IngestConfig) -> anyhow::Result<Parts> {
        Ok(Parts {
            store: Storage::configured(&cfg.storage, true)?,
            identity: crate::server_identity(cfg)?,
        })
    }

    fn keeper<'a>(&'a self, db: &'a Db) -> Keeper<'a> {
        Keeper {
            store: &self.store,
            db,
            identity: &self.identity,
        }
    }
}

/// The admin's subcommands, as the audit log names them.
const ADMIN: Who = Who {
    actor: "admin",
    client: "cli",
};
use crate::storage::Storage;
use neoflix_format::review_api::{Answer, Consent, Question};

fn admin_event(action: Action, detail: serde_json::Value) -> Event {
    Event {
        actor: "admin".into(),
        action,
        recording: String::new(),
        client: "cli".into(),
        detail,
    }
}

/// The longest withdrawal reason kept: a sentence or two, not a document.
pub const MAX_REASON_CHARS: usize = 500;

/// The room a recording id belongs to: `device` when given (checked as a name), else the one
/// room the index or the storage knows it from. `before` says what `--device` is for when none
/// does.
fn holder(
    store: &Storage,
    db: &Db,
    id: &str,
    device: Option<&str>,
    before: &str,
) -> anyhow::Result<String> {
    if !neoflix_format::protocol::valid_recording_id(id) {
        anyhow::bail!("{} is not a recording id", crate::esc(id));
    }
    if let Some(d) = device {
        if !neoflix_format::protocol::valid_recording_id(d) {
            anyhow::bail!("{} is not a room box's name", crate::esc(d));
        }
        return Ok(d.to_string());
    }
    let mut holders: Vec<String> = db
        .recordings_with_id(id)?
        .into_iter()
        .map(|s| s.device)
        .collect();
    for name in store.rooms_holding(id).with_context(|| store.place())? {
        if !holders.contains(&name) {
            holders.push(name);
        }
    }
    match holders.len() {
        0 => anyhow::bail!(
            "this server holds no recording {id}: to {before}, name its room with --device"
        ),
        1 => Ok(holders.pop().expect("one")),
        _ => anyhow::bail!(
            "several rooms hold a recording {id} ({}): name one with --device",
            crate::esc(&holders.join(", "))
        ),
    }
}

/// A reason for the audit log: trimmed, 1 to [`MAX_REASON_CHARS`] characters.
fn reason_of<'a>(reason: &'a str, flag: &str) -> anyhow::Result<&'a str> {
    let reason = reason.trim();
    if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
        anyhow::bail!(
            "{flag} must say why, in 1 to {MAX_REASON_CHARS} characters (it goes into the audit log)"
        );
    }
    Ok(reason)
}

/// `hold ID [--device DEV] --reason TEXT`, or `--release`: a legal hold keeps a recording past
/// its retention date until released.
pub fn hold(
    cfg: &IngestConfig,
    db: &Db,
    id: &str,
    device: Option<&str>,
    reason: Option<&str>,
    release: bool,
) -> anyhow::Result<String> {
    // Only looking: the storage tree is not created here.
    let store = Storage::configured(&cfg.storage, false)?;
    let device = holder(&store, db, id, device, "hold it before it arrives")?;
    let recording = format!("{device}/{id}");
    if release {
        let reason = reason.map(|r| reason_of(r, "--reason")).transpose()?;
        if db.hold_of(&device, id)?.is_none() {
            anyhow::bail!("{recording} is not held");
        }
        // The release and its entry are one transaction: retention may delete right after.
        db.atomically(|c, events| {
            events.push(Event {
                actor: "admin".into(),
                action: Action::LegalHoldReleased,
                recording: recording.clone(),
                client: "cli".into(),
                detail: json!({ "reason": reason.unwrap_or_default() }),
            });
            crate::db::release_in(c, &device, id)
        })?;
        // A recording whose filming or review was refused was kept only by the hold.
        if db.consent_of(&device, id)?.refused().is_some() {
            let parts = Parts::open(cfg)?;
            let s = parts
                .keeper(db)
                .withdraw(
                    &device,
                    id,
                    ADMIN,
                    "consent refused; the legal hold was released",
                    Cause::ConsentRefused,
                    std::time::SystemTime::now(),
                )
                .with_context(|| {
                    format!("released the hold on {recording}, but withdrawing it (consent refused) failed: run withdraw {id}")
                })?;
            return Ok(format!(
                "released the hold on {recording}; its consent was refused, so it was withdrawn ({} key records, {} other files deleted)",
                s.key_records, s.other_files
            ));
        }
        return Ok(format!(
            "released the hold on {recording}: retention applies to it again"
        ));
    }
    let Some(reason) = reason else {
        anyhow::bail!("say why with --reason TEXT (or --release to end a hold)");
    };
    let reason = reason_of(reason, "--reason")?;
    let new = db.atomically(|c, events| {
        let new = crate::db::hold_place_in(c, &device, id, reason)?;
        events.push(Event {
            actor: "admin".into(),
            action: Action::LegalHold,
            recording: recording.clone(),
            client: "cli".into(),
            detail: json!({ "reason": reason, "new": new }),
        });
        Ok::<_, crate::db::DbError>(new)
    })?;
    Ok(if new {
        format!("held {recording}: kept past its retention date until released")
    } else {
        format!("{recording} was held already; its reason is now the one given")
    })
}

/// `purge [--dry-run] [--now UTC]`: applies retention now (or as it would at `now`).
pub fn purge(
    cfg: &IngestConfig,
    db: &Db,
    dry_run: bool,
    now: Option<&str>,
) -> anyhow::Result<String> {
    let Some(r) = cfg.retention else {
        anyhow::bail!(
            "the config has no [retention]: add it (keep_days = 30 is the default) to delete recordings past their date"
        );
    };
    let now = match now {
        None => std::time::SystemTime::now(),
        Some(t) => neoflix_format::parse_utc(t).with_context(|| {
            format!(
                "--now {}: not an RFC 3339 time such as 2026-12-01T00:00:00Z",
                crate::esc(t)
            )
        })?,
    };
    let parts = Parts::open(cfg)?;
    let done = crate::retention::purge(&parts.keeper(db), r.keep_days, now, dry_run, ADMIN)?;
    let mut out = String::new();
    let mut failed = 0;
    for p in &done {
        let what = format!("{}/{} ({})", p.device, p.id, p.why());
        out.push_str(&match &p.outcome {
            Ok(None) => format!("would delete {what}\n"),
            Ok(Some(s)) => format!(
                "deleted {what}: {} key records, {} other files\n",
                s.key_records, s.other_files
            ),
            Err(e) => {
                failed += 1;
                format!("FAILED to delete {what}: {}\n", crate::esc(e))
            }
        });
    }
    let n = done.len() - failed;
    out.push_str(&format!(
        "{n} recording{} {} (keep_days = {}, as of {})\n",
        if n == 1 { "" } else { "s" },
        if dry_run { "due" } else { "deleted" },
        r.keep_days,
        neoflix_format::utc(now)
    ));
    if failed > 0 {
        anyhow::bail!(
            "{out}{failed} could not be deleted: run purge again once the cause is fixed"
        );
    }
    Ok(out)
}

/// One line of `recordings --json`.
#[derive(Debug, serde::Serialize)]
pub struct Listed {
    /// The box.
    pub device: String,
    /// The recording.
    pub id: String,
    /// `uploading` or `complete`.
    pub upload: crate::db::Upload,
    /// When its first object reached the server: retention counts from this.
    pub received_utc: String,
    /// Its first frame by the box's clock, once complete.
    pub first_frame_utc: Option<String>,
    /// Seconds of video.
    pub duration_secs: Option<f64>,
    /// The answers to the three consent questions.
    pub consent: Consent,
    /// What retention does with it now; `null` without `[retention]`.
    pub retention: Option<crate::retention::Verdict>,
    /// The legal hold's reason.
    pub hold: Option<String>,
    /// In the teaching library until then.
    pub teaching_until_utc: Option<String>,
}

/// A consent answer in a column: `g`ranted, `r`efused or `-` pending, per question.
fn consent_cell(c: &Consent) -> String {
    Question::ALL
        .iter()
        .map(|q| match c.get(*q).answer {
            Answer::Granted => 'g',
            Answer::Refused => 'r',
            Answer::Pending => '-',
        })
        .collect()
}

/// `recordings [--json]`: every recording the index holds, with its consent, retention date
/// and hold.
pub fn recordings(cfg: &IngestConfig, db: &Db, as_json: bool) -> anyhow::Result<String> {
    let now = std::time::SystemTime::now();
    let mut listed = Vec::new();
    for r in db.retained()? {
        listed.push(Listed {
            retention: cfg
                .retention
                .map(|k| crate::retention::verdict_of(&r, k.keep_days, now)),
            consent: db.consent_of(&r.device, &r.id)?,
            device: r.device,
            id: r.id,
            upload: r.upload,
            received_utc: r.received_utc,
            first_frame_utc: r.first_frame_utc,
            duration_secs: r.duration_secs,
            hold: r.hold,
            teaching_until_utc: r.teaching_until_utc,
        });
    }
    if as_json {
        let mut s = serde_json::to_string_pretty(&listed).expect("rows serialize");
        s.push('\n');
        return Ok(s);
    }
    use crate::retention::Verdict;
    let mut out = format!(
        "{:<16} {:<38} {:<10} {:<24} {:>9}  {:<7}  {}\n",
        "ROOM", "RECORDING", "UPLOAD", "RECEIVED", "SECONDS", "CONSENT", "RETENTION"
    );
    for l in &listed {
        let retention = match &l.retention {
            None => "kept (no [retention])".to_string(),
            Some(Verdict::Keep { until_utc }) => format!("deleted after {until_utc}"),
            Some(Verdict::Teaching { until_utc }) => {
                format!("teaching library, deleted after {until_utc}")
            }
            Some(Verdict::Due { until_utc }) => format!("due since {until_utc}"),
            Some(Verdict::Refused) => "due: consent refused".into(),
            Some(Verdict::Held { until_utc, reason }) => format!(
                "held past {until_utc}: {}",
                neoflix_logging::escape_controls(reason)
            ),
            Some(Verdict::Unreadable) => "kept: its start time does not read".into(),
        };
        let retention = match (&l.hold, &l.retention) {
            (Some(reason), Some(Verdict::Keep { .. } | Verdict::Teaching { .. })) => format!(
                "{retention}; held: {}",
                neoflix_logging::escape_controls(reason)
            ),
            _ => retention,
        };
        out.push_str(&format!(
            "{:<16} {:<38} {:<10} {:<24} {:>9}  {:<7}  {}\n",
            neoflix_logging::escape_controls(&l.device),
            neoflix_logging::escape_controls(&l.id),
            l.upload.as_str(),
            neoflix_logging::escape_controls(&l.received_utc),
            l.duration_secs.map_or("-".into(), |d| format!("{d:.1}")),
            consent_cell(&l.consent),
            retention
        ));
    }
    out.push_str("CONSENT: filmed, review, use: g granted, r refused, - pending\n");
    Ok(out)
}

/// `withdraw ID [--device DEV] --reason TEXT`: the recording is deleted from storage (key
/// records first), forgotten by the index, and its room box is told to delete its copy the
/// next time it asks; the audit log keeps who, when and why, and nothing of the video.
pub fn withdraw(
    cfg: &IngestConfig,
    db: &Db,
    id: &str,
    device: Option<&str>,
    reason: &str,
) -> anyhow::Result<String> {
    let reason = reason_of(reason, "--reason")?;
    let parts = Parts::open(cfg)?;
    let device = holder(
        &parts.store,
        db,
        id,
        device,
        "withdraw it before it arrives",
    )?;
    if parts.store.withdrawn(&device, id)?.is_some() {
        writeln!(
            std::io::stderr(),
            "note: {device}/{id} was withdrawn before; finishing its deletion"
        )?;
    }
    let shredded = parts
        .keeper(db)
        .withdraw(
            &device,
            id,
            ADMIN,
            reason,
            Cause::Withdrawal,
            std::time::SystemTime::now(),
        )
        .with_context(|| format!("withdrawing {device}/{id} (run the command again to finish)"))?;
    Ok(format!(
        "withdrew {device}/{id}: {} key records and {} other files deleted; the room box deletes its copy when it next asks",
        shredded.key_records, shredded.other_files
    ))
}

/// `reviewer import FILE [--replace]`: warnings go to `warn`.
pub fn import(db: &Db, file: &Path, replace: bool, warn: &mut dyn Write) -> anyhow::Result<String> {
    let bytes = neoflix_format::files::read_regular(file, neoflix_format::reviewer::MAX_FILE_BYTES)
        .with_context(|| format!("{}: cannot read the reviewer file", file.display()))?;
    let r = ReviewerFile::parse(&bytes).with_context(|| file.display().to_string())?;
    let keys = db.recipient_key_ids()?;
    let others: Vec<&String> = keys.iter().filter(|k| **k != r.department_key_id).collect();
    if !others.is_empty() {
        let list: Vec<&str> = others.iter().map(|s| s.as_str()).collect();
        writeln!(
            warn,
            "warning: {} holds the department key {}, but recordings here are sealed to {}: this reviewer cannot open those",
            r.name,
            r.department_key_id,
            list.join(", ")
        )?;
    }
    let before = db.reviewer(r.name.as_str())?.map(|b| b.file.roles);
    if before.is_some() && !replace {
        anyhow::bail!(
            "a reviewer named {} exists: add --replace to replace them (their sessions end)",
            r.name
        );
    }
    // Audited first: the log never lacks a change the database holds.
    db.append_audit(&admin_event(
        Action::ReviewerImported,
        json!({
            "name": r.name.as_str(),
            "department_key_id": r.department_key_id,
            "roles": r.roles,
            "replaced": before.is_some(),
        }),
    ))?;
    if let Some(b) = before.as_ref().filter(|b| **b != r.roles) {
        db.append_audit(&admin_event(
            Action::RolesChanged,
            json!({ "name": r.name.as_str(), "roles": r.roles, "before": b }),
        ))?;
    }
    let added = db.add_reviewer(&r, replace)?;
    let roles = roles_text(&r.roles);
    Ok(match added {
        Added::New => format!("imported {} as {roles}", r.name),
        Added::Replaced(before) if before != r.roles => format!(
            "replaced {} (its sessions ended); roles changed from {} to {roles}",
            r.name,
            roles_text(&before)
        ),
        Added::Replaced(_) => format!("replaced {} as {roles} (its sessions ended)", r.name),
    })
}

fn roles_text(roles: &[neoflix_format::reviewer::Role]) -> String {
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `reviewer list`: name, roles, key id, created, locked.
pub fn list(db: &Db) -> anyhow::Result<String> {
    let now = now_secs();
    let mut out = format!(
        "{:<24} {:<34} {:<16} {:<24} {}\n",
        "NAME", "ROLES", "KEY ID", "CREATED", "LOCKED"
    );
    for r in db.reviewers()? {
        let (failures, last) = db.name_failures(r.file.name.as_str())?;
        let locked = match crate::ratelimit::name_retry_after(failures, last, now) {
            Some(s) => format!("yes, {s} s more ({failures} failures)"),
            None => "no".into(),
        };
        out.push_str(&format!(
            "{:<24} {:<34} {:<16} {:<24} {}\n",
            r.file.name,
            roles_text(&r.file.roles),
            r.file.department_key_id,
            r.file.created_utc,
            locked
        ));
    }
    Ok(out)
}

/// `reviewer remove NAME`: its record and sessions go at once.
pub fn remove(db: &Db, name: &str) -> anyhow::Result<String> {
    if !db.remove_reviewer(name)? {
        anyhow::bail!("no reviewer named {}", crate::esc(name));
    }
    db.append_audit(&admin_event(
        Action::ReviewerRemoved,
        json!({ "name": name }),
    ))?;
    Ok(format!("removed reviewer {name}; its sessions ended"))
}

/// `database copy-from FILE`: the SQLite file's contents into `db`, the configured
/// PostgreSQL database (which must be empty); what was copied, and the audit chain's head.
pub fn copy_from(cfg: &IngestConfig, db: &Db, file: &Path) -> anyhow::Result<String> {
    if cfg.database.sqlite_path().is_some() {
        anyhow::bail!(
            "[database] names SQLite: set url = \"postgres://...\" to the database to copy into"
        );
    }
    // Opening creates a missing file; a mistyped name would then copy an empty database.
    if !file.is_file() {
        anyhow::bail!("{}: no such SQLite database file", file.display());
    }
    let from = Db::open(file).with_context(|| file.display().to_string())?;
    let copied = from
        .copy_into(db)
        .with_context(|| format!("copying {} into {}", file.display(), db.place()))?;
    let mut out = format!("copied {} into {}:\n", file.display(), db.place());
    for (table, n) in &copied.rows {
        out.push_str(&format!("  {table}: {n}\n"));
    }
    out.push_str(&format!(
        "audit chain verified on the copy, head {}\n",
        copied.audit_head
    ));
    Ok(out)
}

/// `audit [--json] [--verify]`: the text to print and whether the chain holds.
pub fn audit(db: &Db, as_json: bool, verify: bool) -> anyhow::Result<(String, bool)> {
    let entries = db.audit()?;
    let mut out = String::new();
    if as_json {
        out.push_str(&serde_json::to_string_pretty(&entries).expect("entries serialize"));
        out.push('\n');
    } else {
        // Every field's control characters escaped, not only those of fields from outside:
        // an entry edited behind the database's back could otherwise carry terminal escapes
        // that hide the verdict printed after it.
        let show = neoflix_logging::escape_controls;
        for e in &entries {
            out.push_str(&format!(
                "{:>6} {} {:<16} {:<16} {:<40} {:<15} {}\n",
                e.seq,
                show(&e.utc),
                show(&e.actor),
                show(&e.action),
                if e.recording.is_empty() {
                    "-".into()
                } else {
                    show(&e.recording)
                },
                show(&e.client),
                show(&e.detail)
            ));
        }
    }
    if !verify {
        return Ok((out, true));
    }
    match crate::audit::verify(&entries) {
        Ok(head) => {
            out.push_str(&format!(
                "audit log verified: {} entries, head {head}\n",
                entries.len()
            ));
            Ok((out, true))
        }
        Err(b) => {
            out.push_str(&format!("audit log BROKEN at entry {}: {}\n", b.seq, b.why));
            Ok((out, false))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_list_remove_and_audit_verify() {
        let d = tempfile::tempdir().unwrap();
        let db = Db::open(&d.path().join("n.db")).unwrap();
        let f = d.path().join("alice.reviewer");
        std::fs::write(
            &f,
            serde_json::to_vec(&crate::db::tests::reviewer("alice", 1)).unwrap(),
        )
        .unwrap();
        let mut warn = Vec::new();
        assert!(
            import(&db, &f, false, &mut warn)
                .unwrap()
                .contains("imported")
        );
        assert!(
            import(&db, &f, false, &mut warn).is_err(),
            "twice without --replace"
        );
        assert!(
            import(&db, &f, true, &mut warn)
                .unwrap()
                .contains("replaced")
        );
        assert!(list(&db).unwrap().contains("alice"));
        assert!(remove(&db, "alice").unwrap().contains("removed"));
        assert!(remove(&db, "alice").is_err());
        let (text, ok) = audit(&db, false, true).unwrap();
        assert!(ok, "{text}");
        assert_eq!(text.matches("reviewer-imported").count(), 2, "{text}");
        assert!(
            text.contains("reviewer-removed") && text.contains("head "),
            "{text}"
        );
    }

    #[test]
    fn a_recording_id_names_its_room_from_the_index_or_the_storage_or_asks_for_it() {
        let d = tempfile::tempdir().unwrap();
        let db = Db::open(&d.path().join("n.db")).unwrap();
        let store = Storage::open(&d.path().join("store"), 1000).unwrap();
        let before = "hold it before it arrives";
        let e = holder(&store, &db, "r1", None, before)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("holds no recording r1") && e.contains(before),
            "{e}"
        );
        // Stored but never indexed (the index scan has not run yet).
        std::fs::create_dir_all(d.path().join("store/room-2/r1")).unwrap();
        assert_eq!(holder(&store, &db, "r1", None, before).unwrap(), "room-2");
        db.index_uploading("room-1", "r1").unwrap();
        let e = holder(&store, &db, "r1", None, before)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("room-1, room-2") && e.contains("--device"),
            "{e}"
        );
        assert_eq!(
            holder(&store, &db, "r1", Some("room-1"), before).unwrap(),
            "room-1"
        );
        assert!(holder(&store, &db, "../r1", None, before).is_err());
        assert!(holder(&store, &db, "r1", Some("a/b"), before).is_err());
    }

    #[test]
    fn the_printed_log_cannot_drive_the_admins_terminal() {
        // An entry edited behind the database's back to conceal what follows (the verdict).
        let d = tempfile::tempdir().unwrap();
        let db = Db::open(&d.path().join("n.db")).unwrap();
        db.append_audit(&Event {
            actor: "eve".into(),
            action: Action::SignIn,
            recording: "room\u{1b}[8m/x".into(),
            client: "10.0.0.1\u{1b}[8m".into(),
            detail: json!({}),
        })
        .unwrap();
        let (text, ok) = audit(&db, false, true).unwrap();
        assert!(ok);
        assert!(!text.contains('\u{1b}'), "{text:?}");
        assert!(text.contains(r"10.0.0.1\u{1b}[8m"), "{text}");
    }
}
