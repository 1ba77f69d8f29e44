//! The Gateway API inference extension's model-server metrics (its proposal 003, under the names
//! its endpoint picker reads by default: vLLM's), as a running server exports them: per model
//! (`model_name`), waiting and running requests as gitcap's own gauges count them, and the
//! decoding batch's utilisation as a fraction within 0..1; all back to 0 once the load is gone.

mod common;

use std::time::{Duration, Instant};

use gitcap_client::proto::captioner_client::CaptionerClient;

use common::fixtures::fixtures;
use common::probe::{self, gauge, http_get, value};
use common::server::TestServer;

const WAITING: &str = r#"vllm:num_requests_waiting{model_name="tiny"}"#;
const RUNNING: &str = r#"vllm:num_requests_running{model_name="tiny"}"#;
const USAGE: &str = r#"vllm:kv_cache_usage_perc{model_name="tiny"}"#;

/// One scrape's reading of the three, checked against gitcap's own gauges of the same scrape
/// (the inference extension's come from them) and the utilisation against its range.
#[derive(Debug, PartialEq)]
struct Reading {
    waiting: f64,
    running: f64,
    usage: f64,
}

async fn read(addr: &str) -> Reading {
    let addr = addr.to_string();
    let text = tokio::task::spawn_blocking(move || http_get(&addr, "/metrics").2).await.unwrap();
    let series = |name: &str| value(&text, name).unwrap_or_else(|| panic!("no {name} in\n{text}"));
    let reading = Reading { waiting: series(WAITING), running: series(RUNNING), usage: series(USAGE) };
    assert_eq!(reading.waiting, gauge(&text, "gitcap_queue_depth", "tiny"), "{text}");
    assert_eq!(reading.running, gauge(&text, "gitcap_running_requests", "tiny"), "{text}");
    assert!((0.0..=1.0).contains(&reading.usage), "utilisation out of 0..1: {text}");
    reading
}

/// Scrapes until `done` holds (60 s at most); the reading then.
async fn read_until(addr: &str, what: &str, done: impl Fn(&Reading) -> bool) -> Reading {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let reading = read(addr).await;
        if done(&reading) {
            return reading;
        }
        assert!(Instant::now() < deadline, "waited 60 s for {what}; last: {reading:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_running_and_utilisation_follow_the_load_and_return_to_zero() {
    // A 32-beam search takes 32 of the batch's 48 rows: a second one waits for it.
    let server = TestServer::start_with_env("tiny-git-image", &[], &[("GITCAP__ENGINE__MAX_BATCH_SIZE", "48")]);
    let idle = read_until(&server.addr, "the series of an idle model", |_| true).await;
    assert_eq!(idle, Reading { waiting: 0.0, running: 0.0, usage: 0.0 });

    let channel = server.channel().await;
    let image = std::fs::read(fixtures().join("media/shapes.png")).unwrap();
    let hold = || {
        let mut client = CaptionerClient::new(channel.clone());
        let request = probe::long_request(image.clone());
        tokio::spawn(async move { client.caption(request).await.map(|_| ()) })
    };
    let first = hold();
    let one = read_until(&server.addr, "one running", |r| r.running == 1.0).await;
    assert_eq!(one.waiting, 0.0);
    assert!((one.usage - 32.0 / 48.0).abs() < 1e-9, "32 of 48 rows: {one:?}");
    let second = hold();
    let both = read_until(&server.addr, "one waiting", |r| r.waiting == 1.0).await;
    assert_eq!(both, Reading { waiting: 1.0, running: 1.0, usage: one.usage }, "the second waits, the batch as full");

    first.await.unwrap().expect("the first request");
    second.await.unwrap().expect("the second request");
    read_until(&server.addr, "all three back to 0", |r| *r == Reading { waiting: 0.0, running: 0.0, usage: 0.0 }).await;
}

#[tokio::test]
async fn metrics_inference_gateway_false_leaves_them_out() {
    let server = TestServer::start_with_env("tiny-git-image", &[], &[("GITCAP__METRICS__INFERENCE_GATEWAY", "false")]);
    let text = probe::scrape_until(&server.addr, |text| text.contains("gitcap_running_requests{"));
    assert!(!text.contains("vllm:"), "{text}");
}
