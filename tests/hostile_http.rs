//! Hostile clients at the transport: many HTTP/2 streams on one connection, an accept loop out
//! of file descriptors, large OpenAI bodies with a wrong token or in parallel, HTTP/1.1 bodies
//! that never finish, and the `Authorization` scheme's spelling. Each attack on the server must
//! cost it little and leave it serving everyone else. Its own test binary: it measures the
//! server's CPU time and memory.

mod common;

use std::time::{Duration, Instant};

use common::openai::{data_uri, http};
use common::server::TestServer;
use gitcap_client::proto::{video_upload_message, VideoUploadMessage, VideoUploadStart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// CPU time the process has used (user + system), from /proc/PID/stat.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10) // USER_HZ = 100 on Linux
}

/// A gRPC message frame: uncompressed, its length, the protobuf.
fn grpc_frame(message: &impl prost::Message) -> tonic::codegen::Bytes {
    let body = message.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend((body.len() as u32).to_be_bytes());
    frame.extend(body);
    frame.into()
}

/// The video spool files under `dir` (in the server's own spool directory there).
fn spooled(dir: &std::path::Path) -> usize {
    common::spool::spooled_with(dir, "gitcap-video-").len()
}

/// Polls `ready` every 20 ms until it holds or `limit` passes; whether it held.
async fn eventually(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if ready() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ready()
}

/// About 4,100 `UploadVideo` streams on one connection once exhausted the server's file
/// descriptors (each opened its spool file at once), after which no client was served. Now the
/// server advertises `server.max_concurrent_streams`, a stream holds no file until its first
/// bytes, and a fresh client is served while one connection holds every stream it may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_per_connection_are_bounded_and_hold_no_file_until_data() {
    let spool = tempfile::tempdir().unwrap();
    let server = TestServer::start_with_env(
        "tiny-git-video",
        &[],
        &[
            ("GITCAP__SERVER__MAX_CONCURRENT_STREAMS", "16"),
            ("GITCAP__MEDIA__SPOOL_DIR", spool.path().to_str().unwrap()),
        ],
    );
    let tcp = TcpStream::connect(&server.addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let advertised = eventually(Duration::from_secs(5), || send.current_max_send_streams() == 16).await;
    assert!(advertised, "the server advertised {} concurrent streams, not 16", send.current_max_send_streams());

    let start = VideoUploadMessage {
        message: Some(video_upload_message::Message::Start(VideoUploadStart {
            model: "tiny".into(),
            ..Default::default()
        })),
    };
    let mut streams = Vec::new();
    for _ in 0..16 {
        let mut send = send.clone().ready().await.unwrap();
        let request = http::Request::post(format!("http://{}/gitcap.v1.Captioner/UploadVideo", server.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (response, mut body) = send.send_request(request, false).unwrap();
        body.send_data(grpc_frame(&start), false).unwrap();
        streams.push((response, body));
    }
    // Someone else is served meanwhile.
    let other = server.client(None).await;
    let health = tokio::time::timeout(Duration::from_secs(5), other.health("gitcap.v1.Captioner")).await;
    assert!(matches!(health, Ok(Ok(_))), "{health:?}");

    // Bytes on one stream open its file; the fifteen others that sent none hold no file.
    let chunk = VideoUploadMessage { message: Some(video_upload_message::Message::Chunk(vec![0; 1000])) };
    streams[0].1.send_data(grpc_frame(&chunk), false).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || spooled(spool.path()) >= 1).await,
        "the upload's file never appeared"
    );
    assert_eq!(spooled(spool.path()), 1, "streams that sent no bytes hold spool files");
}

