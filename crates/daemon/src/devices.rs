//! The room's hardware around the camera: the GPIO foot pedal, the GPIO privacy switch, the USB
//! HID foot switch (evdev) and the recording light.
//!
//! Each runs as a task that survives its device going away: it reports the state in
//! [`crate::Devices`] (shown in the status, and `ready` turns false), retries, and works again
//! when the device is back, without a restart. Presses go to the conductor as
//! [`Input::Pedal`]; edges are the kernel's, debounced by the kernel (GPIO uAPI v2), and carry
//! the kernel's timestamp of the edge (`CLOCK_MONOTONIC`, for evdev too: the device's clock is
//! switched to it), moved onto the runtime's clock ([`edge_instant`]). So a long press is
//! measured on the pedal, from press to release, however late either edge is read.
//!
//! The light follows the published status ([`Published::light`]); it decides nothing.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use gpiocdev::line::{Bias, EdgeDetection, EdgeKind, EventClock, Value};
use neoflix_config::{FootSwitch, GpioLine, LineRef};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::Devices;
use crate::conductor::Input;
use crate::health::Pattern;
use crate::status::Published;

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
                .with_event_clock(EventClock::Monotonic)
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

    fn input(self, active: bool, at: Instant) -> Input {
        match self {
            Role::Pedal => Input::Pedal { down: active, at },
            Role::PrivacySwitch => Input::PrivacySwitch { on: active, at },
        }
    }
}

/// `CLOCK_MONOTONIC` now: the clock of GPIO edge events (and of evdev's, once switched).
fn monotonic_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// When an edge the kernel stamped `edge` (on a clock that reads `clock_now` now) happened, on
/// the runtime's clock, which reads `now`: its age is the same on both. An edge stamped in the
/// future (another clock) counts as now.
pub fn edge_instant(edge: Duration, clock_now: Duration, now: Instant) -> Instant {
    now.checked_sub(clock_now.saturating_sub(edge))
        .unwrap_or(now)
}

