//! The fetcher against servers on 127.0.0.1 (`test_server.rs`): what it fetches, what it refuses
//! and what its messages say. Refusals before a connection are checked by the server's count of
//! accepted connections.

use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::test_server::{Reply, TestServer};
use super::*;

const FIELD: &str = "media.url";

fn policy(allow: &[&str]) -> UrlPolicy {
    UrlPolicy {
        enabled: true,
        allow_hosts: allow.iter().map(|h| h.to_string()).collect(),
        max_bytes: 1 << 20,
        timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(5),
        max_redirects: 3,
    }
}

fn fetcher(allow: &[&str]) -> UrlFetcher {
    UrlFetcher::new(policy(allow)).unwrap()
}

/// The message of a media error on [`FIELD`]; anything else fails the test.
fn media_message(result: Result<impl std::fmt::Debug>) -> String {
    match result {
        Err(GitcapError::Media { field, message }) => {
            assert_eq!(field, FIELD);
            message
        }
        other => panic!("expected a media error, got {other:?}"),
    }
}

fn assert_contains(message: &str, expected: &str) {
    assert!(message.contains(expected), "`{message}` should contain `{expected}`");
}

/// Bytes that no prefix of a repeated pattern would match by accident.
fn sample_body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[tokio::test]
async fn a_disabled_policy_refuses_and_says_how_to_turn_fetching_on() {
    let server = TestServer::start(|_| Reply::ok("image/png", b"png")).await;
    let off = UrlFetcher::new(UrlPolicy { allow_hosts: vec!["127.0.0.1".into()], ..UrlPolicy::default() }).unwrap();
    let message = media_message(off.fetch(&server.url("/a.png"), FIELD).await);
    assert_contains(&message, &format!("{}: this server does not fetch media by URL", server.url("/a.png")));
    assert_contains(&message, "media.url.enabled = true");
    assert_contains(&message, "media.url.allow_hosts");
    media_message(off.fetch_bytes(&server.url("/a.png"), FIELD).await);
    assert_eq!(server.connections(), 0);
}

#[test]
fn bad_policies_are_refused_naming_the_setting() {
    let invalid = |policy: UrlPolicy| match UrlFetcher::new(policy) {
        Err(GitcapError::InvalidArgument { field, message }) => format!("{field}: {message}"),
        other => panic!("expected an invalid setting, got {:?}", other.map(|_| ())),
    };
    let message = invalid(policy(&["images.example.com", "10.0.0.0/33"]));
    assert_eq!(message, "media.url.allow_hosts: entry `10.0.0.0/33`: the prefix length must be a number from 0 to 32");
    assert_contains(&invalid(policy(&[])), "no host is allowed");
    assert_contains(&invalid(UrlPolicy { max_bytes: 0, ..policy(&["*"]) }), "media.url.max_bytes");
    assert_contains(&invalid(UrlPolicy { timeout: Duration::ZERO, ..policy(&["*"]) }), "media.url.timeout_secs");
    // A disabled policy still has its allowlist checked, so a typo shows before it is turned on.
    let disabled = UrlPolicy { enabled: false, ..policy(&["http://example.com"]) };
    assert_contains(&invalid(disabled), "without scheme");
}

