//! The room's hardware around the camera: the GPIO foot pedal, the GPIO privacy switch, the USB
//! HID foot switch (evdev) and the recording light.
//!
//! Each runs as a task that survives its device going away: it reports the state in
//! [`crate::Devices`] (shown in the status, and `ready` turns false), retries, and works again
//! when the device is back, without a restart. Presses go to the engine as
//! [`Input::Pedal`]; edges are the kernel's, debounced by the kernel (GPIO uAPI v2).

use std::path::PathBuf;
use std::time::Duration;

use gpiocdev::line::{Bias, EdgeDetection, EdgeKind, Value};
use neoflix_config::{FootSwitch, GpioLine, LineRef};
use tokio::sync::{mpsc, watch};

use crate::Devices;
use crate::engine::Input;
use crate::health::Pattern;

/// How often a missing device is looked for again.
const RETRY: Duration = Duration::from_secs(1);

/// Finds the chip (path or label) and the line (name or offset) of a configured GPIO line.
pub fn resolve(cfg: &GpioLine) -> Result<(PathBuf, u32), String> {
    let chip = if cfg.chip.starts_with('/') {
        gpiocdev::chip::is_chip(&cfg.chip).map_err(|e| format!("{}: {e}", cfg.chip))?
    } else {
        let chips = gpiocdev::chip::chips().map_err(|e| e.to_string())?;
        chips
            .into_iter()
            .find(|p| {
                gpiocdev::chip::Chip::from_path(p)
                    .and_then(|c| c.info())
                    .is_ok_and(|i| i.label == cfg.chip || i.name == cfg.chip)
            })
            .ok_or_else(|| format!("no GPIO chip labelled '{}'", cfg.chip))?
    };
    let c =
        gpiocdev::chip::Chip::from_path(&chip).map_err(|e| format!("{}: {e}", chip.display()))?;
    let offset = match &cfg.line {
        LineRef::Offset(o) => {
            let n = c.info().map_err(|e| e.to_string())?.num_lines;
            if *o >= n {
                return Err(format!("{} has {n} lines, no line {o}", chip.display()));
            }
            *o
        }
        LineRef::Name(name) => {
            c.find_line_info(name)
                .ok_or_else(|| format!("{} has no line named '{name}'", chip.display()))?
                .offset
        }
    };
    Ok((chip, offset))
}

/// The kernel's bias for the configured one; `as-is` asks for none.
fn bias(bias: neoflix_config::Bias) -> Option<Bias> {
    match bias {
        neoflix_config::Bias::AsIs => None,
        neoflix_config::Bias::Disabled => Some(Bias::Disabled),
        neoflix_config::Bias::PullUp => Some(Bias::PullUp),
        neoflix_config::Bias::PullDown => Some(Bias::PullDown),
    }
}

/// Requests the configured line as an input with edge events (`output = false`) or as an
/// output, initially off. Chip lookup opens every GPIO chip: off the async runtime.
async fn request_line(cfg: &GpioLine, output: bool) -> Result<gpiocdev::Request, String> {
    let cfg = cfg.clone();
    tokio::task::spawn_blocking(move || {
        let (chip, offset) = resolve(&cfg)?;
        let mut b = gpiocdev::Request::builder();
        b.on_chip(&chip).with_consumer("neoflixd").with_line(offset);
        if output {
            b.as_output(Value::Inactive);
        } else {
            b.as_input()
                .with_edge_detection(EdgeDetection::BothEdges)
                .with_debounce_period(Duration::from_millis(cfg.debounce_ms.into()));
            if let Some(bias) = bias(cfg.bias) {
                b.with_bias(bias);
            }
        }
        if cfg.active_low {
            b.as_active_low();
        }
        b.request()
            .map_err(|e| format!("{} line {offset}: {e}", chip.display()))
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()))
}

/// Which GPIO input a task watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Active = pressed.
    Pedal,
    /// Active = privacy on.
    PrivacySwitch,
}

