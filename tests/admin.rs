//! Model management through the admin service: auth, loading, aliases, hot swap under load,
//! failed loads, rollback, unload with requests in flight, the state file, watch.

mod common;

use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Request};

use common::fixtures::{fixtures, model_dir};
use common::probe::HeldRequest;
use common::server::TestServer;
use gitcap_client::proto::{
    admin_client::AdminClient, caption_event::Event, captioner_client::CaptionerClient, media::Kind, model_event,
    CaptionRequest, GenerationOptions, GetRequest, ListRequest, LoadRequest, Media, ModelSpec, ModelState,
    RollbackRequest, SetAliasRequest, SwapRequest, UnloadRequest, WatchRequest,
};

const ADMIN: &str = "admin-secret";

/// Tests that need requests served during a swap, or time a shutdown, run one at a time, not
/// beside the others' server start-ups (CI has 2 cores).
static TIMING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Captions of `model` answered OK by `version`, from the server's metrics.
fn served(addr: &str, model: &str, version: &str) -> f64 {
    let text = common::probe::http_get(addr, "/metrics").2;
    let prefix = format!(r#"gitcap_requests_total{{model="{model}",version="{version}","#);
    text.lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(r#"code="OK""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls the server's metrics (60 s at most) until `version` of `model` has answered at least
/// `count` captions.
async fn wait_until_served(addr: &str, model: &str, version: &str, count: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while served(addr, model, version) < count {
        assert!(std::time::Instant::now() < deadline, "{model}@{version} answered fewer than {count} captions in 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn admin_env(roots: &str) -> Vec<(&'static str, String)> {
    vec![("GITCAP__AUTH__ADMIN_TOKEN", ADMIN.into()), ("GITCAP__ADMIN__MODEL_ROOTS", roots.into())]
}

fn start(model: &str, env: &[(&str, String)]) -> TestServer {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    TestServer::start_with_env(model, &[], &env)
}

fn models_root() -> String {
    fixtures().join("models").display().to_string()
}

fn spec(name: &str, model: &str, version: &str) -> Option<ModelSpec> {
    Some(ModelSpec {
        name: name.into(),
        source: model_dir(model).display().to_string(),
        version: version.into(),
        ..Default::default()
    })
}

fn caption(model: &str, max_new_tokens: u32) -> CaptionRequest {
    let image = std::fs::read(fixtures().join("media/shapes.png")).unwrap();
    CaptionRequest {
        model: model.into(),
        media: Some(Media { kind: Some(Kind::Image(image)), ..Default::default() }),
        options: Some(GenerationOptions { max_new_tokens: Some(max_new_tokens), ..Default::default() }),
        ..Default::default()
    }
}

#[tokio::test]
async fn tokens_guard_admin_and_inference_but_not_health() {
    let mut env = admin_env(&models_root());
    env.push(("GITCAP__AUTH__INFERENCE_TOKEN", "infer-secret".into()));
    let server = start("tiny-git-image", &env);
    let channel = server.channel().await;
    let mut admin = AdminClient::new(channel.clone());
    for token in [None, Some("wrong"), Some("infer-secret")] {
        let request = match token {
            Some(t) => authed(ListRequest {}, t),
            None => Request::new(ListRequest {}),
        };
        let status = admin.list(request).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{token:?}");
        assert_eq!(status.message(), "missing or invalid bearer token");
    }
    assert_eq!(admin.list(authed(ListRequest {}, ADMIN)).await.unwrap().into_inner().models.len(), 1);

    let mut captioner = CaptionerClient::new(channel.clone());
    let status = captioner.caption(caption("", 2)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = captioner.caption(authed(caption("", 2), ADMIN)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "the admin token is not an inference token");
    assert!(captioner.caption(authed(caption("", 2), "infer-secret")).await.is_ok());

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let reply = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(reply.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
}

/// Keeps captioning `model` until told to stop; returns the versions that answered and the
/// failures.
async fn keep_captioning(
    channel: Channel,
    model: &'static str,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (Vec<String>, Vec<String>) {
    let mut client = CaptionerClient::new(channel);
    let (mut versions, mut failures) = (vec![], vec![]);
    while !*stop.borrow() {
        match client.caption_stream(caption(model, 6)).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                let mut done = None;
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(event) => {
                            if let Some(Event::Done(d)) = event.event {
                                done = Some(d.version);
                            }
                        }
                        Err(status) => failures.push(status.to_string()),
                    }
                }
                versions.extend(done);
            }
            Err(status) => failures.push(status.to_string()),
        }
    }
    (versions, failures)
}

#[tokio::test]
async fn hot_swap_under_load_fails_no_request_and_a_bad_version_changes_nothing() {
    let _timing = TIMING.lock().await;
    let scratch = tempfile::tempdir().unwrap();
    let server = start("tiny-git-image", &admin_env(&format!("{},{}", models_root(), scratch.path().display())));
    let channel = server.channel().await;
    let mut admin = AdminClient::new(channel.clone());

    // Clients stream captions from `tiny` the whole time.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let clients: Vec<_> =
        (0..3).map(|_| tokio::spawn(keep_captioning(channel.clone(), "tiny", stop.clone()))).collect();
    // The clients are being answered before the swap, and by v2 after it.
    wait_until_served(&server.addr, "tiny", "local", 3.0).await;
    let swap = SwapRequest { alias: "tiny".into(), spec: spec("tiny", "tiny-git-image", "v2"), ..Default::default() };
    let swapped = admin.swap(authed(swap, ADMIN)).await.unwrap().into_inner();
    assert_eq!(swapped.alias.as_ref().unwrap().id, "tiny@v2");
    assert_eq!(swapped.alias.as_ref().unwrap().previous_id, "tiny@local");
    assert_eq!(swapped.model.as_ref().unwrap().state, ModelState::Ready as i32);
    wait_until_served(&server.addr, "tiny", "v2", 3.0).await;
    stop_tx.send(true).unwrap();
    let mut versions = vec![];
    for client in clients {
        let (seen, failures) = client.await.unwrap();
        assert!(failures.is_empty(), "requests failed during the swap: {failures:?}");
        versions.extend(seen);
    }
    assert!(versions.iter().all(|v| v == "local" || v == "v2"), "{versions:?}");
    assert!(versions.iter().any(|v| v == "v2"), "no request reached the new version");
    let mut captioner = CaptionerClient::new(channel.clone());
    assert_eq!(captioner.caption(caption("tiny", 2)).await.unwrap().into_inner().version, "v2");
    // The old version still serves the `default` alias, so it stays loaded.
    assert_eq!(captioner.caption(caption("", 2)).await.unwrap().into_inner().version, "local");

    // A version that cannot load leaves the alias where it was.
    let broken = tempfile::tempdir_in(scratch.path()).unwrap();
    for file in ["config.json", "preprocessor_config.json", "tokenizer.json"] {
        std::fs::copy(model_dir("tiny-git-image").join(file), broken.path().join(file)).unwrap();
    }
    std::fs::write(broken.path().join("model.safetensors"), b"corrupt").unwrap();
    let bad = ModelSpec { name: "tiny".into(), source: broken.path().display().to_string(), ..Default::default() };
    let swap = SwapRequest { alias: "tiny".into(), spec: Some(bad), ..Default::default() };
    let status = admin.swap(authed(swap, ADMIN)).await.unwrap_err();
    assert!(status.message().contains("not a valid safetensors"), "{status:?}");
    assert_eq!(captioner.caption(caption("tiny", 2)).await.unwrap().into_inner().version, "v2");
    let list = admin.list(authed(ListRequest {}, ADMIN)).await.unwrap().into_inner();
    let failed = list.models.iter().find(|m| m.state == ModelState::Failed as i32).expect("a FAILED entry");
    assert!(failed.error.contains("not a valid safetensors"), "{failed:?}");
    assert_eq!(list.aliases["tiny"], "tiny@v2");

    // Roll back to the version before the swap, then forward again with an explicit alias.
    let back = admin.rollback(authed(RollbackRequest { alias: "tiny".into() }, ADMIN)).await.unwrap().into_inner();
    assert_eq!(back.id, "tiny@local");
    assert_eq!(captioner.caption(caption("tiny", 2)).await.unwrap().into_inner().version, "local");
    let set = SetAliasRequest { alias: "tiny".into(), id: "tiny@v2".into(), ..Default::default() };
    admin.set_alias(authed(set, ADMIN)).await.unwrap();
    // Requests may also name an exact version.
    assert_eq!(captioner.caption(caption("tiny@local", 2)).await.unwrap().into_inner().version, "local");

    // Loading from outside the model roots is refused.
    let outside =
        LoadRequest { spec: Some(ModelSpec { name: "evil".into(), source: "/tmp".into(), ..Default::default() }) };
    assert_eq!(admin.load(authed(outside, ADMIN)).await.unwrap_err().code(), Code::PermissionDenied);
    let escape = format!("{}/../media", fixtures().join("models").display());
    let sneaky = LoadRequest { spec: Some(ModelSpec { name: "evil".into(), source: escape, ..Default::default() }) };
    assert_eq!(admin.load(authed(sneaky, ADMIN)).await.unwrap_err().code(), Code::PermissionDenied);
}

#[tokio::test]
async fn unload_drains_requests_in_flight_and_then_answers_not_found() {
    let server = start("tiny-git-image", &admin_env(&models_root()));
    let channel = server.channel().await;
    let mut admin = AdminClient::new(channel.clone());
    let mut watch = admin.watch(authed(WatchRequest {}, ADMIN)).await.unwrap().into_inner();

    let loaded = admin.load(authed(LoadRequest { spec: spec("wide", "tiny-git-wide", "") }, ADMIN)).await.unwrap();
    let loaded = loaded.into_inner();
    assert_eq!((loaded.id.as_str(), loaded.state), ("wide@local", ModelState::Ready as i32));
    assert!(loaded.memory_bytes > 1_000_000, "{loaded:?}");
    assert_eq!(loaded.aliases, vec!["wide".to_string()]);

    // A request in flight on `wide` (a live stream, held open), then unload it.
    let frame = std::fs::read(fixtures().join("media/shapes.png")).unwrap();
    let mut held = HeldRequest::open(channel.clone(), "wide", &frame).await;
    admin.unload(authed(UnloadRequest { id: "wide@local".into() }, ADMIN)).await.unwrap();
    // New requests are refused at once...
    let mut captioner = CaptionerClient::new(channel.clone());
    assert_eq!(captioner.caption(caption("wide", 2)).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(
        admin.get(authed(GetRequest { id: "wide@local".into() }, ADMIN)).await.unwrap_err().code(),
        Code::NotFound
    );
    // ...while the one in flight still gets answers from the draining version...
    let after = held.caption(&frame).await.expect("the request in flight is served while its version drains");
    assert_eq!(after.caption.unwrap().version, "local");
    // ...and the version is unloaded once it ends.
    held.finish().await.expect("the request in flight ends cleanly");

    // The watch saw it all: the initial state, LOADING, READY, DRAINING, UNLOADED.
    let mut states = vec![];
    while !states.contains(&(ModelState::Unloaded as i32)) {
        let event = tokio::time::timeout(Duration::from_secs(20), watch.next()).await.unwrap().unwrap().unwrap();
        if let Some(model_event::Event::Model(m)) = event.event {
            if m.name == "wide" {
                states.push(m.state);
            }
        }
    }
    let expected = [ModelState::Loading, ModelState::Ready, ModelState::Draining, ModelState::Unloaded];
    assert_eq!(states, expected.map(|s| s as i32).to_vec());
}

#[tokio::test]
async fn a_restart_restores_models_and_aliases_from_the_state_file() {
    let _timing = TIMING.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let mut env = admin_env(&models_root());
    env.push(("GITCAP__ADMIN__STATE_FILE", state.display().to_string()));
    {
        let server = start("tiny-git-image", &env);
        let mut admin = AdminClient::new(server.channel().await);
        admin.load(authed(LoadRequest { spec: spec("wide", "tiny-git-wide", "w1") }, ADMIN)).await.unwrap();
        let alias = SetAliasRequest { alias: "captions".into(), id: "wide@w1".into(), ..Default::default() };
        admin.set_alias(authed(alias, ADMIN)).await.unwrap();
        server.signal_term();
        let stopping = std::time::Instant::now();
        assert!(tokio::task::spawn_blocking(move || server.wait()).await.unwrap());
        assert!(
            stopping.elapsed() < Duration::from_secs(10),
            "an idle connection held the shutdown for {:?}",
            stopping.elapsed()
        );
    }
    let server = start("tiny-git-image", &env);
    let mut admin = AdminClient::new(server.channel().await);
    let list = admin.list(authed(ListRequest {}, ADMIN)).await.unwrap().into_inner();
    let ids: Vec<&str> = list.models.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, vec!["tiny@local", "wide@w1"]);
    assert_eq!(list.aliases["captions"], "wide@w1");
    let mut captioner = CaptionerClient::new(server.channel().await);
    assert_eq!(captioner.caption(caption("captions", 2)).await.unwrap().into_inner().version, "w1");
    drop(server);

    // A corrupt state file stops the server with a clear message instead of serving nothing.
    std::fs::write(&state, "{ this is not json").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gitcap-server"))
        .args(["serve", "--listen", "127.0.0.1:0", "--model"])
        .arg(model_dir("tiny-git-image"))
        .env("GITCAP__ADMIN__STATE_FILE", &state)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("state file") && stderr.contains("corrupt"), "{stderr}");
}

#[tokio::test]
async fn the_admin_service_can_live_on_its_own_address() {
    let mut env = admin_env(&models_root());
    env.push(("GITCAP__ADMIN__LISTEN", "127.0.0.1:0".into()));
    let server = start("tiny-git-image", &env);
    let admin_addr = server.admin_addr.clone().expect("an admin address");
    let on_main = AdminClient::new(server.channel().await).list(authed(ListRequest {}, ADMIN)).await.unwrap_err();
    assert_eq!(on_main.code(), Code::Unimplemented, "admin is not on the inference port");
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{admin_addr}")).unwrap().connect().await.unwrap();
    let list = AdminClient::new(channel).list(authed(ListRequest {}, ADMIN)).await.unwrap().into_inner();
    assert_eq!(list.models.len(), 1);
}

#[tokio::test]
async fn replace_mode_unloads_first_and_the_alias_waits_meanwhile() {
    let scratch = tempfile::tempdir().unwrap();
    let server = start("tiny-git-image", &admin_env(&format!("{},{}", models_root(), scratch.path().display())));
    let channel = server.channel().await;
    let mut admin = AdminClient::new(channel.clone());
    let swap = SwapRequest {
        alias: "default".into(),
        spec: spec("tiny", "tiny-git-video", "video"),
        replace: true,
        ..Default::default()
    };
    let swapped = admin.swap(authed(swap, ADMIN)).await.unwrap().into_inner();
    assert_eq!(swapped.alias.unwrap().id, "tiny@video");
    let list = admin.list(authed(ListRequest {}, ADMIN)).await.unwrap().into_inner();
    let ids: Vec<&str> = list.models.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, vec!["tiny@video"], "the old version is gone");
    let mut captioner = CaptionerClient::new(channel.clone());
    assert_eq!(captioner.caption(caption("", 2)).await.unwrap().into_inner().version, "video");

    // While a replacement fails, the alias answers UNAVAILABLE (not NOT_FOUND) and is not healthy.
    let bad =
        ModelSpec { name: "tiny".into(), source: fixtures().join("media").display().to_string(), ..Default::default() };
    let swap = SwapRequest { alias: "default".into(), spec: Some(bad), replace: true, ..Default::default() };
    assert_eq!(admin.swap(authed(swap, ADMIN)).await.unwrap_err().code(), Code::PermissionDenied);
    // A refused spec changed nothing.
    assert_eq!(captioner.caption(caption("", 2)).await.unwrap().into_inner().version, "video");
    let escape = tempfile::tempdir_in(scratch.path()).unwrap();
    let broken = ModelSpec { name: "tiny".into(), source: escape.path().display().to_string(), ..Default::default() };
    let swap = SwapRequest { alias: "default".into(), spec: Some(broken), replace: true, ..Default::default() };
    assert!(admin.swap(authed(swap, ADMIN)).await.is_err());
    assert_eq!(captioner.caption(caption("", 2)).await.unwrap_err().code(), Code::Unavailable);
    // Health follows (polled, 10 s at most).
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let reply = health
            .check(tonic_health::pb::HealthCheckRequest { service: "gitcap.v1.Captioner/default".into() })
            .await
            .unwrap();
        if reply.into_inner().status == not_serving {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "gitcap.v1.Captioner/default is still SERVING after 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The admin service loads from the Hub (a stand-in on 127.0.0.1 with the Hub's endpoints) with
/// download progress in the watch stream, and the version is the commit.
#[tokio::test]
async fn loading_from_the_hub_reports_progress_and_the_commit() {
    let sha = "89abcdef0123456789abcdef0123456789abcdef";
    let hub = common::fake_hub::FakeHub::serve("test-org/tiny-git", sha, model_dir("tiny-git-image"));
    let home = tempfile::tempdir().unwrap();
    let mut env = admin_env(&models_root());
    env.push(("HF_ENDPOINT", hub.endpoint.clone()));
    env.push(("HF_HOME", home.path().display().to_string()));
    let server = start("tiny-git-image", &env);
    let channel = server.channel().await;
    let mut admin = AdminClient::new(channel.clone());
    let mut watch = admin.watch(authed(WatchRequest {}, ADMIN)).await.unwrap().into_inner();
    let spec = ModelSpec { name: "hub".into(), source: "test-org/tiny-git".into(), ..Default::default() };
    let loaded = admin.load(authed(LoadRequest { spec: Some(spec) }, ADMIN)).await.unwrap().into_inner();
    assert_eq!(loaded.id, format!("hub@{sha}"));
    let mut progress = vec![];
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), watch.next()).await.unwrap().unwrap().unwrap();
        if let Some(model_event::Event::Model(m)) = event.event {
            if m.name == "hub" && m.state == ModelState::Loading as i32 && !m.progress.is_empty() {
                progress.push(m.progress);
            }
            if m.name == "hub" && m.state == ModelState::Ready as i32 {
                break;
            }
        }
    }
    assert!(progress.iter().any(|p| p.starts_with("model.safetensors: ") && p.contains(" of ")), "{progress:?}");
    let mut captioner = CaptionerClient::new(channel);
    assert_eq!(captioner.caption(caption("hub", 2)).await.unwrap().into_inner().version, sha);
    // The download landed in the hub cache layout, so an offline start would find it.
    let snapshot = home.path().join(format!("hub/models--test-org--tiny-git/snapshots/{sha}/config.json"));
    assert!(snapshot.exists());
}
