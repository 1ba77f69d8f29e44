//! Fleets of servers on 127.0.0.1: a desired-state file every replica follows (a Kubernetes
//! ConfigMap volume's updates reproduced exactly), canary splits (`fleet/canary.rs`), and
//! connections closed at a maximum age so a round-robin client finds new replicas
//! (`fleet/connection_age.rs`).

#[path = "fleet/canary.rs"]
mod canary;
mod common;
#[path = "fleet/connection_age.rs"]
mod connection_age;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tonic::transport::Channel;

use common::fixtures::{fixtures, model_dir};
use common::probe::{http_get, value};
use common::server::TestServer;
use gitcap_client::proto::captioner_client::CaptionerClient;
use gitcap_client::proto::{media::Kind, CaptionRequest, GenerationOptions, Media};
use gitcap_client::{ClientConfig, GitcapClient, HealthStatus, ModelSpec};

const ADMIN: &str = "fleet-admin";

/// Tests that time how soon servers follow a change run one at a time, not beside the others'
/// server start-ups (CI has 2 cores).
pub static TIMING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// The health service that says whether a server has reached its desired-state file's state.
const DESIRED_STATE_HEALTH: &str = "gitcap.v1.DesiredState";

/// A directory laid out as the kubelet lays out a ConfigMap volume: the file is a symlink
/// through `..data`, which is a symlink to a timestamped directory holding the real file. An
/// update writes a new timestamped directory, points a new symlink at it, renames that symlink
/// over `..data` (the one atomic step), then removes the old directory.
pub struct ConfigMapVolume {
    dir: tempfile::TempDir,
    name: String,
    updates: u32,
}

impl ConfigMapVolume {
    pub fn new(name: &str, content: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut volume = Self { dir, name: name.to_string(), updates: 0 };
        volume.update(content);
        std::os::unix::fs::symlink(format!("..data/{name}"), volume.path()).unwrap();
        volume
    }

    /// The path a pod reads: `<volume>/<name>`, a symlink through `..data`.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join(&self.name)
    }

    pub fn update(&mut self, content: &str) {
        self.updates += 1;
        let root = self.dir.path();
        let stamp = format!("..2026_12_01_12_00_00.{:09}", self.updates);
        std::fs::create_dir(root.join(&stamp)).unwrap();
        std::fs::write(root.join(&stamp).join(&self.name), content).unwrap();
        let old = std::fs::read_link(root.join("..data")).ok();
        std::os::unix::fs::symlink(&stamp, root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        if let Some(old) = old {
            std::fs::remove_dir_all(root.join(old)).unwrap();
        }
    }
}

/// A checkpoint directory inside `parent` whose weights are not safetensors at all.
pub fn corrupt_checkpoint(parent: &Path) -> PathBuf {
    let dir = parent.join("corrupt");
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["config.json", "preprocessor_config.json", "tokenizer.json"] {
        std::fs::copy(model_dir("tiny-git-image").join(file), dir.join(file)).unwrap();
    }
    std::fs::write(dir.join("model.safetensors"), b"corrupt").unwrap();
    dir
}

/// A desired-state file: `versions` (id, checkpoint directory), `aliases` (name, TOML value)
/// and the default.
pub fn desired(versions: &[(&str, &Path)], aliases: &[(&str, &str)], default: &str) -> String {
    let mut text = format!("default = \"{default}\"\n");
    for (id, source) in versions {
        text += &format!("[versions.\"{id}\"]\nsource = \"{}\"\n", source.display());
    }
    text += "[aliases]\n";
    for (alias, target) in aliases {
        text += &format!("{alias} = {target}\n");
    }
    text
}

/// A server following the desired-state file at `path`, loading from the fixtures and `extra_root`.
pub fn follower(path: &Path, extra_root: &Path, listen: &str, more_env: &[(&str, &str)]) -> TestServer {
    let roots = format!("{},{}", fixtures().join("models").display(), extra_root.display());
    let path = path.display().to_string();
    let mut env = vec![
        ("GITCAP__ADMIN__DESIRED_STATE", path.as_str()),
        ("GITCAP__ADMIN__MODEL_ROOTS", roots.as_str()),
        ("GITCAP__AUTH__ADMIN_TOKEN", ADMIN),
    ];
    env.extend_from_slice(more_env);
    TestServer::serve(listen, &[], &env)
}

pub fn caption_request(model: &str) -> CaptionRequest {
    let image = std::fs::read(fixtures().join("media/shapes.png")).unwrap();
    CaptionRequest {
        model: model.into(),
        media: Some(Media { kind: Some(Kind::Image(image)), ..Default::default() }),
        options: Some(GenerationOptions { max_new_tokens: Some(2), ..Default::default() }),
        ..Default::default()
    }
}

/// What a client calling one server saw: each answer's version, in order, and each failure.
#[derive(Default)]
pub struct Seen {
    pub versions: Vec<(Instant, String)>,
    pub failures: Vec<String>,
}

