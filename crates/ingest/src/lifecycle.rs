//! The changes of a recording's lifecycle that people make (docs/privacy.md): withdrawal (a
//! chair on the page, the admin's `withdraw`, a refused consent), consent answers and the
//! teaching library. Each decision and its audit entry are one database transaction, which
//! also reads what the decision depends on (the hold, the consent, whether the recording is
//! still indexed), so no change happens without its entry and no two changes interleave.
//! Retention's own deletions are in `retention`.

use std::time::{Duration, SystemTime};

use neoflix_format::review_api::{Answer, ConsentRequest, Question, Recorded};
use serde_json::json;

use crate::audit::{Action, Event};
use crate::db::{self, Db, DbError};
use crate::storage::{Shredded, Storage, StorageError};

/// The most days a recording may stay in the teaching library from the day it is placed there.
pub const MAX_TEACHING_DAYS: u32 = 3650;

/// Who makes a change, as the audit log names them.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    /// A chair's name, `admin`, or `retention`.
    pub actor: &'a str,
    /// The client's address, `cli`, or `server`.
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
    /// The recording is not (or no longer) in the index.
    #[error("{0}: no such recording (withdrawn or deleted meanwhile?)")]
    NotFound(String),
    /// A refusal to be filmed or reviewed is not changed: the recording is deleted, or kept
    /// closed under a legal hold until it can be.
    #[error(
        "{recording}: consent to {question} was refused; a refusal is final (the recording is deleted, or kept closed under a legal hold until it can be)"
    )]
    RefusalIsFinal {
        /// `device/id`.
        recording: String,
        /// `filmed` or `review`.
        question: &'static str,
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
    #[error("signing the withdrawal notice")]
    Sign(#[source] neoflix_format::SignatureError),
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

/// What a consent answer did besides being recorded.
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

/// A recording a refusal withdrew, or why it could not be.
#[derive(Debug)]
pub struct Finished {
    /// The box.
    pub device: String,
    /// The recording.
    pub id: String,
    /// What went, or why it could not.
    pub outcome: Result<Shredded, String>,
}

/// The parts a [`Keeper`] borrows, owned and shared by the server's tasks.
pub struct Shared {
    /// The recordings.
    pub store: std::sync::Arc<Storage>,
    /// The database.
    pub db: std::sync::Arc<Db>,
    /// Signs withdrawal notices.
    pub identity: std::sync::Arc<neoflix_format::SigningIdentity>,
}

impl Shared {
    /// A keeper borrowing these parts.
    pub fn keeper(&self) -> Keeper<'_> {
        Keeper {
            store: &self.store,
            db: &self.db,
            identity: &self.identity,
        }
    }
}

/// What the lifecycle's changes work on: the storage, the database, and the identity that
/// signs withdrawal notices.
#[derive(Clone, Copy)]
pub struct Keeper<'a> {
    /// The recordings.
    pub store: &'a Storage,
    /// The index, consent, holds and the audit log.
    pub db: &'a Db,
    /// Signs withdrawal notices (the server's `[tls]` identity).
    pub identity: &'a neoflix_format::SigningIdentity,
}

