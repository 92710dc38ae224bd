//! Fragmented MP4 in, progressive MP4 out: what `neoflix export` and the review page's download
//! write, so that the file plays, shows its full duration and seeks everywhere.
//!
//! A recording is an init segment (`ftyp` + `moov`) and media fragments (`moof` + `mdat`), as
//! GStreamer's fragmenting muxer writes them. Concatenated, they play in ffmpeg, but Chromium
//! reports the duration of one fragment and cannot seek. [`Progressive`] rewrites them as one
//! file with `moov` first: full sample tables, durations in `mvhd`/`tkhd`/`mdhd`, decode times
//! starting at 0, and chapters (Nero `chpl` plus a QuickTime chapter text track).
//!
//! Pure: no I/O, no clock, no threads, so the same code runs natively and in the browser
//! (`wasm32-unknown-unknown`). Everything it reads is outside data: every length is checked,
//! nothing is allocated from a count in a box before the count is bounded by the input's
//! length, and no box walk recurses (each path is spelled out in the code).
//!
//! ```
//! # fn demo(init: &[u8], fragments: &[Vec<u8>]) -> Result<Vec<u8>, neoflix_mp4::Mp4Error> {
//! use neoflix_mp4::{Chapter, Progressive};
//! let mut p = Progressive::new(init)?;
//! p.chapters(&[Chapter::new(12.5, "cord clamped")]);
//! for f in fragments {
//!     p.push_fragment(f)?; // indexes; keeps no sample data
//! }
//! let layout = p.finish()?;
//! layout.to_vec(fragments) // or layout.head(), then layout.media(i, fragment) for each
//! # }
//! ```
//!
//! Layout: `read` (private) bounded box and field reading; [`rebase`] rewriting a fragment's
//! decode time in place; [`init`] the init segment's tracks and the codecs string for Media
//! Source Extensions; [`fragment`] a fragment's samples; [`progressive`] the writer;
//! [`chapters`] chapter titles and the WebVTT chapter file; [`select`] one view (some of the
//! tracks) of a recording with two cameras; `write` (private) box writing;
//! [`Mp4Error`] what is wrong, naming the box, fragment or sample.
#![deny(missing_docs)]

pub mod chapters;
mod error;
pub mod fragment;
pub mod init;
pub mod progressive;
mod read;
pub mod rebase;
pub mod select;
mod write;

pub use chapters::{Chapter, webvtt_chapters};
pub use error::Mp4Error;
pub use fragment::{Sample, TrackSamples, parse_fragment};
pub use init::{Handler, InitInfo, Track};
pub use progressive::{Layout, Progressive};
pub use rebase::{first_decode_time, rebase_decode_time};
pub use select::{select_fragment, select_init};

/// The most samples one track may have: about 6 days of 30 fps video. Keeps the sample tables
/// of `moov` (about 12 bytes a sample) far below the 4 GiB a box can hold.
pub const MAX_SAMPLES_PER_TRACK: u32 = 1 << 24;

pub use chapters::{MAX_CHAPTERS, MAX_TITLE_BYTES};

#[cfg(test)]
pub(crate) mod testing {
    /// An ISO BMFF box: size, type, body.
    pub(crate) fn bx(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(kind);
        v.extend_from_slice(body);
        v
    }

    /// A small deterministic generator for mutation tests.
    pub(crate) fn rng(mut seed: u64) -> impl FnMut() -> u64 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        }
    }
}

#[cfg(test)]
mod tests;
