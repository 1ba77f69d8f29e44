//! End-to-end tests of the `gitcap` CLI against a real `gitcap-server` process.
//!
//! The server binary is `<target dir>/debug/gitcap-server`; when it is missing it is built
//! (which needs LIBTORCH, as `scripts/test.sh` exports). Without LIBTORCH and without a built
//! server the tests that need one say so loudly and pass.

#[path = "../../tests/common/probe.rs"]
mod probe;
#[path = "../../tests/common/server.rs"]
mod server;
#[path = "../../tests/common/tools.rs"]
mod tools;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use futures::StreamExt;
use gitcap_client::{
    CaptionOptions, ClientConfig, GitcapClient, LiveOptions, Media, UploadOptions, VideoUploadOptions,
};
use server::{workspace, TestServer};
use tools::Tool;

fn models() -> PathBuf {
    workspace().join("tests/fixtures/models")
}

fn media(name: &str) -> PathBuf {
    workspace().join("tests/fixtures/media").join(name)
}

fn frames() -> Vec<Vec<u8>> {
    (0..6).map(|i| std::fs::read(media(&format!("frames/frame_{i}.png"))).unwrap()).collect()
}

/// Serves the fixture model `model` as `tiny`.
fn start(model: &str) -> TestServer {
    TestServer::start(model, &[])
}

/// Runs `gitcap --server <server> args…`.
fn gitcap_at(server: &TestServer, args: &[&str]) -> Output {
    gitcap(&[&["--server", &server.url()], args].concat())
}

fn gitcap(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gitcap"))
        .args(args)
        .env_remove("GITCAP_TOKEN")
        .env_remove("GITCAP_ADMIN_TOKEN")
        .output()
        .expect("running gitcap")
}

