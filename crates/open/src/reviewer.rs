//! Reviewers: the passphrase that opens a wrapped copy of the department secret key
//! (`docs/review.md`, "Keys").
//!
//! [`enrol`] runs where the department key lives (`neoflix reviewer enrol`) and makes the
//! reviewer file the server stores; [`derive()`] and [`unwrap_department_key`] run in the
//! reviewer's browser tab (WebAssembly) at sign-in. The server only ever sees the
//! [`AuthKey`]; the [`WrapKey`] comes out of the same stretched passphrase under another HKDF
//! label, so the one tells nothing of the other.
//!
//! ```
//! use neoflix_format::reviewer::{Kdf, ReviewerName, Role};
//! use neoflix_open::DepartmentSecretKey;
//! use neoflix_open::reviewer::{derive, enrol, unwrap_department_key};
//! let dept = DepartmentSecretKey::generate().unwrap();
//! let mut kdf = Kdf::recommended(&[9; 16]);
//! kdf.memory_kib = 19_456; // the smallest allowed, to keep the example quick
//! kdf.iterations = 2;
//! let name = ReviewerName::parse("alice").unwrap();
//! let file = enrol(&name, &dept, "correct horse battery", kdf, &[Role::Reviewer], "2026-11-28T10:00:00.000Z").unwrap();
//! // At sign-in, in the browser:
//! let (auth, wrap) = derive("correct horse battery", &file.kdf).unwrap();
//! assert!(file.check_auth(auth.as_bytes())); // what the server checks
//! let key = unwrap_department_key(&wrap, &file.name, &file.department_key_id, &file.kdf,
//!     &file.wrapped_bytes().unwrap()).unwrap();
//! assert_eq!(key.public_key().key_id(), dept.public_key().key_id());
//! ```

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hpke::{Deserializable, Serializable, kem::X25519HkdfSha256};
use neoflix_format::reviewer::{
    AUTH_INFO, FORMAT, KEY_LEN, Kdf, ReviewerFile, ReviewerName, Role, SALT_LEN, WRAP_INFO,
    WRAPPED_LEN, verifier_of, wrap_aad,
};
use zeroize::Zeroizing;

use crate::{DepartmentSecretKey, OpenError};

/// Fewest characters of a passphrase [`enrol`] accepts.
pub const MIN_PASSPHRASE_CHARS: usize = 12;

/// What the server checks a sign-in with (its hash is the stored verifier).
pub struct AuthKey(Zeroizing<[u8; KEY_LEN]>);

impl AuthKey {
    /// The key's bytes, to post to the server.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

/// What opens the wrapped department key; never leaves the reviewer's side.
pub struct WrapKey(Zeroizing<[u8; KEY_LEN]>);

impl std::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthKey(..)")
    }
}

impl std::fmt::Debug for WrapKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WrapKey(..)")
    }
}

/// Stretches `passphrase` with `kdf` (Argon2id) and splits the result with HKDF-SHA256 into the
/// auth key and the wrap key.
pub fn derive(passphrase: &str, kdf: &Kdf) -> Result<(AuthKey, WrapKey), OpenError> {
    let salt = kdf
        .check()
        .map_err(|e| OpenError::Reviewer(e.to_string()))?;
    let params = argon2::Params::new(
        kdf.memory_kib,
        kdf.iterations,
        kdf.parallelism,
        Some(KEY_LEN),
    )
    .map_err(|e| OpenError::Reviewer(format!("Argon2id parameters: {e}")))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut stretched = Zeroizing::new([0u8; KEY_LEN]);
    argon
        .hash_password_into(passphrase.as_bytes(), &salt, stretched.as_mut())
        .map_err(|e| OpenError::Reviewer(format!("Argon2id: {e}")))?;
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(None, stretched.as_ref());
    let mut auth = Zeroizing::new([0u8; KEY_LEN]);
    let mut wrap = Zeroizing::new([0u8; KEY_LEN]);
    hk.expand(AUTH_INFO, auth.as_mut())
        .and_then(|()| hk.expand(WRAP_INFO, wrap.as_mut()))
        .map_err(|_| OpenError::Reviewer("HKDF output length".into()))?;
    Ok((AuthKey(auth), WrapKey(wrap)))
}

