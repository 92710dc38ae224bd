//! Camera capture: the only crate in Neoflix that knows GStreamer.
//!
//! [`Capture::start`] builds one pipeline, in one function, from [`CaptureSettings`]:
//!
//! ```text
//! videotestsrc | v4l2src ─▶ [jpeg decoder] ─▶ converter ─▶ raw ─▶ H.264 encoder ─▶ h264parse
//!     ─▶ isofmp4mux (keyframe requested at each fragment boundary) ─▶ appsink ─▶ your callback
//! audiotestsrc | alsasrc ─▶ S16LE (level meter) ─▶ opusenc ─┤   (when sound is configured)
//! second camera ─▶ ... the same video branch ... ─▶ h264parse ─┘   (when a second view is)
//! ```
//!
//! Sound is a second track in the same fragments, cut on the video's boundaries, on the same
//! clock; a second camera is a third track (a second video track), encoded with the first
//! view's encoder, rate and keyframe requests, so both views start every fragment together. An error names the element that posted it; [`CaptureError::part`] says whether that is
//! the camera, the encoder or the sound, so supervision can go on without the microphone or
//! fall back to another encoder.
//!
//! The encoder is probed from the element factories present (`nvv4l2h264enc` on a Jetson with
//! NVENC, `v4l2h264enc` on a Pi 4, else `x264enc`) unless the settings name one; cameras that emit
//! H.264 themselves are passed through. The muxer comes from gst-plugin-fmp4, registered
//! statically, so no plugin has to be installed for it.
//!
//! Every output is a [`Output::Init`] (ftyp+moov) or an [`Output::Fragment`] (moof+mdat, starting
//! on a keyframe). The callback runs on a GStreamer streaming thread: it must not block for long
//! and it must not panic; an `Err` from it stops the pipeline with an error on the bus.
//! Pipeline errors arrive through [`Capture::next_event`] as [`CaptureError::Element`], naming the
//! element.
//!
//! Layout: [`settings`] holds what the pipeline is built from, [`board`] picks each board's
//! decoding and conversion elements (the Pi 4's ISP, a Jetson's `nvvidconv` into NVMM),
//! [`pipeline`] builds and runs it.
#![deny(missing_docs)]

pub mod board;
mod error;
pub mod pipeline;
pub mod settings;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::CaptureError;
pub use error::Part;
pub use pipeline::{
    AudioMeter, AudioStats, Capture, CaptureEvent, FrameStats, Output, SILENCE_DBFS, probe_audio,
    probe_encoder,
};
pub use settings::{
    AudioSettings, AudioSource, CaptureSettings, Encoder, InputFormat, Source, View, X264Preset,
};

/// Initializes GStreamer and registers the statically linked fMP4 muxer. Idempotent.
pub fn init() -> Result<(), CaptureError> {
    use std::sync::OnceLock;
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| {
        gstreamer::init().map_err(|e| e.to_string())?;
        gstfmp4::plugin_register_static().map_err(|e| e.to_string())
    })
    .clone()
    .map_err(CaptureError::Init)
}
