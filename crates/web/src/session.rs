//! Signing in: the passphrase stretched with the server's parameters, and the wrapped
//! department key of the sign-in answer opened with it (`docs/review.md`, "Signing in").

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use neoflix_format::review_api::{LoginAnswer, Params};
use neoflix_format::reviewer::{Kdf, ReviewerName, WRAPPED_LEN};
use neoflix_open::reviewer::{AuthKey, WrapKey, derive, unwrap_department_key};
use wasm_bindgen::prelude::wasm_bindgen;

use crate::{Keyring, WebError};

/// A stretched passphrase: the auth key the page may post, and the wrap key it never sees.
#[wasm_bindgen]
#[derive(Debug)]
pub struct Stretched {
    /// Proves the passphrase to the server.
    auth: AuthKey,
    /// Opens the wrapped department key; zeroized on drop.
    wrap: WrapKey,
    /// The parameters it was stretched with: their salt is part of the wrapped key's associated
    /// data.
    kdf: Kdf,
}

/// Most Argon2id memory the page spends on a sign-in, KiB: four times what enrolment uses. The
/// format allows up to 1 GiB, which a server could otherwise ask of every tab.
pub const MAX_TAB_MEMORY_KIB: u32 = 4 * 65_536;
/// Most Argon2id passes the page runs: a little over twice enrolment's.
pub const MAX_TAB_ITERATIONS: u32 = 8;

impl Stretched {
    /// Stretches `passphrase` with the parameters in `kdf_json`, the `/api/login/params`
    /// answer (checked against the bounds the format allows, so a server cannot ask for a
    /// 0-pass stretch, and against [`MAX_TAB_MEMORY_KIB`] and [`MAX_TAB_ITERATIONS`], so it
    /// cannot freeze the tab or take its memory either).
    pub fn new(passphrase: &str, kdf_json: &str) -> Result<Stretched, WebError> {
        let Params { kdf } = serde_json::from_str(kdf_json)
            .map_err(|e| WebError::Argument(format!("sign-in parameters: {e}")))?;
        if kdf.memory_kib > MAX_TAB_MEMORY_KIB || kdf.iterations > MAX_TAB_ITERATIONS {
            return Err(WebError::Argument(format!(
                "the server asks for a stretch of {} MiB and {} passes; this page does at most {} MiB and {} passes (enrolment uses 64 MiB and 3): ask the server's admin",
                kdf.memory_kib / 1024,
                kdf.iterations,
                MAX_TAB_MEMORY_KIB / 1024,
                MAX_TAB_ITERATIONS
            )));
        }
        let (auth, wrap) = derive(passphrase, &kdf).map_err(|e| WebError::Unlock(e.to_string()))?;
        Ok(Stretched { auth, wrap, kdf })
    }

    /// The auth key, base64, as `/api/login` takes it.
    pub fn auth_key_b64(&self) -> String {
        B64.encode(self.auth.as_bytes())
    }

    /// Opens the wrapped key of the `/api/login` answer (its JSON text).
    pub fn unlock(&self, login_json: &str) -> Result<Keyring, WebError> {
        let answer: LoginAnswer = serde_json::from_str(login_json)
            .map_err(|e| WebError::Argument(format!("sign-in answer: {e}")))?;
        if answer.salt != self.kdf.salt {
            return Err(WebError::Unlock(
                "the sign-in answer's salt is not the one the passphrase was stretched with: sign in again".into(),
            ));
        }
        let name =
            ReviewerName::parse(&answer.user).map_err(|e| WebError::Argument(e.to_string()))?;
        let Some(wrapped_key) = &answer.wrapped_key else {
            return Err(WebError::Unlock(
                "this sign-in carries no department key: the roles it has do not watch video"
                    .into(),
            ));
        };
        let wrapped: [u8; WRAPPED_LEN] = B64
            .decode(wrapped_key)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| {
                WebError::Argument(format!("wrapped_key is not base64 of {WRAPPED_LEN} bytes"))
            })?;
        let dept = unwrap_department_key(
            &self.wrap,
            &name,
            &answer.department_key_id,
            &self.kdf,
            &wrapped,
        )
        .map_err(|e| WebError::Unlock(e.to_string()))?;
        Ok(Keyring::new(dept))
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use neoflix_format::reviewer::{MEMORY_KIB, ReviewerFile};
    use neoflix_open::DepartmentSecretKey;
    use neoflix_open::reviewer::enrol;

