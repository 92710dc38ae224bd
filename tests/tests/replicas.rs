//! Two `neoflix-ingest` replicas on one store and one PostgreSQL database (issue 14): a box
//! uploads through one, that replica is killed mid-recording, the box fails over to the other
//! and the recording completes; it verifies and plays in the review page of either replica
//! (in headless Chromium), a session begun on one is honoured by the other, and a withdrawal
//! through one is seen by the other. The store here is one directory both replicas use (a
//! shared filesystem); the database is Debian's PostgreSQL, started by the test.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use neoflix_control::Request;
use neoflix_e2e::garage::{Garage, runtime, settled};
use neoflix_e2e::{
    Browser, Daemon, Ingest, Lab, Postgres, ffmpeg_errors, ffprobe, free_port, review_assets,
    wait_until,
};
use neoflix_ingest::storage::s3::parse_object_key;

/// Waits until the stopped recording is complete in `stored` (through `server`) and the box
/// has deleted its copy; then it verifies and plays, and the box counts one delivery.
fn delivered_through(lab: &Lab, d: &mut Daemon, stored: &Path, server: &Ingest) {
    wait_until(
        "the recording complete through the remaining replica",
        Duration::from_secs(90),
        || stored.join("manifest.json").exists(),
        &|| d.log_text() + &server.log_text(),
    );
    wait_until(
        "the box to delete its copy",
        Duration::from_secs(30),
        || lab.recordings().is_empty(),
        &|| d.log_text(),
    );
    verifies_and_plays(lab, stored);
    assert_eq!(d.status().upload.unwrap().delivered, 1);
}

/// The stored copy of `dir` verifies and exports to an MP4 that plays as long as it says.
fn verifies_and_plays(lab: &Lab, dir: &Path) {
    let m = neoflix_format::verify(dir)
        .expect("the stored recording verifies")
        .manifest;
    let mp4 = lab.path(&format!("{}.mp4", m.recording_id));
    let e = lab.export(dir, &mp4);
    assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
    assert_eq!(ffmpeg_errors(&mp4), "");
    assert!((ffprobe(&mp4).duration - m.duration_secs).abs() <= 1.0);
}
use serde_json::json;

const CAPTURE: &str = "source = \"test\"\nwidth = 320\nheight = 240\nfps = 15\nbitrate_kbps = 400";
const PASSPHRASE: &str = "correct horse battery staple";

/// A replica: its own ports, config and log; the lab's store (`<lab>/server`), the review
/// page and the shared database.
struct Replica {
    ingest: Ingest,
    config: PathBuf,
    review: String,
}

/// `storage`: a `[storage]` section in place of the lab's directory.
fn replica(lab: &Lab, pg: &Postgres, name: &str, storage: Option<&str>) -> Replica {
    let rport = free_port();
    let extra = format!(
        "[review]\nlisten = \"127.0.0.1:{rport}\"\nassets = \"{}\"\n[retention]\nkeep_days = 30\n{}",
        review_assets().display(),
        pg.database_section()
    );
    let written = lab.ingest_config_with(64 << 20, &extra);
    let config = lab.path(&format!("ingest-{name}.toml"));
    let mut text = fs::read_to_string(lab.path("ingest.toml")).unwrap();
    if let Some(section) = storage {
        let dir = format!("[storage]\ndir = \"{}\"\n", lab.path("server").display());
        assert!(text.contains(&dir), "{text}");
        text = text.replace(&dir, section);
    }
    fs::write(&config, text).unwrap();
    Replica {
        ingest: Ingest::from_config(
            config.clone(),
            written.addr.clone(),
            lab.path(&format!("ingest-{name}.log")),
        ),
        config,
        review: format!("https://127.0.0.1:{rport}"),
    }
}

impl Replica {
    fn start(&mut self) {
        self.ingest.start();
        let port: u16 = self.review.rsplit(':').next().unwrap().parse().unwrap();
        wait_until(
            "the review listener",
            Duration::from_secs(20),
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            &|| self.ingest.log_text(),
        );
    }

