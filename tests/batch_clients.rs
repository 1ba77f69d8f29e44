//! The official `openai` Python SDK (pinned, tests/openai/requirements.txt) runs a batch of image
//! and video lines through gitcap's Files and Batches API: `files.create`, `batches.create`,
//! `batches.retrieve` polling, `files.content`, listing and deleting. Each output line must be
//! the gRPC API's answer for its input (the golden, by `custom_id`); malformed lines must be in
//! the error file.

mod common;

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use common::fixtures::fixtures;
use common::openai::data_uri;
use common::python::{self, describe};
use common::server::TestServer;
use common::tools::{self, Tool};
use common::videos::Videos;
use gitcap_client::{CaptionOptions, ClientConfig, GitcapClient, Media};

const TOKEN: &str = "batch-sdk-secret";

fn line(custom_id: &str, content: Value, tokens: u32) -> Value {
    json!({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": {
        "model": "tiny", "max_tokens": tokens, "messages": [{"role": "user", "content": content}]}})
}

#[tokio::test]
async fn the_openai_sdk_runs_a_batch_of_images_and_videos() {
    let requirements = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai/requirements.txt");
    let Some(python) = python::venv("openai-venv", &requirements, "batch_sdk") else { return };
    if tools::require(Tool::Ffmpeg, "batch_sdk").is_none() {
        return;
    }
    let videos = Videos::new();
    let video = std::fs::read(videos.h264_mp4("clip.mp4", "64x48", 25, 2.0)).unwrap();
    let shapes = std::fs::read(fixtures().join("media/shapes.png")).unwrap();
    let photo = std::fs::read(fixtures().join("media/photo.jpg")).unwrap();
    let image = |bytes: &[u8], mime: &str| json!([{"type": "image_url", "image_url": {"url": data_uri(mime, bytes)}}]);
    let lines = [
        line("image-shapes", image(&shapes, "image/png"), 8),
        line("image-photo", image(&photo, "image/jpeg"), 6),
        line("video-clip", json!([{"type": "video_url", "video_url": {"url": data_uri("video/mp4", &video)}}]), 8),
    ];
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("input.jsonl");
    let mut text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    text.push_str("{not json\n");
    text.push_str(&format!("{}\n", line("no-media", json!("only words"), 4)));
    std::fs::write(&input, text).unwrap();

    let data = tempfile::tempdir().unwrap();
    let env = [("GITCAP__AUTH__INFERENCE_TOKEN", TOKEN), ("GITCAP__BATCH__DATA_DIR", data.path().to_str().unwrap())];
    let server = TestServer::start_with_env("tiny-git-video", &[], &env);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/batch/sdk.py");
    let output =
        Command::new(&python).arg(&script).arg(format!("{}/v1", server.url())).arg(TOKEN).arg(&input).output().unwrap();
    assert!(output.status.success(), "{}", describe("tests/batch/sdk.py", &output));
    let got: Value = serde_json::from_slice(&output.stdout).unwrap();

    let batch = &got["batch"];
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(batch["request_counts"], json!({"total": 5, "completed": 3, "failed": 2}), "{batch}");
    assert_eq!(batch["metadata"], json!({"dataset": "fixtures"}));
    assert_eq!(got["listed"], json!([batch["id"]]), "the newest batch first");
    assert_eq!(got["files"], json!(["batch", "batch_output", "batch_output"]));
    assert_eq!((got["deleted"].as_bool(), got["gone"].as_u64()), (Some(true), Some(404)));

    let client = GitcapClient::connect(ClientConfig::new(server.url()).token(TOKEN)).await.unwrap();
    let golden = |media: Media, tokens: u32| {
        let client = client.clone();
        async move { client.caption(media, &CaptionOptions::default().max_new_tokens(tokens)).await.unwrap().text }
    };
    let goldens = [
        ("image-shapes", golden(Media::image(shapes.clone()), 8).await),
        ("image-photo", golden(Media::image(photo.clone()), 6).await),
        ("video-clip", golden(Media::video(video.clone()), 8).await),
    ];
    let outputs = got["output"].as_array().unwrap();
    assert_eq!(outputs.len(), 3, "{outputs:?}");
    for (custom_id, caption) in goldens {
        let answer = outputs.iter().find(|o| o["custom_id"] == custom_id).unwrap_or_else(|| panic!("{custom_id}"));
        assert_eq!(answer["response"]["status_code"], 200);
        assert_eq!(answer["response"]["body"]["choices"][0]["message"]["content"], caption.as_str(), "{custom_id}");
    }
    let errors = got["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(errors[0]["error"]["code"], "invalid_json_line", "{errors:?}");
    assert_eq!(errors[1]["custom_id"], "no-media");
    assert_eq!(errors[1]["response"]["status_code"], 400, "{errors:?}");
}
