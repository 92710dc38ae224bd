//! The local control protocol of `neoflixd`, spoken by `neoflix ctl`.
//!
//! One JSON [`Request`] per line on the Unix socket (`/run/neoflix/control.sock`, mode 0660), one
//! JSON [`Reply`] line back. The socket's file permissions are the access control: whoever may
//! open it may start and stop recordings. Specified in `docs/control.md`.
//!
//! ```no_run
//! use neoflix_control::{Request, call};
//! let reply = call("/run/neoflix/control.sock".as_ref(), &Request::Status {}).unwrap();
//! println!("{}", reply.status.unwrap().state);
//! ```
#![deny(missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Longest request line accepted; anything longer is not a control request.
pub const MAX_LINE: usize = 4096;

/// Reads one request line as the daemon does (the line may end in a newline): at most
/// [`MAX_LINE`] bytes, UTF-8, one JSON [`Request`]. The error is the refusal to send back.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    if line.len() > MAX_LINE {
        return Err(format!("request longer than {MAX_LINE} bytes"));
    }
    let text = std::str::from_utf8(line).map_err(|e| {
        format!(
            "request is not UTF-8 text (invalid byte at offset {}); send one JSON object per line",
            e.valid_up_to()
        )
    })?;
    serde_json::from_str::<Request>(text.trim()).map_err(|e| {
        format!(
            "not a control request ({e}); send one JSON object per line, e.g. {{\"cmd\":\"status\"}}"
        )
    })
}

/// A request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Commands without arguments are empty struct variants: serde ignores extra fields of unit
// variants in an internally tagged enum, and a typo'd field must be an error.
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Start a recording (the pre-roll is its beginning).
    Start {},
    /// Stop the recording (post-roll applies).
    Stop {},
    /// Add a marker to the recording.
    Mark {
        /// Free text.
        #[serde(default)]
        label: String,
    },
    /// Switch privacy mode.
    Privacy {
        /// On or off.
        on: bool,
    },
    /// Report the status.
    Status {},
}

/// The recorder's state as the status reports it; on the wire its lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// `starting`: no video yet.
    Starting,
    /// `buffering`: the pre-roll is filling.
    Buffering,
    /// `ready`: the pre-roll is full.
    Ready,
    /// `recording`: a recording is open (post-roll included).
    Recording,
    /// `privacy`: nothing is captured or kept.
    Privacy,
    /// `fault`: the camera or the recordings' storage failed; a recording may still be open.
    Fault,
}

impl State {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Buffering => "buffering",
            State::Ready => "ready",
            State::Recording => "recording",
            State::Privacy => "privacy",
            State::Fault => "fault",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The daemon's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// This room box.
    pub device_id: String,
    /// The recorder's state.
    pub state: State,
    /// Whether a trigger now captures everything the settings promise.
    pub ready: bool,
    /// Why not ready: the first of `reasons`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Every reason `ready` is false, most urgent first; empty when ready.
    #[serde(default)]
    pub reasons: Vec<String>,
    /// Privacy mode is on: nothing is captured or kept.
    #[serde(default)]
    pub privacy: bool,
    /// Seconds of video in the pre-roll ring.
    pub preroll_secs: f64,
    /// The open recording, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording: Option<String>,
    /// Seconds of video in the open recording.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording_secs: Option<f64>,
    /// When the open recording started (its trigger), RFC 3339 UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording_started_utc: Option<String>,
    /// Free bytes on the recordings file system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_free_bytes: Option<u64>,
    /// Whether one more recording of the maximum duration fits in that space.
    #[serde(default = "yes")]
    pub full_recording_fits: bool,
    /// Frames per second the camera delivered lately.
    #[serde(default)]
    pub camera_fps: f64,
    /// Frames the camera skipped since the daemon started.
    #[serde(default)]
    pub camera_dropped_frames: u64,
    /// The length of the last fragment, seconds: `capture.fragment_secs`, or the camera's own
    /// keyframe interval when its H.264 is passed through (0 before the first fragment).
    #[serde(default)]
    pub fragment_secs: f64,
    /// Whether the kernel reports the clock synchronised (NTP).
    #[serde(default)]
    pub clock_synced: bool,
    /// Pedal, foot switch, privacy switch, light: `ok`, or what is wrong (`unplugged`, ...).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub inputs: std::collections::BTreeMap<String, String>,
    /// `neoflixd` version.
    #[serde(default)]
    pub version: String,
    /// Seconds since `neoflixd` started.
    #[serde(default)]
    pub uptime_secs: u64,
    /// When this status was taken, RFC 3339 UTC.
    #[serde(default)]
    pub time_utc: String,
    /// The H.264 encoder in use.
    pub encoder: String,
    /// Why x264 replaced the hardware encoder, once it did (until `neoflixd` restarts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder_fallback: Option<String>,
    /// The sound, when `[audio]` is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<AudioStatus>,
    /// The second camera, when `[second_camera]` is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub second_camera: Option<ViewStatus>,
    /// Recordings finalized since start.
    pub recordings_finalized: u64,
    /// The last storage error, if one is unresolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_error: Option<String>,
    /// The upload queue, when upload is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<UploadQueue>,
    /// Who signs this box's recordings (the signing certificate's name); `null` when the box
    /// has no signing identity and its recordings are unsigned (their custody cannot be proven).
    #[serde(default)]
    pub signer: Option<String>,
    /// Days until the device certificate expires (negative: expired), when upload is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_days_left: Option<i64>,
}

