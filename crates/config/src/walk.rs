//! `neoflixd.toml` read with the shared strict walker (`neoflix-confwalk`): each known option
//! taken with its type, range and default, every problem collected with its line.

use std::path::PathBuf;

use neoflix_confwalk::{DeTable, DeValue, Section, Walker, shown, type_name};

use crate::{
    Audio, AudioSourceKind, Bias, Capture, Config, ConfigError, Control, ControlValue,
    EncoderChoice, FootSwitch, GpioLine, InputFormat, LineRef, Mqtt, Problem, Readiness,
    Recordings, Ring, SecondCamera, Signing, SourceKind, Upload, X264Preset,
};

/// A GPIO line: a name (string) or an offset (whole number).
fn line_ref(w: &mut Walker, s: &mut Section, key: &str) -> LineRef {
    match w.value(s, key) {
        None => {
            let opt = Walker::option_name(s, key);
            w.error(
                s.line(),
                opt,
                "missing: the line's name (\"pedal\") or offset (17)",
            );
            LineRef::Offset(0)
        }
        Some((v, line, opt)) => match v.get_ref() {
            DeValue::String(n) if !n.is_empty() => LineRef::Name(n.to_string()),
            DeValue::Integer(_) => {
                let (n, _) = w.int(s, key, 0, (0, 511), "");
                LineRef::Offset(n as u32)
            }
            other => {
                w.error(
                    line,
                    opt,
                    format!("expected a line name or offset, found {}", type_name(other)),
                );
                LineRef::Offset(0)
            }
        },
    }
}

/// `[pedal]`, `[light]`, `[privacy_switch]`: a chip, a line and how to read it.
fn gpio(w: &mut Walker, root: &DeTable, name: &'static str, input: bool) -> Option<GpioLine> {
    let mut sec = w.optional_section(root, name)?;
    let chip = w
        .required_string(
            &mut sec,
            "chip",
            "the GPIO chip's path (/dev/gpiochip0) or label (pinctrl-bcm2711)",
        )
        .map(|(c, _)| c)
        .unwrap_or_default();
    let line_ref = line_ref(w, &mut sec, "line");
    let active_low = w.boolean(&mut sec, "active_low", false);
    let (bias, debounce_ms) = if input {
        let bias = w.choice(&mut sec, "bias", Bias::AsIs);
        let (d, _) = w.int(&mut sec, "debounce_ms", 20, (0, 1000), " milliseconds");
        (bias, d as u32)
    } else {
        (Bias::AsIs, 0)
    };
    w.finish(sec);
    Some(GpioLine {
        chip,
        line: line_ref,
        active_low,
        bias,
        debounce_ms,
    })
}

