// The page: a model picker (GET /v1/models), media picked or dropped with a preview, a
// conversation over the same media (CaptionStream: the first message captions, follow-ups ask),
// and for a video its sampled frames and dense captions (DenseCaption) on a timeline and as a
// WebVTT track on the <video>.
"use strict";

const $ = (id) => document.getElementById(id);
// Protobuf field numbers, by message and field name (tests/browser.rs checks them).
const F = JSON.parse($("proto-fields").textContent);
const G = GrpcWeb;

// `loading`: the files being read (a question asked meanwhile waits for them); `picks` counts
// picks, so that only the latest one's files are kept.
const state = { media: null, loading: Promise.resolve(), picks: 0, busy: null, segments: [], stamps: [], trackUrl: null };
const token = () => $("token").value.trim();

function showError(message) { $("error").textContent = message; }

// --- Models: aliases first, then versions (name@version). ---
async function loadModels() {
  const select = $("model"), chosen = select.value;
  try {
    const headers = token() ? { authorization: "Bearer " + token() } : {};
    const response = await fetch("/v1/models", { headers });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error ? body.error.message : "HTTP " + response.status);
    const ids = body.data.map((m) => m.id);
    const group = (label, members) => {
      const optgroup = document.createElement("optgroup");
      optgroup.label = label;
      optgroup.append(...members.map((id) => new Option(id, id)));
      return optgroup;
    };
    select.replaceChildren(new Option("server default", ""),
      group("Aliases", ids.filter((id) => !id.includes("@"))), group("Versions", ids.filter((id) => id.includes("@"))));
    if (ids.includes(chosen)) select.value = chosen;
    select.dataset.loaded = String(ids.length);
    showError("");
  } catch (error) {
    select.dataset.loaded = "error";
    showError("listing the models: " + error.message + (token() ? "" : " (does the server need an inference token?)"));
  }
}

// --- Media: one video file, or images (one image, or several as a video's frames). ---
function pick(fileList) {
  state.loading = setMedia(fileList, ++state.picks);
}

async function setMedia(fileList, pickNumber) {
  const files = [...fileList];
  const videos = files.filter((f) => f.type.startsWith("video/"));
  if (videos.length && files.length > 1) { showError("pick one video file, or images"); return; }
  showError("");
  if (state.busy) state.busy.abort();
  const read = await Promise.all(files.map(async (f) => ({ name: f.name, type: f.type, bytes: new Uint8Array(await f.arrayBuffer()), file: f })));
  if (pickNumber !== state.picks) return;
  const kind = videos.length ? "video" : read.length === 1 ? "image" : "frames";
  state.media = read.length ? { kind, files: read } : null;
  state.segments = []; state.stamps = [];
  $("conversation").replaceChildren();
  $("empty").hidden = false;
  renderPreview();
  renderVideoPanel();
  updateSend();
}

function renderPreview() {
  const preview = $("preview");
  preview.replaceChildren();
  if (!state.media) return;
  if (state.media.kind === "video") {
    const video = document.createElement("video");
    video.id = "player"; video.controls = true; video.preload = "metadata";
    video.src = URL.createObjectURL(state.media.files[0].file);
    video.setAttribute("aria-label", "The picked video: " + state.media.files[0].name);
    video.addEventListener("loadedmetadata", renderTimeline);
    video.addEventListener("timeupdate", markCurrentSegment);
    preview.append(video);
    return;
  }
  state.media.files.forEach((f, i) => {
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.src = URL.createObjectURL(f.file);
    img.alt = state.media.kind === "frames" ? `frame ${i + 1}: ${f.name}` : f.name;
    const caption = document.createElement("figcaption");
    caption.textContent = state.media.kind === "frames" ? `frame ${i + 1}` : f.name;
    figure.append(img, caption);
    preview.append(figure);
  });
}

function encodeMedia() {
  const media = [], { kind, files } = state.media;
  if (kind === "video") G.bytesField(media, F.Media.video, files[0].bytes);
  else if (kind === "image") G.bytesField(media, F.Media.image, files[0].bytes);
  else {
    const frames = [];
    for (const f of files) G.bytesField(frames, F.Frames.frames, f.bytes);
    G.bytesField(media, F.Media.frames, G.concat(frames));
  }
  return G.concat(media);
}

function encodeOptions() {
  const options = [], maxNewTokens = Number($("max_new_tokens").value);
  if (maxNewTokens) G.varintField(options, F.GenerationOptions.max_new_tokens, maxNewTokens);
  return G.concat(options);
}

