//! A mixed captioning load for the reliability tests and the soak: concurrent clients that keep
//! sending unary and streaming captions of every image format, raw RGB, frame lists, animated
//! GIFs and frame uploads (unary and streaming), until a deadline or a stop signal. Every answer
//! is checked for consistency; latencies are kept, failures counted by gRPC code.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Status;

use super::fixtures::fixtures;
use gitcap_client::proto::{
    caption_event::Event, captioner_client::CaptionerClient, media::Kind, upload_message, CaptionEvent, CaptionRequest,
    CaptionResponse, FrameChunk, Frames, GenerationOptions, Media, Priority, RawImage, UploadMessage, UploadStart,
};

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub clients: usize,
    pub duration: Duration,
    pub seed: u64,
    /// Model (name, alias or version) for still images and raw RGB.
    pub image_model: String,
    /// Model for frame lists, uploads and animated GIFs.
    pub video_model: String,
}

/// What happened.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub elapsed: Duration,
    /// Successful requests by kind.
    pub ok_by_kind: BTreeMap<&'static str, usize>,
    /// Latency of every successful request.
    pub latencies: Vec<Duration>,
    /// Failed requests by gRPC code: how many, and the first message.
    pub errors: BTreeMap<String, (usize, String)>,
    /// Model versions that answered, with counts.
    pub versions: BTreeMap<String, usize>,
}

impl LoadReport {
    pub fn ok(&self) -> usize {
        self.latencies.len()
    }

    pub fn failed(&self) -> usize {
        self.errors.values().map(|(n, _)| n).sum()
    }

    /// The `p`-th percentile (0–100) of the successful requests' latencies.
    pub fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
        sorted[rank.min(sorted.len() - 1)]
    }

    pub fn per_second(&self) -> f64 {
        (self.ok() + self.failed()) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn record_error(&mut self, status: &Status) {
        let entry = self.errors.entry(format!("{:?}", status.code())).or_insert((0, status.message().to_string()));
        entry.0 += 1;
    }

    fn merge(&mut self, other: LoadReport) {
        for (kind, n) in other.ok_by_kind {
            *self.ok_by_kind.entry(kind).or_default() += n;
        }
        self.latencies.extend(other.latencies);
        for (code, (n, message)) in other.errors {
            self.errors.entry(code).or_insert((0, message)).0 += n;
        }
        for (version, n) in other.versions {
            *self.versions.entry(version).or_default() += n;
        }
    }

    /// Requests, rate, latency percentiles, kinds and failures, one per line.
    pub fn summary(&self) -> String {
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
        let mut out = format!(
            "requests: {} ok, {} failed in {:.1} s ({:.1}/s)\nlatency: p50 {}, p95 {}, p99 {}, max {}\nkinds: {:?}\n",
            self.ok(),
            self.failed(),
            self.elapsed.as_secs_f64(),
            self.per_second(),
            ms(self.percentile(50.0)),
            ms(self.percentile(95.0)),
            ms(self.percentile(99.0)),
            ms(self.percentile(100.0)),
            self.ok_by_kind,
        );
        if self.errors.is_empty() {
            out.push_str("errors: none\n");
        }
        for (code, (n, message)) in &self.errors {
            out.push_str(&format!("errors: {code} x{n} (first: {message})\n"));
        }
        out
    }
}

/// The fixture media the load draws from.
struct Library {
    stills: Vec<Vec<u8>>,
    gif: Vec<u8>,
    frames: Vec<Vec<u8>>,
}

impl Library {
    fn load() -> Self {
        let read = |name: &str| std::fs::read(fixtures().join("media").join(name)).unwrap();
        Self {
            stills: ["photo.jpg", "portrait_exif.jpg", "shapes.png", "gray.png", "small.webp"].map(read).to_vec(),
            gif: read("anim.gif"),
            frames: (0..6).map(|i| read(&format!("frames/frame_{i}.png"))).collect(),
        }
    }
}

