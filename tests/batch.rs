//! The OpenAI Files and Batches API over raw HTTP: every route, answers equal to the chat route's,
//! bad lines in the error file, validation, pagination, cancel, expiry of jobs and files, the
//! size caps and the inference token.

#[path = "batch/api.rs"]
mod api;
mod common;

use std::time::Duration;

use serde_json::{json, Value};

use api::{by_custom_id, caption, line, Api};
use common::fixtures::fixtures;
use common::openai::post_chat;
use common::server::TestServer;
use gitcap_client::{CaptionOptions, Media};

const LIMIT: Duration = Duration::from_secs(60);

fn shapes() -> Vec<u8> {
    std::fs::read(fixtures().join("media/shapes.png")).unwrap()
}

fn gray() -> Vec<u8> {
    std::fs::read(fixtures().join("media/gray.png")).unwrap()
}

/// A server of the tiny image model with the Batch API in `dir`, and `env` on top.
fn server(dir: &std::path::Path, env: &[(&str, &str)]) -> TestServer {
    let mut all = vec![("GITCAP__BATCH__DATA_DIR", dir.to_str().unwrap())];
    all.extend_from_slice(env);
    TestServer::start_with_env("tiny-git-image", &[], &all)
}

#[tokio::test]
async fn a_job_answers_each_line_as_the_chat_route_does_and_bad_lines_go_to_the_error_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), &[]);
    let api = Api::new(&server);
    let question = json!({"model": "tiny", "max_tokens": 6, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": common::openai::data_uri("image/png", &gray())}},
        {"type": "text", "text": "what is it?"}]}]});
    let good = [
        line("shapes", caption("tiny", &shapes(), 8)),
        line("gray", caption("tiny", &gray(), 5)),
        line("question", question.clone()),
    ];
    let mut file = api::jsonl(&good);
    file.push_str("this is not json\n\n");
    file.push_str(&format!("{}\n", json!({"method": "POST", "url": "/v1/chat/completions", "body": {}})));
    file.push_str(&format!(
        "{}\n",
        json!({"custom_id": "wrong-url", "method": "POST", "url": "/v1/embeddings", "body": {}})
    ));
    let mut bad_option = caption("tiny", &shapes(), 5);
    bad_option["top_p"] = json!(5.0);
    file.push_str(&format!("{}\n", line("bad-option", bad_option)));
    file.push_str(&format!("{}\n", line("no-model", caption("absent", &shapes(), 5))));
    let (status, input) = api.upload_as("batch", "requests.jsonl", file.as_bytes()).await;
    assert_eq!(status, 200, "{input}");
    assert_eq!((input["object"].as_str(), input["purpose"].as_str()), (Some("file"), Some("batch")));
    assert_eq!(input["bytes"].as_u64(), Some(file.len() as u64));
    assert_eq!(input["filename"], "requests.jsonl");
    let input_id = input["id"].as_str().unwrap();

    let mut created = api.create(input_id).await;
    assert_eq!(created["status"], "validating", "{created}");
    created["metadata"] = json!({});
    let batch = api.wait_end(created["id"].as_str().unwrap(), LIMIT).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(batch["request_counts"], json!({"total": 8, "completed": 3, "failed": 5}), "{batch}");
    for field in ["in_progress_at", "finalizing_at", "completed_at"] {
        assert!(batch[field].as_i64().is_some(), "{field}: {batch}");
    }

    let output = api.lines(&batch["output_file_id"]).await;
    let answers = by_custom_id(&output);
    assert_eq!(answers.len(), 3, "{output:?}");
    let client = server.client(None).await;
    for (custom_id, body) in good.iter().map(|l| (l["custom_id"].as_str().unwrap(), &l["body"])) {
        let answer = &answers[custom_id];
        assert_eq!(answer["error"], Value::Null);
        assert_eq!(answer["response"]["status_code"], 200);
        assert!(answer["id"].as_str().unwrap().starts_with("batch_req_"), "{answer}");
        let response = &answer["response"]["body"];
        assert_eq!(answer["response"]["request_id"], response["id"]);
        assert_eq!(response["service_tier"], "flex", "batch lines run at batch priority: {response}");
        // The golden: the chat route's answer to the same body.
        let (status, _, direct) = post_chat(&server, &[], body).await;
        assert_eq!(status, 200);
        assert_eq!(response["choices"][0]["message"], direct["choices"][0]["message"], "{custom_id}");
        // (The direct call finds the image in the feature cache: only its cached_tokens differ.)
        for count in ["prompt_tokens", "completion_tokens", "total_tokens"] {
            assert_eq!(response["usage"][count], direct["usage"][count], "{custom_id}");
        }
    }
    // And gRPC's, for one.
    let grpc = client.caption(Media::image(shapes()), &CaptionOptions::default().max_new_tokens(8)).await.unwrap();
    assert_eq!(answers["shapes"]["response"]["body"]["choices"][0]["message"]["content"], grpc.text.as_str());

    let errors = api.lines(&batch["error_file_id"]).await;
    assert_eq!(errors.len(), 5, "{errors:?}");
    let codes: Vec<&str> = errors.iter().filter_map(|e| e["error"]["code"].as_str()).collect();
    assert_eq!(codes, ["invalid_json_line", "missing_custom_id", "mismatched_endpoint"], "{errors:?}");
    let failed = by_custom_id(&errors);
    assert_eq!(failed["bad-option"]["response"]["status_code"], 400);
    assert_eq!(failed["bad-option"]["response"]["body"]["error"]["param"], "top_p");
    assert_eq!(failed["no-model"]["response"]["status_code"], 404);
    assert_eq!(failed["wrong-url"]["response"], Value::Null);

    // The files' routes.
    let (status, outputs) = api.get(&format!("/v1/files/{}", batch["output_file_id"].as_str().unwrap())).await;
    assert_eq!((status, outputs["purpose"].as_str()), (200, Some("batch_output")), "{outputs}");
    let (status, list) = api.get("/v1/files").await;
    assert_eq!(status, 200);
    assert_eq!(list["data"].as_array().unwrap().len(), 3, "input, output and errors: {list}");
    let (status, deleted) = api.delete(&format!("/v1/files/{input_id}")).await;
    assert_eq!((status, deleted["deleted"].as_bool()), (200, Some(true)));
    assert_eq!(api.get(&format!("/v1/files/{input_id}")).await.0, 404);
    assert_eq!(api.get(&format!("/v1/files/{input_id}/content")).await.0, 404);
    assert_eq!(api.delete(&format!("/v1/files/{input_id}")).await.0, 404);
    assert!(!dir.path().join("files").join(input_id).exists(), "a deleted file's content is gone");

    // Metrics: jobs by status, lines by outcome.
    let text = common::probe::scrape_until(&server.addr, |t| t.contains("gitcap_batch_jobs{status=\"completed\"} 1"));
    assert_eq!(common::probe::value(&text, "gitcap_batch_lines_total{outcome=\"completed\"}"), Some(3.0), "{text}");
    assert_eq!(common::probe::value(&text, "gitcap_batch_lines_total{outcome=\"failed\"}"), Some(5.0));
}