// The fields every generating request starts with (CaptionRequest and DenseCaptionRequest
// number them alike; the table says so).
function requestStart(M, question) {
  const out = [], model = $("model").value;
  if (model) G.stringField(out, M.model, model);
  G.bytesField(out, M.media, encodeMedia());
  if (question) G.stringField(out, M.question, question);
  G.bytesField(out, M.options, encodeOptions());
  return out;
}

// --- The conversation. ---
function addMessage(role, text) {
  const item = document.createElement("li");
  item.className = role;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = role === "user" ? "You" : "gitcap";
  const body = document.createElement("p");
  body.className = "text";
  body.textContent = text;
  item.append(who, body);
  $("conversation").append(item);
  $("empty").hidden = true;
  return item;
}

const ms = (value) => value.toFixed(value < 1 ? 2 : 1) + " ms";
const secondsList = (stamps) => stamps.map((t) => t.toFixed(2)).join(", ");

function describeAnswer(done) {
  const R = F.CaptionResponse, T = F.Timings, timings = G.message(done, R.timings);
  const vision = G.num(timings, T.vision_ms);
  // The engine says when the frames' image tokens came from the feature cache.
  const cached = G.num(G.message(done, R.usage), F.Usage.cached_image_tokens) > 0;
  const stamps = G.doubles(done, R.frame_timestamps_s);
  const parts = [
    `${G.text(done, R.model)}@${G.text(done, R.version)}`,
    cached ? "features from the cache" : "features computed",
    `vision ${ms(vision)}`, `prefill ${ms(G.num(timings, T.prefill_ms))}`,
    `decode ${ms(G.num(timings, T.decode_ms))}`, `total ${ms(G.num(timings, T.total_ms))}`,
  ];
  if (stamps.length) parts.push(`frames at ${secondsList(stamps)} s`);
  return { text: parts.join(" · "), cached, stamps };
}

async function ask(question) {
  await state.loading;
  if (!state.media) { showError("pick or drop an image, frames or a video first"); return; }
  showError("");
  addMessage("user", question || "Caption this.");
  const answer = addMessage("answer", "");
  const output = answer.querySelector(".text");
  const meta = document.createElement("p");
  meta.className = "meta";
  answer.append(meta);
  Object.assign(answer.dataset, { state: "running", deltas: "0" });
  answer.setAttribute("aria-busy", "true");
  const controller = new AbortController();
  setBusy(controller);
  try {
    const request = G.concat(requestStart(F.CaptionRequest, question));
    await G.call("/gitcap.v1.Captioner/CaptionStream", request, { token: token(), signal: controller.signal }, (event) => {
      if (event[F.CaptionEvent.token]) {
        const delta = G.text(G.message(event, F.CaptionEvent.token), F.TokenEvent.text_delta);
        if (delta) { output.textContent += delta; answer.dataset.deltas = Number(answer.dataset.deltas) + 1; }
      }
      if (event[F.CaptionEvent.done]) {
        const done = G.message(event, F.CaptionEvent.done), described = describeAnswer(done);
        output.textContent = G.text(done, F.CaptionResponse.text);
        meta.textContent = described.text;
        answer.dataset.cached = String(described.cached);
        if (described.stamps.length) { state.stamps = described.stamps; renderVideoPanel(); }
      }
    });
    answer.dataset.state = "done";
  } catch (error) {
    answer.dataset.state = "error";
    const message = controller.signal.aborted ? "stopped" : error.message;
    meta.textContent = message;
    if (!controller.signal.aborted) showError(message);
  } finally {
    answer.removeAttribute("aria-busy");
    setBusy(null);
  }
}

function setBusy(controller) {
  state.busy = controller;
  $("send").disabled = !!controller;
  $("dense").disabled = !!controller;
  $("stop").hidden = !controller;
  if (!controller && document.activeElement === document.body) $("message").focus();
}

function updateSend() {
  $("send").textContent = $("message").value.trim() ? "Ask" : "Caption";
}

// --- Video: the sampled frames and dense captions on a timeline, and the WebVTT track. ---
function renderVideoPanel() {
  const isVideo = !!state.media && state.media.kind === "video";
  $("video_panel").hidden = !isVideo;
  $("frame_stamps").textContent = state.stamps.length ? `Frames the model saw: ${secondsList(state.stamps)} s` : "";
  $("downloads").hidden = state.segments.length === 0;
  if (isVideo) renderTimeline();
}

function duration() {
  const player = $("player");
  const known = player && Number.isFinite(player.duration) ? player.duration : 0;
  return Math.max(known, ...state.segments.map((s) => s.end_s), ...state.stamps, 0.001);
}

const percent = (t) => (100 * t / duration()).toFixed(3) + "%";

