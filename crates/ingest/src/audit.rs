//! The audit log's hash chain (docs/review.md, "The audit log"), without I/O: an entry's hash,
//! and the check of a whole chain. The database stores entries; this says what they must be.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// The `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The domain label hashed first.
const LABEL: &[u8] = b"neoflix-audit-v1";

/// What happened, as the audit log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A reviewer signed in.
    SignIn,
    /// A wrong passphrase (or an unknown name).
    SignInFailed,
    /// A sign-in refused by the rate limit, unchecked.
    SignInRefused,
    /// A reviewer signed out.
    SignOut,
    /// A reviewer opened a recording's manifest.
    RecordingOpened,
    /// The page is about to make a decrypted download.
    Download,
    /// `reviewer import`.
    ReviewerImported,
    /// `reviewer remove`.
    ReviewerRemoved,
    /// `withdraw`: the recording is deleted everywhere; the reason is in the detail.
    RecordingWithdrawn,
    /// Retention deleted a recording past its date.
    RecordingDeleted,
    /// `hold`: a legal hold placed (or its reason changed).
    LegalHold,
    /// `hold --release`.
    LegalHoldReleased,
    /// A chair recorded a consent answer (question, answer, note, form reference, before).
    ConsentSet,
    /// A chair placed a recording in the teaching library (or moved its date).
    TeachingAdded,
    /// A recording left the teaching library (a chair, or its use consent no longer granted).
    TeachingRemoved,
    /// A re-imported reviewer file changed a person's roles.
    RolesChanged,
    /// Someone signed in asked for what their roles do not allow (the first time per session
    /// and request).
    Forbidden,
    /// The privacy officer read or exported the audit log (with the filters).
    AuditRead,
}

impl Action {
    /// The name in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::SignIn => "sign-in",
            Action::SignInFailed => "sign-in-failed",
            Action::SignInRefused => "sign-in-refused",
            Action::SignOut => "sign-out",
            Action::RecordingOpened => "recording-opened",
            Action::Download => "download",
            Action::ReviewerImported => "reviewer-imported",
            Action::ReviewerRemoved => "reviewer-removed",
            Action::RecordingWithdrawn => "recording-withdrawn",
            Action::RecordingDeleted => "recording-deleted",
            Action::LegalHold => "legal-hold",
            Action::LegalHoldReleased => "legal-hold-released",
            Action::ConsentSet => "consent-set",
            Action::TeachingAdded => "teaching-added",
            Action::TeachingRemoved => "teaching-removed",
            Action::RolesChanged => "roles-changed",
            Action::Forbidden => "forbidden",
            Action::AuditRead => "audit-read",
        }
    }

    /// Every action, as the privacy officer's page offers them as a filter.
    pub const ALL: [Action; 18] = [
        Action::SignIn,
        Action::SignInFailed,
        Action::SignInRefused,
        Action::SignOut,
        Action::RecordingOpened,
        Action::Download,
        Action::ReviewerImported,
        Action::ReviewerRemoved,
        Action::RecordingWithdrawn,
        Action::RecordingDeleted,
        Action::LegalHold,
        Action::LegalHoldReleased,
        Action::ConsentSet,
        Action::TeachingAdded,
        Action::TeachingRemoved,
        Action::RolesChanged,
        Action::Forbidden,
        Action::AuditRead,
    ];
}

/// An entry before it is chained: what the caller says happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Who: a reviewer's name (or the name tried), or `admin` for the subcommands.
    pub actor: String,
    /// What.
    pub action: Action,
    /// `device/id`, or empty.
    pub recording: String,
    /// The client's address, or `cli`.
    pub client: String,
    /// JSON object with details.
    pub detail: serde_json::Value,
}

