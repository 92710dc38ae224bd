//! Opened media for the page: an init segment's codecs for Media Source Extensions, where a
//! fragment goes on the recording's timeline, and a download built as a progressive MP4 (over
//! `neoflix-mp4`, which is pure and builds for wasm32).
//!
//! Placement: the manifest gives each fragment's length, so the page knows where fragment `i`
//! starts on the recording's timeline (the sum of the lengths before it). The fragment's own
//! decode times count from its capture stream's start (and start again after a camera
//! restart), so the page sets the `SourceBuffer`'s `timestampOffset` to
//! [`MediaInit::timestamp_offset`] before appending it: the fragment then plays exactly where
//! the manifest puts it, whatever was appended before.

use neoflix_mp4::{
    Chapter, Handler, InitInfo, Layout, Progressive, parse_fragment, select_fragment, select_init,
};
use wasm_bindgen::prelude::wasm_bindgen;

use crate::WebError;

/// How far a fragment's media may reach outside its place in the manifest, seconds: a sound
/// track's last frame can outlast the video's by a little.
pub const PLACE_SLACK_SECS: f64 = 0.25;

fn mp4(e: neoflix_mp4::Mp4Error) -> WebError {
    WebError::Media(e.to_string())
}

/// An opened init segment: what Media Source Extensions need to know of its stream.
#[wasm_bindgen]
#[derive(Debug)]
pub struct MediaInit {
    /// The tracks, their timescales and codecs.
    info: InitInfo,
    /// The opened init segment, from which each view's is cut.
    init: Vec<u8>,
}

#[wasm_bindgen]
impl MediaInit {
    /// Reads an opened init segment (`ftyp` + `moov`).
    #[wasm_bindgen(constructor)]
    pub fn new(init: &[u8]) -> Result<MediaInit, WebError> {
        Ok(MediaInit {
            info: InitInfo::parse(init).map_err(mp4)?,
            init: init.to_vec(),
        })
    }

    /// How many views the stream has: its video tracks (two with a second camera), at most
    /// [`MAX_VIEWS`].
    pub fn views(&self) -> u32 {
        self.video_tracks().len() as u32
    }

    /// The init segment of view `view` alone, for a `SourceBuffer` of its own: the first view
    /// with the sound, the second without.
    #[wasm_bindgen(js_name = viewInit)]
    pub fn view_init(&self, view: u32) -> Result<Vec<u8>, WebError> {
        select_init(&self.init, &self.view_tracks(view)?).map_err(mp4)
    }

    /// The MIME type with codecs of view `view`.
    #[wasm_bindgen(js_name = viewMime)]
    pub fn view_mime(&self, view: u32) -> Result<String, WebError> {
        InitInfo::parse(&self.view_init(view)?)
            .and_then(|i| i.mime_codecs())
            .map_err(mp4)
    }

    /// When view `view`'s picture starts in the opened `fragment`, seconds of its own decode
    /// time (its first frame's presentation time); none when the fragment has no picture of
    /// it (a second camera that started late). The page keeps the second view's first frames
    /// from falling before the recording's start, where a `SourceBuffer` drops them: its camera
    /// may tick a frame or two ahead of the first one.
    #[wasm_bindgen(js_name = viewStartSecs)]
    pub fn view_start_secs(&self, view: u32, fragment: &[u8]) -> Result<Option<f64>, WebError> {
        let Some(&id) = self.video_tracks().get(view as usize) else {
            return Err(WebError::Media(format!(
                "the stream has no view {}",
                view + 1
            )));
        };
        let timescale = self
            .info
            .track(id)
            .map(|t| t.timescale)
            .filter(|&t| t > 0)
            .ok_or_else(|| WebError::Media("the view's track has no timescale".into()))?;
        Ok(parse_fragment(&self.info, fragment, 0)
            .map_err(mp4)?
            .iter()
            .filter(|t| t.track_id == id)
            .flat_map(|t| &t.samples)
            .map(|s| {
                (s.decode_time as f64 + f64::from(s.composition_offset)) / f64::from(timescale)
            })
            .reduce(f64::min))
    }