/// Makes a reviewer file: `name` will sign in with `passphrase` and open `dept` in the browser.
/// `kdf` carries the parameters and a fresh random salt ([`Kdf::recommended`]); `created_utc`
/// is the enrolment time (RFC 3339).
pub fn enrol(
    name: &ReviewerName,
    dept: &DepartmentSecretKey,
    passphrase: &str,
    kdf: Kdf,
    roles: &[Role],
    created_utc: &str,
) -> Result<ReviewerFile, OpenError> {
    if passphrase.chars().count() < MIN_PASSPHRASE_CHARS {
        return Err(OpenError::Reviewer(format!(
            "the passphrase has fewer than {MIN_PASSPHRASE_CHARS} characters: a stolen server disk allows offline guessing, choose a longer one"
        )));
    }
    let salt = kdf
        .check()
        .map_err(|e| OpenError::Reviewer(e.to_string()))?;
    let (auth, wrap) = derive(passphrase, &kdf)?;
    let key_id = dept.public_key().key_id().0;
    let wrapped_key = if neoflix_format::reviewer::watches(roles) {
        Some(B64.encode(wrap_for(&wrap, name, dept, &key_id, &salt)?))
    } else {
        // A role without video gets no key: the server could not hand one out if it tried.
        None
    };
    let file = ReviewerFile {
        format: FORMAT.into(),
        name: name.clone(),
        department_key_id: key_id,
        created_utc: created_utc.into(),
        roles: roles.to_vec(),
        kdf,
        verifier: hex::encode(verifier_of(auth.as_bytes())),
        wrapped_key,
    };
    file.check()
        .map_err(|e| OpenError::Reviewer(e.to_string()))?;
    Ok(file)
}

/// nonce || AES-256-GCM(wrap, the department secret key).
fn wrap_for(
    wrap: &WrapKey,
    name: &ReviewerName,
    dept: &DepartmentSecretKey,
    key_id: &str,
    salt: &[u8; SALT_LEN],
) -> Result<Vec<u8>, OpenError> {
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut nonce).map_err(|e| OpenError::Random(e.to_string()))?;
    let secret: Zeroizing<[u8; 32]> = Zeroizing::new(dept.0.to_bytes().into());
    let sealed = Aes256Gcm::new_from_slice(wrap.0.as_ref())
        .expect("32-byte key")
        .encrypt(
            &Nonce::try_from(&nonce[..]).expect("12 bytes"),
            Payload {
                msg: secret.as_ref(),
                aad: &wrap_aad(name, key_id, salt),
            },
        )
        .map_err(|_| OpenError::Reviewer("AES-GCM failed to wrap the key".into()))?;
    let mut wrapped = Vec::with_capacity(WRAPPED_LEN);
    wrapped.extend_from_slice(&nonce);
    wrapped.extend_from_slice(&sealed);
    debug_assert_eq!(wrapped.len(), WRAPPED_LEN);
    Ok(wrapped)
}

