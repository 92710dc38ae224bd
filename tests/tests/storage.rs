//! The recordings disk fails under a running neoflixd: read-only at the trigger, full in the
//! middle of a recording. Nothing is lost when it recovers within the ring's capacity. The
//! recordings directory is a real tmpfs, remounted by the test (root needed, as in CI).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::Duration;

use neoflix_control::{Request, State};
use neoflix_e2e::{Daemon, Lab, ffmpeg_errors, ffprobe};

const CAPTURE: &str =
    "source = \"test\"\nwidth = 320\nheight = 240\nfps = 15\nfragment_secs = 1\nbitrate_kbps = 300";

/// A tmpfs mounted for the length of a test.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "these tests mount a tmpfs: run them as root (CI does)"
        );
        std::fs::create_dir_all(at).unwrap();
        mount(
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ],
            at,
        );
        Tmpfs(at.to_owned())
    }

    fn remount(&self, options: &str) {
        mount(&["-o", &format!("remount,{options}")], &self.0);
    }
}

fn mount(args: &[&str], at: &Path) {
    let st = Command::new("mount").args(args).arg(at).status().unwrap();
    assert!(st.success(), "mount {args:?} {}", at.display());
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `dir` to the last byte with a file of its own; returns it.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 64 << 10];
    while f.write_all(&chunk).is_ok() {}
    let small = [0u8; 512];
    while f.write_all(&small).is_ok() {}
    filler
}

fn storage_fault(d: &mut Daemon) {
    let s = d.wait_for("a storage fault", Duration::from_secs(30), |s| {
        s.state == State::Fault
    });
    assert!(!s.ready);
    assert!(
        s.reason.as_deref().unwrap_or("").starts_with("storage:"),
        "{s:?}"
    );
    assert!(s.recording.is_some(), "the recording is still open: {s:?}");
}

/// Stops, waits for the manifest and checks that the recording covers, without a gap, the
/// pre-roll and everything from the trigger to the stop: `verify` refuses a gap in a stream's
/// sequence numbers, and the test slept `slept_secs` between start and stop.
fn stop_and_check(lab: &Lab, d: &mut Daemon, slept_secs: f64, preroll_secs: f64) {
    assert!(d.ctl(Request::Stop {}).ok);
    d.wait_for("the recording finalized", Duration::from_secs(30), |s| {
        s.recordings_finalized == 1
    });
    let recs = lab.recordings();
    assert_eq!(recs.len(), 1, "{recs:?}");
    let m = neoflix_format::verify(&recs[0])
        .expect("the recording verifies (no gap in its fragments)")
        .manifest;
    assert!(m.preroll_secs >= preroll_secs - 1.0, "{m:?}");
    // At least what the test slept through (a fragment is 1 s; the one being encoded at the
    // stop is not in, nor the one being sealed at the trigger).
    assert!(
        m.duration_secs >= m.preroll_secs + slept_secs - 2.0,
        "{} s of video for {} s of pre-roll and {slept_secs} s slept while recording",
        m.duration_secs,
        m.preroll_secs
    );
    let out = lab.path("out.mp4");
    let e = lab.export(&recs[0], &out);
    assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
    let p = ffprobe(&out);
    assert!(p.duration >= m.duration_secs - 1.0, "{p:?} vs {m:?}");
    assert_eq!(ffmpeg_errors(&out), "");
}

#[test]
fn a_recordings_disk_read_only_at_the_trigger_loses_nothing_once_writable() {
    let lab = Lab::new();
    let disk = Tmpfs::mount(&lab.path("recordings"), "32m");
    lab.config(CAPTURE, 3, "max_duration_secs = 120");
    let mut d = lab.start();
    d.wait_ready(Duration::from_secs(60));
    sleep(Duration::from_secs(4));

    disk.remount("ro");
    let r = d.ctl(Request::Start {});
    assert!(r.ok, "a start is never refused for storage: {r:?}");
    storage_fault(&mut d);
    sleep(Duration::from_secs(3));
    disk.remount("rw");
    d.wait_for("recording again", Duration::from_secs(30), |s| {
        s.state == State::Recording && s.ready
    });
    assert!(d.log_text().contains("storage works again"));
    sleep(Duration::from_secs(2));
    stop_and_check(&lab, &mut d, 5.0, 3.0);
    assert_eq!(d.terminate(), 0);
}

#[test]
fn a_recordings_disk_that_fills_mid_recording_loses_nothing_once_enlarged() {
    let lab = Lab::new();
    let disk = Tmpfs::mount(&lab.path("recordings"), "12m");
    lab.config(CAPTURE, 3, "max_duration_secs = 120");
    let mut d = lab.start();
    d.wait_ready(Duration::from_secs(60));
    sleep(Duration::from_secs(4));
    assert!(d.ctl(Request::Start {}).ok);
    sleep(Duration::from_secs(2));

    // Something else fills the disk to the last byte.
    let filler = fill(&lab.path("recordings"));
    storage_fault(&mut d);
    sleep(Duration::from_secs(4));
    disk.remount("size=64m");
    d.wait_for("recording again", Duration::from_secs(30), |s| {
        s.state == State::Recording && s.ready
    });
    std::fs::remove_file(&filler).unwrap();
    sleep(Duration::from_secs(2));
    stop_and_check(&lab, &mut d, 8.0, 3.0);
    assert_eq!(d.terminate(), 0);
}

