//! `neoflixd`, the room daemon: camera → sealed pre-roll ring → trigger → sealed recording.
//!
//! [`run`] takes a validated [`neoflix_config::Config`] and a shutdown future (SIGTERM in
//! production, anything in tests) and runs until that future completes, then finalizes the open
//! recording and returns.
//!
//! Threads and tasks: GStreamer's streaming thread seals every muxer output in memory and sends it
//! into the engine's bounded inbox; the engine thread ([`engine`]) owns the ring, the open
//! recording and the recorder state machine and does all storage I/O; on the async runtime, the
//! control socket ([`control`]) and a 100 ms ticker feed the same inbox.
//!
//! Layout: [`engine`] the engine thread, [`recordings`] the recordings it writes and the storage
//! work they owe, [`control`] the Unix control socket, [`uplink`] the
//! upload to the department, [`fleet`] MQTT status/events/commands, [`devices`] pedal, foot
//! switch, privacy switch and light, [`health`] what `ready` means.
#![deny(missing_docs)]

pub mod control;
pub mod devices;
pub mod engine;
pub mod fleet;
pub mod health;
pub mod recordings;
pub mod uplink;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use neoflix_capture::{CaptureSettings, Encoder, InputFormat, Source, X264Preset};
use neoflix_config::{Config, EncoderChoice, SourceKind};
use neoflix_seal::DepartmentPublicKey;
use neoflix_store::Ring;
use thiserror::Error;
use tokio::sync::{mpsc, watch};

use engine::{Engine, EngineSettings, Input};

