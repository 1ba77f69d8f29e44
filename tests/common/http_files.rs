//! A small HTTP/1.1 server on 127.0.0.1 for tests of URL media: serves files by path, and
//! redirects, and counts the requests it answered.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What a path answers.
#[derive(Clone)]
pub enum Answer {
    File(Vec<u8>),
    /// A body of this many zero bytes, written as it is sent (never whole in memory).
    Zeros(u64),
    Redirect(String),
}

pub struct HttpFiles {
    pub addr: String,
    pub requests: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

impl HttpFiles {
    /// Serves `answers` (path → answer) until dropped.
    pub async fn start(answers: Vec<(&str, Answer)>) -> Self {
        let answers: Arc<HashMap<String, Answer>> =
            Arc::new(answers.into_iter().map(|(path, answer)| (path.to_string(), answer)).collect());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                let (answers, counted) = (answers.clone(), counted.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    counted.fetch_add(1, Ordering::SeqCst);
                    let head = String::from_utf8_lossy(&head);
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    if let Some(Answer::Zeros(size)) = answers.get(&path) {
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
                        );
                        let _ = socket.write_all(head.as_bytes()).await;
                        let block = vec![0u8; 1 << 20];
                        let mut left = *size;
                        while left > 0 {
                            let n = left.min(block.len() as u64) as usize;
                            if socket.write_all(&block[..n]).await.is_err() {
                                return;
                            }
                            left -= n as u64;
                        }
                        return;
                    }
                    let response = match answers.get(&path) {
                        Some(Answer::File(bytes)) => {
                            let mut r = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                                bytes.len()
                            )
                            .into_bytes();
                            r.extend_from_slice(bytes);
                            r
                        }
                        Some(Answer::Redirect(to)) => format!(
                            "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        )
                        .into_bytes(),
                        Some(Answer::Zeros(_)) => unreachable!("answered above"),
                        None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
                    };
                    let _ = socket.write_all(&response).await;
                });
            }
        });
        Self { addr, requests, _task: task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}