    /// The opened `fragment` cut to view `view`, for the view's `SourceBuffer` (with the same
    /// `timestampOffset` as the whole fragment, so the views stay on one clock).
    #[wasm_bindgen(js_name = viewFragment)]
    pub fn view_fragment(&self, view: u32, fragment: &[u8]) -> Result<Vec<u8>, WebError> {
        select_fragment(&self.info, fragment, &self.view_tracks(view)?, 0).map_err(mp4)
    }

    /// The type for `MediaSource.addSourceBuffer` and `changeType`, e.g.
    /// `video/mp4; codecs="avc1.64001f"`.
    pub fn mime(&self) -> Result<String, WebError> {
        self.info.mime_codecs().map_err(mp4)
    }

    /// Whether the stream has a sound track.
    #[wasm_bindgen(js_name = hasAudio)]
    pub fn has_audio(&self) -> bool {
        self.info
            .tracks
            .iter()
            .any(|t| matches!(t.handler, Handler::Audio))
    }

    /// The `timestampOffset` (seconds) that places the opened `fragment` at its place on the
    /// recording's timeline, `start_secs..end_secs` (the manifest's). Refused when its samples,
    /// so placed, would reach more than [`PLACE_SLACK_SECS`] outside that place: a crafted
    /// fragment (a room box's, since the manifest's digest covers it) must not overwrite its
    /// neighbours' media in the `SourceBuffer`, nor grow the media source's duration.
    #[wasm_bindgen(js_name = timestampOffset)]
    pub fn timestamp_offset(
        &self,
        fragment: &[u8],
        start_secs: f64,
        end_secs: f64,
    ) -> Result<f64, WebError> {
        let trafs = parse_fragment(&self.info, fragment, 0).map_err(mp4)?;
        let secs = |t: u64, timescale: u32| t as f64 / f64::from(timescale);
        let mut first = None;
        for traf in &trafs {
            let timescale = self
                .info
                .track(traf.track_id)
                .map(|t| t.timescale)
                .filter(|&t| t > 0)
                .ok_or_else(|| WebError::Media("the fragment's track has no timescale".into()))?;
            let decode = traf
                .base_decode_time
                .or_else(|| traf.samples.first().map(|s| s.decode_time))
                .unwrap_or(0);
            // Every track fragment is moved by the same offset: the first one's start sets it.
            let base = *first.get_or_insert(secs(decode, timescale));
            let from = start_secs + secs(decode, timescale) - base;
            let length: u64 = traf.samples.iter().map(|s| u64::from(s.duration)).sum();
            let to = from + secs(length, timescale);
            if from < start_secs - PLACE_SLACK_SECS || to > end_secs + PLACE_SLACK_SECS {
                return Err(WebError::Misplaced(format!(
                    "the fragment's media lies at {from:.3}..{to:.3} s, its place in the manifest is {start_secs:.3}..{end_secs:.3} s"
                )));
            }
        }
        let base =
            first.ok_or_else(|| WebError::Media("the fragment has no track fragment".into()))?;
        Ok(start_secs - base)
    }

    /// The length of one video frame in seconds, from the fragment's first video sample (for
    /// frame stepping); 0 when the fragment has no video.
    #[wasm_bindgen(js_name = frameSecs)]
    pub fn frame_secs(&self, fragment: &[u8]) -> Result<f64, WebError> {
        let trafs = parse_fragment(&self.info, fragment, 0).map_err(mp4)?;
        for traf in trafs {
            let Some(track) = self.info.track(traf.track_id) else {
                continue;
            };
            if matches!(track.handler, Handler::Video)
                && track.timescale > 0
                && let Some(s) = traf.samples.first()
            {
                return Ok(f64::from(s.duration) / f64::from(track.timescale));
            }
        }
        Ok(0.0)
    }
}

/// The most views a recording has: the room camera and a second one.
pub const MAX_VIEWS: usize = 2;

