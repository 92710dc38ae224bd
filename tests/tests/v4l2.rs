//! The same recording on a real V4L2 device: vivid's /dev/video0 inside the VM lab.
//!
//! Ignored by a plain `cargo test`: it needs the kernel's vivid driver, which only the VM lab
//! provides. `scripts/test` runs it there with
//! `CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="../shared/vmlab/run-in-vm --" cargo test --test v4l2 -- --ignored`.

use std::path::Path;
use std::thread::sleep;
use std::time::Duration;

use neoflix_control::Request;
use neoflix_e2e::{Lab, ffmpeg_errors, ffprobe};

#[test]
#[ignore = "needs /dev/video0 from vivid: run under the VM lab (scripts/test does)"]
fn records_a_v4l2_camera_at_the_configured_resolution() {
    let device = std::env::var("VMLAB_VIDEO_DEVICE").unwrap_or_else(|_| "/dev/video0".into());
    assert!(
        Path::new(&device).exists(),
        "{device} does not exist: run this test under the VM lab"
    );
    let lab = Lab::new();
    // Software emulation is slow: a small frame and the fastest x264 preset keep up in real time.
    lab.config(
        &format!(
            "source = \"v4l2\"\ndevice = \"{device}\"\ninput_format = \"raw\"\nwidth = 320\nheight = 180\nfps = 15\nx264_preset = \"ultrafast\"\nbitrate_kbps = 300"
        ),
        3,
        "",
    );
    let mut d = lab.start();
    d.wait_ready(Duration::from_secs(120));
    assert!(d.ctl(Request::Start {}).ok);
    sleep(Duration::from_secs(6));
    assert!(d.ctl(Request::Stop {}).ok);
    d.wait_for(
        "the recording to be finalized",
        Duration::from_secs(30),
        |s| s.recordings_finalized == 1,
    );
    assert_eq!(d.terminate(), 0);

    let rec = lab.recordings().pop().expect("a recording");
    let m = neoflix_format::verify(&rec)
        .expect("recording verifies")
        .manifest;
    let durations: Vec<u64> = m.fragments.iter().filter_map(|f| f.duration_ms).collect();
    let out = lab.path("v4l2.mp4");
    let e = lab.export(&rec, &out);
    assert!(
        e.status.success(),
        "export: {}",
        String::from_utf8_lossy(&e.stderr)
    );
    let p = ffprobe(&out);
    eprintln!(
        "v4l2: {} s exported, fragments {durations:?} ms, pre-roll {} s",
        p.duration, m.preroll_secs
    );
    assert_eq!(
        (p.width, p.height, p.codec.as_str()),
        (320, 180, "h264"),
        "{p:?}"
    );
    // 3 s pre-roll + 6 s recorded, within a fragment or two (the guest's clock runs under TCG).
    assert!(
        (p.duration - 9.0).abs() <= 2.0,
        "duration {} s, fragments {durations:?} ms, pre-roll {} s\n{}",
        p.duration,
        m.preroll_secs,
        std::fs::read_to_string(lab.path("neoflixd.log")).unwrap_or_default()
    );
    assert_eq!(ffmpeg_errors(&out), "");
}