/// An entry as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Position, from 1.
    pub seq: i64,
    /// When (RFC 3339 UTC, milliseconds).
    pub utc: String,
    /// Who.
    pub actor: String,
    /// What (see [`Action::as_str`]).
    pub action: String,
    /// `device/id`, or empty.
    pub recording: String,
    /// Address or `cli`.
    pub client: String,
    /// JSON text.
    pub detail: String,
    /// The previous entry's hash.
    pub prev: String,
    /// This entry's hash.
    pub hash: String,
}

/// `hex(SHA-256("neoflix-audit-v1" || for each field: 8-byte big-endian length || bytes))`,
/// the fields in the documented order: prev, seq (decimal), utc, actor, action, recording,
/// client, detail.
pub fn hash(fields: [&str; 8]) -> String {
    let mut h = Sha256::new();
    h.update(LABEL);
    for field in fields {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    hex::encode(h.finalize())
}

impl Entry {
    /// The entry that follows `prev` (the previous entry's seq and hash, `None` for the first).
    pub fn next(prev: Option<(i64, &str)>, utc: String, e: &Event) -> Entry {
        let (seq, prev) = match prev {
            Some((s, h)) => (s + 1, h.to_string()),
            None => (1, GENESIS.to_string()),
        };
        let detail = e.detail.to_string();
        let action = e.action.as_str().to_string();
        let hash = hash([
            &prev,
            &seq.to_string(),
            &utc,
            &e.actor,
            &action,
            &e.recording,
            &e.client,
            &detail,
        ]);
        Entry {
            seq,
            utc,
            actor: e.actor.clone(),
            action,
            recording: e.recording.clone(),
            client: e.client.clone(),
            detail,
            prev,
            hash,
        }
    }

    /// The hash its fields give.
    pub fn computed_hash(&self) -> String {
        hash([
            &self.prev,
            &self.seq.to_string(),
            &self.utc,
            &self.actor,
            &self.action,
            &self.recording,
            &self.client,
            &self.detail,
        ])
    }
}

/// Which entries the privacy officer's page asks for; `None` matches any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Exactly this actor.
    pub actor: Option<String>,
    /// Exactly this action.
    pub action: Option<String>,
    /// Exactly this recording (`device/id`).
    pub recording: Option<String>,
    /// At or after (normalised RFC 3339 UTC).
    pub since: Option<String>,
    /// At or before.
    pub until: Option<String>,
}

/// The CSV export's header line.
pub const CSV_HEADER: &str = "seq,utc,actor,action,recording,client,detail,prev,hash\r\n";

/// One CSV field (RFC 4180): quoted when it holds a comma, quote or line end. A field that a
/// spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab, CR first) gets a leading `'`
/// (OWASP's advice for CSV exports): the CSV is for reading; `audit --json` is the exact copy
/// whose hashes verify.
pub fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

impl Entry {
    /// The entry as a CSV line (with CRLF).
    pub fn csv_line(&self) -> String {
        let seq = self.seq.to_string();
        let fields = [
            seq.as_str(),
            &self.utc,
            &self.actor,
            &self.action,
            &self.recording,
            &self.client,
            &self.detail,
            &self.prev,
            &self.hash,
        ];
        let mut line = fields.map(csv_field).join(",");
        line.push_str("\r\n");
        line
    }
}

/// Where a chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// The first entry that does not match.
    pub seq: i64,
    /// How.
    pub why: String,
}

/// Checks a whole chain in order: the head hash (or [`GENESIS`] for an empty log), or the first
/// entry that does not match.
pub fn verify(entries: &[Entry]) -> Result<String, Broken> {
    let mut chain = Chain::default();
    for e in entries {
        chain.feed(e)?;
    }
    Ok(chain.head)
}

/// A chain checked entry by entry, so that a long log is read in pieces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// The hash of the last entry checked ([`GENESIS`] before the first).
    pub head: String,
    /// The sequence number the next entry must have.
    pub next_seq: i64,
}

impl Default for Chain {
    fn default() -> Self {
        Chain {
            head: GENESIS.to_string(),
            next_seq: 1,
        }
    }
}