/// Runs `plan` on `channel` until its duration is over or `stop` turns true.
pub async fn run(channel: Channel, plan: &LoadPlan, stop: Option<watch::Receiver<bool>>) -> LoadReport {
    let library = Arc::new(Library::load());
    let started = Instant::now();
    let until = started + plan.duration;
    let clients: Vec<_> = (0..plan.clients)
        .map(|i| {
            let (channel, library, plan, stop) = (channel.clone(), library.clone(), plan.clone(), stop.clone());
            tokio::spawn(async move {
                let mut rng = ChaCha8Rng::seed_from_u64(plan.seed.wrapping_mul(1000).wrapping_add(i as u64));
                let mut client = CaptionerClient::new(channel);
                let mut report = LoadReport::default();
                while Instant::now() < until && !stop.as_ref().is_some_and(|s| *s.borrow()) {
                    let asked = Instant::now();
                    let (kind, result) = one_request(&mut client, &library, &plan, &mut rng).await;
                    match result {
                        Ok(reply) => {
                            report.latencies.push(asked.elapsed());
                            *report.ok_by_kind.entry(kind).or_default() += 1;
                            *report.versions.entry(reply.version).or_default() += 1;
                        }
                        Err(status) => report.record_error(&status),
                    }
                }
                report
            })
        })
        .collect();
    let mut total = LoadReport::default();
    for client in clients {
        total.merge(client.await.expect("a load client panicked"));
    }
    total.elapsed = started.elapsed();
    total
}

fn options(rng: &mut ChaCha8Rng) -> (GenerationOptions, u32) {
    let max_new_tokens = rng.random_range(1..=12);
    let mut options = GenerationOptions { max_new_tokens: Some(max_new_tokens), ..Default::default() };
    match rng.random_range(0..10) {
        0 | 1 => options.num_beams = Some(rng.random_range(2..=3)),
        2 | 3 => {
            options.do_sample = Some(true);
            options.seed = Some(rng.random());
            options.temperature = Some(0.8);
            options.top_k = Some(20);
            options.top_p = Some(0.9);
        }
        _ => {}
    }
    (options, max_new_tokens)
}

fn question(rng: &mut ChaCha8Rng) -> String {
    if rng.random_bool(0.25) {
        "what is in the picture?".into()
    } else {
        String::new()
    }
}

