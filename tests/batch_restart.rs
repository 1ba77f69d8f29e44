//! A batch job survives SIGKILL: the server is killed mid-job, started again on the same
//! `batch.data_dir`, resumes the job, and its output holds every line exactly once, each equal
//! to the chat route's answer.

#[path = "batch/api.rs"]
mod api;
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use api::{caption, line, Api};
use common::fixtures::fixtures;
use common::openai::post_chat;
use common::server::TestServer;

const LINES: usize = 120;

fn server(dir: &std::path::Path) -> TestServer {
    let env = [("GITCAP__BATCH__DATA_DIR", dir.to_str().unwrap()), ("GITCAP__BATCH__LINES_IN_FLIGHT", "4")];
    TestServer::start_with_env("tiny-git-image", &[], &env)
}

/// Line `i`'s request: one of eight lengths, so answers differ between lines.
fn body(i: usize, image: &[u8]) -> Value {
    let mut body = caption("tiny", image, 3 + (i % 8) as u32);
    body["min_new_tokens"] = body["max_tokens"].clone();
    body
}

#[tokio::test]
async fn a_job_killed_mid_way_resumes_and_answers_each_line_once() {
    let dir = tempfile::tempdir().unwrap();
    let image = std::fs::read(fixtures().join("media/shapes.png")).unwrap();
    let lines: Vec<Value> = (0..LINES).map(|i| line(&format!("clip-{i:04}"), body(i, &image))).collect();

    let mut first = server(dir.path());
    let api = Api::new(&first);
    let file = api.upload(&lines).await;
    let batch = api.create(&file).await;
    let id = batch["id"].as_str().unwrap().to_string();
    let midway =
        api.wait_for(&id, Duration::from_secs(60), |b| b["request_counts"]["completed"].as_u64() >= Some(20)).await;
    first.signal("KILL");
    assert!(first.wait_exit(Duration::from_secs(10)).is_some(), "the server did not die");
    let done_before = midway["request_counts"]["completed"].as_u64().unwrap();
    assert!(done_before < LINES as u64, "the job must be killed part-way: {midway}");
    drop(first);

    let second = server(dir.path());
    let api = Api::new(&second);
    let batch = api.wait_end(&id, Duration::from_secs(120)).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    let counts = &batch["request_counts"];
    assert_eq!(
        (counts["total"].as_u64(), counts["completed"].as_u64()),
        (Some(LINES as u64), Some(LINES as u64)),
        "{batch}"
    );
    assert_eq!(batch["error_file_id"], Value::Null, "{batch}");

    let output = api.lines(&batch["output_file_id"]).await;
    assert_eq!(output.len(), LINES, "one output line per request, no more");
    let mut seen: BTreeMap<String, Value> = BTreeMap::new();
    for answer in &output {
        let custom_id = answer["custom_id"].as_str().unwrap().to_string();
        assert!(seen.insert(custom_id.clone(), answer.clone()).is_none(), "{custom_id} answered twice");
    }
    let mut goldens = BTreeMap::new();
    for (i, request) in lines.iter().enumerate() {
        let key = i % 8;
        if let std::collections::btree_map::Entry::Vacant(slot) = goldens.entry(key) {
            let (status, _, direct) = post_chat(&second, &[], &request["body"]).await;
            assert_eq!(status, 200, "{direct}");
            slot.insert(direct["choices"][0]["message"]["content"].clone());
        }
        let custom_id = request["custom_id"].as_str().unwrap();
        let answer = &seen[custom_id]["response"]["body"]["choices"][0]["message"]["content"];
        assert_eq!(answer, &goldens[&key], "{custom_id}");
    }
}
