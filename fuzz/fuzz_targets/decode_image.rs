//! Arbitrary bytes as an uploaded image: `media::decode_image` (JPEG through libjpeg-turbo, PNG,
//! WebP and GIF through the `image` crate), then the model's preprocessing of what it decoded.
//! Nothing may panic; a failure must be a `Media` error that maps to `INVALID_ARGUMENT`, and
//! a success must respect the media limits.
#![no_main]

use gitcap_fuzz::{check_frames, check_preprocess, expect_bad_input, media_limits, preprocessors};
use gitcap_server::media::decode_image;
use libfuzzer_sys::fuzz_target;

/// Frames of an animation that are preprocessed (each one is the same code).
const PREPROCESSED_FRAMES: usize = 3;

fuzz_target!(|data: &[u8]| {
    let limits = media_limits();
    match decode_image(data, "media.image", &limits) {
        Ok(frames) => {
            check_frames(&frames, &limits);
            // One of the configs, chosen by the input so that each input always does the same.
            let configs = preprocessors();
            let config = &configs[data.len() % configs.len()];
            for frame in frames.iter().take(PREPROCESSED_FRAMES) {
                check_preprocess(config, frame);
            }
        }
        Err(err) => expect_bad_input(err),
    }
});
