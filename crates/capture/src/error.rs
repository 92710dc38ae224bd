use thiserror::Error;

/// Why capture could not start or stopped.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CaptureError {
    /// GStreamer itself could not be initialized: typically the GStreamer 1.22 runtime libraries
    /// are missing (install `libgstreamer1.0-0` and `gstreamer1.0-plugins-base`).
    #[error("GStreamer could not be initialized: {0}")]
    Init(String),
    /// A required element factory is not installed.
    #[error("GStreamer element '{element}' is not installed: install {package}")]
    MissingElement {
        /// The factory name.
        element: String,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// No H.264 encoder was found on this board.
    #[error(
        "no H.264 encoder found (tried {tried}): install gstreamer1.0-plugins-ugly for x264enc"
    )]
    NoEncoder {
        /// The factories that were tried, comma separated.
        tried: String,
    },
    /// The pipeline could not be built or linked.
    #[error("could not build the capture pipeline: {0}")]
    Build(String),
    /// The pipeline refused to start: typically the camera device is missing or busy, or it does
    /// not offer the configured size, rate or format.
    #[error("the capture pipeline did not start: {0}")]
    Start(String),
    /// An element posted an error while running.
    #[error("element '{element}' failed: {message}{}", debug.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Element {
        /// Name of the element that posted the error (e.g. `source`, `encoder`).
        element: String,
        /// The error message.
        message: String,
        /// GStreamer's debug detail, if any.
        debug: Option<String>,
    },
}

/// The part of the pipeline an error belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The camera, its caps and its decoder (or anything that names no element).
    Camera,
    /// Conversion for and the H.264 encoder itself.
    Encoder,
    /// The sound branch: microphone, conversion, Opus encoder.
    Audio,
    /// The muxer and the sink.
    Output,
    /// Anything of the second camera's branch: its source, decoder, conversion and encoder.
    SecondView,
}

impl CaptureError {
    /// One line for the status: the element and its message, and of GStreamer's debug detail
    /// only its last line, which is where plugins put the system's words (`No such device`).
    pub fn summary(&self) -> String {
        match self {
            CaptureError::Element {
                element,
                message,
                debug,
            } => {
                let detail = debug
                    .as_deref()
                    .and_then(|d| d.lines().map(str::trim).rfind(|l| !l.is_empty()))
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default();
                format!("element '{element}' failed: {message}{detail}")
            }
            other => other.to_string().replace('\n', " "),
        }
    }

    /// Which part of the pipeline failed, from the element the error names.
    pub fn part(&self) -> Part {
        match self {
            CaptureError::Element { element, .. } => part_of_element(element),
            CaptureError::MissingElement { element, .. } => match element.as_str() {
                "audiotestsrc" | "alsasrc" | "audioconvert" | "audioresample" | "opusenc" => {
                    Part::Audio
                }
                "x264enc" | "v4l2h264enc" | "nvv4l2h264enc" | "videoconvert" | "v4l2convert"
                | "nvvidconv" => Part::Encoder,
                "isofmp4mux" | "appsink" => Part::Output,
                _ => Part::Camera,
            },
            CaptureError::NoEncoder { .. } => Part::Encoder,
            _ => Part::Camera,
        }
    }
}

/// The names of the first view's elements that encode (and convert, or decode on a board's
/// hardware, for the encoder).
const ENCODING: [&str; 6] = [
    "convert",
    "raw-caps",
    "encode-queue",
    "encoder",
    "encoder-caps",
    "hw-decoder",
];

/// The part an element of the pipeline belongs to, by the name the pipeline gave it.
fn part_of_element(name: &str) -> Part {
    match name {
        n if n.starts_with("audio-") => Part::Audio,
        // Everything of the second view's is its own, its encoder too: an encoder that refuses
        // a second session costs the second view, not the first (which may have no fallback).
        n if n.starts_with(crate::pipeline::SECOND_PREFIX) => Part::SecondView,
        // A board's own JPEG decoder is the encoder's part: the fallback to x264 replaces it
        // with the CPU's, so a decoder that does not work on a board costs CPU, not video.
        n if ENCODING.contains(&n) => Part::Encoder,
        "muxer" | "sink" => Part::Output,
        _ => Part::Camera,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn element(name: &str) -> CaptureError {
        CaptureError::Element {
            element: name.into(),
            message: "failed".into(),
            debug: None,
        }
    }

    #[test]
    fn each_element_belongs_to_the_part_supervision_acts_on() {
        for (name, part) in [
            ("source", Part::Camera),
            ("decoder", Part::Camera),
            ("hw-decoder", Part::Encoder),
            ("convert", Part::Encoder),
            ("encoder", Part::Encoder),
            ("audio-source", Part::Audio),
            ("muxer", Part::Output),
            ("view2-source", Part::SecondView),
            ("view2-decoder", Part::SecondView),
            // An encoder refusing the second view's session costs that view only.
            ("view2-encoder", Part::SecondView),
            ("view2-hw-decoder", Part::SecondView),
        ] {
            assert_eq!(element(name).part(), part, "{name}");
        }
    }
}