    const PASS: &str = "a long enough passphrase";

    /// The smallest stretch allowed, to keep the tests quick.
    fn enrolled(dept: &DepartmentSecretKey, name: &str) -> ReviewerFile {
        let mut kdf = Kdf::recommended(&[4; 16]);
        kdf.memory_kib = *MEMORY_KIB.start();
        kdf.iterations = 2;
        let name = ReviewerName::parse(name).unwrap();
        enrol(
            &name,
            dept,
            PASS,
            kdf,
            &[neoflix_format::reviewer::Role::Reviewer],
            "2026-11-28T10:00:00.000Z",
        )
        .unwrap()
    }

    /// What the server answers `/api/login` with for this reviewer file.
    fn login_answer(file: &ReviewerFile) -> String {
        serde_json::to_string(&LoginAnswer {
            user: file.name.to_string(),
            csrf: "x".into(),
            roles: file.roles.clone(),
            wrapped_key: file.wrapped_key.clone(),
            department_key_id: file.department_key_id.clone(),
            salt: file.kdf.salt.clone(),
            expires_utc: "2026-11-28T18:00:00.000Z".into(),
        })
        .unwrap()
    }

    fn params(file: &ReviewerFile) -> String {
        serde_json::to_string(&Params {
            kdf: file.kdf.clone(),
        })
        .unwrap()
    }

    #[test]
    fn the_right_passphrase_signs_in_and_unlocks_the_department_key() {
        let dept = DepartmentSecretKey::generate().unwrap();
        let file = enrolled(&dept, "alice");
        let s = Stretched::new(PASS, &params(&file)).unwrap();
        let auth = B64.decode(s.auth_key_b64()).unwrap();
        assert!(file.check_auth(&auth), "the server accepts the auth key");
        let ring = s.unlock(&login_answer(&file)).unwrap();
        assert_eq!(ring.key_id(), dept.public_key().key_id().0);
    }

    #[test]
    fn a_wrong_passphrase_gives_an_auth_key_the_server_refuses_and_no_key() {
        let dept = DepartmentSecretKey::generate().unwrap();
        let file = enrolled(&dept, "alice");
        let s = Stretched::new("not the passphrase at all", &params(&file)).unwrap();
        assert!(!file.check_auth(&B64.decode(s.auth_key_b64()).unwrap()));
        assert!(matches!(
            s.unlock(&login_answer(&file)),
            Err(WebError::Unlock(_))
        ));
    }

    #[test]
    fn a_wrapped_key_moved_to_another_name_does_not_open() {
        let dept = DepartmentSecretKey::generate().unwrap();
        let alice = enrolled(&dept, "alice");
        let s = Stretched::new(PASS, &params(&alice)).unwrap();
        let mut answer: serde_json::Value = serde_json::from_str(&login_answer(&alice)).unwrap();
        answer["user"] = "mallory".into();
        assert!(s.unlock(&answer.to_string()).is_err());
        let mut answer: serde_json::Value = serde_json::from_str(&login_answer(&alice)).unwrap();
        answer["salt"] = B64.encode([5u8; 16]).into();
        let err = s.unlock(&answer.to_string()).unwrap_err();
        assert!(err.to_string().contains("salt"), "{err}");
    }

    #[test]
    fn parameters_outside_the_bounds_are_refused_before_stretching() {
        let dept = DepartmentSecretKey::generate().unwrap();
        let mut file = enrolled(&dept, "alice");
        file.kdf.memory_kib = 16 * 1024 * 1024;
        assert!(Stretched::new(PASS, &params(&file)).is_err());
        assert!(Stretched::new(PASS, "{}").is_err());
        // Within the format's bounds, but more than a tab should spend: refused before stretching.
        let mut file = enrolled(&dept, "alice");
        file.kdf.memory_kib = 1_048_576;
        let err = Stretched::new(PASS, &params(&file)).unwrap_err();
        assert!(err.to_string().contains("at most 256 MiB"), "{err}");
        let mut file = enrolled(&dept, "alice");
        file.kdf.iterations = 16;
        assert!(Stretched::new(PASS, &params(&file)).is_err());
    }
}
