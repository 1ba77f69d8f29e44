//! Reliability, through the public gRPC API only: a mixed load with memory kept in check;
//! faults (cancellation at random points, deadlines in the queue and mid-generation, a full
//! queue, hot swaps under load, SIGTERM under load); a seeded corpus of malformed requests.
//! After every fault the server still answers a good request. Timing-based, so the tests run
//! one at a time. `scripts/soak.sh` runs the load scenario for longer (the ignored `soak`).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};

use common::bad_input::{self, BadCase, Call, CorpusLimits};
use common::fixtures::{fixtures, model_dir};
use common::load::{self, LoadPlan, LoadReport};
use common::probe::{self, long_beam};
use common::server::{PeakRss, TestServer};
use gitcap_client::proto::{
    admin_client::AdminClient, captioner_client::CaptionerClient, media::Kind, CaptionRequest, GenerationOptions,
    LoadRequest, Media, ModelSpec, SwapRequest, UploadStart,
};

/// The tests here measure time: they run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const ADMIN: &str = "reliability-admin";

/// The most of what abandoned callers' requests would have decoded, had each run to its end,
/// that the model may decode for them.
const ABANDONED_SHARE: f64 = 0.5;

/// Room for every client's requests and upload frames: a full queue is not what the load tests.
const LOAD_QUEUE_CAPACITY: &str = "1024";

fn secs_from_env(name: &str, default: u64) -> Duration {
    Duration::from_secs(std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default))
}

fn authed<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {ADMIN}").parse().unwrap());
    request
}

fn local_spec(name: &str, fixture: &str, version: &str) -> Option<ModelSpec> {
    Some(ModelSpec {
        name: name.into(),
        source: model_dir(fixture).display().to_string(),
        version: version.into(),
        ..Default::default()
    })
}

/// A server with the image fixture as `tiny` (and `default`) and the video fixture as `video`,
/// its admin service on, and a queue the load cannot fill.
async fn two_model_server(env: &[(&str, &str)]) -> TestServer {
    let roots = fixtures().join("models").display().to_string();
    let mut all = vec![
        ("GITCAP__AUTH__ADMIN_TOKEN", ADMIN),
        ("GITCAP__ADMIN__MODEL_ROOTS", roots.as_str()),
        ("GITCAP__MODEL__QUEUE_CAPACITY", LOAD_QUEUE_CAPACITY),
    ];
    all.extend_from_slice(env);
    let server = TestServer::start_with_env("tiny-git-image", &[], &all);
    let mut admin = AdminClient::new(server.channel().await);
    admin.load(authed(LoadRequest { spec: local_spec("video", "tiny-git-video", "") })).await.unwrap();
    server
}

fn image(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("media").join(name)).unwrap()
}

fn caption(model: &str, options: GenerationOptions) -> CaptionRequest {
    CaptionRequest {
        model: model.into(),
        media: Some(Media { kind: Some(Kind::Image(image("photo.jpg"))), ..Default::default() }),
        options: Some(options),
        ..Default::default()
    }
}

/// Greedy, 60 tokens, one token event each.
fn long_greedy() -> GenerationOptions {
    GenerationOptions { max_new_tokens: Some(60), min_new_tokens: Some(60), ..Default::default() }
}

fn quick() -> GenerationOptions {
    GenerationOptions { max_new_tokens: Some(1), ..Default::default() }
}

/// A plain request still gets a caption.
async fn assert_good_request_succeeds(channel: Channel, after: &str) {
    let mut client = CaptionerClient::new(channel);
    let request = CaptionRequest {
        media: Some(Media { kind: Some(Kind::Image(image("shapes.png"))), ..Default::default() }),
        options: Some(GenerationOptions { max_new_tokens: Some(8), ..Default::default() }),
        ..Default::default()
    };
    let reply = client.caption(request).await.unwrap_or_else(|s| panic!("after {after}, a good request failed: {s:?}"));
    assert!(!reply.into_inner().token_ids.is_empty(), "after {after}");
}