#[tokio::test]
async fn a_host_not_in_the_allowlist_is_refused_without_connecting() {
    let server = TestServer::start(|_| Reply::ok("image/png", b"png")).await;
    let message = media_message(fetcher(&["images.example.com"]).fetch(&server.url("/a.png"), FIELD).await);
    assert_eq!(
        message,
        format!(
            "{}: the host 127.0.0.1 is not allowed; the server's operator can add it to media.url.allow_hosts",
            server.url("/a.png")
        )
    );
    // `*` admits any host, but a literal non-public address still needs naming.
    let message = media_message(fetcher(&["*"]).fetch(&server.url("/a.png"), FIELD).await);
    assert_contains(&message, "127.0.0.1 is a loopback address; add it to media.url.allow_hosts to allow it");
    // Other schemes never get as far as the allowlist.
    let message = media_message(fetcher(&["*"]).fetch("file:///etc/passwd", FIELD).await);
    assert_eq!(message, "file:///etc/passwd: only http and https URLs are fetched, not file:");
    let message = media_message(fetcher(&["*"]).fetch("not a url", FIELD).await);
    assert_contains(&message, "not a url: not a valid URL");
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn an_allowed_address_is_fetched_into_a_file_or_memory() {
    let body = sample_body(300_000);
    let served = body.clone();
    let server = TestServer::start(move |_| Reply::ok("image/png", &served)).await;
    for allow in ["127.0.0.1", "127.0.0.0/8", "::ffff:127.0.0.1"] {
        let fetcher = fetcher(&[allow]);
        let fetched = fetcher.fetch(&server.url("/a.png?size=large"), FIELD).await.unwrap();
        assert_eq!(fetched.bytes, body.len() as u64, "{allow}");
        assert_eq!(fetched.content_type.as_deref(), Some("image/png"));
        assert_eq!(fetched.final_url, server.url("/a.png?size=large"));
        let mut stored = Vec::new();
        std::io::Read::read_to_end(&mut fetched.file.as_file(), &mut stored).unwrap();
        assert!(stored == body, "the file holds the body, read from its start");
        let path = fetched.file.path().to_path_buf();
        drop(fetched);
        assert!(!path.exists(), "the temporary file goes with the Fetched");

        let in_memory = fetcher.fetch_bytes(&server.url("/a.png"), FIELD).await.unwrap();
        assert!(in_memory.body == body);
        assert_eq!(in_memory.content_type.as_deref(), Some("image/png"));
    }
}

#[tokio::test]
async fn bodies_are_spooled_in_the_directory_given() {
    let server = TestServer::start(|_| Reply::ok("video/mp4", &sample_body(4096))).await;
    let spool = tempfile::tempdir().unwrap();
    let fetcher = fetcher(&["127.0.0.1"]).with_spool_dir(Some(spool.path()));
    let fetched = fetcher.fetch(&server.url("/clip.mp4"), FIELD).await.unwrap();
    assert_eq!(fetched.file.path().parent(), Some(spool.path()));
    assert!(fetched.file.path().file_name().unwrap().to_string_lossy().starts_with("gitcap-url-"));
    drop(fetched);
    assert_eq!(std::fs::read_dir(spool.path()).unwrap().count(), 0, "the file goes with the Fetched");
}

#[tokio::test]
async fn a_body_over_the_cap_stops_early() {
    // 64 MiB offered without a Content-Length; the cap is 256 KiB.
    let server = TestServer::start(|_| Reply::Stream { declared: None, total: 64 << 20 }).await;
    let fetcher = UrlFetcher::new(UrlPolicy { max_bytes: 256 << 10, ..policy(&["127.0.0.1"]) }).unwrap();
    for in_memory in [false, true] {
        let url = server.url("/video.mp4");
        let message = if in_memory {
            media_message(fetcher.fetch_bytes(&url, FIELD).await)
        } else {
            media_message(fetcher.fetch(&url, FIELD).await)
        };
        assert_eq!(
            message,
            format!("{url}: the body is larger than the 256 KiB limit for URL media (media.url.max_bytes)")
        );
    }
    server.wait_idle().await;
    // What the server got out before the client hung up: at most what socket buffers hold.
    let sent = server.body_bytes_sent();
    assert!(sent < 2 * (16 << 20), "the server sent {sent} bytes of 2 × 64 MiB");
}

#[tokio::test]
async fn a_declared_length_over_the_cap_is_refused_before_the_body() {
    let server = TestServer::start(|_| Reply::Stream { declared: Some(64 << 20), total: 64 << 20 }).await;
    let fetcher = UrlFetcher::new(UrlPolicy { max_bytes: 1 << 20, ..policy(&["127.0.0.1"]) }).unwrap();
    let url = server.url("/video.mp4");
    let message = media_message(fetcher.fetch(&url, FIELD).await);
    assert_eq!(
        message,
        format!("{url}: the body (64 MiB declared) is larger than the 1 MiB limit for URL media (media.url.max_bytes)")
    );
    server.wait_idle().await;
    let sent = server.body_bytes_sent();
    assert!(sent < 16 << 20, "the server sent {sent} bytes of 64 MiB");
}

#[tokio::test]
async fn a_slow_server_hits_the_time_cap() {
    let server = TestServer::start(|path| match path {
        "/no-headers" => Reply::StallBeforeHeaders,
        _ => Reply::StallInBody,
    })
    .await;
    let fetcher = UrlFetcher::new(UrlPolicy { timeout: Duration::from_millis(500), ..policy(&["127.0.0.1"]) }).unwrap();
    for path in ["/no-headers", "/stalled-body"] {
        let started = Instant::now();
        let message = media_message(fetcher.fetch(&server.url(path), FIELD).await);
        let elapsed = started.elapsed();
        assert_eq!(
            message,
            format!("{}: not fetched within 0.5 s, the limit for URL media (media.url.timeout_secs)", server.url(path))
        );
        assert!(elapsed >= Duration::from_millis(500) && elapsed < Duration::from_secs(3), "{path}: {elapsed:?}");
    }
}

#[tokio::test]
async fn redirects_to_allowed_places_are_followed() {
    let server = TestServer::start(|path| match path {
        "/old" => Reply::redirect(302, "/new"),
        "/new" => Reply::ok("image/jpeg", b"jpeg bytes"),
        _ => Reply::status(404),
    })
    .await;
    let port = server.addr.port();
    let fetcher = fetcher(&["127.0.0.1"]);
    let fetched = fetcher.fetch_bytes(&server.url("/old"), FIELD).await.unwrap();
    assert_eq!(fetched.body, b"jpeg bytes");
    assert_eq!(fetched.final_url, server.url("/new"));
    assert_eq!(fetched.content_type.as_deref(), Some("image/jpeg"));

    // 307 and 308, absolute Locations, and a hop to a host name listed exactly.
    let chain = TestServer::start(move |path| match path {
        "/a" => Reply::redirect(307, &format!("http://localhost:{port}/b-via-name")),
        _ => Reply::status(404),
    })
    .await;
    let second = TestServer::start(|path| match path {
        "/a" => Reply::redirect(308, "/b"),
        "/b" => Reply::ok("video/mp4", b"mp4"),
        _ => Reply::status(404),
    })
    .await;
    let fetched = fetcher.fetch_bytes(&second.url("/a"), FIELD).await.unwrap();
    assert_eq!((fetched.body.as_slice(), fetched.final_url), (&b"mp4"[..], second.url("/b")));
    let by_name = UrlFetcher::new(policy(&["127.0.0.1", "localhost"])).unwrap();
    let message = media_message(by_name.fetch_bytes(&chain.url("/a"), FIELD).await);
    assert_eq!(
        message,
        format!(
            "{} (redirected to http://localhost:{port}/b-via-name): the server answered 404 Not Found",
            chain.url("/a")
        )
    );
}

#[tokio::test]
async fn redirects_to_private_addresses_and_other_schemes_are_refused() {
    let server = TestServer::start(|path| match path.strip_prefix("/to/") {
        Some(target) => Reply::redirect(302, target),
        None => Reply::ok("image/png", b"png"),
    })
    .await;
    let port = server.addr.port();
    // `*` lets any host through the name check, so these are refused for their addresses.
    let fetcher = fetcher(&["*", "127.0.0.1"]);
    let cases = [
        (format!("http://127.0.0.2:{port}/"), "127.0.0.2 is a loopback address"),
        ("http://169.254.169.254/latest/meta-data/".to_string(), "169.254.169.254 is a link-local address"),
        ("http://10.0.0.1/".to_string(), "10.0.0.1 is a private address"),
        ("http://100.64.0.1/".to_string(), "100.64.0.1 is a carrier-grade NAT address"),
        (format!("http://[::1]:{port}/"), "::1 is a loopback address"),
        ("http://[::ffff:a9fe:a9fe]/".to_string(), "::ffff:169.254.169.254 is a link-local address"),
        ("http://[fd00::1]/".to_string(), "fd00::1 is a unique local (private) IPv6 address"),
        ("file:///etc/passwd".to_string(), "only http and https URLs are fetched, not file:"),
        ("gopher://127.0.0.1/".to_string(), "only http and https URLs are fetched, not gopher:"),
    ];
    for (target, expected) in &cases {
        let url = server.url(&format!("/to/{target}"));
        let message = media_message(fetcher.fetch(&url, FIELD).await);
        let start = format!("{url}: redirected to {target}, but {expected}");
        assert!(message.starts_with(&start), "`{message}` should start with `{start}`");
    }
    let url = server.url("/to/http://169.254.169.254/latest/meta-data/");
    assert_eq!(
        media_message(fetcher.fetch(&url, FIELD).await),
        format!(
            "{url}: redirected to http://169.254.169.254/latest/meta-data/, but 169.254.169.254 is a link-local \
             address; add it to media.url.allow_hosts to allow it"
        )
    );
    assert_eq!(server.connections(), cases.len() + 1, "no redirect target was connected to");

    // The listed address is followed however it is spelt (http://0x7f.1 is http://127.0.0.1).
    let url = server.url(&format!("/to/http://0x7f.1:{port}/a.png"));
    let fetched = fetcher.fetch_bytes(&url, FIELD).await.unwrap();
    assert_eq!(fetched.final_url, server.url("/a.png"));

    // Without `*`, an address outside the list fails the name check first.
    let strict = self::fetcher(&["127.0.0.1"]);
    let url = server.url(&format!("/to/http://127.0.0.2:{port}/"));
    let message = media_message(strict.fetch(&url, FIELD).await);
    assert_contains(&message, "but the host 127.0.0.2 is not allowed");
}

#[tokio::test]
async fn too_many_redirects_are_refused() {
    let server = TestServer::start(|path| {
        let n: u32 = path.trim_start_matches("/loop/").parse().unwrap_or(0);
        Reply::redirect(302, &format!("/loop/{}", n + 1))
    })
    .await;
    let fetcher = fetcher(&["127.0.0.1"]);
    let message = media_message(fetcher.fetch(&server.url("/loop/0"), FIELD).await);
    assert_eq!(
        message,
        format!(
            "{} (redirected to {}): more than 3 redirects (media.url.max_redirects); the next was to {}",
            server.url("/loop/0"),
            server.url("/loop/3"),
            server.url("/loop/4")
        )
    );
    assert_eq!(server.connections(), 4);

    let no_redirects = UrlFetcher::new(UrlPolicy { max_redirects: 0, ..policy(&["127.0.0.1"]) }).unwrap();
    let message = media_message(no_redirects.fetch(&server.url("/loop/0"), FIELD).await);
    assert_contains(&message, "more than 0 redirects");
}

#[tokio::test]
async fn a_name_resolving_to_a_non_public_address_needs_the_address_or_the_exact_name_listed() {
    let server = TestServer::start(|_| Reply::ok("image/png", b"png")).await;
    let url = format!("http://localhost:{}/a.png", server.addr.port());

    let message = media_message(fetcher(&["*"]).fetch(&url, FIELD).await);
    assert_eq!(
        message,
        format!(
            "{url}: the host localhost resolves to 127.0.0.1, a loopback address; add it to \
             media.url.allow_hosts to allow it"
        )
    );
    // A wildcard is no more than `*`: it never admits a non-public address.
    let message = media_message(fetcher(&["*.example.com", "*"]).fetch(&url, FIELD).await);
    assert_contains(&message, "resolves to 127.0.0.1, a loopback address");
    // An address entry admits addresses, not names: `localhost` itself is not allowed.
    let message = media_message(fetcher(&["127.0.0.1"]).fetch(&url, FIELD).await);
    assert_contains(&message, "the host localhost is not allowed");
    assert_eq!(server.connections(), 0);

    // The name allowed by `*` and its address listed; or the name listed exactly.
    for allow in [&["*", "127.0.0.1"][..], &["localhost"]] {
        let fetched = fetcher(allow).fetch_bytes(&url, FIELD).await.unwrap();
        assert_eq!(fetched.body, b"png", "{allow:?}");
    }
    assert_eq!(server.connections(), 2);
}

#[tokio::test]
async fn error_statuses_and_failed_connections_are_named() {
    let server = TestServer::start(|path| match path {
        "/missing" => Reply::status(404),
        "/broken" => Reply::redirect(302, "/error"),
        "/error" => Reply::status(500),
        "/choices" => Reply::redirect(300, "/a"),
        "/nowhere" => Reply::status(302),
        _ => Reply::status(418),
    })
    .await;
    let fetcher = fetcher(&["127.0.0.1"]);
    let message = |path: &'static str| {
        let fetcher = fetcher.clone();
        let url = server.url(path);
        async move { media_message(fetcher.fetch(&url, FIELD).await) }
    };
    assert_eq!(message("/missing").await, format!("{}: the server answered 404 Not Found", server.url("/missing")));
    assert_eq!(
        message("/broken").await,
        format!(
            "{} (redirected to {}): the server answered 500 Internal Server Error",
            server.url("/broken"),
            server.url("/error")
        )
    );
    assert_contains(
        &message("/choices").await,
        "the server answered 300 Multiple Choices, which is not a redirect to follow",
    );
    assert_contains(&message("/nowhere").await, "the server answered 302 Found without a Location");
    assert_contains(&message("/teapot").await, "the server answered 418 I'm a teapot");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let url = format!("http://{closed}/a.png");
    let message = media_message(fetcher.fetch(&url, FIELD).await);
    assert!(message.starts_with(&format!("{url}: could not connect: ")), "{message}");
    assert_contains(&message, "refused");
}

