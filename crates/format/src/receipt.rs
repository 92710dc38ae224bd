//! The department server's signed statements to a room box, signed with the server's key: the
//! receipt for a stored recording, and the notice that a recording was withdrawn. The box
//! deletes its copy only against one of them that it has checked, and logs it.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::custody::{Purpose, Signature, SigningIdentity};
use crate::{Manifest, SignatureError};

/// What the server vouches for when it has stored a recording whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// The recording.
    pub recording_id: String,
    /// The room box that uploaded it (its certificate's name).
    pub device_id: String,
    /// When the server stored the manifest.
    pub received_utc: String,
    /// SHA-256 of the manifest bytes as received.
    pub manifest_sha256: String,
    /// The manifest's hash chain.
    pub chain: String,
    /// The fragments stored.
    pub fragments: u64,
    /// Sealed bytes stored (objects only).
    pub bytes: u64,
    /// The device signature the server checked (the certificate's name).
    pub signed_by: String,
}

impl Receipt {
    /// The receipt for `manifest` (its bytes as received), uploaded by `device`.
    pub fn for_manifest(
        device: &str,
        manifest_bytes: &[u8],
        m: &Manifest,
        signed_by: &str,
        now: SystemTime,
    ) -> Self {
        let bytes = m
            .init_segments
            .iter()
            .chain(&m.fragments)
            .fold(0u64, |n, e| n.saturating_add(e.size));
        Receipt {
            recording_id: m.recording_id.clone(),
            device_id: device.to_string(),
            received_utc: crate::utc(now),
            manifest_sha256: crate::sha256_hex(manifest_bytes),
            chain: m.chain.clone(),
            fragments: m.fragments.len() as u64,
            bytes,
            signed_by: signed_by.to_string(),
        }
    }
}

/// A receipt as the server answers and stores it: the receipt's JSON exactly as signed, and the
/// server's signature over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedReceipt {
    /// The [`Receipt`] as JSON, the bytes the signature covers.
    pub receipt: String,
    /// The server's signature ([`Purpose::Receipt`]).
    pub signature: Signature,
}

impl SignedReceipt {
    /// Signs `receipt` with the server's identity.
    pub fn sign(
        receipt: &Receipt,
        server: &SigningIdentity,
        now: SystemTime,
    ) -> Result<Self, SignatureError> {
        let text = serde_json::to_string(receipt).expect("a receipt serializes");
        let signature = server.sign(Purpose::Receipt, text.as_bytes(), now)?;
        Ok(SignedReceipt {
            receipt: text,
            signature,
        })
    }

    /// The answer body / `receipt.json`.
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("a receipt serializes");
        v.push(b'\n');
        v
    }

    /// Parses an answer; the receipt inside is parsed too, but nothing is checked yet.
    pub fn from_json(bytes: &[u8]) -> Result<(Self, Receipt), SignatureError> {
        let s: SignedReceipt = serde_json::from_slice(bytes)
            .map_err(|e| SignatureError::Malformed(format!("not a signed receipt: {e}")))?;
        s.signature.validate()?;
        let r: Receipt = serde_json::from_str(&s.receipt)
            .map_err(|e| SignatureError::Malformed(format!("not a receipt: {e}")))?;
        Ok((s, r))
    }
}

/// What the server states when a recording was withdrawn: the room box that still holds a copy
/// deletes it. The reason stays in the server's audit log; it is free text about people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Withdrawal {
    /// The recording.
    pub recording_id: String,
    /// The room box that recorded it.
    pub device_id: String,
    /// When it was withdrawn.
    pub withdrawn_utc: String,
}

/// A withdrawal notice as the server answers it (`410 Gone`) and keeps it: the notice's JSON
/// exactly as signed, and the server's signature over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedWithdrawal {
    /// The [`Withdrawal`] as JSON, the bytes the signature covers.
    pub withdrawal: String,
    /// The server's signature ([`Purpose::Withdrawal`]).
    pub signature: Signature,
}

impl SignedWithdrawal {
    /// Signs `notice` with the server's identity.
    pub fn sign(
        notice: &Withdrawal,
        server: &SigningIdentity,
        now: SystemTime,
    ) -> Result<Self, SignatureError> {
        let text = serde_json::to_string(notice).expect("a notice serializes");
        let signature = server.sign(Purpose::Withdrawal, text.as_bytes(), now)?;
        Ok(SignedWithdrawal {
            withdrawal: text,
            signature,
        })
    }

    /// The answer body, and the file the server keeps.
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("a notice serializes");
        v.push(b'\n');
        v
    }

    /// Parses an answer; the notice inside is parsed too, but nothing is checked yet.
    pub fn from_json(bytes: &[u8]) -> Result<(Self, Withdrawal), SignatureError> {
        let s: SignedWithdrawal = serde_json::from_slice(bytes)
            .map_err(|e| SignatureError::Malformed(format!("not a signed withdrawal: {e}")))?;
        s.signature.validate()?;
        let w: Withdrawal = serde_json::from_str(&s.withdrawal)
            .map_err(|e| SignatureError::Malformed(format!("not a withdrawal: {e}")))?;
        Ok((s, w))
    }
}
