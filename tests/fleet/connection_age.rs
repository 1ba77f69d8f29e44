//! `server.max_connection_age_secs`: a client balancing round robin over a name's addresses
//! (gitcap_client::balance, which resolves again when a connection ends, as gRPC's `dns:///`
//! does) reaches a replica added after it connected, within the age plus 10 s. The replicas
//! listen on one port of three loopback addresses (127.0.0.1–3), and the name resolves through a
//! resolver the test controls, as a headless Service's DNS name would.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::caption_request;
use super::common::fixtures::model_dir;
use super::common::probe::http_get;
use super::common::server::TestServer;
use gitcap_client::balance::{self, BalanceOptions, Resolver};
use gitcap_client::proto::captioner_client::CaptionerClient;
use gitcap_client::ClientConfig;

const AGE_SECS: u64 = 2;

fn replica(address: &str, age: bool) -> TestServer {
    let model = model_dir("tiny-git-image");
    let mut env = vec![];
    if age {
        env = vec![
            ("GITCAP__SERVER__MAX_CONNECTION_AGE_SECS", "2"),
            ("GITCAP__SERVER__MAX_CONNECTION_AGE_GRACE_SECS", "5"),
        ];
    }
    TestServer::serve(address, &["--name", "tiny", "--model", model.to_str().unwrap()], &env)
}

/// Captions answered by the server at `addr`, from its metrics.
fn answered(addr: &str) -> f64 {
    let metrics = http_get(addr, "/metrics").2;
    metrics
        .lines()
        .filter(|l| l.starts_with("gitcap_requests_total{") && l.contains(r#"code="OK""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Two replicas at 127.0.0.1:P and 127.0.0.2:P, a client calling them through a resolver that
/// names them; then a third at 127.0.0.3:P joins the resolver's answer. How long until the third
/// answers a call (`None`: not within `limit`), how often the client resolved, and the calls
/// that failed.
async fn join_a_replica(age: bool, limit: Duration) -> (Option<Duration>, usize, Vec<String>) {
    let first = replica("127.0.0.1:0", age);
    let port: u16 = first.addr.rsplit(':').next().unwrap().parse().unwrap();
    let second = replica(&format!("127.0.0.2:{port}"), age);
    let addresses: Arc<Mutex<Vec<SocketAddr>>> =
        Arc::new(Mutex::new(vec![first.addr.parse().unwrap(), second.addr.parse().unwrap()]));
    let resolutions = Arc::new(AtomicUsize::new(0));
    let resolver: Resolver = {
        let (addresses, resolutions) = (addresses.clone(), resolutions.clone());
        Arc::new(move || {
            resolutions.fetch_add(1, Ordering::Relaxed);
            let now = addresses.lock().unwrap().clone();
            Box::pin(async move { Ok(now) })
        })
    };
    let options = BalanceOptions { min_resolve_interval: Duration::from_millis(100), refresh_every: None };
    let channel = balance::connect_with(resolver, &ClientConfig::new("http://unused"), options).await.unwrap();

    let (stop_tx, stop) = watch::channel(false);
    let failures = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    for _ in 0..2 {
        let (mut client, stop) = (CaptionerClient::new(channel.clone()), stop.clone());
        let (failures, calls) = (failures.clone(), calls.clone());
        tokio::spawn(async move {
            while !*stop.borrow() {
                calls.fetch_add(1, Ordering::Relaxed);
                if let Err(status) = client.caption(caption_request("tiny")).await {
                    failures.lock().unwrap().push(status.to_string());
                }
            }
        });
    }
    for server in [&first, &second] {
        let addr = server.addr.clone();
        super::wait_for(Duration::from_secs(10), "both replicas answer", || {
            let addr = addr.clone();
            async move { tokio::task::spawn_blocking(move || answered(&addr)).await.unwrap() > 0.0 }
        })
        .await;
    }

    let third = replica(&format!("127.0.0.3:{port}"), age);
    addresses.lock().unwrap().push(third.addr.parse().unwrap());
    let added = Instant::now();
    let mut reached = None;
    while added.elapsed() < limit {
        let addr = third.addr.clone();
        if tokio::task::spawn_blocking(move || answered(&addr)).await.unwrap() > 0.0 {
            reached = Some(added.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_tx.send(true).unwrap();
    let failures = failures.lock().unwrap().clone();
    eprintln!("{} calls, {} failed", calls.load(Ordering::Relaxed), failures.len());
    (reached, resolutions.load(Ordering::Relaxed), failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_round_robin_client_reaches_a_new_replica_within_the_connection_age() {
    let _timing = super::TIMING.lock().await;
    let limit = Duration::from_secs(AGE_SECS + 10);
    let (reached, resolutions, failures) = join_a_replica(true, limit).await;
    eprintln!("max_connection_age {AGE_SECS} s: the new replica answered after {reached:?}; {resolutions} resolutions");
    let reached = reached.unwrap_or_else(|| panic!("the new replica got no call within {limit:?}"));
    assert!(reached <= limit);
    assert!(resolutions >= 2, "the client resolved again when its connections reached their age");
    assert!(failures.is_empty(), "calls failed while connections were closed at their age: {failures:?}");
}

/// The control: without a connection age, the same client keeps its connections and never
/// resolves again, so the new replica gets nothing in the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_connection_age_the_client_never_finds_the_new_replica() {
    let _timing = super::TIMING.lock().await;
    let (reached, resolutions, failures) = join_a_replica(false, Duration::from_secs(AGE_SECS + 3)).await;
    assert_eq!((reached, resolutions), (None, 1));
    assert!(failures.is_empty(), "{failures:?}");
}
