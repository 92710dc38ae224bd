//! Chapters: the titles players list and jump to, and the WebVTT chapter file beside the MP4.
//!
//! Titles are outside text (marker labels typed on a room box): [`Chapter::new`] keeps at most
//! [`MAX_TITLE_BYTES`] of them, cut on a character boundary, with control characters made
//! spaces, so every format below can hold them.

/// The longest title kept, in bytes of UTF-8: what a Nero `chpl` entry holds.
pub const MAX_TITLE_BYTES: usize = 255;

/// The most chapters written: what a Nero `chpl` box counts in one byte.
pub const MAX_CHAPTERS: usize = 255;

/// A chapter: where it starts and what it is called.
#[derive(Debug, Clone, PartialEq)]
pub struct Chapter {
    /// Seconds from the start of the input (the first frame), before any cut.
    pub start_secs: f64,
    /// The title: at most [`MAX_TITLE_BYTES`], no control characters.
    pub title: String,
}

impl Chapter {
    /// A chapter with its title made safe (see the module's overview).
    pub fn new(start_secs: f64, title: &str) -> Chapter {
        Chapter {
            start_secs,
            title: safe_title(title),
        }
    }
}

/// Control characters (newlines included) become spaces; cut to [`MAX_TITLE_BYTES`] on a
/// character boundary.
pub fn safe_title(title: &str) -> String {
    let mut out = String::new();
    for c in title.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > MAX_TITLE_BYTES {
            break;
        }
        out.push(c);
    }
    out
}

/// Chapters in time order, with usable start times and safe titles, at most [`MAX_CHAPTERS`].
pub(crate) fn normalize(chapters: &[Chapter]) -> Vec<Chapter> {
    let mut v: Vec<Chapter> = chapters
        .iter()
        .filter(|c| c.start_secs.is_finite() && c.start_secs >= 0.0)
        .map(|c| Chapter::new(c.start_secs, &c.title))
        .collect();
    v.sort_by(|a, b| a.start_secs.total_cmp(&b.start_secs));
    v.truncate(MAX_CHAPTERS);
    v
}

/// `HH:MM:SS.mmm`, as WebVTT wants it.
fn vtt_time(secs: f64) -> String {
    let ms = (secs.max(0.0) * 1000.0).round() as u64;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// A WebVTT chapter file (`<track kind="chapters">`): one cue per chapter, from its start to
/// the next one's (the last to `duration_secs`). Titles are escaped as cue text (`&`, `<`, `>`)
/// and cannot end a cue or fake a timing line (no newlines, no `-->`).
pub fn webvtt_chapters(chapters: &[Chapter], duration_secs: f64) -> String {
    let chapters = normalize(chapters);
    let mut out = String::from("WEBVTT\n");
    for (i, c) in chapters.iter().enumerate() {
        let end = chapters
            .get(i + 1)
            .map_or(duration_secs, |n| n.start_secs)
            .max(c.start_secs);
        let title = c
            .title
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        out.push_str(&format!(
            "\n{}\n{} --> {}\n{}\n",
            i + 1,
            vtt_time(c.start_secs),
            vtt_time(end),
            title
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_bounded_on_a_character_boundary_and_lose_control_characters() {
        assert_eq!(safe_title("a\nb\r\u{7}c"), "a b  c");
        let long = "é".repeat(200);
        let t = safe_title(&long);
        assert!(t.len() <= MAX_TITLE_BYTES);
        assert_eq!(t.len(), 254);
        assert!(t.chars().all(|c| c == 'é'));
    }

    #[test]
    fn webvtt_cues_cannot_be_forged_by_a_title() {
        let v = webvtt_chapters(
            &[
                Chapter::new(
                    12.5,
                    "cord --> clamped\n\n00:00:00.000 --> 00:01:00.000\nfake",
                ),
                Chapter::new(0.0, "start <b>&"),
                Chapter::new(f64::NAN, "dropped"),
            ],
            3725.0,
        );
        assert_eq!(
            v,
            "WEBVTT\n\n1\n00:00:00.000 --> 00:00:12.500\nstart &lt;b&gt;&amp;\n\n\
             2\n00:00:12.500 --> 01:02:05.000\n\
             cord --&gt; clamped  00:00:00.000 --&gt; 00:01:00.000 fake\n"
        );
        assert_eq!(webvtt_chapters(&[], 10.0), "WEBVTT\n");
    }
}
