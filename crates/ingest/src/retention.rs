//! Retention: which recordings are due for deletion (a pure decision on the index's rows and a
//! time), and deleting them, audited, by the server once an hour and by `purge` on demand.

use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::json;

use crate::audit::{Action, Event};
use crate::db::{self, DbError, Retained};
use crate::lifecycle::{Cause, Keeper, LifecycleError, Who};
use crate::storage::Shredded;

/// How often the server applies retention: the issue asks for at least daily; an hour keeps a
/// recording at most an hour past its date.
pub const EVERY: Duration = Duration::from_secs(3600);

/// Why retention could not look at the recordings at all.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    /// The index or the audit log could not be read or written.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// What retention says of one recording at a given time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Kept until then (RFC 3339 UTC).
    Keep {
        /// Its retention date.
        until_utc: String,
    },
    /// Past its date, but under a legal hold.
    Held {
        /// Its retention date.
        until_utc: String,
        /// Why it is held.
        reason: String,
    },
    /// In the teaching library, which keeps it until its own date (past the usual one or
    /// not).
    Teaching {
        /// The library's date for it.
        until_utc: String,
    },
    /// Consent to film or review it was refused: delete now. (Refusing withdraws it at once;
    /// this finishes one whose withdrawal was interrupted or whose hold was released.)
    Refused,
    /// Past its date: delete.
    Due {
        /// Its retention date.
        until_utc: String,
    },
    /// The index holds no time that reads (a row changed by hand): kept, and said so.
    Unreadable,
}

/// The retention date of a recording received at `received`, if it is one that can be written
/// (before the year 10000).
pub fn until(received: SystemTime, keep_days: u32) -> Option<SystemTime> {
    let last = neoflix_format::parse_utc("9999-12-31T23:59:59Z")?;
    received
        .checked_add(Duration::from_secs(u64::from(keep_days) * 86_400))
        .filter(|u| *u <= last)
}

impl Verdict {
    /// When the recording is deleted, as the page shows it: `None` while a hold keeps it or
    /// its time does not read.
    pub fn delete_after_utc(&self) -> Option<String> {
        match self {
            Verdict::Keep { until_utc }
            | Verdict::Teaching { until_utc }
            | Verdict::Due { until_utc } => Some(until_utc.clone()),
            Verdict::Held { .. } | Verdict::Unreadable | Verdict::Refused => None,
        }
    }
}

/// What retention does with a recording received at `received_utc`, held for `hold` (its
/// reason), in the teaching library until `teaching_until_utc`, and whose filming or review
/// was `refused`, at `now`. A recording still uploading is judged the same way: an upload
/// abandoned half-way must not outlive the policy either. The library's date replaces the
/// usual one; a hold keeps it past either, and past a refusal.
pub fn verdict(
    received_utc: &str,
    hold: Option<&str>,
    teaching_until_utc: Option<&str>,
    refused: bool,
    keep_days: u32,
    now: SystemTime,
) -> Verdict {
    if refused && hold.is_none() {
        return Verdict::Refused;
    }
    let date = match teaching_until_utc {
        Some(t) => neoflix_format::parse_utc(t),
        None => neoflix_format::parse_utc(received_utc).and_then(|t| until(t, keep_days)),
    };
    let Some(until) = date else {
        return Verdict::Unreadable;
    };
    let until_utc = neoflix_format::utc(until);
    match (hold, until <= now) {
        (_, false) if teaching_until_utc.is_some() => Verdict::Teaching { until_utc },
        (_, false) => Verdict::Keep { until_utc },
        (Some(reason), true) => Verdict::Held {
            until_utc,
            reason: reason.to_string(),
        },
        (None, true) => Verdict::Due { until_utc },
    }
}

/// [`verdict`] of an index row.
pub fn verdict_of(r: &Retained, keep_days: u32, now: SystemTime) -> Verdict {
    verdict(
        &r.received_utc,
        r.hold.as_deref(),
        r.teaching_until_utc.as_deref(),
        r.refused,
        keep_days,
        now,
    )
}

