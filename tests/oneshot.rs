//! `gitcap-server caption` (one-shot mode) on every fixture model.

mod common;

use std::process::Command;

use common::fixtures::{cases, fixtures, model_dir};

fn caption(args: &[&str]) -> serde_json::Value {
    let out =
        // f32: the goldens are f32's (the default `auto` picks by CPU).
        Command::new(env!("CARGO_BIN_EXE_gitcap-server")).args(["caption", "--dtype", "f32"]).args(args).arg("--json").output().unwrap();
    assert!(out.status.success(), "caption {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

#[test]
fn one_shot_equals_transformers_on_every_fixture_model() {
    let media = fixtures().join("media");
    // Lossless inputs (PNG), so preprocessing is transformers' within one 8-bit step.
    for name in [
        "image_caption_shapes_greedy",
        "video_caption_greedy",
        "video_3frames_greedy",
        "video_caption_beam3",
        "video_vqa_greedy",
    ] {
        let case = cases().into_iter().find(|c| c.name == name).unwrap();
        let model = model_dir(&case.model);
        let files: Vec<String> = case.media.iter().map(|m| media.join(m).display().to_string()).collect();
        let mut args = vec!["--model", model.to_str().unwrap(), "--max-new-tokens", "12"];
        if case.media.len() > 1 {
            args.push("--frames");
            args.extend(files.iter().map(String::as_str));
        } else {
            args.extend(["--image", files[0].as_str()]);
        }
        if let Some(beams) = case.generate_kwargs.get("num_beams") {
            assert_eq!(beams, 3);
            args.extend(["--num-beams", "3"]);
        }
        if let Some(q) = &case.question {
            args.extend(["--question", q.as_str()]);
        }
        let report = caption(&args);
        let ids: Vec<i64> = report["token_ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        assert_eq!(ids, case.generated_ids, "{name}");
        assert_eq!(report["text"], case.text, "{name}");
        assert_eq!(report["finish_reason"], "eos", "{name}");
        assert_eq!(report["frames"], case.media.len(), "{name}");
        assert!(report["timings_ms"]["decode"].as_f64().unwrap() > 0.0);
    }
    // The wide (pytorch_model.bin, 56 px) model runs too.
    let wide = model_dir("tiny-git-wide");
    let report = caption(&[
        "--model",
        wide.to_str().unwrap(),
        "--image",
        media.join("big.png").to_str().unwrap(),
        "--max-new-tokens",
        "5",
    ]);
    assert_eq!(report["token_ids"].as_array().unwrap().len(), 5);
    assert_eq!(report["finish_reason"], "length");
}

#[test]
fn one_shot_reports_bad_input_clearly() {
    let model = model_dir("tiny-git-image");
    let out = Command::new(env!("CARGO_BIN_EXE_gitcap-server"))
        .args(["caption", "--model", model.to_str().unwrap(), "--image", "/nonexistent.png"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent.png"));

    let out = Command::new(env!("CARGO_BIN_EXE_gitcap-server"))
        .args(["caption", "--model", "/nonexistent-dir/", "--image", "x.png"])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a directory"));
}

#[test]
fn an_unreachable_hub_says_how_to_serve_locally() {
    let cache = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gitcap-server"))
        .args(["caption", "--model", "microsoft/git-base-vatex", "--image", "x.png", "--offline"])
        .env("HF_HOME", cache.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("offline mode") && stderr.contains("local checkpoint directory"), "{stderr}");
}

#[test]
fn a_hub_that_cannot_be_reached_says_how_to_serve_locally() {
    let cache = tempfile::tempdir().unwrap();
    // A loopback port with nothing listening (bound, then closed): the same failure as no network.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = Command::new(env!("CARGO_BIN_EXE_gitcap-server"))
        .args(["caption", "--model", "microsoft/git-base-vatex", "--image", "x.png"])
        .env("HF_HOME", cache.path())
        .env("HF_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .env_remove("HF_HUB_OFFLINE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot fetch microsoft/git-base-vatex from the Hugging Face Hub"), "{stderr}");
    assert!(stderr.contains("HF_HUB_OFFLINE=1") && stderr.contains("--model /path/to/checkpoint"), "{stderr}");
}

/// The real hf-hub code path on a cache laid out as the Hub's (`models--org--name/snapshots/<sha>`,
/// `refs/main`), offline: the model loads and the version is the snapshot's commit.
#[test]
fn a_hub_cache_serves_offline() {
    let home = tempfile::tempdir().unwrap();
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let repo = home.path().join("hub/models--microsoft--git-tiny");
    let snapshot = repo.join("snapshots").join(sha);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), sha).unwrap();
    for entry in std::fs::read_dir(model_dir("tiny-git-image")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, snapshot.join(path.file_name().unwrap())).unwrap();
    }
    let image = fixtures().join("media/shapes.png");
    let out = Command::new(env!("CARGO_BIN_EXE_gitcap-server"))
        .args([
            "caption",
            "--dtype",
            "f32",
            "--model",
            "microsoft/git-tiny",
            "--max-new-tokens",
            "12",
            "--json",
            "--image",
        ])
        .arg(&image)
        .env("HF_HOME", home.path())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["version"], sha);
    let case = cases().into_iter().find(|c| c.name == "image_caption_shapes_greedy").unwrap();
    assert_eq!(report["text"], case.text);
}
