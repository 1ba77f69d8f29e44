//! Memory under attack, measured on the server process (its own test binary: it measures
//! memory).
//!
//! The media budget under the attack that once took a server from 150 MiB to 20 GiB: four
//! concurrent `Caption` requests, each with 48 frames of a large JPEG of one colour, to a video
//! model that uses 6 of them — with frame uploads of the same JPEGs and a large animated GIF at
//! the same time. The server may decode only the frames it uses, must shrink each to the model's
//! input at once, and holds at most `media.decode_budget_mb` of decoded pixels. With a small
//! budget (128 MiB) one frame at a time fits: the budget's high-water mark (a metric) must reach
//! one frame's cost and stay within the budget, and peak RSS must stay within what the server
//! held before + the budget + a small margin, where decoding the frames unbudgeted would add
//! several times the budget.
//!
//! Uploaded video files and URL bodies stream to disk: a body many times the RSS margin grows
//! the server by less than the margin.
//!
//! The image cache (`media.image_cache_mb`) under a flood of new images holds at most its bound,
//! keeping the most recent.

mod common;

use std::time::Duration;

use futures::StreamExt;

use common::http_files::{Answer, HttpFiles};
use common::probe::{self, value};
use common::server::{PeakRss, TestServer};
use common::tools::{self, Tool};
use gitcap_client::{CaptionOptions, Media, UploadOptions, VideoUploadOptions};

const BUDGET_MB: u64 = 128;
/// What a large frame costs to decode (`media::budget::decode_cost`: 11 bytes a pixel), 86 MB:
/// one fits in the budget at a time, two do not.
const SIDE: u32 = 2800;
/// `limits.max_pixels` a 128 MiB budget can hold (an animated image costs 16 bytes a pixel).
const MAX_PIXELS: &str = "8000000";
const FRAME_COST: u64 = SIDE as u64 * SIDE as u64 * 11;
/// Growth of the server's RSS allowed beyond the budget (the model's activations, gRPC buffers,
/// the allocator's slack). Unbudgeted, the attack's seven concurrent decodes would add ~600 MB.
const MARGIN_MB: u64 = 160;

/// A JPEG of one colour, from libjpeg (through mozjpeg, with optimised Huffman tables: about
/// 550 KiB at 6000×6000, like the attack's).
fn one_colour_jpeg(side: u32) -> Vec<u8> {
    let row = [90u8, 140, 200].repeat(side as usize);
    let mut compress = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
    compress.set_size(side as usize, side as usize);
    compress.set_quality(90.0);
    let mut started = compress.start_compress(Vec::new()).unwrap();
    for _ in 0..side {
        started.write_scanlines(&row).unwrap();
    }
    started.finish().unwrap()
}

