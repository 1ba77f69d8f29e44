//! Continuous batching and the feature cache, through a model's worker thread: requests that
//! run together give the tokens they give alone (f32), a request cancelled mid-batch does not
//! disturb the others, cache hits give what misses give, and the cache keeps to its bound.

mod common;

use std::time::{Duration, Instant};

use image::RgbImage;
use tokio::sync::mpsc::UnboundedReceiver;

use common::fixtures::{cases, fixtures, model_dir, MODELS};
use gitcap_server::deadline::Deadline;
use gitcap_server::engine::{
    EngineEvent, EngineOptions, Frame, InferenceOutput, InferenceRequest, ModelWorker, PreparedFrame, Priority,
};
use gitcap_server::media::{decode_image, MediaLimits, PreprocessorConfig};
use gitcap_server::model::generation::GenerationOptions;

/// Tests whose outcome depends on when the engine sees a request (a cancellation, admission
/// order) run one at a time, not beside the others' CPU load (CI has 2 cores).
static TIMING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn worker(model: &str, options: EngineOptions) -> ModelWorker {
    common::engine::worker_with(model, options)
}

fn media(names: &[String]) -> Vec<RgbImage> {
    let dir = fixtures().join("media");
    names
        .iter()
        .flat_map(|f| decode_image(&std::fs::read(dir.join(f)).unwrap(), f, &MediaLimits::default()).unwrap())
        .collect()
}

/// A deterministic image with content `seed`.
fn pattern(seed: u32) -> RgbImage {
    RgbImage::from_fn(48, 40, |x, y| {
        let v = (x * 7 + y * 13 + seed * 31) % 256;
        image::Rgb([v as u8, (v * 3 % 256) as u8, ((255 - v) * (seed + 1) % 256) as u8])
    })
}

/// A request of fixture model `model` (its image processor prepares the frames).
fn request(model: &str, frames: &[RgbImage], question: Option<&str>, options: GenerationOptions) -> InferenceRequest {
    let preprocessor = PreprocessorConfig::from_file(&model_dir(model).join("preprocessor_config.json")).unwrap();
    InferenceRequest {
        frames: frames.iter().map(|f| Frame::from_image(f, &preprocessor).unwrap()).collect(),
        question: question.map(str::to_string),
        options,
        priority: Priority::Interactive,
    }
}

/// A worker that runs each request on its own, nothing cached: the reference for batching.
fn reference(model: &str) -> ModelWorker {
    worker(model, EngineOptions { feature_cache_bytes: 0, ..Default::default() })
}

/// The tokens `request` gives run alone.
async fn alone(reference: &ModelWorker, request: InferenceRequest) -> Vec<i64> {
    result(reference.submit(request, Deadline::NONE).unwrap()).await.token_ids
}

async fn each_alone(reference: &ModelWorker, requests: Vec<InferenceRequest>) -> Vec<Vec<i64>> {
    let mut tokens = Vec::with_capacity(requests.len());
    for request in requests {
        tokens.push(alone(reference, request).await);
    }
    tokens
}

/// Waits for a request's result; checks the streamed ids add up to it.
async fn result(mut events: UnboundedReceiver<EngineEvent>) -> InferenceOutput {
    let mut streamed = Vec::new();
    loop {
        match events.recv().await.expect("the engine answers") {
            EngineEvent::Admitted { .. } => {}
            EngineEvent::Token(t) => streamed.push(t.token_id),
            EngineEvent::Done { output, .. } => {
                assert_eq!(streamed, output.token_ids, "streamed ids");
                return output;
            }
            EngineEvent::Failed(e) => panic!("request failed: {e}"),
        }
    }
}

