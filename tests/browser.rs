//! The browser page end to end: a real server, headless Chromium (`common::browser`), and what a
//! person sees. A conversation about an image (the caption and a follow-up answer equal to the
//! goldens, streamed token by token, the follow-up's features from the cache); the same flow by
//! keyboard alone, with the inference token typed in; a video (the sampled frames' timestamps,
//! dense captions on the timeline and as the `<video>`'s WebVTT track, equal to `gitcap dense
//! --format vtt`'s); the page's subtitle formatting equal to the Rust one; every protobuf field
//! number the page's hand-written encoder and decoder use is the protocol's.
//!
//! Needs Chromium (`common::tools`): CI fails without it, elsewhere the test is skipped and the
//! skip is reported by scripts/test.sh. Screenshots go to the target directory
//! (`CARGO_TARGET_TMPDIR/page*.png`); docs/page.png is one of them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use common::browser::{Browser, Page};
use common::fixtures::{cases, fixtures, model_dir};
use common::server::TestServer;
use common::tools::{self, Tool};
use gitcap_client::subtitles::{self, Segment};

const LAST_ANSWER: &str = "[...document.querySelectorAll('#conversation .answer')].at(-1)";

fn golden(name: &str) -> String {
    cases().into_iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no golden case {name}")).text
}

/// Waits for the `n`th answer of the conversation to end; returns what it shows.
fn answer(page: &mut Page, n: usize) -> Value {
    page.wait_for(&format!(
        "(() => {{ const a = document.querySelectorAll('#conversation .answer')[{}]; \
         return !!a && ['done', 'error'].includes(a.dataset.state) }})()",
        n - 1
    ));
    let shown = page.evaluate(&format!(
        "(() => {{ const a = {LAST_ANSWER}; return JSON.stringify({{ state: a.dataset.state, \
         text: a.querySelector('.text').textContent, meta: a.querySelector('.meta').textContent, \
         deltas: Number(a.dataset.deltas), cached: a.dataset.cached, \
         question: a.previousElementSibling.querySelector('.text').textContent, \
         error: document.getElementById('error').textContent }}) }})()"
    ));
    serde_json::from_str(shown.as_str().unwrap()).unwrap()
}

/// Saves a screenshot of `page` into the target directory.
fn screenshot(page: &mut Page, name: &str) -> PathBuf {
    let png = page.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, png).unwrap();
    path
}

