//! `gitcap batch`: caption every item of a directory, a JSONL manifest or a CSV, `--concurrency`
//! at a time, writing one flushed output line per item as it is done (gitcap_client::batch), with
//! a progress bar. Ctrl-C stops at once and leaves an output `--resume` continues.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use futures::StreamExt;
use gitcap_client::batch::{answer, read_items, Format, Output, Plan, Shard};
use gitcap_client::GitcapClient;
use indicatif::{ProgressBar, ProgressStyle};

/// What `gitcap batch` reads and writes.
pub struct Files<'a> {
    pub input: &'a Path,
    pub out: &'a Path,
    pub format: Format,
    pub resume: bool,
    pub shard: Option<Shard>,
}

/// `gitcap batch`.
pub async fn batch(client: GitcapClient, files: Files<'_>, concurrency: usize, plan: Plan) -> Result<ExitCode> {
    let Files { input, out, format, resume, shard } = files;
    let mut items = read_items(input)?;
    if let Some(shard) = shard {
        items = shard.of(items);
    }
    let (mut output, done) = Output::open(out, format, resume).with_context(|| format!("opening {}", out.display()))?;
    let todo: Vec<_> = items.into_iter().filter(|item| !done.contains(&item.id)).collect();
    let bar = ProgressBar::new(todo.len() as u64);
    let template = "{spinner} {bar:30} {pos}/{len} done, {msg} failed, {per_sec}, ETA {eta}";
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    if !done.is_empty() {
        say(&bar, format!("resuming: {} items already in {}", done.len(), out.display()));
    }
    bar.set_message("0");
    let (client, plan) = (Arc::new(client), Arc::new(plan));
    let mut answers = futures::stream::iter(todo)
        .map(|item| {
            let (client, plan) = (client.clone(), plan.clone());
            async move { answer(&client, &item, &plan).await }
        })
        .buffer_unordered(concurrency.max(1));
    let mut failed = 0u64;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let record = tokio::select! {
            record = answers.next() => match record { Some(record) => record, None => break },
            _ = &mut interrupted => {
                bar.abandon_with_message(failed.to_string());
                say(&bar, format!("interrupted: {} is complete up to here; run again with --resume to continue", out.display()));
                return Ok(ExitCode::from(130));
            }
        };
        if let Some(error) = &record.error {
            failed += 1;
            bar.set_message(failed.to_string());
            say(&bar, format!("{}: {error}", record.id));
        }
        output.write(&record)?;
        bar.inc(1);
    }
    bar.finish();
    say(&bar, format!("{} done, {failed} failed: {}", bar.position(), out.display()));
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(2) })
}

/// A line on stderr, above the progress bar (which is hidden when stderr is not a terminal).
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}