/// Greedy, beam search, sampling with a seed, questions and captions of different lengths and
/// frame counts, all submitted at once.
fn mixed_requests(model: &str) -> Vec<InferenceRequest> {
    let mut requests: Vec<InferenceRequest> = cases()
        .into_iter()
        .filter(|c| c.model == model)
        .map(|c| request(model, &media(&c.media), c.question.as_deref(), c.overrides()))
        .collect();
    let frames = if model == "tiny-git-video" { 6 } else { 1 };
    for seed in 0..4u32 {
        let images: Vec<RgbImage> = (0..frames).map(|f| pattern(seed * 10 + f)).collect();
        let sampled = GenerationOptions {
            do_sample: Some(true),
            seed: Some(seed as u64),
            top_k: Some(50),
            max_new_tokens: Some(9 + seed),
            ..Default::default()
        };
        requests.push(request(model, &images, None, sampled));
        let question = (seed % 2 == 0).then_some("what is in the picture?");
        let greedy = GenerationOptions { max_new_tokens: Some(6 + 3 * seed), ..Default::default() };
        requests.push(request(model, &images, question, greedy));
        let beams = GenerationOptions { num_beams: Some(2 + seed % 2), max_new_tokens: Some(7), ..Default::default() };
        requests.push(request(model, &images, None, beams));
    }
    requests
}

#[tokio::test]
async fn batched_requests_give_the_tokens_they_give_alone() {
    for model in MODELS {
        let expected = each_alone(&reference(model), mixed_requests(model)).await;
        // No cache: each distinct frame sequence admitted goes through the vision tower and the
        // image prefill (requests admitted together on the same frames share them).
        let worker = worker(model, EngineOptions { feature_cache_bytes: 0, ..Default::default() });
        let receivers: Vec<_> =
            mixed_requests(model).into_iter().map(|r| worker.submit(r, Deadline::NONE).unwrap()).collect();
        for (i, (events, expected)) in receivers.into_iter().zip(&expected).enumerate() {
            assert_eq!(&result(events).await.token_ids, expected, "{model}: request {i} batched vs alone");
        }
        let stats = worker.stats();
        assert!(stats.max_rows >= 4, "{model}: requests should have shared decoding steps: {stats:?}");
        assert!(stats.frames_encoded >= stats.vision_passes, "{stats:?}");
        assert!(stats.vision_passes < expected.len() as u64, "{model}: frames should be encoded in batches: {stats:?}");
        assert!(stats.prefill_passes < stats.images_prefilled, "{model}: image prefills should be batched: {stats:?}");
    }
}

#[tokio::test]
async fn a_request_cancelled_mid_batch_leaves_the_others_alone() {
    let _timing = TIMING.lock().await;
    let model = "tiny-git-image";
    let reference = reference(model);
    let short = GenerationOptions { min_new_tokens: Some(24), max_new_tokens: Some(24), ..Default::default() };
    // The cancelled one would run far longer than the others: 60 tokens.
    let long = GenerationOptions { min_new_tokens: Some(60), max_new_tokens: Some(60), ..Default::default() };
    let requests =
        || (0..5).map(|i| request(model, &[pattern(i)], None, if i == 2 { long } else { short })).collect::<Vec<_>>();
    let expected = each_alone(&reference, requests()).await;
    // The caller of request 2 goes away after its third token. On a loaded machine the engine may
    // have finished it before the drop is seen; that attempt proves nothing and is made again.
    for attempt in 1..=5 {
        let worker = worker(model, EngineOptions::default());
        let mut receivers: Vec<_> = requests().into_iter().map(|r| worker.submit(r, Deadline::NONE).unwrap()).collect();
        let mut cancelled = receivers.remove(2);
        assert!(matches!(cancelled.recv().await, Some(EngineEvent::Admitted { .. })));
        for _ in 0..3 {
            assert!(matches!(cancelled.recv().await, Some(EngineEvent::Token(_))));
        }
        drop(cancelled);
        for (i, events) in receivers.into_iter().enumerate() {
            let index = if i < 2 { i } else { i + 1 };
            assert_eq!(result(events).await.token_ids, expected[index], "request {index}");
        }
        let stats = worker.stats();
        assert!(stats.max_rows >= 2, "{stats:?}");
        // 4 requests × 23 steps after their first token, and 59 for the cancelled one uncancelled.
        if stats.decoded_rows < 4 * 23 + 59 {
            return;
        }
        eprintln!("attempt {attempt}: the engine finished the cancelled request before the drop: {stats:?}");
    }
    panic!("the cancelled request never left the batch early");
}

