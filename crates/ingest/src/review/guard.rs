//! The review listener's pure parts: routing, the cookie, the Origin and CSRF checks, the
//! headers every answer carries, content types, and the sign-in parameters of unknown names.

use neoflix_format::reviewer::{Kdf, SALT_LEN};
use sha2::{Digest, Sha256};

/// The session cookie's name. The `__Host-` prefix makes browsers accept it only from this
/// very host, `Secure`, `Path=/` and without `Domain`: another host of the hospital's domain
/// cannot set one here (a cookie of its own ahead of ours would be its session in a
/// reviewer's browser, or a broken one).
pub const COOKIE: &str = "__Host-neoflix_review";
/// The header that carries the CSRF token.
pub const CSRF_HEADER: &str = "x-neoflix-csrf";
/// The Content-Security-Policy of every answer (docs/review.md).
pub const CSP: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /`, `GET /recordings/{id}`, `GET /audit`: the page.
    Page,
    /// `GET /assets/{file}`.
    Asset(String),
    /// `POST /api/login/params`.
    LoginParams,
    /// `POST /api/login`.
    Login,
    /// `GET /api/session`.
    Session,
    /// `POST /api/logout`.
    Logout,
    /// `GET /api/recordings`.
    Recordings,
    /// `GET /api/recordings/{id}`.
    Recording(String),
    /// `GET /api/recordings/{id}/objects/{name}`.
    Object(String, String),
    /// `POST /api/recordings/{id}/download`.
    Download(String),
    /// `GET /api/fleet`.
    Fleet,
    /// `POST /api/recordings/{id}/consent`.
    Consent(String),
    /// `POST /api/recordings/{id}/withdraw`.
    Withdraw(String),
    /// `POST /api/recordings/{id}/teaching`.
    Teaching(String),
    /// `GET /api/audit` (`?format=csv` for the export).
    Audit,
    /// A known path with another method.
    WrongMethod,
    /// Anything else.
    NotFound,
}

impl Route {
    /// Whether the answer is the API's (JSON, sealed objects): never cached.
    pub fn is_api(&self) -> bool {
        !matches!(self, Route::Page | Route::Asset(_))
    }
}

/// A plain file name: no separators, no leading dot, nothing to decode.
pub fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

/// Routes a request by method and path. Paths with percent-encoding, empty segments or more
/// than 512 bytes go nowhere: nothing here needs them, so there is no decoder to get wrong.
pub fn route(method: &hyper::Method, path: &str) -> Route {
    use hyper::Method;
    if path.len() > 512 || path.contains('%') || path.contains("//") || !path.starts_with('/') {
        return Route::NotFound;
    }
    let parts: Vec<&str> = path[1..].split('/').collect();
    let get = method == Method::GET || method == Method::HEAD;
    let post = method == Method::POST;
    let (route, wants_post) = match parts.as_slice() {
        [""] => (Route::Page, false),
        ["recordings", id] if plain_name(id) => (Route::Page, false),
        ["audit"] => (Route::Page, false),
        ["assets", f] if plain_name(f) => (Route::Asset(f.to_string()), false),
        ["api", "login", "params"] => (Route::LoginParams, true),
        ["api", "login"] => (Route::Login, true),
        ["api", "session"] => (Route::Session, false),
        ["api", "logout"] => (Route::Logout, true),
        ["api", "recordings"] => (Route::Recordings, false),
        ["api", "recordings", id] if plain_name(id) => (Route::Recording(id.to_string()), false),
        ["api", "recordings", id, "objects", n] if plain_name(id) && plain_name(n) => {
            (Route::Object(id.to_string(), n.to_string()), false)
        }
        ["api", "recordings", id, "download"] if plain_name(id) => {
            (Route::Download(id.to_string()), true)
        }
        ["api", "fleet"] => (Route::Fleet, false),
        ["api", "recordings", id, "consent"] if plain_name(id) => {
            (Route::Consent(id.to_string()), true)
        }
        ["api", "recordings", id, "withdraw"] if plain_name(id) => {
            (Route::Withdraw(id.to_string()), true)
        }
        ["api", "recordings", id, "teaching"] if plain_name(id) => {
            (Route::Teaching(id.to_string()), true)
        }
        ["api", "audit"] => (Route::Audit, false),
        _ => return Route::NotFound,
    };
    if (wants_post && post) || (!wants_post && get) {
        route
    } else {
        Route::WrongMethod
    }
}

/// The session token from a `Cookie` header.
pub fn cookie_token(cookie: Option<&str>) -> Option<&str> {
    cookie?.split(';').find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == COOKIE && !v.is_empty() && v.len() <= 128).then_some(v)
    })
}

/// The `Set-Cookie` of a new session.
pub fn session_cookie(token: &str) -> String {
    format!("{COOKIE}={token}; HttpOnly; Secure; SameSite=Strict; Path=/")
}

/// The `Set-Cookie` that clears it.
pub fn cleared_cookie() -> String {
    format!("{COOKIE}=; Max-Age=0; HttpOnly; Secure; SameSite=Strict; Path=/")
}

/// Whether the request's `Origin`, when the browser sends one, is the page's own: `https://`
/// and the `Host` the request was sent to. `null` and other origins are refused.
pub fn origin_ok(origin: Option<&str>, host: Option<&str>) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    let Some(host) = host else {
        return false;
    };
    let strip = |s: &str| {
        s.strip_suffix(":443")
            .map(str::to_string)
            .unwrap_or(s.to_string())
    };
    match origin.strip_prefix("https://") {
        Some(o) => strip(&o.to_ascii_lowercase()) == strip(&host.to_ascii_lowercase()),
        None => false,
    }
}

