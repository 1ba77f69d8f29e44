//! The browser page end to end: a real server, Debian's headless Chromium driven over the
//! DevTools protocol (a minimal WebSocket client below, no extra dependencies). The page loads
//! from `GET /`, a file is picked, Caption is clicked, and the caption streams in over gRPC-Web
//! token by token to the same text as the one-shot CLI.
//!
//! Needs `/usr/bin/chromium` (`apt-get install -y chromium`); without it the test says so and passes.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::fixtures::{cases, fixtures, model_dir};
use common::server::TestServer;

const CHROMIUM: &str = "/usr/bin/chromium";

#[test]
fn page_streams_a_caption_equal_to_the_one_shot_output() {
    if !Path::new(CHROMIUM).exists() {
        eprintln!("\n*** SKIPPED browser test: {CHROMIUM} is missing (install it: apt-get install -y chromium) ***\n");
        return;
    }
    let image = fixtures().join("media").join("shapes.png");
    let expected = one_shot_text(&image);
    let golden = cases().into_iter().find(|c| c.name == "image_caption_shapes_greedy").unwrap().text;
    assert_eq!(expected, golden);

    let server = TestServer::start("tiny-git-image", &[]);
    let browser = Browser::launch();
    let mut page = browser.page();

    page.call("Page.navigate", json!({ "url": format!("{}/", server.url()) }));
    page.wait_for("document.readyState === 'complete' && !!document.getElementById('caption')");
    let document = page.call("DOM.getDocument", json!({}));
    let root = document["root"]["nodeId"].clone();
    let input = page.call("DOM.querySelector", json!({ "nodeId": root, "selector": "#files" }))["nodeId"].clone();
    page.call("DOM.setFileInputFiles", json!({ "nodeId": input, "files": [image.to_str().unwrap()] }));
    page.evaluate("document.getElementById('max_new_tokens').value = '12'; document.getElementById('caption').click()");
    page.wait_for("['done', 'error'].includes(document.getElementById('output').dataset.state)");

    let result = page.evaluate(
        "(() => { const output = document.getElementById('output'); return JSON.stringify({ state: output.dataset.state, \
         text: output.textContent, deltas: Number(output.dataset.deltas), reads: Number(output.dataset.reads), \
         error: document.getElementById('error').textContent, meta: document.getElementById('meta').textContent }) })()",
    );
    let result: Value = serde_json::from_str(result.as_str().unwrap()).unwrap();
    assert_eq!(result["state"], "done", "{result}");
    assert_eq!(result["text"], expected.as_str(), "{result}");
    assert!(result["deltas"].as_u64().unwrap() > 1, "tokens arrived in one update: {result}");
    eprintln!("browser: {result}");
    assert!(result["meta"].as_str().unwrap().contains("local"), "the final version is shown: {result}");

    // A file the server cannot decode: the page shows the gRPC status and message.
    let not_an_image = fixtures().join("golden").join("cases.json");
    page.call("DOM.setFileInputFiles", json!({ "nodeId": input, "files": [not_an_image.to_str().unwrap()] }));
    page.evaluate(
        "document.getElementById('output').dataset.state = 'idle'; document.getElementById('caption').click()",
    );
    page.wait_for("['done', 'error'].includes(document.getElementById('output').dataset.state)");
    let error = page.evaluate(
        "document.getElementById('output').dataset.state + ': ' + document.getElementById('error').textContent",
    );
    let error = error.as_str().unwrap();
    assert!(error.starts_with("error: grpc-status 3: media.image: not a JPEG"), "{error}");
}

/// `gitcap-server caption … --json`'s text.
fn one_shot_text(image: &Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_gitcap-server"))
        .args(["caption", "--model"])
        .arg(model_dir("tiny-git-image"))
        .arg("--image")
        .arg(image)
        .args(["--max-new-tokens", "12", "--json"])
        .output()
        .expect("running gitcap-server caption");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let reply: Value = serde_json::from_slice(&output.stdout).unwrap();
    reply["text"].as_str().unwrap().to_string()
}

