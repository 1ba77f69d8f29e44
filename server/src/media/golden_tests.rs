//! Media against transformers: the goldens in `tests/fixtures/golden/` were written by
//! `scripts/make_fixtures.py` with transformers' `load_image` and PIL-backend image processors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use image::RgbImage;
use safetensors::{Dtype, SafeTensors};

use super::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e} (regenerate with scripts/make_fixtures.py)", path.display()))
}

/// Decodes `name` from the fixtures' media; `file#k` is frame k of an animation.
fn decode_media(name: &str) -> RgbImage {
    let (file, frame) = match name.split_once('#') {
        Some((file, k)) => (file, k.parse::<usize>().unwrap()),
        None => (name, 0),
    };
    let bytes = read(&fixtures().join("media").join(file));
    let mut frames = decode_image(&bytes, name, &MediaLimits::default()).unwrap();
    assert!(frame < frames.len(), "{name}: only {} frames", frames.len());
    frames.swap_remove(frame)
}

#[test]
fn decoding_matches_load_image() {
    let bytes = read(&fixtures().join("golden/decoded.safetensors"));
    let golden = SafeTensors::deserialize(&bytes).unwrap();
    let mut names = golden.names();
    names.sort();
    assert!(names.len() >= 20, "{names:?}");
    for name in names {
        let view = golden.tensor(name).unwrap();
        assert_eq!(view.dtype(), Dtype::U8, "{name}");
        let (h, w) = (view.shape()[0] as u32, view.shape()[1] as u32);
        let ours = decode_media(name);
        assert_eq!(ours.dimensions(), (w, h), "{name}: size (w, h)");
        let max_diff = ours.as_raw().iter().zip(view.data()).map(|(&a, &b)| a.abs_diff(b)).max().unwrap();
        let mean_diff = ours.as_raw().iter().zip(view.data()).map(|(&a, &b)| f64::from(a.abs_diff(b))).sum::<f64>()
            / view.data().len() as f64;
        println!("{name}: max |ours - PIL| = {max_diff}, mean {mean_diff:.4}");
        // JPEG too: its pixels come from libjpeg-turbo, Pillow's own decoder.
        assert_eq!(max_diff, 0, "{name}: differs from Pillow's decode");
    }
}

#[test]
fn preprocessing_matches_transformers_within_one_8bit_step() {
    let bytes = read(&fixtures().join("golden/pixels.safetensors"));
    let golden = SafeTensors::deserialize(&bytes).unwrap();
    let mut configs: BTreeMap<String, PreprocessorConfig> = BTreeMap::new();
    // Per model: worst error in 8-bit steps, and how many values are not bit-identical.
    let mut worst: BTreeMap<String, (f64, String, usize, usize)> = BTreeMap::new();
    let mut names = golden.names();
    names.sort();
    assert!(names.len() >= 40, "{names:?}");
    for key in names {
        let (model, media) = key.split_once('/').unwrap();
        let cfg = configs.entry(model.to_string()).or_insert_with(|| {
            let path = fixtures().join("models").join(model).join("preprocessor_config.json");
            PreprocessorConfig::from_file(&path).unwrap()
        });
        let view = golden.tensor(key).unwrap();
        assert_eq!(view.dtype(), Dtype::F32, "{key}");
        let gold: Vec<f32> = view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        let pixels = cfg.preprocess(&decode_media(media)).unwrap();
        assert_eq!(
            [3, pixels.height, pixels.width],
            [view.shape()[0], view.shape()[1], view.shape()[2]],
            "{key}: shape"
        );
        let plane = pixels.height * pixels.width;
        let entry = worst.entry(model.to_string()).or_insert((0.0, String::new(), 0, 0));
        for (i, (&ours, &theirs)) in pixels.data.iter().zip(&gold).enumerate() {
            let c = i / plane;
            let step = (1.0 / 255.0) / cfg.image_std[c];
            let diff = f64::from((ours - theirs).abs());
            assert!(
                diff <= step + 1e-5,
                "{key}: value {i} (channel {c}, y {}, x {}) is {ours}, transformers has {theirs}",
                (i % plane) / pixels.width,
                i % pixels.width
            );
            if diff / step > entry.0 {
                *entry = (diff / step, key.to_string(), entry.2, entry.3);
            }
            entry.2 += usize::from(ours != theirs);
            entry.3 += 1;
        }
    }
    for (model, (steps, key, differ, total)) in &worst {
        println!(
            "{model}: max error {steps:.4} 8-bit steps (at {key}); {differ} of {total} values not \
             bit-identical"
        );
    }
    assert_eq!(worst.len(), 3, "{:?}", worst.keys());
}

/// JPEG flavours the fixtures lack (progressive, restart intervals, 4:2:2, 4:4:4, grayscale,
/// Adobe RGB, EXIF orientation 8), against Pillow's `load_image` (testdata/make_testdata.py).
#[test]
fn jpeg_flavours_decode_exactly_like_pillow() {
    #[derive(serde::Deserialize)]
    struct Case {
        file: String,
        width: u32,
        height: u32,
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("server/src/media/testdata");
    let cases: Vec<Case> = serde_json::from_slice(&read(&dir.join("jpeg_cases.json"))).unwrap();
    assert_eq!(cases.len(), 6);
    for case in cases {
        let bytes = read(&dir.join(&case.file));
        let expected = read(&dir.join(case.file.replace(".jpg", ".rgb")));
        let frames = decode_image(&bytes, &case.file, &MediaLimits::default()).unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].dimensions(), (case.width, case.height), "{}", case.file);
        assert!(frames[0].as_raw() == &expected, "{}: pixels differ from Pillow's", case.file);
    }
}

/// Cut files are errors with a message, never panics or half-grey images (Pillow raises
/// "image file is truncated").
#[test]
fn truncated_media_is_an_error() {
    for name in ["photo.jpg", "portrait_exif.jpg", "shapes.png", "gray.png", "small.webp", "big.png", "anim.gif"] {
        let bytes = read(&fixtures().join("media").join(name));
        for keep in [bytes.len() / 2, bytes.len() * 9 / 10, 40, 10] {
            let err = decode_image(&bytes[..keep], "media.image", &MediaLimits::default())
                .expect_err(&format!("{name} cut to {keep} bytes decoded"));
            let crate::error::GitcapError::Media { field, message } = err else { panic!("{name}: {err:?}") };
            assert_eq!(field, "media.image");
            assert!(!message.is_empty());
        }
    }
    // A JPEG missing only its end-of-image marker.
    let photo = read(&fixtures().join("media/photo.jpg"));
    let message = decode_image(&photo[..photo.len() - 2], "f", &MediaLimits::default()).unwrap_err().to_string();
    assert!(message.contains("truncated"), "{message}");
}
