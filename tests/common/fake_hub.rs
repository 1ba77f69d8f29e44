//! A Hugging Face Hub stand-in on 127.0.0.1 that serves one repository from a local directory
//! with the endpoints and headers hf-hub uses (`/api/models/…/revision/…`, `/…/resolve/…/<file>`
//! with `Range`, `x-repo-commit`, `etag`, `content-range`), so the real download path runs.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;

pub struct FakeHub {
    pub endpoint: String,
}

impl FakeHub {
    /// Serves the files of `dir` as the repo `repo_id` at commit `sha`, until the process ends.
    pub fn serve(repo_id: &str, sha: &str, dir: PathBuf) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let (repo_id, sha) = (repo_id.to_string(), sha.to_string());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let mut range_start = None;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(value) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        range_start = value.split('-').next().and_then(|s| s.trim().parse::<usize>().ok());
                    }
                }
                let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_string();
                let response = respond(&path, &repo_id, &sha, &dir, range_start);
                let _ = stream.write_all(&response);
            }
        });
        Self { endpoint }
    }
}

fn respond(path: &str, repo_id: &str, sha: &str, dir: &PathBuf, range_start: Option<usize>) -> Vec<u8> {
    let files: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    if path.starts_with(&format!("/api/models/{repo_id}/revision/")) {
        let siblings: Vec<String> = files.iter().map(|f| format!("{{\"rfilename\":\"{f}\"}}")).collect();
        let body = format!("{{\"sha\":\"{sha}\",\"siblings\":[{}]}}", siblings.join(","));
        return reply("200 OK", &[("Content-Type", "application/json".into())], body.as_bytes());
    }
    let prefix = format!("/{repo_id}/resolve/");
    if let Some(rest) = path.strip_prefix(&prefix) {
        let file = rest.split_once('/').map(|(_, f)| f).unwrap_or("");
        if let Ok(bytes) = std::fs::read(dir.join(file)) {
            let start = range_start.unwrap_or(0).min(bytes.len());
            let body = &bytes[start..];
            let headers = [
                ("x-repo-commit", sha.to_string()),
                ("etag", format!("\"{file}-etag\"")),
                ("Content-Range", format!("bytes {start}-{}/{}", bytes.len().saturating_sub(1), bytes.len())),
            ];
            return reply("206 Partial Content", &headers, body);
        }
    }
    reply("404 Not Found", &[], b"not found")
}

fn reply(status: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}