/// Calls `model` on `channel` one request after another until `stop`; what it saw so far is in
/// the returned cell throughout.
pub fn keep_calling(channel: Channel, model: &'static str, stop: watch::Receiver<bool>) -> Arc<Mutex<Seen>> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = seen.clone();
    tokio::spawn(async move {
        let mut client = CaptionerClient::new(channel);
        while !*stop.borrow() {
            let answer = client.caption(caption_request(model)).await;
            let mut seen = record.lock().unwrap();
            match answer {
                Ok(reply) => seen.versions.push((Instant::now(), reply.into_inner().version)),
                Err(status) => seen.failures.push(status.to_string()),
            }
        }
    });
    seen
}

/// Waits (polling, as a probe or a dashboard does) until `done` holds, for at most `limit`;
/// how long that took.
pub async fn wait_for<F: std::future::Future<Output = bool>>(
    limit: Duration,
    what: &str,
    mut done: impl FnMut() -> F,
) -> Duration {
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < limit, "{what}: not after {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

async fn admin(server: &TestServer) -> GitcapClient {
    GitcapClient::connect(ClientConfig::new(server.url()).admin_token(ADMIN)).await.unwrap()
}

/// The acceptance test of declarative mode: three servers follow one ConfigMap-style file while
/// clients call all three; a version change reaches all three within 5 s with no failed
/// request, a fourth server started later serves the new version, and a corrupt version leaves
/// every server on the old one, each saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_servers_follow_one_desired_state_file() {
    let _timing = TIMING.lock().await;
    let roots = tempfile::tempdir().unwrap();
    let (image, wide) = (model_dir("tiny-git-image"), model_dir("tiny-git-wide"));
    let mut volume =
        ConfigMapVolume::new("models.toml", &desired(&[("tiny@v1", &image)], &[("tiny", "\"tiny@v1\"")], "tiny"));
    let servers: Vec<TestServer> = (0..3).map(|_| follower(&volume.path(), roots.path(), "127.0.0.1:0", &[])).collect();
    let (stop_tx, stop) = watch::channel(false);
    let mut seen = vec![];
    for server in &servers {
        seen.push(keep_calling(server.channel().await, "tiny", stop.clone()));
    }
    let on = |seen: &Arc<Mutex<Seen>>, version: &str| {
        seen.lock().unwrap().versions.last().is_some_and(|(_, v)| v == version)
    };
    for s in &seen {
        wait_for(Duration::from_secs(10), "every server answers with v1", || async { on(s, "v1") }).await;
    }

    // v2 (another checkpoint) replaces v1, which leaves the file.
    let changed = Instant::now();
    volume.update(&desired(&[("tiny@v2", &wide)], &[("tiny", "\"tiny@v2\"")], "tiny"));
    let mut reached = vec![];
    for s in &seen {
        wait_for(Duration::from_secs(10), "every server answers with v2", || async { on(s, "v2") }).await;
        reached.push(changed.elapsed());
    }
    eprintln!("v2 reached the three servers after {reached:?}");
    assert!(reached.iter().all(|t| *t < Duration::from_secs(5)), "{reached:?}");
    // v1 drains and is unloaded everywhere.
    for server in &servers {
        let admin = admin(server).await;
        wait_for(Duration::from_secs(10), "v1 is unloaded", || async {
            let ids: Vec<String> = admin.list_models().await.unwrap().models.into_iter().map(|m| m.id).collect();
            ids == ["tiny@v2"]
        })
        .await;
    }

    // A fourth server, started now, comes up with v2.
    let late = follower(&volume.path(), roots.path(), "127.0.0.1:0", &[]);
    let reply = CaptionerClient::new(late.channel().await).caption(caption_request("")).await.unwrap();
    assert_eq!(reply.into_inner().version, "v2");

    // A corrupt version: every server keeps serving v2 and reports the failure.
    let corrupt = corrupt_checkpoint(roots.path());
    volume.update(&desired(&[("tiny@v2", &wide), ("tiny@v3", &corrupt)], &[("tiny", "\"tiny@v3\"")], "tiny"));
    for server in servers.iter().chain([&late]) {
        let admin = admin(server).await;
        wait_for(Duration::from_secs(10), "the server reports the failed version", || async {
            admin.health(DESIRED_STATE_HEALTH).await.unwrap() == HealthStatus::NotServing
        })
        .await;
        let list = admin.list_models().await.unwrap();
        let desired = list.desired_state.expect("a desired-state status");
        assert!(!desired.in_sync);
        assert!(
            desired.errors.iter().any(|e| e.contains("tiny@v3") && e.contains("not a valid safetensors")),
            "{desired:?}"
        );
        assert!(desired.errors.iter().any(|e| e.starts_with("alias `tiny` stays on")), "{desired:?}");
        assert_eq!(list.aliases["tiny"], "tiny@v2");
        assert_eq!(admin.health("gitcap.v1.Captioner/tiny").await.unwrap(), HealthStatus::Serving);
        let failed = list.models.iter().find(|m| m.error.contains("not a valid safetensors"));
        assert!(failed.is_some(), "a FAILED entry: {:?}", list.models);
        let metrics = http_get(&server.addr, "/metrics").2;
        assert_eq!(value(&metrics, "gitcap_desired_state_in_sync"), Some(0.0), "{metrics}");
        assert!(value(&metrics, "gitcap_desired_state_errors_total").is_some_and(|n| n >= 1.0), "{metrics}");
    }
    for s in &seen {
        let before = s.lock().unwrap().versions.len();
        wait_for(Duration::from_secs(10), "requests go on", || async { s.lock().unwrap().versions.len() > before + 2 })
            .await;
        assert!(on(s, "v2"));
    }

    stop_tx.send(true).unwrap();
    for (n, s) in seen.iter().enumerate() {
        let s = s.lock().unwrap();
        assert!(s.failures.is_empty(), "server {n}: requests failed: {:?}", s.failures);
        // Once a server answered with v2 it never answered with v1 again.
        let first_v2 = s.versions.iter().position(|(_, v)| v == "v2").unwrap();
        assert!(s.versions[first_v2..].iter().all(|(_, v)| v == "v2"), "server {n}");
        eprintln!("server {n}: {} requests, none failed", s.versions.len());
    }
}