impl MediaInit {
    fn video_tracks(&self) -> Vec<u32> {
        self.info
            .tracks
            .iter()
            .filter(|t| matches!(t.handler, Handler::Video))
            .map(|t| t.id)
            .take(MAX_VIEWS)
            .collect()
    }

    /// The tracks of view `view`: its video track, and for the first view the tracks that are
    /// not video (the sound).
    fn view_tracks(&self, view: u32) -> Result<Vec<u32>, WebError> {
        let videos = self.video_tracks();
        let Some(&chosen) = videos.get(view as usize) else {
            return Err(WebError::Media(format!(
                "the stream has {} view(s), not a view {}",
                videos.len(),
                view + 1
            )));
        };
        Ok(self
            .info
            .tracks
            .iter()
            .filter(|t| t.id == chosen || (view == 0 && !matches!(t.handler, Handler::Video)))
            .map(|t| t.id)
            .collect())
    }
}

/// A download being built: one capture stream's fragments, cut to a time range, with the
/// markers as chapters, as a progressive MP4 (`moov` first) that every player seeks in.
///
/// The page pushes the opened fragments in order ([`Download::push`] keeps none of their
/// bytes), calls [`Download::finish`], then writes [`Download::head`] followed by
/// [`Download::media`] of each fragment again.
#[wasm_bindgen]
#[derive(Debug)]
pub struct Download {
    /// Indexing, until `finish`.
    writer: Option<Progressive>,
    /// The file's layout, after `finish`.
    layout: Option<Layout>,
    /// Where the first pushed fragment starts on the recording's timeline: chapters and the
    /// range are given on that timeline, the writer counts from its first fragment.
    origin_secs: f64,
}

#[wasm_bindgen]
impl Download {
    /// A download of the stream of `init` (opened), whose first fragment to be pushed starts at
    /// `origin_secs` on the recording's timeline; `from_secs..to_secs` and the chapters
    /// (`chapter_secs[i]`, `chapter_titles[i]`) are on that timeline too.
    #[wasm_bindgen(constructor)]
    pub fn new(
        init: &[u8],
        origin_secs: f64,
        from_secs: f64,
        to_secs: f64,
        chapter_secs: Vec<f64>,
        chapter_titles: Vec<String>,
    ) -> Result<Download, WebError> {
        if chapter_secs.len() != chapter_titles.len() {
            return Err(WebError::Argument(
                "as many chapter times as titles, please".into(),
            ));
        }
        if !(from_secs.is_finite() && to_secs.is_finite() && from_secs < to_secs) {
            return Err(WebError::Argument(format!(
                "the range {from_secs}..{to_secs} is empty"
            )));
        }
        let mut writer = Progressive::new(init).map_err(mp4)?;
        let chapters: Vec<Chapter> = chapter_secs
            .iter()
            .zip(&chapter_titles)
            .filter(|(t, _)| **t >= from_secs && **t < to_secs)
            .map(|(t, title)| Chapter::new(t - origin_secs, title))
            .collect();
        writer
            .chapters(&chapters)
            .range(from_secs - origin_secs, to_secs - origin_secs);
        Ok(Download {
            writer: Some(writer),
            layout: None,
            origin_secs,
        })
    }

    /// Indexes the next opened fragment (in order).
    pub fn push(&mut self, fragment: &[u8]) -> Result<(), WebError> {
        self.writer
            .as_mut()
            .ok_or_else(|| WebError::Argument("push after finish".into()))?
            .push_fragment(fragment)
            .map_err(mp4)
    }

    /// Lays the file out; after this, [`Download::head`] and [`Download::media`].
    pub fn finish(&mut self) -> Result<(), WebError> {
        let writer = self
            .writer
            .take()
            .ok_or_else(|| WebError::Argument("finish twice".into()))?;
        self.layout = Some(writer.finish().map_err(mp4)?);
        Ok(())
    }

    fn layout(&self) -> Result<&Layout, WebError> {
        self.layout
            .as_ref()
            .ok_or_else(|| WebError::Argument("finish first".into()))
    }

