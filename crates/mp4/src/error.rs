//! The one error type of the crate.

use thiserror::Error;

/// What is wrong with an init segment or a fragment, naming the box, fragment or sample.
///
/// The input is outside data (decrypted, but produced by a box that may be hostile or broken):
/// every variant is a refusal of that data, never a bug of the caller.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Mp4Error {
    /// A box header does not fit in what is left of its container: typically a file cut short
    /// (an interrupted copy) or a damaged fragment.
    #[error("{path}: box header cut short at byte {offset}")]
    HeaderCut {
        /// Where the box was expected, e.g. `moof/traf`.
        path: &'static str,
        /// Offset of the header within the data given.
        offset: usize,
    },
    /// A box's size is smaller than its header or larger than its container.
    #[error(
        "{path}: box `{kind}` at byte {offset} has size {size}, which does not fit its container"
    )]
    BoxSize {
        /// The container, e.g. `moov/trak`.
        path: &'static str,
        /// The box type, printable.
        kind: String,
        /// Offset of the box within the data given.
        offset: usize,
        /// The size it claims.
        size: u64,
    },
    /// A box that must be there is not.
    #[error("no {path} box")]
    Missing {
        /// The box path, e.g. `moov/trak/mdia/mdhd`.
        path: &'static str,
    },
    /// A box's fields are cut short, of an unknown version, or hold a value that cannot be.
    #[error("{path}: {problem}")]
    Field {
        /// The box path, e.g. `moof/traf/trun`.
        path: &'static str,
        /// What is wrong.
        problem: &'static str,
    },
    /// A track fragment that does not fit the init segment or the fragments before it.
    #[error("fragment {fragment}, track {track}: {problem}")]
    Track {
        /// Index of the fragment among those pushed, from 0.
        fragment: usize,
        /// The track id the `tfhd` names.
        track: u32,
        /// What is wrong.
        problem: &'static str,
    },
    /// A sample whose bytes are not inside its fragment, or whose values cannot be written.
    #[error("fragment {fragment}, track {track}, sample {sample}: {problem}")]
    Sample {
        /// Index of the fragment among those pushed, from 0.
        fragment: usize,
        /// The track id.
        track: u32,
        /// Index of the sample within its track fragment, from 0.
        sample: u64,
        /// What is wrong.
        problem: &'static str,
    },
    /// A fragment given to [`crate::Layout::media`] is not the one indexed under that number.
    #[error("fragment {fragment}: {problem}")]
    Fragment {
        /// Index of the fragment, from 0.
        fragment: usize,
        /// What is wrong.
        problem: &'static str,
    },
    /// The sample entry's codec has no Media Source Extensions string this crate knows.
    #[error("track {track}: no codecs string for sample entry `{entry}`")]
    Codec {
        /// The track id.
        track: u32,
        /// The sample entry type, printable.
        entry: String,
    },
    /// More samples than one progressive file's tables are allowed to hold here.
    #[error("track {track}: more than {limit} samples")]
    TooManySamples {
        /// The track id.
        track: u32,
        /// The limit ([`crate::MAX_SAMPLES_PER_TRACK`]).
        limit: u32,
    },
    /// A fragment was refused before this call: what was indexed of it cannot be trusted, and
    /// the fragments after it would be numbered wrongly, so the writer takes nothing more.
    #[error("fragment {fragment} was refused; start again from the init segment")]
    Refused {
        /// Index of the fragment that was refused, from 0.
        fragment: usize,
    },
    /// Nothing to write: no samples at all, or none in the time range asked for.
    #[error("nothing to write: {problem}")]
    Empty {
        /// Why.
        problem: &'static str,
    },
}

/// A four-character code, printable whatever its bytes.
pub(crate) fn fourcc(kind: &[u8; 4]) -> String {
    kind.iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b).to_string()
            } else {
                format!("\\x{b:02x}")
            }
        })
        .collect()
}
