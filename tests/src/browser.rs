//! A real headless Chromium driven over WebDriver (W3C), for the tests of the review page.
//!
//! Debian's `chromium` and `chromium-driver`: the test starts `/usr/bin/chromedriver` on a
//! loopback port and talks JSON over plain HTTP/1.1 to it (a few dozen lines here rather than a
//! WebDriver crate and its async stack). Chromium gets a fresh profile and a fresh `HOME`
//! whose NSS database trusts the lab's CA, so the page's certificate is checked as a hospital
//! browser checks it: no `--ignore-certificate-errors`, no `acceptInsecureCerts`.
//!
//! A machine without Chromium fails the test with what to install; it never passes silently.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The W3C key of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where Debian puts the browser and its driver.
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A headless Chromium session; closed (browser and driver ended) on drop.
pub struct Browser {
    /// The chromedriver process, which owns the browser.
    driver: Child,
    /// Its loopback port.
    port: u16,
    /// The WebDriver session id.
    session: String,
    /// Profile, HOME (NSS database) and downloads.
    dir: tempfile::TempDir,
}

/// An element found on the page.
#[derive(Debug, Clone)]
pub struct Element(String);

impl Browser {
    /// Signs in on the review page's form as `user` with `passphrase`.
    pub fn sign_in(&self, user: &str, passphrase: &str) {
        let u = self.element("input[name=user]");
        self.clear(&u);
        self.type_into(&u, user);
        let p = self.element("input[name=passphrase]");
        self.clear(&p);
        self.type_into(&p, passphrase);
        self.click(&self.element("#signin button[type=submit]"));
    }

