//! `gitcap dense --format vtt|srt|jsonl` against a real server: the subtitles are
//! `gitcap_client::subtitles`' of the windows the client library gets, overlapping windows end
//! where the next starts, and `--format jsonl` is `--json`.

#[path = "../../tests/common/probe.rs"]
mod probe;
#[path = "../../tests/common/server.rs"]
mod server;
#[path = "../../tests/common/tools.rs"]
mod tools;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use futures::StreamExt;
use gitcap_client::subtitles::{self, Segment};
use gitcap_client::{CaptionOptions, DenseOptions, Media};
use server::{workspace, TestServer};
use tools::Tool;

fn gitcap(server: &TestServer, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gitcap"))
        .args(["--server", &server.url()])
        .args(args)
        .env_remove("GITCAP_TOKEN")
        .output()
        .expect("running gitcap")
}

fn ok(output: Output) -> String {
    assert!(output.status.success(), "gitcap failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// A 3-second clip of the fixture frames at 2 frames per second.
fn clip(ffmpeg: &Path, dir: &Path) -> PathBuf {
    let video = dir.join("clip.avi");
    let made = Command::new(ffmpeg)
        .args(["-nostdin", "-loglevel", "error", "-y", "-framerate", "2", "-i"])
        .arg(workspace().join("tests/fixtures/media/frames/frame_%d.png"))
        .args(["-vf", "scale=64:64", "-c:v", "mjpeg", "-q:v", "2"])
        .arg(&video)
        .status()
        .unwrap();
    assert!(made.success(), "ffmpeg could not make the test video");
    video
}

#[tokio::test]
async fn dense_prints_webvtt_srt_and_json_lines() {
    let Some(ffmpeg) = tools::require(Tool::Ffmpeg, "cli_dense_subtitles") else { return };
    let dir = tempfile::tempdir().unwrap();
    let video = clip(&ffmpeg, dir.path());
    let server = TestServer::start("tiny-git-video", &[]);

    // Windows of 2 s every 1 s: they overlap.
    let options = DenseOptions { caption: CaptionOptions::default().max_new_tokens(4), window_s: 2.0, stride_s: 1.0 };
    let windows: Vec<_> = server
        .client(None)
        .await
        .dense_caption(Media::video(std::fs::read(&video).unwrap()), &options)
        .await
        .unwrap()
        .map(|w| w.unwrap())
        .collect()
        .await;
    let segments: Vec<Segment> = windows.iter().map(Segment::from).collect();
    assert!(segments.len() >= 2 && segments[0].end_s > segments[1].start_s, "the windows overlap: {segments:?}");
    assert!(segments.iter().all(|s| !s.text.is_empty()), "{segments:?}");

    let args = ["dense", video.to_str().unwrap(), "--window", "2", "--stride", "1", "--max-new-tokens", "4"];
    let vtt = ok(gitcap(&server, &[&args[..], &["--format", "vtt"]].concat()));
    assert_eq!(vtt, subtitles::vtt(&segments));
    // What a player reads: a header, then per window its number, times and caption.
    let mut cues = vtt.strip_prefix("WEBVTT\n\n").expect("the WebVTT header").split_terminator("\n\n");
    let first = cues.next().unwrap();
    assert_eq!(first, format!("1\n00:00:00.000 --> 00:00:01.000\n{}", segments[0].text), "cut at the next start");
    assert_eq!(cues.count(), segments.len() - 1, "{vtt}");

    let srt = ok(gitcap(&server, &[&args[..], &["--format", "srt"]].concat()));
    assert_eq!(srt, subtitles::srt(&segments));
    assert!(srt.starts_with(&format!("1\n00:00:00,000 --> 00:00:01,000\n{}\n\n2\n", segments[0].text)), "{srt}");

    let jsonl = ok(gitcap(&server, &[&args[..], &["--format", "jsonl"]].concat()));
    // The same lines as --json, but for the timings.
    let untimed = |printed: &str| -> Vec<serde_json::Value> {
        let mut lines: Vec<serde_json::Value> = printed.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        lines.iter_mut().for_each(|l| l["caption"]["timings_ms"] = serde_json::Value::Null);
        lines
    };
    let lines = untimed(&jsonl);
    assert_eq!(lines, untimed(&ok(gitcap(&server, &[&args[..], &["--json"]].concat()))));
    assert_eq!(lines.len(), segments.len());
    assert_eq!(lines[1]["start_s"], segments[1].start_s);
    assert_eq!(lines[1]["caption"]["text"], segments[1].text.as_str());

    let text = ok(gitcap(&server, &args));
    assert!(text.starts_with(&format!("[0.00s-2.00s] {}\n", segments[0].text)), "{text}");

    let refused = gitcap(&server, &[&args[..], &["--format", "vtt", "--json"]].concat());
    assert!(!refused.status.success(), "--json with --format is refused");
}