impl Role {
    /// Its name in the status and the config.
    pub fn name(self) -> &'static str {
        match self {
            Role::Pedal => "pedal",
            Role::PrivacySwitch => "privacy_switch",
        }
    }

    fn input(self, active: bool) -> Input {
        match self {
            Role::Pedal => Input::Pedal { down: active },
            Role::PrivacySwitch => Input::PrivacySwitch { on: active },
        }
    }
}

/// Sends to the engine unless shutting down. False: stop.
async fn deliver(tx: &mpsc::Sender<Input>, input: Input, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        r = tx.send(input) => r.is_ok(),
        _ = stop.changed() => false,
    }
}

/// Waits `d`, or returns false when shutting down.
async fn pause(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop.changed() => false,
    }
}

/// Watches a GPIO input line until shutdown.
pub async fn watch_gpio(
    role: Role,
    cfg: GpioLine,
    devices: Devices,
    tx: mpsc::Sender<Input>,
    mut stop: watch::Receiver<bool>,
) {
    let name = role.name();
    loop {
        let req = match request_line(&cfg, false).await {
            Ok(r) => gpiocdev::tokio::AsyncRequest::new(r),
            Err(e) => {
                if devices.set(name, &format!("unavailable: {e}")) {
                    log::error!(input = name; "{e}; check [{name}] chip and line (gpioinfo lists them); retrying");
                    let _ = tx.try_send(Input::DevicesChanged);
                }
                if !pause(RETRY * 5, &mut stop).await {
                    return;
                }
                continue;
            }
        };
        devices.set(name, "ok");
        let _ = tx.try_send(Input::DevicesChanged);
        let initial = req.as_ref().lone_value().map(|v| v == Value::Active);
        log::info!(input = name, active = initial.as_ref().is_ok_and(|a| *a); "GPIO line ready");
        match (role, initial) {
            (Role::PrivacySwitch, Ok(on)) if !deliver(&tx, role.input(on), &mut stop).await => {
                return;
            }
            (Role::Pedal, Ok(true)) => {
                log::warn!(input = name; "the pedal is held down at start: ignored until released (stuck pedal or wrong active_low?)");
            }
            _ => {}
        }
        loop {
            let ev = tokio::select! {
                ev = req.read_edge_event() => ev,
                _ = stop.changed() => return,
            };
            match ev {
                Ok(ev) => {
                    let active = ev.kind == EdgeKind::Rising;
                    if !deliver(&tx, role.input(active), &mut stop).await {
                        return;
                    }
                }
                Err(e) => {
                    devices.set(name, &format!("unavailable: {e}"));
                    log::error!(input = name; "reading the GPIO line failed: {e}; retrying");
                    let _ = tx.try_send(Input::DevicesChanged);
                    break;
                }
            }
        }
    }
}

/// Drives the recording light until shutdown, then switches it off.
pub async fn drive_light(
    cfg: GpioLine,
    devices: Devices,
    tx: mpsc::Sender<Input>,
    mut pattern: watch::Receiver<Pattern>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let req = match request_line(&cfg, true).await {
            Ok(r) => r,
            Err(e) => {
                if devices.set("light", &format!("unavailable: {e}")) {
                    log::error!("recording light: {e}; check [light] chip and line; retrying");
                    let _ = tx.try_send(Input::DevicesChanged);
                }
                if !pause(RETRY * 5, &mut stop).await {
                    return;
                }
                continue;
            }
        };
        devices.set("light", "ok");
        let _ = tx.try_send(Input::DevicesChanged);
        let mut lit = false;
        loop {
            let p = *pattern.borrow_and_update();
            let (want, hold) = match p {
                Pattern::Off => (false, None),
                Pattern::On => (true, None),
                Pattern::SlowBlink => (!lit, Some(Duration::from_millis(500))),
                Pattern::FastBlink => (!lit, Some(Duration::from_millis(125))),
            };
            let value = if want { Value::Active } else { Value::Inactive };
            if let Err(e) = req.set_lone_value(value) {
                devices.set("light", &format!("unavailable: {e}"));
                log::error!("recording light: {e}; retrying");
                let _ = tx.try_send(Input::DevicesChanged);
                break;
            }
            lit = want;
            let stopped = match hold {
                None => tokio::select! {
                    r = pattern.changed() => r.is_err(),
                    _ = stop.changed() => true,
                },
                Some(d) => tokio::select! {
                    _ = tokio::time::sleep(d) => false,
                    r = pattern.changed() => r.is_err(),
                    _ = stop.changed() => true,
                },
            };
            if stopped {
                let _ = req.set_lone_value(Value::Inactive);
                return;
            }
        }
        if !pause(RETRY, &mut stop).await {
            return;
        }
    }
}