function renderTimeline() {
  $("ticks").replaceChildren(...state.stamps.map((t) => {
    const tick = document.createElement("span");
    tick.className = "tick"; tick.style.left = percent(t); tick.title = `frame at ${t.toFixed(2)} s`;
    return tick;
  }));
  // Overlapping windows go to separate lanes.
  const laneEnds = [];
  const lanes = [];
  for (const segment of state.segments) {
    let lane = laneEnds.findIndex((end) => end <= segment.start_s);
    if (lane < 0) { lane = laneEnds.length; laneEnds.push(0); lanes.push([]); }
    laneEnds[lane] = segment.end_s;
    const button = document.createElement("button");
    button.type = "button"; button.className = "segment";
    button.style.left = percent(segment.start_s);
    button.style.width = `calc(${percent(segment.end_s - segment.start_s)} - 2px)`;
    button.textContent = segment.text;
    button.title = `${segment.start_s.toFixed(2)}–${segment.end_s.toFixed(2)} s: ${segment.text}`;
    button.setAttribute("aria-label", button.title);
    button.dataset.start = segment.start_s;
    button.dataset.end = segment.end_s;
    button.addEventListener("click", () => { const player = $("player"); if (player) player.currentTime = segment.start_s; });
    lanes[lane].push(button);
  }
  $("lanes").replaceChildren(...lanes.map((buttons) => {
    const lane = document.createElement("div");
    lane.className = "lane";
    lane.append(...buttons);
    return lane;
  }));
  markCurrentSegment();
}

function markCurrentSegment() {
  const player = $("player"), t = player ? player.currentTime : -1;
  for (const button of document.querySelectorAll("#lanes .segment")) {
    const on = t >= Number(button.dataset.start) && t < Number(button.dataset.end);
    if (on) button.setAttribute("aria-current", "time"); else button.removeAttribute("aria-current");
  }
}

function setTrack() {
  const player = $("player");
  if (!player) return;
  const vtt = Subtitles.vtt(state.segments);
  if (state.trackUrl) URL.revokeObjectURL(state.trackUrl);
  state.trackUrl = URL.createObjectURL(new Blob([vtt], { type: "text/vtt" }));
  for (const old of player.querySelectorAll("track")) old.remove();
  const track = document.createElement("track");
  Object.assign(track, { kind: "captions", label: "Dense captions", srclang: "en", default: true, src: state.trackUrl });
  player.append(track);
  track.track.mode = "showing";
  $("download_vtt").href = state.trackUrl;
  $("download_srt").href = URL.createObjectURL(new Blob([Subtitles.srt(state.segments)], { type: "text/plain" }));
}

async function denseCaptions() {
  await state.loading;
  if (!state.media || state.media.kind !== "video") return;
  const status = $("dense_status");
  showError("");
  state.segments = [];
  status.dataset.state = "running";
  status.textContent = "Captioning the video window by window…";
  const controller = new AbortController();
  setBusy(controller);
  try {
    const M = F.DenseCaptionRequest, out = requestStart(M, "");
    const windowS = Number($("window_s").value), strideS = Number($("stride_s").value);
    if (windowS) G.doubleField(out, M.window_s, windowS);
    if (strideS) G.doubleField(out, M.stride_s, strideS);
    await G.call("/gitcap.v1.Captioner/DenseCaption", G.concat(out), { token: token(), signal: controller.signal }, (event) => {
      const E = F.DenseCaptionEvent, caption = G.message(event, E.caption);
      state.segments.push({ start_s: G.num(event, E.start_s), end_s: G.num(event, E.end_s), text: G.text(caption, F.CaptionResponse.text) });
      status.textContent = `${state.segments.length} windows captioned…`;
      renderVideoPanel();
      setTrack();
    });
    status.dataset.state = "done";
    status.textContent = `${state.segments.length} windows captioned; they are the video's captions track.`;
  } catch (error) {
    status.dataset.state = "error";
    status.textContent = controller.signal.aborted ? "stopped" : "dense captioning failed";
    if (!controller.signal.aborted) showError(error.message);
  } finally {
    setBusy(null);
  }
}

// --- Wiring. ---
$("files").addEventListener("change", () => pick($("files").files));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  $("files").files = e.dataTransfer.files;
  pick(e.dataTransfer.files);
});
$("message").addEventListener("input", updateSend);
$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  if (state.busy) return;
  const question = $("message").value.trim();
  $("message").value = "";
  updateSend();
  ask(question);
});
$("dense_form").addEventListener("submit", (e) => { e.preventDefault(); if (!state.busy) denseCaptions(); });
$("stop").addEventListener("click", () => state.busy && state.busy.abort());
document.addEventListener("keydown", (e) => { if (e.key === "Escape" && state.busy) state.busy.abort(); });
$("token").addEventListener("change", loadModels);
loadModels();
