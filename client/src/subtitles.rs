//! Dense captions as subtitles: WebVTT and SRT, the one definition (`gitcap dense --format
//! vtt|srt`; the browser page's `subtitles.js` is a line-for-line copy that `tests/browser.rs`
//! checks against this one).
//!
//! - **Order and overlap.** Cues are sorted by start. Dense windows overlap when the stride is
//!   shorter than the window; a cue then ends where the next one starts, so one caption is on
//!   screen at a time (the last keeps its own end).
//! - **Timing.** `HH:MM:SS.mmm` (WebVTT) or `HH:MM:SS,mmm` (SRT), rounded to the millisecond;
//!   hours grow past two digits; negative or non-finite times are 0.
//! - **Text.** Lines are split on `\r\n`, `\r` or `\n`, stripped of spaces and tabs at both ends,
//!   and blank ones dropped (a blank line would end the cue). WebVTT escapes `&`, `<` and `>` (so
//!   `-->` cannot appear); SRT keeps tags (players read `<i>`) and breaks `-->` as `-- >`. A
//!   window whose text is then empty gets no cue.

use std::fmt::Write;

use crate::DenseCaptionEvent;

/// One captioned span of a video, in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub start_s: f64,
    pub end_s: f64,
    pub text: String,
}

impl From<&DenseCaptionEvent> for Segment {
    fn from(event: &DenseCaptionEvent) -> Self {
        let text = event.caption.as_ref().map(|c| c.text.clone()).unwrap_or_default();
        Self { start_s: event.start_s, end_s: event.end_s, text }
    }
}

/// A subtitle file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// WebVTT (`.vtt`), what `<track>` reads.
    Vtt,
    /// SubRip (`.srt`).
    Srt,
}

/// `segments` as a WebVTT file.
pub fn vtt(segments: &[Segment]) -> String {
    render(segments, Format::Vtt)
}

/// `segments` as an SRT file.
pub fn srt(segments: &[Segment]) -> String {
    render(segments, Format::Srt)
}

/// `segments` as a subtitle file in `format`.
pub fn render(segments: &[Segment], format: Format) -> String {
    let mut out = String::from(if format == Format::Vtt { "WEBVTT\n\n" } else { "" });
    let mut number = 0;
    for cue in cues(segments) {
        let text = match format {
            Format::Vtt => escape_vtt(&cue.text),
            Format::Srt => cue.text.replace("-->", "-- >"),
        };
        number += 1;
        let (start, end) = (timestamp(cue.start_s, format), timestamp(cue.end_s, format));
        let _ = write!(out, "{number}\n{start} --> {end}\n{text}\n\n");
    }
    out
}

/// The cues to show: text cleaned, empty ones left out, sorted by start, each ending by the next
/// one's start.
fn cues(segments: &[Segment]) -> Vec<Segment> {
    let mut cues: Vec<Segment> = segments
        .iter()
        .map(|s| Segment { start_s: seconds(s.start_s), end_s: seconds(s.end_s), text: clean_text(&s.text) })
        .filter(|cue| !cue.text.is_empty())
        .collect();
    cues.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
    for i in 0..cues.len() {
        let start = cues[i].start_s;
        let next = cues[i + 1..].iter().map(|cue| cue.start_s).find(|&s| s > start);
        let end = cues[i].end_s.max(start);
        cues[i].end_s = next.map_or(end, |next| end.min(next));
    }
    cues
}

fn seconds(value: f64) -> f64 {
    if value.is_finite() && value > 0.0 {
        value
    } else {
        0.0
    }
}

