//! A caller that goes away mid-generation, and SIGINT. The engine's state is read from
//! `/metrics` and requests are held in flight with a live stream (common::probe), so nothing
//! here waits on a sleep; the one duration compared is a model's own request time.

mod common;

use std::time::{Duration, Instant};

use tokio_stream::StreamExt;
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};

use common::fixtures::fixtures;
use common::probe::{self, HeldRequest};
use common::server::TestServer;
use gitcap_client::proto::{captioner_client::CaptionerClient, CaptionRequest, GenerationOptions};

/// The tests here measure time: they run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn long_request() -> CaptionRequest {
    probe::long_request(std::fs::read(fixtures().join("media/photo.jpg")).unwrap())
}

fn quick_request() -> CaptionRequest {
    CaptionRequest {
        options: Some(GenerationOptions { max_new_tokens: Some(1), ..Default::default() }),
        ..long_request()
    }
}

/// How long a quick request waited for the model (server-side `queue_ms`): near zero when
/// the model is idle, most of a long request when one is still running.
async fn queue_wait(client: &mut CaptionerClient<tonic::transport::Channel>) -> Duration {
    let reply = client.caption(quick_request()).await.unwrap().into_inner();
    Duration::from_secs_f64(reply.timings.unwrap().queue_ms / 1e3)
}

#[tokio::test]
async fn a_caller_that_drops_its_stream_stops_the_generation() {
    let _serial = SERIAL.lock().await;
    let mut server = TestServer::start("tiny-git-wide", &[]);
    let channel = server.channel().await;
    let mut client = CaptionerClient::new(channel.clone());

    // How long one long request takes when nothing stops it (after a warm-up: the first
    // request of a process pays libtorch's start-up).
    client.caption(quick_request()).await.unwrap();
    let reply = client.caption(long_request()).await.unwrap().into_inner();
    let full = Duration::from_secs_f64(reply.timings.unwrap().total_ms / 1e3);

    // Once the request is running in the engine, its caller goes away: the model is free again
    // long before the request would have ended.
    let stream = client.caption_stream(long_request()).await.unwrap().into_inner();
    probe::wait_for_engine(&server.addr, "tiny", 1.0, 0.0).await;
    drop(stream);
    let waited = queue_wait(&mut client).await;
    assert!(waited < full / 2, "the dropped stream kept the model busy: waited {waited:?} of {full:?}");
    assert!(server.is_running());
}

/// SIGINT (Ctrl-C) drains like SIGTERM: health turns NOT_SERVING, the listener closes, the
/// request in flight is still served, and the server exits cleanly once it ends.
#[tokio::test]
async fn sigint_drains_requests_in_flight_and_exits_cleanly() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start("tiny-git-wide", &[]);
    let channel = server.channel().await;
    let mut health = HealthClient::new(channel.clone());
    let mut watch = health.watch(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(watch.next().await.unwrap().unwrap().status, ServingStatus::Serving as i32);
    let frame = std::fs::read(fixtures().join("media/shapes.png")).unwrap();
    let mut held = HeldRequest::open(channel.clone(), "tiny", &frame).await;

    server.signal("INT");
    let event = tokio::time::timeout(Duration::from_secs(10), watch.next()).await.expect("no health change");
    assert_eq!(event.unwrap().unwrap().status, ServingStatus::NotServing as i32);
    // (A health watch is a call in flight too: it would hold the exit for the grace period.)
    drop(watch);
    // No new connections: the port closes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&server.addr).is_ok() {
        assert!(Instant::now() < deadline, "the port still accepts connections after SIGINT");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The request in flight is still served, and ends cleanly.
    held.caption(&frame).await.expect("the request in flight is served after SIGINT");
    held.finish().await.expect("the request in flight ends cleanly");
    let exited = tokio::task::spawn_blocking(move || {
        let mut server = server;
        server.wait_exit(Duration::from_secs(30))
    });
    let status = exited.await.unwrap().expect("the server did not exit after its last request");
    assert!(status.success(), "exit status {status:?}");
}