impl Keeper<'_> {
    /// Withdraws `device`/`id`: refused under a legal hold; else the audit entry (with the
    /// hold looked at in the same transaction), then the signed notice and the deletion (key
    /// records first; a crash part-way is finished at the server's next start), then the index
    /// forgets it. The box that recorded it deletes its copy when it next asks. A hold placed
    /// after the entry is written does not stop a withdrawal under way.
    pub fn withdraw(
        &self,
        device: &str,
        id: &str,
        who: Who,
        reason: &str,
        cause: Cause,
        now: SystemTime,
    ) -> Result<Shredded, LifecycleError> {
        let recording = format!("{device}/{id}");
        let notice = neoflix_format::SignedWithdrawal::sign(
            &neoflix_format::Withdrawal {
                recording_id: id.to_string(),
                device_id: device.to_string(),
                withdrawn_utc: neoflix_format::utc(now),
            },
            self.identity,
            now,
        )
        .map_err(LifecycleError::Sign)?;
        self.db.atomically(|c, events| {
            if let Some(reason) = db::hold_in(c, device, id)? {
                return Err(LifecycleError::Held {
                    recording: recording.clone(),
                    reason,
                });
            }
            // Withdrawn before (by another replica, or before a crash): its entry is written;
            // the deletion, which is idempotent, is finished below all the same.
            if db::note_withdrawal_in(c, device, id)? {
                events.push(event(
                    who,
                    Action::RecordingWithdrawn,
                    &recording,
                    json!({ "reason": reason, "cause": cause.as_str() }),
                ));
            }
            Ok(())
        })?;
        let shredded = self.store.withdraw(device, id, &notice.to_json())?;
        self.db.forget_recording(device, id)?;
        Ok(shredded)
    }

    /// Records a chair's consent answer to `device`/`id`, audited with the answer it replaces.
    /// A refusal to be filmed or reviewed is final and withdraws the recording; use no longer
    /// granted takes it out of the teaching library.
    pub fn set_consent(
        &self,
        device: &str,
        id: &str,
        req: &ConsentRequest,
        who: Who,
        now: SystemTime,
    ) -> Result<Consequence, LifecycleError> {
        let recording = format!("{device}/{id}");
        let left_teaching = self.db.atomically(|c, events| {
            if !db::indexed_in(c, device, id)? {
                return Err(LifecycleError::NotFound(recording.clone()));
            }
            let before = db::consent_in(c, device, id)?.get(req.question).answer;
            if before == Answer::Refused && req.question != Question::Use {
                return Err(LifecycleError::RefusalIsFinal {
                    recording: recording.clone(),
                    question: req.question.as_str(),
                });
            }
            events.push(event(
                who,
                Action::ConsentSet,
                &recording,
                json!({
                    "question": req.question.as_str(),
                    "answer": req.answer.as_str(),
                    "note": req.note,
                    "form_ref": req.form_ref,
                    "before": before.as_str(),
                }),
            ));
            let recorded = Recorded {
                answer: req.answer,
                by: Some(who.actor.to_string()),
                utc: Some(neoflix_format::utc(now)),
                note: req.note.clone(),
                form_ref: req.form_ref.clone(),
            };
            db::set_consent_in(c, device, id, req.question, &recorded)?;
            let use_withdrawn = req.question == Question::Use && req.answer != Answer::Granted;
            if use_withdrawn && db::remove_teaching_in(c, device, id)? {
                events.push(event(
                    who,
                    Action::TeachingRemoved,
                    &recording,
                    json!({ "reason": format!("consent to use it is now {}", req.answer.as_str()) }),
                ));
                return Ok(true);
            }
            Ok(false)
        })?;
        if req.answer == Answer::Refused && req.question != Question::Use {
            let reason = format!("consent to {} refused", req.question.as_str());
            return match self.withdraw(device, id, who, &reason, Cause::ConsentRefused, now) {
                Ok(s) => Ok(Consequence::Withdrawn(s)),
                Err(LifecycleError::Held { reason, .. }) => Ok(Consequence::KeptUnderHold(reason)),
                Err(e) => Err(e),
            };
        }
        Ok(if left_teaching {
            Consequence::LeftTeaching
        } else {
            Consequence::None
        })
    }

    /// Places `device`/`id` in the teaching library for `days` from `now` (its consent must
    /// grant use and refuse nothing), or takes it out (`None`). Returns the library's date.
    pub fn teaching(
        &self,
        device: &str,
        id: &str,
        days: Option<u32>,
        who: Who,
        now: SystemTime,
    ) -> Result<Option<String>, LifecycleError> {
        let recording = format!("{device}/{id}");
        if days.is_some_and(|d| !(1..=MAX_TEACHING_DAYS).contains(&d)) {
            return Err(LifecycleError::Days);
        }
        self.db.atomically(|c, events| {
            if !db::indexed_in(c, device, id)? {
                return Err(LifecycleError::NotFound(recording.clone()));
            }
            let Some(days) = days else {
                if db::remove_teaching_in(c, device, id)? {
                    events.push(event(
                        who,
                        Action::TeachingRemoved,
                        &recording,
                        json!({ "reason": "taken out by a chair" }),
                    ));
                }
                return Ok(None);
            };
            let consent = db::consent_in(c, device, id)?;
            if consent.use_.answer != Answer::Granted || consent.refused().is_some() {
                return Err(LifecycleError::NoUseConsent(recording.clone()));
            }
            let until = neoflix_format::utc(now + Duration::from_secs(u64::from(days) * 86_400));
            events.push(event(
                who,
                Action::TeachingAdded,
                &recording,
                json!({ "until_utc": until, "days": days }),
            ));
            db::set_teaching_in(c, device, id, &until, who.actor)?;
            Ok(Some(until))
        })
    }

    /// Withdraws every recording whose filming or review was refused and that no hold keeps:
    /// one whose withdrawal a crash interrupted, or whose hold was released. Run at the
    /// server's start, after a hold is released, and by retention.
    pub fn finish_refusals(
        &self,
        who: Who,
        now: SystemTime,
    ) -> Result<Vec<Finished>, LifecycleError> {
        let mut out = Vec::new();
        for r in self.db.retained()? {
            if !r.refused || r.hold.is_some() {
                continue;
            }
            let outcome = match self.withdraw(
                &r.device,
                &r.id,
                who,
                "consent refused",
                Cause::ConsentRefused,
                now,
            ) {
                // Held since the list was read: kept, closed.
                Err(LifecycleError::Held { .. }) => continue,
                o => o.map_err(|e| e.to_string()),
            };
            out.push(Finished {
                device: r.device,
                id: r.id,
                outcome,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::custody::testing::TestPki;

    struct Fixture {
        dir: tempfile::TempDir,
        store: Storage,
        db: Db,
        identity: neoflix_format::SigningIdentity,
        _pki: TestPki,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let store = Storage::open(&dir.path().join("server"), 1 << 20).unwrap();
            let db = Db::open(&dir.path().join("db/neoflix.db")).unwrap();
            let pki = TestPki::new();
            let identity = pki.device("server");
            Fixture {
                dir,
                store,
                db,
                identity,
                _pki: pki,
            }
        }

        fn keeper(&self) -> Keeper<'_> {
            Keeper {
                store: &self.store,
                db: &self.db,
                identity: &self.identity,
            }
        }

        /// An indexed recording with a key record and an object on storage.
        fn recording(&self, id: &str) -> std::path::PathBuf {
            let dir = self.dir.path().join("server/room-1").join(id);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("frag-000000.key"), [1; 144]).unwrap();
            std::fs::write(dir.join("frag-000000.nfx"), [2; 100]).unwrap();
            self.db.index_uploading("room-1", id).unwrap();
            dir
        }
    }

    const CHAIR: Who = Who {
        actor: "dr.chair",
        client: "127.0.0.1",
    };

    fn answer(question: Question, answer: Answer) -> ConsentRequest {
        ConsentRequest {
            question,
            answer,
            note: String::new(),
            form_ref: "CF-1".into(),
        }
    }

    #[test]
    fn a_recording_withdrawn_twice_is_audited_once_and_deleted() {
        let f = Fixture::new();
        let dir = f.recording("r1");
        let now = std::time::SystemTime::now();
        // As a second replica, or a retry after a crash before the deletion, would.
        for _ in 0..2 {
            f.keeper()
                .withdraw("room-1", "r1", CHAIR, "form 7", Cause::Withdrawal, now)
                .unwrap();
        }
        assert!(!dir.exists());
        let withdrawn = actions(&f.db)
            .iter()
            .filter(|a| *a == "recording-withdrawn")
            .count();
        assert_eq!(withdrawn, 1, "{:?}", actions(&f.db));
    }

    #[test]
    fn a_recording_another_sweep_deleted_is_neither_deleted_nor_audited_again() {
        let f = Fixture::new();
        f.recording("r1");
        let stale = f.db.retained().unwrap().remove(0);
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(400 * 86_400);
        let sweep = Who {
            actor: "retention",
            client: "server",
        };
        let first = crate::retention::purge(&f.keeper(), 30, later, false, sweep).unwrap();
        assert!(
            matches!(first[..], [ref p] if p.outcome.is_ok()),
            "{first:?}"
        );
        // A sweep that read the list before the first one deleted the recording.
        let again = crate::retention::delete_one(&f.keeper(), &stale, 30, "x", later, sweep);
        assert_eq!(again, Ok(None));
        let deleted = actions(&f.db)
            .iter()
            .filter(|a| *a == "recording-deleted")
            .count();
        assert_eq!(deleted, 1, "{:?}", actions(&f.db));
    }

    fn actions(db: &Db) -> Vec<String> {
        db.audit().unwrap().into_iter().map(|e| e.action).collect()
    }

    #[test]
    fn a_refusal_under_a_hold_keeps_it_closed_is_final_and_is_finished_once_released() {
        let f = Fixture::new();
        let k = f.keeper();
        let dir = f.recording("r1");
        f.db.hold("room-1", "r1", "inquest").unwrap();
        let now = SystemTime::now();
        let refused = k
            .set_consent(
                "room-1",
                "r1",
                &answer(Question::Review, Answer::Refused),
                CHAIR,
                now,
            )
            .unwrap();
        assert_eq!(refused, Consequence::KeptUnderHold("inquest".into()));
        assert!(dir.exists());
        let again = k.set_consent(
            "room-1",
            "r1",
            &answer(Question::Review, Answer::Granted),
            CHAIR,
            now,
        );
        assert!(
            matches!(
                again,
                Err(LifecycleError::RefusalIsFinal {
                    question: "review",
                    ..
                })
            ),
            "{again:?}"
        );
        // Still held: nothing to finish.
        assert!(k.finish_refusals(CHAIR, now).unwrap().is_empty());
        f.db.release("room-1", "r1").unwrap();
        let done = k.finish_refusals(CHAIR, now).unwrap();
        assert_eq!(done.len(), 1);
        let s = done[0].outcome.as_ref().unwrap();
        assert_eq!((s.key_records, s.other_files), (1, 1));
        assert!(!dir.exists());
        assert!(
            f.store.withdrawn("room-1", "r1").unwrap().is_some(),
            "the box is told to delete its copy"
        );
        assert_eq!(
            actions(&f.db),
            ["consent-set", "recording-withdrawn"],
            "the refused re-grant left no entry"
        );
    }

    #[test]
    fn a_refusal_whose_withdrawal_was_interrupted_is_finished_with_a_notice() {
        let f = Fixture::new();
        let dir = f.recording("r2");
        // As a crash after the answer's transaction leaves it.
        let refused = Recorded {
            answer: Answer::Refused,
            by: Some("dr.chair".into()),
            utc: None,
            note: String::new(),
            form_ref: String::new(),
        };
        f.db.set_consent("room-1", "r2", Question::Filmed, &refused)
            .unwrap();
        let done = f
            .keeper()
            .finish_refusals(CHAIR, SystemTime::now())
            .unwrap();
        assert_eq!(done.len(), 1);
        assert!(!dir.exists());
        assert!(f.store.withdrawn("room-1", "r2").unwrap().is_some());
        assert_eq!(f.db.consent_of("room-1", "r2").unwrap(), Default::default());
    }

    #[test]
    fn the_teaching_library_follows_the_use_consent_and_nothing_outlives_a_withdrawal() {
        let f = Fixture::new();
        let k = f.keeper();
        f.recording("r3");
        let now = SystemTime::now();
        assert!(matches!(
            k.teaching("room-1", "r3", Some(365), CHAIR, now),
            Err(LifecycleError::NoUseConsent(_))
        ));
        assert!(matches!(
            k.teaching("room-1", "r3", Some(0), CHAIR, now),
            Err(LifecycleError::Days)
        ));
        k.set_consent(
            "room-1",
            "r3",
            &answer(Question::Use, Answer::Granted),
            CHAIR,
            now,
        )
        .unwrap();
        let until = k.teaching("room-1", "r3", Some(365), CHAIR, now).unwrap();
        assert_eq!(f.db.teaching_of("room-1", "r3").unwrap(), until);
        let left = k
            .set_consent(
                "room-1",
                "r3",
                &answer(Question::Use, Answer::Pending),
                CHAIR,
                now,
            )
            .unwrap();
        assert_eq!(left, Consequence::LeftTeaching);
        assert_eq!(f.db.teaching_of("room-1", "r3").unwrap(), None);
        k.withdraw(
            "room-1",
            "r3",
            CHAIR,
            "parents withdrew",
            Cause::Withdrawal,
            now,
        )
        .unwrap();
        // A chair's answer arriving after the withdrawal finds nothing, and leaves nothing.
        let late = k.set_consent(
            "room-1",
            "r3",
            &answer(Question::Use, Answer::Granted),
            CHAIR,
            now,
        );
        assert!(matches!(late, Err(LifecycleError::NotFound(_))), "{late:?}");
        assert!(matches!(
            k.teaching("room-1", "r3", None, CHAIR, now),
            Err(LifecycleError::NotFound(_))
        ));
        assert_eq!(f.db.consent_of("room-1", "r3").unwrap(), Default::default());
        assert_eq!(
            actions(&f.db),
            [
                "consent-set",
                "teaching-added",
                "consent-set",
                "teaching-removed",
                "recording-withdrawn"
            ]
        );
        assert!(f.db.verify_audit().unwrap().is_ok());
    }
}