impl Purged {
    /// Why it went, as a line says it.
    pub fn why(&self) -> String {
        match &self.until_utc {
            Some(u) => format!("kept until {u}"),
            None => "consent to film or review refused".into(),
        }
    }
}

/// One recording deleted (or, in a dry run, to be deleted), or that could not be.
#[derive(Debug)]
pub struct Purged {
    /// The box.
    pub device: String,
    /// The recording.
    pub id: String,
    /// Its retention date; `None` when it went because consent was refused.
    pub until_utc: Option<String>,
    /// What went (`None` in a dry run), or why it could not.
    pub outcome: Result<Option<Shredded>, String>,
}

/// Deletes every recording due at `now` (none in a dry run): for each, its hold and teaching
/// date are looked at again in the transaction that writes its audit entry, then storage
/// (key records first), then the index. One whose filming or review was refused is withdrawn
/// (its box is told to delete its copy). A failure with one recording is its outcome and the
/// others go on. `who` names who applies it (`retention` for the server, `admin` for `purge`).
pub fn purge(
    keeper: &Keeper,
    keep_days: u32,
    now: SystemTime,
    dry_run: bool,
    who: Who,
) -> Result<Vec<Purged>, RetentionError> {
    let mut out = Vec::new();
    for r in keeper.db.retained()? {
        let until_utc = match verdict_of(&r, keep_days, now) {
            Verdict::Due { until_utc } => Some(until_utc),
            Verdict::Refused => None,
            _ => continue,
        };
        let outcome = match (&until_utc, dry_run) {
            (_, true) => Ok(None),
            (Some(until), false) => delete_one(keeper, &r, keep_days, until, now, who),
            (None, false) => match keeper.withdraw(
                &r.device,
                &r.id,
                who,
                "consent refused",
                Cause::ConsentRefused,
                now,
            ) {
                Ok(s) => Ok(Some(s)),
                Err(LifecycleError::Held { .. }) => Ok(None),
                Err(e) => Err(e.to_string()),
            },
        };
        if matches!(outcome, Ok(None)) && !dry_run {
            continue; // held (or placed in the library) since the list was read
        }
        out.push(Purged {
            device: r.device,
            id: r.id,
            until_utc,
            outcome,
        });
    }
    Ok(out)
}

