//! Waiting on what a running server reports instead of sleeping: its `/metrics` gauges (a
//! request queued or running in a model's engine), and a request held in flight for as long as
//! a test needs (a live-captioning stream, which keeps its model busy until it is closed).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use gitcap_client::proto::{
    captioner_client::CaptionerClient, live_message, media::Kind, CaptionRequest, FrameChunk, GenerationOptions,
    LiveEvent, LiveMessage, LiveStart, Media,
};

/// A beam search that never ends early: keeps the model busy for a while, sends no token
/// until it ends.
pub fn long_beam() -> GenerationOptions {
    GenerationOptions { max_new_tokens: Some(60), min_new_tokens: Some(60), num_beams: Some(32), ..Default::default() }
}

/// A caption of `image` (bytes) with [`long_beam`] options, for the default model.
pub fn long_request(image: Vec<u8>) -> CaptionRequest {
    CaptionRequest {
        media: Some(Media { kind: Some(Kind::Image(image)), ..Default::default() }),
        options: Some(long_beam()),
        ..Default::default()
    }
}

/// A plain HTTP/1.1 GET: (status code, content type, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type: ").map(str::to_string))
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

/// The value of the series written exactly as `series` (name and labels), if present.
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The sum of gauge `name` over the versions of model `model`.
pub fn gauge(text: &str, name: &str, model: &str) -> f64 {
    let prefix = format!("{name}{{model=\"{model}\",");
    text.lines().filter(|l| l.starts_with(&prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// The sum of the series of `name` whose labels include `label` (written `key="value"`).
pub fn sum_with_label(text: &str, name: &str, label: &str) -> f64 {
    let prefix = format!("{name}{{");
    text.lines()
        .filter(|l| l.starts_with(&prefix) && l.split('}').next().is_some_and(|labels| labels.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Requests that finished at `priority` (`interactive` or `batch`), by their queue-time samples.
pub fn finished_at_priority(text: &str, priority: &str) -> f64 {
    sum_with_label(text, "gitcap_queue_seconds_count", &format!("priority=\"{priority}\""))
}

/// Scrapes `/metrics` at `addr` until `ready` holds, for at most 10 s; the last scrape.
pub fn scrape_until(addr: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, body) = http_get(addr, "/metrics");
        assert_eq!(status, 200, "{body}");
        if ready(&body) || Instant::now() > deadline {
            return body;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (60 s at most) until model `model` of the server at `addr` has at least `running`
/// requests in its decoding batch and `queued` waiting: the requests a test sent have reached
/// the engine.
pub async fn wait_for_engine(addr: &str, model: &str, running: f64, queued: f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let addr_owned = addr.to_string();
        let text = tokio::task::spawn_blocking(move || http_get(&addr_owned, "/metrics").2).await.unwrap();
        let (now_running, now_queued) =
            (gauge(&text, "gitcap_running_requests", model), gauge(&text, "gitcap_queue_depth", model));
        if now_running >= running && now_queued >= queued {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "model {model}: waited for {running} running and {queued} queued, have {now_running} and {now_queued}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (for at most `limit`) until model `model` of the server at `addr` runs nothing and has
/// nothing queued; the last scrape. Panics, naming what is left, if it is still busy then.
pub async fn wait_for_idle(addr: &str, model: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let addr_owned = addr.to_string();
        let text = tokio::task::spawn_blocking(move || http_get(&addr_owned, "/metrics").2).await.unwrap();
        let (running, queued) =
            (gauge(&text, "gitcap_running_requests", model), gauge(&text, "gitcap_queue_depth", model));
        if running == 0.0 && queued == 0.0 {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "model {model} still has {running} running and {queued} queued after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A live-captioning stream held open: a request in flight on its model for as long as the test
/// wants, each frame it sends captioned (window 1).
pub struct HeldRequest {
    frames: Option<mpsc::Sender<LiveMessage>>,
    events: tonic::Streaming<LiveEvent>,
}

impl HeldRequest {
    /// Opens the stream on `model` and gets one caption, so it is surely running.
    pub async fn open(channel: Channel, model: &str, frame: &[u8]) -> Self {
        let (tx, rx) = mpsc::channel(4);
        let start = LiveStart { model: model.into(), window: 1, ..Default::default() };
        tx.send(LiveMessage { message: Some(live_message::Message::Start(start)) }).await.unwrap();
        let mut client = CaptionerClient::new(channel);
        let events = client.live_caption(ReceiverStream::new(rx)).await.expect("opening a live stream").into_inner();
        let mut held = Self { frames: Some(tx), events };
        held.caption(frame).await.expect("the held request's first caption");
        held
    }

    /// Sends one frame and waits for its caption.
    pub async fn caption(&mut self, frame: &[u8]) -> Result<LiveEvent, tonic::Status> {
        let chunk = FrameChunk { data: frame.to_vec(), end_of_frame: true };
        let frames = self.frames.as_ref().expect("the stream is still open");
        frames.send(LiveMessage { message: Some(live_message::Message::Chunk(chunk)) }).await.unwrap();
        match self.events.next().await {
            Some(event) => event,
            None => Err(tonic::Status::unknown("the live stream ended before the caption")),
        }
    }

    /// Closes the stream; `Ok` when the server ended it cleanly.
    pub async fn finish(mut self) -> Result<(), tonic::Status> {
        self.frames.take();
        while let Some(event) = self.events.next().await {
            event?;
        }
        Ok(())
    }
}