pub(crate) fn parse(file: &str, text: &str) -> Result<(Config, Vec<Problem>), ConfigError> {
    let mut w = Walker::new(file, text).documented_in("docs/config.md");
    let Some(root) = w.parse(text) else {
        return Err(w.into_result().expect_err("a syntax error is an error"));
    };
    let root = &root;
    let mut top = w.root(root);

    let (device_id, line) = w.string(&mut top, "device_id", "");
    if device_id.is_empty() {
        w.error(
            line,
            "device_id",
            "missing: name this room box, e.g. device_id = \"nicu-room-1\"",
        );
    } else if device_id.len() > 64
        || !device_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        w.error(line, "device_id", format!("{} may hold only letters, digits, '-', '_' and '.', at most 64 of them (it names MQTT topics and recordings)", shown(&device_id)));
    }

    let mut cap = w.section(root, "capture");
    let source = w.choice(&mut cap, "source", SourceKind::Test);
    let (device, _) = w.path(&mut cap, "device", "/dev/video0");
    let first_device = device.clone();
    let serial = usb_serial(&mut w, &mut cap, "capture");
    let (first_source, first_serial) = (source, serial.clone());
    let input_format = w.choice(&mut cap, "input_format", InputFormat::Auto);
    let controls = camera_controls(&mut w, &mut cap, "capture");
    let (width, _) = w.int(&mut cap, "width", 1280, (16, 7680), " pixels");
    let (height, _) = w.int(&mut cap, "height", 720, (16, 4320), " pixels");
    let (fps, _) = w.int(&mut cap, "fps", 30, (1, 120), " frames per second");
    let (fragment_secs, _) = w.int(&mut cap, "fragment_secs", 1, (1, 10), " seconds");
    let encoder = w.choice(&mut cap, "encoder", EncoderChoice::Auto);
    let (bitrate_kbps, _) = w.int(&mut cap, "bitrate_kbps", 4000, (100, 100_000), " kbit/s");
    let x264_preset = w.choice(&mut cap, "x264_preset", X264Preset::Veryfast);
    w.finish(cap);

    let second_camera = if let Some(mut sc) = w.optional_section(root, "second_camera") {
        let source = w.choice(&mut sc, "source", SourceKind::V4l2);
        let named = sc.has("device");
        let (device, dline) = if named {
            w.path(&mut sc, "device", "/")
        } else {
            // Its line: the section's.
            let (_, line) = w.string(&mut sc, "device", "");
            (std::path::PathBuf::new(), line)
        };
        let serial = usb_serial(&mut w, &mut sc, "second_camera");
        if source == SourceKind::V4l2 {
            if !named && serial.is_none() {
                // No default: /dev/video1 is as often the first camera's metadata node.
                w.error(dline, "second_camera.device", "name the second camera: device (its /dev/v4l/by-id/ name) or serial (neoflix camera list shows both)");
            } else if (named
                && first_source == SourceKind::V4l2
                && first_serial.is_none()
                && same_file(&device, &first_device))
                || (serial.is_some() && serial == first_serial)
            {
                w.error(
                    dline,
                    "second_camera.device",
                    "this is the camera [capture] records: name the other one",
                );
            }
        }
        let iline = w.value(&mut sc, "input_format").map(|(_, line, _)| line);
        let input_format = w.choice(&mut sc, "input_format", InputFormat::Auto);
        if input_format == InputFormat::H264 || source == SourceKind::TestH264 {
            // A camera's own H.264 keeps its own keyframes, and the muxer needs the second
            // view's just ahead of the first's to keep both in every fragment.
            w.error(iline.unwrap_or(dline), "second_camera.input_format", "a second camera is encoded here, so that its keyframes come with the first view's: use auto, raw or mjpeg (and not source = \"test-h264\")");
        }
        let controls = camera_controls(&mut w, &mut sc, "second_camera");
        let (width, _) = w.int(&mut sc, "width", width, (16, 7680), " pixels");
        let (height, _) = w.int(&mut sc, "height", height, (16, 4320), " pixels");
        let (bitrate, _) = w.int(
            &mut sc,
            "bitrate_kbps",
            bitrate_kbps,
            (100, 100_000),
            " kbit/s",
        );
        for shared in ["fps", "fragment_secs", "encoder", "x264_preset"] {
            if let Some((_, line, _)) = w.value(&mut sc, shared) {
                w.error(line, format!("second_camera.{shared}"), format!("both views run at capture.{shared}, on one clock and one encoder: remove it here"));
            }
        }
        w.finish(sc);
        Some(SecondCamera {
            source,
            device,
            serial,
            input_format,
            controls,
            width: width as u32,
            height: height as u32,
            bitrate_kbps: bitrate as u32,
        })
    } else {
        None
    };

    let audio = if let Some(mut a) = w.optional_section(root, "audio") {
        let source = w.choice(&mut a, "source", AudioSourceKind::Alsa);
        let (device, dline) = w.string(&mut a, "device", "default");
        if device.is_empty() || device.len() > 128 || device.chars().any(char::is_control) {
            w.error(
                dline,
                "audio.device",
                format!("{} is not an ALSA device name: use one that arecord -L lists, e.g. hw:CARD=Mic,DEV=0 or default", shown(&device)),
            );
        }
        let (channels, _) = w.int(&mut a, "channels", 1, (1, 2), " channels");
        let (rate, rline) = w.int(
            &mut a,
            "rate",
            48_000,
            (8000, 48_000),
            " samples per second",
        );
        if !crate::OPUS_RATES.contains(&(rate as u32)) {
            w.error(
                rline,
                "audio.rate",
                format!(
                    "{rate} is not a rate Opus encodes: use 8000, 12000, 16000, 24000 or 48000"
                ),
            );
        }
        let (bitrate_kbps, _) = w.int(&mut a, "bitrate_kbps", 32, (6, 256), " kbit/s");
        w.finish(a);
        Some(Audio {
            source,
            device,
            channels: channels as u32,
            rate: rate as u32,
            bitrate_kbps: bitrate_kbps as u32,
        })
    } else {
        None
    };

    let mut ring = w.section(root, "ring");
    let (ring_dir, _) = w.path(&mut ring, "dir", "/run/neoflix/ring");
    let (preroll_secs, pl) = w.int(&mut ring, "preroll_secs", 60, (0, 4 * 3600), " seconds");
    let (max_bytes, _) = w.int(
        &mut ring,
        "max_bytes",
        512 * 1024 * 1024,
        (1024 * 1024, 1 << 40),
        " bytes",
    );
    if ring_dir.starts_with("/run") && preroll_secs > 600 {
        w.warn(pl, "ring.preroll_secs", format!("{preroll_secs} s of pre-roll in {} (RAM on most systems): put a long pre-roll on disk", ring_dir.display()));
    }
    let kbps = u64::from(bitrate_kbps as u32)
        + second_camera
            .as_ref()
            .map_or(0, |s| u64::from(s.bitrate_kbps))
        + audio.as_ref().map_or(0, |a| u64::from(a.bitrate_kbps));
    let needs = crate::preroll_bytes(preroll_secs as u32, kbps);
    if needs > max_bytes {
        w.warn(pl, "ring.preroll_secs", format!("{preroll_secs} s of pre-roll at {kbps} kbit/s need about {} MiB, more than ring.max_bytes ({} MiB): the pre-roll will be shorter; raise max_bytes or lower the bitrate", needs >> 20, max_bytes >> 20));
    }
    w.finish(ring);

    let mut rec = w.section(root, "recordings");
    let (rec_dir, _) = w.path(&mut rec, "dir", "/var/lib/neoflix/recordings");
    let (recipient, rline) = w.path(&mut rec, "recipient", "/etc/neoflix/department.pub");
    let (max_duration_secs, _) = w.int(
        &mut rec,
        "max_duration_secs",
        90 * 60,
        (10, 24 * 3600),
        " seconds",
    );
    let (post_roll_secs, _) = w.int(&mut rec, "post_roll_secs", 0, (0, 600), " seconds");
    let (long_press_ms, _) = w.int(
        &mut rec,
        "long_press_ms",
        2000,
        (500, 10_000),
        " milliseconds",
    );
    w.finish(rec);
    if recipient.is_absolute() {
        match neoflix_logging::read_small_file(&recipient, 64 << 10) {
            Err(e) => w.error(rline, "recordings.recipient", format!("{e}; copy the department public key there (neoflix keygen writes department.pub)")),
            Ok(t) => {
                if let Err(e) = neoflix_seal::DepartmentPublicKey::from_file_text(&t) {
                    w.error(rline, "recordings.recipient", format!("{}: {e}", recipient.display()));
                }
            }
        }
    }
    if ring_dir.starts_with(&rec_dir) || rec_dir.starts_with(&ring_dir) {
        // Recovery would take the ring for a recording, or the ring wipe would take recordings.
        w.error(
            1,
            "ring.dir",
            format!(
                "{} and recordings.dir {} must not contain one another",
                ring_dir.display(),
                rec_dir.display()
            ),
        );
    }

    let mut control = w.section(root, "control");
    let (socket, _) = w.path(&mut control, "socket", "/run/neoflix/control.sock");
    w.finish(control);

    let upload = if let Some(mut up) = w.optional_section(root, "upload") {
        // Replicas of one department server; more is a configuration mistake.
        const MAX_UPLOAD_URLS: usize = 8;
        let (urls, line) = w.strings(&mut up, "url", MAX_UPLOAD_URLS);
        if urls.is_empty() && !up.has("url") {
            w.error(
                line,
                "upload.url",
                "missing: the https:// URL of the ingest server, or a list of them (replicas)",
            );
        }
        let mut seen: Vec<String> = Vec::new();
        for url in &urls {
            match check_upload_url(url) {
                Err(why) => w.error(line, "upload.url", format!("{} {why}", shown(url))),
                // One server twice (`https://a` and `https://A:443/`) is no second server.
                Ok(same) if seen.contains(&same) => w.error(
                    line,
                    "upload.url",
                    format!("{} is listed twice", shown(url)),
                ),
                Ok(same) => seen.push(same),
            }
        }
        let file = |w: &mut Walker, up: &mut Section, key: &str, what: &str| {
            let (p, line) = w.path(up, key, "");
            if p.is_absolute()
                && let Err(e) = std::fs::File::open(&p)
            {
                w.error(
                    line,
                    format!("upload.{key}"),
                    format!("cannot read {}: {e}; {what}", p.display()),
                );
            }
            p
        };
        let ca = file(
            &mut w,
            &mut up,
            "ca",
            "the CA certificate that issued the server's certificate",
        );
        let cert = file(
            &mut w,
            &mut up,
            "cert",
            "this device's certificate (neoflix pki issue --device ID)",
        );
        let key = file(&mut w, &mut up, "key", "this device's private key");
        w.finish(up);
        Some(Upload {
            urls,
            ca,
            cert,
            key,
        })
    } else {
        None
    };

    // The identity manifests are signed with: `[signing]` when given, else the upload identity.
    let signing = if let Some(mut sg) = w.optional_section(root, "signing") {
        let file = |w: &mut Walker, sg: &mut Section, key: &str, what: &str| {
            let (p, line) = w.path(sg, key, "");
            if p.is_absolute()
                && let Err(e) = std::fs::File::open(&p)
            {
                w.error(
                    line,
                    format!("signing.{key}"),
                    format!("cannot read {}: {e}; {what}", p.display()),
                );
            }
            p
        };
        let cert = file(
            &mut w,
            &mut sg,
            "cert",
            "this device's certificate from the department CA (neoflix pki issue --device ID)",
        );
        let key = file(&mut w, &mut sg, "key", "this device's private key");
        w.finish(sg);
        Some(Signing { cert, key })
    } else {
        upload.as_ref().map(|u| Signing {
            cert: u.cert.clone(),
            key: u.key.clone(),
        })
    };

    let mqtt = if let Some(mut m) = w.optional_section(root, "mqtt") {
        let (url, uline) = w.string(&mut m, "url", "");
        let tls = url.starts_with("mqtts://");
        if !tls && !url.starts_with("mqtt://") {
            w.error(
                uline,
                "mqtt.url",
                format!(
                    "{} must be mqtt://HOST[:PORT] or mqtts://HOST[:PORT]",
                    shown(&url)
                ),
            );
        }
        let mut file = |w: &mut Walker, key: &str, what: &str| -> Option<PathBuf> {
            if !m.has(key) {
                return None;
            }
            let (p, line) = w.path(&mut m, key, "");
            if !tls {
                w.error(
                    line,
                    format!("mqtt.{key}"),
                    "only for mqtts:// URLs: use mqtts:// or remove it",
                );
            } else if p.is_absolute()
                && let Err(e) = std::fs::File::open(&p)
            {
                w.error(
                    line,
                    format!("mqtt.{key}"),
                    format!("cannot read {}: {e}; {what}", p.display()),
                );
            }
            Some(p)
        };
        let ca = file(
            &mut w,
            "ca",
            "the CA certificate that issued the broker's certificate",
        );
        let cert = file(&mut w, "cert", "this device's certificate");
        let key = file(&mut w, "key", "this device's private key");
        if tls && ca.is_none() {
            w.error(
                uline,
                "mqtt.ca",
                "missing: mqtts:// needs the CA certificate that issued the broker's certificate",
            );
        }
        if cert.is_some() != key.is_some() {
            w.error(
                uline,
                "mqtt.cert",
                "cert and key go together: set both for mutual TLS, or neither",
            );
        }
        let (prefix, pline) = w.string(&mut m, "prefix", "neoflix");
        if let Err(e) = crate::check_topic_prefix(&prefix) {
            w.error(pline, "mqtt.prefix", e);
        }
        let (status_interval_secs, _) =
            w.int(&mut m, "status_interval_secs", 30, (5, 3600), " seconds");
        let home_assistant = w.boolean(&mut m, "home_assistant", false);
        let (discovery_prefix, dline) = w.string(&mut m, "discovery_prefix", "homeassistant");
        if let Err(e) = crate::check_topic_prefix(&discovery_prefix) {
            w.error(dline, "mqtt.discovery_prefix", e);
        }
        w.finish(m);
        Some(Mqtt {
            url,
            ca,
            identity: cert.zip(key),
            prefix,
            status_interval_secs: status_interval_secs as u32,
            home_assistant,
            discovery_prefix,
        })
    } else {
        None
    };

    let pedal = gpio(&mut w, root, "pedal", true);
    let light = gpio(&mut w, root, "light", false);
    let privacy_switch = gpio(&mut w, root, "privacy_switch", true);
    let foot_switch = if let Some(mut f) = w.optional_section(root, "foot_switch") {
        let device = f.has("device").then(|| w.path(&mut f, "device", "").0);
        let name = f.has("name").then(|| w.string(&mut f, "name", "").0);
        if device.is_some() == name.is_some() {
            w.error(
                f.line(),
                "foot_switch.device",
                "set exactly one of device (/dev/input/by-id/...) or name (as in /proc/bus/input/devices)",
            );
        }
        let (name_of_key, kline) = w.string(&mut f, "key", "KEY_B");
        let key = match name_of_key.parse::<evdev::KeyCode>() {
            Ok(k) if name_of_key.starts_with("KEY_") || name_of_key.starts_with("BTN_") => k,
            _ => {
                w.error(
                    kline,
                    "foot_switch.key",
                    format!("{} is not a key name: use a Linux key code name such as KEY_B or BTN_LEFT (evtest shows what the pedal sends)", shown(&name_of_key)),
                );
                evdev::KeyCode::KEY_B
            }
        };
        let grab = w.boolean(&mut f, "grab", true);
        w.finish(f);
        Some(FootSwitch {
            device,
            name,
            key,
            grab,
        })
    } else {
        None
    };

    let mut r = w.section(root, "readiness");
    let require_clock_sync = w.boolean(&mut r, "require_clock_sync", true);
    let (cert_min_days, _) = w.int(&mut r, "cert_min_days", 14, (0, 365), " days");
    w.finish(r);

    w.finish(top);
    let warnings = w.into_result()?;
    let cfg = Config {
        device_id,
        capture: Capture {
            source,
            device,
            serial,
            input_format,
            controls,
            width: width as u32,
            height: height as u32,
            fps: fps as u32,
            fragment_secs: fragment_secs as u32,
            encoder,
            bitrate_kbps: bitrate_kbps as u32,
            x264_preset,
        },
        second_camera,
        audio,
        ring: Ring {
            dir: ring_dir,
            preroll_secs: preroll_secs as u32,
            max_bytes,
        },
        recordings: Recordings {
            dir: rec_dir,
            recipient,
            max_duration_secs: max_duration_secs as u32,
            post_roll_secs: post_roll_secs as u32,
            long_press_ms: long_press_ms as u32,
        },
        control: Control { socket },
        upload,
        signing,
        mqtt,
        pedal,
        light,
        privacy_switch,
        foot_switch,
        readiness: Readiness {
            require_clock_sync,
            cert_min_days: cert_min_days as u32,
        },
    };
    Ok((cfg, warnings))
}

