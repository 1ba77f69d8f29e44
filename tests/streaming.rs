//! Frame uploads, live captioning and label scoring against a real server process.

mod common;

use tokio_stream::StreamExt;
use tonic::Code;

use common::fixtures::{cases, fixtures};
use common::server::TestServer;
use gitcap_client::proto::{
    caption_event::Event, captioner_client::CaptionerClient, live_message, media::Kind, upload_message, FrameChunk,
    GenerationOptions, LiveMessage, LiveStart, Media, ScoreLabelsRequest, UploadMessage, UploadStart,
};

fn frame(i: usize) -> Vec<u8> {
    std::fs::read(fixtures().join("media").join(format!("frames/frame_{i}.png"))).unwrap()
}

/// Each frame in chunks of `chunk` bytes.
fn chunks(frames: &[Vec<u8>], chunk: usize) -> Vec<FrameChunk> {
    frames
        .iter()
        .flat_map(|f| {
            let pieces: Vec<&[u8]> = f.chunks(chunk).collect();
            let last = pieces.len() - 1;
            pieces.into_iter().enumerate().map(move |(i, p)| FrameChunk { data: p.to_vec(), end_of_frame: i == last })
        })
        .collect()
}

fn upload(start: UploadStart, chunks: Vec<FrameChunk>) -> Vec<UploadMessage> {
    std::iter::once(UploadMessage { message: Some(upload_message::Message::Start(start)) })
        .chain(chunks.into_iter().map(|c| UploadMessage { message: Some(upload_message::Message::Chunk(c)) }))
        .collect()
}

fn greedy(n: u32) -> Option<GenerationOptions> {
    Some(GenerationOptions { max_new_tokens: Some(n), ..Default::default() })
}

fn golden_ids(name: &str) -> Vec<u32> {
    cases().into_iter().find(|c| c.name == name).unwrap().generated_ids.iter().map(|&t| t as u32).collect()
}

#[tokio::test]
async fn uploaded_frames_split_across_messages_caption_like_transformers() {
    let server = TestServer::start("tiny-git-video", &[]);
    let mut client = CaptionerClient::new(server.channel().await);
    let frames: Vec<Vec<u8>> = (0..6).map(frame).collect();
    let expected = golden_ids("video_caption_greedy");

    for (frame_count, chunk) in [(6, 50), (0, 7), (6, 10_000)] {
        let start = UploadStart { frame_count, options: greedy(12), ..Default::default() };
        let reply = client.upload_frames(tokio_stream::iter(upload(start, chunks(&frames, chunk)))).await.unwrap();
        assert_eq!(reply.into_inner().token_ids, expected, "frame_count {frame_count}, chunks of {chunk} bytes");
    }

    // The streaming variant sends the tokens back.
    let start = UploadStart { options: greedy(12), ..Default::default() };
    let mut events =
        client.upload_frames_stream(tokio_stream::iter(upload(start, chunks(&frames, 64)))).await.unwrap().into_inner();
    let mut ids = vec![];
    while let Some(event) = events.next().await {
        if let Event::Token(t) = event.unwrap().event.unwrap() {
            ids.push(t.token_id);
        }
    }
    assert_eq!(ids, expected);

    // Twelve frames announced (each fixture frame twice): the model encodes and uses six,
    // evenly spaced (frames 1, 3, 5, 7, 9, 11), which are the six fixture frames in order.
    let twelve: Vec<Vec<u8>> = (0..12).map(|i| frame(i / 2)).collect();
    for frame_count in [12, 0] {
        let start = UploadStart { frame_count, options: greedy(12), ..Default::default() };
        let reply = client.upload_frames(tokio_stream::iter(upload(start, chunks(&twelve, 100)))).await.unwrap();
        assert_eq!(reply.into_inner().token_ids, expected, "12 frames, frame_count {frame_count}");
    }
}

#[tokio::test]
async fn bad_uploads_are_rejected_clearly() {
    let server = TestServer::start("tiny-git-video", &[]);
    let mut client = CaptionerClient::new(server.channel().await);
    let frames: Vec<Vec<u8>> = (0..2).map(frame).collect();
    let no_start =
        chunks(&frames, 50).into_iter().map(|c| UploadMessage { message: Some(upload_message::Message::Chunk(c)) });
    let mut unfinished = chunks(&frames, 50);
    unfinished.last_mut().unwrap().end_of_frame = false;
    let mut corrupt = chunks(&frames, 50);
    corrupt[0].data = b"garbage".to_vec();
    let cases: Vec<(Vec<UploadMessage>, &str)> = vec![
        (no_start.collect(), "must be `start`"),
        (upload(UploadStart::default(), unfinished), "end_of_frame"),
        (upload(UploadStart::default(), vec![]), "no frame"),
        (upload(UploadStart { frame_count: 5, ..Default::default() }, chunks(&frames, 50)), "5 frames were announced"),
        (upload(UploadStart::default(), corrupt), "frame[0]"),
        (upload(UploadStart { model: "nope".into(), ..Default::default() }, chunks(&frames, 50)), "nope"),
    ];
    for (messages, needle) in cases {
        let status = client.upload_frames(tokio_stream::iter(messages)).await.expect_err(needle);
        assert!(matches!(status.code(), Code::InvalidArgument | Code::NotFound), "{needle}: {status:?}");
        assert!(status.message().contains(needle), "{needle}: {}", status.message());
    }
}