/// An animated GIF of `frames` frames of `side`×`side`, each a different grey.
fn big_gif(side: u32, frames: u8) -> Vec<u8> {
    let mut bytes = Vec::new();
    {
        let mut encoder = image::codecs::gif::GifEncoder::new(&mut bytes);
        for i in 0..frames {
            let v = i.wrapping_mul(37);
            let frame = image::RgbaImage::from_pixel(side, side, image::Rgba([v, v, v, 255]));
            encoder.encode_frame(image::Frame::new(frame)).unwrap();
        }
    }
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_media_budget_holds_under_the_large_frame_attack() {
    let server = TestServer::start_with_env(
        "tiny-git-video",
        &[],
        &[
            ("GITCAP__MEDIA__DECODE_BUDGET_MB", &BUDGET_MB.to_string()),
            ("GITCAP__LIMITS__MAX_PIXELS", MAX_PIXELS),
            ("GITCAP__MODEL__QUEUE_CAPACITY", "64"),
            // The attack sends one JPEG many times: with the image cache, later copies would
            // not be decoded at all. This test is of the decoding budget.
            ("GITCAP__MEDIA__IMAGE_CACHE_MB", "0"),
        ],
    );
    let client = server.client(None).await;
    let jpeg = one_colour_jpeg(SIDE);
    const { assert!(FRAME_COST < BUDGET_MB << 20 && 2 * FRAME_COST > BUDGET_MB << 20) };
    let gif = big_gif(900, 9);
    // Warm up (the first request pays libtorch's start-up), then measure from here.
    let small = one_colour_jpeg(64);
    client.caption(Media::image(small), &CaptionOptions::default().max_new_tokens(2)).await.unwrap();
    let before = server.rss_bytes();

    let sampler = PeakRss::start(server.pid(), Duration::from_millis(10));
    let options = CaptionOptions::default().max_new_tokens(4);
    let mut calls = Vec::new();
    for _ in 0..4 {
        let (client, frames, options) = (client.clone(), vec![jpeg.clone(); 48], options.clone());
        calls.push(tokio::spawn(async move { client.caption(Media::frames(frames), &options).await.map(|_| ()) }));
    }
    for _ in 0..2 {
        let (client, frames) = (client.clone(), vec![jpeg.clone(); 12]);
        let upload = UploadOptions::new(options.clone()).frame_count(12);
        calls.push(tokio::spawn(async move {
            client.upload_frames(futures::stream::iter(frames), &upload).await.map(|_| ())
        }));
    }
    let (client_gif, options_gif) = (client.clone(), options.clone());
    calls.push(tokio::spawn(async move { client_gif.caption(Media::image(gif), &options_gif).await.map(|_| ()) }));
    for call in calls {
        call.await.unwrap().expect("every well-formed request succeeds");
    }
    let peak = sampler.stop().await;
    let mib = |b: u64| b >> 20;
    eprintln!("server RSS: {} MiB before, {} MiB at the peak (budget {BUDGET_MB} MiB)", mib(before), mib(peak));
    let text = probe::scrape_until(&server.addr, |_| true);
    let reserved = value(&text, "gitcap_media_budget_peak_reserved_bytes").expect("the media budget's high-water mark");
    assert!(
        reserved >= FRAME_COST as f64 && reserved <= (BUDGET_MB << 20) as f64,
        "at most {reserved} bytes were reserved at once: not one frame's {FRAME_COST}, or over the budget"
    );
    assert!(
        peak <= before + ((BUDGET_MB + MARGIN_MB) << 20),
        "peak RSS {} MiB is over {} MiB before + {BUDGET_MB} MiB budget + {MARGIN_MB} MiB",
        mib(peak),
        mib(before)
    );
}

/// A body of `size` zero bytes in chunks of 1 MiB, made as it is sent.
fn zeros(size: u64) -> impl futures::Stream<Item = Vec<u8>> + Send + 'static {
    futures::stream::iter((0..size >> 20).map(|_| vec![0u8; 1 << 20]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploaded_videos_and_url_bodies_stream_to_disk() {
    const BODY: u64 = 256 << 20;
    const GROWTH_MB: u64 = 48;
    if tools::require(Tool::Ffmpeg, "media_budget_stream_to_disk").is_none() {
        return;
    }
    let limit = (2 * BODY).to_string();
    let server = TestServer::start_with_env(
        "tiny-git-video",
        &[],
        &[
            ("GITCAP__MEDIA__VIDEO__MAX_BYTES", &limit),
            ("GITCAP__MEDIA__URL__MAX_BYTES", &limit),
            ("GITCAP__MEDIA__URL__ENABLED", "true"),
            ("GITCAP__MEDIA__URL__ALLOW_HOSTS", "127.0.0.1"),
        ],
    );
    let files = HttpFiles::start(vec![("/big.mp4", Answer::Zeros(BODY))]).await;
    let client = server.client(None).await;
    client.caption(Media::image(one_colour_jpeg(64)), &CaptionOptions::default().max_new_tokens(2)).await.unwrap();
    let mib = |b: u64| b >> 20;

    // Both bodies arrive whole (the size limits are above them), then are refused as no video.
    let before = server.rss_bytes();
    let sampler = PeakRss::start(server.pid(), Duration::from_millis(5));
    let upload = VideoUploadOptions::new(CaptionOptions::default()).size_bytes(BODY);
    let error = client.upload_video(zeros(BODY), &upload).await.expect_err("zeros are no video");
    assert_eq!(error.code(), Some(tonic::Code::InvalidArgument), "{error}");
    let peak = sampler.stop().await;
    eprintln!("UploadVideo of {} MiB: RSS {} MiB before, {} MiB at the peak", mib(BODY), mib(before), mib(peak));
    assert!(peak <= before + (GROWTH_MB << 20), "an upload grew the server from {} to {} MiB", mib(before), mib(peak));

    let before = server.rss_bytes();
    let sampler = PeakRss::start(server.pid(), Duration::from_millis(5));
    let error = client.caption(Media::url(files.url("/big.mp4")), &CaptionOptions::default()).await.unwrap_err();
    assert_eq!(error.code(), Some(tonic::Code::InvalidArgument), "{error}");
    // Sniffed after the download: the whole body was fetched.
    assert!(error.to_string().contains("neither an image"), "{error}");
    let peak = sampler.stop().await;
    eprintln!("a {} MiB URL body: RSS {} MiB before, {} MiB at the peak", mib(BODY), mib(before), mib(peak));
    assert!(peak <= before + (GROWTH_MB << 20), "a URL body grew the server from {} to {} MiB", mib(before), mib(peak));
}

/// A 40×40 PNG that differs for each `n`.
fn distinct_png(n: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(40, 40, |x, y| image::Rgb([(n % 251) as u8, (n / 251) as u8, (x * y) as u8]));
    let mut bytes = std::io::Cursor::new(Vec::new());
    image.write_to(&mut bytes, image::ImageFormat::Png).unwrap();
    bytes.into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_image_cache_keeps_to_its_bound_under_a_flood_of_new_images() {
    // tiny-git-image's input is 32×32: 12 KiB of f32 pixels a frame, 85 in the 1 MiB bound.
    const FRAME_BYTES: f64 = (3 * 32 * 32 * 4) as f64;
    const BOUND: f64 = (1 << 20) as f64;
    let server = TestServer::start_with_env("tiny-git-image", &[], &[("GITCAP__MEDIA__IMAGE_CACHE_MB", "1")]);
    let client = server.client(None).await;
    let options = CaptionOptions::default().max_new_tokens(1);
    let flood = 150;
    // Sixteen callers at once (within the queue's capacity), each image new.
    let calls = (0..flood).map(|n| {
        let (client, options) = (client.clone(), options.clone());
        async move { client.caption(Media::image(distinct_png(n)), &options).await }
    });
    let answers: Vec<_> = futures::stream::iter(calls).buffer_unordered(16).collect().await;
    for answer in answers {
        answer.expect("every image is captioned");
    }
    let scrape = || probe::scrape_until(&server.addr, |_| true);
    let text = scrape();
    let held = value(&text, "gitcap_image_cache_bytes").expect("the image cache's gauge");
    assert!(held <= BOUND && held > BOUND - FRAME_BYTES, "the cache holds {held} bytes; its bound is {BOUND}");
    assert_eq!(value(&text, "gitcap_image_cache_misses_total"), Some(f64::from(flood)), "{text}");
    assert_eq!(value(&text, "gitcap_image_cache_hits_total"), None, "no image was sent twice: {text}");

    // Sent again, an image is not decoded again, and its image tokens then come from the
    // feature cache.
    let last = distinct_png(flood);
    client.caption(Media::image(last.clone()), &options).await.unwrap();
    let again = client.caption(Media::image(last), &options).await.unwrap();
    let usage = again.usage.expect("usage");
    assert!(usage.cached_image_tokens > 0, "{usage:?}");
    let text = scrape();
    assert_eq!(value(&text, "gitcap_image_cache_hits_total"), Some(1.0), "{text}");
    assert!(value(&text, "gitcap_image_cache_bytes").is_some_and(|held| held <= BOUND), "{text}");
}
