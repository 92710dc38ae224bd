//! The recorder: a pure state machine that decides when a recording starts, gets a marker, stops
//! and is finalized.
//!
//! It does no I/O and reads no clock: every [`Event`] carries the monotonic time `at` at which it
//! happened, and [`Recorder::handle`] returns the new recorder and the [`Action`]s the daemon must
//! carry out. That is what lets every clinician rule below be unit-tested exhaustively. For pedal
//! events `at` is the time of the edge on the pedal (the kernel's timestamp), so it may be
//! earlier than that of an event handled before it: a press is measured from its press edge to
//! its release edge, however late either reaches the recorder.
//!
//! Clinician semantics (all durations configurable in [`Settings`]):
//! - a pedal press (or `start` command) when not recording **starts** a recording at once; the
//!   pre-roll already in the ring becomes its beginning;
//! - while recording, a **short** press (released before `long_press`) adds a **marker**, a
//!   **long** press (held `long_press`, default 2 s) **stops**: stopping by accident is the
//!   commonest failure of manual systems, so stopping needs intent;
//! - a recording that reaches `max_duration` stops by itself;
//! - after a stop, recording goes on for `post_roll` before the recording is finalized, and then
//!   until the fragment in progress at that moment is in: it holds the last moments before the
//!   stop (a camera that sends nothing for `camera_timeout` is not waited for);
//! - privacy mode stops any recording, empties the ring and refuses to start until it is off;
//! - the recording light mirrors "recording" (including post-roll), never anything else;
//! - storage is the daemon's, but its outcomes are the recorder's to decide on: a failed
//!   [`Action`] on the recording comes back as [`Event::StorageFailed`]; the recorder then stops
//!   asking for claims (fragments wait in the ring), reports `fault` with the reason, and asks for
//!   [`Action::Retry`] with a growing back-off until [`Event::StorageRecovered`]. A recording is
//!   never given up because storage failed.
//!
//! ```
//! use std::time::Duration;
//! use neoflix_recorder::{Action, Event, Recorder, Settings, Trigger};
//! let s = Settings { preroll: Duration::from_secs(2), ..Settings::default() };
//! let r = Recorder::new(s);
//! let (r, _) = r.handle(Event::Fragment { at: Duration::from_secs(1), seq: 0, ring: Duration::from_secs(1), ends: Duration::from_secs(1) });
//! let (r, _) = r.handle(Event::Fragment { at: Duration::from_secs(2), seq: 1, ring: Duration::from_secs(2), ends: Duration::from_secs(2) });
//! assert!(r.status().ready);
//! let (r, actions) = r.handle(Event::PedalDown { at: Duration::from_secs(3) });
//! assert!(actions.contains(&Action::StartRecording { trigger: Trigger::Pedal }));
//! assert!(r.status().recording);
//! ```
#![deny(missing_docs)]

use std::time::Duration;

/// Recorder settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// How much video the ring keeps before a trigger; `ready` needs this much.
    pub preroll: Duration,
    /// How long the pedal must be held to stop a recording.
    pub long_press: Duration,
    /// A recording stops by itself after this long.
    pub max_duration: Duration,
    /// Recording goes on this long after a stop.
    pub post_roll: Duration,
    /// No fragment for this long means the camera is lost.
    pub camera_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            preroll: Duration::from_secs(60),
            long_press: Duration::from_secs(2),
            max_duration: Duration::from_secs(90 * 60),
            post_roll: Duration::from_secs(0),
            camera_timeout: Duration::from_secs(5),
        }
    }
}

/// What started a recording or added a marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The foot pedal (GPIO line or USB HID foot switch).
    Pedal,
    /// An MQTT command from the fleet.
    Mqtt,
    /// The local control socket (`neoflix ctl`).
    Control,
}

impl Trigger {
    /// Lowercase name for journals and status.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Pedal => "pedal",
            Trigger::Mqtt => "mqtt",
            Trigger::Control => "control",
        }
    }
}

/// Why a recording stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A stop command or a long pedal press.
    Requested(Trigger),
    /// `max_duration` was reached.
    MaxDuration,
    /// Privacy mode was switched on.
    Privacy,
    /// The daemon is shutting down (SIGTERM).
    Shutdown,
}

