//! Printing answers: captions and token streams, label rankings, model states and tables.

use std::io::Write;

use anyhow::Result;
use futures::StreamExt;
use gitcap_client::proto::{self, DesiredStateStatus, FinishReason};
use gitcap_client::{AliasStatus, Caption, CaptionEvent, ModelState, ModelStatus};
use indicatif::HumanBytes;
use serde_json::{json, Value};

pub async fn print_events(
    mut events: impl futures::Stream<Item = gitcap_client::Result<CaptionEvent>> + Unpin,
    json: bool,
) -> Result<()> {
    let mut stdout = std::io::stdout();
    while let Some(event) = events.next().await {
        match event? {
            CaptionEvent::Token(token) => {
                if json {
                    let top: Vec<Value> = token
                        .top_logprobs
                        .iter()
                        .map(|t| json!({"id": t.token_id, "token": t.token, "logprob": t.logprob}))
                        .collect();
                    let value = json!({"token": {"id": token.token_id, "text": token.text_delta, "logprob": token.logprob,
                        "special": token.special, "top_logprobs": top}});
                    writeln!(stdout, "{value}")?;
                } else {
                    write!(stdout, "{}", token.text_delta)?;
                    stdout.flush()?;
                }
            }
            CaptionEvent::Done(caption) => {
                if json {
                    writeln!(stdout, "{}", json!({ "done": caption_json(&caption) }))?;
                } else {
                    writeln!(stdout)?;
                }
            }
        }
    }
    Ok(())
}

pub fn print_caption(caption: &Caption, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(&caption_json(caption)).unwrap_or_default());
    } else {
        println!("{}", caption.text);
    }
}

pub fn print_labels(ranked: &proto::ScoreLabelsResponse, json: bool) {
    if json {
        let scores: Vec<Value> = ranked
            .scores
            .iter()
            .map(
                |s| json!({"label": s.label, "logprob": s.logprob, "mean_logprob": s.mean_logprob, "tokens": s.tokens}),
            )
            .collect();
        let value = json!({"scores": scores, "model": ranked.model, "version": ranked.version});
        println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
    } else {
        let width = ranked.scores.iter().map(|s| s.label.chars().count()).max().unwrap_or(0);
        for (rank, score) in ranked.scores.iter().enumerate() {
            println!(
                "{:>2}. {:<width$}  logprob {:>9.4}  mean {:>8.4}",
                rank + 1,
                score.label,
                score.logprob,
                score.mean_logprob
            );
        }
    }
}

pub fn caption_json(caption: &Caption) -> Value {
    let finish_reason = match FinishReason::try_from(caption.finish_reason) {
        Ok(FinishReason::Eos) => "eos",
        Ok(FinishReason::Length) => "length",
        _ => "unspecified",
    };
    let usage = caption.usage.unwrap_or_default();
    let timings = caption.timings.unwrap_or_default();
    json!({
        "text": caption.text,
        "token_ids": caption.token_ids,
        "finish_reason": finish_reason,
        "model": caption.model,
        "version": caption.version,
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "image_tokens": usage.image_tokens,
            "generated_tokens": usage.generated_tokens,
            "cached_image_tokens": usage.cached_image_tokens,
        },
        "frame_timestamps_s": caption.frame_timestamps_s,
        "timings_ms": {
            "queue": timings.queue_ms,
            "vision": timings.vision_ms,
            "prefill": timings.prefill_ms,
            "decode": timings.decode_ms,
            "total": timings.total_ms,
        },
    })
}

pub fn state_name(state: i32) -> &'static str {
    match ModelState::try_from(state) {
        Ok(ModelState::Loading) => "LOADING",
        Ok(ModelState::Ready) => "READY",
        Ok(ModelState::Draining) => "DRAINING",
        Ok(ModelState::Failed) => "FAILED",
        Ok(ModelState::Unloaded) => "UNLOADED",
        _ => "UNSPECIFIED",
    }
}

pub fn progress_line(status: &ModelStatus) -> String {
    let mut line = format!("{}: {}", status.id, state_name(status.state));
    if !status.progress.is_empty() {
        line += &format!(" {}", status.progress);
    }
    if !status.error.is_empty() {
        line += &format!(": {}", status.error);
    }
    line
}

/// `id STATE key=value…` on one line.
pub fn status_line(status: &ModelStatus) -> String {
    let mut line = format!("{} {}", status.id, state_name(status.state));
    if !status.aliases.is_empty() {
        line += &format!(" aliases={}", status.aliases.join(","));
    }
    for (key, value) in [("device", &status.device), ("dtype", &status.dtype)] {
        if !value.is_empty() {
            line += &format!(" {key}={value}");
        }
    }
    if status.memory_bytes > 0 {
        line += &format!(" memory={}", HumanBytes(status.memory_bytes));
    }
    if status.load_seconds > 0.0 {
        line += &format!(" load_time={:.2}s", status.load_seconds);
    }
    if !status.progress.is_empty() {
        line += &format!(" progress={:?}", status.progress);
    }
    if !status.error.is_empty() {
        line += &format!(" error={:?}", status.error);
    }
    line
}

