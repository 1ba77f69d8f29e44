//! Captioning many files: what `gitcap batch` reads (a directory, a JSONL manifest, a CSV), how
//! it answers one item over gRPC, and its output (JSONL or CSV), written one flushed line per
//! item as each is done, so a run stopped at any point can be resumed: [`Output::open`] with
//! `resume` reads the ids already written (dropping a last line cut short) and they are skipped.

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use serde_json::{json, Value};

use crate::media::{classify, is_video_path, MediaSource};
use crate::subtitles::{vtt, Segment};
use crate::{CaptionOptions, DenseOptions, GenerationOptions, GitcapClient, Media, VideoUploadOptions};

/// What an item's media is.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    Path(PathBuf),
    Url(String),
}

impl Source {
    fn name(&self) -> String {
        match self {
            Source::Path(path) => path.display().to_string(),
            Source::Url(url) => url.clone(),
        }
    }
}

/// One thing to caption.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    /// Its key in the output: the manifest's `id`, else its path (relative to the input) or URL.
    pub id: String,
    pub source: Source,
    pub question: Option<String>,
    pub options: Option<GenerationOptions>,
}

/// The items of `input`: a directory (its image and video files, recursively, by name), a JSONL
/// manifest (`.jsonl`/`.ndjson`: one object per line with `path` or `url`, and optionally `id`,
/// `question`, `options`), or a CSV (`.csv`: a header naming `path` or `url`, and optionally
/// `id`, `question`). Relative paths are relative to the manifest's directory.
pub fn read_items(input: &Path) -> Result<Vec<Item>> {
    let metadata = std::fs::metadata(input).with_context(|| format!("reading {}", input.display()))?;
    let items = if metadata.is_dir() {
        directory(input)?
    } else {
        let base = input.parent().unwrap_or(Path::new("."));
        let text = std::fs::read_to_string(input).with_context(|| format!("reading {}", input.display()))?;
        match input.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("jsonl" | "ndjson") => manifest(&text, base)?,
            Some("csv") => csv(&text, base)?,
            _ => bail!("{}: give a directory, a .jsonl manifest or a .csv file", input.display()),
        }
    };
    let mut ids = HashSet::new();
    for item in &items {
        if !ids.insert(item.id.as_str()) {
            bail!("{}: the id {:?} is used twice; each item needs its own", input.display(), item.id);
        }
    }
    Ok(items)
}

/// One shard of many: items `index`, `index + count`, `index + 2 × count`, … (0-based) of the
/// input, so `count` runs (the pods of an Indexed Job) split the input between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;

    /// `INDEX/COUNT`, e.g. `3/8`.
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let parsed = text.split_once('/').and_then(|(i, n)| Some((i.trim().parse().ok()?, n.trim().parse().ok()?)));
        match parsed {
            Some((index, count)) if index < count => Ok(Self { index, count }),
            _ => Err(format!("{text:?}: give INDEX/COUNT with INDEX below COUNT, e.g. 0/8")),
        }
    }
}

impl Shard {
    /// This shard's items of `items`.
    pub fn of(self, items: Vec<Item>) -> Vec<Item> {
        items.into_iter().skip(self.index).step_by(self.count).collect()
    }
}

fn directory(dir: &Path) -> Result<Vec<Item>> {
    let mut paths = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).with_context(|| format!("reading {}", next.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if matches!(classify(&path), Ok(MediaSource::Image(..) | MediaSource::Video(_))) {
                paths.push(path);
            }
        }
    }
    paths.sort();
    Ok(paths
        .into_iter()
        .map(|path| Item {
            id: path.strip_prefix(dir).unwrap_or(&path).display().to_string(),
            source: Source::Path(path),
            question: None,
            options: None,
        })
        .collect())
}

fn source(path: Option<&str>, url: Option<&str>, base: &Path, at: &str) -> Result<Source> {
    match (path, url) {
        (Some(path), None) if !path.is_empty() => Ok(Source::Path(base.join(path))),
        (None, Some(url)) if url.starts_with("http://") || url.starts_with("https://") => Ok(Source::Url(url.into())),
        (Some(path), None) if path.starts_with("http://") || path.starts_with("https://") => {
            Ok(Source::Url(path.into()))
        }
        _ => bail!("{at}: give either a path or an http(s) url"),
    }
}