/// [`origin_ok`] of a request's headers. An `Origin` that is there but not readable text, or
/// twice, is refused, not taken for a request without one.
pub fn origin_allowed(h: &hyper::HeaderMap) -> bool {
    let mut origins = h.get_all("origin").iter();
    let origin = match (origins.next(), origins.next()) {
        (None, _) => None,
        (Some(o), None) => match o.to_str() {
            Ok(o) => Some(o),
            Err(_) => return false,
        },
        (Some(_), Some(_)) => return false,
    };
    origin_ok(origin, h.get("host").and_then(|v| v.to_str().ok()))
}

/// Whether the CSRF header carries the session's token (compared in constant time).
pub fn csrf_ok(given: Option<&str>, expected: &str) -> bool {
    let Some(given) = given else {
        return false;
    };
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The content type of an asset by its extension.
pub fn content_type(name: &str) -> &'static str {
    match name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .as_deref()
    {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        Some("woff") => "font/woff",
        Some("txt") => "text/plain; charset=utf-8",
        Some("vtt") => "text/vtt; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The sign-in parameters answered for a name that is not a reviewer: what enrolment uses, with
/// a salt derived from the server secret and the name, so the same each time and unlike any
/// other name's.
pub fn unknown_kdf(secret: &[u8; 32], name: &str) -> Kdf {
    let h = Sha256::new()
        .chain_update(b"neoflix-login-params-v1\0")
        .chain_update(secret)
        .chain_update(name.as_bytes())
        .finalize();
    let mut salt = [0u8; SALT_LEN];
    salt.copy_from_slice(&h[..SALT_LEN]);
    Kdf::recommended(&salt)
}

/// Adds the headers every answer carries; `api` answers also `Cache-Control: no-store`.
pub fn secure<B>(mut r: hyper::Response<B>, api: bool) -> hyper::Response<B> {
    use hyper::header::HeaderValue;
    let h = r.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "strict-transport-security",
        HeaderValue::from_static("max-age=31536000"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cache-control",
        HeaderValue::from_static(if api { "no-store" } else { "no-cache" }),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::Method;

    #[test]
    fn routes_are_exact_and_refuse_traversal() {
        assert_eq!(route(&Method::GET, "/"), Route::Page);
        assert_eq!(route(&Method::GET, "/recordings/abc-1"), Route::Page);
        assert_eq!(
            route(&Method::GET, "/assets/app.wasm"),
            Route::Asset("app.wasm".into())
        );
        assert_eq!(route(&Method::POST, "/api/login"), Route::Login);
        assert_eq!(route(&Method::GET, "/audit"), Route::Page);
        assert_eq!(route(&Method::GET, "/api/audit"), Route::Audit);
        assert_eq!(
            route(&Method::POST, "/api/recordings/r1/withdraw"),
            Route::Withdraw("r1".into())
        );
        assert_eq!(
            route(&Method::GET, "/api/recordings/r1/withdraw"),
            Route::WrongMethod
        );
        assert_eq!(
            route(&Method::POST, "/api/recordings/r1/consent"),
            Route::Consent("r1".into())
        );
        assert_eq!(
            route(&Method::POST, "/api/recordings/r1/teaching"),
            Route::Teaching("r1".into())
        );
        assert_eq!(route(&Method::GET, "/api/login"), Route::WrongMethod);
        assert_eq!(route(&Method::POST, "/api/session"), Route::WrongMethod);
        assert_eq!(
            route(&Method::GET, "/api/recordings/r1/objects/frag-000001.nfx"),
            Route::Object("r1".into(), "frag-000001.nfx".into())
        );
        assert_eq!(
            route(&Method::POST, "/api/recordings/r1/download"),
            Route::Download("r1".into())
        );
        for bad in [
            "/assets/../index.html",
            "/assets/.hidden",
            "/assets/%2e%2e",
            "/assets//x",
            "/api/recordings/../x",
            "/api/recordings/r1/objects/../../etc",
            "/etc/passwd",
            "relative",
        ] {
            let r = route(&Method::GET, bad);
            assert!(matches!(r, Route::NotFound), "{bad}: {r:?}");
        }
        assert!(route(&Method::GET, "/api/fleet").is_api());
        assert!(!route(&Method::GET, "/").is_api());
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        assert_eq!(
            cookie_token(Some("a=b; __Host-neoflix_review=tok; c=d")),
            Some("tok")
        );
        assert_eq!(cookie_token(Some("__Host-neoflix_review=")), None);
        assert_eq!(cookie_token(Some("x__Host-neoflix_review=t")), None);
        assert_eq!(cookie_token(None), None);
        let c = session_cookie("t");
        for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
            assert!(c.contains(attr), "{c}");
        }
        assert!(!c.contains("Domain"), "{c}");
    }

    #[test]
    fn a_cookie_a_sibling_host_could_set_is_not_the_session() {
        // Another host of the hospital's domain can set `neoflix_review` with Domain= on this
        // one, ahead of the real cookie: an attacker's session in a reviewer's browser, or a
        // broken one. Browsers accept a `__Host-` cookie only from this very host.
        assert!(session_cookie("t").starts_with("__Host-"));
        assert!(cleared_cookie().starts_with("__Host-"));
        assert_eq!(
            cookie_token(Some("neoflix_review=tossed; __Host-neoflix_review=mine")),
            Some("mine")
        );
        assert_eq!(cookie_token(Some("neoflix_review=tossed")), None);
    }

    #[test]
    fn an_origin_header_that_cannot_be_read_is_not_taken_for_none() {
        use hyper::header::{HeaderMap, HeaderValue};
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("review.example"));
        assert!(origin_allowed(&h), "no Origin");
        h.insert("origin", HeaderValue::from_static("https://review.example"));
        assert!(origin_allowed(&h));
        h.insert(
            "origin",
            HeaderValue::from_bytes(b"https://\xffevil").unwrap(),
        );
        assert!(!origin_allowed(&h), "present but not readable");
        h.insert("origin", HeaderValue::from_static("https://review.example"));
        h.append("origin", HeaderValue::from_static("https://evil.example"));
        assert!(!origin_allowed(&h), "two Origins");
    }

    #[test]
    fn only_the_pages_own_origin_passes() {
        let host = Some("review.example:8444");
        assert!(
            origin_ok(None, host),
            "no Origin: a same-origin GET or a non-browser"
        );
        assert!(origin_ok(Some("https://review.example:8444"), host));
        assert!(origin_ok(
            Some("https://Review.example"),
            Some("review.example:443")
        ));
        assert!(
            !origin_ok(Some("http://review.example:8444"), host),
            "not https"
        );
        assert!(!origin_ok(Some("https://evil.example"), host));
        assert!(!origin_ok(Some("null"), host));
        assert!(!origin_ok(Some("https://review.example:8444"), None));
    }

    #[test]
    fn csrf_needs_the_exact_token() {
        assert!(csrf_ok(Some("abc"), "abc"));
        assert!(!csrf_ok(Some("abd"), "abc"));
        assert!(!csrf_ok(Some("ab"), "abc"));
        assert!(!csrf_ok(None, "abc"));
    }

    #[test]
    fn unknown_names_get_stable_real_looking_parameters() {
        let a = unknown_kdf(&[1; 32], "mallory");
        assert_eq!(a, unknown_kdf(&[1; 32], "mallory"));
        assert_ne!(a.salt, unknown_kdf(&[1; 32], "trudy").salt);
        assert_ne!(a.salt, unknown_kdf(&[2; 32], "mallory").salt);
        a.check().unwrap();
        let real = Kdf::recommended(&[0; SALT_LEN]);
        assert_eq!(
            (a.memory_kib, a.iterations, a.parallelism),
            (real.memory_kib, real.iterations, real.parallelism)
        );
    }

    #[test]
    fn content_types_include_wasm() {
        assert_eq!(content_type("neoflix_web_bg.wasm"), "application/wasm");
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("app.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("LICENSE"), "application/octet-stream");
    }
}