#[tokio::test]
async fn live_captioning_emits_a_caption_per_window() {
    let server = TestServer::start("tiny-git-video", &[]);
    let mut client = CaptionerClient::new(server.channel().await);
    // Frames 0..5, then 0..2 again: windows of 3 every 2 frames → [0,2], [2,4], [4,6], [6,8].
    let sequence: Vec<Vec<u8>> = (0..9).map(|i| frame(i % 6)).collect();
    let start = LiveStart { window: 3, stride: 2, options: greedy(12), ..Default::default() };
    let messages: Vec<LiveMessage> =
        std::iter::once(LiveMessage { message: Some(live_message::Message::Start(start)) })
            .chain(
                chunks(&sequence, 100)
                    .into_iter()
                    .map(|c| LiveMessage { message: Some(live_message::Message::Chunk(c)) }),
            )
            .collect();
    let mut events = client.live_caption(tokio_stream::iter(messages)).await.unwrap().into_inner();
    let mut windows = vec![];
    while let Some(event) = events.next().await {
        let event = event.unwrap();
        windows.push((event.first_frame, event.last_frame, event.caption.unwrap().token_ids));
    }
    let ranges: Vec<(u64, u64)> = windows.iter().map(|w| (w.0, w.1)).collect();
    assert_eq!(ranges, vec![(0, 2), (2, 4), (4, 6), (6, 8)]);
    // The first window is frames 0..2: transformers' 3-frame golden.
    assert_eq!(windows[0].2, golden_ids("video_3frames_greedy"));
}

#[tokio::test]
async fn labels_are_ranked_by_log_probability() {
    let server = TestServer::start("tiny-git-image", &[]);
    let mut client = CaptionerClient::new(server.channel().await);
    let image = std::fs::read(fixtures().join("media/shapes.png")).unwrap();
    let labels = vec!["a photo of a dog".to_string(), "shapes".to_string(), "zebra crossing".to_string()];
    let reply = client
        .score_labels(ScoreLabelsRequest {
            media: Some(Media { kind: Some(Kind::Image(image.clone())), ..Default::default() }),
            labels: labels.clone(),
            prompt: "what is this?".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.scores.len(), 3);
    assert!(reply.scores.windows(2).all(|w| w[0].logprob >= w[1].logprob));
    for score in &reply.scores {
        assert!(labels.contains(&score.label));
        assert!(score.logprob < 0.0);
        assert!((score.mean_logprob - score.logprob / score.tokens as f64).abs() < 1e-9);
    }
    assert_eq!(reply.scores.iter().find(|s| s.label == "shapes").unwrap().tokens, 2, "one word + EOS");
    assert_eq!(reply.model, "tiny");

    for (labels, field) in [(vec!["ok".to_string(), "  ".to_string()], "labels[1]"), (vec![], "labels")] {
        let status = client
            .score_labels(ScoreLabelsRequest {
                media: Some(Media { kind: Some(Kind::Image(image.clone())), ..Default::default() }),
                labels,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(field), "{}", status.message());
    }
}

/// `top_logprobs`: with each streamed token, the likeliest tokens at its step; for greedy
/// decoding the chosen token is the likeliest, with the same log-probability.
#[tokio::test]
async fn top_logprobs_come_with_each_token() {
    let server = TestServer::start("tiny-git-image", &[]);
    let mut client = CaptionerClient::new(server.channel().await);
    let image = std::fs::read(fixtures().join("media/shapes.png")).unwrap();
    let options = GenerationOptions { max_new_tokens: Some(6), top_logprobs: Some(3), ..Default::default() };
    let request = gitcap_client::proto::CaptionRequest {
        media: Some(Media::image(image)),
        options: Some(options),
        ..Default::default()
    };
    let mut events = client.caption_stream(request).await.unwrap().into_inner();
    let mut tokens = 0;
    while let Some(event) = events.next().await {
        if let Some(Event::Token(token)) = event.unwrap().event {
            tokens += 1;
            assert_eq!(token.top_logprobs.len(), 3, "{token:?}");
            let best = &token.top_logprobs[0];
            assert_eq!((best.token_id, best.logprob), (token.token_id, token.logprob), "{token:?}");
            assert!(token.top_logprobs.windows(2).all(|w| w[0].logprob >= w[1].logprob), "{token:?}");
            assert!(!best.token.is_empty());
        }
    }
    assert!(tokens > 0);
    let too_many = GenerationOptions { top_logprobs: Some(21), ..Default::default() };
    let request = gitcap_client::proto::CaptionRequest {
        media: Some(Media::image(std::fs::read(fixtures().join("media/shapes.png")).unwrap())),
        options: Some(too_many),
        ..Default::default()
    };
    assert_eq!(client.caption(request).await.unwrap_err().code(), Code::InvalidArgument);
}