#[tokio::test]
async fn a_responses_job_answers_as_the_responses_route_does_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), &[]);
    let api = Api::new(&server);
    let body = |image: &[u8], tokens: u32| {
        json!({"model": "tiny", "max_output_tokens": tokens, "input": [{"role": "user", "content": [
            {"type": "input_image", "image_url": common::openai::data_uri("image/png", image)}]}]})
    };
    let request = |custom_id: &str, body: Value| json!({"custom_id": custom_id, "method": "POST", "url": "/v1/responses", "body": body});
    let lines = [
        request("shapes", body(&shapes(), 6)),
        request("gray", body(&gray(), 4)),
        line("chat-line", caption("tiny", &gray(), 3)),
    ];
    let file = api.upload(&lines).await;
    let create = json!({"input_file_id": file, "endpoint": "/v1/responses", "completion_window": "24h"});
    let (status, batch) = api.post("/v1/batches", &create).await;
    assert_eq!(status, 200, "{batch}");
    let batch = api.wait_end(batch["id"].as_str().unwrap(), LIMIT).await;
    assert_eq!(batch["request_counts"], json!({"total": 3, "completed": 2, "failed": 1}), "{batch}");
    let answers = by_custom_id(&api.lines(&batch["output_file_id"]).await);
    for (custom_id, body) in [("shapes", body(&shapes(), 6)), ("gray", body(&gray(), 4))] {
        let response = &answers[custom_id]["response"];
        assert_eq!(response["status_code"], 200);
        assert_eq!(response["body"]["service_tier"], "flex", "{response}");
        let (status, direct) = api.post("/v1/responses", &body).await;
        assert_eq!(status, 200, "{direct}");
        assert_eq!(response["body"]["output"][0]["content"][0]["text"], direct["output"][0]["content"][0]["text"]);
        let id = response["body"]["id"].as_str().unwrap();
        assert_eq!(api.get(&format!("/v1/responses/{id}")).await.0, 404, "a batch answer is not kept in memory");
    }
    let errors = api.lines(&batch["error_file_id"]).await;
    assert_eq!(errors[0]["error"]["code"], "mismatched_endpoint", "{errors:?}");
}

