//! A decrypted init segment and its fragments, as export and the review page's download turn
//! them into one progressive MP4.
//!
//! Input: one byte of options (bit 0: cut to a range, bit 1: chapters), two bytes of range (from
//! and to, tenths of a second), then length-prefixed pieces (u32 big-endian): the init segment,
//! then up to 64 fragments.
#![no_main]

use libfuzzer_sys::fuzz_target;
use neoflix_mp4::{Chapter, InitInfo, Progressive, webvtt_chapters};

fuzz_target!(|data: &[u8]| {
    let Some((&[options, from, to], mut rest)) = data.split_first_chunk::<3>() else {
        return;
    };
    let mut pieces = Vec::new();
    while let Some((len, tail)) = rest.split_first_chunk::<4>() {
        let len = (u32::from_be_bytes(*len) as usize).min(tail.len());
        pieces.push(&tail[..len]);
        rest = &tail[len..];
        if pieces.len() > 64 {
            break;
        }
    }
    let Some((init, fragments)) = pieces.split_first() else {
        return;
    };
    if let Ok(info) = InitInfo::parse(init) {
        let _ = info.mime_codecs();
    }
    let Ok(mut p) = Progressive::new(init) else {
        return;
    };
    if options & 1 != 0 {
        p.range(f64::from(from) / 10.0, f64::from(to) / 10.0);
    }
    if options & 2 != 0 {
        p.chapters(&[
            Chapter::new(0.5, "cord --> clamped\n"),
            Chapter::new(f64::from(from) / 10.0, "é"),
        ]);
    }
    for f in fragments {
        if p.push_fragment(f).is_err() {
            return;
        }
    }
    let Ok(layout) = p.finish() else {
        return;
    };
    let file = layout
        .to_vec(fragments)
        .expect("the fragments indexed are accepted");
    assert_eq!(file.len() as u64, layout.len());
    assert_eq!(&file[4..8], b"ftyp");
    let moov_at = u32::from_be_bytes(file[..4].try_into().unwrap()) as usize;
    assert_eq!(&file[moov_at + 4..moov_at + 8], b"moov", "moov first");
    assert!(layout.duration_secs().is_finite() && layout.duration_secs() >= 0.0);
    let vtt = webvtt_chapters(layout.chapters(), layout.duration_secs());
    assert!(vtt.starts_with("WEBVTT\n"));
    assert_eq!(vtt.matches("-->").count(), layout.chapters().len());
});
