//! The review page's sign-in and download messages, typed once for the server that writes or
//! reads them and the page's WebAssembly that reads or writes them (`docs/review.md`, "The
//! JSON API").

use serde::{Deserialize, Serialize};

use crate::reviewer::Kdf;

/// `POST /api/login/params` and the first half of `POST /api/login`: who signs in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamsRequest {
    /// The sign-in name.
    pub user: String,
}

/// The answer to `POST /api/login/params`: how to stretch the passphrase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    /// Argon2id parameters and salt (made up, stably, for a name the server does not know).
    pub kdf: Kdf,
}

/// `POST /api/login`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginRequest {
    /// The sign-in name.
    pub user: String,
    /// Base64 of the auth key the passphrase gives.
    pub auth: String,
}

/// The answer to a right `POST /api/login`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginAnswer {
    /// The reviewer's name, bound into the wrapped key.
    pub user: String,
    /// The session's CSRF token, for the `X-Neoflix-CSRF` header.
    pub csrf: String,
    /// Base64 of nonce || AES-256-GCM(wrap key, department secret key).
    pub wrapped_key: String,
    /// The department key the wrapped key is.
    pub department_key_id: String,
    /// The reviewer's salt: the page checks it is the one it stretched with.
    pub salt: String,
    /// When the session ends at the latest unless used (RFC 3339 UTC).
    pub expires_utc: String,
}

/// The answer to `GET /api/session`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionAnswer {
    /// The reviewer signed in.
    pub user: String,
    /// The session's CSRF token.
    pub csrf: String,
    /// When the session ends at the latest unless used.
    pub expires_utc: String,
}

/// `POST /api/recordings/{id}/download`: what the page is about to make, for the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadRequest {
    /// Start, seconds from the first frame; `None`: the beginning.
    pub from_secs: Option<f64>,
    /// End, seconds from the first frame; `None`: the end.
    pub to_secs: Option<f64>,
}

impl DownloadRequest {
    /// Why the range cannot be one the page makes, if it cannot: what the audit log records
    /// must be a range of the recording.
    pub fn problem(&self) -> Option<&'static str> {
        let ok = |v: Option<f64>| v.is_none_or(|s| s.is_finite() && s >= 0.0);
        if !ok(self.from_secs) || !ok(self.to_secs) {
            return Some(
                "from_secs and to_secs are seconds from the first frame: finite, not negative",
            );
        }
        match (self.from_secs, self.to_secs) {
            (Some(f), Some(t)) if t <= f => Some("to_secs must be after from_secs"),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_download_range_must_be_one_the_page_could_make() {
        let r = |from_secs, to_secs| DownloadRequest { from_secs, to_secs }.problem();
        assert_eq!(r(None, None), None);
        assert_eq!(r(Some(0.0), Some(12.5)), None);
        assert_eq!(r(Some(3.0), None), None);
        assert!(r(Some(-1.0), None).is_some());
        assert!(r(None, Some(f64::INFINITY)).is_some());
        assert!(r(Some(f64::NAN), Some(1.0)).is_some());
        assert!(r(Some(5.0), Some(5.0)).is_some());
        assert!(r(Some(5.0), Some(2.0)).is_some());
    }

    #[test]
    fn unknown_download_fields_are_refused() {
        assert!(serde_json::from_str::<DownloadRequest>(r#"{"from_secs":1,"x":2}"#).is_err());
        let d: DownloadRequest = serde_json::from_str("{}").unwrap();
        assert_eq!((d.from_secs, d.to_secs), (None, None));
    }
}
