//! `neoflixd`, the room daemon: camera → sealed pre-roll ring → trigger → sealed recording.
//!
//! [`run`] takes a validated [`neoflix_config::Config`] and a shutdown future (SIGTERM in
//! production, anything in tests) and runs until that future completes, then finalizes the open
//! recording and returns.
//!
//! Parts, each with one job, talking through typed messages over bounded channels (and watches
//! for state that only the latest value of matters):
//! - [`capture`] supervises the pipeline (restarts with back-off); GStreamer's streaming thread
//!   seals every muxer output in memory and sends it into storage's inbox;
//! - [`storage`], on a thread of its own, owns the ring and the recordings on disk
//!   ([`recordings`]) and does all storage I/O, in order, reporting what the recorder must hear;
//! - [`conductor`] drives the recorder state machine (`neoflix-recorder`, the one place of
//!   decisions): commands, pedal edges, storage and capture reports and a 100 ms tick in, storage
//!   commands and what capture should do out; it publishes the typed status ([`status`], a watch);
//! - readers of that watch: the control socket ([`control`]), MQTT ([`fleet`]), systemd
//!   ([`systemd`]: READY, STATUS, the watchdog) and the recording light ([`devices`]);
//! - [`devices`] also turns the pedal, foot switch and privacy switch into timestamped edges;
//!   [`uplink`] uploads finished and running recordings; [`health`] says what `ready` means.
#![deny(missing_docs)]

pub mod capture;
pub mod conductor;
pub mod control;
pub mod devices;
pub mod fleet;
pub mod health;
pub mod recordings;
pub mod status;
pub mod storage;
pub mod systemd;
pub mod uplink;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use neoflix_capture::{
    AudioSettings, AudioSource, CaptureSettings, Encoder, InputFormat, Source, View, X264Preset,
};
use neoflix_config::{Config, EncoderChoice, SourceKind};
use neoflix_seal::DepartmentPublicKey;
use neoflix_store::Ring;
use thiserror::Error;
use tokio::sync::{mpsc, watch};

use conductor::{Conductor, ConductorSettings, Input, RecordingIds};
use storage::{Storage, StorageSettings, ToStorage};
use systemd::Pulse;

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
    /// The storage thread could not be started, or a part of the daemon died.
    #[error("{0}")]
    Internal(String),
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
        source: source_of(c.source, &c.device, c.input_format),
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
        audio: cfg.audio.as_ref().map(|a| AudioSettings {
            source: match a.source {
                neoflix_config::AudioSourceKind::Test => AudioSource::Test,
                neoflix_config::AudioSourceKind::Alsa => AudioSource::Alsa {
                    device: a.device.clone(),
                },
            },
            channels: a.channels,
            rate: a.rate,
            bitrate_kbps: a.bitrate_kbps,
        }),
        second: cfg.second_camera.as_ref().map(|sc| View {
            source: source_of(sc.source, &sc.device, sc.input_format),
            width: sc.width,
            height: sc.height,
            bitrate_kbps: sc.bitrate_kbps,
        }),
    }
}

/// A camera's source as the config gives it.
fn source_of(
    kind: SourceKind,
    device: &std::path::Path,
    format: neoflix_config::InputFormat,
) -> Source {
    match kind {
        SourceKind::Test => Source::Test,
        SourceKind::TestH264 => Source::TestH264 { keyframe_secs: 2 },
        SourceKind::TestSync => Source::TestSync,
        SourceKind::V4l2 => Source::V4l2 {
            device: device.to_path_buf(),
            // `auto` is decided against the camera at each start (capture::CameraChoice).
            format: match format {
                neoflix_config::InputFormat::Auto | neoflix_config::InputFormat::Raw => {
                    InputFormat::Raw
                }
                neoflix_config::InputFormat::Mjpeg => InputFormat::Mjpeg,
                neoflix_config::InputFormat::H264 => InputFormat::H264,
            },
        },
    }
}

/// How the V4L2 camera is found, its mode chosen and its controls set at each start of
/// capture; `None` for the test source.
pub fn camera_choice(cfg: &Config) -> Option<capture::CameraChoice> {
    let c = &cfg.capture;
    choice_of(
        c.source,
        &c.device,
        c.serial.as_ref(),
        c.input_format,
        &c.controls,
    )
}

/// The same for the second camera, when one is configured.
pub fn second_camera_choice(cfg: &Config) -> Option<capture::CameraChoice> {
    let c = cfg.second_camera.as_ref()?;
    choice_of(
        c.source,
        &c.device,
        c.serial.as_ref(),
        c.input_format,
        &c.controls,
    )
}