impl StopReason {
    /// Lowercase name for journals, manifests and status.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Requested(Trigger::Pedal) => "pedal",
            StopReason::Requested(Trigger::Mqtt) => "mqtt",
            StopReason::Requested(Trigger::Control) => "control",
            StopReason::MaxDuration => "max_duration",
            StopReason::Privacy => "privacy",
            StopReason::Shutdown => "shutdown",
        }
    }
}

/// Something that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A fragment was sealed and entered the ring, which now holds `ring` of video.
    Fragment {
        /// When.
        at: Duration,
        /// The fragment's sequence number.
        seq: u64,
        /// Video in the ring, this fragment included.
        ring: Duration,
        /// When its last moment was captured: a few frames before `at`, since the muxer hands a
        /// fragment out only after it ends.
        ends: Duration,
    },
    /// The pedal went down.
    PedalDown {
        /// When the edge happened on the pedal (not when it was read).
        at: Duration,
    },
    /// The pedal came up.
    PedalUp {
        /// When the edge happened on the pedal (not when it was read); the press lasted from
        /// its `PedalDown`'s `at` to this.
        at: Duration,
    },
    /// Start a recording.
    Start {
        /// When.
        at: Duration,
        /// Who asked.
        by: Trigger,
    },
    /// Stop the recording (post-roll applies).
    Stop {
        /// When.
        at: Duration,
        /// Who asked.
        by: Trigger,
    },
    /// Add a marker to the recording.
    Mark {
        /// When.
        at: Duration,
        /// Who asked.
        by: Trigger,
        /// Free text, may be empty.
        label: String,
    },
    /// Switch privacy mode on or off.
    Privacy {
        /// When.
        at: Duration,
        /// On or off.
        on: bool,
    },
    /// Time passes (the daemon sends this about every 100 ms).
    Tick {
        /// Now.
        at: Duration,
    },
    /// The capture pipeline failed.
    CameraLost {
        /// When.
        at: Duration,
        /// What failed, for the status.
        reason: String,
    },
    /// The daemon is shutting down: finalize now, no post-roll.
    Shutdown {
        /// When.
        at: Duration,
    },
    /// Storage work for a recording failed (creating it, claiming, a marker, its manifest). The
    /// daemon keeps the work pending: nothing is dropped.
    StorageFailed {
        /// When.
        at: Duration,
        /// What failed, for the status.
        reason: String,
    },
    /// Every pending storage work for the recordings is done again.
    StorageRecovered {
        /// When.
        at: Duration,
    },
}

/// Something the daemon must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create a recording and claim everything in the ring into it.
    StartRecording {
        /// What started it.
        trigger: Trigger,
    },
    /// Claim this newly sealed fragment into the open recording (with any fragment before it
    /// that the recording still owes).
    Claim {
        /// The fragment.
        seq: u64,
    },
    /// Write a marker into the open recording.
    Mark {
        /// Who added it.
        by: Trigger,
        /// Its label.
        label: String,
    },
    /// Note in the recording that a stop was asked for (post-roll running).
    StopRequested {
        /// Why.
        reason: StopReason,
    },
    /// Close the open recording: write its manifest and hand it to upload.
    Finalize {
        /// Why it stopped.
        reason: StopReason,
    },
    /// Delete everything in the ring and forget its keys (privacy).
    PurgeRing,
    /// Stop capturing (privacy on).
    PauseCapture,
    /// Capture again (privacy off).
    ResumeCapture,
    /// Switch the recording light.
    Light {
        /// On or off.
        on: bool,
    },
    /// Carry out the recordings' pending storage work (create, claim what waits in the ring,
    /// markers, manifests) after a failure; the outcome comes back as an event.
    Retry,
    /// A request could not be honoured; tell whoever asked.
    Refuse {
        /// Why, in words an operator understands.
        reason: String,
    },
}

/// The recorder's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// No fragment seen yet.
    Starting,
    /// Fragments arrive, the pre-roll is not full yet.
    Buffering,
    /// Pre-roll full: a trigger captures the minutes before it.
    Ready,
    /// A recording is open.
    Recording(Recording),
    /// Privacy mode: nothing is captured or kept.
    Privacy,
    /// The camera failed; waiting for it to come back.
    Fault {
        /// What failed.
        reason: String,
    },
}