    /// Starts chromedriver and a headless Chromium that trusts the CA certificate `ca` (PEM)
    /// for HTTPS. Panics, naming the packages to install, when Chromium is missing.
    pub fn launch(ca: &Path) -> Browser {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(path).exists(),
                "{path} not found: the review page's browser test needs Debian's {package} \
                 (`apt-get install chromium chromium-driver libnss3-tools`; scripts/test installs them)"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("neoflix-browser")
            .tempdir()
            .expect("tempdir");
        let home = dir.path().join("home");
        trust_ca(&home, ca);
        std::fs::create_dir_all(dir.path().join("downloads")).unwrap();
        let port = crate::free_port();
        let log = std::fs::File::create(dir.path().join("chromedriver.log")).unwrap();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .env("HOME", &home)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("chromedriver starts");
        let mut b = Browser {
            driver,
            port,
            session: String::new(),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--autoplay-policy=no-user-gesture-required",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", b.dir.path().join("profile").display()),
                ],
                "prefs": {
                    "download.default_directory": b.downloads().display().to_string(),
                    "download.prompt_for_download": false,
                    "profile.default_content_setting_values.automatic_downloads": 1,
                },
            },
        }}});
        let v = b.call("POST", "/session", Some(caps));
        b.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}\n{}", b.driver_log()))
            .to_string();
        b
    }

    /// Where downloads land.
    pub fn downloads(&self) -> PathBuf {
        self.dir.path().join("downloads")
    }

    /// chromedriver's log (and the browser's messages it relays).
    pub fn driver_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default()
    }

    /// Opens `url`.
    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", json!({ "url": url }));
    }

    /// The address bar's URL.
    pub fn url(&self) -> String {
        self.cmd_get("/url")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) and returns its value.
    pub fn eval(&self, script: &str, args: Value) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": args }),
        )
    }

    /// Runs `script`, which calls `arguments[arguments.length - 1]` with its result.
    pub fn eval_async(&self, script: &str, args: Value) -> Value {
        self.cmd(
            "POST",
            "/execute/async",
            json!({ "script": script, "args": args }),
        )
    }

    /// Waits until the expression `js` is truthy and returns its value; panics after `limit`
    /// with `what` and the page's text. An expression that throws counts as not yet true.
    pub fn wait(&self, what: &str, limit: Duration, js: &str) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            // A script error (an element not there yet) counts as not yet.
            let (status, v) = self.call_status(
                "POST",
                &format!("/session/{}/execute/sync", self.session),
                Some(json!({ "script": format!("return ({js});"), "args": [] })),
            );
            let v = if status == 200 {
                v["value"].clone()
            } else {
                Value::Null
            };
            if !(v.is_null() || v == json!(false) || v == json!(0) || v == json!("")) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} ({js})\npage: {}\nalert: {}",
                self.text("main"),
                self.text("#alert")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The first element matching the CSS selector, if any.
    pub fn find(&self, css: &str) -> Option<Element> {
        let (status, v) = self.call_status(
            "POST",
            &format!("/session/{}/element", self.session),
            Some(json!({ "using": "css selector", "value": css })),
        );
        if status != 200 {
            return None;
        }
        v["value"][ELEMENT].as_str().map(|s| Element(s.to_string()))
    }

    /// The element matching `css`, waited for up to 20 s.
    pub fn element(&self, css: &str) -> Element {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(e) = self.find(css) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no element {css}\npage: {}\nalert: {}",
                self.text("main"),
                self.text("#alert")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Types `text` into the element (as keystrokes).
    pub fn type_into(&self, e: &Element, text: &str) {
        self.cmd(
            "POST",
            &format!("/element/{}/value", e.0),
            json!({ "text": text }),
        );
    }

    /// Clears an input.
    pub fn clear(&self, e: &Element) {
        self.cmd("POST", &format!("/element/{}/clear", e.0), json!({}));
    }

    /// Clicks the element (a trusted click, as a person's).
    pub fn click(&self, e: &Element) {
        self.cmd("POST", &format!("/element/{}/click", e.0), json!({}));
    }

    /// The text of the page's open `confirm()`/`alert()` dialog, waited for up to 10 s.
    pub fn dialog_text(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, v) = self.call_status(
                "GET",
                &format!("/session/{}/alert/text", self.session),
                None,
            );
            if status == 200 {
                return v["value"].as_str().unwrap_or_default().to_string();
            }
            assert!(Instant::now() < deadline, "no dialog opened: {v}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Answers the open dialog: OK (`true`) or Cancel.
    pub fn answer_dialog(&self, ok: bool) {
        let what = if ok { "accept" } else { "dismiss" };
        self.cmd("POST", &format!("/alert/{what}"), json!({}));
    }

    /// Presses and releases `key` (a character, or a WebDriver key code such as `"\u{E011}"`
    /// for Home) on whatever has the focus.
    pub fn press(&self, key: &str) {
        self.cmd(
            "POST",
            "/actions",
            json!({ "actions": [{ "type": "key", "id": "keyboard", "actions": [
                { "type": "keyDown", "value": key }, { "type": "keyUp", "value": key },
            ]}]}),
        );
    }

    /// The text of the first element matching `css` ("" when there is none).
    pub fn text(&self, css: &str) -> String {
        self.eval(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
            json!([css]),
        )
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let v = self.cmd_get("/screenshot");
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .expect("base64 screenshot")
    }

    fn cmd_get(&self, path: &str) -> Value {
        self.cmd("GET", path, Value::Null)
    }

    fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let body = (method == "POST").then_some(body);
        let (status, v) = self.call_status(method, &path, body);
        assert!(
            status == 200,
            "WebDriver {method} {path}: {status} {v}\npage: {}",
            self.eval_page_text()
        );
        v["value"].clone()
    }

    /// The page's text, for failure messages (never panics).
    fn eval_page_text(&self) -> String {
        let (_, v) = self.call_status(
            "POST",
            &format!("/session/{}/execute/sync", self.session),
            Some(json!({ "script": "return document.body ? document.body.innerText : ''", "args": [] })),
        );
        v["value"].as_str().unwrap_or_default().to_string()
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call_status(method, path, body);
        assert!(status == 200, "WebDriver {method} {path}: {status} {v}");
        v["value"].clone()
    }

    /// One HTTP/1.1 exchange with chromedriver: (status, JSON body).
    fn call_status(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("chromedriver is up");
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        )
        .expect("write to chromedriver");
        // chromedriver keeps the connection open whatever the request says: read the head,
        // then exactly the body it announces.
        let mut raw = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        let split = loop {
            if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            let n = s.read(&mut buf).expect("read from chromedriver");
            assert!(n > 0, "chromedriver closed the connection mid-answer");
            raw.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
        let mut payload = raw[split + 4..].to_vec();
        let length = head.lines().find_map(|l| {
            l.strip_prefix("content-length:")
                .and_then(|v| v.trim().parse::<usize>().ok())
        });
        let chunked = head.contains("transfer-encoding: chunked");
        loop {
            let complete = match length {
                Some(n) => payload.len() >= n,
                None if chunked => payload.windows(5).any(|w| w == b"0\r\n\r\n"),
                None => false,
            };
            if complete {
                break;
            }
            let n = s.read(&mut buf).expect("read from chromedriver");
            if n == 0 {
                break;
            }
            payload.extend_from_slice(&buf[..n]);
        }
        if chunked {
            payload = dechunk(&payload);
        }
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let v = serde_json::from_slice(&payload).unwrap_or(Value::Null);
        (status, v)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call_status("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // A browser whose session never started (or did not end) outlives its driver: end the
        // processes that run on this browser's own profile, and only those.
        let marker = format!(
            "--user-data-dir={}",
            self.dir.path().join("profile").display()
        );
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if cmdline
                .split(|&b| b == 0)
                .any(|arg| arg == marker.as_bytes())
            {
                // SAFETY: kill(2) with a pid read from /proc and a valid signal number.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Makes `home/.pki/nssdb`, the NSS database Chromium on Linux reads, trusting `ca` to
/// identify web sites.
fn trust_ca(home: &Path, ca: &Path) {
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).unwrap();
    let db = format!("sql:{}", db.display());
    let run = |args: &[&str]| {
        let out = Command::new("certutil")
            .args(args)
            .output()
            .expect("certutil runs (Debian's libnss3-tools; scripts/test installs it)");
        assert!(
            out.status.success(),
            "certutil {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["-N", "-d", &db, "--empty-password"]);
    run(&[
        "-A",
        "-d",
        &db,
        "-n",
        "neoflix-test-ca",
        "-t",
        "C,,",
        "-i",
        ca.to_str().unwrap(),
    ]);
}

/// Decodes an HTTP/1.1 chunked body.
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&b[..eol])
                .split(';')
                .next()
                .unwrap_or("0")
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 || b.len() < eol + 2 + size {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[(eol + 4 + size).min(b.len())..];
    }
}