fn manifest(text: &str, base: &Path) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("manifest line {}", i + 1);
        let value: Value = serde_json::from_str(line).with_context(|| format!("{at}: not JSON"))?;
        let text = |key: &str| value.get(key).and_then(Value::as_str);
        let source = source(text("path"), text("url"), base, &at)?;
        let options = match value.get("options") {
            None | Some(Value::Null) => None,
            Some(options) => Some(serde_json::from_value(options.clone()).with_context(|| format!("{at}: options"))?),
        };
        let id =
            text("id").map_or_else(|| text("path").or(text("url")).unwrap_or_default().to_string(), str::to_string);
        items.push(Item { id, source, question: text("question").map(str::to_string), options });
    }
    Ok(items)
}

fn csv(text: &str, base: &Path) -> Result<Vec<Item>> {
    let mut rows = csv_rows(text).into_iter();
    let Some(header) = rows.next() else { return Ok(vec![]) };
    let column = |name: &str| header.iter().position(|h| h.trim().eq_ignore_ascii_case(name));
    let (path, url, id, question) = (column("path"), column("url"), column("id"), column("question"));
    if path.is_none() && url.is_none() {
        bail!("the CSV's header names neither a path nor a url column");
    }
    let mut items = Vec::new();
    for (i, row) in rows.enumerate() {
        if row.iter().all(|cell| cell.trim().is_empty()) {
            continue;
        }
        let cell = |c: Option<usize>| c.and_then(|c| row.get(c)).map(String::as_str).filter(|s| !s.is_empty());
        let at = format!("CSV row {}", i + 2);
        let source = source(cell(path), cell(url), base, &at)?;
        let id = cell(id).or(cell(path)).or(cell(url)).unwrap_or_default().to_string();
        items.push(Item { id, source, question: cell(question).map(str::to_string), options: None });
    }
    Ok(items)
}

/// RFC 4180 rows: fields separated by commas, quoted with `"` (doubled inside) when they hold
/// commas, quotes or line breaks.
fn csv_rows(text: &str) -> Vec<Vec<String>> {
    let (mut rows, mut row, mut field) = (Vec::new(), Vec::new(), String::new());
    let (mut quoted, mut chars) = (false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// The output's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    #[default]
    Jsonl,
    /// `id,media,text,finish_reason,model,version,subtitles,error` with a header.
    Csv,
}

const CSV_HEADER: &str = "id,media,text,finish_reason,model,version,subtitles,error";

/// An item's outcome, one output line.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Record {
    pub id: String,
    pub media: String,
    pub text: Option<String>,
    pub finish_reason: Option<String>,
    pub model: Option<String>,
    pub version: Option<String>,
    /// With `--dense`, the WebVTT file written for a video.
    pub subtitles: Option<String>,
    pub error: Option<String>,
}

impl Record {
    fn line(&self, format: Format) -> String {
        match format {
            Format::Jsonl => json!({
                "id": self.id, "media": self.media, "text": self.text, "finish_reason": self.finish_reason,
                "model": self.model, "version": self.version, "subtitles": self.subtitles, "error": self.error,
            })
            .to_string(),
            Format::Csv => [
                &self.id,
                &self.media,
                self.text.as_deref().unwrap_or_default(),
                self.finish_reason.as_deref().unwrap_or_default(),
                self.model.as_deref().unwrap_or_default(),
                self.version.as_deref().unwrap_or_default(),
                self.subtitles.as_deref().unwrap_or_default(),
                self.error.as_deref().unwrap_or_default(),
            ]
            .map(csv_field)
            .join(","),
        }
    }
}

/// The output file: one line per item, each flushed as it is written.
pub struct Output {
    file: std::fs::File,
    format: Format,
}