/// What the admin API does in declarative mode: reads work, changes are refused naming the file;
/// a file that is invalid is refused as a whole (nothing changes); fixing it brings the server in
/// sync again. The file here is rewritten in place, the other way files change.
#[tokio::test]
async fn the_file_decides_and_the_admin_api_only_reads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("models.toml");
    let image = model_dir("tiny-git-image");
    std::fs::write(&path, desired(&[("tiny@v1", &image)], &[("tiny", "\"tiny@v1\"")], "tiny")).unwrap();
    let server = follower(&path, dir.path(), "127.0.0.1:0", &[("GITCAP__ADMIN__DESIRED_STATE_POLL_SECS", "0.1")]);
    let admin = admin(&server).await;
    assert_eq!(admin.health(DESIRED_STATE_HEALTH).await.unwrap(), HealthStatus::Serving);
    let list = admin.list_models().await.unwrap();
    assert_eq!(list.aliases["default"], "tiny@v1");
    assert!(list.desired_state.as_ref().is_some_and(|d| d.in_sync && d.errors.is_empty()), "{list:?}");

    let refused = [
        admin.set_alias("tiny", "tiny@v1").await.unwrap_err(),
        admin.unload_model("tiny@v1").await.unwrap_err(),
        admin.load_model(ModelSpec::new("x", image.to_str().unwrap())).await.unwrap_err(),
        admin.rollback("tiny").await.unwrap_err(),
    ];
    for error in refused {
        let message = error.to_string();
        assert!(
            matches!(error, gitcap_client::Error::Other { code: tonic::Code::FailedPrecondition, .. }),
            "{message}"
        );
        assert!(message.contains(&path.display().to_string()), "the refusal names the file: {message}");
    }

    // An invalid file changes nothing and says what is wrong.
    std::fs::write(&path, "default = \"tiny\"\n[aliases]\ntiny = \"tiny@v9\"\n").unwrap();
    wait_for(Duration::from_secs(10), "the invalid file is reported", || async {
        admin.health(DESIRED_STATE_HEALTH).await.unwrap() == HealthStatus::NotServing
    })
    .await;
    let list = admin.list_models().await.unwrap();
    let errors = list.desired_state.unwrap().errors;
    assert!(errors[0].contains("aliases.tiny: `tiny@v9` is not under [versions]"), "{errors:?}");
    assert_eq!(list.aliases["tiny"], "tiny@v1");
    assert_eq!(list.models.len(), 1);

    // Fixed: in sync again, with a second alias.
    std::fs::write(
        &path,
        desired(&[("tiny@v1", &image)], &[("tiny", "\"tiny@v1\""), ("other", "\"tiny@v1\"")], "tiny"),
    )
    .unwrap();
    wait_for(Duration::from_secs(10), "the fixed file is applied", || async {
        admin.health(DESIRED_STATE_HEALTH).await.unwrap() == HealthStatus::Serving
    })
    .await;
    assert_eq!(admin.list_models().await.unwrap().aliases["other"], "tiny@v1");

    // A server cannot start on a file it cannot read, nor with a state file beside it.
    for (file, extra) in [
        (dir.path().join("missing.toml"), vec![]),
        (path.clone(), vec![("GITCAP__ADMIN__STATE_FILE", "/tmp/state.json")]),
    ] {
        let out = std::process::Command::new(common::server::server_binary())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("GITCAP__ADMIN__DESIRED_STATE", &file)
            .envs(extra)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("admin.desired_state"), "{stderr}");
    }
}