fn clean_text(text: &str) -> String {
    text.split("\r\n")
        .flat_map(|line| line.split(['\r', '\n']))
        .map(|line| line.trim_matches([' ', '\t']))
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

fn escape_vtt(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// `seconds` as a cue timestamp, rounded to the millisecond.
fn timestamp(seconds: f64, format: Format) -> String {
    let ms = (seconds * 1000.0).round() as u64;
    let (h, m, s, ms) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let separator = if format == Format::Vtt { '.' } else { ',' };
    format!("{h:02}:{m:02}:{s:02}{separator}{ms:03}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(start_s: f64, end_s: f64, text: &str) -> Segment {
        Segment { start_s, end_s, text: text.into() }
    }

    #[test]
    fn webvtt_has_its_header_numbered_cues_and_dotted_milliseconds() {
        let file = vtt(&[segment(0.0, 1.5, "a dog runs"), segment(1.5, 3.0, "a dog sits")]);
        assert_eq!(
            file,
            "WEBVTT\n\n1\n00:00:00.000 --> 00:00:01.500\na dog runs\n\n2\n00:00:01.500 --> 00:00:03.000\na dog sits\n\n"
        );
    }

    #[test]
    fn srt_uses_commas_and_no_header() {
        let file = srt(&[segment(0.0, 1.5, "a dog runs"), segment(1.5, 3.0, "a dog sits")]);
        assert_eq!(
            file,
            "1\n00:00:00,000 --> 00:00:01,500\na dog runs\n\n2\n00:00:01,500 --> 00:00:03,000\na dog sits\n\n"
        );
    }

    #[test]
    fn times_round_to_the_millisecond_and_hours_grow() {
        assert_eq!(timestamp(0.0004, Format::Vtt), "00:00:00.000");
        assert_eq!(timestamp(0.0005, Format::Vtt), "00:00:00.001");
        assert_eq!(timestamp(59.9996, Format::Vtt), "00:01:00.000");
        assert_eq!(timestamp(3723.25, Format::Srt), "01:02:03,250");
        assert_eq!(timestamp(360_000.0, Format::Vtt), "100:00:00.000");
        let file = vtt(&[segment(-2.0, f64::NAN, "x")]);
        assert!(file.contains("00:00:00.000 --> 00:00:00.000\nx\n"), "{file}");
    }

    #[test]
    fn overlapping_windows_end_where_the_next_starts_in_start_order() {
        let windows = [segment(2.0, 4.0, "c"), segment(0.0, 2.0, "a"), segment(1.0, 3.0, "b")];
        let file = srt(&windows);
        assert_eq!(
            file,
            "1\n00:00:00,000 --> 00:00:01,000\na\n\n2\n00:00:01,000 --> 00:00:02,000\nb\n\n3\n00:00:02,000 --> 00:00:04,000\nc\n\n"
        );
    }

    #[test]
    fn arrows_markup_and_blank_lines_cannot_break_a_cue() {
        let windows = [segment(0.0, 1.0, "a --> b <i>&\r\n\r\n  \n\tsecond line \rthird"), segment(1.0, 2.0, " \n \n")];
        let file = vtt(&windows);
        assert_eq!(
            file,
            "WEBVTT\n\n1\n00:00:00.000 --> 00:00:01.000\na --&gt; b &lt;i&gt;&amp;\nsecond line\nthird\n\n"
        );
        let file = srt(&windows);
        assert_eq!(file, "1\n00:00:00,000 --> 00:00:01,000\na -- > b <i>&\nsecond line\nthird\n\n");
        assert_eq!(srt(&[segment(0.0, 1.0, "--->>")]), "1\n00:00:00,000 --> 00:00:01,000\n--- >>\n\n");
    }

    #[test]
    fn an_empty_caption_gets_no_cue_and_no_windows_an_empty_file() {
        assert_eq!(vtt(&[]), "WEBVTT\n\n");
        assert_eq!(srt(&[]), "");
        assert_eq!(srt(&[segment(0.0, 1.0, ""), segment(1.0, 2.0, "b")]), "1\n00:00:01,000 --> 00:00:02,000\nb\n\n");
        // An empty window does not cut the one before it short.
        let file = srt(&[segment(0.0, 2.0, "a"), segment(1.0, 3.0, " "), segment(2.0, 3.0, "c")]);
        assert!(file.starts_with("1\n00:00:00,000 --> 00:00:02,000\na\n"), "{file}");
    }
}