fn yes() -> bool {
    true
}

/// The microphone, as the status shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioStatus {
    /// The configured ALSA device (`test` for the test tone).
    pub device: String,
    /// Samples arrived in the last two seconds.
    pub flowing: bool,
    /// The loudest sample of the last second, dBFS (0 is full scale, -100 digital silence);
    /// absent until a second has been measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_dbfs: Option<f64>,
    /// Why there is no sound, while the microphone is missing: recordings go on without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
}

/// The second camera, as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewStatus {
    /// The configured device (its stable name or node, `serial ...`, or `test`).
    pub device: String,
    /// Why it is not recorded, while it is missing: recordings go on with the first view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
}

/// What waits to be delivered to the department.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadQueue {
    /// Recordings on the box the server has not confirmed.
    pub recordings: usize,
    /// Sealed bytes not yet on the server.
    pub bytes: u64,
    /// When the last receipt was checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_utc: Option<String>,
    /// The last failure, until a pass succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Recordings delivered since the daemon started.
    pub delivered: u64,
    /// The ingest server it sends to now: of several (`upload.url` a list), the one that last
    /// worked or is being tried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
}

/// A reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// Whether the request was carried out.
    pub ok: bool,
    /// Why not, when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The recording concerned (start, stop, mark).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording: Option<String>,
    /// The status (status requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

impl Reply {
    /// A plain success.
    pub fn ok() -> Self {
        Reply {
            ok: true,
            error: None,
            recording: None,
            status: None,
        }
    }

    /// A refusal.
    pub fn error(msg: impl Into<String>) -> Self {
        Reply {
            ok: false,
            error: Some(msg.into()),
            recording: None,
            status: None,
        }
    }
}

/// Why a control call failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The socket could not be reached: neoflixd is not running, or the path is wrong, or this
    /// user is not in the socket's group.
    #[error("cannot connect to {}: {source} (is neoflixd running, and may this user open the socket?)", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The exchange failed midway.
    #[error("control socket I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The daemon did not answer in time: it is stuck, or overloaded by other clients.
    #[error("no answer from {} within {secs} s: neoflixd is busy or hung (see its log: journalctl -u neoflixd)", path.display())]
    Timeout {
        /// The socket.
        path: PathBuf,
        /// How long was waited.
        secs: u64,
    },
    /// The daemon's answer was not a reply.
    #[error("unreadable reply from neoflixd: {0}")]
    BadReply(String),
}