impl State {
    /// The state without its data, as the status reports it.
    pub fn phase(&self) -> Phase {
        match self {
            State::Starting => Phase::Starting,
            State::Buffering => Phase::Buffering,
            State::Ready => Phase::Ready,
            State::Recording(_) => Phase::Recording,
            State::Privacy => Phase::Privacy,
            State::Fault { .. } => Phase::Fault,
        }
    }
}

/// What the status reports as the state: [`State`] without its data, except that a recorder
/// whose storage fails reports [`Phase::Fault`] whatever its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// No fragment seen yet.
    Starting,
    /// The pre-roll is filling.
    Buffering,
    /// Pre-roll full.
    Ready,
    /// A recording is open (post-roll included).
    Recording,
    /// Privacy mode.
    Privacy,
    /// The camera or the recordings' storage failed.
    Fault,
}

/// An open recording, as the recorder sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recording {
    /// When it started.
    pub started: Duration,
    /// What started it.
    pub trigger: Trigger,
    /// When the pedal went down, if it is down and this press did not start the recording.
    pub pedal_down: Option<Duration>,
    /// Set once a stop was asked for: when to finalize, and why.
    pub stopping: Option<(Duration, StopReason)>,
}

/// The recorder: state plus what it needs to decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorder {
    settings: Settings,
    state: State,
    /// Video in the ring after the last fragment.
    ring: Duration,
    /// When the last fragment arrived, for the camera watchdog.
    last_fragment: Option<Duration>,
    /// Whether the press that started the recording is still held (its release is no marker).
    start_press_held: bool,
    /// Why the camera is not delivering, while it is not; kept through a recording so that the
    /// status tells the room and the state after the recording is `fault`.
    camera_fault: Option<String>,
    /// When the capture pipeline was last reported failed, until a fragment captured after
    /// that arrives: the stopped pipeline's last fragment comes through storage, and may
    /// arrive after the report, but is no sign that the camera is back.
    lost_at: Option<Duration>,
    /// Why the recordings' storage is failing, while it is, and when to try again.
    storage_fault: Option<StorageFault>,
}

/// A storage failure the recorder waits out.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StorageFault {
    reason: String,
    /// The next [`Action::Retry`].
    retry_at: Duration,
    /// The wait after the next failure (doubling, capped).
    backoff: Duration,
}

/// First wait after a storage failure; it doubles with every failure up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// Longest wait between two storage retries: a disk freed by IT is used within this.
const MAX_RETRY: Duration = Duration::from_secs(10);

/// A snapshot for status reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The state as reported.
    pub state: Phase,
    /// Pre-roll full and the camera delivering: a trigger now captures what the settings promise.
    pub ready: bool,
    /// A recording is open (post-roll included).
    pub recording: bool,
    /// Video in the ring.
    pub preroll: Duration,
    /// Why not ready, when not.
    pub reason: Option<String>,
}