/// Headless Chromium with its own profile, killed when dropped.
struct Browser {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn launch() -> Self {
        let profile = tempfile::tempdir().unwrap();
        // Without the background-networking flags Chromium's own connections get in the way.
        let child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromium");
        // Chromium writes its DevTools port into the profile once it listens.
        let port_file: PathBuf = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Some(port) = std::fs::read_to_string(&port_file).ok().and_then(|s| s.lines().next()?.parse().ok()) {
                break port;
            }
            assert!(Instant::now() < deadline, "chromium did not open its DevTools port");
            std::thread::sleep(Duration::from_millis(50));
        };
        Self { child, port, _profile: profile }
    }

    /// A DevTools session with the page Chromium opened.
    fn page(&self) -> Cdp {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let targets: Value = serde_json::from_str(&http_get(self.port, "/json/list")).unwrap();
            let page = targets.as_array().unwrap().iter().find(|t| t["type"] == "page");
            if let Some(url) = page.and_then(|p| p["webSocketDebuggerUrl"].as_str()) {
                return Cdp::connect(url);
            }
            assert!(Instant::now() < deadline, "chromium has no page: {targets}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(port: u16, path: &str) -> String {
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(&tcp, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").unwrap();
    // Chromium keeps the connection open: read exactly Content-Length bytes.
    let mut reader = BufReader::new(tcp);
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).unwrap();
    String::from_utf8(body).unwrap()
}

/// The DevTools protocol over a minimal WebSocket client: text frames, masked out, unmasked in.
struct Cdp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    next_id: u64,
}

impl Cdp {
    fn connect(url: &str) -> Self {
        let rest = url.strip_prefix("ws://").unwrap();
        let (host, path) = rest.split_at(rest.find('/').unwrap());
        let writer = TcpStream::connect(host).unwrap();
        writer.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut reader = BufReader::new(writer.try_clone().unwrap());
        let mut writer = writer;
        write!(
            writer,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: Z2l0Y2FwLWJyb3dzZXItdA==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 101"), "websocket upgrade refused: {status}");
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
        }
        Self { reader, writer, next_id: 0 }
    }

    fn send(&mut self, text: &str) {
        let payload = text.as_bytes();
        let mask = [0x5a, 0x17, 0xc3, 0x01];
        let mut frame = vec![0x81u8]; // FIN, text
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend((n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend((n as u64).to_be_bytes());
            }
        }
        frame.extend(mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.writer.write_all(&frame).unwrap();
    }

    fn receive(&mut self) -> String {
        let mut message = vec![];
        loop {
            let mut head = [0u8; 2];
            self.reader.read_exact(&mut head).expect("reading from chromium's DevTools socket");
            let len = match head[1] & 0x7f {
                126 => {
                    let mut n = [0u8; 2];
                    self.reader.read_exact(&mut n).unwrap();
                    u16::from_be_bytes(n) as usize
                }
                127 => {
                    let mut n = [0u8; 8];
                    self.reader.read_exact(&mut n).unwrap();
                    u64::from_be_bytes(n) as usize
                }
                n => n as usize,
            };
            let mut payload = vec![0u8; len];
            self.reader.read_exact(&mut payload).unwrap();
            match head[0] & 0x0f {
                0x8 => panic!("chromium closed the DevTools socket"),
                0x9 | 0xa => continue, // ping, pong
                _ => message.extend(payload),
            }
            if head[0] & 0x80 != 0 {
                return String::from_utf8(message).unwrap();
            }
        }
    }

    /// Calls a DevTools method and returns its result (events in between are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.send(&json!({ "id": id, "method": method, "params": params }).to_string());
        loop {
            let reply: Value = serde_json::from_str(&self.receive()).unwrap();
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// Evaluates a JavaScript expression in the page; returns its value.
    fn evaluate(&mut self, expression: &str) -> Value {
        let result = self.call("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true }));
        assert!(result.get("exceptionDetails").is_none(), "{expression}: {result}");
        result["result"]["value"].clone()
    }

    /// Waits (60 s at most) until a JavaScript expression is true in the page.
    fn wait_for(&mut self, condition: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.evaluate(condition) != Value::Bool(true) {
            assert!(Instant::now() < deadline, "timed out waiting for {condition}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
