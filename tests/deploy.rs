//! The Kubernetes settings file (deploy/k8s/base/gitcap.toml) and models file (base/models.toml,
//! the desired state every pod follows) as a real server reads them, the health services the
//! probes name (readiness and startup on `gitcap.v1.Captioner/default`, liveness on the overall
//! status), and the metrics the autoscaler's adapter rule reads. The KServe runtime's container
//! (deploy/kserve/runtime.yaml) as a real server runs it, and the custom-resource validator
//! scripts/validate-deploy.sh checks deploy/kserve and deploy/gateway with.

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

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The python of a venv with scripts/lib/requirements-deploy.txt: what scripts/validate-deploy.sh
/// validates deploy/ with (`None`: no python3 venv here, outside CI).
fn deploy_python(test: &str) -> Option<std::path::PathBuf> {
    let requirements = std::path::Path::new(ROOT).join("scripts/lib/requirements-deploy.txt");
    common::python::venv("deploy-validate-venv", &requirements, test)
}

/// Runs scripts/lib/validate_crs.py on `manifest` (text): Ok(stdout) or Err(stderr).
fn validate_custom_resource(python: &std::path::Path, manifest: &str) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("manifest.yaml");
    std::fs::write(&path, manifest).unwrap();
    let output = std::process::Command::new(python)
        .current_dir(ROOT)
        .args(["scripts/lib/validate_crs.py", "--crds", "deploy/crds"])
        .arg(&path)
        .output()
        .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    if output.status.success() {
        Ok(text(&output.stdout))
    } else {
        assert_eq!(output.status.code(), Some(1), "{}", common::python::describe("validate_crs.py", &output));
        Err(text(&output.stderr))
    }
}

/// The custom-resource validator scripts/validate-deploy.sh runs on deploy/kserve and
/// deploy/gateway passes the real manifests and refuses each of them once broken, naming the
/// field: an unknown field, a wrong type, a value outside an enum, a missing required field, a
/// misspelt metadata field, a kind no vendored CRD serves.
#[test]
fn the_custom_resource_validator_refuses_unknown_fields_wrong_types_and_missing_ones() {
    let Some(python) =
        deploy_python("the_custom_resource_validator_refuses_unknown_fields_wrong_types_and_missing_ones")
    else {
        return;
    };
    let read = |path: &str| std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap();
    let (runtime, pool, service) =
        (read("deploy/kserve/runtime.yaml"), read("deploy/gateway/inferencepool.yaml"), read("deploy/kserve/raw.yaml"));
    for valid in [&runtime, &pool, &service] {
        let out = validate_custom_resource(&python, valid).unwrap_or_else(|e| panic!("{e}\n{valid}"));
        assert!(out.starts_with("1 custom resource(s) valid"), "{out}");
    }
    let broken = |text: &str, from: &str, to: &str| {
        assert!(text.contains(from), "{from:?} is not in the manifest any more: update the test");
        text.replacen(from, to, 1)
    };
    let cases = [
        (broken(&runtime, "  protocolVersions:", "  protocolVersion:"), "spec: unknown field(s) protocolVersion"),
        (
            broken(&runtime, "          containerPort: 8080", "          containerPort: 8080\n          portName: h2c"),
            "spec.containers.0.ports.0: unknown field(s) portName",
        ),
        (
            broken(&pool, "number: 50051", "number: \"50051\""),
            "spec.targetPorts.0.number: '50051' is not of type 'integer'",
        ),
        (
            broken(&pool, "failureMode: FailOpen", "failureMode: Open"),
            "spec.endpointPickerRef.failureMode: 'Open' is not one of",
        ),
        (broken(&pool, "  targetPorts:", "  targetPort:"), "'targetPorts' is a required property"),
        (
            broken(&service, "scaleTarget: 70", "scaleTarget: 70%"),
            "spec.predictor.scaleTarget: '70%' is not of type 'integer'",
        ),
        (broken(&service, "  annotations:", "  annotation:"), "metadata: unknown field(s) annotation"),
        (
            broken(&service, "kind: InferenceService", "kind: InferenceGraph"),
            "no CRD under deploy/crds serves serving.kserve.io/v1beta1 InferenceGraph",
        ),
    ];
    for (manifest, expected) in cases {
        let error = validate_custom_resource(&python, &manifest).expect_err(&format!("passed: {expected}"));
        assert!(error.contains(expected), "expected {expected:?}, got: {error}");
    }
}

