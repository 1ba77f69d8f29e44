//! The Kubernetes settings file (deploy/k8s/base/gitcap.toml) as a real server reads it, and the
//! health services its probes name: readiness and startup on `gitcap.v1.Captioner/default`,
//! liveness on the overall status.

mod common;

use gitcap_client::{ClientConfig, GitcapClient, HealthStatus, ModelSpec, SwapOptions};

use common::fixtures::model_dir;
use common::server::TestServer;

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

#[tokio::test]
async fn the_kubernetes_settings_load_and_the_probe_services_follow_the_default_model() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/k8s/base/gitcap.toml");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    // As the Secret is mounted: the token with a trailing newline.
    std::fs::write(&token_file, "k8s-admin\n").unwrap();
    let state_file = dir.path().join("state.json");
    let roots = model_dir("tiny-git-image").parent().unwrap().display().to_string();
    // The pod's paths and ports, moved to the test's: everything else as the ConfigMap has it.
    let server = TestServer::start_with_env(
        "tiny-git-image",
        &["--config", config],
        &[
            ("GITCAP__AUTH__ADMIN_TOKEN_FILE", token_file.to_str().unwrap()),
            ("GITCAP__ADMIN__LISTEN", "127.0.0.1:0"),
            ("GITCAP__ADMIN__STATE_FILE", state_file.to_str().unwrap()),
            ("GITCAP__ADMIN__MODEL_ROOTS", &roots),
        ],
    );
    let admin_addr = server.admin_addr.clone().expect("the settings put admin on its own port");
    let client = GitcapClient::connect(ClientConfig::new(server.url())).await.unwrap();
    assert_eq!(client.health("").await.unwrap(), HealthStatus::Serving);
    assert_eq!(client.health(READINESS_SERVICE).await.unwrap(), HealthStatus::Serving);

    // Admin answers on its own port, with the token from the file.
    let admin = GitcapClient::connect(ClientConfig::new(format!("http://{admin_addr}")).admin_token("k8s-admin"))
        .await
        .unwrap();
    assert_eq!(admin.list_models().await.unwrap().aliases["default"], "tiny@local");
    assert!(state_file.exists(), "the state file is written where the settings say");

    // A replace-mode swap of `default` that fails: the pod is alive (liveness) but not ready.
    let bad = ModelSpec::new("tiny", model_dir("tiny-git-image").parent().unwrap().to_str().unwrap()).version("v2");
    let options = SwapOptions { replace: true, keep_previous: false };
    assert!(admin.swap_model("default", bad, options).await.is_err());
    becomes(&client, READINESS_SERVICE, HealthStatus::NotServing).await;
    assert_eq!(client.health("").await.unwrap(), HealthStatus::Serving);

    // Ready again once `default` points at a READY version.
    let good = ModelSpec::new("tiny", model_dir("tiny-git-image").to_str().unwrap()).version("v3");
    admin.swap_model("default", good, SwapOptions::default()).await.unwrap();
    becomes(&client, READINESS_SERVICE, HealthStatus::Serving).await;
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