/// Issue 15: a full recordings disk at the stop, the server away. Writing the manifest failed
/// and the recording stayed unfinished until a restart. Now its claims and its finalize are
/// retried: once the server is back and takes the older recordings, their space comes back,
/// and the stopped recording is finished, whole, and delivered, without a restart.
#[test]
fn a_recording_stopped_on_a_full_disk_is_finished_and_delivered_once_space_returns() {
    let lab = Lab::new();
    lab.pki(&["room-e2e"]);
    let _disk = Tmpfs::mount(&lab.path("recordings"), "16m");
    let mut ingest = lab.ingest_config(64 << 20);
    lab.config(
        CAPTURE,
        2,
        &format!(
            "max_duration_secs = 120\n{}",
            lab.upload_section(&ingest, "room-e2e")
        ),
    );
    let mut d = lab.start();
    d.wait_ready(Duration::from_secs(60));
    // Two recordings wait on the box for the server.
    for n in 1..=2 {
        assert!(d.ctl(Request::Start {}).ok);
        sleep(Duration::from_secs(3));
        assert!(d.ctl(Request::Stop {}).ok);
        d.wait_for("the recording finalized", Duration::from_secs(30), |s| {
            s.recordings_finalized == n
        });
        d.wait_for("a whole pre-roll", Duration::from_secs(30), |s| {
            s.preroll_secs >= 1.9
        });
    }
    let started = d.ctl(Request::Start {});
    let id = started.recording.clone().unwrap();
    let t0 = std::time::Instant::now();
    sleep(Duration::from_secs(2));
    // Something else fills the disk to the last byte.
    let filler = fill(&lab.path("recordings"));
    storage_fault(&mut d);
    sleep(Duration::from_secs(3));
    assert!(d.ctl(Request::Stop {}).ok);
    let wall = t0.elapsed().as_secs_f64();
    sleep(Duration::from_secs(3));
    let s = d.status();
    assert_eq!(s.recordings_finalized, 2, "the disk is full: {s:?}");
    assert!(
        s.reasons.iter().any(|r| r.contains("No space left")),
        "the status says why: {s:?}"
    );

    // The server comes back: the two older recordings leave, and their space serves the
    // stopped one.
    ingest.start();
    let on_server = lab.path("server/room-e2e").join(&id);
    neoflix_e2e::wait_until(
        "the stopped recording delivered",
        Duration::from_secs(90),
        || lab.recordings().is_empty() && on_server.join("manifest.json").exists(),
        &|| d.log_text() + &ingest.log_text(),
    );
    let m = neoflix_format::verify(&on_server)
        .expect("the recording verifies (no gap in its fragments)")
        .manifest;
    assert_eq!(m.status, neoflix_format::Status::Complete);
    assert!(m.preroll_secs >= 1.0, "{m:?}");
    // What the ring held through the wait is in it: from the trigger to the stop, less the
    // fragment in progress at the trigger.
    assert!(
        m.duration_secs - m.preroll_secs >= wall - 1.5,
        "{} s after the trigger for {wall:.1} s recorded",
        m.duration_secs - m.preroll_secs
    );
    let out = lab.path("out.mp4");
    let e = lab.export(&on_server, &out);
    assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
    assert_eq!(ffmpeg_errors(&out), "");
    assert!(std::fs::exists(&filler).unwrap());
    assert_eq!(d.terminate(), 0);
}

/// Issue 15: a ring directory whose filesystem is smaller than the pre-roll needs. Every
/// fragment after it filled failed to enter the ring, leaving its partial file behind, and the
/// box reported a camera fault pointing at the recordings disk. Now the ring makes room the
/// way its bound does, oldest first; the status names the ring's filesystem; recording works.
#[test]
fn a_ring_filesystem_smaller_than_the_preroll_costs_only_preroll_and_says_so() {
    let lab = Lab::new();
    let _ring = Tmpfs::mount(&lab.path("ring"), "256k");
    lab.config(CAPTURE, 60, "max_duration_secs = 120");
    let mut d = lab.start();
    let s = d.wait_for(
        "the ring's filesystem named in the status",
        Duration::from_secs(60),
        |s| s.reasons.iter().any(|r| r.contains("ring: its filesystem")),
    );
    assert!(!s.ready, "{s:?}");
    // Video keeps coming, so it is no camera fault; the ring holds what fits.
    sleep(Duration::from_secs(5));
    let s = d.status();
    assert!(
        !s.reasons.iter().any(|r| r.contains("camera")),
        "{:?}",
        s.reasons
    );
    assert!(s.preroll_secs >= 1.0, "{s:?}");
    let fragments = std::fs::read_dir(lab.path("ring"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("frag-")
        })
        .count();
    assert!(
        fragments as f64 <= s.preroll_secs + 2.0,
        "{fragments} fragment files for {} s in the ring: a write that failed left its file",
        s.preroll_secs
    );
    let log = d.log_text();
    assert!(log.contains("ring.dir"), "{log}");
    // A recording still gets what the ring held, and everything after.
    let preroll = s.preroll_secs;
    assert!(d.ctl(Request::Start {}).ok);
    sleep(Duration::from_secs(4));
    assert!(d.ctl(Request::Stop {}).ok);
    d.wait_for("the recording finalized", Duration::from_secs(30), |s| {
        s.recordings_finalized == 1
    });
    let recs = lab.recordings();
    let m = neoflix_format::verify(&recs[0]).unwrap().manifest;
    assert!(m.preroll_secs >= preroll - 2.0, "{m:?}");
    assert!(m.duration_secs - m.preroll_secs >= 3.0, "{m:?}");
    assert_eq!(d.terminate(), 0);
}