/// `engine.max_batch_size` bounds the rows decoded together, `engine.max_batch_tokens` the key/value
/// positions held together, and one request always runs, however large.
#[tokio::test]
async fn the_batch_bounds_hold_and_one_request_always_runs() {
    let model = "tiny-git-image";
    let reference = reference(model);
    let greedy = GenerationOptions { max_new_tokens: Some(8), min_new_tokens: Some(8), ..Default::default() };
    let requests = || (0..6).map(|i| request(model, &[pattern(i)], None, greedy)).collect::<Vec<_>>();
    let expected = each_alone(&reference, requests()).await;
    let run = |options: EngineOptions, batch: Vec<InferenceRequest>| async move {
        let worker = worker(model, options);
        let receivers: Vec<_> = batch.into_iter().map(|r| worker.submit(r, Deadline::NONE).unwrap()).collect();
        let mut ids = vec![];
        for events in receivers {
            ids.push(result(events).await.token_ids);
        }
        (ids, worker.stats())
    };

    // Six requests, at most two rows at a time.
    let (ids, stats) = run(EngineOptions { max_batch_size: 2, ..Default::default() }, requests()).await;
    assert_eq!(ids, expected);
    assert!(stats.max_rows == 2, "max_batch_size 2: {stats:?}");

    // A token budget smaller than any one request: each runs alone, and each runs.
    let (ids, stats) = run(EngineOptions { max_batch_tokens: 1, ..Default::default() }, requests()).await;
    assert_eq!(ids, expected);
    assert_eq!(stats.max_rows, 1, "max_batch_tokens 1: {stats:?}");

    // A token budget of exactly two requests: each holds 17 image tokens (a 32 px image in
    // 8 px patches, and one more) and its text capacity (the one-token prompt and 8 new
    // tokens), 26 positions. Two run together, never three, though six fit max_batch_size.
    let config = gitcap_server::model::GitConfig::from_file(&model_dir(model).join("config.json")).unwrap();
    let per_request = config.vision_config.tokens_per_image() as usize + 1 + 8;
    assert_eq!(per_request, 26);
    let (ids, stats) = run(EngineOptions { max_batch_tokens: 2 * per_request, ..Default::default() }, requests()).await;
    assert_eq!(ids, expected);
    assert_eq!(stats.max_rows, 2, "max_batch_tokens of two requests: {stats:?}");

    // A beam search wider than the batch runs too, on its own.
    let beams = GenerationOptions { num_beams: Some(4), max_new_tokens: Some(6), ..Default::default() };
    let wide = request(model, &[pattern(9)], None, beams);
    let expected_wide = alone(&reference, wide.share()).await;
    let (ids, stats) = run(EngineOptions { max_batch_size: 2, ..Default::default() }, vec![wide]).await;
    assert_eq!(ids, vec![expected_wide]);
    assert_eq!(stats.max_rows, 4, "one 4-beam request with max_batch_size 2: {stats:?}");
}

