//! Headless Chromium for the browser tests, driven over the DevTools protocol (a WebSocket, through
//! the `tungstenite` crate). Chromium is found by `tools` (skipped outside CI when missing).

#![allow(dead_code)]

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// Headless Chromium with its own profile, killed when dropped.
pub struct Browser {
    child: Child,
    /// The browser's DevTools WebSocket URL.
    endpoint: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub fn launch(chromium: &Path) -> Self {
        let profile = tempfile::tempdir().unwrap();
        // Without the background-networking flags Chromium's own connections get in the way.
        let child = Command::new(chromium)
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
        // Once it listens, Chromium writes its DevTools port and browser path into the profile.
        let port_file = profile.path().join("DevToolsActivePort");
        // Owned (killed when dropped) before the wait can panic.
        let mut browser = Self { child, endpoint: String::new(), _profile: profile };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let written = std::fs::read_to_string(&port_file).unwrap_or_default();
            let mut lines = written.lines();
            if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                browser.endpoint = format!("ws://127.0.0.1:{port}{path}");
                return browser;
            }
            assert!(Instant::now() < deadline, "chromium did not open its DevTools port");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A new tab, with a DevTools session attached to it.
    pub fn page(&self) -> Page {
        let (mut socket, _) = tungstenite::connect(&self.endpoint).expect("connecting to chromium's DevTools");
        if let MaybeTlsStream::Plain(stream) = socket.get_mut() {
            stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        }
        let mut page = Page { socket, session: None, next_id: 0 };
        let target = page.call("Target.createTarget", json!({ "url": "about:blank" }))["targetId"].clone();
        let attached = page.call("Target.attachToTarget", json!({ "targetId": target, "flatten": true }));
        page.session = Some(attached["sessionId"].as_str().unwrap().to_string());
        page
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A DevTools session with one tab.
pub struct Page {
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
    session: Option<String>,
    next_id: u64,
}

impl Page {
    /// Calls a DevTools method and returns its result (events in between are skipped).
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = &self.session {
            message["sessionId"] = json!(session);
        }
        self.socket.send(Message::text(message.to_string())).expect("writing to chromium's DevTools socket");
        loop {
            let reply = match self.socket.read().expect("reading from chromium's DevTools socket") {
                Message::Text(text) => serde_json::from_str::<Value>(text.as_str()).unwrap(),
                Message::Close(_) => panic!("chromium closed the DevTools socket"),
                _ => continue,
            };
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// Opens `url` and waits until the document has loaded.
    pub fn open(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
        self.wait_for("document.readyState === 'complete'");
    }

    /// Evaluates a JavaScript expression in the page (awaiting a promise); returns its value.
    pub fn evaluate(&mut self, expression: &str) -> Value {
        let result = self
            .call("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }));
        assert!(result.get("exceptionDetails").is_none(), "{expression}: {result}");
        result["result"]["value"].clone()
    }

    /// Waits (60 s at most) until a JavaScript expression is true in the page.
    pub fn wait_for(&mut self, condition: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.evaluate(condition) != Value::Bool(true) {
            assert!(Instant::now() < deadline, "timed out waiting for {condition}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sizes the tab's viewport (CSS pixels, at a device scale of 1).
    pub fn set_viewport(&mut self, width: u32, height: u32) {
        let metrics = json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false });
        self.call("Emulation.setDeviceMetricsOverride", metrics);
    }

    /// A PNG of the whole page (beyond the viewport too).
    pub fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine as _;
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png", "captureBeyondViewport": true }));
        base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).expect("base64 from chromium")
    }

    /// Presses and releases a key as a keyboard does: `Tab`, `Enter`, `Escape` (on whatever
    /// has the focus; Enter in a text field submits its form).
    pub fn press(&mut self, key: &str, shift: bool) {
        let (code, text) = match key {
            "Tab" => (9, ""),
            "Enter" => (13, "\r"),
            "Escape" => (27, ""),
            other => panic!("press: no key code for {other}"),
        };
        let modifiers = if shift { 8 } else { 0 };
        let down = json!({ "type": "keyDown", "key": key, "code": key, "windowsVirtualKeyCode": code,
                           "text": text, "modifiers": modifiers });
        self.call("Input.dispatchKeyEvent", down);
        let up =
            json!({ "type": "keyUp", "key": key, "code": key, "windowsVirtualKeyCode": code, "modifiers": modifiers });
        self.call("Input.dispatchKeyEvent", up);
    }

    /// Types `text` into whatever has the focus, as a keyboard (or an input method) would.
    pub fn type_text(&mut self, text: &str) {
        self.call("Input.insertText", json!({ "text": text }));
    }

    /// The `id` of the focused element ("" for none or one without an id).
    pub fn focused(&mut self) -> String {
        self.evaluate("document.activeElement ? document.activeElement.id : ''")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Puts `files` into the file input matching `selector`, as if the user picked them.
    pub fn set_files(&mut self, selector: &str, files: &[&Path]) {
        let document = self.call("DOM.getDocument", json!({}));
        let root = document["root"]["nodeId"].clone();
        let input = self.call("DOM.querySelector", json!({ "nodeId": root, "selector": selector }))["nodeId"].clone();
        let files: Vec<&str> = files.iter().map(|f| f.to_str().unwrap()).collect();
        self.call("DOM.setFileInputFiles", json!({ "nodeId": input, "files": files }));
    }
}