    /// The start of the file: `ftyp`, `moov`, the `mdat` header.
    pub fn head(&self) -> Result<Vec<u8>, WebError> {
        Ok(self.layout()?.head().to_vec())
    }

    /// What fragment `index` (the same bytes as pushed) contributes to the file.
    pub fn media(&self, index: usize, fragment: &[u8]) -> Result<Vec<u8>, WebError> {
        Ok(self.layout()?.media(index, fragment).map_err(mp4)?.concat())
    }

    /// The file's length in bytes.
    #[wasm_bindgen(js_name = byteLength)]
    pub fn byte_length(&self) -> Result<f64, WebError> {
        Ok(self.layout()?.len() as f64)
    }

    /// Where the file starts on the recording's timeline (the sync sample at or before the
    /// range's start), seconds.
    #[wasm_bindgen(js_name = startSecs)]
    pub fn start_secs(&self) -> Result<f64, WebError> {
        Ok(self.origin_secs + self.layout()?.start_secs())
    }

    /// The file's duration, seconds.
    #[wasm_bindgen(js_name = durationSecs)]
    pub fn duration_secs(&self) -> Result<f64, WebError> {
        Ok(self.layout()?.duration_secs())
    }

    /// The WebVTT chapter file to save beside the MP4.
    #[wasm_bindgen(js_name = webvttChapters)]
    pub fn webvtt_chapters(&self) -> Result<String, WebError> {
        let layout = self.layout()?;
        Ok(neoflix_mp4::webvtt_chapters(
            layout.chapters(),
            layout.duration_secs(),
        ))
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    /// Three seconds of a 64x48 test pattern at 10 fps, H.264, fragmented by ffmpeg at every
    /// keyframe (one a second): `ftyp moov (moof mdat)×3 mfra`.
    const FILE: &[u8] = include_bytes!("../tests/data/fragmented-3s.mp4");

    /// The init segment and the fragments of [`FILE`], as a room box's objects hold them.
    fn split() -> (Vec<u8>, Vec<Vec<u8>>) {
        let mut boxes = Vec::new();
        let mut at = 0;
        while at + 8 <= FILE.len() {
            let len = u32::from_be_bytes(FILE[at..at + 4].try_into().unwrap()) as usize;
            boxes.push((&FILE[at + 4..at + 8], &FILE[at..at + len]));
            at += len;
        }
        let init = [boxes[0].1, boxes[1].1].concat();
        let fragments = boxes
            .windows(2)
            .filter(|w| w[0].0 == b"moof" && w[1].0 == b"mdat")
            .map(|w| [w[0].1, w[1].1].concat())
            .collect();
        (init, fragments)
    }

    #[test]
    fn a_stream_of_one_camera_is_one_view_and_asking_for_a_second_is_refused() {
        let (init, frags) = split();
        let m = MediaInit::new(&init).unwrap();
        assert_eq!(m.views(), 1);
        assert_eq!(m.view_mime(0).unwrap(), m.mime().unwrap());
        let view = m.view_fragment(0, &frags[1]).unwrap();
        let whole = parse_fragment(&m.info, &frags[1], 0).unwrap();
        let cut = parse_fragment(&m.info, &view, 0).unwrap();
        assert_eq!(cut[0].samples.len(), whole[0].samples.len());
        assert_eq!(
            m.timestamp_offset(&view, 1.0, 2.0).unwrap(),
            m.timestamp_offset(&frags[1], 1.0, 2.0).unwrap()
        );
        let e = m.view_init(1).unwrap_err().to_string();
        assert!(e.contains("1 view(s), not a view 2"), "{e}");
        assert!(m.view_fragment(1, &frags[1]).is_err());
    }

    #[test]
    fn an_init_segment_gives_its_codecs_and_fragments_their_place() {
        let (init, frags) = split();
        assert_eq!(frags.len(), 3);
        let m = MediaInit::new(&init).unwrap();
        let mime = m.mime().unwrap();
        assert!(mime.starts_with("video/mp4; codecs=\"avc1.42"), "{mime}");
        assert!(!m.has_audio());
        // Fragment 2 decodes from 2 s of its stream; placed at 10 s on the recording's
        // timeline, the offset moves it by 8 s.
        let off = m.timestamp_offset(&frags[2], 10.0, 11.0).unwrap();
        assert!((off - 8.0).abs() < 1e-6, "{off}");
        assert!((m.timestamp_offset(&frags[0], 0.0, 1.0).unwrap()).abs() < 1e-6);
        assert!((m.frame_secs(&frags[1]).unwrap() - 0.1).abs() < 1e-6);
        assert!(MediaInit::new(b"not an mp4").is_err());
        assert!(m.timestamp_offset(b"junk", 0.0, 1.0).is_err());
    }

    #[test]
    fn a_fragment_longer_than_its_place_in_the_manifest_is_refused() {
        let (init, frags) = split();
        let m = MediaInit::new(&init).unwrap();
        // The second and third fragments as one (two seconds of media) where the manifest
        // gives one second: placed, it would cover the next fragment's second.
        let two = [frags[1].clone(), frags[2].clone()].concat();
        let err = m.timestamp_offset(&two, 5.0, 6.0).unwrap_err();
        assert!(matches!(err, WebError::Misplaced(_)), "{err}");
        assert!(m.timestamp_offset(&two, 5.0, 7.0).is_ok());
        // A manifest place shorter than the fragment by more than the slack.
        assert!(m.timestamp_offset(&frags[0], 0.0, 0.5).is_err());
    }

    fn build(d: &mut Download, frags: &[Vec<u8>]) -> Vec<u8> {
        for f in frags {
            d.push(f).unwrap();
        }
        d.finish().unwrap();
        let mut out = d.head().unwrap();
        for (i, f) in frags.iter().enumerate() {
            out.extend(d.media(i, f).unwrap());
        }
        assert_eq!(out.len() as f64, d.byte_length().unwrap());
        out
    }

    #[test]
    fn a_download_is_a_progressive_mp4_with_moov_first_and_chapters() {
        let (init, frags) = split();
        let mut d =
            Download::new(&init, 0.0, 0.0, 3.0, vec![1.5], vec!["cord clamped".into()]).unwrap();
        let file = build(&mut d, &frags);
        assert_eq!(&file[4..8], b"ftyp");
        let moov = file.windows(4).position(|w| w == b"moov").unwrap();
        let mdat = file.windows(4).position(|w| w == b"mdat").unwrap();
        assert!(moov < mdat, "moov first");
        assert!(!file.windows(4).any(|w| w == b"moof"), "not fragmented");
        assert!((d.duration_secs().unwrap() - 3.0).abs() < 0.05);
        let vtt = d.webvtt_chapters().unwrap();
        assert!(
            vtt.starts_with("WEBVTT") && vtt.contains("cord clamped"),
            "{vtt}"
        );
    }

    #[test]
    fn a_range_starts_at_a_keyframe_and_is_placed_on_the_recordings_timeline() {
        let (init, frags) = split();
        // The second and third fragments, which sit at 20 s..22 s of a longer recording;
        // the range asks for 20.5 s..21.5 s.
        let mut d = Download::new(&init, 20.0, 20.5, 21.5, vec![], vec![]).unwrap();
        build(&mut d, &frags[1..]);
        // No keyframe at 20.5 s: the file starts at the one before it.
        assert!((d.start_secs().unwrap() - 20.0).abs() < 0.05);
        let len = d.duration_secs().unwrap();
        assert!((1.4..=1.6).contains(&len), "{len}");
        assert!(Download::new(&init, 0.0, 2.0, 1.0, vec![], vec![]).is_err());
        assert!(Download::new(&init, 0.0, 0.0, 1.0, vec![1.0], vec![]).is_err());
        let mut d = Download::new(&init, 0.0, 0.0, 1.0, vec![], vec![]).unwrap();
        assert!(d.head().is_err(), "finish first");
        d.push(&frags[0]).unwrap();
        d.finish().unwrap();
        assert!(d.push(&frags[1]).is_err(), "push after finish");
        assert!(d.finish().is_err(), "finish twice");
    }
}