#[tokio::test]
async fn cache_hits_give_what_misses_give() {
    for model in ["tiny-git-image", "tiny-git-video"] {
        let reference = reference(model);
        let frames: Vec<RgbImage> = (0..if model == "tiny-git-video" { 6 } else { 1 }).map(pattern).collect();
        let caption =
            request(model, &frames, None, GenerationOptions { max_new_tokens: Some(10), ..Default::default() });
        let question = "what is it?";
        let follow_up = request(
            model,
            &frames,
            Some(question),
            GenerationOptions { max_new_tokens: Some(5), ..Default::default() },
        );
        let worker = worker(model, EngineOptions::default());
        let cold = result(worker.submit(caption, Deadline::NONE).unwrap()).await;
        let before = worker.stats();
        let warm = result(
            worker
                .submit(
                    request(model, &frames, None, GenerationOptions { max_new_tokens: Some(10), ..Default::default() }),
                    Deadline::NONE,
                )
                .unwrap(),
        )
        .await;
        let asked = result(worker.submit(follow_up, Deadline::NONE).unwrap()).await;
        let after = worker.stats();
        assert_eq!(warm.token_ids, cold.token_ids, "{model}: a cache hit gives the cold result");
        assert_eq!(
            cold.token_ids,
            alone(
                &reference,
                request(model, &frames, None, GenerationOptions { max_new_tokens: Some(10), ..Default::default() })
            )
            .await,
            "{model}: cold request vs the pipeline alone"
        );
        let expected = alone(
            &reference,
            request(
                model,
                &frames,
                Some(question),
                GenerationOptions { max_new_tokens: Some(5), ..Default::default() },
            ),
        )
        .await;
        assert_eq!(asked.token_ids, expected, "{model}: follow-up question from cached image keys/values");
        assert_eq!(after.cache.prefix_hits - before.cache.prefix_hits, 2, "{model}: {after:?}");
        assert_eq!(after.frames_encoded, before.frames_encoded, "{model}: no frame went through the tower again");

        // A frame uploaded twice is encoded once; a window of those frames hits the frame cache.
        let preprocessor = PreprocessorConfig::from_file(&model_dir(model).join("preprocessor_config.json")).unwrap();
        let prepared = || PreparedFrame::new(&pattern(99), &preprocessor).unwrap();
        let encoded = worker.encode(prepared()).await.unwrap();
        let again = worker.encode(prepared()).await.unwrap();
        assert_eq!(encoded.key, again.key);
        assert!(encoded.features.equal(&again.features));
        assert_eq!(worker.stats().frames_encoded, after.frames_encoded + 1);
        let mut window: Vec<Frame> = frames[1..].iter().map(|f| Frame::from_image(f, &preprocessor).unwrap()).collect();
        window.push(Frame::Encoded(again));
        let shifted = InferenceRequest {
            frames: window,
            question: None,
            options: GenerationOptions { max_new_tokens: Some(4), ..Default::default() },
            priority: Priority::Interactive,
        };
        let mut shifted_frames = frames[1..].to_vec();
        shifted_frames.push(pattern(99));
        let expected = alone(
            &reference,
            request(model, &shifted_frames, None, GenerationOptions { max_new_tokens: Some(4), ..Default::default() }),
        )
        .await;
        let out = result(worker.submit(shifted, Deadline::NONE).unwrap()).await;
        if model == "tiny-git-video" {
            assert_eq!(out.token_ids, expected, "{model}: overlapping window from cached frames");
            assert_eq!(worker.stats().frames_encoded, after.frames_encoded + 1, "every frame of the window was cached");
        } else {
            assert_eq!(out.token_ids, expected);
        }
    }
}

#[tokio::test]
async fn the_cache_keeps_to_its_byte_bound() {
    let model = "tiny-git-image";
    let short = || GenerationOptions { max_new_tokens: Some(2), ..Default::default() };
    // What one request leaves in the cache: its frame's features and its image keys/values.
    let probe = worker(model, EngineOptions::default());
    result(probe.submit(request(model, &[pattern(0)], None, short()), Deadline::NONE).unwrap()).await;
    let per_request = probe.stats().cache_bytes as usize;
    assert!(per_request > 0);

    let bound = per_request * 5 / 2;
    let worker = worker(model, EngineOptions { feature_cache_bytes: bound, ..Default::default() });
    for i in 0..12 {
        result(worker.submit(request(model, &[pattern(i)], None, short()), Deadline::NONE).unwrap()).await;
        let stats = worker.stats();
        assert!(stats.cache_bytes as usize <= bound, "{stats:?} over {bound}");
        assert!(stats.cache_bytes as usize >= per_request, "{stats:?}");
    }
    // The latest request is still cached; the earliest was evicted and runs the tower again.
    let before = worker.stats().frames_encoded;
    result(worker.submit(request(model, &[pattern(11)], None, short()), Deadline::NONE).unwrap()).await;
    assert_eq!(worker.stats().frames_encoded, before);
    result(worker.submit(request(model, &[pattern(0)], None, short()), Deadline::NONE).unwrap()).await;
    assert_eq!(worker.stats().frames_encoded, before + 1);
}

fn at(priority: Priority, mut request: InferenceRequest) -> InferenceRequest {
    request.priority = priority;
    request
}

/// A request's result and its queue time (ms, measured by the model's thread).
async fn finished(mut events: UnboundedReceiver<EngineEvent>) -> (InferenceOutput, f64) {
    loop {
        match events.recv().await.expect("the engine answers") {
            EngineEvent::Done { output, queue_ms } => return (output, queue_ms),
            EngineEvent::Failed(e) => panic!("request failed: {e}"),
            _ => {}
        }
    }
}

/// Submits `request`; returns its events and the instants just before and after.
fn submit_timed(worker: &ModelWorker, request: InferenceRequest) -> (UnboundedReceiver<EngineEvent>, Instant, Instant) {
    let before = Instant::now();
    let events = worker.submit(request, Deadline::NONE).unwrap();
    (events, before, Instant::now())
}