/// Decoding steps model `tiny` has run so far, read once it is idle (polled, 60 s at most): what
/// requests cost, counted rather than timed.
async fn steps_when_idle(addr: &str) -> f64 {
    let text = probe::wait_for_idle(addr, "tiny", Duration::from_secs(60)).await;
    probe::value(&text, r#"gitcap_decode_batch_size_count{model="tiny",version="local"}"#).unwrap_or(0.0)
}

/// Polls the server's metrics (60 s at most) until `version` of `model` has answered a request.
async fn wait_until_served(addr: &str, model: &str, version: &str) {
    let label = format!(r#"version="{version}""#);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let addr_owned = addr.to_string();
        let text = tokio::task::spawn_blocking(move || probe::http_get(&addr_owned, "/metrics").2).await.unwrap();
        let prefix = format!(r#"gitcap_requests_total{{model="{model}","#);
        let served = text.lines().any(|l| l.starts_with(&prefix) && l.contains(&label) && l.contains(r#"code="OK""#));
        if served {
            return;
        }
        assert!(Instant::now() < deadline, "{model}@{version} answered no request in 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Rows (sequences) model `tiny` has decoded so far, summed over its decoding steps, read once
/// it is idle (polled, 60 s at most).
async fn rows_when_idle(addr: &str) -> f64 {
    let text = probe::wait_for_idle(addr, "tiny", Duration::from_secs(60)).await;
    probe::value(&text, r#"gitcap_decode_batch_size_sum{model="tiny",version="local"}"#).unwrap_or(0.0)
}

/// How long one long beam search takes on an idle model (after a warm-up request).
async fn long_request_time(channel: Channel) -> Duration {
    let mut client = CaptionerClient::new(channel);
    client.caption(caption("", quick())).await.unwrap();
    let reply = client.caption(caption("", long_beam())).await.unwrap().into_inner();
    let full = Duration::from_secs_f64(reply.timings.unwrap().total_ms / 1e3);
    eprintln!("a long request takes {full:?}");
    full
}

/// Resident memory of the server: after warm-up, the highest seen during the run, at the end.
struct Rss {
    start: u64,
    peak: u64,
    end: u64,
}

impl Rss {
    fn summary(&self) -> String {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        format!(
            "server RSS: start {:.1} MiB, peak {:.1} MiB, end {:.1} MiB ({:+.1} MiB)",
            mib(self.start),
            mib(self.peak),
            mib(self.end),
            mib(self.end) - mib(self.start)
        )
    }
}

/// Warms up with the same load for `warm_up`, then runs `plan`, sampling the server's RSS.
async fn measured_load(server: &TestServer, plan: &LoadPlan, warm_up: Duration) -> (LoadReport, Rss) {
    let channel = server.channel().await;
    let warm =
        load::run(channel.clone(), &LoadPlan { duration: warm_up, seed: plan.seed + 1, ..plan.clone() }, None).await;
    assert_eq!(warm.failed(), 0, "warm-up failures:\n{}", warm.summary());
    let start = server.rss_bytes();
    let sampler = PeakRss::start(server.pid(), Duration::from_millis(100));
    let report = load::run(channel, plan, None).await;
    let end = server.rss_bytes();
    let peak = sampler.stop().await.max(end);
    (report, Rss { start, peak, end })
}

/// Every kind of request the load sends.
const LOAD_KINDS: [&str; 7] =
    ["caption", "caption_frames", "caption_gif", "caption_raw", "caption_stream", "upload", "upload_stream"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_load_fails_nothing_and_memory_stays_bounded() {
    let _serial = SERIAL.lock().await;
    let server = two_model_server(&[]).await;
    let plan = LoadPlan {
        clients: 16,
        duration: secs_from_env("GITCAP_RELIABILITY_LOAD_SECS", 15),
        seed: 7,
        image_model: "tiny".into(),
        video_model: "video".into(),
    };
    let (report, rss) = measured_load(&server, &plan, Duration::from_secs(3)).await;
    eprintln!("mixed load, {} clients:\n{}{}", plan.clients, report.summary(), rss.summary());
    assert_eq!(report.failed(), 0, "{}", report.summary());
    for kind in LOAD_KINDS {
        assert!(
            report.ok_by_kind.get(kind).copied().unwrap_or(0) > 0,
            "no {kind} request ran: {:?}",
            report.ok_by_kind
        );
    }
    // After the warm-up (libtorch's caches, the allocator's arenas, a blocking thread per
    // concurrent decode), memory may still move by what the allocator keeps for reuse (a few
    // MiB in our runs), but not grow with the number of requests: the ~1300 requests of a
    // 15 s run leaking 25 KiB each would cross this bound.
    let bound = 32 << 20;
    assert!(rss.end <= rss.start + bound, "{} (bound: +32 MiB)", rss.summary());
    assert_good_request_succeeds(server.channel().await, "the load").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_that_go_away_at_random_points_cost_nothing() {
    let _serial = SERIAL.lock().await;
    let server = two_model_server(&[]).await;
    let channel = server.channel().await;
    let full = long_request_time(channel.clone()).await;
    // What one long request decodes when it runs to its end: its steps, each of 32 beams (or of
    // one row, greedy).
    let before = steps_when_idle(&server.addr).await;
    CaptionerClient::new(channel.clone()).caption(caption("tiny", long_beam())).await.unwrap();
    let long_steps = steps_when_idle(&server.addr).await - before;
    let rows_before = rows_when_idle(&server.addr).await;
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let frames: Vec<Vec<u8>> = (0..6).map(|i| image(&format!("frames/frame_{i}.png"))).collect();
    let mut kinds = BTreeMap::<&str, usize>::new();
    let mut beams_to_the_end = 0;
    let mut tasks = vec![];
    for _ in 0..32 {
        let mut client = CaptionerClient::new(channel.clone());
        // Some callers leave after a few tokens, others after a random time: while queued,
        // while frames are uploading, mid-generation.
        let after_events = rng.random_range(0..20usize);
        let after = Duration::from_millis(rng.random_range(0..=full.as_millis() as u64));
        let kind = ["stream_tokens", "stream_beam", "unary", "upload", "upload_stream"][rng.random_range(0..5)];
        *kinds.entry(kind).or_default() += 1;
        // A beam search sends its tokens at its end: a caller waiting for any event stays to it.
        beams_to_the_end += usize::from(kind == "stream_beam" && after_events > 0);
        let chunk = rng.random_range(8..200);
        let frames = frames.clone();
        tasks.push(tokio::spawn(async move {
            let work = async {
                match kind {
                    "stream_tokens" | "stream_beam" => {
                        let options = if kind == "stream_tokens" { long_greedy() } else { long_beam() };
                        let mut stream = client.caption_stream(caption("tiny", options)).await?.into_inner();
                        for _ in 0..after_events {
                            if stream.next().await.is_none() {
                                break;
                            }
                        }
                        if kind == "stream_beam" {
                            tokio::time::sleep(after).await;
                        }
                        Ok(())
                    }
                    "unary" => client.caption(caption("tiny", long_beam())).await.map(|_| ()),
                    _ => {
                        let start =
                            UploadStart { model: "video".into(), options: Some(long_beam()), ..Default::default() };
                        let messages = load::upload_messages(start, &frames, chunk);
                        // A slow uploader: each message a moment apart, so leaving can happen mid-upload.
                        let paced =
                            tokio_stream::StreamExt::throttle(tokio_stream::iter(messages), Duration::from_millis(2));
                        if kind == "upload" {
                            client.upload_frames(paced).await.map(|_| ())
                        } else {
                            let mut events = client.upload_frames_stream(paced).await?.into_inner();
                            while events.next().await.is_some() {}
                            Ok::<(), Status>(())
                        }
                    }
                }
            };
            // Leaving = dropping the call (and its stream) part-way.
            let limit = if kind.starts_with("stream") { Duration::from_secs(60) } else { after };
            let _ = tokio::time::timeout(limit, work).await;
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    eprintln!("callers that left: {kinds:?}");
    // Once every caller has left, the models go idle, and `tiny` has decoded the rows of the beam
    // searches whose callers stayed to their end, and less than half of what the others'
    // requests would have decoded had each run to its end.
    probe::wait_for_idle(&server.addr, "video", Duration::from_secs(60)).await;
    let rows = rows_when_idle(&server.addr).await - rows_before;
    let kind = |k: &str| kinds.get(k).copied().unwrap_or(0) as f64;
    let stayed = 32.0 * beams_to_the_end as f64 * long_steps;
    let left =
        (kind("stream_tokens") + 32.0 * (kind("stream_beam") - beams_to_the_end as f64 + kind("unary"))) * long_steps;
    eprintln!("tiny decoded {rows} rows: {stayed} for callers that stayed, of {left} for those that left");
    assert!(rows < stayed + left * ABANDONED_SHARE, "abandoned requests kept the model busy: {rows} rows");
    assert_good_request_succeeds(channel, "cancellations").await;
}

/// Reads a stream to its first error; the number of tokens before it.
async fn stream_error(
    client: &mut CaptionerClient<Channel>,
    request: Request<CaptionRequest>,
) -> (usize, Option<Status>) {
    let mut stream = match client.caption_stream(request).await {
        Ok(s) => s.into_inner(),
        Err(status) => return (0, Some(status)),
    };
    let mut tokens = 0;
    while let Some(event) = stream.next().await {
        match event {
            Ok(_) => tokens += 1,
            Err(status) => return (tokens, Some(status)),
        }
    }
    (tokens, None)
}

/// Streams a caption with `options()` under a deadline of `first`, halved after each attempt
/// the request outran (5 at most: on a machine whose speed varies, a time measured before is a
/// guess); the tokens that came, the error that ended the stream, and the attempts outrun.
async fn expire_mid_stream(
    client: &mut CaptionerClient<Channel>,
    options: fn() -> GenerationOptions,
    first: Duration,
) -> (usize, Status, usize) {
    let mut timeout = first;
    for outran in 0..5 {
        if let (tokens, Some(status)) = stream_error(client, with_timeout(caption("", options()), timeout)).await {
            return (tokens, status, outran);
        }
        eprintln!("the request ended within its {timeout:?} deadline; again with half of it");
        timeout /= 2;
    }
    panic!("the deadline never passed mid-generation");
}

fn with_timeout(request: CaptionRequest, timeout: Duration) -> Request<CaptionRequest> {
    let mut request = Request::new(request);
    request.set_timeout(timeout);
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_expire_in_the_queue_and_mid_generation() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start("tiny-git-image", &[]);
    let channel = server.channel().await;
    long_request_time(channel.clone()).await;
    let mut client = CaptionerClient::new(channel.clone());
    // One more long beam search, run to its end: its time (the first one's may include one-time
    // costs) and its decoding steps (a 32-beam search fills the batch by itself, so it shares no
    // step).
    let before = steps_when_idle(&server.addr).await;
    let reply = client.caption(caption("", long_beam())).await.unwrap().into_inner();
    let full = Duration::from_secs_f64(reply.timings.unwrap().total_ms / 1e3);
    let long_steps = steps_when_idle(&server.addr).await - before;
    eprintln!("again: {full:?}, {long_steps} decoding steps");
    assert!(long_steps >= 50.0, "{long_steps}");

    // Mid-generation, on a stream: the server's own deadline check answers (tonic's timers
    // only cover the wait for the response headers, which come at once).
    let before = steps_when_idle(&server.addr).await;
    let (_, status, outran) = expire_mid_stream(&mut client, long_beam, full / 3).await;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("generation"), "{status:?}");
    let ran = steps_when_idle(&server.addr).await - before - outran as f64 * long_steps;
    assert!(ran < long_steps, "the expired request kept running: {ran} of its {long_steps} steps");

    // The same with greedy decoding, whose tokens stream: some arrive, then the error.
    let greedy = client.caption(caption("", long_greedy())).await.unwrap().into_inner();
    let greedy_time = Duration::from_secs_f64(greedy.timings.unwrap().total_ms / 1e3);
    let (tokens, status, _) = expire_mid_stream(&mut client, long_greedy, greedy_time / 2).await;
    eprintln!("greedy: 60 tokens take {greedy_time:?}; {tokens} tokens came before {status:?}");
    // Once tokens came the headers had too, so the error is the server's; with none, tonic's
    // timer for the response headers may have fired first (on a slow machine).
    assert!(
        status.code() == Code::DeadlineExceeded
            || (tokens == 0 && status.code() == Code::Cancelled && status.message().contains("Timeout")),
        "{status:?}"
    );

    // In the queue: two long requests ahead, a deadline shorter than the wait.
    let before = steps_when_idle(&server.addr).await;
    let blockers: Vec<_> = (0..2)
        .map(|_| {
            let mut c = CaptionerClient::new(channel.clone());
            tokio::spawn(async move { c.caption(caption("", long_beam())).await })
        })
        .collect();
    // One runs, the other waits (a 32-beam request fills the batch by itself).
    probe::wait_for_engine(&server.addr, "tiny", 1.0, 1.0).await;
    let (tokens, status) = stream_error(&mut client, with_timeout(caption("", long_beam()), full / 2)).await;
    let status = status.expect("the deadline passed in the queue");
    assert_eq!((tokens, status.code()), (0, Code::DeadlineExceeded), "{status:?}");
    assert!(status.message().contains("queue"), "{status:?}");
    for task in blockers {
        task.await.unwrap().expect("requests without a deadline are unaffected");
    }
    // Unary, in the queue: DEADLINE_EXCEEDED, or CANCELLED "Timeout expired" when tonic's
    // client-side timer for the same deadline fires first (as tests/overload.rs accepts). The
    // blocker runs on an idle model (the gauges may still show the last blocker running just
    // after its answer came), so the request cannot slip in ahead of it.
    steps_when_idle(&server.addr).await;
    let blocker = {
        let mut c = CaptionerClient::new(channel.clone());
        tokio::spawn(async move { c.caption(caption("", long_beam())).await })
    };
    probe::wait_for_engine(&server.addr, "tiny", 1.0, 0.0).await;
    let status = client.caption(with_timeout(caption("", long_beam()), full / 4)).await.unwrap_err();
    assert!(
        status.code() == Code::DeadlineExceeded
            || (status.code() == Code::Cancelled && status.message().contains("Timeout")),
        "{status:?}"
    );
    blocker.await.unwrap().expect("requests without a deadline are unaffected");
    // The expired ones never ran: the model decoded the three blockers' steps and no more.
    let ran = steps_when_idle(&server.addr).await - before;
    assert_eq!(ran, 3.0 * long_steps, "an expired request ran anyway");
    assert_good_request_succeeds(channel, "deadlines").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once_and_never_hangs() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start_with_env("tiny-git-image", &[], &[("GITCAP__MODEL__QUEUE_CAPACITY", "2")]);
    let channel = server.channel().await;
    let full = long_request_time(channel.clone()).await;
    let long = |i: usize| {
        let mut c = CaptionerClient::new(channel.clone());
        tokio::spawn(async move {
            if i.is_multiple_of(2) {
                c.caption(caption("", long_beam())).await.map(|_| ())
            } else {
                let (_, status) = stream_error(&mut c, Request::new(caption("", long_beam()))).await;
                status.map_or(Ok(()), Err)
            }
        })
    };
    // One request running (a 32-beam search fills the batch by itself) and two waiting fill
    // the queue of 2.
    let mut held = vec![long(0)];
    probe::wait_for_engine(&server.addr, "tiny", 1.0, 0.0).await;
    held.extend([long(1), long(2)]);
    probe::wait_for_engine(&server.addr, "tiny", 1.0, 2.0).await;
    // Every further request, unary or streaming, is refused at once: while the last request
    // held still waits for the two ahead of it.
    for i in 0..6 {
        let status = long(i).await.unwrap().expect_err("the queue is full");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("retry"), "{status:?}");
    }
    assert!(!held[2].is_finished(), "the refusals came only after the queue had drained");
    // Never a hang: the held ones are all served, one after the other.
    let served = tokio::time::timeout(full * 3 + Duration::from_secs(120), futures::future::join_all(held))
        .await
        .expect("a full queue made the held requests hang");
    for result in served {
        result.unwrap().expect("a request that found room is served");
    }
    let mut server = server;
    assert!(server.is_running());
    assert_good_request_succeeds(channel, "a full queue").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swaps_under_mixed_load_fail_no_request() {
    let _serial = SERIAL.lock().await;
    let server = two_model_server(&[]).await;
    let channel = server.channel().await;
    let plan = LoadPlan {
        clients: 16,
        duration: Duration::from_secs(120),
        seed: 21,
        image_model: "tiny".into(),
        video_model: "video".into(),
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let load = {
        let channel = channel.clone();
        tokio::spawn(async move { load::run(channel, &plan, Some(stopped)).await })
    };
    let mut admin = AdminClient::new(channel.clone());
    // Each version serves some of the load before the next swap (polled on the metrics).
    wait_until_served(&server.addr, "tiny", "local").await;
    wait_until_served(&server.addr, "video", "local").await;
    for (alias, fixture, version) in
        [("tiny", "tiny-git-image", "v2"), ("video", "tiny-git-video", "v2"), ("tiny", "tiny-git-image", "v3")]
    {
        let swap = SwapRequest { alias: alias.into(), spec: local_spec(alias, fixture, version), ..Default::default() };
        let swapped = admin.swap(authed(swap)).await.unwrap().into_inner();
        assert_eq!(swapped.alias.unwrap().id, format!("{alias}@{version}"));
        wait_until_served(&server.addr, alias, version).await;
    }
    stop.send(true).unwrap();
    let report = load.await.unwrap();
    eprintln!("three hot swaps under load:\n{}versions: {:?}", report.summary(), report.versions);
    assert_eq!(report.failed(), 0, "{}", report.summary());
    for version in ["local", "v2", "v3"] {
        assert!(report.versions.contains_key(version), "no request reached {version}: {:?}", report.versions);
    }
    assert_good_request_succeeds(channel, "hot swaps").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_in_flight_requests_and_exits_cleanly() {
    let _serial = SERIAL.lock().await;
    // A grace far above what six long requests take, even on a loaded machine: what is tested is
    // that they finish and the server exits cleanly, not how fast.
    let grace = Duration::from_secs(120);
    let mut server =
        TestServer::start_with_env("tiny-git-image", &[], &[("GITCAP__SERVER__SHUTDOWN_GRACE_SECS", "120")]);
    let channel = server.channel().await;
    // Warm-up; also how long one long request takes, for the log.
    long_request_time(channel.clone()).await;
    let mut health = HealthClient::new(channel.clone());
    let mut watch = health.watch(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    // Six long requests in flight (one running, five queued), half of them streams.
    let finished = Arc::new(AtomicUsize::new(0));
    let in_flight: Vec<_> = (0..6)
        .map(|i| {
            let mut c = CaptionerClient::new(channel.clone());
            let finished = finished.clone();
            tokio::spawn(async move {
                let result = if i % 2 == 0 {
                    c.caption(caption("", long_beam())).await.map(|_| ())
                } else {
                    let (_, status) = stream_error(&mut c, Request::new(caption("", long_beam()))).await;
                    status.map_or(Ok(()), Err)
                };
                finished.fetch_add(1, Ordering::SeqCst);
                (result, Instant::now())
            })
        })
        .collect();
    // All six have reached the model: one runs, five wait.
    probe::wait_for_engine(&server.addr, "tiny", 1.0, 5.0).await;
    let signalled = Instant::now();
    server.signal_term();

    // Health says NOT_SERVING first, while the requests in flight still run.
    let event = tokio::time::timeout(Duration::from_secs(5), watch.next()).await.expect("no health change").unwrap();
    assert_eq!(event.unwrap().status, ServingStatus::NotServing as i32);
    let done_then = finished.load(Ordering::SeqCst);
    assert!(done_then < 6, "NOT_SERVING came only after every request in flight had finished");
    drop(watch);

    // New requests are refused at once. Once the listener has closed, a new connection finds the
    // port closed: UNAVAILABLE. (One made right as it closes may be reset instead.)
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&server.addr).is_ok() {
        assert!(Instant::now() < deadline, "the port still accepts connections after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fresh = tonic::transport::Endpoint::from_shared(server.url()).unwrap().connect_lazy();
    let status = CaptionerClient::new(fresh).caption(caption("", quick())).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "a new connection: {status:?}");
    // Refused at once: the requests in flight are still being served.
    assert!(finished.load(Ordering::SeqCst) < 6, "a new connection was refused only after the drain");
    // On the connection already open the server has sent GOAWAY, so tonic's client refuses the
    // call itself: CANCELLED "operation was canceled" (README, "Reliability"). Sent before the
    // client read the GOAWAY, the call reaches the server, which answers UNAVAILABLE.
    let status = CaptionerClient::new(channel.clone()).caption(caption("", quick())).await.unwrap_err();
    assert!(
        status.code() == Code::Unavailable
            || (status.code() == Code::Cancelled && status.message().contains("operation was canceled")),
        "the open connection: {status:?}"
    );
    assert!(finished.load(Ordering::SeqCst) < 6, "the open connection was refused only after the drain");

    // The requests in flight finish, within the grace period.
    for task in in_flight {
        let (result, at) = task.await.unwrap();
        result.expect("a request in flight at SIGTERM must finish");
        assert!(at - signalled < grace, "finished {:?} after SIGTERM", at - signalled);
    }
    let status = tokio::task::spawn_blocking(move || server.wait_exit(grace + Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("the server did not exit");
    assert!(status.success(), "exit status {status:?}");
    eprintln!(
        "SIGTERM with 6 requests in flight ({done_then} done at NOT_SERVING): exit 0 after {:?}",
        signalled.elapsed()
    );
}

/// Sends one malformed request; its status (`Ok` only if the server accepted it).
async fn send(channel: Channel, call: Call) -> Result<(), Status> {
    let mut client = CaptionerClient::new(channel.clone());
    match call {
        Call::Caption(request) => client.caption(request).await.map(|_| ()),
        Call::CaptionStream(request) => {
            let (_, status) = stream_error(&mut client, Request::new(request)).await;
            status.map_or(Ok(()), Err)
        }
        Call::Upload(messages) => client.upload_frames(tokio_stream::iter(messages)).await.map(|_| ()),
        Call::ScoreLabels(request) => client.score_labels(request).await.map(|_| ()),
        Call::Raw(path, message) => common::raw_grpc::unary(channel, path, message).await.map(|_| ()),
    }
}

/// What is wrong with the answer to `case`, if anything.
fn check(case: &BadCase, result: &Result<(), Status>) -> Option<String> {
    let status = match result {
        Ok(()) => return Some("accepted".into()),
        Err(status) => status,
    };
    if status.code() != case.code {
        return Some(format!("{:?} instead of {:?}: {}", status.code(), case.code, status.message()));
    }
    if status.message().trim().is_empty() {
        return Some("an empty message".into());
    }
    if let Some(needle) = case.needle {
        if !status.message().contains(needle) {
            return Some(format!("message without {needle:?}: {}", status.message()));
        }
    }
    if let Some(field) = &case.field {
        use tonic_types::StatusExt;
        let details = status.get_error_details();
        let named = details.bad_request().and_then(|b| b.field_violations.first()).map(|v| v.field.clone());
        if !named.as_deref().is_some_and(|f| f.starts_with(field.as_str())) {
            return Some(format!("field {named:?} instead of {field}: {}", status.message()));
        }
    }
    None
}

const CORPUS_MAX_MESSAGE_BYTES: usize = 1_000_000;

fn corpus() -> Vec<BadCase> {
    let limits = CorpusLimits {
        max_message_bytes: CORPUS_MAX_MESSAGE_BYTES,
        // TestServer raises max_beams to 32; the rest are the defaults (config/default.toml).
        max_beams: 32,
        max_new_tokens: 256,
        max_positions: 64,
        max_frames: 64,
        max_pixels: 40_000_000,
    };
    bad_input::corpus(2024, 120, &limits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_the_documented_status_and_the_server_survives() {
    let _serial = SERIAL.lock().await;
    let max = CORPUS_MAX_MESSAGE_BYTES.to_string();
    let mut server = TestServer::start("tiny-git-image", &["--max-message-bytes", &max]);
    let channel = server.channel().await;
    let cases = corpus();
    assert!(cases.len() >= 1000, "{} cases", cases.len());
    let started = Instant::now();
    let outcomes: Vec<(BadCase, Result<(), Status>)> = futures::stream::iter(cases)
        .map(|mut case| {
            let channel = channel.clone();
            async move {
                let call = std::mem::replace(&mut case.call, Call::Raw("", vec![]));
                (case, send(channel, call).await)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;

    // Per category: cases, answered as documented, the codes seen.
    let mut table: BTreeMap<&str, (usize, usize, BTreeMap<String, usize>)> = BTreeMap::new();
    let mut wrong = vec![];
    for (case, result) in &outcomes {
        let row = table.entry(case.category).or_default();
        row.0 += 1;
        let code = match result {
            Ok(()) => "OK".to_string(),
            Err(s) => format!("{:?}", s.code()),
        };
        *row.2.entry(code).or_default() += 1;
        match check(case, result) {
            None => row.1 += 1,
            Some(problem) => wrong.push(format!("{}: {problem}", case.category)),
        }
    }
    eprintln!("{} malformed requests in {:.1} s", outcomes.len(), started.elapsed().as_secs_f64());
    eprintln!("{:<20} {:>6} {:>10}  codes", "category", "cases", "as doc'd");
    for (category, (n, right, codes)) in &table {
        eprintln!("{category:<20} {n:>6} {right:>10}  {codes:?}");
    }
    assert!(
        wrong.is_empty(),
        "{} of {} answered wrongly, e.g.:\n{}",
        wrong.len(),
        outcomes.len(),
        wrong[..wrong.len().min(20)].join("\n")
    );
    assert!(server.is_running(), "the server died");
    assert_good_request_succeeds(channel, "the malformed requests").await;
}

#[tokio::test]
async fn an_oversized_message_gets_resource_exhausted() {
    let _serial = SERIAL.lock().await;
    let max = CORPUS_MAX_MESSAGE_BYTES.to_string();
    let server = TestServer::start("tiny-git-image", &["--max-message-bytes", &max]);
    let mut client = CaptionerClient::new(server.channel().await);
    let request = CaptionRequest {
        media: Some(Media { kind: Some(Kind::Image(vec![0; CORPUS_MAX_MESSAGE_BYTES + 1])), ..Default::default() }),
        ..Default::default()
    };
    let status = client.caption(request).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
}

/// The load scenario for longer, with figures: `scripts/soak.sh [SECONDS] [MODEL_DIR]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the soak, not for CI: scripts/soak.sh [SECONDS] [MODEL_DIR]"]
async fn soak() {
    let _serial = SERIAL.lock().await;
    let duration = secs_from_env("GITCAP_SOAK_SECS", 60);
    let clients = std::env::var("GITCAP_SOAK_CLIENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(16);
    let (server, image_model, video_model) = match std::env::var("GITCAP_SOAK_MODEL_DIR") {
        // One checkpoint answers everything: images, frame lists, uploads.
        Ok(dir) if !dir.is_empty() => {
            let env = [("GITCAP__MODEL__QUEUE_CAPACITY", LOAD_QUEUE_CAPACITY)];
            (TestServer::start_dir(std::path::Path::new(&dir), &[], &env), "tiny", "tiny")
        }
        _ => (two_model_server(&[]).await, "tiny", "video"),
    };
    let plan =
        LoadPlan { clients, duration, seed: 99, image_model: image_model.into(), video_model: video_model.into() };
    let (report, rss) = measured_load(&server, &plan, Duration::from_secs(5)).await;
    println!("soak: {clients} clients for {duration:?}\n{}{}", report.summary(), rss.summary());
    assert_eq!(report.failed(), 0, "{}", report.summary());
}
