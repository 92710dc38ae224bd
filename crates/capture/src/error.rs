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
