//! Hostile clients against video and dense captioning (issue 21): plans that would allocate or
//! loop without end, unbounded dense work, deadlines, the media budget against the decoder
//! processes, clients that stop reading, the exact cap on decoder children, where downloads are
//! spooled. Each test starts its own server on 127.0.0.1 and generates its videos with ffmpeg.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use common::server::TestServer;
use common::tools::{self, Tool};
use common::videos::Videos;
use gitcap_client::proto::captioner_client::CaptionerClient;
use gitcap_client::proto::{self, DenseCaptionRequest};
use gitcap_client::{CaptionOptions, Error, Media};

const MODEL: &str = "tiny-git-video";

fn options() -> CaptionOptions {
    CaptionOptions::default().max_new_tokens(4)
}

fn dense_request(video: Vec<u8>, window_s: f64, stride_s: f64) -> DenseCaptionRequest {
    DenseCaptionRequest {
        model: "tiny".into(),
        media: Some(Media::video(video)),
        options: Some(proto::GenerationOptions { max_new_tokens: Some(4), ..Default::default() }),
        window_s,
        stride_s,
        ..Default::default()
    }
}

fn field(error: &Error) -> Option<&str> {
    match error {
        Error::InvalidArgument { field, .. } => field.as_deref(),
        _ => None,
    }
}

/// `seconds` of a 64x48 pattern at one frame a second: hours of video in a few kilobytes.
fn long_video(videos: &Videos, name: &str, seconds: u32) -> Vec<u8> {
    let file = videos.encode(name, "64x48", 1, seconds as f64, &["-c:v", "libx264", "-pix_fmt", "yuv420p"]);
    std::fs::read(file).unwrap()
}

/// The first event of a dense captioning request, as the client library reports it.
async fn first_dense_event(
    server: &TestServer,
    request: DenseCaptionRequest,
) -> Result<proto::DenseCaptionEvent, Error> {
    let mut client = CaptionerClient::new(server.channel().await);
    let mut events = client.dense_caption(request).await.map_err(Error::from)?.into_inner();
    let first = events.message().await.map_err(Error::from)?;
    Ok(first.expect("the stream ended without an event"))
}

/// The server's ffmpeg and ffprobe children that have not been reaped yet (zombies included:
/// until reaped a child still holds its place among the processes).
fn decoder_children(server_pid: u32) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    entries
        .flatten()
        .filter(|entry| entry.file_name().to_str().is_some_and(|name| name.bytes().all(|b| b.is_ascii_digit())))
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .filter(|stat| {
            // "pid (comm) state ppid ...": the comm may hold spaces, so split after its ')'.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { return false };
            let comm = &stat[open + 1..close];
            let ppid = stat[close + 1..].split_whitespace().nth(1);
            matches!(comm, "ffmpeg" | "ffprobe") && ppid == Some(&server_pid.to_string())
        })
        .count()
}

/// Polls `condition` every 20 ms until it holds or `limit` passes; whether it held.
async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn tiny_windows_and_strides_are_refused_by_name_and_the_server_stays_up() {
    if tools::require(Tool::Ffmpeg, "hostile_video_tiny_windows").is_none() {
        return;
    }
    let videos = Videos::new();
    let clip = std::fs::read(videos.h264_mp4("clip.mp4", "64x48", 10, 2.0)).unwrap();
    let mut server = TestServer::start(MODEL, &[]);
    // Each of these once aborted the process (a multi-GiB list of windows) or looped forever.
    for (window_s, stride_s, expected) in [
        (1e-9, 0.0, "window_s"),
        (5e-324, 0.0, "window_s"),
        (0.25, 0.0, "window_s"),
        (2.0, 1e-300, "stride_s"),
        (2.0, f64::MIN_POSITIVE / 4.0, "stride_s"),
    ] {
        let error = first_dense_event(&server, dense_request(clip.clone(), window_s, stride_s)).await.unwrap_err();
        assert_eq!((error.code(), field(&error)), (Some(Code::InvalidArgument), Some(expected)), "{window_s}: {error}");
        assert!(error.to_string().contains("media.dense.min_"), "{error}");
    }
    assert!(server.is_running(), "the server went down");
    let event = first_dense_event(&server, dense_request(clip, 1.0, 1.0)).await.unwrap();
    assert_eq!((event.start_s, event.end_s), (0.0, 1.0));
}

