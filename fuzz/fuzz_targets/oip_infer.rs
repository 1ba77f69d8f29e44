//! Arbitrary bytes as an Open Inference Protocol `ModelInferRequest` off the wire (prost
//! decoding of `inference`), then what the door does before a request reaches the core: the
//! transport's reading (`oip::grpc::read_request`: raw BYTES tensors, typed contents, parameters)
//! and GIT's tensor contract (`oip::contract::read`: inputs, shapes, datatypes, options and
//! priority), then the media as the core prepares them. Nothing may panic; a refusal must be a
//! typed error naming the input, parameter or field at fault (INVALID_ARGUMENT); an accepted
//! request holds exactly one media input within the frame limit.
#![no_main]

use gitcap_fuzz::{expect_bad_input, media_harness, media_limits};
use gitcap_protocol::inference::ModelInferRequest;
use gitcap_server::oip::{contract, grpc};
use gitcap_server::service::media::MediaInput;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|bytes: &[u8]| {
    let Ok(request) = ModelInferRequest::decode(bytes) else { return };
    let limits = media_limits();
    let reading = match grpc::read_request(request).and_then(|read| contract::read(read, &limits)) {
        Ok(reading) => reading,
        Err(error) => return expect_bad_input(contract::in_oip_terms(error)),
    };
    if let Some(outputs) = &reading.outputs {
        assert!(!outputs.is_empty() && outputs.len() <= contract::Output::ALL.len(), "{outputs:?}");
    }
    match reading.media {
        // Video files have their own target (video_container).
        MediaInput::Video { .. } => {}
        MediaInput::Url { .. } | MediaInput::Raw { .. } => panic!("the contract has no URL or raw input"),
        media => {
            if let MediaInput::Frames(frames) = &media {
                assert!(!frames.is_empty() && frames.len() <= limits.max_frames, "{} frames", frames.len());
            }
            let harness = media_harness();
            if let Err(error) = harness.runtime.block_on(harness.media.prepare(media, &harness.model)) {
                expect_bad_input(error);
            }
        }
    }
});