#[test]
fn a_conversation_about_an_image_streams_goldens_and_reuses_the_features() {
    let Some(chromium) = tools::require(Tool::Chromium, "browser_page_conversation") else { return };
    let image = fixtures().join("media").join("photo.jpg");
    let (caption, question, answer_golden) =
        (golden("image_caption_greedy"), "what is in the picture?", golden("image_vqa_greedy"));
    assert_eq!(one_shot_text(&image, None), caption);

    let server = TestServer::start("tiny-git-image", &[]);
    let browser = Browser::launch(&chromium);
    let mut page = browser.page();
    page.set_viewport(1200, 760);
    page.open(&format!("{}/", server.url()));

    // The picker shows the aliases and the versions /v1/models lists.
    page.wait_for("document.getElementById('model').dataset.loaded === '3'");
    let picker = page.evaluate(
        "JSON.stringify([...document.querySelectorAll('#model optgroup')].map(g => \
         [g.label, [...g.querySelectorAll('option')].map(o => o.value)]))",
    );
    assert_eq!(picker.as_str().unwrap(), r#"[["Aliases",["default","tiny"]],["Versions",["tiny@local"]]]"#);
    page.evaluate("document.getElementById('model').value = 'tiny@local'");
    page.evaluate("document.getElementById('max_new_tokens').value = '12'");

    page.set_files("#files", &[&image]);
    page.wait_for("!!document.querySelector('#preview img') && document.querySelector('#preview img').complete");
    let preview = page.evaluate("document.querySelector('#preview img').naturalWidth > 0");
    assert_eq!(preview, Value::Bool(true), "the picked image is previewed");

    // The first message captions, token by token.
    assert_eq!(page.evaluate("document.getElementById('send').textContent"), json!("Caption"));
    page.evaluate("document.getElementById('send').click()");
    let first = answer(&mut page, 1);
    assert_eq!((first["state"].as_str(), first["text"].as_str()), (Some("done"), Some(caption.as_str())), "{first}");
    assert!(first["deltas"].as_u64().unwrap() > 1, "tokens arrived in one update: {first}");
    let meta = first["meta"].as_str().unwrap();
    assert!(meta.starts_with("tiny@local · features computed · vision "), "{first}");
    assert!(meta.contains(" · decode ") && meta.contains(" · total "), "{first}");
    assert_eq!(first["cached"], "false", "{first}");

    // A follow-up asks about the same image: the golden answer, its features from the cache.
    page.evaluate(&format!(
        "document.getElementById('message').value = '{question}'; \
         document.getElementById('message').dispatchEvent(new Event('input'))"
    ));
    assert_eq!(page.evaluate("document.getElementById('send').textContent"), json!("Ask"));
    page.evaluate("document.getElementById('send').click()");
    let second = answer(&mut page, 2);
    assert_eq!(
        (second["state"].as_str(), second["text"].as_str(), second["question"].as_str()),
        (Some("done"), Some(answer_golden.as_str()), Some(question)),
        "{second}"
    );
    assert!(second["meta"].as_str().unwrap().starts_with("tiny@local · features from the cache · "), "{second}");
    assert_eq!(second["cached"], "true", "{second}");
    let history = page.evaluate("document.querySelectorAll('#conversation li').length");
    assert_eq!(history, json!(4), "both questions and answers stay in the conversation");
    screenshot(&mut page, "page-image.png");

    // A file the server cannot decode: the answer and the alert show the gRPC status and message.
    let not_an_image = fixtures().join("golden").join("cases.json");
    page.set_files("#files", &[&not_an_image]);
    page.wait_for("document.querySelectorAll('#conversation li').length === 0");
    page.evaluate("document.getElementById('send').click()");
    let failed = answer(&mut page, 1);
    assert_eq!(failed["state"], "error", "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(error.starts_with("grpc-status 3: media.image: not an image gitcap reads (JPEG"), "{failed}");
    assert_eq!(failed["meta"].as_str(), Some(error), "{failed}");
}

/// Frames dropped on the page (a drag and drop, as from a file manager) are a video's frames: the
/// caption and the answer to a question are the goldens of those frames.
#[test]
fn dropped_frames_are_captioned_and_questioned_like_a_video() {
    let Some(chromium) = tools::require(Tool::Chromium, "browser_page_drop") else { return };
    use base64::Engine as _;
    let frames: Vec<(String, String)> = (0..6)
        .map(|i| {
            let name = format!("frame_{i}.png");
            let bytes = std::fs::read(fixtures().join("media/frames").join(&name)).unwrap();
            (name, base64::engine::general_purpose::STANDARD.encode(bytes))
        })
        .collect();
    let server = TestServer::start("tiny-git-video", &[]);
    let browser = Browser::launch(&chromium);
    let mut page = browser.page();
    page.open(&format!("{}/", server.url()));
    page.evaluate("document.getElementById('max_new_tokens').value = '12'");
    let dropped = serde_json::to_string(&frames).unwrap();
    page.evaluate(&format!(
        "(() => {{ const files = new DataTransfer(); \
         for (const [name, data] of {dropped}) \
           files.items.add(new File([Uint8Array.from(atob(data), c => c.charCodeAt(0))], name, {{ type: 'image/png' }})); \
         const zone = document.getElementById('drop'); \
         zone.dispatchEvent(new DragEvent('dragover', {{ dataTransfer: files, cancelable: true }})); \
         zone.dispatchEvent(new DragEvent('drop', {{ dataTransfer: files, cancelable: true }})); }})()"
    ));
    page.wait_for("document.querySelectorAll('#preview figure').length === 6");
    let labels =
        page.evaluate("[...document.querySelectorAll('#preview figcaption')].map(f => f.textContent).join(',')");
    assert_eq!(labels, json!("frame 1,frame 2,frame 3,frame 4,frame 5,frame 6"));
    assert_eq!(page.evaluate("document.getElementById('files').files.length"), json!(6), "the picker shows the drop");

    page.evaluate("document.getElementById('send').click()");
    let caption = answer(&mut page, 1);
    assert_eq!(caption["text"].as_str(), Some(golden("video_caption_greedy").as_str()), "{caption}");
    page.evaluate("document.getElementById('message').value = 'what is happening in the video?'");
    page.evaluate("document.getElementById('send').click()");
    let answered = answer(&mut page, 2);
    assert_eq!(answered["text"].as_str(), Some(golden("video_vqa_greedy").as_str()), "{answered}");
    assert_eq!(answered["cached"], "true", "{answered}");
}

/// The main flow by keyboard alone, on a server that needs the inference token: Tab to the token
/// field and type it (the models then load), Tab to the file picker (the file itself comes from
/// the system's dialog, set here over DevTools), Tab to the message field, Enter to caption, type
/// a question, Enter to ask. Focus is visible all along.
#[test]
fn the_main_flow_works_by_keyboard_alone_with_the_inference_token() {
    let Some(chromium) = tools::require(Tool::Chromium, "browser_page_keyboard") else { return };
    let image = fixtures().join("media").join("photo.jpg");
    let token = "page-s3cret";
    let server = TestServer::start_with_env("tiny-git-image", &[], &[("GITCAP__AUTH__INFERENCE_TOKEN", token)]);
    let browser = Browser::launch(&chromium);
    let mut page = browser.page();
    page.open(&format!("{}/", server.url()));
    page.wait_for("document.getElementById('model').dataset.loaded === 'error'");
    let error = page.evaluate("document.getElementById('error').textContent");
    assert!(error.as_str().unwrap().contains("inference token"), "{error}");

    tab_to(&mut page, "model");
    tab_to(&mut page, "max_new_tokens");
    page.type_text("12");
    tab_to(&mut page, "token");
    page.type_text(token);
    tab_to(&mut page, "files");
    page.wait_for("document.getElementById('model').dataset.loaded === '3'");
    assert_eq!(page.evaluate("document.getElementById('error').textContent"), json!(""));
    // Files that take a while to read (a network drive, a loaded machine): Enter pressed before
    // they are read still captions them.
    page.evaluate(
        "(() => { const read = Blob.prototype.arrayBuffer; Blob.prototype.arrayBuffer = function () { \
         return new Promise(done => setTimeout(done, 500)).then(() => read.call(this)) } })()",
    );
    page.set_files("#files", &[&image]);
    tab_to(&mut page, "message");
    page.press("Enter", false);
    let first = answer(&mut page, 1);
    assert_eq!(first["text"].as_str(), Some(golden("image_caption_greedy").as_str()), "{first}");
    assert_eq!(page.focused(), "message", "the focus stays where the next question is typed");
    page.type_text("what is in the picture?");
    page.press("Enter", false);
    let second = answer(&mut page, 2);
    assert_eq!(second["text"].as_str(), Some(golden("image_vqa_greedy").as_str()), "{second}");
    assert_eq!(second["cached"], "true", "{second}");
    // Shift+Tab goes back the way it came, to the file picker (the video panel is hidden).
    page.press("Tab", true);
    assert_eq!(page.focused(), "files");
}

/// Presses Tab until `id` has the focus (12 times at most), and checks the focus is visible.
fn tab_to(page: &mut Page, id: &str) {
    for _ in 0..12 {
        if page.focused() == id {
            let outline = page.evaluate(
                "(() => { const s = getComputedStyle(document.activeElement); \
                 return s.outlineStyle + ' ' + s.outlineWidth })()",
            );
            assert_eq!(outline, json!("solid 3px"), "focus on #{id} is visible");
            return;
        }
        page.press("Tab", false);
    }
    panic!("Tab never reached #{id} (at #{})", page.focused());
}

/// A video file: the caption and the sampled frames' timestamps (listed, and as ticks on the
/// timeline) are the Rust client's; dense captions (overlapping windows) stream onto the timeline
/// and become the `<video>`'s WebVTT track, the same file `gitcap dense --format vtt` prints
/// (`client/tests/subtitles_cli.rs` checks the CLI prints `subtitles::vtt` of these windows).
#[tokio::test]
async fn a_video_shows_its_frames_and_dense_captions_as_a_track() {
    let Some(chromium) = tools::require(Tool::Chromium, "browser_page_video") else { return };
    if tools::require(Tool::Ffmpeg, "browser_page_video").is_none() {
        return;
    }
    let videos = common::videos::Videos::new();
    let video = videos.encode("clip.webm", "320x240", 25, 3.0, &["-c:v", "libvpx", "-b:v", "300k"]);
    let server = TestServer::start("tiny-git-video", &[]);
    let (url, video_file) = (server.url(), video.clone());
    let shown = tokio::task::spawn_blocking(move || {
        let browser = Browser::launch(&chromium);
        let mut page = browser.page();
        page.set_viewport(1200, 760);
        page.open(&format!("{url}/"));
        page.evaluate("document.getElementById('max_new_tokens').value = '6'");
        page.set_files("#files", &[&video]);
        page.wait_for("!!document.getElementById('player') && !document.getElementById('video_panel').hidden");
        page.evaluate("document.getElementById('send').click()");
        let caption = answer(&mut page, 1);
        assert_eq!(caption["cached"], "false", "{caption}");
        page.evaluate(
            "document.getElementById('window_s').value = '2'; document.getElementById('stride_s').value = '1'; \
             document.getElementById('dense').click()",
        );
        page.wait_for("['done', 'error'].includes(document.getElementById('dense_status').dataset.state)");
        // The track's cues, once the browser has parsed them.
        page.wait_for(
            "(() => { const t = document.getElementById('player').textTracks; \
             return t.length === 1 && !!t[0].cues && t[0].cues.length > 0 })()",
        );
        page.evaluate("document.getElementById('message').value = 'what is happening in the video?'");
        page.evaluate("document.getElementById('send').click()");
        let follow_up = answer(&mut page, 2);
        let timeline = page.evaluate(
            "(async () => { const player = document.getElementById('player'); \
             const track = player.querySelector('track'); \
             return JSON.stringify({ \
               status: document.getElementById('dense_status').textContent, \
               stamps: document.getElementById('frame_stamps').textContent, \
               ticks: document.querySelectorAll('#ticks .tick').length, \
               lanes: document.querySelectorAll('#lanes .lane').length, \
               segments: [...document.querySelectorAll('#lanes .segment')].map(b => b.getAttribute('aria-label')), \
               kind: track.kind, mode: player.textTracks[0].mode, \
               vtt: await (await fetch(track.src)).text(), \
               cues: [...player.textTracks[0].cues].map(c => [c.startTime, c.endTime, c.text]) }) })()",
        );
        screenshot(&mut page, "page.png");
        (caption, follow_up, timeline)
    })
    .await
    .unwrap();
    let (caption, follow_up, timeline) = shown;
    // The Rust client's answers, asked after the page so that the page's first answer computes
    // the features.
    let client = server.client(None).await;
    let options = gitcap_client::CaptionOptions::default().max_new_tokens(6);
    let bytes = std::fs::read(&video_file).unwrap();
    let expected = client.caption(gitcap_client::Media::video(bytes.clone()), &options).await.unwrap();
    let dense = gitcap_client::DenseOptions { caption: options, window_s: 2.0, stride_s: 1.0 };
    let mut windows = client.dense_caption(gitcap_client::Media::video(bytes), &dense).await.unwrap();
    let mut segments = Vec::new();
    while let Some(window) = futures::StreamExt::next(&mut windows).await {
        segments.push(Segment::from(&window.unwrap()));
    }
    assert!(segments.len() >= 2 && segments[0].end_s > segments[1].start_s, "overlapping windows: {segments:?}");
    let expected_vtt = subtitles::vtt(&segments);

    let timeline: Value = serde_json::from_str(timeline.as_str().unwrap()).unwrap();

    assert_eq!((caption["state"].as_str(), caption["text"].as_str()), (Some("done"), Some(expected.text.as_str())));
    let stamps: Vec<String> = expected.frame_timestamps_s.iter().map(|t| format!("{t:.2}")).collect();
    let stamps = stamps.join(", ");
    assert!(caption["meta"].as_str().unwrap().ends_with(&format!(" · frames at {stamps} s")), "{caption}");
    assert_eq!(timeline["stamps"], format!("Frames the model saw: {stamps} s"), "{timeline}");
    assert_eq!(timeline["ticks"], expected.frame_timestamps_s.len(), "{timeline}");
    assert_eq!(follow_up["cached"], "true", "the follow-up reuses the video's features: {follow_up}");

    assert_eq!(timeline["vtt"], expected_vtt.as_str(), "{timeline}");
    assert_eq!((timeline["kind"].as_str(), timeline["mode"].as_str()), (Some("captions"), Some("showing")));
    let labels: Vec<String> =
        segments.iter().map(|s| format!("{:.2}–{:.2} s: {}", s.start_s, s.end_s, s.text)).collect();
    assert_eq!(timeline["segments"], json!(labels), "every window is on the timeline: {timeline}");
    assert_eq!(timeline["lanes"], 2, "overlapping windows in two lanes: {timeline}");
    // The cues the browser parsed: each window, ending where the next starts.
    let cues: Vec<(f64, f64, String)> = segments
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let end = segments.get(i + 1).map_or(s.end_s, |next| s.end_s.min(next.start_s));
            (s.start_s, end, s.text.clone())
        })
        .collect();
    let parsed: Vec<(f64, f64, String)> = serde_json::from_value(timeline["cues"].clone()).unwrap();
    assert_eq!(parsed, cues, "{timeline}");
}

/// The page builds its track with `subtitles.js`; it must write what `gitcap_client::subtitles`
/// writes, for every rule: order, overlaps, rounding, hours, markup, arrows, blank lines.
#[test]
fn the_pages_subtitles_are_the_rust_ones() {
    let Some(chromium) = tools::require(Tool::Chromium, "browser_page_subtitles") else { return };
    let segments = [
        (7325.0004999, 7330.25, "late & <b>bold</b>"),
        (1.0, 3.0, "b --> c\r\n\r\n\t two  "),
        (0.0, 2.0, "a"),
        (2.0, 2.0005, "--->>"),
        (2.5, 4.0, " \n\t "),
        (-1.0, 0.5, "before the start"),
        (3.0, 1.0, "ends before it starts"),
        (9.9995, 10.0, "ünïcödé — ✓"),
    ];
    let segments: Vec<Segment> =
        segments.iter().map(|&(start_s, end_s, text)| Segment { start_s, end_s, text: text.into() }).collect();
    let as_json: Vec<Value> =
        segments.iter().map(|s| json!({"start_s": s.start_s, "end_s": s.end_s, "text": s.text})).collect();

    let server = TestServer::start("tiny-git-image", &[]);
    let browser = Browser::launch(&chromium);
    let mut page = browser.page();
    page.open(&format!("{}/", server.url()));
    let input = serde_json::to_string(&as_json).unwrap();
    let vtt = page.evaluate(&format!("Subtitles.vtt({input})"));
    let srt = page.evaluate(&format!("Subtitles.srt({input})"));
    assert_eq!(vtt.as_str(), Some(subtitles::vtt(&segments).as_str()));
    assert_eq!(srt.as_str(), Some(subtitles::srt(&segments).as_str()));
    assert_eq!(page.evaluate("Subtitles.vtt([])"), json!("WEBVTT\n\n"));
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
    command.args(["caption", "--dtype", "f32", "--model"]).arg(model_dir("tiny-git-image")).arg("--image").arg(image);
    if let Some(question) = question {
        command.args(["--question", question]);
    }
    let output = command.args(["--max-new-tokens", "12", "--json"]).output().expect("running gitcap-server caption");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let reply: Value = serde_json::from_slice(&output.stdout).unwrap();
    reply["text"].as_str().unwrap().to_string()
}