#[tokio::test]
async fn dense_work_is_capped_before_decoding_and_the_longest_accepted_video_is_captioned() {
    if tools::require(Tool::Ffmpeg, "hostile_video_dense_caps").is_none() {
        return;
    }
    let videos = Videos::new();
    // As long as media.video.max_duration_secs allows, in a few kilobytes.
    let longest = long_video(&videos, "longest.mp4", 7200);
    let server = TestServer::start(MODEL, &[]);
    let started = Instant::now();
    // 1 s windows every second: 7200 captions. Refused on the field to change, before any work.
    let error = first_dense_event(&server, dense_request(longest.clone(), 10.0, 1.0)).await.unwrap_err();
    assert_eq!((error.code(), field(&error)), (Some(Code::InvalidArgument), Some("stride_s")), "{error}");
    assert!(error.to_string().contains("media.dense.max_windows"), "{error}");
    // 1 s windows of 6 frames: 43200 frames to decode.
    let error = first_dense_event(&server, dense_request(longest.clone(), 1.0, 10.0)).await.unwrap_err();
    assert_eq!((error.code(), field(&error)), (Some(Code::InvalidArgument), Some("window_s")), "{error}");
    assert!(error.to_string().contains("media.dense.max_frames"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(30), "refusing took {:?}", started.elapsed());
    // The defaults (10 s windows, 6 frames) caption the longest video accepted.
    let event = first_dense_event(&server, dense_request(longest, 0.0, 0.0)).await.unwrap();
    assert_eq!((event.start_s, event.end_s), (0.0, 10.0));
    assert_eq!(event.caption.unwrap().frame_timestamps_s.len(), 6);
}

#[tokio::test]
async fn dense_captioning_stops_at_the_callers_deadline() {
    if tools::require(Tool::Ffmpeg, "hostile_video_dense_deadline").is_none() {
        return;
    }
    let videos = Videos::new();
    let video = long_video(&videos, "long.mp4", 3600);
    let server = TestServer::start(MODEL, &[]);
    let mut client = CaptionerClient::new(server.channel().await);
    // 360 captions: far more than a second's work.
    let mut request = tonic::Request::new(dense_request(video, 0.0, 0.0));
    request.set_timeout(Duration::from_millis(1500));
    let started = Instant::now();
    let mut events = client.dense_caption(request).await.unwrap().into_inner();
    let mut captions = 0;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(120), events.message()).await.expect("the stream stalled") {
            Ok(Some(_)) => captions += 1,
            Ok(None) => panic!("all {captions} captions were sent past the deadline ({:?})", started.elapsed()),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("deadline"), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "answered after {:?}", started.elapsed());
    assert!(captions < 360, "{captions} captions");
    // Decoding stopped with it.
    let pid = server.pid();
    assert!(eventually(Duration::from_secs(10), || decoder_children(pid) == 0).await, "a decoder is still running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_large_clips_at_once_share_the_budget_and_the_decoders_without_deadlock() {
    if tools::require(Tool::Ffmpeg, "hostile_video_budget_deadlock").is_none() {
        return;
    }
    let videos = Videos::new();
    let clip = std::fs::read(videos.h264_mp4("large.mp4", "640x480", 30, 2.0)).unwrap();
    // Room for two decoded 640x480 frames (1.8 MiB each, counted twice) and four decoder
    // processes: requests holding one wait for the other.
    let server = TestServer::start_with_env(
        MODEL,
        &[],
        &[
            ("GITCAP__LIMITS__MAX_PIXELS", "307200"),
            ("GITCAP__MEDIA__DECODE_BUDGET_MB", "5"),
            ("GITCAP__MEDIA__VIDEO__MAX_PROCESSES", "4"),
            ("GITCAP__MEDIA__VIDEO__WALL_SECS", "30"),
        ],
    );
    let client = server.client(None).await;
    let started = Instant::now();
    let calls = (0..8).map(|_| {
        let (client, clip) = (client.clone(), clip.clone());
        tokio::spawn(async move { client.caption(Media::video(clip), &options()).await })
    });
    for (i, call) in futures::future::join_all(calls).await.into_iter().enumerate() {
        let caption = call.unwrap().unwrap_or_else(|e| panic!("clip {i} after {:?}: {e}", started.elapsed()));
        assert_eq!(caption.frame_timestamps_s.len(), 6);
    }
}

/// A connection whose client reads almost nothing: its stream window is 1 KiB, never released.
async fn stingy_channel(server: &TestServer) -> Channel {
    Endpoint::from_shared(server.url())
        .unwrap()
        .initial_stream_window_size(1024)
        .initial_connection_window_size(1 << 20)
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_that_stop_reading_hold_no_decoder() {
    if tools::require(Tool::Ffmpeg, "hostile_video_non_reading_clients").is_none() {
        return;
    }
    const DECODERS: usize = 4;
    let videos = Videos::new();
    // 600 windows of 2 s.
    let long = long_video(&videos, "long.mp4", 1200);
    let clip = std::fs::read(videos.h264_mp4("clip.mp4", "64x48", 10, 2.0)).unwrap();
    let server = TestServer::start_with_env(MODEL, &[], &[("GITCAP__MEDIA__VIDEO__MAX_PROCESSES", "4")]);
    // As many stalled DenseCaption calls as there are decoder processes: each reads its first
    // caption (so it is decoding) and then nothing more.
    let mut stalled = Vec::new();
    for _ in 0..DECODERS {
        let mut client = CaptionerClient::new(stingy_channel(&server).await);
        let mut events = client.dense_caption(dense_request(long.clone(), 2.0, 2.0)).await.unwrap().into_inner();
        events.message().await.unwrap().expect("a first caption");
        stalled.push((client, events));
    }
    // A normal video request still gets a decoder, promptly.
    let client = server.client(None).await;
    let started = Instant::now();
    // (Before, it waited for a decoder until media.video.wall_secs, 60 s, and failed.)
    let caption = tokio::time::timeout(Duration::from_secs(30), client.caption(Media::video(clip), &options()))
        .await
        .unwrap_or_else(|_| panic!("no answer in 30 s while {DECODERS} clients do not read"))
        .unwrap();
    assert_eq!(caption.frame_timestamps_s.len(), 6);
    eprintln!("answered in {:?} beside {DECODERS} stalled clients", started.elapsed());
    // The stalled calls hold no decoder process while they wait.
    let pid = server.pid();
    assert!(eventually(Duration::from_secs(20), || decoder_children(pid) == 0).await, "decoders wait on clients");
    drop(stalled);
}

/// Every event of a dense captioning call, read as fast as they come.
async fn all_dense_events(channel: Channel, request: DenseCaptionRequest) -> Vec<proto::DenseCaptionEvent> {
    let mut events = CaptionerClient::new(channel).dense_caption(request).await.unwrap().into_inner();
    let mut all = Vec::new();
    while let Some(event) = events.message().await.unwrap() {
        all.push(event);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_reader_gets_every_caption_from_a_decoder_restarted_where_it_stopped() {
    if tools::require(Tool::Ffmpeg, "hostile_video_slow_reader").is_none() {
        return;
    }
    let videos = Videos::new();
    // 150 windows of 2 s.
    let video = long_video(&videos, "five-minutes.mp4", 300);
    let server = TestServer::start(MODEL, &[]);
    let expected = all_dense_events(server.channel().await, dense_request(video.clone(), 2.0, 2.0)).await;
    assert_eq!(expected.len(), 150);

    let mut slow = CaptionerClient::new(stingy_channel(&server).await);
    let mut events = slow.dense_caption(dense_request(video, 2.0, 2.0)).await.unwrap().into_inner();
    let mut got = vec![events.message().await.unwrap().expect("a first caption")];
    // The client reads nothing more until the server has stopped its decoder...
    let pid = server.pid();
    assert!(
        eventually(Duration::from_secs(20), || decoder_children(pid) == 0).await,
        "the decoder waits on the client"
    );
    // ...then everything: the rest of the grid is decoded by new passes, to the same frames.
    while let Some(event) = events.message().await.unwrap() {
        got.push(event);
    }
    assert_eq!(got.len(), expected.len());
    for (got, expected) in got.iter().zip(&expected) {
        assert_eq!((got.start_s, got.end_s), (expected.start_s, expected.end_s));
        let (got, expected) = (got.caption.as_ref().unwrap(), expected.caption.as_ref().unwrap());
        assert_eq!(got.token_ids, expected.token_ids, "{:?}", got.frame_timestamps_s);
        assert_eq!(got.frame_timestamps_s.len(), expected.frame_timestamps_s.len());
        for (t, u) in got.frame_timestamps_s.iter().zip(&expected.frame_timestamps_s) {
            assert!((t - u).abs() < 1e-9, "{:?} vs {:?}", got.frame_timestamps_s, expected.frame_timestamps_s);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_decoder_cap_counts_children_until_they_are_reaped() {
    if tools::require(Tool::Ffmpeg, "hostile_video_exact_cap").is_none() {
        return;
    }
    const CAP: usize = 2;
    let videos = Videos::new();
    let clip = std::fs::read(videos.h264_mp4("clip.mp4", "320x240", 30, 4.0)).unwrap();
    let server = TestServer::start_with_env(MODEL, &[], &[("GITCAP__MEDIA__VIDEO__MAX_PROCESSES", &CAP.to_string())]);
    // Count the server's unreaped decoder children as fast as /proc allows, all along.
    let (pid, stop, most) = (server.pid(), Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let counter = {
        let (stop, most) = (stop.clone(), most.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                most.fetch_max(decoder_children(pid), Ordering::Relaxed);
            }
        })
    };
    // Every video request kills its decoder once it has its frames (and a cancelled one kills it
    // mid-way); others are waiting for the slot each time.
    let client = server.client(None).await;
    let calls = (0..6).map(|i| {
        let (client, clip) = (client.clone(), clip.clone());
        tokio::spawn(async move {
            let options = options();
            for round in 0..4 {
                let call = client.caption(Media::video(clip.clone()), &options);
                if (i + round) % 3 == 0 {
                    let _ = tokio::time::timeout(Duration::from_millis(150), call).await;
                } else {
                    call.await.unwrap();
                }
            }
        })
    });
    for call in futures::future::join_all(calls).await {
        call.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    counter.join().unwrap();
    let most = most.load(Ordering::Relaxed);
    assert!(most >= 1, "no decoder child was ever seen");
    assert!(most <= CAP, "{most} decoder children at once; the cap is {CAP}");
}

/// Serves one file over HTTP/1.1, stopping after half of it until `release` is set.
async fn stalling_file_server(body: Vec<u8>, release: Arc<AtomicBool>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (body, release) = (body.clone(), release.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let header = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: video/mp4\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let half = body.len() / 2;
                let _ = socket.write_all(header.as_bytes()).await;
                let _ = socket.write_all(&body[..half]).await;
                let _ = socket.flush().await;
                for _ in 0..3000 {
                    if release.load(Ordering::SeqCst) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let _ = socket.write_all(&body[half..]).await;
            });
        }
    });
    format!("http://{addr}/clip.mp4")
}

#[tokio::test]
async fn url_downloads_are_spooled_in_the_spool_dir() {
    if tools::require(Tool::Ffmpeg, "hostile_video_url_spool_dir").is_none() {
        return;
    }
    let videos = Videos::new();
    let clip = std::fs::read(videos.h264_mp4("clip.mp4", "64x48", 10, 2.0)).unwrap();
    let release = Arc::new(AtomicBool::new(false));
    let url = stalling_file_server(clip, release.clone()).await;
    let spool = tempfile::tempdir().unwrap();
    let server = TestServer::start_with_env(
        MODEL,
        &[],
        &[
            ("GITCAP__MEDIA__URL__ENABLED", "true"),
            ("GITCAP__MEDIA__URL__ALLOW_HOSTS", "127.0.0.1"),
            ("GITCAP__MEDIA__SPOOL_DIR", spool.path().to_str().unwrap()),
        ],
    );
    let client = server.client(None).await;
    let call = tokio::spawn(async move { client.caption(Media::url(url), &options()).await });
    // While the body is half there, it is being written into the spool directory.
    let spooled =
        eventually(Duration::from_secs(10), || !common::spool::spooled_with(spool.path(), "gitcap-url-").is_empty())
            .await;
    release.store(true, Ordering::SeqCst);
    let caption = call.await.unwrap().unwrap();
    assert!(spooled, "the download was not written into media.spool_dir");
    assert_eq!(caption.frame_timestamps_s.len(), 6);
    assert!(
        eventually(Duration::from_secs(5), || common::spool::spooled(spool.path()).is_empty()).await,
        "spooled files were left"
    );
}
