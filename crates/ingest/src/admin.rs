//! The administrator's subcommands (`reviewer import|list|remove`, `audit`, `withdraw`): they
//! work on the database and the storage while the server runs (SQLite waits for the server's
//! writes to finish; a withdrawal and an upload racing are settled in `storage`).

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use neoflix_format::reviewer::ReviewerFile;
use serde_json::json;

use crate::IngestConfig;
use crate::audit::{Action, Event};
use crate::db::{Added, Db, now_secs};
use crate::storage::Storage;

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
    let reason = reason.trim();
    if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
        anyhow::bail!(
            "--reason must say why, in 1 to {MAX_REASON_CHARS} characters (it goes into the audit log)"
        );
    }
    if !neoflix_format::protocol::valid_recording_id(id) {
        anyhow::bail!("{} is not a recording id", crate::esc(id));
    }
    let store = Storage::open(&cfg.storage.dir, cfg.storage.max_object_bytes)?;
    let device = match device {
        Some(d) => {
            if !neoflix_format::protocol::valid_recording_id(d) {
                anyhow::bail!("{} is not a room box's name", crate::esc(d));
            }
            d.to_string()
        }
        None => {
            let mut holders: Vec<String> = db
                .recordings_with_id(id)?
                .into_iter()
                .map(|s| s.device)
                .collect();
            for d in std::fs::read_dir(&cfg.storage.dir)
                .with_context(|| format!("storage.dir {}", cfg.storage.dir.display()))?
                .filter_map(|e| e.ok())
            {
                let name = d.file_name().to_string_lossy().into_owned();
                if d.path().join(id).is_dir() && !holders.contains(&name) {
                    holders.push(name);
                }
            }
            match holders.len() {
                0 => anyhow::bail!(
                    "this server holds no recording {id}: to withdraw it before it arrives, name its room with --device"
                ),
                1 => holders.pop().expect("one"),
                _ => anyhow::bail!(
                    "several rooms hold a recording {id} ({}): name one with --device",
                    holders.join(", ")
                ),
            }
        }
    };
    if store.withdrawn(&device, id)?.is_some() {
        writeln!(
            std::io::stderr(),
            "note: {device}/{id} was withdrawn before; finishing its deletion"
        )?;
    }
    let now = std::time::SystemTime::now();
    let notice = neoflix_format::SignedWithdrawal::sign(
        &neoflix_format::Withdrawal {
            recording_id: id.to_string(),
            device_id: device.clone(),
            withdrawn_utc: neoflix_format::utc(now),
        },
        &crate::server_identity(cfg)?,
        now,
    )
    .context("signing the withdrawal notice")?;
    // The log says so before anything goes: a crash after this is finished at the server's
    // next start, and a deletion never happens without its entry.
    db.append_audit(&Event {
        actor: "admin".into(),
        action: Action::RecordingWithdrawn,
        recording: format!("{device}/{id}"),
        client: "cli".into(),
        detail: json!({ "reason": reason }),
    })?;
    let shredded = store
        .withdraw(&device, id, &notice.to_json())
        .with_context(|| format!("deleting {device}/{id} (run the command again to finish)"))?;
    db.forget_recording(&device, id)?;
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
    let added = db.add_reviewer(&r, replace)?;
    db.append_audit(&admin_event(
        Action::ReviewerImported,
        json!({
            "name": r.name.as_str(),
            "department_key_id": r.department_key_id,
            "replaced": added == Added::Replaced,
        }),
    ))?;
    Ok(match added {
        Added::New => format!("imported reviewer {}", r.name),
        Added::Replaced => format!("replaced reviewer {} (its sessions ended)", r.name),
    })
}

/// `reviewer list`: name, key id, created, locked.
pub fn list(db: &Db) -> anyhow::Result<String> {
    let now = now_secs();
    let mut out = format!(
        "{:<24} {:<16} {:<24} {}\n",
        "NAME", "KEY ID", "CREATED", "LOCKED"
    );
    for r in db.reviewers()? {
        let (failures, last) = db.name_failures(r.file.name.as_str())?;
        let locked = match crate::ratelimit::name_retry_after(failures, last, now) {
            Some(s) => format!("yes, {s} s more ({failures} failures)"),
            None => "no".into(),
        };
        out.push_str(&format!(
            "{:<24} {:<16} {:<24} {}\n",
            r.file.name, r.file.department_key_id, r.file.created_utc, locked
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
