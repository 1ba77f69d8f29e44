//! The Python example client (`examples/python/`) against a real server: its unary caption must
//! equal the Rust client's, and its streamed text the unary text.
//!
//! A virtual environment with `examples/python/requirements.txt` is created under the target
//! directory (`python-client-venv`) on the first run (pip reaches PyPI) and reused while the
//! requirements stay the same. Without `python3 -m venv` the test fails in CI and is skipped
//! (and reported by scripts/test.sh) elsewhere; a failing pip install fails it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::fixtures::fixtures;
use common::probe;
use common::python::{self, describe};
use common::server::TestServer;
use common::tools::{self, target_dir, Tool};
use gitcap_client::{CaptionOptions, ClientConfig, GitcapClient, Media};

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/python")
}

/// The venv's python with the example's requirements installed (`common::python`).
fn venv_python() -> Option<PathBuf> {
    python::venv("python-client-venv", &example_dir().join("requirements.txt"), "python_example_client")
}

#[tokio::test]
async fn the_python_example_captions_like_the_rust_client() {
    let Some(python) = venv_python() else { return };
    let stubs = target_dir().join("python-client-stubs");
    generate_stubs(&python, &stubs);

    let server = TestServer::start("tiny-git-image", &[]);
    let image = fixtures().join("media/shapes.png");
    let client = GitcapClient::connect(ClientConfig::new(server.url())).await.unwrap();
    let options = CaptionOptions::default().max_new_tokens(12);
    let expected = client.caption(Media::image(std::fs::read(&image).unwrap()), &options).await.unwrap();
    assert!(!expected.text.is_empty());

    let output = Command::new(&python)
        .arg(example_dir().join("caption.py"))
        .args(["--server", &server.addr, "--image"])
        .arg(&image)
        .args(["--max-new-tokens", "12", "--stubs"])
        .arg(&stubs)
        .env_remove("GITCAP_TOKEN")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", describe("examples/python/caption.py", &output));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let line = |prefix: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in {stdout:?}"))
            .to_string()
    };
    assert_eq!(line("caption: "), expected.text, "the unary caption");
    assert_eq!(line("stream: "), expected.text, "the streamed text");

    // --priority batch: the same answers, both calls queued as batch work.
    let output = Command::new(&python)
        .arg(example_dir().join("caption.py"))
        .args(["--server", &server.addr, "--priority", "batch", "--image"])
        .arg(&image)
        .args(["--max-new-tokens", "12", "--stubs"])
        .arg(&stubs)
        .env_remove("GITCAP_TOKEN")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", describe("examples/python/caption.py --priority batch", &output));
    assert!(String::from_utf8(output.stdout).unwrap().contains(&format!("caption: {}", expected.text)));
    let text = probe::scrape_until(&server.addr, |t| probe::finished_at_priority(t, "batch") >= 2.0);
    assert_eq!(probe::finished_at_priority(&text, "batch"), 2.0, "{text}");
}

/// A video file: uploaded in chunks by the Python example (UploadVideo), decoded by the server.
#[tokio::test]
async fn the_python_example_uploads_a_video_like_the_rust_client() {
    let Some(python) = venv_python() else { return };
    if tools::require(Tool::Ffmpeg, "python_example_video").is_none() {
        return;
    }
    let stubs = target_dir().join("python-client-stubs-video");
    generate_stubs(&python, &stubs);
    let videos = common::videos::Videos::new();
    let video = videos.h264_mp4("clip.mp4", "64x48", 25, 2.0);

    let server = TestServer::start("tiny-git-video", &[]);
    let client = GitcapClient::connect(ClientConfig::new(server.url())).await.unwrap();
    let options = gitcap_client::VideoUploadOptions::new(CaptionOptions::default().max_new_tokens(8));
    let expected = client.upload_video_file(&video, &options).await.unwrap();

    let output = Command::new(&python)
        .arg(example_dir().join("caption.py"))
        .args(["--server", &server.addr, "--video"])
        .arg(&video)
        .args(["--max-new-tokens", "8", "--chunk-bytes", "4096", "--stubs"])
        .arg(&stubs)
        .env_remove("GITCAP_TOKEN")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", describe("examples/python/caption.py --video", &output));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains(&format!("caption: {}\n", expected.text)), "{stdout}");
    assert!(stdout.contains(&format!("stream: {}\n", expected.text)), "{stdout}");
}

/// The example's gRPC stubs, generated into `stubs` by examples/python/generate.sh.
fn generate_stubs(python: &std::path::Path, stubs: &std::path::Path) {
    let output =
        Command::new("bash").arg(example_dir().join("generate.sh")).arg(stubs).env("PYTHON", python).output().unwrap();
    assert!(output.status.success(), "{}", describe("examples/python/generate.sh", &output));
}