/// A request's submission instants (just before, just after) and its queue time (ms): it was
/// admitted its queue time after it was enqueued, which happened between the two instants.
type Admission = (Instant, Instant, f64);

/// Whether request `a` was certainly admitted before request `b`: the latest `a` can have been
/// admitted is before the earliest `b` can have been. Two requests admitted together (one
/// admission, one queue-time origin) are not.
fn admitted_before(a: Admission, b: Admission) -> bool {
    let ms = |t: Instant, since: Instant| t.saturating_duration_since(since).as_secs_f64() * 1e3;
    let origin = a.0.min(b.0);
    ms(a.1, origin) + a.2 < ms(b.0, origin) + b.2
}

/// With the queue full of batch work, an interactive request starts at once, in the rows batch
/// work leaves free, ahead of the batch requests queued before it.
#[tokio::test]
async fn interactive_requests_overtake_queued_batch_work() {
    let _timing = TIMING.lock().await;
    let model = "tiny-git-image";
    let long = GenerationOptions { min_new_tokens: Some(60), max_new_tokens: Some(60), ..Default::default() };
    let short = GenerationOptions { min_new_tokens: Some(6), max_new_tokens: Some(6), ..Default::default() };
    let options =
        EngineOptions { max_batch_size: 4, interactive_rows: 2, feature_cache_bytes: 0, ..Default::default() };
    let worker = worker(model, options);
    let batch: Vec<_> =
        (0..8).map(|i| submit_timed(&worker, at(Priority::Batch, request(model, &[pattern(i)], None, long)))).collect();
    let (interactive, interactive_before, interactive_after) =
        submit_timed(&worker, request(model, &[pattern(50)], None, short));
    let (out, interactive_queue_ms) = finished(interactive).await;
    assert_eq!(out.token_ids.len(), 6);
    assert!(worker.queued() >= 6, "at most two batch requests started: {} wait", worker.queued());
    let mut batch_admitted = Vec::new();
    for (events, before, after) in batch {
        batch_admitted.push((before, after, finished(events).await.1));
    }
    // Every batch request after the first two (the rows batch work may use) started after it.
    for (i, &admitted) in batch_admitted.iter().enumerate().skip(2) {
        assert!(
            admitted_before((interactive_before, interactive_after, interactive_queue_ms), admitted),
            "batch request {i} started before the interactive one ({admitted:?} vs {interactive_queue_ms} ms)"
        );
    }
    let stats = worker.stats();
    assert!(stats.max_rows <= 3, "batch work keeps to its 2 rows: {stats:?}");
}

