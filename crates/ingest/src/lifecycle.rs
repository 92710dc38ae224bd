//! The changes of a recording's lifecycle that people make (docs/privacy.md): withdrawal (a
//! chair on the page, the admin's `withdraw`, a refused consent), consent answers and the
//! teaching library. Each is in the audit log before it takes effect, so that nothing is
//! deleted or kept without its entry; retention's own deletions are in `retention`.

use std::time::{Duration, SystemTime};

use neoflix_format::review_api::{Answer, Consent, ConsentRequest, Question, Recorded};
use serde_json::json;

use crate::audit::{Action, Event};
use crate::db::{Db, DbError};
use crate::storage::{Shredded, Storage, StorageError};

/// The most days a recording may stay in the teaching library from the day it is placed there.
pub const MAX_TEACHING_DAYS: u32 = 3650;

/// Who makes a change, as the audit log names them.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    /// A chair's name, or `admin`.
    pub actor: &'a str,
    /// The client's address, or `cli`.
    pub client: &'a str,
}

/// A change that could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LifecycleError {
    /// A legal hold keeps the recording.
    #[error(
        "{recording} is under a legal hold ({reason}): release it first (neoflix-ingest hold ID --release), with the privacy officer"
    )]
    Held {
        /// `device/id`.
        recording: String,
        /// The hold's reason.
        reason: String,
    },
    /// Only a recording whose use is granted goes into the teaching library.
    #[error(
        "{0}: consent to use it for teaching is not granted (or consent to film or review it is refused): record the use consent first"
    )]
    NoUseConsent(String),
    /// The library's date is out of bounds.
    #[error("keep it 1 to {MAX_TEACHING_DAYS} days in the teaching library")]
    Days,
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The notice could not be signed.
    #[error("signing the withdrawal notice: {0}")]
    Sign(String),
}

fn event(who: Who, action: Action, recording: &str, detail: serde_json::Value) -> Event {
    Event {
        actor: who.actor.into(),
        action,
        recording: recording.into(),
        client: who.client.into(),
        detail,
    }
}

/// Why a recording is withdrawn, for the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Someone withdrew it.
    Withdrawal,
    /// Consent to film or review it was refused.
    ConsentRefused,
}

impl Cause {
    fn as_str(self) -> &'static str {
        match self {
            Cause::Withdrawal => "withdrawal",
            Cause::ConsentRefused => "consent-refused",
        }
    }
}

/// Withdraws `device`/`id`: refused under a legal hold; else the audit entry, then the signed
/// notice and the deletion (key records first; a crash part-way is finished at the server's
/// next start), then the index forgets it. The box that recorded it deletes its copy when it
/// next asks.
#[allow(clippy::too_many_arguments)]
pub fn withdraw(
    store: &Storage,
    db: &Db,
    identity: &neoflix_format::SigningIdentity,
    device: &str,
    id: &str,
    who: Who,
    reason: &str,
    cause: Cause,
    now: SystemTime,
) -> Result<Shredded, LifecycleError> {
    let recording = format!("{device}/{id}");
    if let Some(reason) = db.hold_of(device, id)? {
        return Err(LifecycleError::Held { recording, reason });
    }
    let notice = neoflix_format::SignedWithdrawal::sign(
        &neoflix_format::Withdrawal {
            recording_id: id.to_string(),
            device_id: device.to_string(),
            withdrawn_utc: neoflix_format::utc(now),
        },
        identity,
        now,
    )
    .map_err(|e| LifecycleError::Sign(e.to_string()))?;
    db.append_audit(&event(
        who,
        Action::RecordingWithdrawn,
        &recording,
        json!({ "reason": reason, "cause": cause.as_str() }),
    ))?;
    let shredded = store.withdraw(device, id, &notice.to_json())?;
    db.forget_recording(device, id)?;
    Ok(shredded)
}