/// Sends to the conductor unless shutting down. False: stop.
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
            (Role::PrivacySwitch, Ok(on))
                if !deliver(&tx, role.input(on, Instant::now()), &mut stop).await =>
            {
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
                    let at = edge_instant(
                        Duration::from_nanos(ev.timestamp_ns),
                        monotonic_now(),
                        Instant::now(),
                    );
                    if !deliver(&tx, role.input(active, at), &mut stop).await {
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

/// How long each half of a blink lasts.
fn blink(p: Pattern) -> Option<Duration> {
    match p {
        Pattern::Off | Pattern::On => None,
        Pattern::SlowBlink => Some(Duration::from_millis(500)),
        Pattern::FastBlink => Some(Duration::from_millis(125)),
    }
}

/// Drives the recording light until shutdown, then switches it off.
pub async fn drive_light(
    cfg: GpioLine,
    devices: Devices,
    tx: mpsc::Sender<Input>,
    mut status: watch::Receiver<Published>,
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
        // The pattern shown, whether the light is lit, and when a blink turns it over next. The
        // status changes often (its clock fields); a blink keeps its rhythm through that.
        let mut shown: Option<Pattern> = None;
        let mut lit = false;
        let mut turn_at: Option<Instant> = None;
        loop {
            let pattern = status.borrow_and_update().light;
            let now = Instant::now();
            let want = if shown != Some(pattern) {
                shown = Some(pattern);
                turn_at = blink(pattern).map(|d| now + d);
                match pattern {
                    Pattern::Off => false,
                    Pattern::On => true,
                    Pattern::SlowBlink | Pattern::FastBlink => !lit,
                }
            } else if let (Some(at), Some(d)) = (turn_at, blink(pattern))
                && now >= at
            {
                turn_at = Some(now + d);
                !lit
            } else {
                lit
            };
            let value = if want { Value::Active } else { Value::Inactive };
            if let Err(e) = req.set_lone_value(value) {
                devices.set("light", &format!("unavailable: {e}"));
                log::error!("recording light: {e}; retrying");
                let _ = tx.try_send(Input::DevicesChanged);
                break;
            }
            lit = want;
            let stopped = tokio::select! {
                _ = sleep_until(turn_at) => false,
                r = status.changed() => r.is_err(),
                _ = stop.changed() => true,
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

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
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

/// The clock a device's event timestamps are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventTime {
    /// `CLOCK_MONOTONIC`: steady, what edges are measured on.
    Monotonic,
    /// `CLOCK_REALTIME` (evdev's default): jumps when the clock is set.
    Realtime,
}

/// Switches the device's event timestamps to `CLOCK_MONOTONIC` (`EVIOCSCLOCKID`), so a press is
/// measured on a clock NTP does not step; says which clock they are on.
fn monotonic_events(dev: &evdev::Device) -> EventTime {
    // _IOW('E', 0xa0, int)
    const EVIOCSCLOCKID: libc::c_ulong = 0x4004_45a0;
    let clock: libc::c_int = libc::CLOCK_MONOTONIC;
    // SAFETY: the descriptor is the open evdev device; the kernel reads one int through the
    // pointer, which is valid for the call.
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), EVIOCSCLOCKID, &clock as *const libc::c_int) };
    if r == 0 {
        EventTime::Monotonic
    } else {
        log::warn!(input = "foot_switch"; "cannot switch the foot switch's event clock to CLOCK_MONOTONIC ({}): presses are timed on the wall clock", std::io::Error::last_os_error());
        EventTime::Realtime
    }
}

/// When an evdev event stamped `stamp` happened, on the runtime's clock. evdev hands the stamp
/// out as a `SystemTime` whatever the clock: on `CLOCK_MONOTONIC` it is the time since boot.
fn evdev_instant(stamp: SystemTime, clock: EventTime) -> Instant {
    let edge = stamp
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let clock_now = match clock {
        EventTime::Monotonic => monotonic_now(),
        EventTime::Realtime => SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    };
    edge_instant(edge, clock_now, Instant::now())
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
        let clock = monotonic_events(&dev);
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
                        let at = evdev_instant(ev.timestamp(), clock);
                        if !deliver(&tx, Input::Pedal { down, at }, &mut stop).await {
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
                        let up = Input::Pedal {
                            down: false,
                            at: Instant::now(),
                        };
                        let _ = deliver(&tx, up, &mut stop).await;
                    }
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edge_keeps_its_age_on_the_runtime_clock() {
        let now = Instant::now();
        let clock = Duration::from_secs(1000);
        let press = edge_instant(Duration::from_millis(997_000), clock, now);
        let release = edge_instant(Duration::from_millis(997_400), clock, now);
        assert_eq!(now - press, Duration::from_secs(3));
        // Read at the same moment, 400 ms apart on the pedal: 400 ms apart here.
        assert_eq!(release - press, Duration::from_millis(400));
        // Stamped later than the clock reads (another clock): now, not the future.
        assert_eq!(edge_instant(Duration::from_secs(2000), clock, now), now);
    }

    #[test]
    fn evdev_stamps_on_the_monotonic_clock_are_times_since_boot() {
        let before = Instant::now();
        let stamp = SystemTime::UNIX_EPOCH + monotonic_now() - Duration::from_millis(250);
        let at = evdev_instant(stamp, EventTime::Monotonic);
        let age = Instant::now() - at;
        assert!(
            age >= Duration::from_millis(249)
                && age < Duration::from_millis(300) + (Instant::now() - before),
            "{age:?}"
        );
        let wall = SystemTime::now() - Duration::from_secs(1);
        let age = Instant::now() - evdev_instant(wall, EventTime::Realtime);
        // The two clocks are read a moment apart: a little either way.
        assert!(
            age >= Duration::from_millis(999) && age < Duration::from_millis(1100),
            "{age:?}"
        );
    }
}