impl Output {
    /// Opens `path` for the output. A file that exists is refused unless `resume`; then the ids
    /// it holds are returned (they are skipped), and a last line cut short is dropped.
    pub fn open(path: &Path, format: Format, resume: bool) -> Result<(Self, HashSet<String>)> {
        let exists = path.exists();
        if exists && !resume {
            bail!("{} exists: pass --resume to continue it, or remove it", path.display());
        }
        let mut done = HashSet::new();
        let mut keep = 0u64;
        if exists {
            let length = std::fs::metadata(path)?.len();
            let reader = std::io::BufReader::new(std::fs::File::open(path)?);
            for line in reader.split(b'\n') {
                let line = line?;
                let complete = keep + (line.len() as u64) < length;
                if !complete {
                    break;
                }
                keep += line.len() as u64 + 1;
                let text = String::from_utf8_lossy(&line);
                let id = match format {
                    Format::Jsonl => {
                        serde_json::from_str::<Value>(&text).ok().and_then(|v| v["id"].as_str().map(str::to_string))
                    }
                    Format::Csv if text == CSV_HEADER => None,
                    Format::Csv => csv_rows(&text).into_iter().next().and_then(|row| row.into_iter().next()),
                };
                done.extend(id);
            }
        }
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        file.set_len(keep)?;
        if format == Format::Csv && keep == 0 {
            file.write_all(format!("{CSV_HEADER}\n").as_bytes())?;
        }
        Ok((Self { file, format }, done))
    }

    /// Appends `record` as one line, in one write, and flushes it to the file.
    pub fn write(&mut self, record: &Record) -> Result<()> {
        let mut line = record.line(self.format);
        line.push('\n');
        self.file.write_all(line.as_bytes())?;
        self.file.flush()?;
        Ok(())
    }
}

/// How items are captioned.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub options: CaptionOptions,
    /// Videos get timestamped captions (DenseCaption), written as WebVTT into this directory.
    pub dense: Option<Dense>,
}

#[derive(Clone, Debug)]
pub struct Dense {
    pub dir: PathBuf,
    pub window_s: f64,
    pub stride_s: f64,
}

/// Answers one item; its failure is the record's `error`, not the run's.
pub async fn answer(client: &GitcapClient, item: &Item, plan: &Plan) -> Record {
    let mut record = Record { id: item.id.clone(), media: item.source.name(), ..Record::default() };
    let mut options = plan.options.clone();
    if let Some(question) = &item.question {
        options.question = question.clone();
    }
    if let Some(generation) = item.options {
        options.generation = generation;
    }
    let answered = match (&plan.dense, &item.source) {
        (Some(dense), Source::Path(path)) if is_video_path(path) => subtitles(client, item, path, dense, options).await,
        (_, source) => caption(client, source, options).await,
    };
    match answered {
        Ok(answer) => {
            record.text = Some(answer.text);
            record.finish_reason = answer.finish_reason;
            record.model = Some(answer.model);
            record.version = Some(answer.version);
            record.subtitles = answer.subtitles;
        }
        Err(error) => record.error = Some(format!("{error:#}")),
    }
    record
}

struct Answer {
    text: String,
    finish_reason: Option<String>,
    model: String,
    version: String,
    subtitles: Option<String>,
}

async fn caption(client: &GitcapClient, source: &Source, options: CaptionOptions) -> Result<Answer> {
    let caption = match source {
        Source::Url(url) => client.caption(Media::url(url), &options).await?,
        Source::Path(path) => match classify(path).with_context(|| format!("reading {}", path.display()))? {
            MediaSource::Video(path) => client.upload_video_file(&path, &VideoUploadOptions::new(options)).await?,
            MediaSource::Image(path, _) => {
                let bytes = tokio::fs::read(&path).await.with_context(|| format!("reading {}", path.display()))?;
                client.caption(Media::image(bytes), &options).await?
            }
            MediaSource::Frames(_) => bail!("{}: a directory is not one item", path.display()),
        },
    };
    let finish_reason = crate::proto::FinishReason::try_from(caption.finish_reason)
        .ok()
        .map(|r| r.as_str_name().trim_start_matches("FINISH_REASON_").to_ascii_lowercase());
    Ok(Answer { text: caption.text, finish_reason, model: caption.model, version: caption.version, subtitles: None })
}

