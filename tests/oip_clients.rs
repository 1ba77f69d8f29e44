//! The Open Inference Protocol door through clients nobody here wrote: tritonclient (gRPC and
//! HTTP) and the kserve SDK's v2 clients (gRPC and REST), pinned in tests/oip/requirements.txt,
//! as a team running Triton or KServe would call gitcap. Each captions an image with a question,
//! six frames, and a video file holding those six frames losslessly, each equal to the
//! transformers goldens (the video file also to what gitcap's own gRPC API answers for it).

mod common;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use common::fixtures::{cases, fixtures};
use common::oip::{start, TOKEN};
use common::python::{self, describe};
use common::tools::{self, Tool};
use common::videos::{ffmpeg, Videos};
use gitcap_client::proto::FinishReason;
use gitcap_client::{CaptionOptions, ClientConfig, GitcapClient, Media};

#[tokio::test]
async fn tritonclient_and_the_kserve_sdk_caption_like_the_goldens() {
    let requirements = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oip/requirements.txt");
    let Some(python) = python::venv("oip-venv", &requirements, "oip_clients") else { return };
    if tools::require(Tool::Ffmpeg, "oip_clients").is_none() {
        return;
    }
    let media = fixtures().join("media");
    let frames: Vec<String> =
        (0..6).map(|i| media.join(format!("frames/frame_{i}.png")).display().to_string()).collect();
    // The six frames in a lossless Matroska file of 6 s, each shown twice at 2 frames a second,
    // so that the default sampling (segment centres 0.5 s, 1.5 s, …: the first frame at or
    // after each) sees exactly frames 0 to 5.
    let videos = Videos::new();
    let video = videos.path("frames.mkv");
    let pattern = media.join("frames/frame_%d.png").display().to_string();
    ffmpeg(&[
        "-framerate",
        "1",
        "-i",
        &pattern,
        "-vf",
        "fps=2",
        "-fps_mode",
        "cfr",
        "-c:v",
        "ffv1",
        "-pix_fmt",
        "bgr0",
        video.to_str().unwrap(),
    ]);

    let oip = start(&[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oip/clients.py");
    let mut answers = serde_json::Map::new();
    for family in ["triton", "kserve"] {
        let output = Command::new(&python)
            .arg(&script)
            .args([family, oip.server.addr.as_str(), TOKEN])
            .arg(media.join("photo.jpg"))
            .arg(&video)
            .args(&frames)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", describe(&format!("tests/oip/clients.py {family}"), &output));
        let got: Value = serde_json::from_slice(&output.stdout).unwrap();
        answers.extend(got.as_object().unwrap().clone());
    }

    let golden = |name: &str| {
        let case = cases().into_iter().find(|c| c.name == name).unwrap();
        let reason = if case.finished_by_eos { "eos" } else { "length" };
        serde_json::json!({ "text": case.text, "token_ids": case.generated_ids, "finish_reason": reason })
    };
    let client = GitcapClient::connect(ClientConfig::new(oip.server.url()).token(TOKEN)).await.unwrap();
    let options = CaptionOptions::default().model("video").max_new_tokens(12);
    let native = client.caption(Media::video(std::fs::read(&video).unwrap()), &options).await.unwrap();
    let native = serde_json::json!({
        "text": native.text,
        "token_ids": native.token_ids,
        "finish_reason": if native.finish_reason() == FinishReason::Eos { "eos" } else { "length" },
        "frame_timestamps_s": native.frame_timestamps_s,
    });
    let mut video_answer = golden("video_caption_greedy");
    video_answer["frame_timestamps_s"] = serde_json::json!([0.5, 1.5, 2.5, 3.5, 4.5, 5.5]);
    assert_eq!(native, video_answer, "gitcap's own gRPC API on the video file");
    let expected = [
        ("image_vqa", golden("image_vqa_greedy")),
        ("frames", golden("video_caption_greedy")),
        ("video_file", video_answer),
    ];
    for client in ["tritonclient_grpc", "tritonclient_http", "kserve_grpc", "kserve_rest"] {
        for (case, answer) in &expected {
            assert_eq!(&answers[client][case], answer, "{client}, {case}");
        }
    }
}
