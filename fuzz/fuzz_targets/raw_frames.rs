//! Frames as the API receives them, arbitrary: raw RGB images (`media.raw`, width/height/bytes)
//! (`media::from_raw_rgb`) and frame lists (`media.frames`, through the API's media preparation,
//! `service::media::MediaService::prepare`); an upload's chunks
//! through `service::upload::FrameChunks` (the validation half of `FrameAssembler`); which frames a
//! video model sees through `media::sample_frame_indices`; then the video preprocessing.
#![no_main]

use arbitrary::Arbitrary;
use gitcap_fuzz::{
    check_frames, check_preprocess, check_sampling, expect_bad_input, media_harness, preprocessors, request_limits,
};
use gitcap_server::api::convert;
use gitcap_server::service::upload::{CompletedFrame, FrameChunk, FrameChunks};
use gitcap_server::media::from_raw_rgb;
use gitcap_server::proto::{self, media::Kind};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    raw: Vec<RawFrame>,
    /// An upload's `start.frame_count` (0 = not announced).
    declared: u16,
    /// How many frames the model takes (6 for GIT video checkpoints).
    model_frames: u8,
    chunks: Vec<Chunk>,
    /// Sampling far beyond any real upload, to check the arithmetic.
    huge_total: u64,
}

#[derive(Arbitrary, Debug)]
struct RawFrame {
    width: u32,
    height: u32,
    /// Derive the height from the byte count (a well-formed frame) instead of taking `height`.
    fit: bool,
    rgb: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
struct Chunk {
    data: Vec<u8>,
    end_of_frame: bool,
}

fn raw_media(frame: &RawFrame) -> proto::Media {
    let (mut width, mut height, mut rgb) = (frame.width, frame.height, frame.rgb.clone());
    if frame.fit {
        width = width % 64 + 1;
        height = (rgb.len() / (3 * width as usize)) as u32;
        rgb.truncate(3 * (width * height) as usize);
    }
    proto::Media { kind: Some(Kind::Raw(proto::RawImage { width, height, rgb })), ..Default::default() }
}

fuzz_target!(|input: Input| {
    let limits = request_limits();
    let model_frames = usize::from(input.model_frames);

    // Raw frames, one request each, as a video's frames.
    let mut video = Vec::new();
    for frame in &input.raw {
        let media = raw_media(frame);
        let Some(Kind::Raw(raw)) = &media.kind else { unreachable!() };
        match from_raw_rgb(raw.width, raw.height, &raw.rgb, "media.raw", &limits.media) {
            Ok(image) => {
                check_frames(std::slice::from_ref(&image), &limits.media);
                assert_eq!(image.dimensions(), (raw.width, raw.height));
                assert_eq!(image.as_raw(), &raw.rgb);
                video.push(image);
            }
            Err(err) => expect_bad_input(err),
        }
        // The API's own path for it: one frame, or the same refusal.
        let harness = media_harness();
        let prepared = convert::media(Some(media.clone()))
            .and_then(|media| harness.runtime.block_on(harness.media.prepare(media, &harness.model)));
        match prepared {
            Ok(prepared) => assert_eq!(prepared.frames.len(), 1, "a raw image is one frame"),
            Err(err) => expect_bad_input(err),
        }
    }
    let video_config = &preprocessors()[1];
    for index in check_sampling(video.len(), model_frames) {
        check_preprocess(video_config, &video[index]);
    }

    // The same bytes as a frame list (each must be an encoded image).
    let list = proto::Media::frames(input.raw.iter().map(|f| f.rgb.clone()));
    let harness = media_harness();
    let prepared = convert::media(Some(list))
        .and_then(|media| harness.runtime.block_on(harness.media.prepare(media, &harness.model)));
    match prepared {
        // Only the frames a 6-frame model uses are decoded.
        Ok(prepared) => assert_eq!(prepared.frames.len(), input.raw.len().min(harness.model.max_frames)),
        Err(err) => expect_bad_input(err),
    }

    // An upload's chunks, as `FrameAssembler` checks them.
    let declared = usize::from(input.declared);
    let mut upload = match FrameChunks::new(&limits, declared, model_frames) {
        Ok(upload) => upload,
        Err(err) => {
            assert!(declared > limits.media.max_frames, "{declared} frames refused: {err:?}");
            return expect_bad_input(err);
        }
    };
    let used = (declared > 0).then(|| check_sampling(declared, model_frames));
    let (mut pending, mut received, mut failed) = (0usize, 0usize, false);
    for chunk in input.chunks {
        let (len, end) = (chunk.data.len(), chunk.end_of_frame);
        match upload.push(FrameChunk { data: chunk.data, end_of_frame: chunk.end_of_frame }) {
            Ok(None) => {
                assert!(!end);
                pending += len;
            }
            Ok(Some(CompletedFrame { index, bytes })) => {
                assert!(end);
                assert_eq!(index, received);
                received += 1;
                assert!(received <= limits.media.max_frames);
                assert!(pending + len <= limits.max_frame_bytes);
                let is_used = used.as_ref().is_none_or(|u| u.contains(&index));
                assert_eq!(bytes.map(|b| b.len()), is_used.then_some(pending + len), "frame {index}");
                pending = 0;
            }
            Err(err) => {
                expect_bad_input(err);
                // The API ends the stream at the first error.
                failed = true;
                break;
            }
        }
    }
    if !failed {
        let finished = upload.finish(declared);
        let complete = pending == 0 && received > 0 && (declared == 0 || declared == received);
        assert_eq!(finished.is_ok(), complete, "{finished:?}");
        if let Err(err) = finished {
            expect_bad_input(err);
        }
    }

    // Sampling's arithmetic at sizes no request reaches.
    let huge = (input.huge_total as usize).saturating_mul(1 + input.huge_total as usize % 7);
    check_sampling(huge, model_frames);
});
