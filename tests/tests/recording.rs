//! The room box records: real neoflixd on GStreamer's test source, real files, real ffmpeg.

use std::fs;
use std::path::Path;
use std::thread::sleep;
use std::time::Duration;

use neoflix_control::{Request, State};
use neoflix_e2e::{Lab, ffmpeg_errors, ffprobe, plaintext_mark};
use neoflix_store::Status;

const CAPTURE_640: &str = "source = \"test\"\nwidth = 640\nheight = 360\nfps = 30\nfragment_secs = 1\nbitrate_kbps = 1500";
const CAPTURE_320: &str =
    "source = \"test\"\nwidth = 320\nheight = 240\nfps = 15\nfragment_secs = 1\nbitrate_kbps = 300";

fn manifest(dir: &Path) -> neoflix_store::Manifest {
    neoflix_format::verify(dir)
        .expect("recording verifies")
        .manifest
}

#[test]
fn preroll_and_duration_match_what_the_clinician_did() {
    let lab = Lab::new();
    lab.config(CAPTURE_640, 10, "post_roll_secs = 2");
    let mut d = lab.start();
    d.wait_ready(Duration::from_secs(60));
    sleep(Duration::from_secs(15));
    let started = d.ctl(Request::Start {});
    assert!(started.ok, "{started:?}");
    let id = started.recording.expect("start names the recording");
    let start_replied = std::time::Instant::now();
    assert_eq!(d.status().recording.as_deref(), Some(id.as_str()));
    sleep(Duration::from_secs(10));
    assert!(
        d.ctl(Request::Mark {
            label: "intubation".into()
        })
        .ok
    );
    let mark_after = start_replied.elapsed().as_secs_f64();
    sleep(Duration::from_secs(10));
    assert!(d.ctl(Request::Stop {}).ok);
    let recorded = start_replied.elapsed().as_secs_f64();
    d.wait_for(
        "the recording to be finalized",
        Duration::from_secs(20),
        |s| s.recordings_finalized == 1,
    );
    let log = d.log_text();
    assert!(
        !log.contains("intubation"),
        "the label in the box's log: {log}"
    );
    assert_eq!(d.terminate(), 0);

    let recs = lab.recordings();
    assert_eq!(recs.len(), 1);
    let m = manifest(&recs[0]);
    assert_eq!(m.recording_id, id);
    assert_eq!(m.status, Status::Complete);
    assert_eq!(m.stop_reason, "control");
    assert!(
        (m.preroll_secs - 10.0).abs() <= 1.0,
        "pre-roll {} s",
        m.preroll_secs
    );
    assert_eq!(m.markers.len(), 1);
    // The label is sealed to the department: in no file and no log line of the box.
    let sealed = m.markers[0]
        .sealed_label
        .as_deref()
        .expect("a sealed label");
    let dept =
        neoflix_open::DepartmentSecretKey::from_file_text(&fs::read_to_string(lab.key()).unwrap())
            .unwrap();
    assert_eq!(
        neoflix_open::open_label(&dept, &id, &m.markers[0].utc, sealed).unwrap(),
        "intubation"
    );
    assert_eq!(m.markers[0].label, "");
    // The marker came about 10 s into the recording (as the test measured it, which a loaded
    // machine stretches), and the recording began with its pre-roll; the fragment being encoded
    // at the trigger (1 s) is not in the pre-roll yet but its time is.
    let expected = m.preroll_secs + mark_after;
    assert!(
        (m.markers[0].offset_secs - expected).abs() <= 2.0,
        "marker at {} s, expected {expected:.1} s",
        m.markers[0].offset_secs
    );

    let out = lab.path("out.mp4");
    let e = lab.export(&recs[0], &out);
    assert!(
        e.status.success(),
        "export: {}",
        String::from_utf8_lossy(&e.stderr)
    );
    let p = ffprobe(&out);
    // 10 s pre-roll + about 20 s recorded (as the test measured it: an emulated or loaded
    // machine stretches it) + 2 s post-roll, less at most about one fragment. A slow machine
    // (qemu-user in scripts/cross-arm64) may have a few seconds of video still being encoded at
    // the trigger, which arrive after it and are recorded too: more, never less.
    let expected = m.preroll_secs + recorded + 2.0;
    assert!(
        p.duration >= expected - 1.5 && p.duration <= expected + 5.0,
        "duration {} s, expected {expected:.1} (-1.5, +5)",
        p.duration
    );
    assert!(
        p.frames.abs_diff((30.0 * p.duration).round() as u64) <= 30,
        "{} frames in {} s",
        p.frames,
        p.duration
    );

    assert_eq!((p.width, p.height, p.codec.as_str()), (640, 360, "h264"));
    assert_eq!(ffmpeg_errors(&out), "", "ffmpeg reported decode errors");
}

