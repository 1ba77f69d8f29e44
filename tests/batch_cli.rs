//! `gitcap batch` against a real server: a directory and a JSONL manifest captioned into JSONL or
//! CSV, equal to what `Caption` answers; a failed item is an error line, not the run's end;
//! `--resume` after a partial output (a last line cut short) skips what is done and answers
//! the rest once; `--dense` writes one WebVTT per video.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

use common::fixtures::fixtures;
use common::server::{workspace, TestServer};
use common::tools::{self, target_dir, Tool};
use gitcap_client::{CaptionOptions, Media};

/// The `gitcap` binary of this target directory, built (or brought up to date) once, with the
/// workspace's features (as `-p gitcap-client` alone would resolve them differently and rebuild
/// shared dependencies).
fn gitcap_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let status = Command::new(env!("CARGO"))
                .args(["build", "--workspace", "--bin", "gitcap"])
                .current_dir(workspace())
                .status()
                .expect("running cargo build --bin gitcap");
            assert!(status.success(), "building gitcap failed");
            target_dir().join("debug/gitcap")
        })
        .clone()
}

fn gitcap(server: &TestServer, args: &[&str]) -> Output {
    Command::new(gitcap_binary())
        .args(["--server", &server.url()])
        .args(args)
        .env_remove("GITCAP_TOKEN")
        .output()
        .expect("running gitcap")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn jsonl(path: &Path) -> BTreeMap<String, Value> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = BTreeMap::new();
    for line in text.lines() {
        let value: Value = serde_json::from_str(line).unwrap();
        let id = value["id"].as_str().unwrap().to_string();
        assert!(lines.insert(id.clone(), value).is_none(), "{id} is in the output twice:\n{text}");
    }
    lines
}

/// A directory of three images, one in a subdirectory, and a file that is not media.
fn images(dir: &Path) {
    let media = fixtures().join("media");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::copy(media.join("shapes.png"), dir.join("shapes.png")).unwrap();
    std::fs::copy(media.join("gray.png"), dir.join("gray.png")).unwrap();
    std::fs::copy(media.join("photo.jpg"), dir.join("sub/photo.jpg")).unwrap();
    std::fs::write(dir.join("notes.txt"), "not media").unwrap();
}

async fn grpc(server: &TestServer, path: &Path, options: CaptionOptions) -> String {
    let client = server.client(None).await;
    client.caption(Media::image(std::fs::read(path).unwrap()), &options).await.unwrap().text
}