pub fn alias_line(alias: &AliasStatus) -> String {
    let mut line = if alias.id.is_empty() {
        format!("{} removed", alias.alias)
    } else if alias.split.is_empty() {
        format!("{} -> {}", alias.alias, alias.id)
    } else {
        let mut split: Vec<_> = alias.split.iter().collect();
        split.sort();
        let split: Vec<String> = split.iter().map(|(id, weight)| format!("{id}={weight}")).collect();
        format!("{} -> {}", alias.alias, split.join(","))
    };
    if !alias.previous_id.is_empty() {
        line += &format!(" (was {})", alias.previous_id);
    }
    line
}

fn or_dash(value: &str) -> &str {
    if value.is_empty() {
        "-"
    } else {
        value
    }
}

/// The `models list` table, columns aligned.
pub fn models_table(models: &[ModelStatus]) -> String {
    let header = ["ID", "STATE", "ALIASES", "DEVICE", "DTYPE", "MEMORY", "LOAD TIME"].map(String::from);
    let mut rows = vec![header.to_vec()];
    for m in models {
        rows.push(vec![
            m.id.clone(),
            state_name(m.state).to_string(),
            or_dash(&m.aliases.join(",")).to_string(),
            or_dash(&m.device).to_string(),
            or_dash(&m.dtype).to_string(),
            if m.memory_bytes > 0 { HumanBytes(m.memory_bytes).to_string() } else { "-".into() },
            if m.load_seconds > 0.0 { format!("{:.2}s", m.load_seconds) } else { "-".into() },
        ]);
    }
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out += cells.join("  ").trim_end();
        out.push('\n');
    }
    out
}

pub fn status_details(status: &ModelStatus) -> String {
    let mut out = String::new();
    let fields = [
        ("id", status.id.clone()),
        ("state", state_name(status.state).to_string()),
        ("aliases", status.aliases.join(", ")),
        ("source", status.source.clone()),
        ("device", status.device.clone()),
        ("dtype", status.dtype.clone()),
        ("memory", if status.memory_bytes > 0 { HumanBytes(status.memory_bytes).to_string() } else { String::new() }),
        ("load time", if status.load_seconds > 0.0 { format!("{:.2}s", status.load_seconds) } else { String::new() }),
        ("progress", status.progress.clone()),
        ("error", status.error.clone()),
    ];
    for (key, value) in fields {
        if !value.is_empty() {
            out += &format!("{:<10} {value}\n", format!("{key}:"));
        }
    }
    out
}

pub fn status_json(status: &ModelStatus) -> Value {
    json!({
        "id": status.id,
        "name": status.name,
        "version": status.version,
        "state": state_name(status.state),
        "error": status.error,
        "source": status.source,
        "device": status.device,
        "dtype": status.dtype,
        "load_seconds": status.load_seconds,
        "memory_bytes": status.memory_bytes,
        "aliases": status.aliases,
        "progress": status.progress,
    })
}

pub fn alias_json(alias: &AliasStatus) -> Value {
    json!({"alias": alias.alias, "id": alias.id, "previous_id": alias.previous_id, "split": alias.split})
}

/// Where a server following a desired-state file stands, on one line.
pub fn desired_line(desired: &DesiredStateStatus) -> String {
    let state = if desired.in_sync { "in sync" } else { "NOT in sync" };
    let mut line = format!("{} {} (content {})", desired.path, state, or_dash(&desired.content_hash));
    for error in &desired.errors {
        line += &format!("\n  {error}");
    }
    line
}

pub fn desired_json(desired: &DesiredStateStatus) -> Value {
    json!({
        "path": desired.path,
        "content_hash": desired.content_hash,
        "applied_hash": desired.applied_hash,
        "in_sync": desired.in_sync,
        "errors": desired.errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_aligns_columns_and_dashes_blanks() {
        let model = ModelStatus {
            id: "tiny@local".into(),
            state: ModelState::Ready as i32,
            aliases: vec!["default".into(), "tiny".into()],
            device: "cpu".into(),
            dtype: "f32".into(),
            memory_bytes: 2 << 20,
            load_seconds: 0.25,
            ..Default::default()
        };
        let loading = ModelStatus { id: "x@v2".into(), state: ModelState::Loading as i32, ..Default::default() };
        let table = models_table(&[model, loading]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "ID          STATE    ALIASES       DEVICE  DTYPE  MEMORY    LOAD TIME");
        assert_eq!(lines[1], "tiny@local  READY    default,tiny  cpu     f32    2.00 MiB  0.25s");
        assert_eq!(lines[2], "x@v2        LOADING  -             -       -      -         -");
    }

    #[test]
    fn progress_lines_show_progress_and_errors() {
        let mut status = ModelStatus { id: "hub@abc".into(), state: ModelState::Loading as i32, ..Default::default() };
        status.progress = "model.safetensors: 1.0 of 2.0 MB".into();
        assert_eq!(progress_line(&status), "hub@abc: LOADING model.safetensors: 1.0 of 2.0 MB");
        let failed = ModelStatus { state: ModelState::Failed as i32, error: "boom".into(), ..status };
        assert_eq!(progress_line(&failed), "hub@abc: FAILED model.safetensors: 1.0 of 2.0 MB: boom");
    }
}