/// What recording a consent answer did besides being recorded.
#[derive(Debug, PartialEq, Eq)]
pub enum Consequence {
    /// Nothing else.
    None,
    /// Filming or review refused: the recording was withdrawn.
    Withdrawn(Shredded),
    /// Filming or review refused, but a legal hold keeps it (nobody can open it meanwhile).
    KeptUnderHold(String),
    /// Use no longer granted: it left the teaching library.
    LeftTeaching,
}

/// Records a chair's consent answer to `device`/`id`, whose answers were `before`: audited
/// first, with the answer it replaces. Refusing filming or review withdraws the recording;
/// use no longer granted takes it out of the teaching library.
#[allow(clippy::too_many_arguments)]
pub fn set_consent(
    store: &Storage,
    db: &Db,
    identity: &neoflix_format::SigningIdentity,
    device: &str,
    id: &str,
    before: &Consent,
    req: &ConsentRequest,
    who: Who,
    now: SystemTime,
) -> Result<Consequence, LifecycleError> {
    let recording = format!("{device}/{id}");
    let was = before.get(req.question);
    db.append_audit(&event(
        who,
        Action::ConsentSet,
        &recording,
        json!({
            "question": req.question.as_str(),
            "answer": req.answer.as_str(),
            "note": req.note,
            "form_ref": req.form_ref,
            "before": was.answer.as_str(),
        }),
    ))?;
    let recorded = Recorded {
        answer: req.answer,
        by: Some(who.actor.to_string()),
        utc: Some(neoflix_format::utc(now)),
        note: req.note.clone(),
        form_ref: req.form_ref.clone(),
    };
    db.set_consent(device, id, req.question, &recorded)?;
    let refusal = req.answer == Answer::Refused && req.question != Question::Use;
    if refusal {
        let reason = format!("consent to {} refused", req.question.as_str());
        return match withdraw(
            store,
            db,
            identity,
            device,
            id,
            who,
            &reason,
            Cause::ConsentRefused,
            now,
        ) {
            Ok(s) => Ok(Consequence::Withdrawn(s)),
            Err(LifecycleError::Held { reason, .. }) => Ok(Consequence::KeptUnderHold(reason)),
            Err(e) => Err(e),
        };
    }
    if req.question == Question::Use && req.answer != Answer::Granted {
        let r = format!("consent to use it is now {}", req.answer.as_str());
        if leave_teaching(db, device, id, who, &r)? {
            return Ok(Consequence::LeftTeaching);
        }
    }
    Ok(Consequence::None)
}

fn leave_teaching(
    db: &Db,
    device: &str,
    id: &str,
    who: Who,
    reason: &str,
) -> Result<bool, LifecycleError> {
    if db.teaching_of(device, id)?.is_none() {
        return Ok(false);
    }
    db.append_audit(&event(
        who,
        Action::TeachingRemoved,
        &format!("{device}/{id}"),
        json!({ "reason": reason }),
    ))?;
    Ok(db.remove_teaching(device, id)?)
}

/// Places `device`/`id` in the teaching library for `days` from `now` (its consent, `consent`,
/// must grant use and refuse nothing), or takes it out (`None`). Returns the library's date.
pub fn teaching(
    db: &Db,
    device: &str,
    id: &str,
    consent: &Consent,
    days: Option<u32>,
    who: Who,
    now: SystemTime,
) -> Result<Option<String>, LifecycleError> {
    let recording = format!("{device}/{id}");
    let Some(days) = days else {
        leave_teaching(db, device, id, who, "taken out by a chair")?;
        return Ok(None);
    };
    if !(1..=MAX_TEACHING_DAYS).contains(&days) {
        return Err(LifecycleError::Days);
    }
    if consent.use_.answer != Answer::Granted || consent.refused().is_some() {
        return Err(LifecycleError::NoUseConsent(recording));
    }
    let until = neoflix_format::utc(now + Duration::from_secs(u64::from(days) * 86_400));
    db.append_audit(&event(
        who,
        Action::TeachingAdded,
        &recording,
        json!({ "until_utc": until, "days": days }),
    ))?;
    db.set_teaching(device, id, &until, who.actor)?;
    Ok(Some(until))
}