fn open_foot_switch(cfg: &FootSwitch) -> Result<(PathBuf, evdev::Device), String> {
    if let Some(path) = &cfg.device {
        let d = evdev::Device::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        return Ok((path.clone(), d));
    }
    let want = cfg.name.as_deref().unwrap_or_default();
    evdev::enumerate()
        .find(|(_, d)| d.name() == Some(want))
        .ok_or_else(|| format!("no input device named '{want}'"))
}

/// Reads a USB HID foot switch until shutdown; follows it through unplug and re-plug.
pub async fn watch_foot_switch(
    cfg: FootSwitch,
    key: evdev::KeyCode,
    devices: Devices,
    tx: mpsc::Sender<Input>,
    mut stop: watch::Receiver<bool>,
) {
    let mut told = false;
    loop {
        // Opening scans /dev/input: a handful of opens, off the runtime's worker anyway.
        let c = cfg.clone();
        let found = tokio::task::spawn_blocking(move || open_foot_switch(&c))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        let (path, mut dev) = match found {
            Ok(d) => d,
            Err(e) => {
                if devices.set("foot_switch", "unplugged") || !told {
                    log::warn!(input = "foot_switch"; "foot switch not found ({e}): plug it in; watching for it");
                    told = true;
                    let _ = tx.try_send(Input::DevicesChanged);
                }
                if !pause(RETRY, &mut stop).await {
                    return;
                }
                continue;
            }
        };
        if !dev.supported_keys().is_some_and(|k| k.contains(key)) {
            let e = format!(
                "{} does not send {key:?}: check foot_switch.key",
                path.display()
            );
            if devices.set("foot_switch", &format!("unusable: {e}")) {
                log::error!(input = "foot_switch"; "{e}");
                let _ = tx.try_send(Input::DevicesChanged);
            }
            if !pause(RETRY * 5, &mut stop).await {
                return;
            }
            continue;
        }
        if cfg.grab
            && let Err(e) = dev.grab()
        {
            log::warn!(input = "foot_switch"; "cannot grab {}: {e}; its key also reaches other programs", path.display());
        }
        let mut events = match dev.into_event_stream() {
            Ok(s) => s,
            Err(e) => {
                log::error!(input = "foot_switch"; "{}: {e}", path.display());
                if !pause(RETRY, &mut stop).await {
                    return;
                }
                continue;
            }
        };
        devices.set("foot_switch", "ok");
        told = false;
        log::info!(input = "foot_switch", device = path.display().to_string().as_str(); "foot switch connected");
        let _ = tx.try_send(Input::DevicesChanged);
        let mut down = false;
        loop {
            let ev = tokio::select! {
                ev = events.next_event() => ev,
                _ = stop.changed() => return,
            };
            match ev {
                Ok(ev) => {
                    if let evdev::EventSummary::Key(_, code, value) = ev.destructure()
                        && code == key
                        && (value == 0 || value == 1)
                    {
                        // 2 is auto-repeat while held: not a new press.
                        down = value == 1;
                        if !deliver(&tx, Input::Pedal { down }, &mut stop).await {
                            return;
                        }
                    }
                }
                Err(e) => {
                    log::warn!(input = "foot_switch"; "foot switch gone ({e}): plug it back in");
                    devices.set("foot_switch", "unplugged");
                    let _ = tx.try_send(Input::DevicesChanged);
                    if down {
                        // Unplugged while held: release it, or a hold would turn into a stop.
                        let _ = deliver(&tx, Input::Pedal { down: false }, &mut stop).await;
                    }
                    break;
                }
            }
        }
    }
}