impl Chain {
    /// Checks the next entry against the chain so far.
    pub fn feed(&mut self, e: &Entry) -> Result<(), Broken> {
        let broken = |why: String| Broken { seq: e.seq, why };
        if e.seq != self.next_seq {
            return Err(broken(format!(
                "sequence number {} where {} was expected (an entry is missing)",
                e.seq, self.next_seq
            )));
        }
        if e.prev != self.head {
            return Err(broken(
                "its prev is not the previous entry's hash".to_string(),
            ));
        }
        if e.computed_hash() != e.hash {
            return Err(broken(
                "its fields do not give its hash (edited after it was written)".to_string(),
            ));
        }
        self.head = e.hash.clone();
        self.next_seq += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(actor: &str, action: Action) -> Event {
        Event {
            actor: actor.into(),
            action,
            recording: String::new(),
            client: "127.0.0.1".into(),
            detail: serde_json::json!({}),
        }
    }

    fn chain(n: usize) -> Vec<Entry> {
        let mut v: Vec<Entry> = Vec::new();
        for i in 0..n {
            let prev = v.last().map(|e| (e.seq, e.hash.as_str()));
            let e = Entry::next(
                prev,
                format!("2026-11-28T10:00:0{i}.000Z"),
                &event("alice", Action::SignIn),
            );
            v.push(e);
        }
        v
    }

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(csv_field("alice"), "alice");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field(r#"{"note":"x"}"#), r#""{""note"":""x""}""#);
        assert_eq!(csv_field("=HYPERLINK(1)"), "'=HYPERLINK(1)");
        assert_eq!(csv_field("-x"), "'-x");
        assert_eq!(csv_field("line\nbreak"), "\"line\nbreak\"");
        let line = chain(1)[0].csv_line();
        assert!(line.ends_with("\r\n") && line.starts_with("1,"), "{line}");
    }

    #[test]
    fn the_hash_is_the_documented_one() {
        // Computed by hand from the definition in docs/review.md.
        let mut h = Sha256::new();
        h.update(b"neoflix-audit-v1");
        for f in [GENESIS, "1", "t", "a", "sign-in", "", "cli", "{}"] {
            h.update((f.len() as u64).to_be_bytes());
            h.update(f.as_bytes());
        }
        assert_eq!(
            hash([GENESIS, "1", "t", "a", "sign-in", "", "cli", "{}"]),
            hex::encode(h.finalize())
        );
        // Lengths keep fields apart: moving a byte across a boundary changes the hash.
        assert_ne!(
            hash([GENESIS, "1", "t", "ab", "c", "", "cli", "{}"]),
            hash([GENESIS, "1", "t", "a", "bc", "", "cli", "{}"])
        );
    }

    #[test]
    fn a_good_chain_verifies_to_its_head_and_an_empty_one_to_genesis() {
        let c = chain(3);
        assert_eq!(c[0].prev, GENESIS);
        assert_eq!(verify(&c).unwrap(), c[2].hash);
        assert_eq!(verify(&[]).unwrap(), GENESIS);
    }

    #[test]
    fn an_edit_a_removal_or_a_reordering_names_the_first_bad_entry() {
        let mut c = chain(4);
        c[2].actor = "mallory".into();
        assert_eq!(verify(&c).unwrap_err().seq, 3);
        let mut c = chain(4);
        c.remove(1);
        assert_eq!(verify(&c).unwrap_err().seq, 3);
        let mut c = chain(4);
        c.swap(1, 2);
        assert_eq!(verify(&c).unwrap_err().seq, 3);
        // Rehashing an edited entry breaks the next one.
        let mut c = chain(4);
        c[1].detail = "{\"x\":1}".into();
        c[1].hash = c[1].computed_hash();
        assert_eq!(verify(&c).unwrap_err().seq, 3);
    }
}