/// One request of a random kind; a successful answer has been checked for consistency.
async fn one_request(
    client: &mut CaptionerClient<Channel>,
    library: &Library,
    plan: &LoadPlan,
    rng: &mut ChaCha8Rng,
) -> (&'static str, Result<CaptionResponse, Status>) {
    let (options, max_new_tokens) = options(rng);
    // A quarter of the load is batch work, sharing the batch with the interactive requests.
    let priority = if rng.random_bool(0.25) { Priority::Batch } else { Priority::Interactive } as i32;
    let request = |model: &str, kind: Kind, question: String| CaptionRequest {
        model: model.into(),
        media: Some(Media { kind: Some(kind), ..Default::default() }),
        question,
        options: Some(options),
        priority,
    };
    let still = library.stills[rng.random_range(0..library.stills.len())].clone();
    let (kind, result) = match rng.random_range(0..8) {
        0 => ("caption", unary(client, request(&plan.image_model, Kind::Image(still.clone()), question(rng))).await),
        1 => (
            "caption_stream",
            stream(client, request(&plan.image_model, Kind::Image(still.clone()), question(rng))).await,
        ),
        2 => {
            let (width, height) = (rng.random_range(1..48), rng.random_range(1..48));
            let rgb: Vec<u8> = (0..width * height * 3).map(|_| rng.random()).collect();
            let raw = Kind::Raw(RawImage { width, height, rgb });
            ("caption_raw", unary(client, request(&plan.image_model, raw, String::new())).await)
        }
        3 => {
            let count = rng.random_range(1..=12);
            let frames = (0..count).map(|i| library.frames[i % 6].clone()).collect();
            let media = Kind::Frames(Frames { frames });
            ("caption_frames", stream(client, request(&plan.video_model, media, question(rng))).await)
        }
        4 => (
            "caption_gif",
            unary(client, request(&plan.video_model, Kind::Image(library.gif.clone()), String::new())).await,
        ),
        5 | 6 => {
            let count = rng.random_range(1..=8);
            let frames: Vec<Vec<u8>> = (0..count).map(|i| library.frames[i % 6].clone()).collect();
            let start = UploadStart {
                model: plan.video_model.clone(),
                question: question(rng),
                options: Some(options),
                frame_count: if rng.random_bool(0.5) { count as u32 } else { 0 },
                priority,
            };
            let messages = upload_messages(start, &frames, rng.random_range(16..400));
            if rng.random_bool(0.5) {
                ("upload", client.upload_frames(tokio_stream::iter(messages)).await.map(|r| r.into_inner()))
            } else {
                let events = client.upload_frames_stream(tokio_stream::iter(messages)).await;
                ("upload_stream", collect(events).await)
            }
        }
        _ => (
            "caption_stream",
            stream(client, request(&plan.image_model, Kind::Image(still.clone()), String::new())).await,
        ),
    };
    let result = result.and_then(|reply| {
        let n = reply.token_ids.len();
        if n == 0 || n > max_new_tokens as usize {
            return Err(Status::internal(format!("LOAD CHECK: {n} tokens for max_new_tokens {max_new_tokens}")));
        }
        if reply.usage.as_ref().map(|u| u.generated_tokens as usize) != Some(n) {
            return Err(Status::internal(format!("LOAD CHECK: usage does not count {n} tokens: {reply:?}")));
        }
        Ok(reply)
    });
    (kind, result)
}

/// The messages of an upload: `start`, then each frame in chunks of `chunk` bytes.
pub fn upload_messages(start: UploadStart, frames: &[Vec<u8>], chunk: usize) -> Vec<UploadMessage> {
    let mut messages = vec![UploadMessage { message: Some(upload_message::Message::Start(start)) }];
    for frame in frames {
        let pieces: Vec<&[u8]> = frame.chunks(chunk.max(1)).collect();
        let last = pieces.len() - 1;
        for (i, piece) in pieces.into_iter().enumerate() {
            let chunk = FrameChunk { data: piece.to_vec(), end_of_frame: i == last };
            messages.push(UploadMessage { message: Some(upload_message::Message::Chunk(chunk)) });
        }
    }
    messages
}

async fn unary(client: &mut CaptionerClient<Channel>, request: CaptionRequest) -> Result<CaptionResponse, Status> {
    client.caption(request).await.map(|r| r.into_inner())
}

async fn stream(client: &mut CaptionerClient<Channel>, request: CaptionRequest) -> Result<CaptionResponse, Status> {
    collect(client.caption_stream(request).await).await
}

/// Reads a caption stream to its end; checks the deltas add up to the final text and the
/// streamed ids are the final ids.
pub async fn collect(
    events: Result<tonic::Response<tonic::Streaming<CaptionEvent>>, Status>,
) -> Result<CaptionResponse, Status> {
    let mut events = events?.into_inner();
    let (mut ids, mut text, mut done) = (vec![], String::new(), None);
    while let Some(event) = events.next().await {
        match event?.event {
            Some(Event::Token(t)) => {
                ids.push(t.token_id);
                text.push_str(&t.text_delta);
            }
            Some(Event::Done(d)) => done = Some(d),
            None => return Err(Status::internal("LOAD CHECK: an empty event")),
        }
    }
    let done = done.ok_or_else(|| Status::internal("LOAD CHECK: the stream ended without a final event"))?;
    if ids != done.token_ids || text != done.text {
        return Err(Status::internal(format!(
            "LOAD CHECK: streamed {ids:?} {text:?}, final {:?} {:?}",
            done.token_ids, done.text
        )));
    }
    Ok(done)
}