struct TestCertificate {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

fn localhost_certificate() -> TestCertificate {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(generated.signing_key.serialize_der()));
    TestCertificate { cert: generated.cert.der().clone(), key }
}

#[tokio::test]
async fn https_is_fetched_with_verified_certificates_and_never_downgraded() {
    let plain = TestServer::start(|_| Reply::ok("image/png", b"plain")).await;
    let plain_url = format!("http://localhost:{}/a.png", plain.addr.port());
    let certificate = localhost_certificate();
    let redirect_to_plain = plain_url.clone();
    let secure = TestServer::start_tls(
        move |path| match path {
            "/a.png" => Reply::ok("image/png", b"secure"),
            "/again" => Reply::redirect(302, "/a.png"),
            _ => Reply::redirect(302, &redirect_to_plain),
        },
        certificate.cert.clone(),
        certificate.key.clone_key(),
    )
    .await;
    let https = |path: &str| format!("https://localhost:{}{path}", secure.addr.port());
    let trusting = UrlFetcher::build(policy(&["localhost"]), vec![certificate.cert.clone()]).unwrap();

    let fetched = trusting.fetch_bytes(&https("/a.png"), FIELD).await.unwrap();
    assert_eq!(fetched.body, b"secure");
    let fetched = trusting.fetch_bytes(&https("/again"), FIELD).await.unwrap();
    assert_eq!((fetched.body.as_slice(), fetched.final_url), (&b"secure"[..], https("/a.png")));

    let message = media_message(trusting.fetch(&https("/downgrade"), FIELD).await);
    assert_eq!(
        message,
        format!("{}: redirected from https to plain http ({plain_url}), which is refused", https("/downgrade"))
    );
    assert_eq!(plain.connections(), 0);

    // Without the test certificate among the trusted ones, the handshake fails.
    let message = media_message(fetcher(&["localhost"]).fetch(&https("/a.png"), FIELD).await);
    assert!(message.starts_with(&format!("{}: could not connect: ", https("/a.png"))), "{message}");
    assert_contains(&message.to_lowercase(), "certificate");
}