/// Connections beyond `server.max_connections` wait in the backlog until one closes, instead of
/// each taking a descriptor and up to `max_concurrent_streams` calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_for_one_to_close() {
    let server = TestServer::start_with_env("tiny-git-image", &[], &[("GITCAP__SERVER__MAX_CONNECTIONS", "3")]);
    let mut held = Vec::new();
    for _ in 0..3 {
        let client = server.client(None).await;
        client.health("gitcap.v1.Captioner").await.unwrap();
        held.push(client);
    }
    let tcp = TcpStream::connect(&server.addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::post(format!("http://{}/grpc.health.v1.Health/Check", server.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut body) = send.ready().await.unwrap().send_request(request, false).unwrap();
    body.send_data(grpc_frame(&tonic_health::pb::HealthCheckRequest::default()), true).unwrap();
    let mut response = std::pin::pin!(response);
    let early = tokio::time::timeout(Duration::from_secs(1), &mut response).await;
    assert!(early.is_err(), "a fourth connection was served past the cap of 3: {early:?}");
    drop(held.pop());
    let served = tokio::time::timeout(Duration::from_secs(10), response).await;
    assert_eq!(served.expect("still waiting after a connection closed").unwrap().status(), 200);
}

/// An accept that fails for want of file descriptors once made tonic's accept loop retry at
/// once, for ever: a core at 100% for as long as the descriptors stayed spent. Now it backs
/// off, and serves again once descriptors are free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accept_loop_out_of_descriptors_backs_off() {
    let server = TestServer::start("tiny-git-image", &[]);
    let pid = server.pid();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    let prlimit = |limit: &str| {
        let status = std::process::Command::new("prlimit")
            .args([format!("--pid={pid}"), format!("--nofile={limit}")])
            .status()
            .expect("running prlimit");
        assert!(status.success(), "prlimit failed");
    };
    let soft_hard = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = soft_hard.lines().find(|l| l.starts_with("Max open files")).unwrap().to_string();
    let original: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    prlimit(&format!("{}:{}", open + 4, original[1]));
    // More connections than descriptors left: the kernel completes them, the server cannot accept them.
    let mut held = Vec::new();
    for _ in 0..12 {
        held.push(TcpStream::connect(&server.addr).await.unwrap());
    }
    // Let the server reach its first failed accept, then measure.
    assert!(
        eventually(Duration::from_secs(5), || std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
            >= open + 4)
        .await,
        "the server did not use up its descriptors"
    );
    let before = cpu_time(pid);
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_time(pid) - before;
    let elapsed = window.elapsed();
    assert!(used < elapsed / 4, "the server used {used:?} of CPU in {elapsed:?} while it could not accept");

    prlimit(&format!("{}:{}", original[0], original[1]));
    drop(held);
    let client = server.client(None).await;
    let health = tokio::time::timeout(Duration::from_secs(5), client.health("gitcap.v1.Captioner")).await;
    assert!(matches!(health, Ok(Ok(_))), "{health:?}");
}

/// Writes an HTTP/1.1 request head and reads what comes back within `limit`: the response's
/// bytes, and whether the server closed the connection.
async fn read_for(tcp: &mut TcpStream, limit: Duration) -> (String, bool) {
    let until = tokio::time::Instant::now() + limit;
    let mut got = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(until, tcp.read(&mut buffer)).await {
            Err(_) => return (String::from_utf8_lossy(&got).into(), false),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buffer[..n]),
        }
    }
}

fn chat_head(token: &str, length: usize) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gitcap\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {length}\r\n\r\n"
    )
}

/// A 48 MiB body with a wrong token was read and parsed (3.5 CPU-seconds, 826 MB) before its
/// 401. Now the token is checked first: the 401 comes while the client is still sending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_refused_before_the_body_is_read() {
    let server = TestServer::start_with_env("tiny-git-image", &[], &[("GITCAP__AUTH__INFERENCE_TOKEN", "s3cret")]);
    let mut tcp = TcpStream::connect(&server.addr).await.unwrap();
    tcp.write_all(chat_head("wrong", 48 << 20).as_bytes()).await.unwrap();
    // The server may refuse without reading: the write may then stall or fail, and either is fine.
    let _ = tokio::time::timeout(Duration::from_secs(2), tcp.write_all(&vec![b' '; 1 << 20])).await;
    let (response, _) = read_for(&mut tcp, Duration::from_secs(10)).await;
    assert!(response.starts_with("HTTP/1.1 401"), "after 1 MiB of 48: {response:?}");
    assert!(response.contains("invalid_api_key"), "{response}");
}