/// A batch request that has waited `batch_max_wait` is admitted like an interactive one, in
/// arrival order; without that it waits for every interactive request behind it.
#[tokio::test]
async fn batch_work_is_not_starved() {
    let _timing = TIMING.lock().await;
    let model = "tiny-git-image";
    let options = |batch_max_wait| EngineOptions {
        max_batch_size: 2,
        interactive_rows: 1,
        batch_max_wait,
        feature_cache_bytes: 0,
        ..Default::default()
    };
    let tokens = |n| GenerationOptions { min_new_tokens: Some(n), max_new_tokens: Some(n), ..Default::default() };
    // How many of the interactive requests queued after the batch request started before it.
    let overtaking = |batch_max_wait| async move {
        let worker = worker(model, options(batch_max_wait));
        // Two long interactive requests fill both rows; then one batch request, then ten
        // interactive ones, all queued behind them.
        let busy: Vec<_> =
            (0..2).map(|i| submit_timed(&worker, request(model, &[pattern(i)], None, tokens(40)))).collect();
        let (batch, batch_before, batch_after) =
            submit_timed(&worker, at(Priority::Batch, request(model, &[pattern(9)], None, tokens(10))));
        let later: Vec<_> =
            (0..10).map(|i| submit_timed(&worker, request(model, &[pattern(20 + i)], None, tokens(10)))).collect();
        let batch_admitted = (batch_before, batch_after, finished(batch).await.1);
        let mut overtaking = 0;
        for (events, before, after) in later {
            let admitted = (before, after, finished(events).await.1);
            overtaking += usize::from(admitted_before(admitted, batch_admitted));
        }
        for (events, _, _) in busy {
            finished(events).await;
        }
        overtaking
    };
    assert_eq!(overtaking(Duration::from_secs(3600)).await, 10, "without aging, batch work goes last");
    assert_eq!(overtaking(Duration::ZERO).await, 0, "an aged batch request keeps its place in arrival order");
}
/// Batch requests queue apart: a full batch queue refuses batch work with RESOURCE_EXHAUSTED and
/// still takes interactive requests.
#[tokio::test]
async fn a_full_batch_queue_leaves_room_for_interactive_requests() {
    let model = "tiny-git-image";
    let options = EngineOptions {
        max_batch_size: 1,
        interactive_rows: 0,
        batch_queue_capacity: 3,
        feature_cache_bytes: 0,
        ..Default::default()
    };
    let worker = worker(model, options);
    let long = GenerationOptions { min_new_tokens: Some(60), max_new_tokens: Some(60), ..Default::default() };
    let mut accepted = Vec::new();
    let mut refused = None;
    for i in 0..8 {
        match worker.submit(at(Priority::Batch, request(model, &[pattern(i)], None, long)), Deadline::NONE) {
            Ok(events) => accepted.push(events),
            Err(error) => {
                refused = Some(error);
                break;
            }
        }
    }
    let refused = refused.expect("a batch queue of 3 refuses some of 8 long requests");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(refused.to_string().contains("3 batch requests waiting"), "{refused}");
    assert!(accepted.len() >= 3, "{}", accepted.len());
    let interactive = worker.submit(request(model, &[pattern(60)], None, GenerationOptions::default()), Deadline::NONE);
    assert!(interactive.is_ok(), "an interactive request is taken beside a full batch queue");
}

/// A model's thread loads its own weights (every test worker is loaded that way); a load that
/// fails comes back as the error.
#[test]
fn a_failed_load_on_the_model_thread_is_reported() {
    use gitcap_server::error::GitcapError;
    let failed =
        ModelWorker::load("broken", || Err(GitcapError::model_files("no weights here")), EngineOptions::default());
    let error = failed.err().expect("a failed load is an error");
    assert!(error.to_string().contains("no weights here"), "{error}");
}

/// While an interactive request runs, batch requests start at most once every
/// `batch_admit_every_steps` decoding steps: each start (vision tower, image prefill) stalls
/// every running request, and a steady stream of batch starts would slow the interactive answer
/// several times over. With 1, batch work starts whenever rows free up.
#[tokio::test]
async fn batch_starts_are_paced_while_an_interactive_request_runs() {
    let _timing = TIMING.lock().await;
    let model = "tiny-git-image";
    let tokens = |n| GenerationOptions { min_new_tokens: Some(n), max_new_tokens: Some(n), ..Default::default() };
    // Image prefill passes while a 60-token interactive request runs, with more two-token batch
    // requests queued once it has started than its steps could start unpaced (6 rows a pass).
    let passes = |every: usize| async move {
        let options = EngineOptions {
            max_batch_size: 8,
            interactive_rows: 2,
            batch_admit_every_steps: every,
            feature_cache_bytes: 0,
            ..Default::default()
        };
        let worker = worker(model, options);
        let batch: Vec<_> =
            (0..400).map(|i| at(Priority::Batch, request(model, &[pattern(100 + i)], None, tokens(2)))).collect();
        let mut interactive = worker.submit(request(model, &[pattern(1)], None, tokens(60)), Deadline::NONE).unwrap();
        assert!(matches!(interactive.recv().await, Some(EngineEvent::Admitted { .. })));
        let at_start = worker.stats();
        let queued: Vec<_> = batch.into_iter().map(|r| worker.submit(r, Deadline::NONE).unwrap()).collect();
        let (out, _) = finished(interactive).await;
        assert_eq!(out.token_ids.len(), 60);
        let during = worker.stats();
        for events in queued {
            finished(events).await;
        }
        (during.prefill_passes - at_start.prefill_passes, during.decode_steps - at_start.decode_steps)
    };
    let (paced, steps) = passes(8).await;
    assert!(paced <= steps / 8 + 2, "{paced} batch starts in {steps} steps, paced every 8");
    let (unpaced, unpaced_steps) = passes(1).await;
    eprintln!("batch starts while the interactive request ran: {paced} in {steps} steps paced, {unpaced} in {unpaced_steps} unpaced");
    assert!(unpaced > paced + 4, "unpaced: {unpaced} batch starts in {unpaced_steps} steps, against {paced} paced");
}

