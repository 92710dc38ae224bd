//! Retention end to end: real recordings from a real room box on the real neoflix-ingest, its
//! admin commands (`recordings`, `hold`, `purge --now`) and its audit log.

use std::time::{Duration, SystemTime};

use neoflix_e2e::{Lab, wait_until};
use serde_json::Value;

const CAPTURE: &str = "source = \"test\"\nwidth = 320\nheight = 240\nfps = 15\nbitrate_kbps = 300";

fn days_from_now(days: u64) -> String {
    neoflix_format::utc(SystemTime::now() + Duration::from_secs(days * 86_400))
}

fn listed(lab: &Lab) -> Vec<Value> {
    let (code, out, err) = lab.ingest_admin(&["recordings", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn purge_deletes_exactly_the_recordings_past_their_date_and_not_the_held_ones() {
    let lab = Lab::new();
    lab.pki(&["room-e2e"]);
    let db = lab.path("db/neoflix.db");
    let mut ingest = lab.ingest_config_with(
        64 << 20,
        &format!(
            "[database]\npath = \"{}\"\n[retention]\nkeep_days = 30\n",
            db.display()
        ),
    );
    ingest.start();
    lab.config(CAPTURE, 3, &lab.upload_section(&ingest, "room-e2e"));
    let mut d = lab.start();
    let ids: Vec<String> = (0..2)
        .map(|_| lab.record_delivered(&mut d, &ingest, "room-e2e", 2))
        .collect();
    let (old, held) = (&ids[0], &ids[1]);
    wait_until(
        "both recordings indexed as complete",
        Duration::from_secs(20),
        || {
            let l = listed(&lab);
            l.len() == 2 && l.iter().all(|r| r["upload"] == "complete")
        },
        &|| ingest.log_text(),
    );
    for r in listed(&lab) {
        assert_eq!(r["retention"]["verdict"], "keep", "{r}");
    }

    // A legal hold, and the refusals that change nothing.
    let (code, out, err) = lab.ingest_admin(&["hold", held, "--reason", "complaint 2026-7"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = lab.ingest_admin(&["purge", "--now", "next week"]);
    assert_eq!(code, 1);
    assert!(err.contains("RFC 3339"), "{err}");
    let (code, _, err) = lab.ingest_admin(&["withdraw", held, "--reason", "consent withdrawn"]);
    assert_eq!(code, 1, "a held recording is not withdrawn behind the hold");
    assert!(err.contains("legal hold"), "{err}");

    // Before the date: nothing. A dry run after it: names the one due, deletes nothing.
    let (code, out, _) = lab.ingest_admin(&["purge", "--now", &days_from_now(29)]);
    assert_eq!(code, 0);
    assert!(out.contains("0 recordings deleted"), "{out}");
    let (code, out, _) = lab.ingest_admin(&["purge", "--dry-run", "--now", &days_from_now(31)]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("would delete room-e2e/{old}")),
        "{out}"
    );
    assert!(!out.contains(held.as_str()), "{out}");
    assert!(lab.path("server/room-e2e").join(old).exists());

    // After it: exactly the one past its date goes, key records and all; the held one stays.
    let (code, out, err) = lab.ingest_admin(&["purge", "--now", &days_from_now(31)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("deleted room-e2e/{old}")), "{out}");
    assert!(out.contains("1 recording deleted"), "{out}");
    assert!(!lab.path("server/room-e2e").join(old).exists());
    assert!(
        lab.path("server/room-e2e")
            .join(held)
            .join("manifest.json")
            .exists()
    );
    let l = listed(&lab);
    assert_eq!(l.len(), 1, "{l:?}");
    assert_eq!(l[0]["id"], held.as_str());
    assert_eq!(l[0]["hold"], "complaint 2026-7");

    // Released, it goes at the next purge.
    let (code, out, err) = lab.ingest_admin(&["hold", held, "--release"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = lab.ingest_admin(&["purge", "--now", &days_from_now(31)]);
    assert_eq!(code, 0);
    assert!(out.contains(&format!("deleted room-e2e/{held}")), "{out}");
    assert!(listed(&lab).is_empty());

    let (code, out, err) = lab.ingest_admin(&["audit", "--verify"]);
    assert_eq!(code, 0, "{out}{err}");
    for action in ["legal-hold ", "legal-hold-released", "recording-deleted"] {
        assert!(out.contains(action), "{action} missing:\n{out}");
    }
    assert_eq!(out.matches("recording-deleted").count(), 2, "{out}");
    assert_eq!(d.terminate(), 0);
}

#[test]
fn a_retention_the_server_cannot_apply_is_refused_at_start() {
    let lab = Lab::new();
    lab.pki(&["room-e2e"]);
    lab.ingest_config_with(1 << 20, "[retention]\nkeep_days = 0\n");
    let (code, out, err) = lab.ingest_admin(&["--check-config"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!((out + &err).contains("retention.keep_days"));
}