/// Whether two device paths name the same device: as written, or where both exist, as what
/// they lead to (a `/dev/v4l/by-id/` name and its `/dev/videoN`).
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    a == b
        || matches!(
            (std::fs::canonicalize(a), std::fs::canonicalize(b)),
            (Ok(x), Ok(y)) if x == y
        )
}

/// `SECTION.serial`: a USB serial number, when given.
fn usb_serial(w: &mut Walker, sec: &mut Section, section: &str) -> Option<String> {
    sec.has("serial").then(|| {
        let (serial, line) = w.string(sec, "serial", "");
        if serial.is_empty() || serial.len() > 128 || serial.chars().any(char::is_control) {
            w.error(
                line,
                format!("{section}.serial"),
                format!(
                    "{} is not a USB serial number (neoflix camera list shows them)",
                    shown(&serial)
                ),
            );
        }
        serial
    })
}

/// `[capture.controls]`: each key a control, each value `"auto"`, a number, a boolean or a
/// menu entry's name. The four a room needs are checked here; other names are the camera's own
/// (`neoflix camera list`), checked against the camera when capture starts.
fn camera_controls(
    w: &mut Walker,
    cap: &mut Section,
    section: &str,
) -> Vec<(String, ControlValue)> {
    let Some((v, line, _)) = w.value(cap, "controls") else {
        return Vec::new();
    };
    let DeValue::Table(t) = v.get_ref() else {
        w.error(
            line,
            format!("{section}.controls"),
            format!("expected a table [{section}.controls]"),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    // In the file's order: a camera's own controls may depend on one another (an automatic
    // mode before the value it lets through).
    let mut entries: Vec<_> = t.iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    for (k, v) in entries {
        let key = k.get_ref().to_string();
        let line = w.line_of(k.span().start);
        let opt = format!(
            "{section}.controls.{}",
            neoflix_confwalk::cut(&key, 60).escape_debug()
        );
        let value = match v.get_ref() {
            // Power-line frequency's "auto" is one of its menu entries, not an automatic mode.
            DeValue::String(s) if s.as_ref() == "auto" && key != "power_line_frequency" => {
                ControlValue::Auto
            }
            DeValue::String(s) if s.len() <= 64 && !s.chars().any(char::is_control) => {
                ControlValue::Entry(s.to_string())
            }
            DeValue::Integer(i) => match i.as_str().parse::<i64>() {
                Ok(n) => ControlValue::Value(n),
                Err(_) => {
                    w.error(line, opt, "expected a whole number");
                    continue;
                }
            },
            DeValue::Boolean(b) => ControlValue::Value(i64::from(*b)),
            other => {
                w.error(
                    line,
                    opt,
                    format!(
                        "expected \"auto\", a number, true/false or a menu entry's name, found {}",
                        type_name(other)
                    ),
                );
                continue;
            }
        };
        let problem = match (key.as_str(), &value) {
            ("power_line_frequency", ControlValue::Entry(e))
                if ["50hz", "60hz", "disabled", "auto"].contains(&e.to_ascii_lowercase().replace(' ', "").as_str()) =>
            {
                None
            }
            ("power_line_frequency", _) => Some("use \"50hz\" (Europe, most of Asia and Africa), \"60hz\" (the Americas) or \"disabled\"".to_string()),
            ("exposure", ControlValue::Value(n)) if !(1..=100_000).contains(n) => {
                Some(format!("{n} is out of range: 1-100000 (units of 100 µs), or \"auto\""))
            }
            ("white_balance", ControlValue::Value(n)) if !(1000..=15_000).contains(n) => {
                Some(format!("{n} is out of range: 1000-15000 kelvin, or \"auto\""))
            }
            ("focus", ControlValue::Value(n)) if !(0..=10_000).contains(n) => {
                Some(format!("{n} is out of range: 0-10000 (the camera's focus units)"))
            }
            ("exposure" | "white_balance" | "focus", ControlValue::Entry(e)) => {
                Some(format!("'{e}': use \"auto\" or a number"))
            }
            _ => None,
        };
        if let Some(p) = problem {
            w.error(line, opt, p);
            continue;
        }
        if key == "focus" && value == ControlValue::Auto {
            w.warn(line, opt, "a wall camera with automatic focus hunts when people move in front of it: fix the focus (neoflix camera set DEVICE focus=N to find N)");
        }
        out.push((key, value));
    }
    out
}

/// An ingest server's base URL: `https://`, a host, no user, query or fragment, nothing that
/// URL parsing would quietly drop. Returns it normalised, to tell one server listed twice.
fn check_upload_url(url: &str) -> Result<String, &'static str> {
    const MUST: &str = "must be an https:// URL of the ingest server: https://host[:port][/path]";
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(
            "has spaces or control characters; must be an https:// URL of the ingest server",
        );
    }
    let u = url::Url::parse(url).map_err(|_| MUST)?;
    if u.scheme() != "https" || u.host_str().is_none_or(str::is_empty) || u.port() == Some(0) {
        return Err(MUST);
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err("must not carry a user or password (the box is known by its certificate)");
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err("must not have a query (?) or fragment (#): the protocol's paths follow it");
    }
    Ok(u.as_str().trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn recipient() -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let pk = neoflix_seal::DepartmentPublicKey::from_bytes(&[9; 32]).unwrap();
        f.write_all(pk.to_file_text().as_bytes()).unwrap();
        f
    }

    fn ok(extra: &str) -> Config {
        let r = recipient();
        let text = format!(
            "device_id = \"room-1\"\n[recordings]\nrecipient = \"{}\"\n{extra}",
            r.path().display()
        );
        parse("t.toml", &text).unwrap().0
    }

    #[test]
    fn the_documented_example_parses_with_its_values() {
        let r = recipient();
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/neoflixd.toml"
        ))
        .unwrap()
        .replace(
            "/etc/neoflix/department.pub",
            &r.path().display().to_string(),
        );
        let (c, warnings) = parse("neoflixd.toml", &text).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(c.device_id, "room-1");
        assert_eq!(c.capture.width, 1280);
        assert_eq!(c.ring.dir, PathBuf::from("/run/neoflix/ring"));
        assert_eq!(c.control.socket, PathBuf::from("/run/neoflix/control.sock"));
    }

    #[test]
    fn a_preroll_larger_than_the_rings_bound_is_warned_of() {
        let r = recipient();
        let parse_with = |ring: &str| {
            let text = format!(
                "device_id = \"room-1\"\n[capture]\nbitrate_kbps = 8000\n[ring]\ndir = \"/var/lib/neoflix/ring\"\n{ring}\n[recordings]\nrecipient = \"{}\"\n",
                r.path().display()
            );
            parse("t.toml", &text).unwrap().1
        };
        // 600 s at 8 Mbit/s is about 660 MB: more than the default 512 MiB.
        let w = parse_with("preroll_secs = 600");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].to_string().contains("ring.max_bytes (512 MiB)"),
            "{}",
            w[0]
        );
        assert!(parse_with("preroll_secs = 600\nmax_bytes = 1073741824").is_empty());
        assert!(parse_with("preroll_secs = 60").is_empty());
    }

    #[test]
    fn upload_url_is_one_server_or_a_list_of_replicas() {
        let r = recipient();
        let files = "ca = \"/dev/null\"\ncert = \"/dev/null\"\nkey = \"/dev/null\"\n";
        let parse_with = |url: &str| {
            let text = format!(
                "device_id = \"room-1\"\n[recordings]\nrecipient = \"{}\"\n[upload]\n{url}\n{files}",
                r.path().display()
            );
            parse("u.toml", &text).map(|(c, _)| c.upload.unwrap().urls)
        };
        assert_eq!(
            parse_with("url = \"https://ingest:8443\"").unwrap(),
            ["https://ingest:8443"]
        );
        assert_eq!(
            parse_with("url = [\"https://a.example\", \"https://b.example:8443/\"]").unwrap(),
            ["https://a.example", "https://b.example:8443/"]
        );
        assert_eq!(
            parse_with("url = \"https://[::1]:8443\"").unwrap(),
            ["https://[::1]:8443"]
        );
        for (url, says) in [
            ("", "missing: the https:// URL"),
            ("url = []", "expected 1 to 8 strings, found 0"),
            (
                "url = [\"https://a\", 7]",
                "expected a string in the array, found an integer",
            ),
            ("url = 7", "expected a string or an array of strings"),
            (
                "url = [\"https://a\", \"http://b\"]",
                "'http://b' must be an https:// URL",
            ),
            ("url = \"https://:8443\"", "must be an https:// URL"),
            ("url = \"https://h:99999\"", "must be an https:// URL"),
            ("url = \"https://h:0\"", "must be an https:// URL"),
            ("url = \"https://[::1\"", "must be an https:// URL"),
            ("url = \"https://h \"", "has spaces"),
            (
                "url = \"https://u:pw@h\"",
                "must not carry a user or password",
            ),
            ("url = \"https://h/?x=1\"", "must not have a query"),
            ("url = \"https://h#x\"", "must not have a query"),
            ("url = [\"https://a\", \"https://a\"]", "is listed twice"),
            (
                "url = [\"https://a\", \"https://A:443/\"]",
                "is listed twice",
            ),
        ] {
            let e = parse_with(url).unwrap_err().to_string();
            assert!(e.contains("upload.url") && e.contains(says), "{url}: {e}");
        }
        let many = (0..9)
            .map(|i| format!("\"https://h{i}\""))
            .collect::<Vec<_>>();
        let e = parse_with(&format!("url = [{}]", many.join(", ")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected 1 to 8 strings, found 9"), "{e}");
    }

    #[test]
    fn defaults_fill_what_is_left_out() {
        let c = ok("");
        assert_eq!(c.capture.source, SourceKind::Test);
        assert_eq!(
            (c.capture.width, c.capture.height, c.capture.fps),
            (1280, 720, 30)
        );
        assert_eq!(c.ring.preroll_secs, 60);
        assert_eq!(c.recordings.max_duration_secs, 5400);
        assert_eq!(c.recordings.long_press_ms, 2000);
    }

    #[test]
    fn every_error_is_reported_at_once_with_line_and_option() {
        let text = "device_id = \"room 1\"\n\
                    [capture]\n\
                    fps = \"thirty\"\n\
                    colour = true\n\
                    width = 99999\n\
                    [ring]\n\
                    preroll_secs = -1\n\
                    [recordings]\n\
                    recipient = \"/nonexistent/department.pub\"\n\
                    [extra]\n\
                    a = 1\n";
        let err = parse("bad.toml", text).unwrap_err();
        let ConfigError::Invalid { problems, .. } = &err else {
            panic!("{err}")
        };
        let found: Vec<(usize, &str)> = problems
            .iter()
            .map(|p| (p.line, p.option.as_str()))
            .collect();
        assert_eq!(
            found,
            vec![
                (1, "device_id"),
                (3, "capture.fps"),
                (4, "capture.colour"),
                (5, "capture.width"),
                (7, "ring.preroll_secs"),
                (9, "recordings.recipient"),
                (10, "extra"),
            ],
            "{err}"
        );
        let shown = err.to_string();
        assert!(shown.starts_with("7 errors in bad.toml"), "{shown}");
        assert!(
            shown.contains(
                "bad.toml:3: capture.fps: expected a whole number frames per second, found a string"
            ),
            "{shown}"
        );
        assert!(
            shown.contains(
                "bad.toml:9: recordings.recipient: cannot read /nonexistent/department.pub"
            ),
            "{shown}"
        );
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = parse("s.toml", "device_id = \"a\"\n[capture\nfps = 1\n").unwrap_err();
        assert!(
            err.to_string().contains("s.toml:2: TOML syntax error"),
            "{err}"
        );
    }

    #[test]
    fn a_secret_key_as_recipient_is_refused() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        // The first word of a secret key file is enough to be told apart.
        let secret = format!("{} {}\n", neoflix_seal::keys::SEC_TAG, "11".repeat(32));
        f.write_all(secret.as_bytes()).unwrap();
        let text = format!(
            "device_id = \"r\"\n[recordings]\nrecipient = \"{}\"\n",
            f.path().display()
        );
        let err = parse("k.toml", &text).unwrap_err();
        assert!(err.to_string().contains("SECRET"), "{err}");
    }

    #[test]
    fn relative_paths_and_bad_choices_are_refused() {
        let r = recipient();
        let text = format!(
            "device_id = \"r\"\n[capture]\nsource = \"usb\"\nencoder = \"ffmpeg\"\n[ring]\ndir = \"ring\"\n[recordings]\nrecipient = \"{}\"\n",
            r.path().display()
        );
        let err = parse("c.toml", &text).unwrap_err().to_string();
        assert!(
            err.contains(
                "c.toml:3: capture.source: 'usb' is not one of: test, test-h264, test-sync, v4l2"
            ),
            "{err}"
        );
        assert!(err.contains("capture.encoder"), "{err}");
        assert!(
            err.contains("c.toml:6: ring.dir: 'ring' must be an absolute path"),
            "{err}"
        );
    }

    #[test]
    fn triggers_light_and_broker_sections_read_and_check() {
        let c = ok(
            "[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nhome_assistant = true\n\
                    [pedal]\nchip = \"vmlab-sim\"\nline = \"pedal\"\nbias = \"pull-down\"\n\
                    [light]\nchip = \"/dev/gpiochip0\"\nline = 1\n\
                    [foot_switch]\nname = \"PCsensor FootSwitch\"\nkey = \"KEY_F13\"\n\
                    [readiness]\nrequire_clock_sync = false\n",
        );
        let m = c.mqtt.unwrap();
        assert_eq!((m.prefix.as_str(), m.home_assistant), ("neoflix", true));
        let p = c.pedal.unwrap();
        assert_eq!(p.line, LineRef::Name("pedal".into()));
        assert_eq!((p.debounce_ms, p.bias), (20, Bias::PullDown));
        assert_eq!(c.light.unwrap().line, LineRef::Offset(1));
        assert!(c.privacy_switch.is_none());
        assert!(c.foot_switch.unwrap().grab);
        assert!(!c.readiness.require_clock_sync);

        let r = recipient();
        let text = format!(
            "device_id = \"r\"\n[recordings]\nrecipient = \"{}\"\n\
             [mqtt]\nurl = \"mqtts://broker\"\nprefix = \"a/#\"\ncert = \"/nonexistent.crt\"\n\
             [pedal]\nline = true\nbias = \"up\"\n\
             [foot_switch]\nkey = \"B\"\n",
            r.path().display()
        );
        let err = parse("g.toml", &text).unwrap_err().to_string();
        for expected in [
            "g.toml:5: mqtt.ca: missing",
            "g.toml:6: mqtt.prefix",
            "g.toml:7: mqtt.cert: cannot read /nonexistent.crt",
            "mqtt.cert: cert and key go together",
            "pedal.chip: missing",
            "g.toml:9: pedal.line: expected a line name or offset, found a boolean",
            "g.toml:10: pedal.bias: 'up' is not one of",
            "foot_switch.device: set exactly one of device",
            "g.toml:12: foot_switch.key: 'B' is not a key name",
        ] {
            assert!(err.contains(expected), "{expected}\n{err}");
        }
    }

    #[test]
    fn foot_switch_keys_and_topic_prefixes_are_checked() {
        let r = recipient();
        let text = format!(
            "device_id = \"r\"\n[recordings]\nrecipient = \"{}\"\n[foot_switch]\nname = \"p\"\nkey = \"KEY_NOPE\"\n",
            r.path().display()
        );
        let err = parse("k.toml", &text).unwrap_err().to_string();
        assert!(
            err.contains("k.toml:6: foot_switch.key: 'KEY_NOPE' is not a key name"),
            "{err}"
        );
        assert_eq!(
            ok("[foot_switch]\nname = \"p\"\nkey = \"KEY_F13\"\n")
                .foot_switch
                .unwrap()
                .key,
            evdev::KeyCode::KEY_F13
        );
        assert!(crate::check_topic_prefix("hospital/nicu").is_ok());
        for bad in ["", "a/#", "a/+/b", "/a", "a/"] {
            assert!(crate::check_topic_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fixed_choices_are_parsed_into_their_types() {
        let c = ok("");
        assert_eq!(
            (
                c.capture.input_format,
                c.capture.encoder,
                c.capture.x264_preset
            ),
            (InputFormat::Auto, EncoderChoice::Auto, X264Preset::Veryfast)
        );
        let c = ok(
            "[capture]\nsource = \"v4l2\"\ninput_format = \"mjpeg\"\nencoder = \"v4l2h264enc\"\nx264_preset = \"ultrafast\"\n\
                    [privacy_switch]\nchip = \"c\"\nline = 3\nbias = \"pull-up\"\n",
        );
        assert_eq!(c.capture.source, SourceKind::V4l2);
        assert_eq!(c.capture.input_format, InputFormat::Mjpeg);
        assert_eq!(c.capture.encoder, EncoderChoice::V4l2);
        assert_eq!(c.capture.x264_preset, X264Preset::Ultrafast);
        assert_eq!(c.privacy_switch.unwrap().bias, Bias::PullUp);
        // Every documented name reads back as itself.
        fn round_trip<T: crate::Choice + std::fmt::Display>() {
            for name in T::NAMES {
                assert_eq!(name.parse::<T>().unwrap().to_string(), *name);
            }
        }
        round_trip::<SourceKind>();
        round_trip::<InputFormat>();
        round_trip::<EncoderChoice>();
        round_trip::<X264Preset>();
        round_trip::<Bias>();
    }

    #[test]
    fn a_bad_choice_names_the_option_the_line_and_every_accepted_value() {
        let r = recipient();
        let text = format!(
            "device_id = \"r\"\n[recordings]\nrecipient = \"{}\"\n\
             [capture]\ninput_format = \"yuyv\"\nencoder = \"x265enc\"\nx264_preset = \"placebo\"\nsource = 1\n\
             [pedal]\nchip = \"c\"\nline = 1\nbias = \"PULL-UP\"\n",
            r.path().display()
        );
        let err = parse("e.toml", &text).unwrap_err().to_string();
        for expected in [
            "e.toml:5: capture.input_format: 'yuyv' is not one of: auto, raw, mjpeg, h264",
            "e.toml:6: capture.encoder: 'x265enc' is not one of: auto, x264enc, v4l2h264enc, nvv4l2h264enc",
            "e.toml:7: capture.x264_preset: 'placebo' is not one of: ultrafast, superfast, veryfast, faster, fast, medium",
            "e.toml:8: capture.source: expected a string (one of: test, test-h264, test-sync, v4l2), found an integer",
            "e.toml:12: pedal.bias: 'PULL-UP' is not one of: as-is, disabled, pull-up, pull-down",
        ] {
            assert!(err.contains(expected), "{expected}\n{err}");
        }
        assert!(err.starts_with("5 errors"), "{err}");
    }

    #[test]
    fn a_second_camera_takes_the_first_ones_size_and_bitrate_unless_given() {
        let c = ok("[capture]\nwidth = 640\nheight = 360\nbitrate_kbps = 1500\n");
        assert_eq!(c.second_camera, None);
        let c = ok(
            "[capture]\nwidth = 640\nheight = 360\nbitrate_kbps = 1500\n\
             [second_camera]\ndevice = \"/dev/v4l/by-id/usb-Overhead-video-index0\"\n\
             [second_camera.controls]\nfocus = 30\n",
        );
        let sc = c.second_camera.expect("a second camera");
        assert_eq!(sc.source, SourceKind::V4l2);
        assert_eq!((sc.width, sc.height, sc.bitrate_kbps), (640, 360, 1500));
        assert_eq!(sc.input_format, InputFormat::Auto);
        assert_eq!(
            sc.controls,
            [("focus".to_string(), ControlValue::Value(30))]
        );
        let c =
            ok("[second_camera]\nsource = \"test\"\nwidth = 320\nheight = 240\nserial = \"X9\"\n");
        let sc = c.second_camera.unwrap();
        assert_eq!(
            (sc.source, sc.width, sc.height),
            (SourceKind::Test, 320, 240)
        );
        assert_eq!(sc.serial.as_deref(), Some("X9"));

        let r = recipient();
        let text = format!(
            "device_id = \"r\"\n[recordings]\nrecipient = \"{}\"\n\
             [second_camera]\nsource = \"usb\"\nwidth = 9\nserial = \"\"\nfps = 25\n[second_camera.controls]\nexposure = 0\n",
            r.path().display()
        );
        let err = parse("s.toml", &text).unwrap_err().to_string();
        for expected in [
            "s.toml:5: second_camera.source: 'usb' is not one of: test, test-h264, test-sync, v4l2",
            "s.toml:6: second_camera.width: 9 is out of range",
            "s.toml:7: second_camera.serial: '' is not a USB serial number",
            "s.toml:8: second_camera.fps: both views run at capture.fps",
            "s.toml:10: second_camera.controls.exposure: 0 is out of range",
        ] {
            assert!(err.contains(expected), "{expected}\n{err}");
        }
    }

    #[test]
    fn a_second_camera_must_be_named_be_another_camera_and_be_encoded_here() {
        let r = recipient();
        let parse_with = |capture: &str, second: &str| {
            let text = format!(
                "device_id = \"r\"\n[recordings]\nrecipient = \"{}\"\n[capture]\nsource = \"v4l2\"\n{capture}\n[second_camera]\n{second}",
                r.path().display()
            );
            parse("t.toml", &text)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let by_device = "device = \"/dev/v4l/by-id/room\"";
        let bad = |second: &str| parse_with(by_device, second).unwrap_err();
        let e = bad("width = 640\n");
        assert!(
            e.contains("t.toml:7: second_camera.device: name the second camera"),
            "{e}"
        );
        let e = bad("device = \"/dev/v4l/by-id/room\"\n");
        assert!(
            e.contains("t.toml:8: second_camera.device: this is the camera [capture] records"),
            "{e}"
        );
        let e = bad("device = \"/dev/v4l/by-id/top\"\ninput_format = \"h264\"\n");
        assert!(
            e.contains("t.toml:9: second_camera.input_format: a second camera is encoded here"),
            "{e}"
        );
        let e = bad("source = \"test-h264\"\n");
        assert!(
            e.contains("second_camera.input_format: a second camera is encoded here"),
            "{e}"
        );
        parse_with(by_device, "device = \"/dev/v4l/by-id/top\"\n").expect("another camera");

        // The first camera chosen by serial number: the same serial is refused; its `device`
        // (unused then) is not compared.
        let by_serial = "serial = \"R1\"";
        let e = parse_with(by_serial, "serial = \"R1\"\n").unwrap_err();
        assert!(e.contains("this is the camera [capture] records"), "{e}");
        parse_with(by_serial, "device = \"/dev/video0\"\n").expect("another camera");
    }

    #[test]
    fn camera_controls_and_serial_are_read_in_order_and_checked() {
        let c = ok(
            "[capture]\nserial = \"A1B2C3\"\n[capture.controls]\npower_line_frequency = \"50hz\"\nexposure = \"auto\"\nwhite_balance = 4600\nfocus = 20\nbrightness = 140\nbacklight_compensation = true\n",
        );
        assert_eq!(c.capture.serial.as_deref(), Some("A1B2C3"));
        assert_eq!(
            c.capture.controls,
            [
                (
                    "power_line_frequency".to_string(),
                    ControlValue::Entry("50hz".into())
                ),
                ("exposure".to_string(), ControlValue::Auto),
                ("white_balance".to_string(), ControlValue::Value(4600)),
                ("focus".to_string(), ControlValue::Value(20)),
                ("brightness".to_string(), ControlValue::Value(140)),
                ("backlight_compensation".to_string(), ControlValue::Value(1)),
            ]
        );
        let r = recipient();
        let text = format!(
            "device_id = \"r\"\n[recordings]\nrecipient = \"{}\"\n\
             [capture.controls]\npower_line_frequency = \"55hz\"\nexposure = 0\nwhite_balance = \"warm\"\nfocus = \"auto\"\nzoom = [1]\n",
            r.path().display()
        );
        let err = parse("k.toml", &text).unwrap_err().to_string();
        for expected in [
            "k.toml:5: capture.controls.power_line_frequency: use \"50hz\"",
            "k.toml:6: capture.controls.exposure: 0 is out of range",
            "k.toml:7: capture.controls.white_balance: 'warm': use \"auto\" or a number",
            "k.toml:9: capture.controls.zoom: expected \"auto\", a number",
        ] {
            assert!(err.contains(expected), "{expected}\n{err}");
        }
        let (_, warnings) = parse(
            "f.toml",
            &format!(
                "device_id = \"r\"\n[recordings]\nrecipient = \"{}\"\n[capture.controls]\nfocus = \"auto\"\n",
                r.path().display()
            ),
        )
        .unwrap();
        assert_eq!(warnings[0].option, "capture.controls.focus");
    }

    #[test]
    fn sound_is_off_without_its_section_and_checked_with_it() {
        assert_eq!(ok("").audio, None);
        let a = ok("[audio]\n").audio.unwrap();
        assert_eq!(
            (
                a.source,
                a.device.as_str(),
                a.channels,
                a.rate,
                a.bitrate_kbps
            ),
            (AudioSourceKind::Alsa, "default", 1, 48_000, 32)
        );
        let a = ok("[audio]\nsource = \"alsa\"\ndevice = \"hw:CARD=Loopback,DEV=1\"\nchannels = 2\nrate = 16000\nbitrate_kbps = 64\n")
            .audio
            .unwrap();
        assert_eq!(
            (a.device.as_str(), a.channels, a.rate, a.bitrate_kbps),
            ("hw:CARD=Loopback,DEV=1", 2, 16_000, 64)
        );
        let r = recipient();
        let text = format!(
            "device_id = \"r\"\n[recordings]\nrecipient = \"{}\"\n\
             [audio]\nsource = \"pulse\"\ndevice = \"\"\nchannels = 6\nrate = 44100\nbitrate_kbps = 1000\nvolume = 3\n",
            r.path().display()
        );
        let err = parse("a.toml", &text).unwrap_err().to_string();
        for expected in [
            "a.toml:5: audio.source: 'pulse' is not one of: test, alsa",
            "a.toml:6: audio.device: '' is not an ALSA device name",
            "a.toml:7: audio.channels: 6 is out of range",
            "a.toml:8: audio.rate: 44100 is not a rate Opus encodes",
            "a.toml:9: audio.bitrate_kbps: 1000 is out of range",
            "a.toml:10: audio.volume",
        ] {
            assert!(err.contains(expected), "{expected}\n{err}");
        }
        round_trip_audio();
        fn round_trip_audio() {
            for name in AudioSourceKind::NAMES {
                assert_eq!(name.parse::<AudioSourceKind>().unwrap().to_string(), *name);
            }
        }
    }

    #[test]
    fn a_long_preroll_in_ram_is_a_warning() {
        let r = recipient();
        let text = format!(
            // (max_bytes large enough for it: that has a warning of its own.)
            "device_id = \"r\"\n[ring]\npreroll_secs = 1800\nmax_bytes = 2147483648\n[recordings]\nrecipient = \"{}\"\n",
            r.path().display()
        );
        let (_, warnings) = parse("w.toml", &text).unwrap();
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].option, "ring.preroll_secs");
    }
}

#[cfg(test)]
mod robustness {
    /// Config files are edited by hand: any mangling of the example gives errors, never a panic.
    #[test]
    fn mangled_configs_give_errors_not_panics() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/neoflixd.toml"
        ))
        .unwrap();
        let alphabet = b"[]=\"'\n #.-_0123456789abcxyz{}";
        let mut seed = 0x1234_5678_9abc_def1u64;
        for _ in 0..3000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut b = text.clone().into_bytes();
            let pos = (seed as usize) % b.len();
            match seed % 3 {
                0 => b[pos] = alphabet[(seed >> 8) as usize % alphabet.len()],
                1 => {
                    b.remove(pos);
                }
                _ => b.insert(pos, alphabet[(seed >> 8) as usize % alphabet.len()]),
            }
            let s = String::from_utf8_lossy(&b);
            let _ = super::parse("m.toml", &s);
        }
    }
}
