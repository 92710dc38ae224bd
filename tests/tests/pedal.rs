//! The pedals and the light on real kernel drivers: gpio-sim's line `pedal` and a virtual USB foot
//! switch made through uinput, inside the VM lab.
//!
//! Ignored by a plain `cargo test`: gpio-sim and uinput exist only in the VM lab. `scripts/test`
//! runs them there with
//! `CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="../shared/vmlab/run-in-vm --" cargo test --test pedal -- --ignored`.

use std::path::PathBuf;
use std::thread::sleep;
use std::time::{Duration, Instant};

use neoflix_control::State;
use neoflix_e2e::{Daemon, Lab};
use serde_json::Value;

const CAPTURE: &str = "source = \"test\"\nwidth = 320\nheight = 180\nfps = 15\nbitrate_kbps = 300\nx264_preset = \"ultrafast\"";

fn sysfs() -> PathBuf {
    let dir = PathBuf::from(
        std::env::var("VMLAB_GPIO_SYSFS")
            .unwrap_or_else(|_| "/sys/devices/platform/gpio-sim.0/gpiochip0".into()),
    );
    assert!(
        dir.exists(),
        "{} does not exist: run this test under the VM lab",
        dir.display()
    );
    dir
}

/// Moves the simulated pedal: a pull-up is the switch closing.
fn pedal(down: bool) {
    std::fs::write(
        sysfs().join("sim_gpio0/pull"),
        if down { "pull-up" } else { "pull-down" },
    )
    .unwrap();
}

/// Moves the simulated privacy switch (line 2).
fn privacy_switch(on: bool) {
    std::fs::write(
        sysfs().join("sim_gpio2/pull"),
        if on { "pull-up" } else { "pull-down" },
    )
    .unwrap();
}

/// The level the daemon drives on the light line.
fn light() -> bool {
    std::fs::read_to_string(sysfs().join("sim_gpio1/value"))
        .unwrap()
        .trim()
        == "1"
}

fn manifest(lab: &Lab, n: usize) -> Value {
    let recs = lab.recordings();
    serde_json::from_slice(&std::fs::read(recs[n].join("manifest.json")).unwrap()).unwrap()
}

fn wait_light(d: &Daemon, on: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while light() != on {
        assert!(
            Instant::now() < deadline,
            "the light stayed {}:\n{}",
            if on { "off" } else { "on" },
            d.log_text()
        );
        sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore = "needs gpio-sim: run under the VM lab (scripts/test does)"]
fn gpio_pedal_starts_marks_and_stops_and_the_light_follows() {
    sysfs();
    let lab = Lab::new();
    lab.config(
        CAPTURE,
        3,
        "long_press_ms = 1000\n\
         [pedal]\nchip = \"vmlab-sim\"\nline = \"pedal\"\ndebounce_ms = 100\n\
         [light]\nchip = \"/dev/gpiochip0\"\nline = 1\n",
    );
    pedal(false);
    let mut d = lab.start();
    // Not ready yet (pre-roll filling): the light blinks.
    let (mut saw_on, mut saw_off) = (false, false);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) && !(saw_on && saw_off) {
        if light() {
            saw_on = true;
        } else {
            saw_off = true;
        }
        sleep(Duration::from_millis(50));
    }
    assert!(saw_on && saw_off, "the light did not blink while not ready");
    let s = d.wait_ready(Duration::from_secs(120));
    assert_eq!(s.inputs.get("pedal").map(String::as_str), Some("ok"));
    wait_light(&d, false);

    // Press: a recording starts with its pre-roll, the light comes on.
    pedal(true);
    let s = d.wait_for("a recording", Duration::from_secs(10), |s| {
        s.recording.is_some()
    });
    wait_light(&d, true);
    pedal(false);
    assert_eq!(s.state, State::Recording);
    sleep(Duration::from_secs(1));

    // Contact bounce shorter than the debounce period: no event at all.
    for _ in 0..5 {
        pedal(true);
        pedal(false);
        sleep(Duration::from_millis(150));
    }
    // A short press: a marker.
    pedal(true);
    sleep(Duration::from_millis(400));
    pedal(false);
    sleep(Duration::from_secs(1));
    // A long press: the recording stops while the foot is still down.
    pedal(true);
    d.wait_for("the long press to stop", Duration::from_secs(10), |s| {
        s.recordings_finalized == 1
    });
    wait_light(&d, false);
    pedal(false);
    sleep(Duration::from_millis(500));
    let s = d.status();
    // (The pre-roll refills after a recording took it: buffering, not recording.)
    assert!(
        s.recording.is_none() && s.recordings_finalized == 1,
        "the release after the stop started something: {s:?}"
    );
    assert_eq!(d.terminate(), 0);

    let m = manifest(&lab, 0);
    assert_eq!(m["trigger"], "pedal", "{m}");
    assert_eq!(m["stop_reason"], "pedal", "{m}");
    assert!(m["preroll_secs"].as_f64().unwrap() >= 2.0, "{m}");
    let markers = m["markers"].as_array().unwrap();
    assert_eq!(markers.len(), 1, "bounce made markers: {m}");
    assert_eq!(markers[0]["by"], "pedal");
}

