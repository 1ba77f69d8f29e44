//! The browser page end to end: a real server, headless Chromium (`common::browser`). The page
//! loads from `GET /`, a file is picked, Caption is clicked, and the caption streams in over
//! gRPC-Web token by token to the same text as the one-shot CLI. Also: every protobuf field
//! number the page's hand-written encoder and decoder use is the protocol's.
//!
//! Needs Chromium (`common::tools`): CI fails without it, elsewhere the test is skipped and the
//! skip is reported by scripts/test.sh.

mod common;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use common::browser::Browser;
use common::fixtures::{cases, fixtures, model_dir};
use common::server::TestServer;
use common::tools::{self, Tool};

#[test]
fn page_streams_a_caption_equal_to_the_one_shot_output() {
    let Some(chromium) = tools::require(Tool::Chromium, "browser_page_streams_a_caption") else { return };
    let image = fixtures().join("media").join("shapes.png");
    let expected = one_shot_text(&image, None);
    let golden = cases().into_iter().find(|c| c.name == "image_caption_shapes_greedy").unwrap().text;
    assert_eq!(expected, golden);

    let server = TestServer::start("tiny-git-image", &[]);
    let browser = Browser::launch(&chromium);
    let mut page = browser.page();

    page.open(&format!("{}/", server.url()));
    page.wait_for("!!document.getElementById('caption')");
    page.set_files("#files", &[&image]);
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
    assert!(result["meta"].as_str().unwrap().contains("local"), "the final version is shown: {result}");

    // A file the server cannot decode: the page shows the gRPC status and message.
    let not_an_image = fixtures().join("golden").join("cases.json");
    page.set_files("#files", &[&not_an_image]);
    page.evaluate(
        "document.getElementById('output').dataset.state = 'idle'; document.getElementById('caption').click()",
    );
    page.wait_for("['done', 'error'].includes(document.getElementById('output').dataset.state)");
    let error = page.evaluate(
        "document.getElementById('output').dataset.state + ': ' + document.getElementById('error').textContent",
    );
    let error = error.as_str().unwrap();
    assert!(error.starts_with("error: grpc-status 3: media.image: not an image gitcap reads (JPEG"), "{error}");
}

/// A video file picked in the page goes to the server whole (`Media.video`); the caption and the
/// frames' timestamps shown are the Rust client's.
#[tokio::test]
async fn page_captions_a_video_file() {
    let Some(chromium) = tools::require(Tool::Chromium, "browser_page_captions_a_video") else { return };
    if tools::require(Tool::Ffmpeg, "browser_page_captions_a_video").is_none() {
        return;
    }
    let videos = common::videos::Videos::new();
    let video = videos.h264_mp4("clip.mp4", "64x48", 25, 2.0);
    let server = TestServer::start("tiny-git-video", &[]);
    let client = server.client(None).await;
    let options = gitcap_client::CaptionOptions::default().max_new_tokens(6);
    let expected = client.caption(gitcap_client::Media::video(std::fs::read(&video).unwrap()), &options).await.unwrap();

    let (url, video_path) = (server.url(), video.clone());
    let shown = tokio::task::spawn_blocking(move || {
        let browser = Browser::launch(&chromium);
        let mut page = browser.page();
        page.open(&format!("{url}/"));
        page.set_files("#files", &[&video_path]);
        page.evaluate(
            "document.getElementById('max_new_tokens').value = '6'; document.getElementById('caption').click()",
        );
        page.wait_for("['done', 'error'].includes(document.getElementById('output').dataset.state)");
        page.evaluate(
            "JSON.stringify({ state: document.getElementById('output').dataset.state, \
             text: document.getElementById('output').textContent, meta: document.getElementById('meta').textContent, \
             error: document.getElementById('error').textContent })",
        )
    })
    .await
    .unwrap();
    let shown: Value = serde_json::from_str(shown.as_str().unwrap()).unwrap();
    assert_eq!(shown["state"], "done", "{shown}");
    assert_eq!(shown["text"], expected.text.as_str(), "{shown}");
    let stamps: Vec<String> = expected.frame_timestamps_s.iter().map(|t| format!("{t:.2}")).collect();
    assert!(shown["meta"].as_str().unwrap().contains(&format!("frames at {} s", stamps.join(", "))), "{shown}");
}