/// Stdout of a run that must succeed.
fn ok(output: Output) -> String {
    assert!(output.status.success(), "gitcap failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// Stderr of a run that must fail.
fn fails(output: Output) -> String {
    assert!(!output.status.success(), "gitcap succeeded: {}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8(output.stderr).unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test]
async fn captions_an_image_plain_streamed_and_as_json() {
    let server = start("tiny-git-image");
    let photo = media("photo.jpg");
    let options = CaptionOptions::default().max_new_tokens(12);
    let expected =
        server.client(None).await.caption(Media::image(std::fs::read(&photo).unwrap()), &options).await.unwrap();
    assert!(!expected.text.is_empty());

    let plain = ok(gitcap_at(&server, &["caption", path(&photo), "--max-new-tokens", "12"]));
    assert_eq!(plain.trim_end_matches('\n'), expected.text);

    let streamed = ok(gitcap_at(&server, &["caption", path(&photo), "--max-new-tokens", "12", "--stream"]));
    assert_eq!(streamed.trim_end_matches('\n'), expected.text);

    let json: serde_json::Value =
        serde_json::from_str(&ok(gitcap_at(&server, &["caption", path(&photo), "--max-new-tokens", "12", "--json"])))
            .unwrap();
    assert_eq!(json["text"], expected.text.as_str());
    assert_eq!(json["model"], "tiny");
    assert_eq!(json["token_ids"].as_array().unwrap().len(), expected.token_ids.len());

    // Streamed JSON: one object per token, then the complete caption.
    let lines = ok(gitcap_at(&server, &["caption", path(&photo), "--max-new-tokens", "12", "--stream", "--json"]));
    let events: Vec<serde_json::Value> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.last().unwrap()["done"]["text"], expected.text.as_str());
    let deltas: String = events.iter().filter_map(|e| e["token"]["text"].as_str()).collect();
    assert_eq!(deltas, expected.text);
}

#[tokio::test]
async fn answers_a_question_and_ranks_labels() {
    let server = start("tiny-git-image");
    let client = server.client(None).await;
    let shapes = media("shapes.png");
    let image = std::fs::read(&shapes).unwrap();

    let options = CaptionOptions::default().question("what is in the picture?").max_new_tokens(8);
    let expected = client.caption(Media::image(image.clone()), &options).await.unwrap();
    let answer = ok(gitcap_at(
        &server,
        &["caption", path(&shapes), "--question", "what is in the picture?", "--max-new-tokens", "8"],
    ));
    assert_eq!(answer.trim_end_matches('\n'), expected.text);

    let labels = ["a red square", "a dog", "a blue circle"];
    let ranked = client.score_labels(Media::image(image), labels, "", "").await.unwrap();
    let printed = ok(gitcap_at(&server, &["caption", path(&shapes), "--labels", &labels.join(",")]));
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 3, "{printed}");
    for (i, (line, score)) in lines.iter().zip(&ranked.scores).enumerate() {
        assert!(line.trim_start().starts_with(&format!("{}. {}", i + 1, score.label)), "{printed}");
    }
    let json: serde_json::Value = serde_json::from_str(&ok(gitcap_at(
        &server,
        &["caption", path(&shapes), "--labels", &labels.join(","), "--json"],
    )))
    .unwrap();
    assert_eq!(json["scores"][0]["label"], ranked.scores[0].label.as_str());
}

#[tokio::test]
async fn uploads_a_frame_directory_and_a_gif() {
    let server = start("tiny-git-video");
    let client = server.client(None).await;
    let options = CaptionOptions::default().max_new_tokens(12);
    let upload = UploadOptions::new(options.clone()).frame_count(6);
    let expected = client.upload_frames(futures::stream::iter(frames()), &upload).await.unwrap();

    let dir = media("frames");
    let plain = ok(gitcap_at(&server, &["caption", path(&dir), "--max-new-tokens", "12"]));
    assert_eq!(plain.trim_end_matches('\n'), expected.text);
    let streamed = ok(gitcap_at(&server, &["caption", path(&dir), "--max-new-tokens", "12", "--stream"]));
    assert_eq!(streamed.trim_end_matches('\n'), expected.text);

    // The animated GIF goes as one image; the server splits its frames.
    let gif = media("anim.gif");
    let expected = client.caption(Media::image(std::fs::read(&gif).unwrap()), &options).await.unwrap();
    let printed = ok(gitcap_at(&server, &["caption", path(&gif), "--max-new-tokens", "12"]));
    assert_eq!(printed.trim_end_matches('\n'), expected.text);
}

#[tokio::test]
async fn live_prints_each_window_with_its_frames_and_times() {
    let server = start("tiny-git-video");
    let options =
        LiveOptions { caption: CaptionOptions::default().max_new_tokens(6), window: 3, stride: 3, progress: None };
    let events: Vec<_> =
        server.client(None).await.live(futures::stream::iter(frames()), &options).await.unwrap().collect().await;
    let expected: Vec<String> = events
        .into_iter()
        .map(|e| {
            let e = e.unwrap();
            format!("[frames {}-{}] {}", e.first_frame, e.last_frame, e.caption.unwrap().text)
        })
        .collect();
    assert_eq!(expected.len(), 2);
    assert!(expected[0].starts_with("[frames 0-2] ") && expected[1].starts_with("[frames 3-5] "), "{expected:?}");

    let dir = media("frames");
    let args = ["live", path(&dir), "--window", "3", "--stride", "3", "--max-new-tokens", "6"];
    let printed = ok(gitcap_at(&server, &args));
    assert_eq!(printed.lines().collect::<Vec<_>>(), expected);

    let timed = ok(gitcap_at(&server, &[&args[..], &["--fps", "2"]].concat()));
    assert!(timed.lines().next().unwrap().starts_with("[frames 0-2, 0.00s-1.50s] "), "{timed}");
    assert!(timed.lines().nth(1).unwrap().starts_with("[frames 3-5, 1.50s-3.00s] "), "{timed}");
}

#[test]
fn health_reports_serving_and_unknown_services_fail() {
    let server = start("tiny-git-image");
    // The overall status, then whether the server decodes video files.
    let video = if tools::locate(Tool::Ffmpeg).is_ok() { "SERVING" } else { "NOT_SERVING" };
    assert_eq!(ok(gitcap_at(&server, &["health"])), format!("SERVING\nvideo decoding: {video}\n"));
    assert_eq!(ok(gitcap_at(&server, &["health", "--service", "gitcap.v1.Captioner"])).trim(), "SERVING");
    let error = fails(gitcap_at(&server, &["health", "--service", "no.such.Service"]));
    assert!(error.contains("not found"), "{error}");
    // This server has no admin token, so no admin service.
    let error = fails(gitcap_at(&server, &["--admin-token", "x", "models", "list"]));
    assert!(error.contains("does not serve the admin service"), "{error}");
}

#[test]
fn bad_files_fail_with_a_clear_message() {
    let server = start("tiny-git-image");
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not an image").unwrap();
    let error = fails(gitcap_at(&server, &["caption", path(&text)]));
    assert!(error.contains("not a supported file"), "{error}");

    // A damaged image is sent; the server names the bad field.
    let broken = dir.path().join("broken.png");
    std::fs::write(&broken, "not a png either").unwrap();
    let error = fails(gitcap_at(&server, &["caption", path(&broken)]));
    assert!(error.contains("invalid argument `media"), "{error}");

    let error = fails(gitcap_at(&server, &["caption", path(&dir.path().join("missing.jpg"))]));
    assert!(error.contains("missing.jpg"), "{error}");
}

#[test]
fn decoding_a_video_here_without_ffmpeg_says_how_to_install_it() {
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("clip.mp4");
    std::fs::write(&video, "not read").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_gitcap"))
        .args(["--server", "http://127.0.0.1:9", "caption", "--local-decode", path(&video)])
        .env("PATH", dir.path())
        .output()
        .unwrap();
    let error = fails(output);
    assert!(error.contains("ffmpeg") && error.contains("apt-get install ffmpeg"), "{error}");
}

#[tokio::test]
async fn a_video_file_is_sent_to_the_server_or_decoded_here() {
    let Some(ffmpeg) = tools::require(Tool::Ffmpeg, "cli_captions_a_video_file") else { return };
    let server = start("tiny-git-video");
    let client = server.client(None).await;
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("clip.avi");
    let made = Command::new(ffmpeg)
        .args(["-nostdin", "-loglevel", "error", "-y", "-framerate", "2", "-i"])
        .arg(media("frames/frame_%d.png"))
        .args(["-vf", "scale=64:64", "-c:v", "mjpeg", "-q:v", "2"])
        .arg(&video)
        .status()
        .unwrap();
    assert!(made.success(), "ffmpeg could not make the test video");
    let options = CaptionOptions::default().max_new_tokens(8);

    // By default the file goes to the server, which samples it: the answer is UploadVideo's.
    let expected = client.upload_video_file(&video, &VideoUploadOptions::new(options.clone())).await.unwrap();
    assert_eq!(expected.frame_timestamps_s.len(), 6);
    let json: serde_json::Value =
        serde_json::from_str(&ok(gitcap_at(&server, &["caption", path(&video), "--max-new-tokens", "8", "--json"])))
            .unwrap();
    assert_eq!(json["text"], expected.text.as_str());
    assert_eq!(json["frame_timestamps_s"], serde_json::json!(expected.frame_timestamps_s));
    // A window of it.
    let windowed = ok(gitcap_at(&server, &["caption", path(&video), "--start", "1", "--end", "2", "--json"]));
    let windowed: serde_json::Value = serde_json::from_str(&windowed).unwrap();
    assert!((windowed["frame_timestamps_s"][0].as_f64().unwrap() - 1.0 - 1.0 / 12.0).abs() < 1e-9, "{windowed}");

    // --local-decode: the CLI extracts 2 frames per second (its default) and uploads them.
    let frames = gitcap_client::media::extract_video_frames(&video, 2.0).unwrap();
    assert_eq!(frames.len(), 6);
    let upload = UploadOptions::new(options);
    let expected = client.upload_frames(futures::stream::iter(frames), &upload).await.unwrap();
    let printed = ok(gitcap_at(&server, &["caption", path(&video), "--local-decode", "--max-new-tokens", "8"]));
    assert_eq!(printed.trim_end_matches('\n'), expected.text);

    // Dense captioning: one line per window, with its times.
    let printed = ok(gitcap_at(&server, &["dense", path(&video), "--window", "1.5", "--max-new-tokens", "4"]));
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 2, "{printed}");
    assert!(lines[0].starts_with("[0.00s-1.50s] ") && lines[1].starts_with("[1.50s-3.00s] "), "{printed}");
}

/// `--priority batch` reaches the server (its queue time is recorded as batch work); a priority
/// the CLI does not know is refused with the choices.
#[tokio::test]
async fn priority_batch_reaches_the_server() {
    let server = start("tiny-git-image");
    let photo = media("photo.jpg");
    let expected = ok(gitcap_at(&server, &["caption", path(&photo), "--max-new-tokens", "6"]));
    let batch = ok(gitcap_at(&server, &["caption", path(&photo), "--max-new-tokens", "6", "--priority", "batch"]));
    assert_eq!(batch, expected);
    let text = probe::scrape_until(&server.addr, |t| probe::finished_at_priority(t, "batch") >= 1.0);
    assert_eq!(probe::finished_at_priority(&text, "batch"), 1.0, "{text}");
    let refused = fails(gitcap_at(&server, &["caption", path(&photo), "--priority", "urgent"]));
    assert!(refused.contains("interactive") && refused.contains("batch"), "{refused}");
    for command in ["caption", "dense"] {
        assert!(ok(gitcap(&[command, "--help"])).contains("--priority"), "`gitcap {command}` has no --priority");
    }
}

/// Every generation option of the protocol is a flag of `gitcap caption` and `gitcap live`.
#[test]
fn every_generation_option_is_a_flag() {
    let fields = gitcap_client::proto_descriptor::message_fields("GenerationOptions").unwrap();
    let options: Vec<String> = fields
        .into_iter()
        .filter(|f| !f.deprecated)
        .map(|f| if f.name == "early_stopping_mode" { "early_stopping".to_string() } else { f.name })
        .collect();
    assert!(options.len() >= 12, "{options:?}");
    for command in ["caption", "live"] {
        let help = ok(gitcap(&[command, "--help"]));
        for option in &options {
            let flag = format!("--{}", option.replace('_', "-"));
            assert!(help.contains(&flag), "`gitcap {command}` has no {flag}:\n{help}");
        }
    }
}

#[test]
fn completions_are_printed() {
    let script = ok(gitcap(&["completions", "bash"]));
    assert!(script.contains("gitcap") && script.contains("caption"), "{script}");
}

const ADMIN: &str = "admin-secret";

/// A server with the admin service on, loading only from the fixture models.
fn admin_server() -> TestServer {
    let roots = models().display().to_string();
    TestServer::start_with_env(
        "tiny-git-image",
        &[],
        &[("GITCAP__AUTH__ADMIN_TOKEN", ADMIN), ("GITCAP__ADMIN__MODEL_ROOTS", &roots)],
    )
}

/// Runs `gitcap --server <server> --admin-token <ADMIN> models args…`.
fn models_at(server: &TestServer, args: &[&str]) -> Output {
    gitcap_at(server, &[&["--admin-token", ADMIN, "models"], args].concat())
}

/// The row of `models list` whose id is `id`, split into its columns.
fn table_row(table: &str, id: &str) -> Vec<String> {
    let line = table.lines().find(|l| l.starts_with(&format!("{id} "))).unwrap_or_else(|| panic!("no {id}: {table}"));
    line.split("  ").map(str::trim).filter(|c| !c.is_empty()).map(String::from).collect()
}

#[test]
fn models_are_listed_loaded_aliased_swapped_rolled_back_and_unloaded() {
    let server = admin_server();
    let table = ok(models_at(&server, &["list"]));
    assert!(table.starts_with("ID "), "{table}");
    for column in ["STATE", "ALIASES", "DEVICE", "DTYPE", "MEMORY", "LOAD TIME"] {
        assert!(table.lines().next().unwrap().contains(column), "{table}");
    }
    let row = table_row(&table, "tiny@local");
    assert_eq!(row[1], "READY", "{table}");
    assert!(row[2].split(',').any(|a| a == "tiny") && row[2].split(',').any(|a| a == "default"), "{table}");
    assert!(row[5].ends_with("iB"), "{table}");

    // Load tiny-git-wide as `wide`: progress on stderr, the new version on stdout.
    let wide = models().join("tiny-git-wide");
    let output = models_at(&server, &["load", "--name", "wide", "--source", path(&wide)]);
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    let loaded = ok(output);
    assert!(loaded.starts_with("wide@local READY aliases=wide"), "{loaded}");
    // While loading, the server names the version by its source (a Hub version is known only later).
    assert!(stderr.lines().any(|l| l.starts_with("wide@") && l.ends_with(": LOADING")), "{stderr}");
    assert!(stderr.contains("wide@local: READY"), "{stderr}");
    assert!(!stderr.contains("tiny@local"), "only the loaded model's changes are shown: {stderr}");

    let json: serde_json::Value = serde_json::from_str(&ok(models_at(&server, &["list", "--json"]))).unwrap();
    assert_eq!(json["aliases"]["wide"], "wide@local");
    let ids: Vec<&str> = json["models"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["tiny@local", "wide@local"]);

    let details = ok(models_at(&server, &["get", "wide@local"]));
    assert!(details.contains("state:") && details.contains("READY") && details.contains("tiny-git-wide"), "{details}");

    // An alias, used by a caption request.
    assert_eq!(ok(models_at(&server, &["alias", "captions", "wide@local"])).trim(), "captions -> wide@local");
    let shapes = media("shapes.png");
    let printed =
        ok(gitcap_at(&server, &["caption", path(&shapes), "--model", "captions", "--max-new-tokens", "2", "--json"]));
    let caption: serde_json::Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(caption["model"], "wide");

    // Swap `tiny` to a new version label of tiny-git-image, keeping the old one; then roll back.
    let image = models().join("tiny-git-image");
    let output = models_at(
        &server,
        &["swap", "tiny", "--name", "tiny", "--source", path(&image), "--version", "v2", "--keep-previous"],
    );
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    let swapped = ok(output);
    assert!(swapped.lines().next().unwrap() == "tiny -> tiny@v2 (was tiny@local)", "{swapped}");
    assert!(swapped.lines().nth(1).unwrap().starts_with("tiny@v2 READY"), "{swapped}");
    assert!(stderr.lines().any(|l| l.starts_with("tiny@") && l.ends_with(": LOADING")), "{stderr}");
    assert!(stderr.contains("tiny@v2: READY"), "{stderr}");
    let printed =
        ok(gitcap_at(&server, &["caption", path(&shapes), "--model", "tiny", "--max-new-tokens", "2", "--json"]));
    assert_eq!(serde_json::from_str::<serde_json::Value>(&printed).unwrap()["version"], "v2");

    assert_eq!(ok(models_at(&server, &["rollback", "tiny"])).trim(), "tiny -> tiny@local (was tiny@v2)");
    let printed =
        ok(gitcap_at(&server, &["caption", path(&shapes), "--model", "tiny", "--max-new-tokens", "2", "--json"]));
    assert_eq!(serde_json::from_str::<serde_json::Value>(&printed).unwrap()["version"], "local");

    // Unload: gone from the list, and asking for it is "not found".
    let unloaded = ok(models_at(&server, &["unload", "wide@local"]));
    assert!(unloaded.starts_with("wide@local ") && (unloaded.contains("DRAINING") || unloaded.contains("UNLOADED")));
    let error = fails(models_at(&server, &["get", "wide@local"]));
    assert!(error.contains("not found"), "{error}");
    assert!(!ok(models_at(&server, &["list"])).contains("wide@local"));

    // A local load outside the model roots is refused.
    let error = fails(models_at(&server, &["load", "--name", "evil", "--source", "/tmp"]));
    assert!(error.contains("permission denied"), "{error}");
}

#[test]
fn a_wrong_or_missing_admin_token_is_unauthenticated_and_the_env_var_works() {
    let server = admin_server();
    for args in [&["--admin-token", "wrong", "models", "list"][..], &["models", "list"]] {
        let error = fails(gitcap_at(&server, args));
        assert!(error.contains("unauthenticated"), "{error}");
    }
    let error =
        fails(gitcap_at(&server, &["--admin-token", "wrong", "models", "load", "--name", "x", "--source", "y"]));
    assert!(error.contains("unauthenticated"), "{error}");
    let output = Command::new(env!("CARGO_BIN_EXE_gitcap"))
        .args(["--server", &server.url(), "models", "list"])
        .env("GITCAP_ADMIN_TOKEN", ADMIN)
        .env_remove("GITCAP_TOKEN")
        .output()
        .unwrap();
    assert!(ok(output).contains("tiny@local"));
}

#[tokio::test]
async fn watch_prints_the_current_state_and_then_each_change() {
    let server = admin_server();
    let mut watch = Command::new(env!("CARGO_BIN_EXE_gitcap"))
        .args(["--server", &server.url(), "--admin-token", ADMIN, "models", "watch"])
        .env_remove("GITCAP_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting gitcap models watch");
    let stdout = watch.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let next = || lines.recv_timeout(std::time::Duration::from_secs(30)).expect("a line from gitcap models watch");
    let first = next();
    assert!(first.starts_with("model tiny@local READY"), "{first}");

    let client = GitcapClient::connect(ClientConfig::new(server.url()).admin_token(ADMIN)).await.unwrap();
    let spec = gitcap_client::ModelSpec::new("wide", path(&models().join("tiny-git-wide"))).version("w1");
    client.load_model(spec).await.unwrap();
    let mut seen = vec![first];
    while !(seen.iter().any(|l| l.starts_with("model wide@w1 READY"))
        && seen.iter().any(|l| l == "alias wide -> wide@w1"))
    {
        seen.push(next());
    }
    assert!(seen.iter().any(|l| l.starts_with("model wide@") && l.contains(" LOADING")), "{seen:?}");
    watch.kill().unwrap();
    watch.wait().unwrap();
}

/// The result lines of `gitcap models --replicas`, by replica URL.
fn replica_lines(stdout: &str) -> std::collections::HashMap<String, String> {
    stdout.lines().map(|l| l.split_once(' ').map(|(url, rest)| (url.to_string(), rest.to_string())).unwrap()).collect()
}

#[tokio::test]
async fn models_with_replicas_reach_every_replica_and_name_the_ones_that_fail() {
    let mut servers = vec![admin_server(), admin_server(), admin_server()];
    let list = servers.iter().map(|s| s.url()).collect::<Vec<_>>().join(",");
    let on_all = |servers_list: &str, args: &[&str]| {
        gitcap(&[&["--admin-token", ADMIN, "models", "--replicas", servers_list], args].concat())
    };

    // Load onto all three at once: one `ok` line per replica.
    let wide = models().join("tiny-git-wide");
    let loaded = ok(on_all(&list, &["load", "--name", "wide", "--source", path(&wide), "--version", "w1"]));
    let lines = replica_lines(&loaded);
    assert_eq!(lines.len(), 3, "{loaded}");
    for server in &servers {
        let line = &lines[&server.url()];
        assert!(line.starts_with("ok wide@w1 READY aliases=wide"), "{loaded}");
        let status = server.client(Some(ADMIN)).await.get_model("wide@w1").await.unwrap();
        assert_eq!(status.state(), gitcap_client::ModelState::Ready);
    }

    // An alias, as JSON lines; every server now routes `captions` to the new version.
    let printed = ok(on_all(&list, &["alias", "captions", "wide@w1", "--json"]));
    let answers: Vec<serde_json::Value> = printed.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(answers.len(), 3);
    for answer in &answers {
        assert_eq!(answer["ok"], true, "{printed}");
        assert_eq!(answer["result"]["id"], "wide@w1", "{printed}");
    }
    for server in &servers {
        let aliases = server.client(Some(ADMIN)).await.list_models().await.unwrap().aliases;
        assert_eq!(aliases.get("captions").map(String::as_str), Some("wide@w1"), "{}", server.url());
    }

    // A version one replica lacks: that one fails, the others succeed, the exit status is non-zero.
    let odd = &servers[1];
    odd.client(Some(ADMIN)).await.unload_model("wide@w1").await.unwrap();
    let output = on_all(&list, &["alias", "wide-again", "wide@w1"]);
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let error = fails(output);
    let lines = replica_lines(&stdout);
    assert!(lines[&odd.url()].starts_with("FAILED "), "{stdout}");
    assert!(lines[&odd.url()].contains("wide@w1"), "the failure says what: {stdout}");
    for server in [&servers[0], &servers[2]] {
        assert_eq!(lines[&server.url()], "ok wide-again -> wide@w1", "{stdout}");
    }
    assert!(error.contains(&format!("1 of 3 replicas failed: {}", odd.url())), "{error}");

    // A stopped replica: named, and the others still answer.
    let stopped = servers.remove(2);
    let stopped_url = stopped.url();
    drop(stopped);
    let output = on_all(&list, &["list"]);
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let error = fails(output);
    let lines = replica_lines(&stdout);
    assert!(lines[&stopped_url].starts_with("FAILED "), "{stdout}");
    assert!(lines[&servers[0].url()].starts_with("ok tiny@local READY"), "{stdout}");
    assert!(error.contains(&format!("1 of 3 replicas failed: {stopped_url}")), "{error}");

    // dns:/// names resolve (an address literal here: the servers share 127.0.0.1 but not a port).
    let port = servers[0].addr.rsplit(':').next().unwrap();
    let printed = ok(on_all(&format!("dns:///127.0.0.1:{port}"), &["get", "tiny@local"]));
    assert!(printed.starts_with(&format!("{} ok tiny@local READY", servers[0].url())), "{printed}");
    let error = fails(on_all("dns:///localhost", &["list"]));
    assert!(error.contains("needs a port"), "{error}");
    let error = fails(on_all(&list, &["watch"]));
    assert!(error.contains("follows one server"), "{error}");
}
