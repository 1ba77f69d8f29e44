//! Animated GIFs built to escape the limits: a frame far larger than the GIF's logical screen
//! (the decoder allocates what each frame declares), many large frames on a small screen, and an
//! animation that keeps decoding after its request has gone. The server must refuse the first
//! two from their headers, before decoding anything, with memory and CPU to match, and stop the
//! third at its deadline. Its own test binary: it measures the server's memory and CPU time.

mod common;

use std::io::{BufReader, Read};
use std::time::{Duration, Instant};

use common::server::{PeakRss, TestServer};
use gitcap_client::{CaptionOptions, ClientConfig, Error, GitcapClient, Media};

/// The LZW data (GIF's, 2-bit minimum code size) of `pixels` pixels of colour 0, as data
/// sub-blocks with their terminator. A run of one colour compresses about 2000:1, so a frame of
/// 156 megapixels takes some 100 KB.
fn one_colour_data(pixels: u64) -> Vec<u8> {
    let mut lzw = Vec::new();
    let input = BufReader::with_capacity(1 << 16, std::io::repeat(0).take(pixels));
    let mut encoder = weezl::encode::Encoder::new(weezl::BitOrder::Lsb, 2);
    encoder.into_stream(&mut lzw).encode_all(input).status.unwrap();
    let mut out = Vec::with_capacity(lzw.len() + lzw.len() / 255 + 2);
    out.push(2);
    for block in lzw.chunks(255) {
        out.push(block.len() as u8);
        out.extend_from_slice(block);
    }
    out.push(0);
    out
}

/// A GIF with a `screen` logical screen and `count` frames of `frame` pixels at (0, 0), all of
/// colour 0: the frame's size is its own, whatever the screen's.
fn gif(screen: (u16, u16), frame: (u16, u16), count: usize) -> Vec<u8> {
    let mut out = b"GIF89a".to_vec();
    out.extend(screen.0.to_le_bytes());
    out.extend(screen.1.to_le_bytes());
    out.extend([0x80, 0, 0, 0, 0, 0, 255, 255, 255]);
    let data = one_colour_data(u64::from(frame.0) * u64::from(frame.1));
    for _ in 0..count {
        out.extend(b"\x21\xf9\x04\x00\x00\x00\x00\x00\x2c\x00\x00\x00\x00");
        out.extend(frame.0.to_le_bytes());
        out.extend(frame.1.to_le_bytes());
        out.push(0);
        out.extend_from_slice(&data);
    }
    out.push(0x3b);
    out
}

/// CPU time the process has used (user + system), from /proc/PID/stat.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name (which may hold spaces) in parentheses.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_second = 100; // USER_HZ on Linux
    Duration::from_millis(ticks * 1000 / per_second)
}

async fn warm_up(client: &GitcapClient) {
    let still = gif((8, 8), (8, 8), 1);
    client.caption(Media::image(still), &CaptionOptions::default().max_new_tokens(2)).await.unwrap();
}

fn expect_invalid(result: Result<gitcap_client::Caption, Error>, wanted: &str) {
    match result {
        Err(Error::InvalidArgument { field, message }) => {
            assert_eq!(field.as_deref(), Some("media.image"), "{message}");
            assert!(message.contains(wanted), "{message}");
        }
        other => panic!("expected INVALID_ARGUMENT saying {wanted:?}, got {other:?}"),
    }
}

/// A 119 KB GIF whose 4x4 screen holds a 12500x12500 frame once made the server allocate (and
/// fill) 625 MB for it, past the 40-megapixel limit and outside the media budget; eight at once
/// took it to 4.9 GB.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frame_larger_than_its_screen_is_refused_from_its_header() {
    let server = TestServer::start("tiny-git-image", &[]);
    let client = server.client(None).await;
    warm_up(&client).await;
    let bomb = gif((4, 4), (12500, 12500), 1);
    assert!(bomb.len() < 200 << 10, "{} bytes", bomb.len());
    let before = server.rss_bytes();
    let sampler = PeakRss::start(server.pid(), Duration::from_millis(5));
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let (client, bomb) = (client.clone(), bomb.clone());
            tokio::spawn(async move { client.caption(Media::image(bomb), &CaptionOptions::default()).await })
        })
        .collect();
    for call in calls {
        expect_invalid(call.await.unwrap(), "frame 0 of the GIF is 12500x12500 = 156 megapixels (its screen is 4x4)");
    }
    let peak = sampler.stop().await;
    let grown = peak.saturating_sub(before) >> 20;
    eprintln!("server RSS: {} MiB before, {} MiB at the peak", before >> 20, peak >> 20);
    assert!(grown < 200, "the server grew by {grown} MiB refusing four GIFs from their headers");
}

/// Sixty 3000x3000 frames on an 8x8 screen: 540 megapixels to decode, counted as 64 pixels a
/// frame, decoded for seconds of CPU. The sum of the frames' own sizes is over the limit from
/// the headers, so nothing is decoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_large_frames_are_refused_before_any_is_decoded() {
    let server = TestServer::start("tiny-git-image", &[]);
    let client = server.client(None).await;
    warm_up(&client).await;
    let many = gif((8, 8), (3000, 3000), 60);
    let cpu_before = cpu_time(server.pid());
    let result = client.caption(Media::image(many), &CaptionOptions::default()).await;
    let used = cpu_time(server.pid()) - cpu_before;
    expect_invalid(result, "decodes to at least 45 megapixels in its first 5 frames");
    assert!(used < Duration::from_secs(1), "refusing it took {used:?} of CPU");
}

/// Where the limits allow a long animation, its decoding (on a blocking thread) stops between
/// frames once the request's deadline has passed, instead of running on for its whole length.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn decoding_stops_when_the_request_is_gone() {
    let server = TestServer::start_with_env(
        "tiny-git-image",
        &[],
        &[
            ("GITCAP__LIMITS__MAX_PIXELS", "8000000000"),
            ("GITCAP__LIMITS__MAX_FRAMES", "5000"),
            ("GITCAP__MEDIA__DECODE_BUDGET_MB", "131072"),
        ],
    );
    let client = server.client(None).await;
    warm_up(&client).await;
    // 1500 frames of 4 megapixels: tens of seconds of decoding.
    let long = gif((64, 64), (2000, 2000), 1500);
    let config = ClientConfig::new(server.url()).request_timeout(Duration::from_secs(1));
    let hasty = GitcapClient::connect(config).await.unwrap();
    let started = Instant::now();
    let result = hasty.caption(Media::image(long), &CaptionOptions::default()).await;
    // The client's own timer may end the call first (CANCELLED) or the server's (DEADLINE_EXCEEDED).
    assert!(matches!(result, Err(Error::DeadlineExceeded(_) | Error::Cancelled(_))), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    // Half a second for the frame being decoded to finish, then the server should be idle.
    let settle = started + Duration::from_millis(1500);
    tokio::time::sleep_until(settle.into()).await;
    let cpu_before = cpu_time(server.pid());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_time(server.pid()) - cpu_before;
    assert!(used < Duration::from_millis(500), "the server used {used:?} of CPU in the 2 s after the deadline");
}