#[test]
fn next_hops_resolve_locations_and_refuse_downgrades() {
    let https = Url::parse("https://images.example.com/a/b.png").unwrap();
    let http = Url::parse("http://images.example.com/a/b.png").unwrap();
    assert_eq!(next_hop(&https, "c.png").unwrap().as_str(), "https://images.example.com/a/c.png");
    assert_eq!(next_hop(&https, "//cdn.example.com/x").unwrap().as_str(), "https://cdn.example.com/x");
    assert_eq!(next_hop(&http, "https://cdn.example.com/x").unwrap().as_str(), "https://cdn.example.com/x");
    assert_contains(&next_hop(&https, "http://cdn.example.com/x").unwrap_err(), "from https to plain http");
    assert_contains(&next_hop(&http, "http://[::1").unwrap_err(), "not a valid URL");
}

#[test]
fn sizes_and_urls_are_written_for_people() {
    assert_eq!(human_bytes(900), "900 bytes");
    assert_eq!(human_bytes(256 << 10), "256 KiB");
    assert_eq!(human_bytes(1536), "1.5 KiB");
    assert_eq!(human_bytes(64 << 20), "64 MiB");
    assert_eq!(human_bytes(3 << 19), "1.5 MiB");
    let long = format!("https://example.com/{}", "é".repeat(300));
    let shown = shorten(&long);
    assert_eq!(shown.chars().count(), MAX_URL_CHARS_SHOWN + 1);
    assert!(shown.ends_with('…'));
    assert_eq!(shorten("http://x/y"), "http://x/y");
}