/// `frequency_penalty: "none"` passed as if harmless (a string where a number is meant).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_string_for_a_number_is_refused_naming_the_field() {
    let server = TestServer::start("tiny-git-image", &[]);
    let png = std::fs::read(common::fixtures::fixtures().join("media/shapes.png")).unwrap();
    let uri = data_uri("image/png", &png);
    let body = serde_json::json!({"model": "tiny", "frequency_penalty": "none", "max_tokens": 2, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}}]}]});
    let response = http()
        .post(format!("{}/v1/chat/completions", server.url()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let error: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(error["error"]["param"], "frequency_penalty", "{error}");
    assert_eq!(error["error"]["message"], "`frequency_penalty` must be a number, got a string", "{error}");
}

/// RFC 7235: the scheme is case-insensitive; `bearer …` was refused on both doors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive_on_both_doors() {
    let server = TestServer::start_with_env("tiny-git-image", &[], &[("GITCAP__AUTH__INFERENCE_TOKEN", "s3cret")]);
    let http = http();
    for (value, expected) in
        [("bearer s3cret", 200), ("BEARER s3cret", 200), ("Bearer s3cret", 200), ("bearer nope", 401)]
    {
        let response = http.get(format!("{}/v1/models", server.url())).header("authorization", value).send().await;
        assert_eq!(response.unwrap().status().as_u16(), expected, "OpenAI door, {value:?}");
    }
    let mut grpc = gitcap_client::proto::captioner_client::CaptionerClient::new(server.channel().await);
    for (value, expected) in
        [("bearer s3cret", tonic::Code::InvalidArgument), ("bearer nope", tonic::Code::Unauthenticated)]
    {
        // No media: past the token, INVALID_ARGUMENT.
        let mut request = tonic::Request::new(gitcap_client::proto::CaptionRequest::default());
        request.metadata_mut().insert("authorization", value.parse().unwrap());
        let status = grpc.caption(request).await.unwrap_err();
        assert_eq!(status.code(), expected, "gRPC door, {value:?}: {status:?}");
    }
}

/// An HTTP/1.1 client that sends its headers and part of its body, then nothing, held its
/// connection (and request) open for ever. Now the body must arrive within
/// `server.http1_body_timeout_secs`: the server answers 408 and closes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_finishes_is_cut_off() {
    let server =
        TestServer::start_with_env("tiny-git-image", &[], &[("GITCAP__SERVER__HTTP1_BODY_TIMEOUT_SECS", "1.5")]);
    let mut tcp = TcpStream::connect(&server.addr).await.unwrap();
    let started = Instant::now();
    tcp.write_all(chat_head("unused", 1000).as_bytes()).await.unwrap();
    tcp.write_all(b"{\"model\": \"tiny\", ").await.unwrap();
    let (response, closed) = read_for(&mut tcp, Duration::from_secs(10)).await;
    assert!(response.starts_with("HTTP/1.1 408"), "{response:?}");
    assert!(response.contains("server.http1_body_timeout_secs"), "{response}");
    assert!(closed, "the connection was left open");
    assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
}

/// A chat request's JSON whose image is `side`×`side` random pixels as a PNG (stored, not
/// compressed: about 3 × side² bytes, 4/3 of that in base64).
fn big_chat_body(side: u32) -> String {
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let image = image::RgbImage::from_fn(side, side, |_, _| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        image::Rgb([rng as u8, (rng >> 8) as u8, (rng >> 16) as u8])
    });
    let mut png = Vec::new();
    let encoder = image::codecs::png::PngEncoder::new_with_quality(
        &mut png,
        image::codecs::png::CompressionType::Fast,
        image::codecs::png::FilterType::NoFilter,
    );
    image.write_with_encoder(encoder).unwrap();
    let uri = data_uri("image/png", &png);
    serde_json::json!({"model": "tiny", "max_tokens": 2, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}}]}]})
    .to_string()
}

/// Six valid 48 MiB chat bodies, parsed on the async threads, once stalled gRPC calls for about
/// 20 s. Now they are parsed on blocking threads within the media budget, and a gRPC call made
/// meanwhile is answered promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_chat_bodies_do_not_stall_grpc() {
    let server = TestServer::start("tiny-git-image", &[]);
    let body = big_chat_body(3600);
    assert!(body.len() > 40 << 20, "{} bytes", body.len());
    let client = server.client(None).await;
    client.health("gitcap.v1.Captioner").await.unwrap();
    let http = http();
    let posts: Vec<_> = (0..8)
        .map(|_| {
            let request = http
                .post(format!("{}/v1/chat/completions", server.url()))
                .header("content-type", "application/json")
                .body(body.clone());
            tokio::spawn(async move { request.send().await.unwrap().status().as_u16() })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    while !posts.iter().all(|p| p.is_finished()) {
        let asked = Instant::now();
        client.health("gitcap.v1.Captioner").await.unwrap();
        slowest = slowest.max(asked.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for post in posts {
        assert_eq!(post.await.unwrap(), 200);
    }
    eprintln!("slowest gRPC health check while the bodies were parsed: {slowest:?}");
    assert!(slowest < Duration::from_millis(600), "a gRPC call waited {slowest:?}");
}
