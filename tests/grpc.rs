//! The gRPC API end to end: a real server process on 127.0.0.1, the Rust client stubs.

mod common;

use tokio_stream::StreamExt;
use tonic::Code;

use common::bad_input::png_declaring;
use common::fixtures::{cases, fixtures};
use common::probe;
use common::server::TestServer;
use gitcap_client::proto::{
    self, caption_event::Event, captioner_client::CaptionerClient, media::Kind, CaptionRequest, Frames,
    GenerationOptions, Media, RawImage,
};

fn media_file(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("media").join(name)).unwrap()
}

fn request(media: Kind, question: &str, options: GenerationOptions) -> CaptionRequest {
    CaptionRequest {
        model: String::new(),
        media: Some(Media { kind: Some(media), ..Default::default() }),
        question: question.into(),
        options: Some(options),
        ..Default::default()
    }
}

fn greedy(max_new_tokens: u32) -> GenerationOptions {
    GenerationOptions { max_new_tokens: Some(max_new_tokens), ..Default::default() }
}

fn golden(name: &str) -> (Vec<u32>, String) {
    let case = cases().into_iter().find(|c| c.name == name).unwrap();
    (case.generated_ids.iter().map(|&t| t as u32).collect(), case.text)
}

#[tokio::test]
async fn caption_and_stream_match_transformers() {
    let server = TestServer::start("tiny-git-image", &[]);
    let mut client = CaptionerClient::new(server.channel().await);

    // shapes.png is lossless, so the pixels are transformers' within one 8-bit step.
    let (ids, text) = golden("image_caption_shapes_greedy");
    let unary =
        client.caption(request(Kind::Image(media_file("shapes.png")), "", greedy(12))).await.unwrap().into_inner();
    assert_eq!(unary.token_ids, ids);
    assert_eq!(unary.text, text);
    assert_eq!(unary.finish_reason, proto::FinishReason::Eos as i32);
    assert_eq!(unary.model, "tiny");
    assert_eq!(unary.version, "local");
    let usage = unary.usage.unwrap();
    assert_eq!((usage.prompt_tokens, usage.image_tokens, usage.generated_tokens), (1, 17, ids.len() as u32));

    let mut stream = client
        .caption_stream(request(Kind::Image(media_file("shapes.png")), "", greedy(12)))
        .await
        .unwrap()
        .into_inner();
    let (mut streamed_ids, mut deltas, mut done) = (vec![], String::new(), None);
    while let Some(event) = stream.next().await {
        match event.unwrap().event.unwrap() {
            Event::Token(t) => {
                streamed_ids.push(t.token_id);
                deltas.push_str(&t.text_delta);
                assert_eq!(t.special, t.token_id == 102);
                assert!(t.logprob <= 0.0);
            }
            Event::Done(d) => done = Some(d),
        }
    }
    let done = done.expect("a final event");
    assert_eq!(streamed_ids, ids);
    assert_eq!(deltas, done.text);
    assert_eq!(done.text, text);

    // Visual question answering, through the `question` field.
    let (ids, _) = golden("image_vqa_greedy");
    let vqa = client
        .caption(request(Kind::Image(media_file("photo.jpg")), "what is in the picture?", greedy(12)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(vqa.token_ids, ids);
    assert_eq!(vqa.usage.unwrap().prompt_tokens, 7);

    // At batch priority: the same tokens, and the queue time is recorded as batch work.
    let (ids, _) = golden("image_caption_shapes_greedy");
    let batch = CaptionRequest {
        priority: proto::Priority::Batch as i32,
        ..request(Kind::Image(media_file("shapes.png")), "", greedy(12))
    };
    assert_eq!(client.caption(batch).await.unwrap().into_inner().token_ids, ids);
    let text = probe::scrape_until(&server.addr, |t| probe::finished_at_priority(t, "batch") >= 1.0);
    assert_eq!(probe::finished_at_priority(&text, "batch"), 1.0, "{text}");
    assert_eq!(probe::finished_at_priority(&text, "interactive"), 3.0, "{text}");
}

#[tokio::test]
async fn video_frames_match_transformers() {
    let server = TestServer::start("tiny-git-video", &[]);
    let mut client = CaptionerClient::new(server.channel().await);
    let frames: Vec<Vec<u8>> = (0..6).map(|i| media_file(&format!("frames/frame_{i}.png"))).collect();
    for (name, count, question) in [
        ("video_caption_greedy", 6, ""),
        ("video_3frames_greedy", 3, ""),
        ("video_vqa_greedy", 6, "what is happening in the video?"),
    ] {
        let case = cases().into_iter().find(|c| c.name == name).unwrap();
        assert_eq!(case.question.as_deref().unwrap_or(""), question);
        let media = Kind::Frames(Frames { frames: frames[..count].to_vec() });
        let out = client.caption(request(media, question, greedy(12))).await.unwrap().into_inner();
        let ids: Vec<u32> = case.generated_ids.iter().map(|&t| t as u32).collect();
        assert_eq!(out.token_ids, ids, "{name}");
        assert_eq!(out.text, case.text, "{name}");
    }
}

#[tokio::test]
async fn bad_requests_get_clear_statuses_and_the_server_keeps_serving() {
    let mut server = TestServer::start("tiny-git-image", &["--queue-capacity", "4", "--max-message-bytes", "1000000"]);
    let mut client = CaptionerClient::new(server.channel().await);
    let png = media_file("shapes.png");
    let bad: Vec<(CaptionRequest, Code, &str)> = vec![
        (
            request(Kind::Image(b"definitely not an image".to_vec()), "", greedy(4)),
            Code::InvalidArgument,
            "media.image",
        ),
        (request(Kind::Image(png[..png.len() / 2].to_vec()), "", greedy(4)), Code::InvalidArgument, "media.image"),
        (request(Kind::Image(vec![]), "", greedy(4)), Code::InvalidArgument, "media.image"),
        (request(Kind::Frames(Frames { frames: vec![] }), "", greedy(4)), Code::InvalidArgument, "media.frames"),
        (
            request(Kind::Raw(RawImage { width: 10, height: 10, rgb: vec![0; 299] }), "", greedy(4)),
            Code::InvalidArgument,
            "media.raw",
        ),
        (request(Kind::Image(png.clone()), "", greedy(0)), Code::InvalidArgument, "options.max_new_tokens"),
        (request(Kind::Image(png.clone()), "", greedy(100_000)), Code::InvalidArgument, "options.max_new_tokens"),
        (
            request(Kind::Image(png.clone()), "", GenerationOptions { num_beams: Some(99), ..greedy(4) }),
            Code::InvalidArgument,
            "options.num_beams",
        ),
        (
            request(
                Kind::Image(png.clone()),
                "",
                GenerationOptions { do_sample: Some(true), temperature: Some(-1.0), ..greedy(4) },
            ),
            Code::InvalidArgument,
            "options.temperature",
        ),
        (
            request(Kind::Image(png.clone()), "", GenerationOptions { top_p: Some(1.5), ..greedy(4) }),
            Code::InvalidArgument,
            "options.top_p",
        ),
        (
            CaptionRequest { media: None, ..request(Kind::Image(png.clone()), "", greedy(4)) },
            Code::InvalidArgument,
            "media",
        ),
        (
            CaptionRequest { priority: 7, ..request(Kind::Image(png.clone()), "", greedy(4)) },
            Code::InvalidArgument,
            "priority",
        ),
        // A decompression bomb: a PNG whose header declares 10 gigapixels.
        (request(Kind::Image(png_declaring(100_000, 100_000)), "", greedy(4)), Code::InvalidArgument, "media.image"),
        (
            request(Kind::Raw(RawImage { width: 100_000, height: 100_000, rgb: vec![] }), "", greedy(4)),
            Code::InvalidArgument,
            "media.raw",
        ),
        (
            request(Kind::Frames(Frames { frames: vec![png.clone(); 65] }), "", greedy(4)),
            Code::InvalidArgument,
            "media.frames",
        ),
        (request(Kind::Image(png.clone()), &"why ".repeat(400), greedy(4)), Code::InvalidArgument, "question"),
        (
            CaptionRequest { model: "no-such-model".into(), ..request(Kind::Image(png.clone()), "", greedy(4)) },
            Code::NotFound,
            "",
        ),
    ];
    for (req, code, field) in bad {
        let status = client.caption(req).await.expect_err("a bad request must fail");
        assert_eq!(status.code(), code, "{field}: {}", status.message());
        assert!(!status.message().is_empty());
        if !field.is_empty() {
            use tonic_types::StatusExt;
            let details = status.get_error_details();
            let violations = details.bad_request().expect("BadRequest details").field_violations.clone();
            assert_eq!(violations[0].field, field, "{}", status.message());
        }
    }
    // A message above the server's size limit.
    let status = client.caption(request(Kind::Image(vec![0; 2_000_000]), "", greedy(4))).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    assert!(server.is_running());
    let ok = client.caption(request(Kind::Image(png), "", greedy(4))).await.unwrap().into_inner();
    assert_eq!(ok.token_ids.len(), 4);
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let server = TestServer::start("tiny-git-image", &[]);
    let channel = server.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "gitcap.v1.Captioner", "gitcap.v1.Captioner/tiny"] {
        let reply =
            health.check(tonic_health::pb::HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(reply.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32, "{service}");
    }

    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
        server_reflection_response::MessageResponse, ServerReflectionRequest,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection.server_reflection_info(tokio_stream::iter(vec![ask])).await.unwrap().into_inner();
    let reply = replies.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else { panic!("no service list") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"gitcap.v1.Captioner".to_string()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");

    // The older v1alpha reflection, which some tools (older grpcurl, Postman) still ask for.
    use tonic_reflection::pb::v1alpha::{
        server_reflection_client::ServerReflectionClient as AlphaClient,
        server_reflection_request::MessageRequest as AlphaRequest,
        server_reflection_response::MessageResponse as AlphaResponse, ServerReflectionRequest as AlphaAsk,
    };
    let mut alpha = AlphaClient::new(server.channel().await);
    let ask = AlphaAsk { host: String::new(), message_request: Some(AlphaRequest::ListServices(String::new())) };
    let mut replies = alpha.server_reflection_info(tokio_stream::iter(vec![ask])).await.unwrap().into_inner();
    let reply = replies.next().await.unwrap().unwrap();
    let Some(AlphaResponse::ListServicesResponse(list)) = reply.message_response else { panic!("no v1alpha list") };
    let alpha_names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    let without_reflection =
        |names: &[String]| names.iter().filter(|n| !n.starts_with("grpc.reflection.")).cloned().collect::<Vec<_>>();
    assert_eq!(without_reflection(&alpha_names), without_reflection(&names), "v1alpha lists what v1 lists");
    assert!(alpha_names.contains(&"grpc.reflection.v1alpha.ServerReflection".to_string()), "{alpha_names:?}");
}

/// A browser's view: gRPC-Web over plain HTTP/1.1, unary and server streaming.
#[tokio::test]
async fn grpc_web_over_http1() {
    use prost::Message;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server = TestServer::start("tiny-git-image", &[]);
    let (ids, text) = golden("image_caption_shapes_greedy");
    let body = request(Kind::Image(media_file("shapes.png")), "", greedy(12)).encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend((body.len() as u32).to_be_bytes());
    framed.extend(body);
    for method in ["Caption", "CaptionStream"] {
        let mut tcp = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
        let head = format!(
            "POST /gitcap.v1.Captioner/{method} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/grpc-web+proto\r\n\
             X-Grpc-Web: 1\r\nOrigin: http://example.test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            server.addr,
            framed.len()
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.write_all(&framed).await.unwrap();
        let mut raw = vec![];
        tcp.read_to_end(&mut raw).await.unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let headers = String::from_utf8_lossy(&raw[..split]).to_lowercase();
        assert!(headers.starts_with("http/1.1 200"), "{headers}");
        assert!(headers.contains("content-type: application/grpc-web"), "{headers}");
        assert!(headers.contains("access-control-allow-origin"), "{headers}");
        let frames = grpc_web_frames(&dechunk(&raw[split + 4..], &headers));
        let trailer =
            frames.iter().find(|(flag, _)| flag & 0x80 != 0).map(|(_, d)| String::from_utf8_lossy(d).to_lowercase());
        assert!(trailer.unwrap_or_default().contains("grpc-status:0"), "{method}");
        let messages: Vec<&Vec<u8>> = frames.iter().filter(|(flag, _)| flag & 0x80 == 0).map(|(_, d)| d).collect();
        if method == "Caption" {
            let reply = proto::CaptionResponse::decode(messages[0].as_slice()).unwrap();
            assert_eq!((reply.token_ids, reply.text), (ids.clone(), text.clone()));
        } else {
            let events: Vec<proto::CaptionEvent> =
                messages.iter().map(|m| proto::CaptionEvent::decode(m.as_slice()).unwrap()).collect();
            assert_eq!(events.len(), ids.len() + 1, "one event per token, then the final one");
            let Some(Event::Done(done)) = &events.last().unwrap().event else { panic!("last event is not Done") };
            assert_eq!(done.text, text);
        }
    }
}

fn dechunk(body: &[u8], headers: &str) -> Vec<u8> {
    if !headers.contains("transfer-encoding: chunked") {
        return body.to_vec();
    }
    let (mut out, mut rest) = (vec![], body);
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
        rest = &rest[line_end + 2 + size + 2..];
    }
}

fn grpc_web_frames(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = vec![];
    while body.len() >= 5 {
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        frames.push((body[0], body[5..5 + len].to_vec()));
        body = &body[5 + len..];
    }
    frames
}
