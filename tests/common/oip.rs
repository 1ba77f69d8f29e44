//! A server for the Open Inference Protocol tests: both fixture models at once (an image model
//! `image@v1` and a six-frame video model `video@v1`, aliases `image` and `video`; a second
//! version `image@v2` of the image model and the alias `canary` split between the two), from a
//! desired-state file, with an inference token; and the protocol's binary BYTES layout.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use super::fixtures::fixtures;
use super::probe::http_get;
use super::server::{fixture_model, TestServer};

pub const TOKEN: &str = "oip-secret";

/// The server and the directory holding its desired-state file.
pub struct OipServer {
    pub server: TestServer,
    _dir: tempfile::TempDir,
}

/// Starts the server (with `env` on top) and waits, 60 s at most, until `/v2/health/ready`.
pub fn start(env: &[(&str, &str)]) -> OipServer {
    let dir = tempfile::tempdir().unwrap();
    let models = format!(
        "default = \"image\"\n\
         [versions.\"image@v1\"]\nsource = \"{}\"\n\
         [versions.\"image@v2\"]\nsource = \"{}\"\n\
         [versions.\"video@v1\"]\nsource = \"{}\"\n\
         [aliases]\nimage = \"image@v1\"\nvideo = \"video@v1\"\n\
         canary = {{ \"image@v1\" = 50, \"image@v2\" = 50 }}\n",
        fixture_model("tiny-git-image").display(),
        fixture_model("tiny-git-image").display(),
        fixture_model("tiny-git-video").display(),
    );
    let path = dir.path().join("models.toml");
    std::fs::write(&path, models).unwrap();
    let path = path.display().to_string();
    let roots = fixtures().join("models").display().to_string();
    let mut all = vec![
        ("GITCAP__ADMIN__DESIRED_STATE", path.as_str()),
        ("GITCAP__ADMIN__MODEL_ROOTS", roots.as_str()),
        ("GITCAP__AUTH__INFERENCE_TOKEN", TOKEN),
    ];
    all.extend_from_slice(env);
    let server = TestServer::serve("127.0.0.1:0", &[], &all);
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(&server.addr, "/v2/health/ready").0 != 200 {
        assert!(Instant::now() < deadline, "the server did not become ready within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    OipServer { server, _dir: dir }
}

/// BYTES elements in the protocol's binary layout: each a 4-byte little-endian length, then
/// its bytes.
pub fn bytes_tensor(elements: &[&[u8]]) -> Vec<u8> {
    let mut raw = Vec::new();
    for element in elements {
        raw.extend_from_slice(&(element.len() as u32).to_le_bytes());
        raw.extend_from_slice(element);
    }
    raw
}

/// The golden media file `name` (tests/fixtures/media).
pub fn media(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("media").join(name)).unwrap()
}
