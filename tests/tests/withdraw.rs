//! Withdrawal end to end: the real neoflix-ingest and its admin command, a real room box that is
//! cut off from the server while the recording is withdrawn, and what each side holds after.

use std::fs;
use std::path::Path;
use std::thread::sleep;
use std::time::Duration;

use base64::Engine as _;
use neoflix_control::Request;
use neoflix_e2e::{Lab, curl, wait_until};
use serde_json::Value;

const CAPTURE: &str = "source = \"test\"\nwidth = 320\nheight = 240\nfps = 15\nbitrate_kbps = 300";

fn objects_in(dir: &Path) -> usize {
    fs::read_dir(dir)
        .map(|l| {
            l.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".nfx"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn a_recording_withdrawn_while_its_box_is_offline_is_deleted_on_both_sides_and_audited() {
    let lab = Lab::new();
    lab.pki(&["room-e2e"]);
    let db = lab.path("db/neoflix.db");
    let mut ingest = lab.ingest_config_with(
        64 << 20,
        &format!("[database]\npath = \"{}\"\n", db.display()),
    );
    ingest.start();
    lab.config(CAPTURE, 3, &lab.upload_section(&ingest, "room-e2e"));
    let mut d = lab.start();
    d.wait_ready(Duration::from_secs(60));

    // Part of the recording reaches the server live; then the server is gone and the box
    // finishes the recording alone.
    let id = d.ctl(Request::Start {}).recording.unwrap();
    let srv = lab.path("server/room-e2e").join(&id);
    wait_until(
        "fragments on the server while it records",
        Duration::from_secs(30),
        || objects_in(&srv) >= 3,
        &|| d.log_text() + &ingest.log_text(),
    );
    ingest.kill9();
    sleep(Duration::from_secs(2));
    assert!(d.ctl(Request::Stop {}).ok);
    let local = lab.path("recordings").join(&id);
    wait_until(
        "the box's manifest",
        Duration::from_secs(20),
        || local.join("manifest.json").exists(),
        &|| d.log_text(),
    );

    // Refusals name what is wrong and change nothing.
    let (code, _, err) = lab.ingest_admin(&["withdraw", &id, "--reason", " "]);
    assert_eq!(code, 1);
    assert!(err.contains("--reason"), "{err}");
    let (code, _, err) = lab.ingest_admin(&["withdraw", "no-such-recording", "--reason", "x"]);
    assert_eq!(code, 1);
    assert!(err.contains("--device"), "{err}");
    assert!(srv.exists());

    // Withdrawn with the server down: its storage and index lose the recording at once.
    let (code, out, err) = lab.ingest_admin(&[
        "withdraw",
        &id,
        "--reason",
        "the parents withdrew consent (form 2026-117)",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("withdrew room-e2e/{id}")), "{out}");
    assert!(!srv.exists(), "the server's copy is deleted");
    let notice = lab
        .path("server/room-e2e/.withdrawn")
        .join(format!("{id}.json"));
    let kept = fs::read_to_string(&notice).unwrap();
    assert!(
        !kept.contains("parents"),
        "the reason stays in the audit log: {kept}"
    );

    // The box comes back online: it asks, checks the signed notice, and deletes its copy; it
    // uploads nothing of it again.
    ingest.start();
    wait_until(
        "the box to delete its copy",
        Duration::from_secs(60),
        || !local.exists(),
        &|| d.log_text() + &ingest.log_text(),
    );
    // Logged once the copy is gone, so a moment after.
    wait_until(
        "the box to say why",
        Duration::from_secs(10),
        || {
            d.log_text().contains(
                "recording withdrawn by the department: the server's signed notice checked",
            )
        },
        &|| d.log_text(),
    );
    assert!(!srv.exists(), "nothing of it was uploaded again");

    // An object sent for it anyway (a box that missed the notice) is refused before its body
    // is taken, with the notice signed again now, and nothing of it is kept.
    let (_, sealed) = neoflix_seal::seal(
        &neoflix_seal::ObjectId {
            stream: [7; 16],
            seq: 99,
            kind: neoflix_seal::Kind::Fragment,
        },
        b"late",
    )
    .unwrap();
    let late = lab.path("late.nfx");
    fs::write(&late, &sealed).unwrap();
    let digest = base64::engine::general_purpose::STANDARD
        .encode(<sha2::Sha256 as sha2::Digest>::digest(&sealed));
    let ca = lab.path("ca");
    let (code, body) = curl(
        &lab,
        &ingest,
        Some((&ca.join("room-e2e.crt"), &ca.join("room-e2e.key"))),
        &[
            "-X",
            "PUT",
            "-H",
            &format!("Content-Digest: sha-256=:{digest}:"),
            "--data-binary",
            &format!("@{}", late.display()),
        ],
        &format!("/v1/recordings/{id}/objects/frag-000099.nfx"),
    );
    assert_eq!(code, 410, "{body}");
    let (_, w) = neoflix_format::SignedWithdrawal::from_json(body.as_bytes()).unwrap();
    assert_eq!(
        (w.device_id.as_str(), w.recording_id.as_str()),
        ("room-e2e", id.as_str())
    );
    assert_ne!(
        body.trim(),
        kept.trim(),
        "signed again, not the notice as stored"
    );
    assert!(!srv.exists());

    // The box goes on: its next recording is delivered as before.
    d.wait_ready(Duration::from_secs(60));
    let next = d.ctl(Request::Start {}).recording.unwrap();
    sleep(Duration::from_secs(2));
    assert!(d.ctl(Request::Stop {}).ok);
    wait_until(
        "the next recording delivered",
        Duration::from_secs(60),
        || lab.recordings().is_empty(),
        &|| d.log_text(),
    );
    assert!(
        lab.path("server/room-e2e")
            .join(&next)
            .join("manifest.json")
            .exists()
    );

    // The audit log keeps who, when and why, and its chain holds.
    let (code, out, err) = lab.ingest_admin(&["audit", "--verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("recording-withdrawn"), "{out}");
    let (_, json_out, _) = lab.ingest_admin(&["audit", "--json"]);
    let entries: Value = serde_json::from_str(&json_out).unwrap();
    let w = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "recording-withdrawn")
        .expect("a withdrawal entry");
    assert_eq!(w["recording"], format!("room-e2e/{id}").as_str());
    assert_eq!(w["actor"], "admin");
    let detail: Value = match &w["detail"] {
        Value::String(s) => serde_json::from_str(s).unwrap(),
        v => v.clone(),
    };
    assert_eq!(
        detail["reason"],
        "the parents withdrew consent (form 2026-117)"
    );
    assert_eq!(d.terminate(), 0);
}

/// A crash at the worst moment: `withdraw` is killed (SIGKILL, by strace at the system call)
/// as it unlinks the first sealed object, after every key record went. The objects left are
/// noise without their keys; the server's next start finishes the deletion and the index
/// forgets the recording.
#[test]
fn a_withdrawal_killed_between_key_and_object_deletion_is_finished_at_restart() {
    let lab = Lab::new();
    lab.pki(&["room-e2e"]);
    let db = lab.path("db/neoflix.db");
    let mut ingest = lab.ingest_config_with(
        64 << 20,
        &format!("[database]\npath = \"{}\"\n", db.display()),
    );
    ingest.start();
    lab.config(CAPTURE, 3, &lab.upload_section(&ingest, "room-e2e"));
    let mut d = lab.start();
    let id = lab.record_delivered(&mut d, &ingest, "room-e2e", 2);
    let srv = lab.path("server/room-e2e").join(&id);
    assert_eq!(d.terminate(), 0);
    let names = || -> Vec<String> {
        fs::read_dir(&srv)
            .map(|l| {
                l.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let before = names();
    let keys = before.iter().filter(|n| n.ends_with(".key")).count();
    assert!(keys >= 2 && objects_in(&srv) >= 2, "{before:?}");

    // Killed as it unlinks whichever file that is not a key record comes first.
    let mut strace = std::process::Command::new("strace");
    strace.args([
        "-f",
        "-qq",
        "-o",
        "/dev/null",
        "-e",
        "trace=unlink,unlinkat",
    ]);
    strace.args(["-e", "inject=unlink,unlinkat:signal=SIGKILL"]);
    for n in before.iter().filter(|n| !n.ends_with(".key")) {
        strace.arg("-P").arg(srv.join(n));
    }
    let out = strace
        .arg(neoflix_e2e::bin("neoflix-ingest"))
        .arg("--config")
        .arg(lab.path("ingest.toml"))
        .args(["withdraw", &id, "--reason", "parents withdrew"])
        .output()
        .expect("strace runs (scripts/test installs it)");
    // strace dies of its tracee's signal, as a shell would show it.
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(
        out.status.signal().or(out.status.code().map(|c| c - 128)),
        Some(9),
        "killed by SIGKILL at the first object: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left = names();
    assert_eq!(
        left.iter().filter(|n| n.ends_with(".key")).count(),
        0,
        "every key record went first: {left:?}"
    );
    assert_eq!(
        left.len(),
        before.len() - keys,
        "nothing else went: {left:?}"
    );
    assert!(
        lab.path("server/room-e2e/.withdrawn")
            .join(format!("{id}.json"))
            .exists(),
        "the notice was written before anything was deleted"
    );

    // The next start finishes what the crash left, and the index forgets it.
    ingest.kill9();
    ingest.start();
    wait_until(
        "the interrupted deletion finished",
        Duration::from_secs(30),
        || !srv.exists(),
        &|| ingest.log_text(),
    );
    assert!(
        ingest
            .log_text()
            .contains("a deletion interrupted by a crash was finished"),
        "{}",
        ingest.log_text()
    );
    let (code, out, err) = lab.ingest_admin(&["recordings", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        Value::Array(vec![])
    );
    let (code, out, err) = lab.ingest_admin(&["audit", "--verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.matches("recording-withdrawn").count(), 1, "{out}");
}