impl Recorder {
    /// A recorder that has seen nothing yet.
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            state: State::Starting,
            ring: Duration::ZERO,
            last_fragment: None,
            start_press_held: false,
            camera_fault: None,
            lost_at: None,
            storage_fault: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Whether the recordings' storage is failing (a retry is due or under way).
    pub fn storage_failing(&self) -> bool {
        self.storage_fault.is_some()
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn preroll_full(&self) -> bool {
        self.ring >= self.settings.preroll
    }

    /// What the status reports.
    pub fn status(&self) -> Status {
        let recording = matches!(self.state, State::Recording(_));
        let (ready, reason) = match &self.state {
            State::Ready => (true, None),
            State::Recording(_) => match &self.camera_fault {
                None => (true, None),
                Some(r) => (false, Some(format!("camera: {r}"))),
            },
            State::Starting => (false, Some("capture starting".to_string())),
            State::Buffering => (
                false,
                Some(format!(
                    "pre-roll filling ({} of {} s)",
                    self.ring.as_secs(),
                    self.settings.preroll.as_secs()
                )),
            ),
            State::Privacy => (false, Some("privacy mode".to_string())),
            State::Fault { reason } => (false, Some(format!("camera: {reason}"))),
        };
        if let Some(f) = &self.storage_fault
            && !matches!(self.state, State::Privacy)
        {
            // A recording whose storage fails is not "recording" to anyone who must act on it.
            return Status {
                state: Phase::Fault,
                ready: false,
                recording,
                preroll: self.ring,
                reason: Some(format!("storage: {}", f.reason)),
            };
        }
        // Nor is a recording whose camera is gone: the video it promises is not being made.
        let state = match (&self.state, &self.camera_fault) {
            (State::Recording(_), Some(_)) => Phase::Fault,
            _ => self.state.phase(),
        };
        Status {
            state,
            ready,
            recording,
            preroll: self.ring,
            reason,
        }
    }

    fn idle_state(&self) -> State {
        if let Some(reason) = &self.camera_fault {
            State::Fault {
                reason: reason.clone(),
            }
        } else if self.last_fragment.is_none() {
            State::Starting
        } else if self.preroll_full() {
            State::Ready
        } else {
            State::Buffering
        }
    }

    /// Handles one event.
    pub fn handle(mut self, event: Event) -> (Self, Vec<Action>) {
        let mut actions = Vec::new();
        // Storage outcomes and their retries hold in every state: a recording closed just before
        // privacy mode still has to reach the disk.
        let event = match event {
            Event::StorageFailed { at, reason } => {
                let backoff = self
                    .storage_fault
                    .as_ref()
                    .map_or(FIRST_RETRY, |f| f.backoff);
                self.storage_fault = Some(StorageFault {
                    reason,
                    retry_at: at + backoff,
                    backoff: (backoff * 2).min(MAX_RETRY),
                });
                return (self, actions);
            }
            Event::StorageRecovered { .. } => {
                self.storage_fault = None;
                return (self, actions);
            }
            Event::Tick { at } => {
                if let Some(f) = &mut self.storage_fault
                    && at >= f.retry_at
                {
                    // Until the outcome arrives, no second retry.
                    f.retry_at = at + f.backoff;
                    actions.push(Action::Retry);
                }
                Event::Tick { at }
            }
            e => e,
        };
        let state = std::mem::replace(&mut self.state, State::Starting);
        self.state = match (state, event) {
            // Privacy: nothing is kept, only "privacy off" leaves it.
            (State::Privacy, Event::Privacy { on: false, .. }) => {
                self.ring = Duration::ZERO;
                self.last_fragment = None;
                actions.push(Action::ResumeCapture);
                State::Starting
            }
            (State::Privacy, Event::Fragment { .. }) => {
                // A fragment that was in flight when capture paused: not kept.
                actions.push(Action::PurgeRing);
                State::Privacy
            }
            (State::Privacy, Event::Start { .. } | Event::PedalDown { .. }) => {
                actions.push(Action::Refuse {
                    reason: "privacy mode is on: switch it off to record".into(),
                });
                State::Privacy
            }
            (State::Privacy, Event::Stop { .. } | Event::Mark { .. }) => {
                actions.push(Action::Refuse {
                    reason: "not recording".into(),
                });
                State::Privacy
            }
            (State::Privacy, _) => State::Privacy,

            (State::Recording(rec), event) => self.recording(rec, event, &mut actions),

            (_, Event::Privacy { on: true, .. }) => {
                self.enter_privacy(&mut actions);
                State::Privacy
            }
            (s, Event::Privacy { on: false, .. }) => s,
            // Captured before the pipeline was reported failed: its last, let out as it
            // stopped. Video, but no sign of the camera.
            (s, Event::Fragment { ends, .. }) if self.captured_before_loss(ends) => s,
            (_, Event::Fragment { at, ring, .. }) => {
                self.ring = ring;
                self.last_fragment = Some(at);
                self.camera_fault = None;
                self.lost_at = None;
                self.idle_state()
            }
            (_, Event::Start { at, by }) => self.start(at, by, false, &mut actions),
            (_, Event::PedalDown { at }) => self.start(at, Trigger::Pedal, true, &mut actions),
            (s, Event::PedalUp { .. }) => s,
            (s, Event::Stop { .. } | Event::Mark { .. }) => {
                actions.push(Action::Refuse {
                    reason: "not recording".into(),
                });
                s
            }
            (s, Event::Tick { at }) => self.watchdog(s, at),
            (_, Event::CameraLost { at, reason }) => {
                self.ring = Duration::ZERO;
                self.camera_fault = Some(reason.clone());
                self.lost_at = Some(at);
                State::Fault { reason }
            }
            (s, Event::Shutdown { .. }) => s,
            (s, Event::StorageFailed { .. } | Event::StorageRecovered { .. }) => s,
        };
        (self, actions)
    }

    /// Whether a fragment that ended at `ends` was captured before the capture pipeline was
    /// last reported failed.
    fn captured_before_loss(&self, ends: Duration) -> bool {
        self.lost_at.is_some_and(|lost| ends <= lost)
    }

    fn watchdog(&mut self, state: State, at: Duration) -> State {
        match (&state, self.last_fragment) {
            (State::Fault { .. }, _) | (State::Starting, None) => state,
            (_, Some(last)) if at.saturating_sub(last) >= self.settings.camera_timeout => {
                let reason = format!("no video for {} s", at.saturating_sub(last).as_secs());
                self.camera_fault = Some(reason.clone());
                State::Fault { reason }
            }
            _ => state,
        }
    }

    fn start(
        &mut self,
        at: Duration,
        by: Trigger,
        pedal: bool,
        actions: &mut Vec<Action>,
    ) -> State {
        // Starting is allowed before the pre-roll is full and even with the camera in fault: a
        // recording that lacks minutes beats no recording, and the camera may come back.
        self.start_press_held = pedal;
        actions.push(Action::StartRecording { trigger: by });
        actions.push(Action::Light { on: true });
        State::Recording(Recording {
            started: at,
            trigger: by,
            pedal_down: None,
            stopping: None,
        })
    }

    /// A start while a stopped recording is still ending (post-roll, or waiting for the
    /// fragment in progress): the room wants a recording now, so the ending one is closed
    /// through what it holds and a new one starts. The moments it had not yet taken are the new
    /// recording's pre-roll, so nothing is lost between the two.
    fn restart(
        &mut self,
        reason: StopReason,
        at: Duration,
        by: Trigger,
        pedal: bool,
        actions: &mut Vec<Action>,
    ) -> State {
        // The light stays on: `start` sends it on again, and it is never sent off between.
        actions.push(Action::Finalize { reason });
        self.start(at, by, pedal, actions)
    }

    fn enter_privacy(&mut self, actions: &mut Vec<Action>) {
        self.ring = Duration::ZERO;
        self.last_fragment = None;
        actions.push(Action::PauseCapture);
        actions.push(Action::PurgeRing);
    }

    fn finalize(&mut self, reason: StopReason, actions: &mut Vec<Action>) -> State {
        actions.push(Action::Finalize { reason });
        actions.push(Action::Light { on: false });
        self.start_press_held = false;
        self.idle_state()
    }

    fn request_stop(
        &mut self,
        mut rec: Recording,
        at: Duration,
        reason: StopReason,
        actions: &mut Vec<Action>,
    ) -> State {
        if rec.stopping.is_some() {
            return State::Recording(rec);
        }
        actions.push(Action::StopRequested { reason });
        rec.stopping = Some((at + self.settings.post_roll, reason));
        rec.pedal_down = None;
        State::Recording(rec)
    }

    fn recording(&mut self, mut rec: Recording, event: Event, actions: &mut Vec<Action>) -> State {
        match event {
            Event::Fragment {
                at,
                seq,
                ring,
                ends,
            } => {
                // The stopped pipeline's last fragment belongs in the recording, but says
                // nothing of the camera: the fault stays.
                if !self.captured_before_loss(ends) {
                    self.ring = ring;
                    self.last_fragment = Some(at);
                    self.camera_fault = None;
                    self.lost_at = None;
                }
                // While storage fails the fragment waits in the ring; the retry claims it.
                if self.storage_fault.is_none() {
                    actions.push(Action::Claim { seq });
                }
                self.check_time(rec, at, Some(ends), actions)
            }
            Event::Tick { at } => {
                if let Some(last) = self.last_fragment
                    && at.saturating_sub(last) >= self.settings.camera_timeout
                {
                    let quiet = at.saturating_sub(last).as_secs();
                    self.camera_fault = Some(format!("no video for {quiet} s"));
                }
                self.check_time(rec, at, None, actions)
            }
            Event::PedalDown { at } => {
                if let Some((_, reason)) = rec.stopping {
                    return self.restart(reason, at, Trigger::Pedal, true, actions);
                }
                if !self.start_press_held {
                    rec.pedal_down = Some(at);
                }
                State::Recording(rec)
            }
            Event::PedalUp { at } => {
                if self.start_press_held {
                    self.start_press_held = false;
                } else if let Some(down) = rec.pedal_down.take() {
                    if at.saturating_sub(down) >= self.settings.long_press {
                        return self.request_stop(
                            rec,
                            at,
                            StopReason::Requested(Trigger::Pedal),
                            actions,
                        );
                    }
                    actions.push(Action::Mark {
                        by: Trigger::Pedal,
                        label: String::new(),
                    });
                }
                State::Recording(rec)
            }
            Event::Start { at, by } => {
                if let Some((_, reason)) = rec.stopping {
                    return self.restart(reason, at, by, false, actions);
                }
                actions.push(Action::Refuse {
                    reason: "already recording".into(),
                });
                State::Recording(rec)
            }
            Event::Stop { at, by } => {
                if rec.stopping.is_some() {
                    actions.push(Action::Refuse {
                        reason: "already stopping".into(),
                    });
                    return State::Recording(rec);
                }
                self.request_stop(rec, at, StopReason::Requested(by), actions)
            }
            Event::Mark { by, label, .. } => {
                actions.push(Action::Mark { by, label });
                State::Recording(rec)
            }
            Event::Privacy { on: true, .. } => {
                self.finalize(StopReason::Privacy, actions);
                self.enter_privacy(actions);
                State::Privacy
            }
            Event::Privacy { on: false, .. } => State::Recording(rec),
            Event::CameraLost { at, reason } => {
                // The recording stays open: the camera may come back, and what came before is
                // safe. The status tells the room.
                self.ring = Duration::ZERO;
                self.last_fragment = None;
                self.camera_fault = Some(reason);
                self.lost_at = Some(at);
                State::Recording(rec)
            }
            Event::Shutdown { .. } => {
                let reason = rec.stopping.map(|(_, r)| r).unwrap_or(StopReason::Shutdown);
                self.finalize(reason, actions)
            }
            Event::StorageFailed { .. } | Event::StorageRecovered { .. } => State::Recording(rec),
        }
    }

    /// `fragment_ends`: `at` is a fragment's arrival (just claimed), not a tick, and its last
    /// moment was captured then.
    fn check_time(
        &mut self,
        rec: Recording,
        at: Duration,
        fragment_ends: Option<Duration>,
        actions: &mut Vec<Action>,
    ) -> State {
        if let Some((until, reason)) = rec.stopping {
            // The first fragment that reaches `until` is the one that was in progress then: it
            // holds the last moments before the stop, so the recording ends with it. One that
            // ended just before the stop but arrived after it is not that one.
            if fragment_ends.is_some_and(|e| e >= until)
                || at >= until + self.settings.camera_timeout
            {
                return self.finalize(reason, actions);
            }
            return State::Recording(rec);
        }
        if at.saturating_sub(rec.started) >= self.settings.max_duration {
            // The limit is a safety net, not a clinical stop: no post-roll.
            return self.finalize(StopReason::MaxDuration, actions);
        }
        if let Some(down) = rec.pedal_down
            && at.saturating_sub(down) >= self.settings.long_press
        {
            // Stop as soon as the hold is long enough, not at the release; the light goes off
            // once the fragment in progress is in, within a fragment.
            return self.request_stop(rec, at, StopReason::Requested(Trigger::Pedal), actions);
        }
        State::Recording(rec)
    }
}

#[cfg(test)]
mod tests;
