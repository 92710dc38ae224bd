//! The review page's code that runs in the reviewer's browser tab, built to WebAssembly: the
//! part of the zero-knowledge review (`docs/review.md`) that holds keys.
//!
//! The page (`crates/web/www/app.js`) calls it to
//! - stretch the passphrase with the Argon2id parameters the server sent ([`stretch`]), which
//!   gives a [`Stretched`] holding the *wrap key* (never handed to JavaScript) and the *auth
//!   key* the page posts to sign in;
//! - open the wrapped department key of the sign-in answer ([`Stretched::unlock`]) into a
//!   [`JsKeyring`]: the department secret key, in this module's memory only, forgotten (and
//!   zeroized) when the page calls `free()` at sign-out or the tab goes away;
//! - open each sealed object it fetched after checking it against the manifest
//!   ([`JsKeyring::open`]): both SHA-256 digests, the header's kind and capture stream;
//! - check the server's answer about a recording against what the page asked for, and place
//!   each fragment on the timeline ([`JsKeyring::check_recording`], [`recording`]);
//! - read an init segment's codecs for Media Source Extensions and place each fragment on the
//!   recording's timeline ([`media`]), and build a progressive MP4 of a time range with its
//!   markers as chapters for a download ([`media`]).
//!
//! Everything but the thin `#[wasm_bindgen]` glue is plain Rust with unit tests that run
//! natively and, built for wasm32, in headless Chromium (`scripts/test-wasm`).
//!
//! Layout: [`keyring`] the unlocked key and the checked opening of one object, [`session`]
//! stretching and unlocking, [`recording`] the checked recording answer, [`media`] MSE and download helpers; this file the JavaScript API.
#![deny(missing_docs)]

pub mod keyring;
pub mod media;
pub mod recording;
pub mod session;

use thiserror::Error;
use wasm_bindgen::prelude::*;

#[cfg(all(test, target_arch = "wasm32"))]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

pub use keyring::{Expected, Keyring, Opened};
pub use session::Stretched;

/// Why the tab could not sign in, open an object or prepare media.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum WebError {
    /// The page passed something malformed (a kind, a JSON answer, a digest): a bug in the page
    /// or an answer from another server version.
    #[error("{0}")]
    Argument(String),
    /// The fetched bytes are not the ones the manifest lists: the server (or something between)
    /// handed out another object, or the object was damaged in storage.
    #[error(
        "the {what} is not the one the manifest lists (SHA-256 {found}, manifest says {expected}): the server sent other bytes, or its copy is damaged"
    )]
    Digest {
        /// `sealed object` or `key record`.
        what: &'static str,
        /// The manifest's digest.
        expected: String,
        /// The fetched bytes' digest.
        found: String,
    },
    /// The object is not what the manifest's place for it says (kind, capture stream): the
    /// manifest's list and the objects do not belong together.
    #[error("the object is not in its place: {0}")]
    Misplaced(String),
    /// Not a sealed object or key record at all.
    #[error(transparent)]
    Format(#[from] neoflix_format::FormatError),
    /// The object does not open: a key record for another object or department, or altered
    /// bytes.
    #[error(transparent)]
    Open(#[from] neoflix_open::OpenError),
    /// The passphrase does not open the wrapped key (the server accepted the auth key, so the
    /// reviewer record and the wrapped key do not belong together), or the stretching failed.
    #[error("{0}")]
    Unlock(String),
    /// The MP4 could not be read or written.
    #[error("MP4: {0}")]
    Media(String),
    /// The server's answer about a recording is not about the one asked for, or not one the
    /// page can play: a buggy or compromised server, or a room box's crafted manifest.
    #[error("{0}")]
    Answer(String),
}

impl From<WebError> for JsValue {
    fn from(e: WebError) -> JsValue {
        JsError::new(&e.to_string()).into()
    }
}

/// Stretches `passphrase` with the `kdf` object of the server's `/api/login/params` answer
/// (its JSON text). Takes as long as the parameters ask (about a second at 64 MiB).
#[wasm_bindgen]
pub fn stretch(passphrase: &str, kdf_json: &str) -> Result<Stretched, WebError> {
    Stretched::new(passphrase, kdf_json)
}

#[wasm_bindgen]
impl Stretched {
    /// The auth key to post to `/api/login`, base64.
    #[wasm_bindgen(js_name = authKey)]
    pub fn auth_key_js(&self) -> String {
        self.auth_key_b64()
    }

    /// Opens the wrapped key of the `/api/login` answer (its JSON text) into a keyring. The
    /// wrap key stays in this module; this object can be freed afterwards.
    #[wasm_bindgen(js_name = unlock)]
    pub fn unlock_js(&self, login_json: &str) -> Result<JsKeyring, WebError> {
        Ok(JsKeyring(self.unlock(login_json)?))
    }
}

/// The department secret key, unlocked in this tab; `free()` forgets it.
#[wasm_bindgen(js_name = Keyring)]
pub struct JsKeyring(Keyring);

#[wasm_bindgen(js_class = Keyring)]
impl JsKeyring {
    /// The department key's id, as manifests name it in `recipient_key_id`.
    #[wasm_bindgen(getter, js_name = keyId)]
    pub fn key_id(&self) -> String {
        self.0.key_id().to_owned()
    }

    /// Checks the server's answer to `GET /api/recordings/{id}` (its JSON text) against what
    /// the page asked for (`id`, and `device` when its address names one) and this key, and
    /// returns the recording as the page may use it, as JSON ([`recording::Recording`]).
    #[wasm_bindgen(js_name = checkRecording)]
    pub fn check_recording(
        &self,
        answer_json: &str,
        id: &str,
        device: Option<String>,
    ) -> Result<String, WebError> {
        let asked = recording::Asked {
            id,
            device: device.as_deref(),
            key_id: self.0.key_id(),
            keyring: Some(&self.0),
        };
        let checked = recording::Recording::check(answer_json, &asked)?;
        serde_json::to_string(&checked).map_err(|e| WebError::Argument(e.to_string()))
    }

    /// Opens a sealed object: `kind` is `"init"` or `"fragment"` (the manifest list it is in),
    /// the digests are the manifest's `sha256` and `key_sha256` for it, `stream` (optional) the
    /// capture stream of a fragment's init segment ([`JsKeyring::stream_of`]). Returns the
    /// plaintext fMP4 bytes.
    pub fn open(
        &self,
        kind: &str,
        sealed: &[u8],
        key_record: &[u8],
        expected_sha256: &str,
        expected_key_sha256: &str,
        stream: Option<String>,
    ) -> Result<Vec<u8>, WebError> {
        let expected = Expected {
            kind: keyring::parse_kind(kind)?,
            sha256: expected_sha256.to_owned(),
            key_sha256: expected_key_sha256.to_owned(),
            stream,
        };
        Ok(self.0.open(&expected, sealed, key_record)?.plain)
    }

    /// The capture stream a sealed object's header names (hex); authenticated once the object
    /// has opened.
    #[wasm_bindgen(js_name = streamOf)]
    pub fn stream_of(sealed: &[u8]) -> Result<String, WebError> {
        Ok(hex::encode(neoflix_format::parse_header(sealed)?.id.stream))
    }
}