/// Opens a reviewer's wrapped department key with the wrap key from [`derive()`]. Fails with
/// [`OpenError::Passphrase`] for a wrong passphrase, and for a wrapped key moved to another
/// reviewer's name, key id or salt.
pub fn unwrap_department_key(
    wrap: &WrapKey,
    name: &ReviewerName,
    department_key_id: &str,
    kdf: &Kdf,
    wrapped: &[u8; WRAPPED_LEN],
) -> Result<DepartmentSecretKey, OpenError> {
    let salt: [u8; SALT_LEN] = kdf
        .check()
        .map_err(|e| OpenError::Reviewer(e.to_string()))?;
    let (nonce, sealed) = wrapped.split_at(12);
    let secret = Zeroizing::new(
        Aes256Gcm::new_from_slice(wrap.0.as_ref())
            .expect("32-byte key")
            .decrypt(
                &Nonce::try_from(nonce).expect("12 bytes"),
                Payload {
                    msg: sealed,
                    aad: &wrap_aad(name, department_key_id, &salt),
                },
            )
            .map_err(|_| OpenError::Passphrase)?,
    );
    let key = <X25519HkdfSha256 as hpke::Kem>::PrivateKey::from_bytes(&secret)
        .map(DepartmentSecretKey)
        .map_err(|_| OpenError::BadKey("the wrapped key is not an X25519 secret key".into()))?;
    if key.public_key().key_id().0 != department_key_id {
        return Err(OpenError::BadKey(format!(
            "the wrapped key is not department key {department_key_id}"
        )));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn quick_kdf(salt: u8) -> Kdf {
        let mut k = Kdf::recommended(&[salt; SALT_LEN]);
        k.memory_kib = *neoflix_format::reviewer::MEMORY_KIB.start();
        k.iterations = 2;
        k
    }

    const PASS: &str = "a long enough passphrase";
    const NOW: &str = "2026-11-28T10:00:00.000Z";

    #[test]
    fn the_passphrase_opens_the_key_and_the_server_checks_only_the_auth_key() {
        let dept = DepartmentSecretKey::generate().unwrap();
        let name = ReviewerName::parse("alice").unwrap();
        let file = enrol(&name, &dept, PASS, quick_kdf(1), &[Role::Reviewer], NOW).unwrap();
        let (auth, wrap) = derive(PASS, &file.kdf).unwrap();
        assert!(file.check_auth(auth.as_bytes()));
        // The auth key is not the wrap key: the server, which sees the first, cannot open.
        assert_ne!(auth.0.as_ref(), wrap.0.as_ref());
        let server_view = WrapKey(Zeroizing::new(*auth.as_bytes()));
        let wrapped = file.wrapped_bytes().unwrap();
        assert!(matches!(
            unwrap_department_key(
                &server_view,
                &name,
                &file.department_key_id,
                &file.kdf,
                &wrapped
            ),
            Err(OpenError::Passphrase)
        ));
        let key = unwrap_department_key(&wrap, &name, &file.department_key_id, &file.kdf, &wrapped)
            .unwrap();
        assert_eq!(key.to_file_text(), dept.to_file_text());
    }

    #[test]
    fn a_wrong_passphrase_or_a_moved_wrapped_key_does_not_open() {
        let dept = DepartmentSecretKey::generate().unwrap();
        let alice = ReviewerName::parse("alice").unwrap();
        let bob = ReviewerName::parse("bob").unwrap();
        let file = enrol(&alice, &dept, PASS, quick_kdf(2), &[Role::Reviewer], NOW).unwrap();
        let wrapped = file.wrapped_bytes().unwrap();
        let (auth, wrap) = derive("another long passphrase", &file.kdf).unwrap();
        assert!(!file.check_auth(auth.as_bytes()));
        let id = &file.department_key_id;
        assert!(matches!(
            unwrap_department_key(&wrap, &alice, id, &file.kdf, &wrapped),
            Err(OpenError::Passphrase)
        ));
        let (_, right) = derive(PASS, &file.kdf).unwrap();
        // Alice's wrapped key under Bob's name, another key id, or another salt: refused.
        assert!(unwrap_department_key(&right, &bob, id, &file.kdf, &wrapped).is_err());
        assert!(
            unwrap_department_key(&right, &alice, "0000000000000000", &file.kdf, &wrapped).is_err()
        );
        let mut other_salt = file.kdf.clone();
        other_salt.salt = B64.encode([3u8; SALT_LEN]);
        assert!(unwrap_department_key(&right, &alice, id, &other_salt, &wrapped).is_err());
        let mut flipped = wrapped;
        flipped[20] ^= 1;
        assert!(unwrap_department_key(&right, &alice, id, &file.kdf, &flipped).is_err());
    }

    #[test]
    fn short_passphrases_and_out_of_bounds_parameters_are_refused() {
        let dept = DepartmentSecretKey::generate().unwrap();
        let name = ReviewerName::parse("alice").unwrap();
        let e = enrol(&name, &dept, "short", quick_kdf(1), &[Role::Reviewer], NOW).unwrap_err();
        assert!(e.to_string().contains("fewer than 12"), "{e}");
        let mut k = quick_kdf(1);
        k.memory_kib = 8;
        assert!(
            derive(PASS, &k)
                .unwrap_err()
                .to_string()
                .contains("memory_kib")
        );
    }

    /// A fixed vector, computed independently (Python's argon2-cffi and `cryptography`): the
    /// browser (WebAssembly) build and the CLI must derive the same keys as any other
    /// implementation of `docs/review.md`.
    #[test]
    fn derivation_matches_an_independent_implementation() {
        let (auth, wrap) = derive("correct horse battery staple", &quick_kdf(0x5a)).unwrap();
        assert_eq!(
            hex::encode(auth.as_bytes()),
            "980c562fe35ce40cd888316dc7c65e06341080d492b4e226c9c0838fd309732b"
        );
        assert_eq!(
            hex::encode(wrap.0.as_ref()),
            "4ece5a193f564903e6febf758a6fbd7c0279a9098d0cefd6908f3ce6b2a363f6"
        );
        assert_eq!(
            hex::encode(verifier_of(auth.as_bytes())),
            "5fdf003f1c604ca98247e68357bd45f8db5df3ac1abdebaded34d3aed2cb5f24"
        );
    }
}
