//! `neoflixd` under systemd's notify protocol, with a notify socket of the test's own:
//! READY=1 only once a fragment is sealed, watchdog pings only while frames flow.
//!
//! The stall test needs vivid (its `percentage_of_dropped_buffers` control stops frames while the
//! stream stays up, like a camera that hangs) and runs in the VM lab, as `scripts/test` does:
//! `CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="../shared/vmlab/run-in-vm --" cargo test --test notify -- --ignored`.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant};

use neoflix_control::State;
use neoflix_e2e::{Daemon, Lab};

/// The watchdog period the host test gives the daemon.
const PERIOD: Duration = Duration::from_secs(2);

/// What the daemon told "systemd", with when, and whether the ring held a sealed fragment then.
#[derive(Clone, Debug)]
struct Notice {
    text: String,
    at: Instant,
    fragment_in_ring: bool,
}

struct Systemd {
    seen: Arc<Mutex<Vec<Notice>>>,
}

impl Systemd {
    fn listen(lab: &Lab) -> (Systemd, String) {
        let path = lab.path("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, ring) = (seen.clone(), lab.path("ring"));
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                let fragment_in_ring = std::fs::read_dir(&ring)
                    .map(|d| {
                        d.filter_map(|e| e.ok())
                            .any(|e| e.file_name().to_string_lossy().starts_with("frag-"))
                    })
                    .unwrap_or(false);
                s.lock().unwrap().push(Notice {
                    text: String::from_utf8_lossy(&buf[..n]).to_string(),
                    at: Instant::now(),
                    fragment_in_ring,
                });
            }
        });
        (Systemd { seen }, path.display().to_string())
    }

    fn notices(&self) -> Vec<Notice> {
        self.seen.lock().unwrap().clone()
    }

    fn pings_since(&self, t: Instant) -> usize {
        self.notices()
            .iter()
            .filter(|n| n.at >= t && n.text.lines().any(|l| l == "WATCHDOG=1"))
            .count()
    }

    /// The longest stretch within `from..to` without a ping: what systemd's watchdog judges.
    fn longest_silence(&self, from: Instant, to: Instant) -> Duration {
        let mut last = from;
        let mut longest = Duration::ZERO;
        for n in self.notices() {
            if n.at >= from && n.at <= to && n.text.lines().any(|l| l == "WATCHDOG=1") {
                longest = longest.max(n.at - last);
                last = n.at;
            }
        }
        longest.max(to - last)
    }

    fn wait_ready(&self, d: &Daemon) -> Notice {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(n) = self
                .notices()
                .into_iter()
                .find(|n| n.text.lines().any(|l| l == "READY=1"))
            {
                return n;
            }
            assert!(Instant::now() < deadline, "no READY=1:\n{}", d.log_text());
            sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn ready_follows_the_first_sealed_fragment_and_pings_follow_the_frames() {
    let lab = Lab::new();
    lab.config(
        "source = \"test\"\nwidth = 320\nheight = 180\nfps = 15\nbitrate_kbps = 300\nx264_preset = \"ultrafast\"",
        2,
        "",
    );
    let (systemd, socket) = Systemd::listen(&lab);
    let period = PERIOD.as_micros().to_string();
    let mut d = lab.start_with_env(&[("NOTIFY_SOCKET", &socket), ("WATCHDOG_USEC", &period)]);
    let ready = systemd.wait_ready(&d);
    assert!(
        ready.fragment_in_ring,
        "READY=1 came before any sealed fragment was in the ring"
    );
    assert!(
        systemd
            .notices()
            .iter()
            .all(|n| n.at >= ready.at || !n.text.contains("WATCHDOG=1")),
        "a watchdog ping came before READY"
    );
    // Frames flow: never a whole watchdog period (2 s) without a ping, or systemd would kill.
    let t = Instant::now();
    sleep(Duration::from_secs(5));
    let silence = systemd.longest_silence(t, Instant::now());
    assert!(
        silence < PERIOD,
        "{silence:?} without a ping: {:?}",
        systemd.notices()
    );
    // Privacy stops the camera on purpose: the service is healthy, pings go on.
    d.ctl(neoflix_control::Request::Privacy { on: true });
    d.wait_for("privacy", Duration::from_secs(10), |s| s.privacy);
    let t = Instant::now();
    sleep(Duration::from_secs(5));
    let silence = systemd.longest_silence(t, Instant::now());
    assert!(
        silence < PERIOD,
        "{silence:?} without a ping in privacy mode"
    );
    // The status line systemctl shows follows the state.
    assert!(
        systemd
            .notices()
            .iter()
            .any(|n| n.text.contains("STATUS=not ready: privacy mode")),
        "{:?}",
        systemd.notices()
    );
    assert_eq!(d.terminate(), 0);
    assert!(
        systemd
            .notices()
            .iter()
            .any(|n| n.text.contains("STOPPING=1"))
    );
}

#[test]
#[ignore = "needs vivid: run under the VM lab (scripts/test does)"]
fn a_camera_that_stops_delivering_stops_the_watchdog_pings() {
    let device = std::env::var("VMLAB_VIDEO_DEVICE").unwrap_or_else(|_| "/dev/video0".into());
    assert!(
        Path::new(&device).exists(),
        "{device} does not exist: run this test under the VM lab"
    );
    let set = |ctrl: &str| {
        let out = std::process::Command::new("v4l2-ctl")
            .args(["-d", &device, "--set-ctrl", ctrl])
            .output()
            .expect("v4l2-ctl (v4l-utils) runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    set("percentage_of_dropped_buffers=0");
    let lab = Lab::new();
    lab.config(
        &format!(
            "source = \"v4l2\"\ndevice = \"{device}\"\ninput_format = \"raw\"\nwidth = 320\nheight = 180\nfps = 15\nx264_preset = \"ultrafast\"\nbitrate_kbps = 300"
        ),
        2,
        "",
    );
    let (systemd, socket) = Systemd::listen(&lab);
    let mut d = lab.start_with_env(&[("NOTIFY_SOCKET", &socket), ("WATCHDOG_USEC", "4000000")]);
    systemd.wait_ready(&d);
    let t = Instant::now();
    sleep(Duration::from_secs(6));
    let silence = systemd.longest_silence(t, Instant::now());
    assert!(
        silence < Duration::from_secs(4),
        "{silence:?} without a ping: {:?}",
        systemd.notices()
    );

    // Some frames lost: counted, and the pings go on.
    set("percentage_of_dropped_buffers=50");
    sleep(Duration::from_secs(6));
    let s = d.status();
    assert!(s.camera_dropped_frames > 0, "{s:?}");

    // The camera hangs: the stream stays open, no frame comes. No more pings, so systemd would
    // restart the service; the status says why.
    set("percentage_of_dropped_buffers=100");
    sleep(Duration::from_secs(3));
    let t = Instant::now();
    sleep(Duration::from_secs(4));
    assert_eq!(systemd.pings_since(t), 0, "pings went on without frames");
    let s = d.wait_for("the camera fault", Duration::from_secs(20), |s| {
        s.state == State::Fault
    });
    assert!(s.reasons[0].contains("no video"), "{s:?}");

    set("percentage_of_dropped_buffers=0");
    let t = Instant::now();
    sleep(Duration::from_secs(4));
    assert!(
        systemd.pings_since(t) >= 1,
        "pings did not resume with the frames"
    );
    assert_eq!(d.terminate(), 0);
}
