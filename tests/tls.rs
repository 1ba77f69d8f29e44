//! TLS: the server with a certificate made for the test, the client crate and the CLI
//! trusting it.

mod common;

use std::process::Command;

use common::fixtures::{cases, fixtures};
use common::server::TestServer;
use gitcap_client::{proto::Media, CaptionOptions, ClientConfig, GitcapClient};

#[tokio::test]
async fn captions_over_tls_with_a_private_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let env = [
        ("GITCAP__SERVER__TLS_CERT", cert_path.to_str().unwrap()),
        ("GITCAP__SERVER__TLS_KEY", key_path.to_str().unwrap()),
    ];
    let server = TestServer::start_with_env("tiny-git-image", &[], &env);
    let url = format!("https://{}", server.addr);
    let image = std::fs::read(fixtures().join("media/shapes.png")).unwrap();
    let expected = cases().into_iter().find(|c| c.name == "image_caption_shapes_greedy").unwrap().text;

    let config = ClientConfig::new(&url).tls_ca_pem(cert.cert.pem()).tls_domain("localhost");
    let client = GitcapClient::connect(config).await.unwrap();
    let reply =
        client.caption(Media::image(image.clone()), &CaptionOptions::default().max_new_tokens(12)).await.unwrap();
    assert_eq!(reply.text, expected);

    // Without trusting the certificate, connecting fails: the certificate is not trusted.
    let untrusted = ClientConfig::new(&url).tls_domain("localhost");
    let error = GitcapClient::connect(untrusted).await.err().expect("an untrusted certificate must not be accepted");
    let error = format!("{error:?}");
    assert!(error.contains("UnknownIssuer") || error.contains("certificate"), "{error}");

    // Plain text to a TLS port: the server answers the HTTP/2 preface with a TLS alert record
    // and closes the connection.
    let mut raw = std::net::TcpStream::connect(&server.addr).unwrap();
    raw.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    std::io::Write::write_all(&mut raw, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut raw, &mut answer);
    assert_eq!(answer.first(), Some(&0x15), "a TLS alert record, not {answer:?}");
    // tonic's client reports it as INTERNAL "h2 protocol error" when the alert arrives while it
    // reads the HTTP/2 handshake, or UNKNOWN "transport error" when the connection is already
    // closed by then (a race between the two sides): either way the call fails at once.
    let plain = GitcapClient::connect(ClientConfig::new(format!("http://{}", server.addr))).await.unwrap();
    let error = plain.health("").await.expect_err("plain text to a TLS port");
    let expected = [(tonic::Code::Internal, "h2 protocol error"), (tonic::Code::Unknown, "transport error")];
    assert!(
        expected.iter().any(|(code, text)| error.code() == Some(*code) && error.to_string().contains(text)),
        "{error:?}"
    );

    // A half-configured server refuses to start, saying why.
    let out = Command::new(env!("CARGO_BIN_EXE_gitcap-server"))
        .args(["serve", "--listen", "127.0.0.1:0", "--model"])
        .arg(common::fixtures::model_dir("tiny-git-image"))
        .env("GITCAP__SERVER__TLS_CERT", &cert_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs both server.tls_cert and server.tls_key"));
}
