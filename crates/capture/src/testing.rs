//! A GStreamer element that fails on purpose, registered under a hardware encoder's name, so
//! supervision's fallback is tested against a real pipeline on a machine that has no such
//! encoder (the one place a fake stands in: a board's hardware cannot exist here). Built only
//! with the `testing` feature, which only tests turn on.

use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;

use crate::CaptureError;

mod imp {
    use std::sync::{LazyLock, Mutex};

    use gstreamer as gst;
    use gstreamer::glib;
    use gstreamer::prelude::*;
    use gstreamer::subclass::prelude::*;

    /// Takes raw video, would give H.264, and refuses to start as a busy or misconfigured
    /// hardware encoder does: an error on the bus naming it, and a failed state change.
    #[derive(Default)]
    pub struct FailingEncoder {
        /// `v4l2h264enc`'s property, which the pipeline sets; kept, never used.
        extra_controls: Mutex<Option<gst::Structure>>,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for FailingEncoder {
        const NAME: &'static str = "NeoflixFailingEncoder";
        type Type = super::FailingEncoder;
        type ParentType = gst::Element;
    }

    impl ObjectImpl for FailingEncoder {
        fn properties() -> &'static [glib::ParamSpec] {
            static PROPS: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
                vec![glib::ParamSpecBoxed::builder::<gst::Structure>("extra-controls").build()]
            });
            PROPS.as_ref()
        }

        fn set_property(&self, _id: usize, value: &glib::Value, _pspec: &glib::ParamSpec) {
            *self
                .extra_controls
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = value.get().ok();
        }

        fn property(&self, _id: usize, _pspec: &glib::ParamSpec) -> glib::Value {
            self.extra_controls
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .to_value()
        }

        fn constructed(&self) {
            self.parent_constructed();
            let obj = self.obj();
            for name in ["sink", "src"] {
                let templ = obj
                    .class()
                    .pad_template(name)
                    .expect("the class has both templates");
                let pad = gst::Pad::from_template(&templ);
                obj.add_pad(&pad).expect("a new pad");
            }
        }
    }

    impl GstObjectImpl for FailingEncoder {}

    impl ElementImpl for FailingEncoder {
        fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
            static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
                gst::subclass::ElementMetadata::new(
                    "Failing H.264 encoder",
                    "Codec/Encoder/Video/Hardware",
                    "A hardware encoder that refuses to start, for tests",
                    "Neoflix",
                )
            });
            Some(&*META)
        }

        fn pad_templates() -> &'static [gst::PadTemplate] {
            static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
                let raw = gst::Caps::builder("video/x-raw").build();
                let h264 = gst::Caps::builder("video/x-h264").build();
                vec![
                    gst::PadTemplate::new(
                        "sink",
                        gst::PadDirection::Sink,
                        gst::PadPresence::Always,
                        &raw,
                    )
                    .expect("a sink template"),
                    gst::PadTemplate::new(
                        "src",
                        gst::PadDirection::Src,
                        gst::PadPresence::Always,
                        &h264,
                    )
                    .expect("a src template"),
                ]
            });
            TEMPLATES.as_ref()
        }

        fn change_state(
            &self,
            transition: gst::StateChange,
        ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
            if transition == gst::StateChange::ReadyToPaused {
                gst::element_imp_error!(
                    self,
                    gst::LibraryError::Init,
                    ("Failed to open the encoder on purpose"),
                    ["VIDIOC_STREAMON: Device or resource busy"]
                );
                return Err(gst::StateChangeError);
            }
            self.parent_change_state(transition)
        }
    }
}

glib::wrapper! {
    /// See [`register_failing_encoder`].
    pub struct FailingEncoder(ObjectSubclass<imp::FailingEncoder>)
        @extends gst::Element, gst::Object;
}

/// Registers an encoder that refuses to start under `factory` (e.g. `v4l2h264enc`), ranked
/// above any real one, in this process.
pub fn register_failing_encoder(factory: &str) -> Result<(), CaptureError> {
    crate::init()?;
    gst::Element::register(
        None,
        factory,
        gst::Rank::PRIMARY + 100,
        FailingEncoder::static_type(),
    )
    .map_err(|e| CaptureError::Init(e.to_string()))
}