#[tokio::test]
async fn jobs_and_files_are_refused_or_failed_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), &[("GITCAP__BATCH__MAX_LINES", "3")]);
    let api = Api::new(&server);
    let one = [line("a", caption("tiny", &gray(), 3))];
    let file = api.upload(&one).await;
    let create = |patch: Value| {
        let mut body = json!({"input_file_id": file, "endpoint": "/v1/chat/completions", "completion_window": "24h"});
        body.as_object_mut().unwrap().extend(patch.as_object().unwrap().clone());
        body
    };
    for (patch, param) in [
        (json!({"endpoint": "/v1/embeddings"}), "endpoint"),
        (json!({"endpoint": "/v2/chat"}), "endpoint"),
        (json!({"completion_window": "1h"}), "completion_window"),
        (json!({"input_file_id": "file-absent"}), "input_file_id"),
        (json!({"metadata": {"k": 1}}), "metadata.k"),
    ] {
        let (status, error) = api.post("/v1/batches", &create(patch.clone())).await;
        assert_eq!(status, 400, "{patch}: {error}");
        assert_eq!(error["error"]["param"], param, "{patch}: {error}");
    }
    let (status, error) = api.upload_as("fine-tune", "a.jsonl", b"{}\n").await;
    assert_eq!((status, error["error"]["param"].as_str()), (400, Some("purpose")), "{error}");
    assert_eq!(api.get("/v1/batches/batch_absent").await.0, 404);
    assert_eq!(api.post("/v1/batches/batch_absent/cancel", &json!({})).await.0, 404);

    // A file that is not a batch fails validation, with OpenAI's errors list.
    let twice = [line("same", caption("tiny", &gray(), 3)), line("same", caption("tiny", &gray(), 3))];
    let api = &api;
    let failed = |lines: Vec<Value>| async move {
        let file = api.upload(&lines).await;
        let batch = api.create(&file).await;
        api.wait_end(batch["id"].as_str().unwrap(), LIMIT).await
    };
    let batch = failed(twice.to_vec()).await;
    assert_eq!(batch["status"], "failed", "{batch}");
    assert_eq!(batch["errors"]["data"][0]["code"], "duplicate_custom_id", "{batch}");
    assert_eq!(batch["errors"]["data"][0]["line"], 2, "{batch}");
    let four = (0..4).map(|i| line(&format!("l{i}"), caption("tiny", &gray(), 3))).collect();
    let batch = failed(four).await;
    assert_eq!(batch["errors"]["data"][0]["code"], "too_many_requests", "{batch}");
    let (status, empty) = api.upload_as("batch", "empty.jsonl", b"\n\n").await;
    assert_eq!(status, 200);
    let batch = api.create(empty["id"].as_str().unwrap()).await;
    let batch = api.wait_end(batch["id"].as_str().unwrap(), LIMIT).await;
    assert_eq!(batch["errors"]["data"][0]["code"], "empty_file", "{batch}");
    assert!(batch["failed_at"].as_i64().is_some());
    assert_eq!(batch["output_file_id"], Value::Null);
}