async fn subtitles(
    client: &GitcapClient,
    item: &Item,
    path: &Path,
    dense: &Dense,
    options: CaptionOptions,
) -> Result<Answer> {
    let bytes = tokio::fs::read(path).await.with_context(|| format!("reading {}", path.display()))?;
    let request = DenseOptions { caption: options, window_s: dense.window_s, stride_s: dense.stride_s };
    let mut windows = client.dense_caption(Media::video(bytes), &request).await?;
    let (mut cues, mut model, mut version) = (Vec::new(), String::new(), String::new());
    while let Some(window) = windows.next().await {
        let window = window?;
        let caption = window.caption.unwrap_or_default();
        (model, version) = (caption.model, caption.version);
        cues.push(Segment { start_s: window.start_s, end_s: window.end_s, text: caption.text });
    }
    let name: String =
        item.id.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    let file = dense.dir.join(format!("{name}.vtt"));
    std::fs::create_dir_all(&dense.dir)?;
    std::fs::write(&file, vtt(&cues)).with_context(|| format!("writing {}", file.display()))?;
    let text = cues.iter().map(|c| c.text.as_str()).collect::<Vec<_>>().join(" ");
    Ok(Answer { text, finish_reason: None, model, version, subtitles: Some(file.display().to_string()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_and_csv_name_their_items() {
        let base = Path::new("/data");
        let items = manifest(
            "{\"path\": \"a.jpg\"}\n\n{\"url\": \"https://x/b.mp4\", \"id\": \"b\", \"question\": \"what?\", \"options\": {\"max_new_tokens\": 5}}\n",
            base,
        )
        .unwrap();
        assert_eq!(
            items[0],
            Item { id: "a.jpg".into(), source: Source::Path("/data/a.jpg".into()), question: None, options: None }
        );
        assert_eq!(items[1].source, Source::Url("https://x/b.mp4".into()));
        assert_eq!((items[1].id.as_str(), items[1].question.as_deref()), ("b", Some("what?")));
        assert_eq!(items[1].options.unwrap().max_new_tokens, Some(5));
        assert!(manifest("{\"id\": \"x\"}\n", base).is_err(), "neither path nor url");

        let items =
            csv("id,path,question\nx,\"dir, with comma/a.png\",\"say \"\"hi\"\"\"\r\ny,b.png,\n", base).unwrap();
        assert_eq!(items[0].source, Source::Path("/data/dir, with comma/a.png".into()));
        assert_eq!(items[0].question.as_deref(), Some("say \"hi\""));
        assert_eq!((items[1].id.as_str(), items[1].question.as_deref()), ("y", None));
    }

    #[test]
    fn shards_split_the_items_between_them() {
        let items: Vec<Item> = (0..7)
            .map(|i| Item {
                id: i.to_string(),
                source: Source::Url(format!("https://x/{i}")),
                question: None,
                options: None,
            })
            .collect();
        let ids = |shard: &str| -> Vec<String> {
            shard.parse::<Shard>().unwrap().of(items.clone()).into_iter().map(|i| i.id).collect()
        };
        assert_eq!(ids("0/3"), ["0", "3", "6"]);
        assert_eq!(ids("2/3"), ["2", "5"]);
        assert_eq!(ids("0/1").len(), 7);
        for bad in ["3/3", "x/2", "1", "1/0"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    #[test]
    fn resuming_skips_what_is_written_and_drops_a_cut_line() {
        let dir = tempfile::tempdir().unwrap();
        for format in [Format::Jsonl, Format::Csv] {
            let path = dir.path().join(format!("out-{format:?}"));
            let (mut output, done) = Output::open(&path, format, false).unwrap();
            assert!(done.is_empty());
            output.write(&Record { id: "a,1".into(), text: Some("x".into()), ..Default::default() }).unwrap();
            output.write(&Record { id: "b".into(), error: Some("bad".into()), ..Default::default() }).unwrap();
            drop(output);
            assert!(Output::open(&path, format, false).is_err(), "an existing output needs --resume");
            let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
            file.write_all(b"{\"id\": \"c\", \"cut").unwrap();
            let (mut output, done) = Output::open(&path, format, true).unwrap();
            assert_eq!(done, HashSet::from(["a,1".to_string(), "b".to_string()]), "{format:?}");
            output.write(&Record { id: "c".into(), ..Default::default() }).unwrap();
            let text = std::fs::read_to_string(&path).unwrap();
            assert_eq!(text.lines().count(), if format == Format::Csv { 4 } else { 3 }, "{text}");
            assert!(text.ends_with('\n') && !text.contains("\"cut"), "{text}");
        }
    }
}