/// How long [`call`] waits to connect (a daemon whose queue of connections is full makes
/// `connect` block), to send, and for the reply.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends one request and waits (up to [`CALL_TIMEOUT`] for each step) for its reply.
pub fn call(socket: &Path, request: &Request) -> Result<Reply, ControlError> {
    let s = connect(socket, CALL_TIMEOUT).map_err(|source| ControlError::Connect {
        path: socket.to_owned(),
        source,
    })?;
    let timed_out = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ControlError::Timeout {
            path: socket.to_owned(),
            secs: CALL_TIMEOUT.as_secs(),
        },
        _ => ControlError::Io(e),
    };
    s.set_read_timeout(Some(CALL_TIMEOUT))?;
    s.set_write_timeout(Some(CALL_TIMEOUT))?;
    let mut line = serde_json::to_vec(request).expect("requests serialize");
    line.push(b'\n');
    (&s).write_all(&line).map_err(timed_out)?;
    let mut reply = Vec::new();
    // A reply is a status at most; a peer that sends more is not neoflixd.
    BufReader::new(&s)
        .take(1 << 20)
        .read_until(b'\n', &mut reply)
        .map_err(timed_out)?;
    serde_json::from_slice(&reply).map_err(|e| {
        ControlError::BadReply(format!(
            "{e}: {}",
            String::from_utf8_lossy(&reply).trim().escape_debug()
        ))
    })
}

/// Connects with a timeout: Linux makes a blocking `connect` on a Unix socket wait, without
/// limit, while the listener's backlog is full; the send timeout bounds that wait.
fn connect(path: &Path, timeout: Duration) -> std::io::Result<UnixStream> {
    use socket2::{Domain, SockAddr, Socket, Type};
    // socket2 opens sockets close-on-exec.
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.set_write_timeout(Some(timeout))?;
    socket.connect(&SockAddr::unix(path)?)?;
    Ok(UnixStream::from(std::os::fd::OwnedFd::from(socket)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_checked_before_they_are_read_as_requests() {
        assert_eq!(
            parse_request(b"{\"cmd\":\"status\"}\n"),
            Ok(Request::Status {})
        );
        let e = parse_request(b"{\"cmd\":\"st\xffatus\"}\n").unwrap_err();
        assert!(e.contains("not UTF-8 text (invalid byte at offset 10)"));
        let e = parse_request(&vec![b'a'; MAX_LINE + 1]).unwrap_err();
        assert!(e.contains("longer than 4096"));
        let e = parse_request(b"{\"cmd\":\"explode\"}").unwrap_err();
        assert!(e.contains("not a control request"));
    }

    #[test]
    fn the_documented_status_reads_with_its_typed_state_and_writes_back_the_same() {
        let doc = include_str!("../../../docs/mqtt.md");
        let example = doc
            .split("## Status")
            .nth(1)
            .and_then(|s| s.split("```json").nth(1))
            .and_then(|s| s.split("```").next())
            .expect("docs/mqtt.md has a status example");
        let status: Status = serde_json::from_str(example).unwrap();
        assert_eq!(status.state, State::Ready);
        let back = serde_json::to_value(&status).unwrap();
        assert_eq!(back["state"], "ready");
        assert_eq!(
            back,
            serde_json::from_str::<serde_json::Value>(example).unwrap()
        );
    }

    #[test]
    fn wire_form_is_as_documented() {
        assert_eq!(
            serde_json::to_string(&Request::Status {}).unwrap(),
            r#"{"cmd":"status"}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"mark","label":"intubation"}"#).unwrap(),
            Request::Mark {
                label: "intubation".into()
            }
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"mark"}"#).unwrap(),
            Request::Mark {
                label: String::new()
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"explode"}"#).is_err());
        for state in [
            State::Starting,
            State::Buffering,
            State::Ready,
            State::Recording,
            State::Privacy,
            State::Fault,
        ] {
            let wire = serde_json::to_string(&state).unwrap();
            assert_eq!(wire, format!("\"{}\"", state.as_str()));
            assert_eq!(serde_json::from_str::<State>(&wire).unwrap(), state);
        }
        assert!(serde_json::from_str::<State>(r#""Recording""#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"start","x":1}"#).is_err());
        assert_eq!(
            serde_json::to_string(&Reply::error("no")).unwrap(),
            r#"{"ok":false,"error":"no"}"#
        );
    }
}