#[test]
fn no_plaintext_on_the_box_and_every_tampering_is_named() {
    let lab = Lab::new();
    lab.config(CAPTURE_320, 3, "");
    let mut d = lab.start();
    // Start before the first fragment: the recording then holds the stream's very first keyframe
    // with x264's SEI text, so the plaintext check below has every mark to look for.
    d.wait_for("the control socket", Duration::from_secs(30), |_| true);
    assert!(d.ctl(Request::Start {}).ok);
    d.wait_for("6 s recorded", Duration::from_secs(60), |s| {
        s.recording_secs.unwrap_or(0.0) >= 6.0
    });
    // While it runs: the ring and the open recording hold no plaintext either.
    let live = lab.daemon_files();
    assert!(
        live.iter().any(|f| f.starts_with(lab.path("ring"))),
        "{live:?}"
    );
    for f in &live {
        if let Ok(bytes) = fs::read(f) {
            assert_eq!(
                plaintext_mark(&bytes),
                None,
                "{} holds plaintext video",
                f.display()
            );
        }
    }
    // SIGTERM finalizes the open recording.
    assert_eq!(d.terminate(), 0);
    let rec = lab.recordings().pop().expect("a recording");
    let m = manifest(&rec);
    assert_eq!(m.status, Status::Complete);
    assert_eq!(m.stop_reason, "shutdown");

    let out = lab.path("clean.mp4");
    let e = lab.export(&rec, &out);
    assert!(
        e.status.success(),
        "export: {}",
        String::from_utf8_lossy(&e.stderr)
    );
    // The detector works: the exported plaintext has every mark...
    let plain = fs::read(&out).unwrap();
    assert!(
        plain.windows(11).any(|w| w == b"x264 - core"),
        "export lacks the x264 SEI"
    );
    assert!(plain.windows(7).any(|w| w == b"ftypiso"));
    assert!(plaintext_mark(&plain).is_some());
    // ...and nothing the daemon wrote has any.
    let files = lab.daemon_files();
    assert!(files.len() > 10, "{files:?}");
    for f in &files {
        let bytes = fs::read(f).unwrap();
        assert_eq!(
            plaintext_mark(&bytes),
            None,
            "{} holds plaintext video",
            f.display()
        );
    }

    let key = lab.key();
    let tampered = |name: &str, damage: &dyn Fn(&Path)| -> (String, String) {
        let copy = lab.path(name);
        fs::create_dir_all(&copy).unwrap();
        for e in fs::read_dir(&rec).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), copy.join(e.file_name())).unwrap();
        }
        damage(&copy);
        let out = lab.path(&format!("{name}.mp4"));
        let e = lab.export(&copy, &out);
        assert!(
            !e.status.success(),
            "{name}: export succeeded on a damaged recording"
        );
        assert!(!out.exists(), "{name}: a partial MP4 was left behind");
        let v = neoflix_e2e::neoflix(&["verify", copy.to_str().unwrap()]);
        let vk = neoflix_e2e::neoflix(&[
            "verify",
            copy.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ]);
        assert!(!vk.status.success(), "{name}: verify --key passed");
        let _ = v;
        (
            String::from_utf8_lossy(&e.stderr).into_owned(),
            String::from_utf8_lossy(&v.stderr).into_owned(),
        )
    };
    let (err, _) = tampered("flipped", &|d| {
        let f = d.join("frag-000003.nfx");
        let mut b = fs::read(&f).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 0x01;
        fs::write(&f, b).unwrap();
    });
    assert!(err.contains("fragment 3 (frag-000003.nfx)"), "{err}");
    let (err, _) = tampered("truncated", &|d| {
        let f = d.join("frag-000002.nfx");
        let b = fs::read(&f).unwrap();
        fs::write(&f, &b[..b.len() - 100]).unwrap();
    });
    assert!(err.contains("fragment 2 (frag-000002.nfx)"), "{err}");
    let (err, _) = tampered("swapped", &|d| {
        let (a, b) = (d.join("frag-000001.nfx"), d.join("frag-000004.nfx"));
        let t = d.join("t");
        fs::rename(&a, &t).unwrap();
        fs::rename(&b, &a).unwrap();
        fs::rename(&t, &b).unwrap();
    });
    assert!(err.contains("fragment 1 (frag-000001.nfx)"), "{err}");
    let (err, verr) = tampered("deleted", &|d| {
        fs::remove_file(d.join("frag-000005.nfx")).unwrap();
    });
    assert!(
        err.contains("fragment 5 (frag-000005.nfx)") && err.contains("missing"),
        "{err}"
    );
    assert!(
        verr.contains("fragment 5 (frag-000005.nfx)"),
        "verify without key: {verr}"
    );
    // Deleting a fragment and hiding it in the manifest: the signature over the manifest
    // catches it, without any key (the hash chain does on an unsigned recording:
    // crates/store/tests/verify.rs).
    let (err, verr) = tampered("hidden", &|d| {
        let p = d.join("manifest.json");
        let mut m: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        let frags = m["fragments"].as_array_mut().unwrap();
        frags.remove(5);
        for (i, f) in frags.iter_mut().enumerate() {
            f["index"] = i.into();
        }
        fs::write(&p, serde_json::to_vec(&m).unwrap()).unwrap();
        fs::remove_file(d.join("frag-000005.nfx")).unwrap();
    });
    assert!(err.contains("changed after it was signed"), "{err}");
    assert!(verr.contains("changed after it was signed"), "{verr}");
    // A key record copied onto another fragment, with the manifest and its chain rewritten to
    // match: the signature names the edited manifest (and on an unsigned recording each key
    // record carries its object's header, so verify without a key names it: see
    // a_rekeyed_fragment_of_an_unsigned_recording_is_named_without_a_key).
    let (err, verr) = tampered("rekeyed", &|d| {
        fs::copy(d.join("frag-000000.key"), d.join("frag-000001.key")).unwrap();
        let p = d.join("manifest.json");
        let mut m: neoflix_store::Manifest =
            serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        m.fragments[1].key_sha256 = m.fragments[0].key_sha256.clone();
        m.chain = neoflix_format::manifest::chain(&m.recording_id, &m.init_segments, &m.fragments);
        fs::write(&p, serde_json::to_vec(&m).unwrap()).unwrap();
    });
    for err in [err, verr] {
        assert!(err.contains("changed after it was signed"), "{err}");
    }
}

