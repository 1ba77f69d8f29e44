//! The Kubernetes settings file (deploy/k8s/base/gitcap.toml) and models file (base/models.toml,
//! the desired state every pod follows) as a real server reads them, the health services the
//! probes name (readiness and startup on `gitcap.v1.Captioner/default`, liveness on the overall
//! status), and the metrics the autoscaler's adapter rule reads.

mod common;

use gitcap_client::{ClientConfig, GitcapClient, HealthStatus, ModelSpec, SwapOptions};

use common::fixtures::{fixtures, model_dir};
use common::probe::{self, gauge, http_get, scrape_until};
use common::server::TestServer;
use gitcap_client::proto::captioner_client::CaptionerClient;
use gitcap_server::device::DeviceSpec;
use gitcap_server::model::Precision;
use gitcap_server::registry::desired;

/// The health service the Deployment's readiness and startup probes check.
const READINESS_SERVICE: &str = "gitcap.v1.Captioner/default";

#[test]
fn the_deployment_probes_name_these_services() {
    let deployment = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/k8s/base/deployment.yaml"))
        .expect("reading deploy/k8s/base/deployment.yaml");
    let probe = |name: &str| {
        let start = deployment.find(&format!("{name}:")).unwrap_or_else(|| panic!("no {name}"));
        let block: String = deployment[start..].lines().skip(1).take_while(|l| l.starts_with("            ")).collect();
        block
    };
    for name in ["startupProbe", "readinessProbe"] {
        assert!(probe(name).contains(&format!("service: {READINESS_SERVICE}")), "{name}: {}", probe(name));
    }
    // Liveness: the overall status (no service), which a model swap does not change.
    assert!(probe("livenessProbe").contains("grpc:") && !probe("livenessProbe").contains("service:"));
}

const BASE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/k8s/base");

