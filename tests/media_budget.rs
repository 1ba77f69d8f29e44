//! The memory budget for media under the attack that once took a server from 150 MiB to 20 GiB:
//! four concurrent `Caption` requests, each with 48 frames of a 6000×6000 JPEG of one colour
//! (550 KiB each, ~26 MB per request), to a video model that uses 6 of them — with frame uploads
//! of the same JPEGs and a large animated GIF at the same time. The server may decode only the
//! frames it uses, must shrink each to the model's input at once, and holds at most
//! `media.decode_budget_mb` of decoded pixels: its peak RSS must stay under what it held before
//! + the budget + 1 GiB, and every request must succeed. Its own test binary: it measures memory.

mod common;

use std::time::Duration;

use common::server::{PeakRss, TestServer};
use gitcap_client::{CaptionOptions, Media, UploadOptions};

const BUDGET_MB: u64 = 1024;

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
        &[("GITCAP__MEDIA__DECODE_BUDGET_MB", &BUDGET_MB.to_string()), ("GITCAP__MODEL__QUEUE_CAPACITY", "64")],
    );
    let client = server.client(None).await;
    let jpeg = one_colour_jpeg(6000);
    assert!(jpeg.len() < 700 << 10, "{} bytes", jpeg.len());
    let gif = big_gif(1500, 9);
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
    assert!(
        peak <= before + (BUDGET_MB << 20) + (1 << 30),
        "peak RSS {} MiB is over {} MiB before + {BUDGET_MB} MiB budget + 1 GiB",
        mib(peak),
        mib(before)
    );
}