#[test]
#[ignore = "needs /dev/uinput: run under the VM lab (scripts/test does)"]
fn usb_foot_switch_works_and_survives_unplugging() {
    use evdev::uinput::VirtualDevice;
    use evdev::{AttributeSet, EventType, InputEvent, KeyCode};
    assert!(
        std::path::Path::new("/dev/uinput").exists(),
        "/dev/uinput does not exist: run this test under the VM lab"
    );
    let name = "Neoflix Test FootSwitch";
    let plug = || -> VirtualDevice {
        let mut keys = AttributeSet::<KeyCode>::new();
        keys.insert(KeyCode::KEY_B);
        VirtualDevice::builder()
            .unwrap()
            .name(name)
            .with_keys(&keys)
            .unwrap()
            .build()
            .unwrap()
    };
    let press = |dev: &mut VirtualDevice, down: bool| {
        dev.emit(&[InputEvent::new(
            EventType::KEY.0,
            KeyCode::KEY_B.code(),
            i32::from(down),
        )])
        .unwrap();
    };

    let lab = Lab::new();
    lab.config(
        CAPTURE,
        2,
        &format!("long_press_ms = 1000\n[foot_switch]\nname = \"{name}\"\nkey = \"KEY_B\"\n"),
    );
    let mut d = lab.start();
    // No pedal yet: the status says so and the room is not ready.
    let s = d.wait_for(
        "the foot switch reported missing",
        Duration::from_secs(60),
        |s| s.inputs.get("foot_switch").map(String::as_str) == Some("unplugged"),
    );
    assert!(!s.ready);

    for round in 0..2 {
        let mut dev = plug();
        d.wait_for(
            "ready with the foot switch",
            Duration::from_secs(120),
            |s| s.ready && s.inputs.get("foot_switch").map(String::as_str) == Some("ok"),
        );
        press(&mut dev, true);
        press(&mut dev, false);
        d.wait_for("a recording", Duration::from_secs(10), |s| {
            s.recording.is_some()
        });
        sleep(Duration::from_secs(2));
        press(&mut dev, true);
        d.wait_for("the long press to stop", Duration::from_secs(10), |s| {
            s.recordings_finalized == round + 1
        });
        press(&mut dev, false);
        // Unplug.
        drop(dev);
        d.wait_for(
            "the foot switch reported unplugged",
            Duration::from_secs(10),
            |s| s.inputs.get("foot_switch").map(String::as_str) == Some("unplugged") && !s.ready,
        );
    }
    assert_eq!(d.terminate(), 0);
    for n in 0..2 {
        let m = manifest(&lab, n);
        assert_eq!(m["trigger"], "pedal", "{m}");
        assert_eq!(m["stop_reason"], "pedal", "{m}");
    }
}

#[test]
#[ignore = "needs gpio-sim: run under the VM lab (scripts/test does)"]
fn gpio_privacy_switch_stops_the_recording_and_keeps_nothing() {
    sysfs();
    let lab = Lab::new();
    lab.config(
        CAPTURE,
        2,
        "[pedal]\nchip = \"vmlab-sim\"\nline = \"pedal\"\n\
         [privacy_switch]\nchip = \"vmlab-sim\"\nline = 2\n",
    );
    pedal(false);
    privacy_switch(false);
    let mut d = lab.start();
    d.wait_ready(Duration::from_secs(120));
    pedal(true);
    sleep(Duration::from_millis(200));
    pedal(false);
    d.wait_for("a recording", Duration::from_secs(10), |s| {
        s.recording.is_some()
    });
    privacy_switch(true);
    // Privacy finalizes the open recording: the status says privacy as soon as the recorder
    // decided, and counts the recording once storage has written its manifest, a moment later.
    let s = d.wait_for(
        "privacy, with the open recording finalized",
        Duration::from_secs(10),
        |s| s.privacy && s.recordings_finalized == 1,
    );
    assert_eq!(s.state, State::Privacy);
    sleep(Duration::from_secs(2));
    assert_eq!(
        std::fs::read_dir(lab.path("ring")).unwrap().count(),
        0,
        "the ring keeps nothing in privacy mode"
    );
    // The pedal does nothing in privacy mode.
    pedal(true);
    sleep(Duration::from_millis(200));
    pedal(false);
    sleep(Duration::from_millis(500));
    assert!(d.status().recording.is_none());
    privacy_switch(false);
    d.wait_ready(Duration::from_secs(120));
    assert_eq!(d.terminate(), 0);
    assert_eq!(manifest(&lab, 0)["stop_reason"], "privacy");
}
