//! The review side of neoflix-ingest, black-box: the real server with `[review]` on loopback,
//! a real room box uploading to it, and reqwest as the browser (cookies handled by hand so
//! their attributes can be checked). The page itself is the web engineer's; a tiny stand-in
//! `index.html` is served here.

use std::fs;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use neoflix_control::Request;
use neoflix_e2e::{Lab, free_port, wait_until};
use neoflix_format::reviewer::{
    Kdf, ReviewerFile, ReviewerName, Role, SALT_LEN, WRAPPED_LEN, verifier_of,
};
use serde_json::{Value, json};

const CAPTURE: &str = "source = \"test\"\nwidth = 320\nheight = 240\nfps = 15\nbitrate_kbps = 300";
const CSP: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// A reviewer file whose auth key is `[auth; 32]` (what `neoflix reviewer enrol` makes, with a
/// stand-in wrapped key: the server never opens it).
fn reviewer_file(lab: &Lab, name: &str, auth: u8) -> std::path::PathBuf {
    reviewer_file_as(lab, name, auth, &[Role::Reviewer])
}

/// [`reviewer_file`] with `roles` (and no wrapped key when none of them watches).
fn reviewer_file_as(lab: &Lab, name: &str, auth: u8, roles: &[Role]) -> std::path::PathBuf {
    let f = ReviewerFile {
        format: neoflix_format::reviewer::FORMAT.into(),
        name: ReviewerName::parse(name).unwrap(),
        department_key_id: "0123456789abcdef".into(),
        created_utc: "2026-11-28T10:15:02.120Z".into(),
        roles: roles.to_vec(),
        kdf: Kdf::recommended(&[auth; SALT_LEN]),
        verifier: hex_of(&verifier_of(&[auth; 32])),
        wrapped_key: neoflix_format::reviewer::watches(roles)
            .then(|| B64.encode([auth; WRAPPED_LEN])),
    };
    let p = lab.path(&format!("{name}.reviewer"));
    fs::write(&p, serde_json::to_vec(&f).unwrap()).unwrap();
    p
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct Browser {
    http: reqwest::Client,
    base: String,
}

impl Browser {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, path: &str, cookie: Option<&str>) -> reqwest::Response {
        let mut r = self.http.get(self.url(path));
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        r.send().await.unwrap()
    }

    /// A POST as the page makes it: its own Origin, JSON.
    async fn post(
        &self,
        path: &str,
        body: Value,
        cookie: Option<&str>,
        csrf: Option<&str>,
        origin: Option<&str>,
    ) -> reqwest::Response {
        let mut r = self.http.post(self.url(path)).json(&body);
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        if let Some(t) = csrf {
            r = r.header("x-neoflix-csrf", t);
        }
        r.send().await.unwrap()
    }

    async fn login(&self, user: &str, auth: u8) -> reqwest::Response {
        let base = self.base.clone();
        self.post(
            "/api/login",
            json!({"user": user, "auth": B64.encode([auth; 32])}),
            None,
            None,
            Some(&base),
        )
        .await
    }
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// The lab's ingest server with `[review]` on a free port, a stand-in page and the database in
/// `<lab>/db`; and a browser that trusts the lab's CA.
async fn start_review(lab: &Lab, more: &str) -> (neoflix_e2e::Ingest, Browser) {
    let assets = lab.path("review-assets");
    fs::create_dir_all(&assets).unwrap();
    fs::write(
        assets.join("index.html"),
        "<!doctype html><title>Neoflix review</title>\n",
    )
    .unwrap();
    fs::write(assets.join("app.js"), "console.log('review');\n").unwrap();
    let rport = free_port();
    let extra = format!(
        "[review]\nlisten = \"127.0.0.1:{rport}\"\nassets = \"{}\"\n[database]\npath = \"{}\"\n{more}",
        assets.display(),
        lab.path("db/neoflix.db").display()
    );
    let mut ingest = lab.ingest_config_with(64 << 20, &extra);
    ingest.start();
    wait_until(
        "the review listener",
        Duration::from_secs(20),
        || std::net::TcpStream::connect(("127.0.0.1", rport)).is_ok(),
        &|| ingest.log_text(),
    );
    let tls = neoflix_pki::client_tls(&lab.ca(), None).unwrap();
    let b = Browser {
        http: reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .build()
            .unwrap(),
        base: format!("https://127.0.0.1:{rport}"),
    };
    (ingest, b)
}

/// The real thing end to end: `neoflix reviewer enrol` with the department key, import, the
/// browser's derivation of the auth key, sign-in, and the wrapped key opening to the department
/// key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewer_enrolled_with_the_department_key_signs_in_and_unwraps_it() {
    let lab = Lab::new();
    lab.pki(&[]);
    let (_ingest, b) = start_review(&lab, "").await;
    let passphrase = "correct horse battery staple";
    let file = lab.enrol_reviewer("carol", passphrase);
    let (code, out, err) = lab.ingest_admin(&["reviewer", "import", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let origin = b.base.clone();
    let r = b
        .post(
            "/api/login/params",
            json!({"user": "carol"}),
            None,
            None,
            Some(&origin),
        )
        .await;
    let kdf: Kdf = serde_json::from_value(r.json::<Value>().await.unwrap()["kdf"].clone()).unwrap();
    let (auth, wrap) = neoflix_open::reviewer::derive(passphrase, &kdf).unwrap();
    let (wrong, _) = neoflix_open::reviewer::derive("incorrect horse battery", &kdf).unwrap();
    let login = |key: Vec<u8>| {
        let b = &b;
        let origin = origin.clone();
        async move {
            b.post(
                "/api/login",
                json!({"user": "carol", "auth": B64.encode(key)}),
                None,
                None,
                Some(&origin),
            )
            .await
        }
    };
    assert_eq!(login(wrong.as_bytes().to_vec()).await.status(), 401);
    let r = login(auth.as_bytes().to_vec()).await;
    assert_eq!(r.status(), 200);
    let s: Value = r.json().await.unwrap();
    let wrapped: [u8; WRAPPED_LEN] = B64
        .decode(s["wrapped_key"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let key_id = s["department_key_id"].as_str().unwrap();
    let dept = neoflix_open::reviewer::unwrap_department_key(
        &wrap,
        &ReviewerName::parse("carol").unwrap(),
        key_id,
        &kdf,
        &wrapped,
    )
    .expect("the tab opens the wrapped key");
    assert_eq!(dept.public_key().key_id().0, key_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_review_api_signs_in_lists_serves_sealed_objects_refuses_and_audits() {
    let lab = Lab::new();
    lab.pki(&["room-e2e"]);
    let (mut ingest, b) = start_review(&lab, "").await;
    let origin = b.base.clone();
    let evil = Some("https://evil.example");

    // The page and its assets, with the browser's protections.
    let page = b.get("/recordings/anything", None).await;
    assert_eq!(page.status(), 200);
    assert_eq!(header(&page, "content-security-policy"), CSP);
    assert_eq!(
        header(&page, "strict-transport-security"),
        "max-age=31536000"
    );
    assert_eq!(header(&page, "x-content-type-options"), "nosniff");
    assert_eq!(header(&page, "referrer-policy"), "no-referrer");
    assert_eq!(header(&page, "cross-origin-opener-policy"), "same-origin");
    assert!(page.text().await.unwrap().contains("Neoflix review"));
    let js = b.get("/assets/app.js", None).await;
    assert_eq!(
        header(&js, "content-type"),
        "text/javascript; charset=utf-8"
    );
    assert_eq!(b.get("/assets/..%2fingest.toml", None).await.status(), 404);
    assert_eq!(b.get("/assets/missing.js", None).await.status(), 404);

    // Reviewers come from the chair's files.
    let (code, out, err) =
        lab.ingest_admin(&["reviewer", "import", lab.path("x").to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    let alice = reviewer_file(&lab, "alice", 7);
    let (code, out, err) = lab.ingest_admin(&["reviewer", "import", alice.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = lab.ingest_admin(&["reviewer", "import", alice.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("--replace"), "{err}");
    let (_, list, _) = lab.ingest_admin(&["reviewer", "list"]);
    assert!(
        list.contains("alice") && list.contains("0123456789abcdef"),
        "{list}"
    );

    // Sign-in parameters: a reviewer's own; an unknown name's look as real and are stable.
    let params = |user: &'static str| {
        let b = &b;
        let origin = origin.clone();
        async move {
            let r = b
                .post(
                    "/api/login/params",
                    json!({"user": user}),
                    None,
                    None,
                    Some(&origin),
                )
                .await;
            assert_eq!(r.status(), 200);
            assert_eq!(header(&r, "cache-control"), "no-store");
            r.json::<Value>().await.unwrap()["kdf"].clone()
        }
    };
    let a = params("alice").await;
    assert_eq!(a["salt"], B64.encode([7u8; SALT_LEN]));
    let u1 = params("nobody").await;
    assert_eq!(u1, params("nobody").await, "stable");
    for f in [
        "algorithm",
        "version",
        "memory_kib",
        "iterations",
        "parallelism",
    ] {
        assert_eq!(u1[f], a[f], "{f}");
    }
    assert_ne!(u1["salt"], a["salt"]);
    assert_ne!(u1["salt"], params("someone").await["salt"]);

    // Sign-in: wrong, cross-origin, not JSON, right.
    assert_eq!(b.login("alice", 8).await.status(), 401);
    assert_eq!(b.login("nobody", 8).await.status(), 401);
    let r = b
        .post(
            "/api/login",
            json!({"user": "alice", "auth": B64.encode([7u8; 32])}),
            None,
            None,
            evil,
        )
        .await;
    assert_eq!(r.status(), 403, "cross-origin sign-in");
    let r = b
        .http
        .post(b.url("/api/login"))
        .header("origin", &origin)
        .header("content-type", "text/plain")
        .body(json!({"user": "alice", "auth": B64.encode([7u8; 32])}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415, "a form post cannot sign in");
    // A name no reviewer can have is refused as such (it tells nothing), and a body over 4 KiB
    // is refused before it is read whole.
    assert_eq!(b.login("../alice", 7).await.status(), 400);
    let r = b
        .post(
            "/api/login/params",
            json!({"user": "x".repeat(5000)}),
            None,
            None,
            Some(&origin),
        )
        .await;
    assert_eq!(r.status(), 413);
    let r = b.login("alice", 7).await;
    assert_eq!(r.status(), 200);
    let set = header(&r, "set-cookie");
    for attr in [
        "__Host-neoflix_review=",
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/",
    ] {
        assert!(set.contains(attr), "{attr}: {set}");
    }
    let cookie = set.split(';').next().unwrap().to_string();
    let s: Value = r.json().await.unwrap();
    assert_eq!(s["user"], "alice");
    assert_eq!(s["wrapped_key"], B64.encode([7u8; WRAPPED_LEN]));
    assert_eq!(s["department_key_id"], "0123456789abcdef");
    assert_eq!(s["salt"], a["salt"]);
    assert!(s["expires_utc"].as_str().unwrap().ends_with('Z'));
    let csrf = s["csrf"].as_str().unwrap().to_string();
    let me = b.get("/api/session", Some(&cookie)).await;
    assert_eq!(me.status(), 200);
    assert_eq!(me.json::<Value>().await.unwrap()["csrf"], csrf.as_str());
    assert_eq!(b.get("/api/session", None).await.status(), 401);
    assert_eq!(b.get("/api/recordings", None).await.status(), 401);
    let fleet = b.get("/api/fleet", Some(&cookie)).await;
    assert_eq!(fleet.json::<Value>().await.unwrap(), json!({"devices": []}));

    // A box records; while it runs the list shows it uploading.
    lab.config(CAPTURE, 3, &lab.upload_section(&ingest, "room-e2e"));
    let mut d = lab.start();
    d.wait_ready(Duration::from_secs(60));
    let id = d.ctl(Request::Start {}).recording.unwrap();
    let list = |b: &Browser, cookie: String| {
        let url = b.url("/api/recordings");
        let http = b.http.clone();
        async move {
            let r = http.get(url).header("cookie", cookie).send().await.unwrap();
            assert_eq!(header(&r, "cache-control"), "no-store");
            r.json::<Value>().await.unwrap()["recordings"]
                .as_array()
                .unwrap()
                .clone()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let l = list(&b, cookie.clone()).await;
        if l.iter()
            .any(|r| r["id"] == id.as_str() && r["upload"] == "uploading")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never listed as uploading: {l:?}\n{}",
            ingest.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        b.get(&format!("/api/recordings/{id}"), Some(&cookie))
            .await
            .status(),
        409
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(d.ctl(Request::Stop {}).ok);
    let srv = lab.path("server/room-e2e").join(&id);
    wait_until(
        "the recording complete on the server",
        Duration::from_secs(60),
        || srv.join("manifest.json").exists(),
        &|| d.log_text() + &ingest.log_text(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let row = loop {
        let l = list(&b, cookie.clone()).await;
        if let Some(r) = l
            .iter()
            .find(|r| r["id"] == id.as_str() && r["upload"] == "complete")
        {
            break r.clone();
        }
        assert!(Instant::now() < deadline, "never listed as complete: {l:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(row["device"], "room-e2e");
    assert_eq!(row["status"], "complete");
    assert_eq!(row["signer"], "room-e2e");
    assert!(row["duration_secs"].as_f64().unwrap() > 1.0, "{row}");
    for f in [
        "trigger",
        "stop_reason",
        "first_frame_utc",
        "trigger_utc",
        "stop_utc",
        "preroll_secs",
        "markers",
    ] {
        assert!(row.get(f).is_some_and(|v| !v.is_null()), "{f}: {row}");
    }
    let l = b.get("/api/recordings?device=nowhere", Some(&cookie)).await;
    assert!(
        l.json::<Value>().await.unwrap()["recordings"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let l = b
        .get("/api/recordings?since=2999-01-01T00:00:00Z", Some(&cookie))
        .await;
    assert!(
        l.json::<Value>().await.unwrap()["recordings"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Object names are predictable, but a session gets objects only of a recording it opened
    // (and whose opening is audited): no watching without a trace.
    let init = format!("/api/recordings/{id}/objects/init-000.nfx?device=room-e2e");
    assert_eq!(b.get(&init, Some(&cookie)).await.status(), 403);

    // The manifest, and every object byte-identical to what the box sealed.
    let r = b.get(&format!("/api/recordings/{id}"), Some(&cookie)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "cache-control"), "no-store");
    let rec: Value = r.json().await.unwrap();
    assert_eq!(rec["device"], "room-e2e");
    let m = &rec["manifest"];
    assert_eq!(m["recording_id"], id.as_str());
    let entries: Vec<Value> = m["init_segments"]
        .as_array()
        .unwrap()
        .iter()
        .chain(m["fragments"].as_array().unwrap())
        .cloned()
        .collect();
    assert!(entries.len() >= 3);
    for e in &entries {
        for (file, sha) in [("file", "sha256"), ("key_file", "key_sha256")] {
            let name = e[file].as_str().unwrap();
            let r = b
                .get(
                    &format!("{}{name}?device=room-e2e", rec["objects"].as_str().unwrap()),
                    Some(&cookie),
                )
                .await;
            assert_eq!(r.status(), 200, "{name}");
            assert_eq!(header(&r, "cache-control"), "no-store");
            let got = r.bytes().await.unwrap();
            assert_eq!(&got[..], &fs::read(srv.join(name)).unwrap()[..], "{name}");
            let digest = <sha2::Sha256 as sha2::Digest>::digest(&got);
            assert_eq!(hex_of(&digest), e[sha].as_str().unwrap(), "{name}");
        }
    }
    for unlisted in [
        "manifest.json",
        "receipt.json",
        "manifest.sig",
        "frag-999999.nfx",
    ] {
        let r = b
            .get(
                &format!("/api/recordings/{id}/objects/{unlisted}"),
                Some(&cookie),
            )
            .await;
        assert_eq!(r.status(), 404, "{unlisted}");
    }
    assert_eq!(
        b.get(&format!("/api/recordings/{id}/objects/init-000.nfx"), None)
            .await
            .status(),
        401
    );

    // State changes need the CSRF token and the page's own Origin.
    let dl = format!("/api/recordings/{id}/download");
    let range = json!({"from_secs": 1.0, "to_secs": 2.0});
    assert_eq!(
        b.post(&dl, range.clone(), Some(&cookie), None, Some(&origin))
            .await
            .status(),
        403
    );
    assert_eq!(
        b.post(
            &dl,
            range.clone(),
            Some(&cookie),
            Some("0000"),
            Some(&origin)
        )
        .await
        .status(),
        403
    );
    assert_eq!(
        b.post(&dl, range.clone(), Some(&cookie), Some(&csrf), evil)
            .await
            .status(),
        403
    );
    assert_eq!(
        b.post(
            &dl,
            range.clone(),
            Some(&cookie),
            Some(&csrf),
            Some(&origin)
        )
        .await
        .status(),
        204
    );
    for bad in [
        json!({"from_secs": -1.0, "to_secs": 2.0}),
        json!({"from_secs": 2.0, "to_secs": 2.0}),
        json!({"from_secs": "soon"}),
    ] {
        let r = b
            .post(&dl, bad.clone(), Some(&cookie), Some(&csrf), Some(&origin))
            .await;
        assert_eq!(r.status(), 400, "{bad}");
    }

    // Sign-out ends the session and clears the cookie.
    assert_eq!(
        b.post("/api/logout", json!({}), Some(&cookie), None, Some(&origin))
            .await
            .status(),
        403
    );
    let r = b
        .post(
            "/api/logout",
            json!({}),
            Some(&cookie),
            Some(&csrf),
            Some(&origin),
        )
        .await;
    assert_eq!(r.status(), 204);
    assert!(header(&r, "set-cookie").contains("Max-Age=0"));
    assert_eq!(b.get("/api/session", Some(&cookie)).await.status(), 401);

    // A removed reviewer's session dies at once and it cannot sign in again.
    let r = b.login("alice", 7).await;
    let cookie2 = header(&r, "set-cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(b.get("/api/session", Some(&cookie2)).await.status(), 200);
    assert_eq!(
        b.get(&init, Some(&cookie2)).await.status(),
        403,
        "opened in another session"
    );
    let (code, out, err) = lab.ingest_admin(&["reviewer", "remove", "alice"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(b.get("/api/session", Some(&cookie2)).await.status(), 401);
    assert_eq!(b.login("alice", 7).await.status(), 401);

    // Five wrong passphrases lock the name: the sixth attempt is refused unchecked.
    let bob = reviewer_file(&lab, "bob", 9);
    assert_eq!(
        lab.ingest_admin(&["reviewer", "import", bob.to_str().unwrap()])
            .0,
        0
    );
    for _ in 0..5 {
        assert_eq!(b.login("bob", 1).await.status(), 401);
    }
    let r = b.login("bob", 9).await;
    assert_eq!(r.status(), 429, "locked even with the right passphrase");
    let retry: u64 = header(&r, "retry-after").parse().unwrap();
    assert!((1..=30).contains(&retry), "{retry}");

    // The audit log holds every step, and its chain verifies.
    let (code, out, err) = lab.ingest_admin(&["audit", "--verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("audit log verified") && out.contains("head "),
        "{out}"
    );
    for action in [
        "reviewer-imported",
        "sign-in-failed",
        "sign-in ",
        "recording-opened",
        "download",
        "sign-out",
        "reviewer-removed",
        "sign-in-refused",
    ] {
        assert!(out.contains(action), "{action} missing:\n{out}");
    }
    assert!(out.contains(&format!("room-e2e/{id}")), "{out}");
    let (code, json_out, _) = lab.ingest_admin(&["audit", "--json"]);
    assert_eq!(code, 0);
    let entries: Value = serde_json::from_str(&json_out).unwrap();
    assert!(entries.as_array().unwrap().len() >= 12);
    // Each entry the server appended is also in its log, hash and all: a copy outside the
    // database to hold a rewritten chain against.
    let log = ingest.log_text();
    let mut logged = 0;
    for e in entries.as_array().unwrap() {
        if e["client"] != "cli" {
            let line = format!("seq={} ", e["seq"]);
            let hash = format!("hash={}", e["hash"].as_str().unwrap());
            assert!(
                log.lines().any(|l| l.contains("audit entry appended")
                    && l.contains(&line)
                    && l.contains(&hash)),
                "entry {} is not in the server's log with its hash\n{log}",
                e["seq"]
            );
            logged += 1;
        }
    }
    assert!(logged >= 8, "{logged}");

    // The server refuses edits; one made behind its back shows in the chain.
    assert_eq!(d.terminate(), 0);
    ingest.kill9();
    let db = rusqlite::Connection::open(lab.path("db/neoflix.db")).unwrap();
    assert!(
        db.execute("UPDATE audit SET actor = 'mallory' WHERE seq = 3", [])
            .is_err()
    );
    assert!(db.execute("DELETE FROM audit WHERE seq = 3", []).is_err());
    db.execute_batch(
        "DROP TRIGGER audit_no_update; UPDATE audit SET actor = 'mallory' WHERE seq = 3;",
    )
    .unwrap();
    drop(db);
    let (code, out, _) = lab.ingest_admin(&["audit", "--verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("BROKEN at entry 3"), "{out}");
    let mode = fs::metadata(lab.path("db/neoflix.db")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);
}

#[test]
fn a_missing_assets_directory_stops_the_start_naming_it() {
    let lab = Lab::new();
    lab.pki(&[]);
    let extra = format!(
        "[review]\nlisten = \"127.0.0.1:{}\"\nassets = \"{}\"\n[database]\npath = \"{}\"\n",
        free_port(),
        lab.path("no-such-assets").display(),
        lab.path("neoflix.db").display()
    );
    let ingest = lab.ingest_config_with(1 << 20, &extra);
    // --check-config says so before anyone starts the service.
    let (code, _, said) = lab.ingest_admin(&["--check-config"]);
    assert_eq!(code, 2, "{said}");
    assert!(
        said.contains("[review]") && said.contains("no-such-assets"),
        "{said}"
    );
    let (code, err) = ingest.start_expecting_exit();
    assert_ne!(code, 0);
    assert!(
        err.contains("no-such-assets") && err.contains("scripts/build-web"),
        "{err}"
    );
}

/// The fleet tiles: the server subscribes to the boxes' retained status on the broker and
/// answers it, judged as `neoflix fleet` judges it, to a signed-in reviewer only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_tiles_show_each_boxs_retained_status() {
    let lab = Lab::new();
    lab.pki(&[]);
    let broker = neoflix_e2e::Mosquitto::plain(&lab);
    let p = neoflix_e2e::MqttProbe::plain(&broker, "neoflix/none");
    let status = json!({
        "device_id": "room-9", "state": "buffering", "ready": false,
        "reasons": ["pre-roll not full yet"], "preroll_secs": 12.0, "encoder": "x264enc",
        "recordings_finalized": 0, "time_utc": "2026-11-28T10:00:00Z"
    });
    p.publish("neoflix/room-9/status", status.to_string().as_bytes(), true);
    p.publish(
        "neoflix/room-8/status",
        neoflix_mqtt::OFFLINE.as_bytes(),
        true,
    );
    let (ingest, b) =
        start_review(&lab, &format!("[mqtt]\nurl = \"{}\"\n", broker.url(false))).await;
    let alice = reviewer_file(&lab, "alice", 7);
    assert_eq!(
        lab.ingest_admin(&["reviewer", "import", alice.to_str().unwrap()])
            .0,
        0
    );
    assert_eq!(b.get("/api/fleet", None).await.status(), 401);
    let r = b.login("alice", 7).await;
    let cookie = header(&r, "set-cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let devices = loop {
        let v: Value = b
            .get("/api/fleet", Some(&cookie))
            .await
            .json()
            .await
            .unwrap();
        let d = v["devices"].as_array().unwrap().clone();
        if d.len() == 2 {
            break d;
        }
        assert!(Instant::now() < deadline, "{v}\n{}", ingest.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(devices[0]["device"], "room-8");
    assert_eq!(devices[0]["state"], "offline");
    assert_eq!(devices[0]["ready"], false);
    assert_eq!(devices[1]["device"], "room-9");
    assert_eq!(devices[1]["state"], "buffering");
    assert_eq!(devices[1]["reasons"], json!(["pre-roll not full yet"]));
    assert_eq!(devices[1]["updated_utc"], "2026-11-28T10:00:00Z");
}

/// Wrong passphrases sent at once, one name or many: `n` sign-ins in parallel, each on its
/// own task; the statuses.
async fn parallel_logins(b: &Browser, users: Vec<String>, auth: u8) -> Vec<u16> {
    let mut set = tokio::task::JoinSet::new();
    for user in users {
        let (http, base) = (b.http.clone(), b.base.clone());
        set.spawn(async move {
            http.post(format!("{base}/api/login"))
                .header("origin", &base)
                .json(&json!({"user": user, "auth": B64.encode([auth; 32])}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        });
    }
    let mut statuses = Vec::new();
    while let Some(s) = set.join_next().await {
        statuses.push(s.unwrap());
    }
    statuses
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

/// An outsider's attacks on sign-in: wrong passphrases sent in parallel are limited exactly as
/// sent one by one (per name and per address); a locked name hammered on does not write one
/// audit entry per refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_wrong_passphrases_are_limited_as_sequential_ones_and_refusals_audited_once() {
    let lab = Lab::new();
    lab.pki(&[]);
    let (ingest, b) = start_review(&lab, "").await;
    let bob = reviewer_file(&lab, "bob", 9);
    assert_eq!(
        lab.ingest_admin(&["reviewer", "import", bob.to_str().unwrap()])
            .0,
        0
    );

    // One name, 24 wrong passphrases at once: five are checked, the rest refused unchecked.
    let s = parallel_logins(&b, vec!["bob".to_string(); 24], 1).await;
    assert_eq!((count(&s, 401), count(&s, 429)), (5, 19), "{s:?}");
    // Many names at once from one address: 20 failures in all, then the address is refused.
    let names: Vec<String> = (0..24).map(|i| format!("guess-{i}")).collect();
    let s = parallel_logins(&b, names, 1).await;
    assert_eq!((count(&s, 401), count(&s, 429)), (15, 9), "{s:?}");
    // Hammering on: every attempt refused, but the audit log does not grow with each.
    for _ in 0..3 {
        let s = parallel_logins(&b, vec!["bob".to_string(); 20], 9).await;
        assert_eq!(count(&s, 429), 20, "{s:?}");
    }
    let (code, out, _) = lab.ingest_admin(&["audit", "--json"]);
    assert_eq!(code, 0);
    let entries: Vec<Value> = serde_json::from_str(&out).unwrap();
    let of = |action: &str| entries.iter().filter(|e| e["action"] == action).count();
    assert_eq!(of("sign-in-failed"), 20, "{out}");
    assert!(
        of("sign-in-refused") <= 2,
        "one entry per lock, not per refusal: {} entries",
        of("sign-in-refused")
    );
    drop(ingest);
}

/// Slowloris from one address: it opens connections and sends nothing. Past its share the rest
/// are closed at once instead of taking the listener's every slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_every_review_connection() {
    let lab = Lab::new();
    lab.pki(&[]);
    let (ingest, _b) = start_review(&lab, "").await;
    let port: u16 = ingest_review_port(&lab);
    use std::io::ErrorKind;
    let mut held = Vec::new();
    let mut closed = 0;
    for _ in 0..64 {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        match std::io::Read::read(&mut c, &mut [0u8; 1]) {
            Ok(0) => closed += 1,
            Err(e) if !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                closed += 1
            }
            _ => {}
        }
        held.push(c);
    }
    assert!(
        closed >= 64 - 32,
        "{closed} of 64 closed\n{}",
        ingest.log_text()
    );
    drop(held);
}

/// The review port in the lab's `ingest.toml`.
fn ingest_review_port(lab: &Lab) -> u16 {
    let cfg = fs::read_to_string(lab.path("ingest.toml")).unwrap();
    let review = cfg.split("[review]").nth(1).unwrap();
    let listen = review
        .lines()
        .find_map(|l| l.strip_prefix("listen = \""))
        .unwrap();
    listen
        .trim_end_matches('"')
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}
