// Dense captions as WebVTT and SRT: a copy, rule for rule, of client/src/subtitles.rs (read its
// module comment); tests/browser.rs checks that both give the same files. Segments are
// {start_s, end_s, text}.
"use strict";

const Subtitles = (() => {
  const seconds = (value) => (Number.isFinite(value) && value > 0 ? value : 0);

  const cleanText = (text) =>
    text.split(/\r\n|\r|\n/)
      .map((line) => line.replace(/^[ \t]+|[ \t]+$/g, ""))
      .filter((line) => line !== "")
      .join("\n");

  const escapeVtt = (text) => text.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;");

  // Text cleaned, empty ones left out, sorted by start, each ending by the next one's start.
  function cues(segments) {
    const cues = segments
      .map((s) => ({ start_s: seconds(s.start_s), end_s: seconds(s.end_s), text: cleanText(s.text) }))
      .filter((cue) => cue.text !== "");
    cues.sort((a, b) => a.start_s - b.start_s);
    cues.forEach((cue, i) => {
      const next = cues.slice(i + 1).map((c) => c.start_s).find((s) => s > cue.start_s);
      const end = Math.max(cue.end_s, cue.start_s);
      cue.end_s = next === undefined ? end : Math.min(end, next);
    });
    return cues;
  }

  const pad = (n, width) => String(n).padStart(width, "0");
  function timestamp(value, format) {
    const ms = Math.round(value * 1000);
    const h = Math.floor(ms / 3600000), m = Math.floor(ms / 60000) % 60, s = Math.floor(ms / 1000) % 60;
    return `${pad(h, 2)}:${pad(m, 2)}:${pad(s, 2)}${format === "vtt" ? "." : ","}${pad(ms % 1000, 3)}`;
  }

  function render(segments, format) {
    let out = format === "vtt" ? "WEBVTT\n\n" : "";
    cues(segments).forEach((cue, i) => {
      const text = format === "vtt" ? escapeVtt(cue.text) : cue.text.split("-->").join("-- >");
      out += `${i + 1}\n${timestamp(cue.start_s, format)} --> ${timestamp(cue.end_s, format)}\n${text}\n\n`;
    });
    return out;
  }

  return { vtt: (segments) => render(segments, "vtt"), srt: (segments) => render(segments, "srt") };
})();
