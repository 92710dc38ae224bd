//! Which elements decode and convert a camera's frames for the chosen encoder, following each
//! board's documented pipeline, so that a board's own hardware does the work its CPU would
//! otherwise do.
//!
//! - **Raspberry Pi 4** (`v4l2h264enc`): `v4l2convert` (the ISP, a V4L2 memory-to-memory
//!   device) converts to I420, and `v4l2jpegdec` (the hardware JPEG decoder) decodes Motion
//!   JPEG, where the kernel offers them; else the CPU's `videoconvert` and `jpegdec`.
//! - **NVIDIA Jetson** (`nvv4l2h264enc`): `nvvidconv` converts into NV12 in NVMM memory, which is
//!   what the encoder takes (it cannot read system memory); without it the encoder cannot be fed.
//!   Motion JPEG is decoded by `jpegdec` on the CPU.
//! - **x264** (Pi 5, Jetson Orin Nano, x86) and the fallback to it: `videoconvert` to I420 on the
//!   CPU, `jpegdec`.
//!
//! Pure: what is installed is asked through `has`, so the choice is tested without a board.

use crate::{CaptureError, Encoder};

/// Where the converted frames live and in which format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Memory {
    /// I420 in system memory.
    SystemI420,
    /// NV12 in NVIDIA's NVMM buffers.
    NvmmNv12,
}

/// How frames get from the camera to the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conversion {
    /// Decodes Motion JPEG.
    pub jpeg_decoder: &'static str,
    /// Converts to what the encoder takes.
    pub converter: &'static str,
    /// What the converter puts out.
    pub memory: Memory,
}

/// The conversion for `encoder`, given which element factories are installed.
pub fn conversion(
    encoder: &Encoder,
    has: impl Fn(&str) -> bool,
) -> Result<Conversion, CaptureError> {
    let either = |board: &'static str, cpu: &'static str| if has(board) { board } else { cpu };
    Ok(match encoder {
        Encoder::V4l2 => Conversion {
            jpeg_decoder: either("v4l2jpegdec", "jpegdec"),
            converter: either("v4l2convert", "videoconvert"),
            memory: Memory::SystemI420,
        },
        Encoder::NvV4l2 => {
            if !has("nvvidconv") {
                return Err(CaptureError::MissingElement {
                    element: "nvvidconv".into(),
                    package: "nvidia-l4t-gstreamer",
                });
            }
            Conversion {
                jpeg_decoder: "jpegdec",
                converter: "nvvidconv",
                memory: Memory::NvmmNv12,
            }
        }
        Encoder::X264 | Encoder::Passthrough => Conversion {
            jpeg_decoder: "jpegdec",
            converter: "videoconvert",
            memory: Memory::SystemI420,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only(present: &'static [&'static str]) -> impl Fn(&str) -> bool {
        move |f| present.contains(&f)
    }

    #[test]
    fn a_pi_4_converts_and_decodes_in_hardware_where_the_kernel_offers_it() {
        let pi = only(&["v4l2h264enc", "v4l2convert", "v4l2jpegdec"]);
        assert_eq!(
            conversion(&Encoder::V4l2, pi).unwrap(),
            Conversion {
                jpeg_decoder: "v4l2jpegdec",
                converter: "v4l2convert",
                memory: Memory::SystemI420
            }
        );
        // An older kernel without the ISP's converter node: the CPU converts.
        let old = only(&["v4l2h264enc", "v4l2jpegdec"]);
        let c = conversion(&Encoder::V4l2, old).unwrap();
        assert_eq!(
            (c.jpeg_decoder, c.converter),
            ("v4l2jpegdec", "videoconvert")
        );
    }

    #[test]
    fn a_jetson_feeds_its_encoder_nv12_in_nvmm_through_nvvidconv_or_not_at_all() {
        let jetson = only(&["nvv4l2h264enc", "nvvidconv"]);
        assert_eq!(
            conversion(&Encoder::NvV4l2, jetson).unwrap(),
            Conversion {
                jpeg_decoder: "jpegdec",
                converter: "nvvidconv",
                memory: Memory::NvmmNv12
            }
        );
        let e = conversion(&Encoder::NvV4l2, only(&["nvv4l2h264enc"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "GStreamer element 'nvvidconv' is not installed: install nvidia-l4t-gstreamer"
        );
    }

    #[test]
    fn x264_and_a_fallback_to_it_use_the_cpu_even_on_a_board() {
        let everything = |_: &str| true;
        for e in [Encoder::X264, Encoder::Passthrough] {
            assert_eq!(
                conversion(&e, everything).unwrap(),
                Conversion {
                    jpeg_decoder: "jpegdec",
                    converter: "videoconvert",
                    memory: Memory::SystemI420
                }
            );
        }
    }
}