#[test]
fn kill_9_mid_recording_loses_at_most_the_fragment_being_written() {
    let lab = Lab::new();
    lab.config(CAPTURE_320, 3, "");
    let mut d = lab.start();
    d.wait_ready(Duration::from_secs(60));
    sleep(Duration::from_secs(4));
    // Evicted fragments are gone from disk: the ring holds 3 s of 1 s fragments and the newest
    // one (a start counts its pre-roll back from the last the recorder saw), plus one being
    // sealed and the init segment.
    let ring_files: Vec<_> = fs::read_dir(lab.path("ring"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(ring_files.len() <= 6, "{ring_files:?}");

    assert!(d.ctl(Request::Start {}).ok);
    let s = d.wait_for("5 s recorded", Duration::from_secs(60), |s| {
        s.recording_secs.unwrap_or(0.0) >= 5.0
    });
    let claimed = (s.recording_secs.unwrap() as usize).max(1);
    d.kill9();

    // What the crash left in the ring is sealed noise: no key for it exists anywhere on disk.
    let leftovers: Vec<Vec<u8>> = fs::read_dir(lab.path("ring"))
        .unwrap()
        .map(|e| fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(!leftovers.is_empty());
    assert!(
        lab.daemon_files()
            .iter()
            .all(|f| !f.starts_with(lab.path("ring")) || f.extension().is_some_and(|e| e == "nfx"))
    );

    let mut d = lab.start();
    d.wait_for("the control socket", Duration::from_secs(30), |_| true);
    for f in fs::read_dir(lab.path("ring")).unwrap() {
        let bytes = fs::read(f.unwrap().path()).unwrap_or_default();
        assert!(
            !leftovers.contains(&bytes),
            "pre-roll of the killed run survived the restart"
        );
    }
    let rec = lab.recordings().pop().expect("the interrupted recording");
    let m = manifest(&rec);
    assert_eq!(m.status, Status::Interrupted);
    assert_eq!(m.stop_reason, "interrupted");
    assert!(
        m.fragments.len() >= claimed,
        "{} fragments recovered, {claimed} were claimed before the kill",
        m.fragments.len()
    );
    let out = lab.path("interrupted.mp4");
    let e = lab.export(&rec, &out);
    assert!(
        e.status.success(),
        "export: {}",
        String::from_utf8_lossy(&e.stderr)
    );
    assert!(String::from_utf8_lossy(&e.stderr).contains("INTERRUPTED"));
    let p = ffprobe(&out);
    assert!(
        (p.duration - m.fragments.len() as f64).abs() <= 1.0,
        "{} s for {} fragments",
        p.duration,
        m.fragments.len()
    );
    assert_eq!(ffmpeg_errors(&out), "");
    assert_eq!(d.terminate(), 0);
}

#[test]
fn control_requests_that_make_no_sense_are_refused_with_a_reason() {
    let lab = Lab::new();
    lab.config(CAPTURE_320, 2, "");
    let mut d = lab.start();
    d.wait_ready(Duration::from_secs(60));
    let r = d.ctl(Request::Stop {});
    assert!(!r.ok);
    assert_eq!(r.error.as_deref(), Some("not recording"));
    assert!(d.ctl(Request::Privacy { on: true }).ok);
    let s = d.status();
    assert_eq!((s.state, s.ready), (State::Privacy, false));
    let r = d.ctl(Request::Start {});
    assert!(r.error.unwrap().contains("privacy"));
    sleep(Duration::from_secs(2));
    assert!(
        fs::read_dir(lab.path("ring")).unwrap().next().is_none(),
        "privacy mode keeps nothing"
    );
    assert!(d.ctl(Request::Privacy { on: false }).ok);
    d.wait_ready(Duration::from_secs(60));
    // Garbage on the socket gets an error line, and the daemon lives on.
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    use std::io::{BufRead, Write};
    s.write_all(b"{\"cmd\":\"explode\"}\n").unwrap();
    let mut line = String::new();
    std::io::BufReader::new(&s).read_line(&mut line).unwrap();
    assert!(
        line.contains("\"ok\":false") && line.contains("not a control request"),
        "{line}"
    );
    assert!(d.status().ready);
    assert_eq!(d.terminate(), 0);
}

/// The short version of the first test, light enough for an emulated CPU: `scripts/cross-arm64`
/// runs it with the arm64 binaries under qemu-user.
#[test]
fn a_short_recording_has_its_preroll_and_plays() {
    let lab = Lab::new();
    lab.config(
        "source = \"test\"\nwidth = 320\nheight = 180\nfps = 15\nbitrate_kbps = 300\nx264_preset = \"ultrafast\"",
        3,
        "",
    );
    let mut d = lab.start();
    d.wait_ready(Duration::from_secs(120));
    let started = d.ctl(Request::Start {});
    assert!(started.ok, "{started:?}");
    // Marked mid-way: a marker after the last frame (at the stop) is no chapter of the file.
    sleep(Duration::from_secs(2));
    assert!(
        d.ctl(Request::Mark {
            label: "arm".into()
        })
        .ok
    );
    sleep(Duration::from_secs(2));
    assert!(d.ctl(Request::Stop {}).ok);
    d.wait_for(
        "the recording to be finalized",
        Duration::from_secs(30),
        |s| s.recordings_finalized == 1,
    );
    assert_eq!(d.terminate(), 0);
    let recs = lab.recordings();
    let m = manifest(&recs[0]);
    assert!(
        (m.preroll_secs - 3.0).abs() <= 1.0,
        "pre-roll {} s",
        m.preroll_secs
    );
    assert_eq!(m.markers.len(), 1);
    let out = lab.path("short.mp4");
    let e = lab.export(&recs[0], &out);
    assert!(
        e.status.success(),
        "export: {}",
        String::from_utf8_lossy(&e.stderr)
    );
    let p = ffprobe(&out);
    assert!((p.duration - 7.0).abs() <= 1.5, "duration {} s", p.duration);
    assert_eq!((p.width, p.height, p.codec.as_str()), (320, 180, "h264"));
    assert_eq!(ffmpeg_errors(&out), "", "ffmpeg reported decode errors");

    // Issue 10: a progressive file (moov first, so that browsers show the duration and seek),
    // as long as the manifest says within one fragment, the marker a chapter, also as WebVTT.
    assert_eq!(top_level_boxes(&out), ["ftyp", "moov", "mdat"]);
    assert!(
        (p.duration - m.duration_secs).abs() <= 1.05,
        "duration {} s, manifest {} s",
        p.duration,
        m.duration_secs
    );
    let chapters = ffprobe_chapters(&out);
    let arm = chapters
        .iter()
        .find(|(_, title)| title == "arm")
        .unwrap_or_else(|| panic!("no chapter 'arm' in {chapters:?}; markers {:?}", m.markers));
    assert!(
        (arm.0 - m.markers[0].offset_secs).abs() < 0.01,
        "chapter at {} s, marker at {} s",
        arm.0,
        m.markers[0].offset_secs
    );
    let vtt_path = lab.path("short.chapters.vtt");
    let stdout = String::from_utf8_lossy(&e.stdout);
    assert!(stdout.contains(vtt_path.to_str().unwrap()), "{stdout}");
    let vtt = fs::read_to_string(&vtt_path).unwrap();
    let cues = webvtt_cues(&vtt);
    assert!(
        cues.iter().any(|(start, end, title)| title == "arm"
            && (start - m.markers[0].offset_secs).abs() < 0.01
            && (end - p.duration).abs() < 0.01),
        "{vtt}"
    );

    // A range: from the keyframe at or before --from (one a second here) to --to.
    let clip = lab.path("clip.mp4");
    let mut args: Vec<String> = [
        "export",
        recs[0].to_str().unwrap(),
        "--key",
        lab.key().to_str().unwrap(),
        "-o",
        clip.to_str().unwrap(),
        "--from",
        "2.5",
        "--to",
        "5",
    ]
    .map(String::from)
    .to_vec();
    args.extend(lab.custody_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let e = neoflix_e2e::neoflix(&args);
    assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
    let c = ffprobe(&clip);
    assert!(
        c.duration >= 2.5 - 0.1 && c.duration <= 3.5 + 0.1,
        "clip of {} s, expected 2.5 s plus up to one keyframe interval",
        c.duration
    );
    assert_eq!(top_level_boxes(&clip), ["ftyp", "moov", "mdat"]);
    assert_eq!(ffmpeg_errors(&clip), "", "ffmpeg reported decode errors");
}

/// The types of a file's top-level boxes, in order.
fn top_level_boxes(file: &Path) -> Vec<String> {
    let b = fs::read(file).unwrap();
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos + 8 <= b.len() {
        let size = u32::from_be_bytes(b[pos..pos + 4].try_into().unwrap()) as u64;
        let size = match size {
            1 => u64::from_be_bytes(b[pos + 8..pos + 16].try_into().unwrap()),
            0 => (b.len() - pos) as u64,
            s => s,
        };
        out.push(String::from_utf8_lossy(&b[pos + 4..pos + 8]).into_owned());
        assert!(size >= 8, "box of size {size}");
        pos += size as usize;
    }
    assert_eq!(pos, b.len(), "the boxes end with the file");
    out
}

/// `ffprobe -show_chapters`: (start in seconds, title) of each chapter.
fn ffprobe_chapters(file: &Path) -> Vec<(f64, String)> {
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-print_format", "json", "-show_chapters"])
        .arg(file)
        .output()
        .expect("ffprobe is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["chapters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["start_time"].as_str().unwrap().parse().unwrap(),
                c["tags"]["title"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Parses a WebVTT chapter file strictly enough to fail on a broken one: the header, then
/// cues of an optional identifier, `HH:MM:SS.mmm --> HH:MM:SS.mmm` and one line of text.
fn webvtt_cues(vtt: &str) -> Vec<(f64, f64, String)> {
    let mut blocks = vtt.split("\n\n");
    assert_eq!(blocks.next().map(str::trim_end), Some("WEBVTT"), "{vtt}");
    let time = |t: &str| -> f64 {
        let p: Vec<&str> = t.split(':').collect();
        assert_eq!(p.len(), 3, "time {t}");
        let (s, ms) = p[2].split_once('.').expect("milliseconds");
        assert_eq!(
            (p[0].len(), p[1].len(), s.len(), ms.len()),
            (2, 2, 2, 3),
            "time {t}"
        );
        p[0].parse::<f64>().unwrap() * 3600.0
            + p[1].parse::<f64>().unwrap() * 60.0
            + s.parse::<f64>().unwrap()
            + ms.parse::<f64>().unwrap() / 1000.0
    };
    blocks
        .filter(|b| !b.trim().is_empty())
        .map(|b| {
            let lines: Vec<&str> = b.lines().collect();
            assert_eq!(lines.len(), 3, "cue {b:?}");
            let (start, end) = lines[1].split_once(" --> ").expect("timing line");
            let (start, end) = (time(start), time(end));
            assert!(start <= end, "cue {b:?}");
            (start, end, lines[2].to_string())
        })
        .collect()
}

// ---- Opening hostile recordings (issue 8, items 4-6) ----------------------------------------

/// Records about six seconds (SIGTERM finalizes it) and returns the recording directory.
fn short_recording(lab: &Lab) -> std::path::PathBuf {
    lab.config(CAPTURE_320, 3, "");
    let mut d = lab.start();
    d.wait_for("the control socket", Duration::from_secs(30), |_| true);
    assert!(d.ctl(Request::Start {}).ok);
    d.wait_for("6 s recorded", Duration::from_secs(60), |s| {
        s.recording_secs.unwrap_or(0.0) >= 6.0
    });
    assert_eq!(d.terminate(), 0);
    let rec = lab.recordings().pop().expect("a recording");
    assert!(manifest(&rec).fragments.len() >= 6);
    rec
}

/// A copy of the recording `rec`, to damage.
fn copy_recording(lab: &Lab, rec: &Path, name: &str) -> std::path::PathBuf {
    let copy = lab.path(name);
    fs::create_dir_all(&copy).unwrap();
    for e in fs::read_dir(rec).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    copy
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Edits `dir/manifest.json` and recomputes its hash chain the way someone who read
/// `docs/sealed-format.md` would (independently of the store crate): what a forger can do.
fn forge_manifest(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    use sha2::{Digest, Sha256};
    let p = dir.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
    edit(&mut m);
    let mut h: [u8; 32] = Sha256::new()
        .chain_update(b"neoflix-chain-v1\0")
        .chain_update(m["recording_id"].as_str().unwrap().as_bytes())
        .finalize()
        .into();
    for (kind, list) in [(b'I', "init_segments"), (b'F', "fragments")] {
        for o in m[list].as_array().unwrap() {
            h = Sha256::new()
                .chain_update(h)
                .chain_update([kind])
                .chain_update(o["index"].as_u64().unwrap().to_be_bytes())
                .chain_update(o["sha256"].as_str().unwrap().as_bytes())
                .chain_update(o["key_sha256"].as_str().unwrap().as_bytes())
                .finalize()
                .into();
        }
    }
    m["chain"] = h
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .into();
    fs::write(&p, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

/// Replaces object `file` (and its key record) in `dir`, and forges the manifest to match.
fn replace_object(dir: &Path, list: &str, index: usize, object: &[u8], record: &[u8]) {
    let entry = |m: &serde_json::Value, f: &str| m[list][index][f].as_str().unwrap().to_string();
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    fs::write(dir.join(entry(&m, "file")), object).unwrap();
    fs::write(dir.join(entry(&m, "key_file")), record).unwrap();
    forge_manifest(dir, |m| {
        let e = &mut m[list][index];
        e["size"] = (object.len() as u64).into();
        e["sha256"] = sha256_hex(object).into();
        e["key_sha256"] = sha256_hex(record).into();
    });
}

/// `neoflix verify` without and with the key, and `neoflix export`, on `dir`: (exit code,
/// stdout + stderr) of each. An export that fails must leave no file behind.
fn open_all_ways(lab: &Lab, dir: &Path) -> [(i32, String); 3] {
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let d = dir.to_str().unwrap();
    let policy = lab.custody_args();
    let with = |args: &[&str]| {
        let mut a: Vec<&str> = args.to_vec();
        a.extend(policy.iter().map(String::as_str));
        neoflix_e2e::neoflix(&a)
    };
    let v = with(&["verify", d]);
    let vk = with(&["verify", d, "--key", lab.key().to_str().unwrap()]);
    let out = lab.path(&format!(
        "{}.mp4",
        dir.file_name().unwrap().to_string_lossy()
    ));
    let e = lab.export(dir, &out);
    if !e.status.success() {
        assert!(!out.exists(), "a failed export left {}", out.display());
    }
    [&v, &vk, &e].map(|o| (o.status.code().unwrap_or(-1), text(o)))
}

/// Issue 8, item 4: a header announcing 0xfff000fff00100b8 bytes of plaintext in a 272-byte
/// object made the size arithmetic wrap to exactly 272; with a key record wrapped to the
/// department's *public* key (anyone can make one: HPKE base mode does not authenticate the
/// sender), opening reached an allocation of that size and the program aborted (exit 101).
#[test]
fn a_header_whose_length_wraps_is_a_named_error_not_an_abort() {
    use hpke::{Deserializable, OpModeS, Serializable};
    type Kem = hpke::kem::X25519HkdfSha256;
    // Forged manifests: the checks below the signature, on an unsigned recording.
    let lab = Lab::new().unsigned();
    let rec = short_recording(&lab);
    let copy = copy_recording(&lab, &rec, "wrapped-length");

    let genuine = fs::read(copy.join("frag-000002.nfx")).unwrap();
    let mut header = genuine[..56].to_vec();
    header[32..40].copy_from_slice(&0xfff0_00ff_f001_00b8u64.to_be_bytes());
    let mut object = header.clone();
    object.resize(272, 0xa5);
    let public = neoflix_seal::DepartmentPublicKey::from_file_text(
        &fs::read_to_string(lab.path("keys/department.pub")).unwrap(),
    )
    .unwrap();
    let public = <Kem as hpke::Kem>::PublicKey::from_bytes(&public.to_bytes()).unwrap();
    let (enc, ct) = hpke::single_shot_seal::<hpke::aead::AesGcm256, hpke::kdf::HkdfSha256, Kem>(
        &OpModeS::Base,
        &public,
        b"neoflix key wrap v1",
        &[7u8; 32],
        &header,
    )
    .unwrap();
    let mut record = b"NFXK\x01\0\0\0".to_vec();
    record.extend_from_slice(&header);
    record.extend_from_slice(&enc.to_bytes());
    record.extend_from_slice(&ct);
    assert_eq!(record.len(), 144);
    replace_object(&copy, "fragments", 2, &object, &record);

    let wrong: Vec<String> = ["verify", "verify --key", "export"]
        .into_iter()
        .zip(open_all_ways(&lab, &copy))
        .filter(|(_, (code, text))| {
            *code != 1
                || !(text.contains("fragment 2 (frag-000002.nfx)") && text.contains("plaintext"))
        })
        .map(|(what, (code, text))| format!("{what}: exit code {code}: {text}"))
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Issue 8, item 5: a fragment removed from the middle, the manifest's list renumbered and its
/// chain recomputed (sha2 here, from the format's description): verify said OK, even with the
/// key, and export wrote an MP4 with a hole.
#[test]
fn a_fragment_removed_from_the_middle_is_named_even_with_the_chain_recomputed() {
    // Forged manifests: the checks below the signature, on an unsigned recording.
    let lab = Lab::new().unsigned();
    let rec = short_recording(&lab);
    let copy = copy_recording(&lab, &rec, "hidden-gap");
    let header = |name: &str| {
        let b = fs::read(copy.join(name)).unwrap();
        u64::from_be_bytes(b[24..32].try_into().unwrap())
    };
    let (before, gone, after) = (
        header("frag-000002.nfx"),
        header("frag-000003.nfx"),
        header("frag-000004.nfx"),
    );
    assert_eq!(
        (before + 1, gone + 1),
        (gone, after),
        "the box numbers fragments in a row"
    );
    fs::remove_file(copy.join("frag-000003.nfx")).unwrap();
    fs::remove_file(copy.join("frag-000003.key")).unwrap();
    forge_manifest(&copy, |m| {
        let frags = m["fragments"].as_array_mut().unwrap();
        frags.remove(3);
        for (i, f) in frags.iter_mut().enumerate() {
            f["index"] = i.into();
        }
    });
    let named = format!("fragment {gone} missing between {before} and {after}");
    let wrong: Vec<String> = ["verify", "verify --key", "export"]
        .into_iter()
        .zip(open_all_ways(&lab, &copy))
        .filter(|(_, (code, text))| {
            *code != 1 || !(text.contains(&named) && text.contains("fragment 3 (frag-000004.nfx)"))
        })
        .map(|(what, (code, text))| format!("{what}: exit code {code}: {text}"))
        .collect();
    assert!(wrong.is_empty(), "expected '{named}' from each: {wrong:#?}");
    // Where the box itself lost fragments, a reviewer who knows it can have the rest, the gap
    // named again.
    let out = lab.path("with-hole.mp4");
    let e = neoflix_e2e::neoflix(&[
        "export",
        copy.to_str().unwrap(),
        "--key",
        lab.key().to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--allow-gaps",
        "--allow-unsigned",
    ]);
    let stderr = String::from_utf8_lossy(&e.stderr);
    assert!(e.status.success() && stderr.contains(&named), "{stderr}");
    assert!(ffprobe(&out).duration > 4.0);
    assert_eq!(ffmpeg_errors(&out), "", "ffmpeg reported decode errors");
    // The recording it was cut from still opens.
    assert_eq!(open_all_ways(&lab, &rec).map(|(code, _)| code), [0, 0, 0]);
}

/// Runs `neoflix args` with its address space capped at 1 GiB and its time at 30 s: what a
/// reader that follows a symlink to /dev/zero, or waits on a FIFO, does within those bounds.
/// Returns the exit code (`None`: killed by a signal, or by us when it hung) and its output.
fn neoflix_capped(args: &[&str]) -> (Option<i32>, String) {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let mut cmd = neoflix_e2e::command("neoflix");
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: only async-signal-safe setrlimit between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 1 << 30,
                rlim_max: 1 << 30,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("neoflix runs");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        sleep(Duration::from_millis(50));
    };
    let mut text = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    match status {
        None => (None, format!("hung for 30 s: {text}")),
        Some(s) => (s.code(), text),
    }
}

/// Issue 8, item 6: verify followed an object symlinked to /dev/zero until memory ran out, and
/// waited for ever on a FIFO. Only regular files are read, their size checked first.
#[test]
fn verify_and_export_read_only_regular_files() {
    // Forged manifests: the checks below the signature, on an unsigned recording.
    let lab = Lab::new().unsigned();
    let rec = short_recording(&lab);
    let key = lab.key();
    let mut wrong = Vec::new();
    let mut expect = |name: &str, damage: &dyn Fn(&Path), named: &str| {
        let copy = copy_recording(&lab, &rec, name);
        damage(&copy);
        let d = copy.to_str().unwrap();
        let out = lab.path(&format!("{name}.mp4"));
        for args in [
            vec!["verify", d, "--allow-unsigned"],
            vec![
                "verify",
                d,
                "--allow-unsigned",
                "--key",
                key.to_str().unwrap(),
            ],
            vec![
                "export",
                d,
                "--allow-unsigned",
                "--key",
                key.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
            ],
        ] {
            let (code, text) = neoflix_capped(&args);
            if code != Some(1) || !text.contains(named) || !text.contains("regular file") {
                wrong.push(format!("{name}: {} {:?}: {text}", args[0], code));
            }
        }
        if out.exists() {
            wrong.push(format!("{name}: export wrote {}", out.display()));
        }
    };
    let replace = |d: &Path, file: &str, with: &dyn Fn(&Path)| {
        let p = d.join(file);
        fs::remove_file(&p).unwrap();
        with(&p);
    };
    let fifo = |p: &Path| {
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    };
    expect(
        "zero-object",
        &|d| {
            replace(d, "frag-000002.nfx", &|p| {
                std::os::unix::fs::symlink("/dev/zero", p).unwrap()
            })
        },
        "fragment 2 (frag-000002.nfx)",
    );
    expect(
        "fifo-object",
        &|d| replace(d, "frag-000001.nfx", &fifo),
        "fragment 1 (frag-000001.nfx)",
    );
    expect(
        "fifo-key",
        &|d| replace(d, "frag-000001.key", &fifo),
        "fragment 1 (frag-000001.nfx)",
    );
    expect(
        "fifo-manifest",
        &|d| replace(d, "manifest.json", &fifo),
        "manifest.json",
    );
    expect(
        "zero-manifest",
        &|d| {
            replace(d, "manifest.json", &|p| {
                std::os::unix::fs::symlink("/dev/zero", p).unwrap()
            })
        },
        "manifest.json",
    );
    // A symlink to the very same bytes elsewhere is refused too: a recording is its directory.
    expect(
        "linked-object",
        &|d| {
            let elsewhere = lab.path("elsewhere.nfx");
            fs::copy(d.join("frag-000000.nfx"), &elsewhere).unwrap();
            replace(d, "frag-000000.nfx", &|p| {
                std::os::unix::fs::symlink(&elsewhere, p).unwrap()
            })
        },
        "fragment 0 (frag-000000.nfx)",
    );
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Issue 8, item 6: verify printed ids from the manifest raw, terminal escape sequences included.
#[test]
fn ids_and_names_from_the_manifest_are_printed_escaped() {
    // Forged manifests: the checks below the signature, on an unsigned recording.
    let lab = Lab::new().unsigned();
    let rec = short_recording(&lab);
    // Sets the terminal's title, then clears the screen.
    let hostile = "rec\u{1b}]0;owned\u{7}\u{1b}[2J";
    let copy = copy_recording(&lab, &rec, "escaped-id");
    forge_manifest(&copy, |m| m["recording_id"] = hostile.into());
    let copy2 = copy_recording(&lab, &rec, "escaped-name");
    forge_manifest(&copy2, |m| {
        m["fragments"][1]["file"] = "frag\u{1b}[2J.nfx".into();
    });
    let raw = |t: &str| t.chars().any(|c| c.is_control() && c != '\n');
    let mut wrong = Vec::new();
    for (what, (code, text)) in ["verify", "verify --key", "export"]
        .into_iter()
        .zip(open_all_ways(&lab, &copy))
    {
        if code != 0 || raw(&text) || !text.contains(r"rec\u{1b}]0;owned\u{7}\u{1b}[2J") {
            wrong.push(format!("{what} ({code}): {text:?}"));
        }
    }
    for (what, (code, text)) in ["verify", "verify --key", "export"]
        .into_iter()
        .zip(open_all_ways(&lab, &copy2))
    {
        if code != 1 || raw(&text) || !text.contains(r"frag\u{1b}[2J.nfx") {
            wrong.push(format!("{what} ({code}): {text:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Issue 8, item 6: exported MP4s (plaintext video) were created with the umask's mode, often
/// readable by everyone; an existing file's wider mode must not survive either.
#[test]
fn exported_mp4s_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let lab = Lab::new();
    let rec = short_recording(&lab);
    let fresh = lab.path("fresh.mp4");
    let existing = lab.path("existing.mp4");
    fs::write(&existing, b"an older export").unwrap();
    fs::set_permissions(&existing, fs::Permissions::from_mode(0o644)).unwrap();
    for out in [&fresh, &existing] {
        let e = lab.export(&rec, out);
        assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
        let mode = fs::metadata(out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} has mode {mode:o}", out.display());
        assert!(ffprobe(out).duration > 5.0);
    }
}

/// Changes one character of `dir/manifest.json` in place: the bytes a signature covers.
fn edit_manifest_byte(dir: &Path, after: &str) {
    let p = dir.join("manifest.json");
    let mut text = fs::read_to_string(&p).unwrap();
    let at = text.find(after).expect("field in manifest") + after.len();
    let c = text.as_bytes()[at];
    let new = if c == b'0' { '1' } else { '0' };
    text.replace_range(at..at + 1, &new.to_string());
    fs::write(&p, text).unwrap();
}

/// Signs `dir/manifest.json` with `name`'s certificate and key from the CA in `ca_dir`.
fn resign(dir: &Path, ca_dir: &Path, name: &str) {
    let id = neoflix_format::SigningIdentity::from_pem(
        &fs::read(ca_dir.join(format!("{name}.crt"))).unwrap(),
        &fs::read(ca_dir.join(format!("{name}.key"))).unwrap(),
    )
    .unwrap();
    let sig = id
        .sign(
            neoflix_format::custody::Purpose::Manifest,
            &fs::read(dir.join("manifest.json")).unwrap(),
            std::time::SystemTime::now(),
        )
        .unwrap();
    fs::write(dir.join("manifest.sig"), sig.to_json()).unwrap();
}

/// Issue 9: anyone with `department.pub` could replace a fragment with one sealed by
/// themselves, recompute the chain, and verify said every chunk authenticated; marker labels,
/// trigger and times could be edited freely. Now the room box signs the manifest: verify,
/// verify --key and export name the signer, and name every forgery.
#[test]
fn a_signed_recording_names_its_signer_and_every_forgery_is_named() {
    let lab = Lab::new();
    let rec = short_recording(&lab);
    let all = |dir: &Path, expect_code: i32, named: &str| -> Vec<String> {
        ["verify", "verify --key", "export"]
            .into_iter()
            .zip(open_all_ways(&lab, dir))
            .filter(|(_, (code, text))| *code != expect_code || !text.contains(named))
            .map(|(what, (code, text))| format!("{what}: exit code {code}: {text}"))
            .collect()
    };
    let mut wrong = all(&rec, 0, "signed by room-e2e");
    wrong.extend(all(&rec, 0, "checked against the department CA"));

    // One digit of the trigger time.
    let edited = copy_recording(&lab, &rec, "edited-time");
    edit_manifest_byte(&edited, "\"trigger_utc\": \"2");
    wrong.extend(all(&edited, 1, "manifest was changed after it was signed"));

    // A fragment replaced by one sealed correctly to the department's public key, under the
    // same object id, the manifest's digests and chain recomputed to match.
    let replaced = copy_recording(&lab, &rec, "replaced");
    let genuine = fs::read(replaced.join("frag-000002.nfx")).unwrap();
    let header = neoflix_format::parse_header(&genuine).unwrap();
    let (key, forged) = neoflix_seal::seal(&header.id, b"moof of someone else's video").unwrap();
    let department = neoflix_seal::DepartmentPublicKey::from_file_text(
        &fs::read_to_string(lab.path("keys/department.pub")).unwrap(),
    )
    .unwrap();
    let record = key.wrap(&department, &forged).unwrap();
    replace_object(&replaced, "fragments", 2, &forged, record.as_bytes());
    wrong.extend(all(
        &replaced,
        1,
        "manifest was changed after it was signed",
    ));

    // The forgery signed by another room's genuine certificate.
    let ca_dir = lab.pki(&["room-2"]);
    resign(&replaced, &ca_dir, "room-2");
    wrong.extend(all(
        &replaced,
        1,
        "signed by room-2, but the manifest is from room-e2e",
    ));

    // Signed by a "room-e2e" certificate from a CA of the forger's own.
    let rogue = lab.path("rogue-ca");
    let ca = neoflix_pki::Ca::init(&rogue, "Rogue CA").unwrap();
    ca.issue("room-e2e", neoflix_pki::Role::Device, None)
        .unwrap();
    resign(&replaced, &rogue, "room-e2e");
    wrong.extend(all(&replaced, 1, "is not trusted"));

    // The signature removed: refused unless the reviewer allows unsigned recordings, and then
    // reported as unsigned.
    let stripped = copy_recording(&lab, &rec, "stripped");
    fs::remove_file(stripped.join("manifest.sig")).unwrap();
    wrong.extend(all(&stripped, 1, "not signed"));
    let out = lab.path("stripped-allowed.mp4");
    let e = neoflix_e2e::neoflix(&[
        "export",
        stripped.to_str().unwrap(),
        "--key",
        lab.key().to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--allow-unsigned",
    ]);
    let stderr = String::from_utf8_lossy(&e.stderr);
    if !e.status.success() || !stderr.contains("UNSIGNED") {
        wrong.push(format!("export --allow-unsigned: {stderr}"));
    }
    // Export without --ca says what it needs.
    let e = neoflix_e2e::neoflix(&[
        "export",
        rec.to_str().unwrap(),
        "--key",
        lab.key().to_str().unwrap(),
        "-o",
        lab.path("no-ca.mp4").to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&e.stderr);
    if e.status.code() != Some(1) || !stderr.contains("give --ca") {
        wrong.push(format!("export without --ca: {stderr}"));
    }
    // The box's certificate revoked (its key stolen, say): with the CRL, its signature is no
    // longer trusted.
    let ca = lab.path("ca");
    let r = neoflix_e2e::neoflix(&["pki", "revoke", "--dir", ca.to_str().unwrap(), "room-e2e"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let v = neoflix_e2e::neoflix(&[
        "verify",
        rec.to_str().unwrap(),
        "--ca",
        lab.ca().to_str().unwrap(),
        "--crl",
        ca.join("ca.crl").to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&v.stderr);
    if v.status.code() != Some(1) || !stderr.contains("is not trusted") {
        wrong.push(format!("verify --crl after revocation: {stderr}"));
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Issue 9: a box without a signing identity records, and says in its status that its
/// recordings are unsigned; one with an identity names it.
#[test]
fn the_status_names_the_signer_or_says_recordings_are_unsigned() {
    for (lab, signer) in [
        (Lab::new().unsigned(), None),
        (Lab::new(), Some("room-e2e".to_string())),
    ] {
        lab.config(CAPTURE_320, 2, "");
        let mut d = lab.start();
        let st = d.wait_for("the control socket", Duration::from_secs(30), |_| true);
        assert_eq!(st.signer, signer);
        let log = d.log_text();
        assert_eq!(
            log.contains("recordings are unsigned"),
            signer.is_none(),
            "{log}"
        );
        assert_eq!(d.terminate(), 0);
    }
}

/// Below the signature, on an unsigned recording: a key record copied onto another fragment,
/// with the manifest and its chain rewritten to match: the files check out, but each key record
/// carries its object's header (and HPKE binds the key to it), so even verify without a key
/// names it.
#[test]
fn a_rekeyed_fragment_of_an_unsigned_recording_is_named_without_a_key() {
    let lab = Lab::new().unsigned();
    let rec = short_recording(&lab);
    let copy = copy_recording(&lab, &rec, "rekeyed");
    fs::copy(copy.join("frag-000000.key"), copy.join("frag-000001.key")).unwrap();
    forge_manifest(&copy, |m| {
        m["fragments"][1]["key_sha256"] = m["fragments"][0]["key_sha256"].clone();
    });
    let wrong: Vec<String> = ["verify", "verify --key", "export"]
        .into_iter()
        .zip(open_all_ways(&lab, &copy))
        .filter(|(_, (code, text))| {
            *code != 1
                || !(text.contains("fragment 1 (frag-000001.nfx)")
                    && text.contains("key record was written for another object"))
        })
        .map(|(what, (code, text))| format!("{what}: exit code {code}: {text}"))
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Issue 12: twins, or a second resuscitation minutes later. A recording started ten seconds
/// after the previous one started (two after it stopped) still gets its full pre-roll: the
/// first one's end, kept in the ring, is the second one's beginning too.
#[test]
fn back_to_back_recordings_ten_seconds_apart_each_get_their_full_preroll() {
    let lab = Lab::new();
    lab.config(CAPTURE_320, 8, "");
    let mut d = lab.start();
    d.wait_ready(Duration::from_secs(120));
    let a = d.ctl(Request::Start {}).recording.expect("a recording id");
    let started = std::time::Instant::now();
    sleep(Duration::from_secs(8));
    assert!(d.ctl(Request::Stop {}).ok);
    // Ready again at once: the ring still holds a full pre-roll.
    let s = d.wait_for("the first finalized", Duration::from_secs(30), |s| {
        s.recordings_finalized == 1
    });
    assert!(s.preroll_secs >= 7.0, "pre-roll after the stop: {s:?}");
    sleep(Duration::from_secs(10).saturating_sub(started.elapsed()));
    let b = d.ctl(Request::Start {}).recording.expect("a recording id");
    assert_ne!(a, b);
    sleep(Duration::from_secs(3));
    assert!(d.ctl(Request::Stop {}).ok);
    d.wait_for("the second finalized", Duration::from_secs(30), |s| {
        s.recordings_finalized == 2
    });
    assert_eq!(d.terminate(), 0);

    let recs = lab.recordings();
    assert_eq!(recs.len(), 2);
    let (ma, mb) = (
        neoflix_format::verify(&recs[0])
            .expect("first verifies")
            .manifest,
        neoflix_format::verify(&recs[1])
            .expect("second verifies")
            .manifest,
    );
    assert_eq!(ma.recording_id, a);
    assert!(
        mb.preroll_secs >= 7.5,
        "the second recording's pre-roll: {} s of 8",
        mb.preroll_secs
    );
    // Its first fragments are the first recording's last ones: the same sealed bytes, each
    // recording with its own copy and its own key record.
    let shared: Vec<&neoflix_store::ObjectEntry> = mb
        .fragments
        .iter()
        .filter(|f| ma.fragments.iter().any(|g| g.sha256 == f.sha256))
        .collect();
    assert!(
        shared.len() >= 5,
        "{} fragments of the first recording open the second",
        shared.len()
    );
    assert_eq!(shared[0].sha256, mb.fragments[0].sha256);
    for f in &shared {
        let g = ma.fragments.iter().find(|g| g.sha256 == f.sha256).unwrap();
        assert_ne!(
            f.key_sha256, g.key_sha256,
            "each recording wraps its own key"
        );
    }
    // Both play whole.
    for (rec, name) in [(&recs[0], "a.mp4"), (&recs[1], "b.mp4")] {
        let out = lab.path(name);
        let e = lab.export(rec, &out);
        assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
        assert_eq!(ffmpeg_errors(&out), "", "{name}");
    }
    let pb = ffprobe(&lab.path("b.mp4"));
    assert!(
        pb.duration >= 10.5,
        "the second recording plays {} s",
        pb.duration
    );
}

/// Issue 12: a camera that encodes H.264 itself is passed through: its fragments follow its
/// keyframe interval (2 s here, though `fragment_secs` asks for 1), the status says so, and the
/// recording verifies and plays.
#[test]
fn a_cameras_own_h264_is_passed_through_in_fragments_of_its_keyframe_interval() {
    let lab = Lab::new();
    lab.config(
        "source = \"test-h264\"\nwidth = 320\nheight = 180\nfps = 15\nfragment_secs = 1\nbitrate_kbps = 300",
        4,
        "",
    );
    let mut d = lab.start();
    let s = d.wait_ready(Duration::from_secs(120));
    assert_eq!(s.encoder, "passthrough");
    assert_eq!(s.fragment_secs, 2.0, "{s:?}");
    assert!(d.ctl(Request::Start {}).ok);
    d.wait_for("8 s recorded", Duration::from_secs(60), |s| {
        s.recording_secs.unwrap_or(0.0) >= 8.0
    });
    assert!(d.ctl(Request::Stop {}).ok);
    d.wait_for("finalized", Duration::from_secs(30), |s| {
        s.recordings_finalized == 1
    });
    assert_eq!(d.terminate(), 0);
    let rec = lab.recordings().pop().expect("a recording");
    let m = neoflix_format::verify(&rec).expect("verifies").manifest;
    let durations: Vec<u64> = m.fragments.iter().filter_map(|f| f.duration_ms).collect();
    assert!(
        durations.iter().all(|d| (1900..=2100).contains(d)),
        "{durations:?}"
    );
    let out = lab.path("passthrough.mp4");
    let e = lab.export(&rec, &out);
    assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
    assert_eq!(ffmpeg_errors(&out), "");
}
