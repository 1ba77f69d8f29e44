//! Arbitrary bytes as an uploaded video file, spooled to disk as the API does: probed by
//! `VideoDecoder::probe` (ffprobe), then, when accepted, three frames sampled by
//! `VideoDecoder::frames_at` (ffmpeg), all in isolated children under tight limits. Nothing may
//! panic or hang; a rejection must be a `Media`/`InvalidArgument` error (`INVALID_ARGUMENT`),
//! and every frame must have the size the probe announced.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use futures::StreamExt;
use gitcap_fuzz::{expect_bad_input, video_limits};
use gitcap_server::media::video::{sample_timestamps, Sampling, VideoDecoder};
use libfuzzer_sys::fuzz_target;

/// Frames sampled from each accepted input.
const FRAMES: usize = 3;

struct Harness {
    runtime: tokio::runtime::Runtime,
    decoder: VideoDecoder,
    file: PathBuf,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let decoder = VideoDecoder::detect(None, None, video_limits()).expect("ffmpeg and ffprobe on PATH");
        let dir = std::env::temp_dir().join(format!("gitcap-fuzz-video-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        Harness { runtime, decoder, file: dir.join("upload") }
    })
}

fuzz_target!(|data: &[u8]| {
    let harness = harness();
    std::fs::write(&harness.file, data).expect("writing the input");
    harness.runtime.block_on(async {
        let limits = harness.decoder.limits();
        let info = match harness.decoder.probe(&harness.file, "media.video").await {
            Ok(info) => info,
            Err(err) => return expect_bad_input(err),
        };
        assert!(info.width > 0 && info.height > 0, "{info:?}");
        assert!(u64::from(info.width) * u64::from(info.height) <= limits.max_pixels, "{info:?}");
        assert!(info.duration_s > 0.0 && info.duration_s <= limits.max_duration_s, "{info:?}");
        let timestamps = sample_timestamps(&info, &Sampling::Even { start_s: None, end_s: None }, FRAMES)
            .expect("segment centres of a probed video");
        let mut frames = std::pin::pin!(harness.decoder.frames_at(&harness.file, &info, &timestamps, "media.video"));
        let mut received = 0;
        while let Some(frame) = frames.next().await {
            match frame {
                Ok(frame) => {
                    assert_eq!(frame.index, received, "frames out of order");
                    assert_eq!(frame.image.dimensions(), (info.width, info.height));
                    received += 1;
                }
                Err(err) => return expect_bad_input(err),
            }
        }
        assert_eq!(received, FRAMES, "the stream ended early without an error");
    });
});