/// The page's chat streams answers from the OpenAI-compatible API: a caption, then a follow-up
/// question (the whole history sent again), each equal to the one-shot CLI's.
#[test]
fn page_chats_through_the_openai_api() {
    let Some(chromium) = tools::require(Tool::Chromium, "browser_page_chats") else { return };
    let image = fixtures().join("media").join("shapes.png");
    let expected_caption = one_shot_text(&image, None);
    let expected_answer = one_shot_text(&image, Some("what is in the picture?"));

    let server = TestServer::start("tiny-git-image", &[]);
    let browser = Browser::launch(&chromium);
    let mut page = browser.page();
    page.open(&format!("{}/", server.url()));
    page.wait_for("!!document.getElementById('chat_send')");
    page.set_files("#files", &[&image]);
    page.evaluate(
        "document.getElementById('max_new_tokens').value = '12'; document.getElementById('chat_send').click()",
    );
    let finished = "['done', 'error'].includes(document.getElementById('chat_output').dataset.state)";
    page.wait_for(finished);
    let state = |page: &mut common::browser::Page| {
        let shown = page.evaluate(
            "JSON.stringify({ state: document.getElementById('chat_output').dataset.state, \
             text: document.getElementById('chat_output').textContent, \
             deltas: Number(document.getElementById('chat_output').dataset.deltas) })",
        );
        serde_json::from_str::<Value>(shown.as_str().unwrap()).unwrap()
    };
    let first = state(&mut page);
    assert_eq!(
        (first["state"].as_str(), first["text"].as_str()),
        (Some("done"), Some(expected_caption.as_str())),
        "{first}"
    );
    assert!(first["deltas"].as_u64().unwrap() > 1, "streamed in one piece: {first}");

    page.evaluate(
        "document.getElementById('chat_output').dataset.state = 'idle'; \
         document.getElementById('chat_text').value = 'what is in the picture?'; document.getElementById('chat_send').click()",
    );
    page.wait_for(finished);
    let second = state(&mut page);
    assert_eq!(
        (second["state"].as_str(), second["text"].as_str()),
        (Some("done"), Some(expected_answer.as_str())),
        "{second}"
    );
}

/// The page encodes and decodes protobuf by hand; the field numbers it uses are in one table
/// (`<script id="proto-fields">`), each of which must be the protocol's.
#[test]
fn the_page_uses_the_protocols_field_numbers() {
    let page =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("server/src/web/index.html")).unwrap();
    let start = page.find(r#"<script type="application/json" id="proto-fields">"#).expect("the field table");
    let table = &page[start..];
    let table = &table[table.find('>').unwrap() + 1..table.find("</script>").unwrap()];
    let table: serde_json::Map<String, Value> = serde_json::from_str(table).expect("the field table is JSON");
    assert!(table.len() >= 6, "{table:?}");
    for (message, fields) in &table {
        let known = gitcap_protocol::descriptor::message_fields(message)
            .unwrap_or_else(|| panic!("the page names a message the protocol lacks: {message}"));
        for (name, number) in fields.as_object().unwrap() {
            let field =
                known.iter().find(|f| &f.name == name).unwrap_or_else(|| panic!("{message}.{name} is not a field"));
            assert_eq!(Some(i64::from(field.number)), number.as_i64(), "{message}.{name}");
        }
    }
}

/// `gitcap-server caption … --json`'s text (of a question, when given).
fn one_shot_text(image: &Path, question: Option<&str>) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gitcap-server"));
    command.args(["caption", "--model"]).arg(model_dir("tiny-git-image")).arg("--image").arg(image);
    if let Some(question) = question {
        command.args(["--question", question]);
    }
    let output = command.args(["--max-new-tokens", "12", "--json"]).output().expect("running gitcap-server caption");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let reply: Value = serde_json::from_slice(&output.stdout).unwrap();
    reply["text"].as_str().unwrap().to_string()
}