/// A measurement rather than a check: how fast a large body streams into a temporary file, and
/// that memory does not grow with it. Run with
/// `cargo test --lib media::fetch::tests::a_large_body_streams_into_a_file -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run it alone with --ignored --nocapture"]
async fn a_large_body_streams_into_a_file() {
    const SIZE: u64 = 512 << 20;
    let server = TestServer::start(|_| Reply::Stream { declared: Some(SIZE), total: SIZE }).await;
    let policy = UrlPolicy { max_bytes: SIZE, timeout: Duration::from_secs(300), ..policy(&["127.0.0.1"]) };
    let fetcher = UrlFetcher::new(policy).unwrap();
    let peak_before = peak_resident_mib();
    let started = Instant::now();
    let fetched = fetcher.fetch(&server.url("/video.mp4"), FIELD).await.unwrap();
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(fetched.bytes, SIZE);
    let growth = peak_resident_mib() - peak_before;
    println!(
        "{} MiB in {seconds:.2} s ({:.0} MiB/s); peak resident memory grew by {growth} MiB",
        SIZE >> 20,
        (SIZE >> 20) as f64 / seconds
    );
    assert!(growth < 64, "the body is streamed, not held: peak memory grew by {growth} MiB");
}

/// The process's peak resident memory (Linux).
fn peak_resident_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() >> 10
}
