//! The upload protocol's names and messages (`docs/upload-protocol.md`), one typed definition
//! for the room box's uplink and the department server.

use serde::{Deserialize, Serialize};

use crate::Kind;
use crate::custody::SIGNATURE_FILE;

/// Whether a recording id is acceptable (1–128 of `A–Z a–z 0–9 - _ .`, not starting with `.`):
/// it becomes a directory name on the box and on the server.
pub fn valid_recording_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A file of a recording that travels as an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectName {
    /// `init-NNN.nfx` / `frag-NNNNNN.nfx`: a sealed object of this kind at this index.
    Sealed(Kind, u64),
    /// `init-NNN.key` / `frag-NNNNNN.key`: the key record of that object.
    KeyRecord(Kind, u64),
    /// `manifest.sig`: the room box's signature over the manifest.
    Signature,
}

impl ObjectName {
    /// Parses an object name; `None` for anything else (including every path trick).
    pub fn parse(name: &str) -> Option<Self> {
        if name == SIGNATURE_FILE {
            return Some(ObjectName::Signature);
        }
        let (stem, ext) = name.split_once('.')?;
        let digits = |s: &str, n: usize| {
            (s.len() == n && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
        };
        let (kind, index) = match stem.split_once('-')? {
            ("init", d) => (Kind::Init, digits(d, 3)?),
            ("frag", d) => (Kind::Fragment, digits(d, 6)?),
            _ => return None,
        };
        match ext {
            "nfx" => Some(ObjectName::Sealed(kind, index)),
            "key" => Some(ObjectName::KeyRecord(kind, index)),
            _ => None,
        }
    }

    /// The sealed object's file name for `kind` at `index`.
    pub fn sealed(kind: Kind, index: u64) -> String {
        ObjectName::Sealed(kind, index).to_string()
    }

    /// The key record's file name for `kind` at `index`.
    pub fn key_record(kind: Kind, index: u64) -> String {
        ObjectName::KeyRecord(kind, index).to_string()
    }
}

impl std::fmt::Display for ObjectName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stem = |f: &mut std::fmt::Formatter<'_>, kind: Kind, i: u64| match kind {
            Kind::Init => write!(f, "init-{i:03}"),
            Kind::Fragment => write!(f, "frag-{i:06}"),
        };
        match *self {
            ObjectName::Sealed(kind, i) => {
                stem(f, kind, i)?;
                f.write_str(".nfx")
            }
            ObjectName::KeyRecord(kind, i) => {
                stem(f, kind, i)?;
                f.write_str(".key")
            }
            ObjectName::Signature => f.write_str(SIGNATURE_FILE),
        }
    }
}

/// `GET /v1/recordings/{id}`: what the server holds of a recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingState {
    /// The recording.
    pub recording_id: String,
    /// Whether its manifest is stored (nothing more can change).
    pub complete: bool,
    /// Names of the objects stored.
    pub objects: Vec<String>,
}

/// One entry of `GET /v1/recordings`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingSummary {
    /// The recording.
    pub id: String,
    /// Whether its manifest is stored.
    pub complete: bool,
}

/// `GET /v1/recordings`: the device's recordings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingList {
    /// In id order.
    pub recordings: Vec<RecordingSummary>,
}

/// The answer to an object PUT that succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectStored {
    /// Always true.
    pub stored: bool,
    /// True when the identical object was already there.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub already: bool,
}

/// Every error answer: `{"error": "<what is wrong and what to do>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What is wrong.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_round_trip_and_nothing_else_parses() {
        for n in [
            "init-000.nfx",
            "init-999.key",
            "frag-000000.nfx",
            "frag-123456.key",
            "manifest.sig",
        ] {
            assert_eq!(ObjectName::parse(n).unwrap().to_string(), n);
        }
        for n in [
            "init-00.nfx",
            "frag-0000000.nfx",
            "frag-00000a.nfx",
            "frag-000001.nfx.tmp",
            "../frag-000001.nfx",
            "manifest.json",
            "receipt.json",
            ".frag-000001.nfx",
            "frag+000001.nfx",
            "init-000.sig",
        ] {
            assert_eq!(ObjectName::parse(n), None, "{n}");
        }
        assert_eq!(ObjectName::sealed(Kind::Fragment, 7), "frag-000007.nfx");
        assert_eq!(ObjectName::key_record(Kind::Init, 1), "init-001.key");
    }

    #[test]
    fn recording_ids() {
        assert!(valid_recording_id("20261128T101010Z-ab12"));
        assert!(!valid_recording_id(".hidden"));
        assert!(!valid_recording_id("a/b"));
        assert!(!valid_recording_id(&"a".repeat(129)));
    }
}