#[tokio::test]
async fn lists_page_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), &[]);
    let api = Api::new(&server);
    let file = api.upload(&[line("a", caption("tiny", &gray(), 2))]).await;
    let mut created = Vec::new();
    for _ in 0..5 {
        created.push(api.create(&file).await["id"].as_str().unwrap().to_string());
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(id) => format!("/v1/batches?limit=2&after={id}"),
            None => "/v1/batches?limit=2".to_string(),
        };
        let (status, page) = api.get(&path).await;
        assert_eq!(status, 200, "{page}");
        let ids: Vec<String> =
            page["data"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap().into()).collect();
        assert!(ids.len() <= 2);
        assert_eq!(page["last_id"].as_str(), ids.last().map(String::as_str));
        seen.extend(ids);
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
        after = page["last_id"].as_str().map(str::to_string);
    }
    created.reverse();
    assert_eq!(seen, created, "every job once, newest first");
    for limit in ["0", "101", "x"] {
        assert_eq!(api.get(&format!("/v1/batches?limit={limit}")).await.0, 400, "limit={limit}");
    }
    for id in &created {
        api.wait_end(id, LIMIT).await;
    }
    // The input and each job's output, newest first.
    let (_, files) = api.get("/v1/files?limit=5").await;
    let purposes: Vec<&str> =
        files["data"].as_array().unwrap().iter().map(|f| f["purpose"].as_str().unwrap()).collect();
    assert_eq!((purposes, files["has_more"].as_bool()), (vec!["batch_output"; 5], Some(true)), "{files}");
    let (_, rest) = api.get(&format!("/v1/files?after={}", files["last_id"].as_str().unwrap())).await;
    assert_eq!(rest["data"][0]["id"].as_str(), Some(file.as_str()), "{rest}");
    assert_eq!(rest["has_more"], false);
}

/// Lines long enough to be cancelled or expire part-way: one at a time, 20 tokens each.
fn slow_lines(n: usize) -> Vec<Value> {
    let mut body = caption("tiny", &shapes(), 20);
    body["min_new_tokens"] = json!(20);
    (0..n).map(|i| line(&format!("line-{i}"), body.clone())).collect()
}

#[tokio::test]
async fn cancel_stops_at_the_next_line_and_keeps_what_is_done() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), &[("GITCAP__BATCH__LINES_IN_FLIGHT", "1")]);
    let api = Api::new(&server);
    let file = api.upload(&slow_lines(200)).await;
    let batch = api.create(&file).await;
    let id = batch["id"].as_str().unwrap();
    // batch.lines_in_flight holds: never more than one line in flight, nor in the model.
    let mut samples = 0;
    api.wait_for(id, LIMIT, |b| {
        let text = common::probe::scrape_until(&server.addr, |_| true);
        let in_flight = common::probe::value(&text, "gitcap_batch_lines_in_flight").unwrap_or(0.0);
        let in_model = common::probe::gauge(&text, "gitcap_queue_depth", "tiny")
            + common::probe::gauge(&text, "gitcap_running_requests", "tiny");
        assert!(in_flight <= 1.0 && in_model <= 1.0, "{in_flight} lines in flight, {in_model} in the model");
        // Lines wait as batch work: none of them counts as interactive.
        let by_priority = "gitcap_queue_depth_by_priority";
        assert!(text.contains(&format!("{by_priority}{{model=\"tiny\",")), "{text}");
        let waiting =
            |priority: &str| common::probe::sum_with_label(&text, by_priority, &format!("priority=\"{priority}\""));
        assert_eq!(waiting("interactive"), 0.0, "{text}");
        assert_eq!(waiting("batch"), common::probe::gauge(&text, "gitcap_queue_depth", "tiny"), "{text}");
        samples += 1;
        b["request_counts"]["completed"].as_u64() >= Some(4)
    })
    .await;
    assert!(samples > 1);
    let (status, cancelling) = api.post(&format!("/v1/batches/{id}/cancel"), &json!({})).await;
    assert_eq!(status, 200, "{cancelling}");
    assert!(["cancelling", "cancelled"].contains(&cancelling["status"].as_str().unwrap()), "{cancelling}");
    let batch = api.wait_end(id, LIMIT).await;
    assert_eq!(batch["status"], "cancelled", "{batch}");
    assert!(batch["cancelled_at"].as_i64().is_some() && batch["cancelling_at"].as_i64().is_some());
    let done = batch["request_counts"]["completed"].as_u64().unwrap();
    assert!((4..200).contains(&done), "{batch}");
    let output = api.lines(&batch["output_file_id"]).await;
    assert_eq!(output.len() as u64, done, "what was done is in the output");
    assert_eq!(by_custom_id(&output).len(), output.len());
    let (status, again) = api.post(&format!("/v1/batches/{id}/cancel"), &json!({})).await;
    assert_eq!((status, again["status"].as_str()), (200, Some("cancelled")));
}