/// Why the daemon could not start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// The department public key could not be read.
    #[error("recipient key {path}: {message}")]
    Recipient {
        /// The path.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The signing identity (`[signing]`, or the `[upload]` certificate and key) is unusable.
    #[error("signing identity {cert} / {key}: {message}")]
    Signing {
        /// The certificate path.
        cert: String,
        /// The key path.
        key: String,
        /// What is wrong, and what to do.
        message: String,
    },
    /// The ring or recordings directory is unusable.
    #[error(transparent)]
    Store(#[from] neoflix_store::StoreError),
    /// The control socket could not be created.
    #[error("control socket {path}: {source}")]
    Control {
        /// The socket path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The upload section's certificates or key are unusable.
    #[error(transparent)]
    Upload(#[from] uplink::UplinkError),
    /// The MQTT settings are unusable.
    #[error("mqtt: {0}")]
    Mqtt(#[from] neoflix_mqtt::BrokerError),
    /// A device setting is unusable.
    #[error("{0}")]
    Device(String),
    /// The engine thread could not be started or died.
    #[error("engine: {0}")]
    Engine(String),
}

/// Where fleet events go: a bounded queue to the MQTT link, or nowhere. Never waits: when the
/// queue is full (broker away for long), the event is dropped and logged.
#[derive(Debug, Clone, Default)]
pub struct Events(Option<mpsc::Sender<neoflix_mqtt::Event>>);

impl Events {
    /// Queues an event for publication.
    pub fn send(&self, event: neoflix_mqtt::Event) {
        if let Some(tx) = &self.0
            && let Err(e) = tx.try_send(event)
        {
            log::debug!("fleet event dropped: {e}");
        }
    }
}

/// The state of each configured input and output device (`ok` or what is wrong), shared by the
/// device tasks and the status.
#[derive(Debug, Clone, Default)]
pub struct Devices(Arc<Mutex<BTreeMap<String, String>>>);

impl Devices {
    /// Sets a device's state; true if it changed.
    pub fn set(&self, name: &str, state: &str) -> bool {
        let mut m = self.0.lock().expect("devices lock");
        m.insert(name.to_string(), state.to_string()).as_deref() != Some(state)
    }

    /// A copy for the status.
    pub fn snapshot(&self) -> BTreeMap<String, String> {
        self.0.lock().expect("devices lock").clone()
    }
}

/// Reads the signing certificate and key; any problem refuses the start, like a bad department
/// key: a box that signs with the wrong identity would record what the server then refuses.
fn load_signer(
    sg: &neoflix_config::Signing,
) -> Result<neoflix_store::SigningIdentity, DaemonError> {
    let err = |message: String| DaemonError::Signing {
        cert: sg.cert.display().to_string(),
        key: sg.key.display().to_string(),
        message,
    };
    let cert = neoflix_logging::read_small_file(&sg.cert, 1 << 20)
        .map_err(|e| err(format!("certificate: {e}")))?;
    let key =
        neoflix_logging::read_small_file(&sg.key, 1 << 20).map_err(|e| err(format!("key: {e}")))?;
    neoflix_store::SigningIdentity::from_pem(cert.as_bytes(), key.as_bytes())
        .map_err(|e| err(e.to_string()))
}

/// Translates the config's capture section.
pub fn capture_settings(cfg: &Config) -> CaptureSettings {
    let c = &cfg.capture;
    CaptureSettings {
        source: match c.source {
            SourceKind::Test => Source::Test,
            SourceKind::V4l2 => Source::V4l2 {
                device: c.device.clone(),
                format: match c.input_format {
                    neoflix_config::InputFormat::Raw => InputFormat::Raw,
                    neoflix_config::InputFormat::Mjpeg => InputFormat::Mjpeg,
                    neoflix_config::InputFormat::H264 => InputFormat::H264,
                },
            },
        },
        width: c.width,
        height: c.height,
        fps: c.fps,
        fragment_secs: c.fragment_secs,
        encoder: match c.encoder {
            EncoderChoice::Auto => None,
            EncoderChoice::X264 => Some(Encoder::X264),
            EncoderChoice::V4l2 => Some(Encoder::V4l2),
            EncoderChoice::NvV4l2 => Some(Encoder::NvV4l2),
        },
        bitrate_kbps: c.bitrate_kbps,
        x264_preset: match c.x264_preset {
            neoflix_config::X264Preset::Ultrafast => X264Preset::Ultrafast,
            neoflix_config::X264Preset::Superfast => X264Preset::Superfast,
            neoflix_config::X264Preset::Veryfast => X264Preset::Veryfast,
            neoflix_config::X264Preset::Faster => X264Preset::Faster,
            neoflix_config::X264Preset::Fast => X264Preset::Fast,
            neoflix_config::X264Preset::Medium => X264Preset::Medium,
        },
    }
}

/// Runs the daemon until `shutdown` completes.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let recipient_text = neoflix_logging::read_small_file(&cfg.recordings.recipient, 64 << 10)
        .map_err(|e| DaemonError::Recipient {
            path: cfg.recordings.recipient.display().to_string(),
            message: e.to_string(),
        })?;
    let recipient = DepartmentPublicKey::from_file_text(&recipient_text).map_err(|e| {
        DaemonError::Recipient {
            path: cfg.recordings.recipient.display().to_string(),
            message: e.to_string(),
        }
    })?;
    let device = cfg.device_id.clone();
    let signer = match &cfg.signing {
        Some(sg) => {
            let id = load_signer(sg)?;
            if id.name() != device {
                log::warn!(device = device.as_str(), signer = id.name(); "the signing certificate names another device than device_id: the server will refuse this box's recordings until they agree");
            }
            log::info!(device = device.as_str(), signer = id.name(); "recordings are signed");
            Some(Arc::new(id))
        }
        None => {
            log::warn!(device = device.as_str(); "no signing identity ([signing] or [upload]): recordings are unsigned, their custody cannot be proven");
            None
        }
    };

    let recovered = neoflix_store::recover(
        &cfg.recordings.dir,
        &recipient.key_id().0,
        SystemTime::now(),
        signer.as_deref(),
    )?;
    for id in &recovered {
        log::warn!(device = device.as_str(), recording = id.as_str(); "recording was left open by a crash or power cut: sealed as interrupted");
    }
    if let Some(signer) = &signer {
        for id in neoflix_store::sign_unsigned(&cfg.recordings.dir, signer, SystemTime::now())? {
            log::warn!(device = device.as_str(), recording = id.as_str(); "recording was finalized before this box had a signing identity: signed now, vouching for what its disk holds");
        }
    }
    let fragment = Duration::from_secs(cfg.capture.fragment_secs.into());
    let (ring, wiped) = Ring::open(
        &cfg.ring.dir,
        Duration::from_secs(cfg.ring.preroll_secs.into()),
        cfg.ring.max_bytes,
    )?;
    if wiped > 0 {
        log::info!(device = device.as_str(), files = wiped; "deleted pre-roll left by an earlier run (unreadable: its keys were in RAM only)");
    }

    let uplink = match &cfg.upload {
        None => None,
        Some(u) => {
            let s = uplink::UplinkSettings {
                url: u.url.clone(),
                ca: u.ca.clone(),
                cert: u.cert.clone(),
                key: u.key.clone(),
                recordings_dir: cfg.recordings.dir.clone(),
                receipts: Arc::new(uplink::ReceiptCheck::new(
                    neoflix_logging::read_small_file(&u.ca, 1 << 20)
                        .map_err(|e| uplink::UplinkError::from(format!("upload.ca: {e}")))?
                        .as_bytes(),
                    &u.url,
                )?),
            };
            let client = uplink::client(&s)?;
            match std::fs::read(&u.cert)
                .ok()
                .and_then(|p| neoflix_pki::days_left(&p).ok())
            {
                Some(d) if d < 30 => {
                    log::warn!(device = device.as_str(), days_left = d; "device certificate expires soon: issue a new one")
                }
                Some(d) => {
                    log::info!(device = device.as_str(), days_left = d; "device certificate")
                }
                None => {
                    log::warn!(device = device.as_str(); "cannot read the device certificate's expiry")
                }
            }
            Some((
                s,
                client,
                Arc::new(Mutex::new(uplink::UploadStatus::default())),
                Arc::new(tokio::sync::Notify::new()),
            ))
        }
    };
    let foot_key = cfg.foot_switch.as_ref().map(|f| f.key);
    let fleet_settings = match &cfg.mqtt {
        None => None,
        Some(m) => Some(fleet::FleetSettings {
            broker: neoflix_mqtt::Broker::new(&m.url, m.ca.clone(), m.identity.clone())?,
            device: device.clone(),
            topics: neoflix_mqtt::Topics::new(&m.prefix, &device),
            status_interval: Duration::from_secs(m.status_interval_secs.into()),
            discovery_prefix: m.home_assistant.then(|| m.discovery_prefix.clone()),
        }),
    };
    if let Some(f) = &fleet_settings {
        // Certificates and keys are read now, so a bad one stops the start with its name.
        f.broker.options("check")?;
    }
    let (events_tx, events_rx) = mpsc::channel::<neoflix_mqtt::Event>(256);
    let events = Events(fleet_settings.as_ref().map(|_| events_tx));
    let (changes_tx, changes_rx) = watch::channel(0u64);
    let (light_tx, light_rx) = watch::channel(health::Pattern::SlowBlink);
    let devices = Devices::default();

    let (tx, rx) = mpsc::channel::<Input>(64);
    let settings = EngineSettings {
        device_id: device.clone(),
        capture: capture_settings(&cfg),
        recorder: neoflix_recorder::Settings {
            preroll: Duration::from_secs(cfg.ring.preroll_secs.into()),
            long_press: Duration::from_millis(cfg.recordings.long_press_ms.into()),
            max_duration: Duration::from_secs(cfg.recordings.max_duration_secs.into()),
            post_roll: Duration::from_secs(cfg.recordings.post_roll_secs.into()),
            camera_timeout: (fragment * 3).max(Duration::from_secs(5)),
        },
        recordings_dir: cfg.recordings.dir.clone(),
        recipient,
        signer,
        uplink_wake: uplink.as_ref().map(|u| u.3.clone()),
        upload_status: uplink.as_ref().map(|u| u.2.clone()),
        device_cert: cfg.upload.as_ref().map(|u| u.cert.clone()),
        events: events.clone(),
        changes: changes_tx,
        light: light_tx,
        devices: devices.clone(),
        readiness: cfg.readiness.clone(),
        // Sealing, fMP4 boxes and the encoder's overshoot: a tenth on top of the nominal bitrate.
        full_recording_bytes: u64::from(cfg.capture.bitrate_kbps)
            * 125
            * u64::from(cfg.recordings.max_duration_secs)
            * 11
            / 10,
        watchdog: sd_notify::watchdog_enabled(),
    };
    let engine = Engine::new(settings, ring, tx.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let uplink_task = uplink.map(|(s, client, status, wake)| {
        tokio::spawn(uplink::run(
            s,
            client,
            status,
            wake,
            events.clone(),
            stop_rx.clone(),
        ))
    });
    let mut device_tasks = Vec::new();
    for (line, role) in [
        (&cfg.pedal, devices::Role::Pedal),
        (&cfg.privacy_switch, devices::Role::PrivacySwitch),
    ] {
        if let Some(line) = line {
            devices.set(role.name(), "starting");
            device_tasks.push(tokio::spawn(devices::watch_gpio(
                role,
                line.clone(),
                devices.clone(),
                tx.clone(),
                stop_rx.clone(),
            )));
        }
    }
    if let (Some(f), Some(key)) = (&cfg.foot_switch, foot_key) {
        devices.set("foot_switch", "starting");
        device_tasks.push(tokio::spawn(devices::watch_foot_switch(
            f.clone(),
            key,
            devices.clone(),
            tx.clone(),
            stop_rx.clone(),
        )));
    }
    if let Some(l) = &cfg.light {
        devices.set("light", "starting");
        device_tasks.push(tokio::spawn(devices::drive_light(
            l.clone(),
            devices.clone(),
            tx.clone(),
            light_rx,
            stop_rx.clone(),
        )));
    }
    // The fleet link stops last, on its own signal: it reports the recording finalized at
    // shutdown, then says offline.
    let (fleet_stop_tx, fleet_stop_rx) = watch::channel(false);
    let fleet_task = fleet_settings.map(|f| {
        tokio::spawn(fleet::run(
            f,
            tx.clone(),
            changes_rx,
            events_rx,
            fleet_stop_rx,
        ))
    });
    // Bound before the engine starts: once systemd hears READY, `neoflix ctl` works.
    let listener = control::bind(&cfg.control.socket)?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("neoflix-engine".into())
        .spawn(move || {
            engine.run(rx);
            let _ = done_tx.send(());
        })
        .map_err(|e| DaemonError::Engine(e.to_string()))?;

    let control_task = tokio::spawn(control::serve(listener, tx.clone(), stop_rx.clone()));
    let ticker = {
        let tx = tx.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(100));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = every.tick() => { let _ = tx.try_send(Input::Tick); }
                    _ = stop.changed() => break,
                }
            }
        })
    };
    log::info!(device = device.as_str(), socket = cfg.control.socket.display().to_string().as_str(); "neoflixd running");

    shutdown.await;
    log::info!(device = device.as_str(); "shutting down: finalizing any open recording");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    let _ = stop_tx.send(true);
    let _ = ticker.await;
    let _ = control_task.await;
    if let Some(t) = uplink_task {
        let _ = t.await;
    }
    for t in device_tasks {
        let _ = t.await;
    }
    // The engine finishes what is queued before the shutdown, so nothing claimed is lost.
    tx.send(Input::Shutdown)
        .await
        .map_err(|_| DaemonError::Engine("engine stopped early".into()))?;
    drop(tx);
    done_rx
        .await
        .map_err(|_| DaemonError::Engine("engine thread panicked".into()))?;
    // The fleet link goes last: it reports the finalized recording, then says offline.
    let _ = fleet_stop_tx.send(true);
    if let Some(t) = fleet_task
        && let Ok(Err(e)) = t.await
    {
        log::error!(device = device.as_str(); "mqtt: {e}");
    }
    let _ = std::fs::remove_file(&cfg.control.socket);
    Ok(())
}