/// base/models.toml with each version's hub source replaced by a fixture checkpoint.
fn models_file_on_fixtures(dir: &std::path::Path, source: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(format!("{BASE}/models.toml")).unwrap();
    let text = text.replace("\"microsoft/git-base-vatex\"", &format!("{:?}", source.display().to_string()));
    let path = dir.join("models.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_models_file_is_a_valid_desired_state() {
    let text = std::fs::read_to_string(format!("{BASE}/models.toml")).unwrap();
    let state = desired::parse(&text, DeviceSpec::CPU, Precision::parse("f32").unwrap()).unwrap();
    assert!(state.aliases.contains_key("default"));
    assert!(state.versions.values().all(|v| !v.source.starts_with('/')), "hub sources, as the pods load them");
}

#[tokio::test]
async fn the_kubernetes_settings_and_models_file_load_and_the_admin_service_only_reads() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    // As the Secret is mounted: the token with a trailing newline.
    std::fs::write(&token_file, "k8s-admin\n").unwrap();
    let models = models_file_on_fixtures(dir.path(), &model_dir("tiny-git-image"));
    let roots = fixtures().join("models").display().to_string();
    // The pod's paths and ports, moved to the test's: everything else as the ConfigMaps have it.
    let server = TestServer::serve(
        "127.0.0.1:0",
        &["--config", &format!("{BASE}/gitcap.toml")],
        &[
            ("GITCAP__AUTH__ADMIN_TOKEN_FILE", token_file.to_str().unwrap()),
            ("GITCAP__ADMIN__LISTEN", "127.0.0.1:0"),
            ("GITCAP__ADMIN__DESIRED_STATE", models.to_str().unwrap()),
            ("GITCAP__ADMIN__MODEL_ROOTS", &roots),
        ],
    );
    let admin_addr = server.admin_addr.clone().expect("the settings put admin on its own port");
    let client = GitcapClient::connect(ClientConfig::new(server.url())).await.unwrap();
    assert_eq!(client.health("").await.unwrap(), HealthStatus::Serving);
    assert_eq!(client.health(READINESS_SERVICE).await.unwrap(), HealthStatus::Serving);
    assert_eq!(client.health("gitcap.v1.DesiredState").await.unwrap(), HealthStatus::Serving);

    // Admin answers on its own port, with the token from the file, and only reads.
    let admin = GitcapClient::connect(ClientConfig::new(format!("http://{admin_addr}")).admin_token("k8s-admin"))
        .await
        .unwrap();
    let list = admin.list_models().await.unwrap();
    assert_eq!(list.aliases["default"], "git-base-vatex@v1");
    assert!(list.desired_state.is_some_and(|d| d.in_sync && d.path == models.display().to_string()));
    let good = ModelSpec::new("tiny", model_dir("tiny-git-image").to_str().unwrap()).version("v3");
    let refused = admin.swap_model("default", good, SwapOptions::default()).await.unwrap_err();
    assert!(refused.to_string().contains("desired-state file"), "{refused}");
    // /metrics on the admin port, where the pod annotations send Prometheus.
    let (status, _, metrics) = http_get(&admin_addr, "/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("gitcap_desired_state_in_sync 1"), "{metrics}");
}

/// The HorizontalPodAutoscaler scales on `gitcap_inflight_requests`, which the adapter rule
/// (deploy/k8s/autoscaling/prometheus-adapter.yaml) sums from two gauges per pod: a server must
/// export them, with a request counted while it runs.
#[tokio::test]
async fn the_autoscaling_metric_comes_from_gauges_the_server_exports() {
    let hpa = std::fs::read_to_string(format!("{BASE}/hpa.yaml")).unwrap();
    assert!(hpa.contains("name: gitcap_inflight_requests"), "{hpa}");
    let adapter =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/k8s/autoscaling/prometheus-adapter.yaml"))
            .unwrap();
    assert!(adapter.contains("as: gitcap_inflight_requests"), "{adapter}");
    let summed = r#"{__name__=~"gitcap_queue_depth|gitcap_running_requests",<<.LabelMatchers>>}"#;
    assert!(adapter.contains(summed), "the rule sums the two gauges: {adapter}");

    let server = TestServer::start("tiny-git-wide", &[]);
    let long = probe::long_request(std::fs::read(fixtures().join("media/photo.jpg")).unwrap());
    let mut client = CaptionerClient::new(server.channel().await);
    let running = client.caption_stream(long).await.unwrap().into_inner();
    let inflight =
        |text: &str| gauge(text, "gitcap_queue_depth", "tiny") + gauge(text, "gitcap_running_requests", "tiny");
    let metrics = scrape_until(&server.addr, |text| inflight(text) >= 1.0);
    assert_eq!(inflight(&metrics), 1.0, "{metrics}");
    drop(running);
}

/// Polls `service`'s health (as a probe does) until it is `status`; health follows the model
/// registry's events, a moment after the admin call returns.
async fn becomes(client: &GitcapClient, service: &str, status: HealthStatus) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let now = client.health(service).await.unwrap();
        if now == status {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{service} is {now}, not {status}, after 5 s");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Readiness must drop when the `default` alias goes away with the version it pointed at (a
/// removed alias used to keep its last status, SERVING, while requests for it got NOT_FOUND).
#[tokio::test]
async fn unloading_the_default_model_makes_the_pod_unready() {
    let server = TestServer::start_with_env("tiny-git-image", &[], &[("GITCAP__AUTH__ADMIN_TOKEN", "t")]);
    let client = GitcapClient::connect(ClientConfig::new(server.url()).admin_token("t")).await.unwrap();
    assert_eq!(client.health(READINESS_SERVICE).await.unwrap(), HealthStatus::Serving);
    client.unload_model("tiny@local").await.unwrap();
    becomes(&client, READINESS_SERVICE, HealthStatus::NotServing).await;
    assert_eq!(client.health("").await.unwrap(), HealthStatus::Serving, "the pod stays alive");
}
