//! What happens when callers cancel, run out of time or overload a model, and when the server
//! is asked to stop. Timing-based, so it is its own test binary: nothing else runs beside it.

mod common;

use std::time::{Duration, Instant};

use tokio_stream::StreamExt;
use tonic::Code;

use common::fixtures::fixtures;
use common::server::TestServer;
use gitcap_client::proto::{captioner_client::CaptionerClient, media::Kind, CaptionRequest, GenerationOptions, Media};

/// The tests here measure time: they run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn long_request() -> CaptionRequest {
    let image = std::fs::read(fixtures().join("media/photo.jpg")).unwrap();
    CaptionRequest {
        media: Some(Media { kind: Some(Kind::Image(image)) }),
        // A wide beam search that never ends early keeps the model busy for a while.
        options: Some(GenerationOptions {
            max_new_tokens: Some(60),
            min_new_tokens: Some(60),
            num_beams: Some(32),
            ..Default::default()
        }),
        ..Default::default()
    }
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
async fn deadlines_cancellation_and_a_full_queue() {
    let _serial = SERIAL.lock().await;
    let mut server = TestServer::start("tiny-git-wide", &["--queue-capacity", "1"]);
    let channel = server.channel().await;
    let mut client = CaptionerClient::new(channel.clone());

    // How long one long request takes when nothing stops it (after a warm-up: the first
    // request of a process pays libtorch's start-up).
    client.caption(quick_request()).await.unwrap();
    let reply = client.caption(long_request()).await.unwrap().into_inner();
    let full = Duration::from_secs_f64(reply.timings.unwrap().total_ms / 1e3);
    eprintln!("a full long request takes {full:?}");

    // A deadline that passes mid-generation: the caller gets DEADLINE_EXCEEDED (tonic's own
    // client reports its local timer as CANCELLED "Timeout expired"), and the server stops the
    // generation, so the next request does not wait for it.
    let mut request = tonic::Request::new(long_request());
    request.set_timeout(full / 6);
    let status = client.caption(request).await.unwrap_err();
    assert!(
        status.code() == Code::DeadlineExceeded
            || (status.code() == Code::Cancelled && status.message().contains("Timeout")),
        "{status:?}"
    );
    let waited = queue_wait(&mut client).await;
    assert!(waited < full / 2, "the expired request kept the model busy: waited {waited:?} of {full:?}");

    // A client that drops its stream stops the generation too.
    let mut stream = client.caption_stream(long_request()).await.unwrap().into_inner();
    tokio::time::sleep(full / 5).await;
    drop(stream.next());
    drop(stream);
    let waited = queue_wait(&mut client).await;
    assert!(waited < full / 2, "the dropped stream kept the model busy: waited {waited:?} of {full:?}");

    // A queue of one fills at once: of a burst of six, those that find it full are refused
    // at once with RESOURCE_EXHAUSTED and every other one succeeds.
    let burst: Vec<_> = (0..6)
        .map(|_| {
            let mut c = CaptionerClient::new(channel.clone());
            tokio::spawn(async move {
                let asked = Instant::now();
                (c.caption(long_request()).await, asked.elapsed())
            })
        })
        .collect();
    let mut refused = 0;
    for task in burst {
        match task.await.unwrap() {
            (Ok(_), _) => {}
            (Err(status), after) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(after < full, "refused at once, not after a wait ({after:?})");
                refused += 1;
            }
        }
    }
    assert!((1..=5).contains(&refused), "{refused} of 6 refused");
    assert!(server.is_running());
}

#[tokio::test]
async fn sigterm_lets_running_requests_finish_and_refuses_new_ones() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start("tiny-git-wide", &[]);
    let channel = server.channel().await;
    let mut running = CaptionerClient::new(channel.clone());
    let task = tokio::spawn(async move { running.caption(long_request()).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.signal_term();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // New callers are turned away...
    let refused = match tonic::transport::Endpoint::from_shared(server.url()).unwrap().connect().await {
        Err(_) => true,
        Ok(fresh) => CaptionerClient::new(fresh).caption(quick_request()).await.is_err(),
    };
    assert!(refused, "a new request after SIGTERM must be refused");
    // ...while the request already running finishes.
    let result = task.await.unwrap();
    assert!(result.is_ok(), "in-flight request must finish: {result:?}");
    assert!(tokio::task::spawn_blocking(move || server.wait()).await.unwrap(), "clean exit");
}