/// While an interactive request runs, only `batch_rows_while_interactive` batch rows decode
/// beside it (the others keep their caches and wait), so its steps stay small; the batch requests
/// held meanwhile resume and give the tokens they give alone.
#[tokio::test]
async fn batch_rows_wait_while_an_interactive_request_runs() {
    let _timing = TIMING.lock().await;
    let model = "tiny-git-image";
    let tokens = |n| GenerationOptions { min_new_tokens: Some(n), max_new_tokens: Some(n), ..Default::default() };
    // Rows decoded per step while a 20-token interactive request runs beside 6 longer batch
    // requests, and the batch requests' tokens.
    let rows_per_step = |allowed: usize| async move {
        let options = EngineOptions {
            max_batch_size: 8,
            interactive_rows: 2,
            batch_rows_while_interactive: allowed,
            batch_admit_every_steps: 0,
            feature_cache_bytes: 0,
            ..Default::default()
        };
        let worker = worker(model, options);
        let batch: Vec<_> =
            (0..6).map(|i| at(Priority::Batch, request(model, &[pattern(200 + i)], None, tokens(60)))).collect();
        let alone_requests: Vec<_> = batch.iter().map(InferenceRequest::share).collect();
        let mut queued = Vec::new();
        for r in batch {
            let mut events = worker.submit(r, Deadline::NONE).unwrap();
            assert!(matches!(events.recv().await, Some(EngineEvent::Admitted { .. })));
            queued.push(events);
        }
        let before = worker.stats();
        let interactive = worker.submit(request(model, &[pattern(1)], None, tokens(20)), Deadline::NONE).unwrap();
        let (out, _) = finished(interactive).await;
        assert_eq!(out.token_ids.len(), 20);
        let during = worker.stats();
        let mut batch_tokens = Vec::new();
        for events in queued {
            batch_tokens.push(finished(events).await.0.token_ids);
        }
        let steps = (during.decode_steps - before.decode_steps) as f64;
        ((during.decoded_rows - before.decoded_rows) as f64 / steps, batch_tokens, alone_requests)
    };
    let (held, held_tokens, alone_requests) = rows_per_step(1).await;
    let (all, all_tokens, _) = rows_per_step(8).await;
    eprintln!("rows per step while the interactive request ran: {held:.2} with 1 batch row allowed, {all:.2} with 8");
    // 1 interactive + 1 batch row a step against 7 (the steps just before the interactive
    // request starts and just after it ends, counted too, have all 6 batch rows).
    assert!(held < 4.0 && held < all / 2.0, "{held:.2} rows per step with one batch row allowed, {all:.2} with all");
    assert!(all > 6.0, "{all:.2} rows per step with all batch rows allowed");
    let reference = reference(model);
    let expected = each_alone(&reference, alone_requests).await;
    assert_eq!(held_tokens, expected, "held batch requests give the tokens they give alone");
    assert_eq!(all_tokens, expected);
}

/// `engine.max_vision_batch` bounds every vision-tower pass, a batch request's interruptible
/// start included: six frames at one per pass take six passes, and give the tokens they give
/// with the default bound.
#[tokio::test]
async fn vision_passes_keep_to_max_vision_batch_in_batch_starts_too() {
    let model = "tiny-git-video";
    let frames: Vec<RgbImage> = (0..6).map(|i| pattern(300 + i)).collect();
    let four = GenerationOptions { min_new_tokens: Some(4), max_new_tokens: Some(4), ..Default::default() };
    let batch = || at(Priority::Batch, request(model, &frames, None, four));
    let expected = alone(&reference(model), batch()).await;
    let worker = worker(model, EngineOptions { max_vision_batch: 1, feature_cache_bytes: 0, ..Default::default() });
    let output = result(worker.submit(batch(), Deadline::NONE).unwrap()).await;
    assert_eq!(output.token_ids, expected);
    let stats = worker.stats();
    assert_eq!((stats.vision_passes, stats.frames_encoded), (6, 6), "{stats:?}");
}