fn choice_of(
    kind: SourceKind,
    device: &std::path::Path,
    serial: Option<&String>,
    format: neoflix_config::InputFormat,
    controls: &[(String, neoflix_config::ControlValue)],
) -> Option<capture::CameraChoice> {
    if kind != SourceKind::V4l2 {
        return None;
    }
    use neoflix_camera::{ControlSetting, Kind, Setting, Wanted};
    Some(capture::CameraChoice {
        device: device.to_path_buf(),
        serial: serial.cloned(),
        wanted: match format {
            neoflix_config::InputFormat::Auto => Wanted::Auto,
            neoflix_config::InputFormat::Raw => Wanted::Only(Kind::Raw),
            neoflix_config::InputFormat::Mjpeg => Wanted::Only(Kind::Mjpeg),
            neoflix_config::InputFormat::H264 => Wanted::Only(Kind::H264),
        },
        controls: controls
            .iter()
            .map(|(name, v)| ControlSetting {
                name: neoflix_camera::controls::normalize(name),
                setting: match v {
                    neoflix_config::ControlValue::Auto => Setting::Auto,
                    neoflix_config::ControlValue::Value(n) => Setting::Value(*n),
                    neoflix_config::ControlValue::Entry(e) => Setting::Entry(e.clone()),
                },
            })
            .collect(),
    })
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
        for id in neoflix_store::sign_unsigned(&cfg.recordings.dir, signer, SystemTime::now()) {
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
            let ca = neoflix_logging::read_small_file(&u.ca, 1 << 20)
                .map_err(|e| uplink::UplinkError::from(format!("upload.ca: {e}")))?;
            let s = uplink::UplinkSettings {
                servers: uplink::Server::list(&u.urls, ca.as_bytes())?,
                ca: u.ca.clone(),
                cert: u.cert.clone(),
                key: u.key.clone(),
                recordings_dir: cfg.recordings.dir.clone(),
                device: device.clone(),
                signer: signer.clone(),
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
    let devices = Devices::default();
    let device_cert = cfg.upload.as_ref().map(|u| u.cert.clone());
    let ids = RecordingIds::on_disk(device.clone(), &cfg.recordings.dir)
        .map_err(|e| DaemonError::Internal(format!("{}: {e}", cfg.recordings.dir.display())))?;

    // The parts' channels. Storage's inbox carries the pipeline's sealed output and the
    // conductor's commands, in order.
    let (storage_tx, storage_rx) = mpsc::channel::<ToStorage>(64);
    let (storage_reports_tx, storage_reports_rx) = mpsc::channel(64);
    let (storage_facts_tx, storage_facts_rx) = watch::channel(storage::Facts::default());
    let (wanted_tx, wanted_rx) = watch::channel(capture::Wanted::Running);
    let (capture_reports_tx, capture_reports_rx) = mpsc::channel(8);
    let (capture_facts_tx, capture_facts_rx) = watch::channel(capture::Facts::default());
    let (environment_tx, environment_rx) = watch::channel(status::Environment::gather(
        &cfg.recordings.dir,
        device_cert.as_deref(),
    ));
    let pulses = [Pulse::default(), Pulse::default(), Pulse::default()];
    let storage_ticks = storage::TickGate::default();
    let (upload_passes_tx, upload_passes_rx) = watch::channel(0);

    let storage = Storage::new(
        StorageSettings {
            device_id: device.clone(),
            recordings_dir: cfg.recordings.dir.clone(),
            recipient,
            signer: signer.clone(),
            events: events.clone(),
            uplink_wake: uplink.as_ref().map(|u| u.3.clone()),
            ticks: storage_ticks.clone(),
        },
        ring,
        storage_facts_tx,
        pulses[1].clone(),
    );
    let storage_thread = storage
        .spawn(storage_rx, storage_reports_tx)
        .map_err(|e| DaemonError::Internal(format!("cannot start the storage thread: {e}")))?;

    let (tx, rx) = mpsc::channel::<Input>(64);
    let conductor = Conductor::new(
        ConductorSettings {
            device_id: device.clone(),
            recorder: neoflix_recorder::Settings {
                preroll: Duration::from_secs(cfg.ring.preroll_secs.into()),
                long_press: Duration::from_millis(cfg.recordings.long_press_ms.into()),
                max_duration: Duration::from_secs(cfg.recordings.max_duration_secs.into()),
                post_roll: Duration::from_secs(cfg.recordings.post_roll_secs.into()),
                camera_timeout: (fragment * 3).max(Duration::from_secs(5)),
            },
            status: status::StatusSettings {
                device_id: device.clone(),
                // Sealing, fMP4 boxes and the encoder's overshoot: a tenth on top of the nominal
                // bitrate.
                full_recording_bytes: u64::from(cfg.capture.bitrate_kbps)
                    * 125
                    * u64::from(cfg.recordings.max_duration_secs)
                    * 11
                    / 10,
                readiness: cfg.readiness.clone(),
                signer: signer.as_ref().map(|s| s.name().to_string()),
            },
            ids,
            events: events.clone(),
            devices: devices.clone(),
            upload_status: uplink.as_ref().map(|u| u.2.clone()),
        },
        conductor::Links {
            inbox: rx,
            storage: storage_tx.clone(),
            storage_ticks,
            storage_reports: storage_reports_rx,
            storage_facts: storage_facts_rx,
            capture: wanted_tx,
            capture_reports: capture_reports_rx,
            capture_facts: capture_facts_rx.clone(),
            environment: environment_rx,
            upload_passes: uplink.is_some().then_some(upload_passes_rx),
            pulse: pulses[0].clone(),
        },
    );
    let status_rx = conductor.status();
    let (stop_tx, stop_rx) = watch::channel(false);
    let uplink_task = uplink.map(|(s, client, status, wake)| {
        tokio::spawn(uplink::run_counting(
            s,
            client,
            status,
            wake,
            events.clone(),
            upload_passes_tx,
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
            status_rx.clone(),
            stop_rx.clone(),
        )));
    }
    let environment_task = tokio::spawn(status::watch_environment(
        cfg.recordings.dir.clone(),
        device_cert,
        environment_tx,
        stop_rx.clone(),
    ));
    let systemd_task = tokio::spawn(systemd::run(
        sd_notify::watchdog_enabled(),
        status_rx.clone(),
        capture_facts_rx,
        vec![
            ("conductor", pulses[0].clone()),
            ("storage", pulses[1].clone()),
            ("capture", pulses[2].clone()),
        ],
        systemd::SdNotify,
        stop_rx.clone(),
    ));
    // The fleet link stops last, on its own signal: it reports the recording finalized at
    // shutdown, then says offline.
    let (fleet_stop_tx, fleet_stop_rx) = watch::channel(false);
    let fleet_task = fleet_settings.map(|f| {
        tokio::spawn(fleet::run(
            f,
            tx.clone(),
            status_rx.clone(),
            events_rx,
            fleet_stop_rx,
        ))
    });
    // Bound before capture starts: once systemd hears READY, `neoflix ctl` works.
    let listener = control::bind(&cfg.control.socket)?;
    let capture_task = tokio::spawn(capture::supervise(
        capture::Gstreamer::new(
            capture_settings(&cfg),
            camera_choice(&cfg),
            second_camera_choice(&cfg),
        ),
        device.clone(),
        capture::Links {
            storage: storage_tx,
            wanted: wanted_rx,
            reports: capture_reports_tx,
            facts: capture_facts_tx,
            pulse: pulses[2].clone(),
            recording: {
                let status = status_rx.clone();
                Box::new(move || status.borrow().status.recording.is_some())
            },
        },
    ));
    let conductor_task = tokio::spawn(conductor.run());
    let control_task = tokio::spawn(control::serve(
        listener,
        tx.clone(),
        status_rx,
        stop_rx.clone(),
    ));
    log::info!(device = device.as_str(), socket = cfg.control.socket.display().to_string().as_str(); "neoflixd running");

    shutdown.await;
    log::info!(device = device.as_str(); "shutting down: finalizing any open recording");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    let _ = stop_tx.send(true);
    let _ = control_task.await;
    if let Some(t) = uplink_task {
        let _ = t.await;
    }
    for t in device_tasks {
        let _ = t.await;
    }
    let _ = environment_task.await;
    let _ = systemd_task.await;
    // The conductor finishes what is queued before the shutdown, stops capture, lets storage
    // take the pipeline's last output and finalizes the open recording: nothing claimed is lost.
    let _ = tx.send(Input::Shutdown).await;
    drop(tx);
    conductor_task
        .await
        .map_err(|e| DaemonError::Internal(format!("the conductor failed: {e}")))?;
    let _ = capture_task.await;
    tokio::task::spawn_blocking(move || storage_thread.join())
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| DaemonError::Internal("the storage thread panicked".into()))?;
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