    /// `neoflix-ingest --config <this replica's> ARGS`: (exit code, stdout, stderr).
    fn admin(&self, args: &[&str]) -> (i32, String, String) {
        let out = neoflix_e2e::command("neoflix-ingest")
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// Opens recording `id` from the list and waits until its video plays.
fn plays(b: &Browser, id: &str) {
    let row = format!("tr[data-recording=\"{id}\"]");
    b.wait(
        "the recording listed as complete",
        Duration::from_secs(30),
        &format!("(document.querySelector('{row}') || {{}}).dataset?.upload === 'complete'"),
    );
    b.click(&b.element(&format!("{row} a.open")));
    b.wait(
        "decoded video",
        Duration::from_secs(30),
        "document.body.dataset.view === 'player' && document.querySelector('video').readyState >= 2",
    );
    b.press(" ");
    b.wait(
        "playback",
        Duration::from_secs(20),
        "document.querySelector('video').currentTime > 1.0",
    );
}

/// Back from the player to the list, refreshed: the withdrawn recording `id` is not in it.
fn gone_from_the_list(browser: &Browser, id: &str) {
    browser.eval("history.back()", json!([]));
    browser.wait(
        "the list",
        Duration::from_secs(30),
        "document.body.dataset.view === 'list' && document.querySelector('form.filters button[type=submit]')",
    );
    let row = format!("tr[data-recording=\"{id}\"]");
    browser.click(&browser.element("form.filters button[type=submit]"));
    browser.wait(
        "the withdrawn recording gone from the second replica's list",
        Duration::from_secs(30),
        &format!(
            "document.querySelector('table.recordings tbody') && !document.querySelector('{row}')"
        ),
    );
}

/// Stopped as systemd stops them, both exit cleanly (a PostgreSQL client dropped inside the
/// async runtime would panic).
fn stop_both(a: &mut Replica, b: &mut Replica) {
    for r in [a, b] {
        assert_eq!(r.ingest.terminate(), 0, "{}", r.ingest.log_text());
        assert!(
            !r.ingest.log_text().contains("panicked"),
            "{}",
            r.ingest.log_text()
        );
    }
}

fn objects_in(dir: &Path) -> usize {
    fs::read_dir(dir)
        .map(|l| {
            l.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("frag-"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn two_replicas_on_one_store_and_postgresql_fail_over_serve_either_page_and_share_a_withdrawal() {
    let lab = Lab::new();
    lab.pki(&["room-e2e"]);
    let pg = Postgres::start();
    let mut a = replica(&lab, &pg, "a", None);
    let mut b = replica(&lab, &pg, "b", None);
    let alice = lab.enrol_reviewer("alice", PASSPHRASE);
    let (code, out, err) = a.admin(&["reviewer", "import", alice.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    a.start();
    b.start();

    // The box knows both replicas, the first one first.
    let list = format!(
        "url = [\"https://{}\", \"https://{}\"]",
        a.ingest.addr, b.ingest.addr
    );
    let upload = lab
        .upload_section(&a.ingest, "room-e2e")
        .replace(&format!("url = \"https://{}\"", a.ingest.addr), &list);
    lab.config(CAPTURE, 2, &upload);
    let mut d = lab.start();
    d.wait_ready(Duration::from_secs(60));
    let id = d.ctl(Request::Start {}).recording.unwrap();
    let stored = lab.path("server/room-e2e").join(&id);
    wait_until(
        "fragments through the first replica",
        Duration::from_secs(30),
        || objects_in(&stored) >= 2,
        &|| d.log_text() + &a.ingest.log_text(),
    );
    a.ingest.kill9();
    // Stopped once the box has left the dead replica for the other.
    let second = format!("https://{}", b.ingest.addr);
    d.wait_for(
        "the box to move to the second replica",
        Duration::from_secs(60),
        |s| s.upload.as_ref().and_then(|u| u.server.as_deref()) == Some(second.as_str()),
    );
    assert!(d.ctl(Request::Stop {}).ok);
    delivered_through(&lab, &mut d, &stored, &b.ingest);
    assert_eq!(
        d.status().upload.unwrap().server.as_deref(),
        Some(format!("https://{}", b.ingest.addr).as_str())
    );

    // The killed replica comes back; the page of each plays the recording.
    a.start();
    let browser = Browser::launch(&lab.ca());
    browser.goto(&a.review);
    browser.element("form#signin input[name=user]");
    browser.sign_in("alice", PASSPHRASE);
    plays(&browser, &id);
    // The session begun on the first is the second's too: it lives in the database. (A new
    // page asks for the passphrase again all the same: the department key it unwraps stays
    // in the tab that unwrapped it.)
    browser.goto(&b.review);
    browser.element("form#signin input[name=user]");
    let session = browser.eval_async(
        "const done = arguments[arguments.length - 1];
         fetch('/api/session', { credentials: 'same-origin' }).then(r => done(r.status), e => done(String(e)));",
        json!([]),
    );
    assert_eq!(
        session,
        json!(200),
        "the first replica's session on the second"
    );
    browser.sign_in("alice", PASSPHRASE);
    plays(&browser, &id);

    // Withdrawn through the first replica: the second one's list loses it at the next refresh.
    let (code, out, err) = a.admin(&["withdraw", &id, "--reason", "consent withdrawn (form 7)"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!stored.exists(), "the stored copy is deleted");
    gone_from_the_list(&browser, &id);

    // One audit chain, written by both replicas and the admin's command, verifies.
    let (code, out, err) = b.admin(&["audit", "--verify"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, log, err) = b.admin(&["audit", "--json"]);
    assert_eq!(code, 0, "{err}");
    let entries: serde_json::Value = serde_json::from_str(&log).expect("audit --json is JSON");
    let actions: Vec<&str> = entries
        .as_array()
        .expect("an array")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(
        actions.iter().filter(|a| **a == "recording-opened").count() >= 2,
        "{actions:?}"
    );
    assert!(actions.contains(&"recording-withdrawn"), "{actions:?}");
    assert_eq!(d.terminate(), 0);

    stop_both(&mut a, &mut b);
}

/// A recording held in the bucket, fetched into `into` under its objects' names (the keys
/// carry their digests): what an export from the store does.
fn fetch_recording(g: &Garage, rec: &str, into: &Path) {
    let rt = runtime();
    let b = g.bucket(0);
    fs::create_dir_all(into).unwrap();
    for o in rt
        .block_on(settled(|| b.list_all(rec, 1000, 10_000)))
        .unwrap()
    {
        let rest = o.key.strip_prefix(rec).unwrap();
        let name = match parse_object_key(rest) {
            Some((name, _)) => name,
            None => rest,
        };
        let bytes = rt
            .block_on(settled(|| b.get_small(&o.key, 64 << 20)))
            .unwrap()
            .unwrap();
        fs::write(into.join(name), bytes).unwrap();
    }
}

/// Sealed fragments of `rec` in the bucket.
fn fragments_in(g: &Garage, rec: &str) -> usize {
    let rt = runtime();
    let b = g.bucket(0);
    rt.block_on(b.list_all(rec, 1000, 10_000))
        .map(|l| {
            l.iter()
                .filter(|o| o.key[rec.len()..].starts_with("frag-"))
                .count()
        })
        .unwrap_or(0)
}

/// Issue 14 on an object store: two replicas share a three-node Garage cluster and one
/// PostgreSQL database. The box uploads through the first, which is killed mid-recording; a
/// Garage node is killed while the box uploads through the second; the recording completes
/// all the same, verifies and plays in the page of either replica; a withdrawal through the
/// first (the admin's command) deletes it from the bucket and the second's list loses it.
/// Neither replica keeps anything of it on its own disk.
#[test]
fn two_replicas_on_garage_and_postgresql_survive_a_replica_and_a_store_node_dying() {
    let lab = Lab::new();
    lab.pki(&["room-e2e"]);
    let pg = Postgres::start();
    let mut g = Garage::serving();
    let mut a = replica(&lab, &pg, "a", Some(&g.storage_section(0, "unit-a/")));
    let mut b = replica(&lab, &pg, "b", Some(&g.storage_section(1, "unit-a/")));
    let alice = lab.enrol_reviewer("alice", PASSPHRASE);
    let (code, out, err) = a.admin(&["reviewer", "import", alice.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = a.admin(&["--check-config"]);
    assert_eq!(code, 0, "{out}{err}");
    a.start();
    b.start();
    assert!(
        a.ingest.log_text().contains("object store checked"),
        "{}",
        a.ingest.log_text()
    );

    let list = format!(
        "url = [\"https://{}\", \"https://{}\"]",
        a.ingest.addr, b.ingest.addr
    );
    let upload = lab
        .upload_section(&a.ingest, "room-e2e")
        .replace(&format!("url = \"https://{}\"", a.ingest.addr), &list);
    lab.config(CAPTURE, 2, &upload);
    let mut d = lab.start();
    d.wait_ready(Duration::from_secs(60));
    let id = d.ctl(Request::Start {}).recording.unwrap();
    let rec = format!("unit-a/room-e2e/{id}/");
    wait_until(
        "fragments in the bucket through the first replica",
        Duration::from_secs(30),
        || fragments_in(&g, &rec) >= 2,
        &|| d.log_text() + &a.ingest.log_text(),
    );
    a.ingest.kill9();
    let second = format!("https://{}", b.ingest.addr);
    d.wait_for(
        "the box to move to the second replica",
        Duration::from_secs(60),
        |s| s.upload.as_ref().and_then(|u| u.server.as_deref()) == Some(second.as_str()),
    );
    let before = fragments_in(&g, &rec);
    wait_until(
        "fragments through the second replica",
        Duration::from_secs(30),
        || fragments_in(&g, &rec) >= before + 2,
        &|| d.log_text() + &b.ingest.log_text(),
    );
    // A store node dies mid-upload: two of three hold every object, and that is a quorum.
    g.kill(2);
    std::thread::sleep(Duration::from_secs(3));
    assert!(d.ctl(Request::Stop {}).ok);
    let manifest = format!("{rec}manifest.json");
    let rt = runtime();
    let store = g.bucket(0);
    wait_until(
        "the recording complete in the bucket",
        Duration::from_secs(120),
        || matches!(rt.block_on(store.head(&manifest)), Ok(Some(_))),
        &|| d.log_text() + &b.ingest.log_text(),
    );
    wait_until(
        "the box to delete its copy",
        Duration::from_secs(60),
        || lab.recordings().is_empty(),
        &|| d.log_text() + &b.ingest.log_text(),
    );
    assert_eq!(d.status().upload.unwrap().delivered, 1);
    let fetched = lab.path("fetched");
    fetch_recording(&g, &rec, &fetched);
    verifies_and_plays(&lab, &fetched);

    // The killed replica comes back; the page of each plays the recording.
    a.start();
    let browser = Browser::launch(&lab.ca());
    browser.goto(&a.review);
    browser.element("form#signin input[name=user]");
    browser.sign_in("alice", PASSPHRASE);
    plays(&browser, &id);
    browser.goto(&b.review);
    browser.element("form#signin input[name=user]");
    browser.sign_in("alice", PASSPHRASE);
    plays(&browser, &id);

    // Withdrawn through the first replica's admin command: gone from the bucket (the notice
    // stays), and the second's list loses it.
    let (code, out, err) = a.admin(&["withdraw", &id, "--reason", "consent withdrawn (form 7)"]);
    assert_eq!(code, 0, "{out}{err}");
    // (A listing may show a deleted key for a moment on a loaded machine.)
    wait_until(
        "the recording gone from the bucket",
        Duration::from_secs(10),
        || matches!(rt.block_on(store.list_all(&rec, 1000, 10_000)), Ok(l) if l.is_empty()),
        &|| format!("{:?}", rt.block_on(store.list_all(&rec, 1000, 10_000))),
    );
    let notice = format!("unit-a/room-e2e/.withdrawn/{id}.json");
    assert!(matches!(rt.block_on(store.head(&notice)), Ok(Some(_))));
    gone_from_the_list(&browser, &id);
    let (code, out, err) = b.admin(&["audit", "--verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(d.terminate(), 0);
    stop_both(&mut a, &mut b);
    // Nothing of the recording on either replica's disk: no storage directory at all.
    assert!(!lab.path("server").exists());
}

/// The deployment docs/ingest.md gives for boxes that know one name: HAProxy passing TCP
/// through (the box's certificate reaches the replica), two replicas behind it; the one in
/// use (`balance first` makes that the first) is killed mid-recording and the recording
/// completes through the other, the box none the wiser.
#[test]
fn behind_haproxy_a_box_with_one_url_loses_nothing_when_a_replica_dies() {
    let lab = Lab::new();
    lab.pki(&["room-e2e"]);
    let pg = Postgres::start();
    let mut a = replica(&lab, &pg, "a", None);
    let mut b = replica(&lab, &pg, "b", None);
    a.start();
    b.start();
    let port = free_port();
    let cfg = lab.path("haproxy.cfg");
    fs::write(
        &cfg,
        format!(
            "global\n    maxconn 256\n\
             defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 120s\n    timeout server 120s\n    retries 2\n    option redispatch\n\
             frontend devices\n    bind 127.0.0.1:{port}\n    default_backend ingest-devices\n\
             backend ingest-devices\n    balance first\n    option tcp-check\n    default-server inter 500ms fall 2 rise 2\n\
             \x20   server ingest-a {}:{} check\n    server ingest-b {}:{} check\n",
            "127.0.0.1",
            a.ingest.addr.rsplit(':').next().unwrap(),
            "127.0.0.1",
            b.ingest.addr.rsplit(':').next().unwrap(),
        ),
    )
    .unwrap();
    let check = std::process::Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&cfg)
        .output()
        .expect("haproxy (scripts/test installs it)");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let log = fs::File::create(lab.path("haproxy.log")).unwrap();
    let _proxy = KillOnDrop(
        std::process::Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    wait_until(
        "HAProxy listening",
        Duration::from_secs(20),
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        &|| fs::read_to_string(lab.path("haproxy.log")).unwrap_or_default(),
    );

    let upload = lab.upload_section(&a.ingest, "room-e2e").replace(
        &format!("url = \"https://{}\"", a.ingest.addr),
        &format!("url = \"https://127.0.0.1:{port}\""),
    );
    lab.config(CAPTURE, 2, &upload);
    let mut d = lab.start();
    d.wait_ready(Duration::from_secs(60));
    let id = d.ctl(Request::Start {}).recording.unwrap();
    let stored = lab.path("server/room-e2e").join(&id);
    wait_until(
        "fragments through the proxy",
        Duration::from_secs(30),
        || objects_in(&stored) >= 2,
        &|| d.log_text(),
    );
    a.ingest.kill9();
    assert!(d.ctl(Request::Stop {}).ok);
    delivered_through(&lab, &mut d, &stored, &b.ingest);
    assert_eq!(d.terminate(), 0);
    assert_eq!(b.ingest.terminate(), 0, "{}", b.ingest.log_text());
    // HAProxy's checks (a TCP connect and close every 500 ms) are no warnings.
    assert!(
        !b.ingest.log_text().contains("TLS handshake refused"),
        "{}",
        b.ingest.log_text()
    );
}

/// A child killed when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A replica started before its PostgreSQL (one machine booting, a database failing over)
/// waits for it, saying why, instead of exiting until systemd gives up; it stops cleanly while
/// it waits.
#[test]
fn a_replica_started_before_its_postgresql_waits_for_it() {
    let lab = Lab::new();
    lab.pki(&[]);
    let mut pg = Postgres::start();
    pg.kill();
    let mut a = replica(&lab, &pg, "a", None);
    a.ingest.start();
    a.ingest.wait_log("the wait for PostgreSQL", |log| {
        log.matches("PostgreSQL cannot be opened; trying again")
            .count()
            >= 2
            && log.contains("Connection refused")
    });
    assert_eq!(a.ingest.terminate(), 0, "{}", a.ingest.log_text());

    a.ingest.start();
    a.ingest.wait_log("the wait for PostgreSQL", |log| {
        log.matches("PostgreSQL cannot be opened; trying again")
            .count()
            >= 3
    });
    pg.start_again();
    let port: u16 = a.review.rsplit(':').next().unwrap().parse().unwrap();
    wait_until(
        "the review listener once PostgreSQL is up",
        Duration::from_secs(90),
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        &|| a.ingest.log_text(),
    );
    assert!(
        a.ingest.log_text().contains("database open"),
        "{}",
        a.ingest.log_text()
    );
    assert_eq!(a.ingest.terminate(), 0, "{}", a.ingest.log_text());
}