/// Deletes `r` unless, in the transaction that would audit it, it is found held, moved into
/// the teaching library, or already gone: a second sweep (another replica's, or `purge` run
/// by hand while the server runs) that read the list before the first deleted it leaves no
/// second entry.
pub(crate) fn delete_one(
    keeper: &Keeper,
    r: &Retained,
    keep_days: u32,
    until_utc: &str,
    now: SystemTime,
    who: Who,
) -> Result<Option<Shredded>, String> {
    let recording = format!("{}/{}", r.device, r.id);
    // A hold placed, or a teaching date set, while this ran wins; the check and the entry are
    // one transaction.
    let decided = keeper.db.atomically(|c, events| -> Result<bool, DbError> {
        if !db::indexed_in(c, &r.device, &r.id)? {
            return Ok(false);
        }
        let held = db::hold_in(c, &r.device, &r.id)?;
        let teaching = db::teaching_in(c, &r.device, &r.id)?;
        if held.is_some() || teaching != r.teaching_until_utc {
            return Ok(false);
        }
        events.push(Event {
            actor: who.actor.into(),
            action: Action::RecordingDeleted,
            recording,
            client: who.client.into(),
            detail: json!({
                "reason": "retention",
                "keep_days": keep_days,
                "until_utc": until_utc,
                "applied_as_of_utc": neoflix_format::utc(now),
            }),
        });
        Ok(true)
    });
    match decided {
        Ok(true) => {}
        Ok(false) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    }
    let shredded = keeper
        .store
        .delete(&r.device, &r.id)
        .map_err(|e| e.to_string())?;
    keeper
        .db
        .forget_recording(&r.device, &r.id)
        .map_err(|e| e.to_string())?;
    Ok(Some(shredded))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Upload;

    fn row(upload: Upload, received: &str, hold: Option<&str>) -> Retained {
        Retained {
            device: "room-1".into(),
            id: "r".into(),
            upload,
            received_utc: received.into(),
            first_frame_utc: None,
            duration_secs: Some(60.0),
            hold: hold.map(Into::into),
            teaching_until_utc: None,
            refused: false,
        }
    }

    fn at(s: &str) -> SystemTime {
        neoflix_format::parse_utc(s).unwrap()
    }

    #[test]
    fn a_recording_is_due_keep_days_after_it_arrived_unless_held() {
        let received = "2026-11-01T10:00:00.000Z";
        let until_utc = "2026-12-01T10:00:00.000Z".to_string();
        let r = row(Upload::Complete, received, None);
        assert_eq!(
            verdict_of(&r, 30, at("2026-12-01T09:59:59Z")),
            Verdict::Keep {
                until_utc: until_utc.clone()
            }
        );
        assert_eq!(
            verdict_of(&r, 30, at("2026-12-01T10:00:00Z")),
            Verdict::Due {
                until_utc: until_utc.clone()
            }
        );
        let later = at("2027-06-01T00:00:00Z");
        assert_eq!(
            verdict_of(
                &row(Upload::Complete, received, Some("court order")),
                30,
                later
            ),
            Verdict::Held {
                until_utc: until_utc.clone(),
                reason: "court order".into()
            }
        );
        // An upload abandoned half-way is not kept for ever.
        assert_eq!(
            verdict_of(&row(Upload::Uploading, received, None), 30, later),
            Verdict::Due { until_utc }
        );
    }

    #[test]
    fn the_teaching_library_keeps_a_recording_until_its_own_date_and_a_hold_past_that() {
        let received = "2026-11-01T10:00:00.000Z";
        let mut r = row(Upload::Complete, received, None);
        r.teaching_until_utc = Some("2028-01-01T00:00:00.000Z".into());
        let teaching = Verdict::Teaching {
            until_utc: "2028-01-01T00:00:00.000Z".into(),
        };
        assert_eq!(verdict_of(&r, 30, at("2027-06-01T00:00:00Z")), teaching);
        assert_eq!(
            teaching.delete_after_utc().as_deref(),
            Some("2028-01-01T00:00:00.000Z")
        );
        let due = verdict_of(&r, 30, at("2028-01-01T00:00:00Z"));
        assert!(matches!(due, Verdict::Due { .. }), "{due:?}");
        // A library date sooner than the usual one is the date: the chair chose it.
        r.teaching_until_utc = Some("2026-11-10T00:00:00.000Z".into());
        assert!(matches!(
            verdict_of(&r, 30, at("2026-11-20T00:00:00Z")),
            Verdict::Due { .. }
        ));
        r.hold = Some("inquest".into());
        let held = verdict_of(&r, 30, at("2030-01-01T00:00:00Z"));
        assert!(matches!(held, Verdict::Held { .. }), "{held:?}");
        assert_eq!(held.delete_after_utc(), None);
        r.refused = true;
        let held = verdict_of(&r, 30, at("2026-11-20T00:00:00Z"));
        assert!(
            matches!(held, Verdict::Held { .. }),
            "a hold outlasts a refusal: {held:?}"
        );
        r.hold = None;
        assert_eq!(
            verdict_of(&r, 30, at("2026-11-02T00:00:00Z")),
            Verdict::Refused
        );
        r.refused = false;
        r.teaching_until_utc = Some("never".into());
        assert_eq!(
            verdict_of(&r, 30, at("2030-01-01T00:00:00Z")),
            Verdict::Unreadable
        );
    }

    #[test]
    fn times_that_do_not_read_or_overflow_keep_the_recording_and_do_not_panic() {
        let later = at("2027-06-01T00:00:00Z");
        for received in ["yesterday", "", "9999-12-30T00:00:00Z"] {
            assert_eq!(
                verdict_of(&row(Upload::Complete, received, None), 3650, later),
                Verdict::Unreadable,
                "{received}"
            );
        }
    }
}