#[tokio::test]
async fn a_job_past_its_window_expires_and_files_expire() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("GITCAP__BATCH__LINES_IN_FLIGHT", "1"),
        ("GITCAP__BATCH__COMPLETION_WINDOW_SECS", "2"),
        ("GITCAP__BATCH__FILE_EXPIRY_SECS", "6"),
        ("GITCAP__BATCH__SWEEP_INTERVAL_SECS", "0.2"),
    ];
    let server = server(dir.path(), &env);
    let api = Api::new(&server);
    let file = api.upload(&slow_lines(400)).await;
    let (_, input) = api.get(&format!("/v1/files/{file}")).await;
    assert_eq!(input["expires_at"].as_i64(), Some(input["created_at"].as_i64().unwrap() + 6));
    let batch = api.create(&file).await;
    assert_eq!(batch["expires_at"].as_i64(), Some(batch["created_at"].as_i64().unwrap() + 2));
    let batch = api.wait_end(batch["id"].as_str().unwrap(), LIMIT).await;
    assert_eq!(batch["status"], "expired", "{batch}");
    assert!(batch["expired_at"].as_i64().is_some());
    let counts = &batch["request_counts"];
    let (done, failed) = (counts["completed"].as_u64().unwrap(), counts["failed"].as_u64().unwrap());
    assert_eq!(done + failed, 400, "every line is answered or expired: {batch}");
    assert!(failed > 0 && done < 400, "{batch}");
    let errors = api.lines(&batch["error_file_id"]).await;
    assert!(errors.iter().all(|e| e["error"]["code"] == "batch_expired"), "{:?}", errors.first());
    assert_eq!(errors.len() as u64, failed);

    let until = std::time::Instant::now() + LIMIT;
    while api.get(&format!("/v1/files/{file}")).await.0 != 404 {
        assert!(std::time::Instant::now() < until, "the input file did not expire");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!dir.path().join("files").join(&file).exists());
}