#[tokio::test]
async fn a_directory_is_captioned_as_caption_answers_and_resume_finishes_a_cut_output() {
    let server = TestServer::start("tiny-git-image", &[]);
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("images");
    images(&input);
    let out = work.path().join("out.jsonl");
    let run = |extra: &[&str]| {
        let mut args = vec!["batch", input.to_str().unwrap(), "--out", out.to_str().unwrap(), "--max-new-tokens", "6"];
        args.extend_from_slice(extra);
        gitcap(&server, &args)
    };
    let output = run(&["--concurrency", "2"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let answers = jsonl(&out);
    assert_eq!(answers.keys().collect::<Vec<_>>(), ["gray.png", "shapes.png", "sub/photo.jpg"]);
    for (id, answer) in &answers {
        let expected = grpc(&server, &input.join(id), CaptionOptions::default().max_new_tokens(6)).await;
        assert_eq!(answer["text"], expected.as_str(), "{id}");
        assert_eq!(answer["error"], Value::Null);
        assert_eq!(answer["model"], "tiny");
    }

    let refused = run(&[]);
    assert!(!refused.status.success() && stderr(&refused).contains("--resume"), "{}", stderr(&refused));

    // A run stopped after its first line, part-way through writing the second.
    let first = std::fs::read_to_string(&out).unwrap().lines().next().unwrap().to_string();
    std::fs::write(&out, format!("{first}\n{{\"id\": \"shapes.png\", \"te")).unwrap();
    let output = run(&["--resume"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let resumed = jsonl(&out);
    assert_eq!(resumed, answers, "each item once, the same answers");
    assert!(std::fs::read_to_string(&out).unwrap().starts_with(&first), "what was done is kept as it was");
}

#[tokio::test]
async fn a_manifest_sets_questions_and_options_and_a_bad_item_is_an_error_line() {
    let server = TestServer::start("tiny-git-image", &[]);
    let work = tempfile::tempdir().unwrap();
    let media = fixtures().join("media");
    std::fs::copy(media.join("shapes.png"), work.path().join("shapes.png")).unwrap();
    let manifest = work.path().join("manifest.jsonl");
    std::fs::write(
        &manifest,
        format!(
            "{}\n{}\n{}\n",
            r#"{"id": "plain", "path": "shapes.png"}"#,
            r#"{"id": "asked", "path": "shapes.png", "question": "what is it?", "options": {"max_new_tokens": 3}}"#,
            r#"{"id": "missing", "path": "absent.png"}"#
        ),
    )
    .unwrap();
    let out = work.path().join("out.csv");
    let output = gitcap(
        &server,
        &[
            "batch",
            manifest.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--format",
            "csv",
            "--max-new-tokens",
            "5",
        ],
    );
    assert_eq!(output.status.code(), Some(2), "a failed item: exit code 2: {}", stderr(&output));
    assert!(stderr(&output).contains("missing"), "{}", stderr(&output));
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.starts_with("id,media,text,finish_reason,model,version,subtitles,error\n"), "{text}");
    assert_eq!(text.lines().count(), 4, "a header and three rows: {text}");
    let image = work.path().join("shapes.png");
    let plain = grpc(&server, &image, CaptionOptions::default().max_new_tokens(5)).await;
    let asked = grpc(&server, &image, CaptionOptions::default().max_new_tokens(3).question("what is it?")).await;
    let field =
        |s: &str| if s.contains([',', '"']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() };
    let media = image.display().to_string();
    for (id, caption) in [("plain", &plain), ("asked", &asked)] {
        let row = format!("{id},{},{},", field(&media), field(caption));
        assert!(text.lines().any(|line| line.starts_with(&row)), "{row} in\n{text}");
    }
    let missing = text.lines().find(|line| line.starts_with("missing,")).unwrap();
    assert!(missing.contains("absent.png") && missing.ends_with(|c: char| c != ','), "{missing}");
}

#[tokio::test]
async fn dense_writes_one_webvtt_per_video() {
    if tools::require(Tool::Ffmpeg, "batch_cli_dense").is_none() {
        return;
    }
    let server = TestServer::start("tiny-git-video", &[]);
    let videos = common::videos::Videos::new();
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("videos");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::copy(videos.h264_mp4("a.mp4", "64x48", 10, 4.0), input.join("a.mp4")).unwrap();
    std::fs::copy(fixtures().join("media/shapes.png"), input.join("still.png")).unwrap();
    let (out, vtt) = (work.path().join("out.jsonl"), work.path().join("subtitles"));
    let args = [
        "batch",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--dense",
        "--subtitles-dir",
        vtt.to_str().unwrap(),
        "--window",
        "2",
        "--max-new-tokens",
        "4",
    ];
    let output = gitcap(&server, &args);
    assert!(output.status.success(), "{}", stderr(&output));
    let answers = jsonl(&out);
    let subtitles = answers["a.mp4"]["subtitles"].as_str().unwrap();
    let text = std::fs::read_to_string(subtitles).unwrap();
    assert!(text.starts_with("WEBVTT\n\n1\n00:00:00.000 --> 00:00:02.000\n"), "{text}");
    assert_eq!(text.matches(" --> ").count(), 2, "two 2 s windows of a 4 s video: {text}");
    assert_eq!(answers["still.png"]["subtitles"], Value::Null, "an image gets a caption");
    assert!(answers["still.png"]["text"].is_string());
}