/// The KServe runtime's container (deploy/kserve/runtime.yaml) as a JSON value.
fn kserve_container(python: &std::path::Path) -> serde_json::Value {
    let output = std::process::Command::new(python)
        .current_dir(ROOT)
        .args(["-c", "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))"])
        .arg("deploy/kserve/runtime.yaml")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", common::python::describe("reading runtime.yaml", &output));
    let runtime: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    runtime["spec"]["containers"][0].clone()
}

/// The ClusterServingRuntime's args and env start a real server that serves the checkpoint KServe's
/// storage initializer puts at /mnt/models under the InferenceService's name ({{.Name}}), with
/// the inference extension's metrics labelled by it, on one port that speaks HTTP/1.1 and HTTP/2
/// cleartext both (the port is named h2c: Knative then sends everything over HTTP/2).
#[tokio::test]
async fn the_kserve_runtime_serves_the_storage_mount_under_the_inference_service_name() {
    let Some(python) = deploy_python("the_kserve_runtime_serves_the_storage_mount_under_the_inference_service_name")
    else {
        return;
    };
    let container = kserve_container(&python);
    let port = container["ports"][0].clone();
    assert_eq!((port["name"].as_str(), port["containerPort"].as_u64()), (Some("h2c"), Some(8080)), "{container}");
    let model = model_dir("tiny-git-image");
    let mut args: Vec<String> = Vec::new();
    for arg in container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()) {
        match arg {
            "serve" => {}
            // The test's own port instead (TestServer gives --listen).
            "--listen=0.0.0.0:8080" => {}
            _ => args.push(arg.replace("/mnt/models", model.to_str().unwrap()).replace("{{.Name}}", "git-vatex")),
        }
    }
    assert!(
        args.contains(&"--name=git-vatex".to_string()) && args.iter().any(|a| a.contains("tiny-git-image")),
        "{args:?}"
    );
    let env: Vec<(String, String)> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e["value"].as_str().unwrap().to_string()))
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let server = TestServer::serve("127.0.0.1:0", &args, &env);

    let client = GitcapClient::connect(ClientConfig::new(server.url())).await.unwrap();
    assert_eq!(client.health("gitcap.v1.Captioner/git-vatex").await.unwrap(), HealthStatus::Serving);
    let image = std::fs::read(fixtures().join("media/shapes.png")).unwrap();
    let request = gitcap_client::proto::CaptionRequest {
        model: "git-vatex".into(),
        media: Some(gitcap_client::proto::Media {
            kind: Some(gitcap_client::proto::media::Kind::Image(image)),
            ..Default::default()
        }),
        ..Default::default()
    };
    let reply = CaptionerClient::new(server.channel().await).caption(request).await.unwrap().into_inner();
    assert!(!reply.text.is_empty(), "{reply:?}");

    // /metrics over HTTP/1.1, as the endpoint picker and Prometheus scrape it...
    // (The running gauge drops just after the answer is sent: poll for it.)
    let idle = r#"vllm:num_requests_running{model_name="git-vatex"} 0"#;
    let polling = std::time::Instant::now();
    let metrics = loop {
        let (status, _, metrics) = http_get(&server.addr, "/metrics");
        assert_eq!(status, 200);
        if metrics.contains(idle) || polling.elapsed() > std::time::Duration::from_secs(10) {
            break metrics;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(metrics.contains(idle), "{metrics}");
    // The runtime's probes answer where it points them (the Open Inference Protocol's health).
    for probe in ["livenessProbe", "readinessProbe"] {
        let path = container[probe]["httpGet"]["path"].as_str().unwrap_or_else(|| panic!("{probe}: {container}"));
        let (status, _, body) = http_get(&server.addr, path);
        assert_eq!(status, 200, "{probe} {path}: {body}");
    }
    // ...and over HTTP/2 with prior knowledge, as Knative's queue-proxy speaks to an h2c port.
    let tcp = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::get(format!("http://{}/metrics", server.addr)).body(()).unwrap();
    let (response, _) = send.ready().await.unwrap().send_request(request, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
}