#[tokio::test]
async fn uploads_are_capped_per_file_and_in_all() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("GITCAP__BATCH__MAX_FILE_MB", "1"),
        ("GITCAP__BATCH__MAX_DISK_MB", "2"),
        ("GITCAP__BATCH__MAX_ACTIVE_JOBS", "1"),
    ];
    let server = server(dir.path(), &env);
    let api = Api::new(&server);
    let over = vec![b'x'; (1 << 20) + 1];
    let (status, error) = api.upload_as("batch", "big.jsonl", &over).await;
    assert_eq!(status, 413, "{error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("batch.max_file_mb"), "{error}");
    let most = vec![b'\n'; 1 << 20];
    for _ in 0..2 {
        assert_eq!(api.upload_as("batch", "full.jsonl", &most).await.0, 200);
    }
    let (status, error) = api.upload_as("batch", "more.jsonl", b"\n").await;
    assert_eq!(status, 429, "{error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("batch.max_disk_mb"), "{error}");
    let (_, files) = api.get("/v1/files").await;
    assert_eq!(files["data"].as_array().unwrap().len(), 2, "refused uploads leave nothing: {files}");
    assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0, "nor any temporary file");
    let id = files["data"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(api.delete(&format!("/v1/files/{id}")).await.0, 200);
    // Two uploads at once that fit the room left only one at a time: one of them is refused.
    let three_quarters = vec![b'\n'; 3 << 18];
    let (a, b) = tokio::join!(
        api.upload_as("batch", "a.jsonl", &three_quarters),
        api.upload_as("batch", "b.jsonl", &three_quarters)
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [200, 429], "{a:?} {b:?}");
    let kept = if a.0 == 200 { &a.1 } else { &b.1 };
    assert_eq!(api.delete(&format!("/v1/files/{}", kept["id"].as_str().unwrap())).await.0, 200);
    let file = api.upload(&slow_lines(50)).await;
    let first = api.create(&file).await;
    let (status, error) = api
        .post(
            "/v1/batches",
            &json!({"input_file_id": file, "endpoint": "/v1/chat/completions", "completion_window": "24h"}),
        )
        .await;
    assert_eq!(status, 429, "batch.max_active_jobs: {error}");
    api.post(&format!("/v1/batches/{}/cancel", first["id"].as_str().unwrap()), &json!({})).await;
    // The server is still up and answers.
    assert_eq!(api.get("/v1/files").await.0, 200);
}

#[tokio::test]
async fn the_inference_token_guards_every_route_and_an_unset_data_dir_says_how_to_turn_it_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), &[("GITCAP__AUTH__INFERENCE_TOKEN", "batch-secret")]);
    let mut api = Api::new(&server);
    for path in ["/v1/files", "/v1/batches", "/v1/files/file-x", "/v1/files/file-x/content", "/v1/batches/batch_x"] {
        assert_eq!(api.get(path).await.0, 401, "{path}");
    }
    assert_eq!(api.upload_as("batch", "a.jsonl", b"\n").await.0, 401);
    assert_eq!(api.post("/v1/batches", &json!({})).await.0, 401);
    assert_eq!(api.post("/v1/batches/batch_x/cancel", &json!({})).await.0, 401);
    assert_eq!(api.delete("/v1/files/file-x").await.0, 401);
    api.token = Some("batch-secret");
    assert_eq!(api.get("/v1/files").await.0, 200);
    assert_eq!(api.upload_as("batch", "a.jsonl", b"\n").await.0, 200);

    let off = TestServer::start("tiny-git-image", &[]);
    let (status, error) = Api::new(&off).get("/v1/batches").await;
    assert_eq!(status, 404);
    assert!(error["error"]["message"].as_str().unwrap().contains("batch.data_dir"), "{error}");
}

#[test]
fn a_bad_or_misspelt_batch_setting_stops_start_up_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::server::fixture_model("tiny-git-image");
    for (name, value, named) in [
        ("GITCAP__BATCH__LINES_IN_FLIGHT", "0", "batch.lines_in_flight"),
        ("GITCAP__BATCH__SWEEP_INTERVAL_SECS", "0", "batch.sweep_interval_secs"),
        ("GITCAP__BATCH__MAX_FILES_MB", "1", "GITCAP__BATCH__MAX_FILE_MB"),
    ] {
        let output = std::process::Command::new(common::server::server_binary())
            .args(["serve", "--listen", "127.0.0.1:0", "--name", "tiny", "--model", model.to_str().unwrap()])
            .env("GITCAP__BATCH__DATA_DIR", dir.path())
            .env(name, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{name}={value} started");
        assert!(stderr.contains(named), "{name}={value}: {stderr}");
        assert!(!String::from_utf8_lossy(&output.stdout).contains("listening"), "{name}={value}");
    }
}
