//! `gitcap models`: the admin calls, on one server or on every replica, with load progress.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Result};
use futures::{FutureExt, StreamExt};
use gitcap_client::{
    AliasStatus, GitcapClient, ListResponse, ModelEvent, ModelState, ModelStatus, SwapOptions, SwapResponse,
};
use serde_json::{json, Value};

use crate::args::{Cli, ModelsCommand};
use crate::render::{
    alias_json, alias_line, desired_json, desired_line, models_table, progress_line, status_details, status_json,
    status_line,
};

pub async fn models(client: &GitcapClient, command: &ModelsCommand, json: bool) -> Result<()> {
    if let ModelsCommand::Watch = command {
        let mut events = client.watch_models().await?;
        while let Some(event) = events.next().await {
            match event? {
                ModelEvent::Model(status) if json => println!("{}", json!({ "model": status_json(&status) })),
                ModelEvent::Alias(alias) if json => println!("{}", json!({ "alias": alias_json(&alias) })),
                ModelEvent::DesiredState(desired) if json => {
                    println!("{}", json!({ "desired_state": desired_json(&desired) }))
                }
                ModelEvent::Model(status) => println!("model {}", status_line(&status)),
                ModelEvent::Alias(alias) => println!("alias {}", alias_line(&alias)),
                ModelEvent::DesiredState(desired) => println!("desired-state {}", desired_line(&desired)),
            }
        }
        return Ok(());
    }
    let answer = model_call(client, command, true).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer_json(&answer))?);
    } else {
        match &answer {
            Answer::List(list) => print!("{}", models_table(&list.models)),
            Answer::Details(status) => print!("{}", status_details(status)),
            Answer::Model(status) => println!("{}", status_line(status)),
            Answer::Alias(alias) => println!("{}", alias_line(alias)),
            Answer::Swap(swapped) => {
                println!("{}", alias_line(&swapped.alias.clone().unwrap_or_default()));
                println!("{}", status_line(&swapped.model.clone().unwrap_or_default()));
            }
        }
    }
    Ok(())
}

/// What a `models` command (other than `watch`) answered.
enum Answer {
    List(ListResponse),
    /// `get`: shown in full.
    Details(ModelStatus),
    /// `load`, `unload`: shown on one line.
    Model(ModelStatus),
    Alias(AliasStatus),
    Swap(SwapResponse),
}

/// Runs a `models` command other than `watch`; loads and swaps show their progress on stderr
/// when `progress` is set. A load that ends FAILED is an error.
async fn model_call(client: &GitcapClient, command: &ModelsCommand, progress: bool) -> Result<Answer> {
    Ok(match command {
        ModelsCommand::List => Answer::List(client.list_models().await?),
        ModelsCommand::Get { id } => Answer::Details(client.get_model(id).await?),
        ModelsCommand::Load { spec } => {
            let spec = spec.spec();
            let name = spec.name.clone();
            let status = if progress {
                with_progress(client, &name, client.load_model(spec)).await?
            } else {
                client.load_model(spec).await?
            };
            if status.state() == ModelState::Failed {
                bail!("{} failed to load: {}", status.id, status.error);
            }
            Answer::Model(status)
        }
        ModelsCommand::Unload { id } => Answer::Model(client.unload_model(id).await?),
        ModelsCommand::Alias { alias, id } => match parse_split(id)? {
            Some(split) => Answer::Alias(client.set_alias_split(alias, split).await?),
            None => Answer::Alias(client.set_alias(alias, id).await?),
        },
        ModelsCommand::Swap { alias, spec, replace, keep_previous } => {
            let spec = spec.spec();
            let name = spec.name.clone();
            let options = SwapOptions { replace: *replace, keep_previous: *keep_previous };
            Answer::Swap(if progress {
                with_progress(client, &name, client.swap_model(alias, spec, options)).await?
            } else {
                client.swap_model(alias, spec, options).await?
            })
        }
        ModelsCommand::Rollback { alias } => Answer::Alias(client.rollback(alias).await?),
        ModelsCommand::Watch => bail!("`models watch` is a stream, not a call"),
    })
}

/// `coco@v1=90,coco@v2=10` as a split; `None` for a plain version id.
fn parse_split(text: &str) -> Result<Option<Vec<(String, u32)>>> {
    if !text.contains('=') {
        return Ok(None);
    }
    let mut split = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((id, weight)) = part.split_once('=') else {
            bail!("{part:?}: a split is `id=weight,id=weight`, e.g. coco@v1=90,coco@v2=10");
        };
        let weight = weight.trim().parse().map_err(|_| anyhow::anyhow!("{part:?}: {weight:?} is not a weight"))?;
        split.push((id.trim().to_string(), weight));
    }
    Ok(Some(split))
}

/// The answer as JSON, as `--json` prints it.
fn answer_json(answer: &Answer) -> Value {
    match answer {
        Answer::List(list) => {
            let models: Vec<Value> = list.models.iter().map(status_json).collect();
            let desired = list.desired_state.as_ref().map(desired_json);
            let splits: serde_json::Map<String, Value> =
                list.splits.iter().map(|(alias, split)| (alias.clone(), json!(split.weights))).collect();
            json!({"models": models, "aliases": list.aliases, "splits": splits, "desired_state": desired})
        }
        Answer::Details(status) | Answer::Model(status) => status_json(status),
        Answer::Alias(alias) => alias_json(alias),
        Answer::Swap(swapped) => json!({
            "alias": alias_json(&swapped.alias.clone().unwrap_or_default()),
            "model": status_json(&swapped.model.clone().unwrap_or_default()),
        }),
    }
}

/// The answer on one line, for a replica's result line.
fn answer_line(answer: &Answer) -> String {
    match answer {
        Answer::List(list) if list.models.is_empty() => "no models".to_string(),
        Answer::List(list) => list.models.iter().map(status_line).collect::<Vec<_>>().join("; "),
        Answer::Details(status) | Answer::Model(status) => status_line(status),
        Answer::Alias(alias) => alias_line(alias),
        Answer::Swap(swapped) => format!(
            "{}; {}",
            alias_line(&swapped.alias.clone().unwrap_or_default()),
            status_line(&swapped.model.clone().unwrap_or_default())
        ),
    }
}

/// `gitcap models --replicas TARGET …`: the command on every replica at once, one line per
/// replica (`URL ok …` or `URL FAILED error`, or a JSON object with --json); an error naming the
/// replicas that failed, if any did.
pub async fn on_replicas(cli: &Cli, target: &str, command: &ModelsCommand, json: bool) -> Result<()> {
    if let ModelsCommand::Watch = command {
        bail!("`models watch` follows one server: run it with --server, once per replica");
    }
    let replicas = gitcap_client::replicas::resolve(target, &crate::client_config(cli)?).await?;
    let total = replicas.len();
    let results =
        gitcap_client::replicas::fan_out(replicas, |client| async move { model_call(&client, command, false).await })
            .await;
    let mut failed = vec![];
    for replica in results {
        let line = match (&replica.result, json) {
            (Ok(answer), true) => {
                json!({"replica": replica.url, "ok": true, "result": answer_json(answer)}).to_string()
            }
            (Err(error), true) => {
                json!({"replica": replica.url, "ok": false, "error": format!("{error:#}")}).to_string()
            }
            (Ok(answer), false) => format!("{} ok {}", replica.url, answer_line(answer)),
            (Err(error), false) => format!("{} FAILED {error:#}", replica.url),
        };
        println!("{line}");
        if replica.result.is_err() {
            failed.push(replica.url);
        }
    }
    if !failed.is_empty() {
        bail!("{} of {total} replicas failed: {}", failed.len(), failed.join(", "));
    }
    Ok(())
}

/// Runs a load or swap of model `name`, printing on stderr the state changes and download
/// progress of its versions from a watch opened beforehand.
async fn with_progress<T>(
    client: &GitcapClient,
    name: &str,
    call: impl std::future::Future<Output = gitcap_client::Result<T>>,
) -> Result<T> {
    let mut events = client.watch_models().await?;
    // What is already known is not news: the watch starts with the current state.
    let mut seen: HashMap<String, (i32, String)> =
        client.list_models().await?.models.into_iter().map(|m| (m.id.clone(), (m.state, m.progress.clone()))).collect();
    let mut report = |event: Option<gitcap_client::Result<ModelEvent>>| {
        if let Some(Ok(ModelEvent::Model(status))) = event {
            let key = (status.state, status.progress.clone());
            if status.name == name && seen.get(&status.id) != Some(&key) {
                eprintln!("{}", progress_line(&status));
                seen.insert(status.id.clone(), key);
            }
        }
    };
    let mut call = std::pin::pin!(call);
    let mut watching = true;
    let result = loop {
        tokio::select! {
            biased;
            event = events.next(), if watching => {
                watching = event.as_ref().is_some_and(|e| e.is_ok());
                report(event);
            }
            result = &mut call => break result,
        }
    };
    // Events already on their way (the final state) are still shown.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    while watching {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(event) => {
                watching = event.as_ref().is_some_and(|e| e.is_ok());
                report(event);
            }
            Err(_) => break,
        }
    }
    while let Some(event) = events.next().now_or_never().flatten() {
        report(Some(event));
    }
    Ok(result?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_answers_fit_on_one_line() {
        let ready = |id: &str| ModelStatus { id: id.into(), state: ModelState::Ready as i32, ..Default::default() };
        let list = ListResponse { models: vec![ready("a@1"), ready("b@2")], ..Default::default() };
        assert_eq!(answer_line(&Answer::List(list)), "a@1 READY; b@2 READY");
        assert_eq!(answer_line(&Answer::List(ListResponse::default())), "no models");
        let alias =
            AliasStatus { alias: "default".into(), id: "b@2".into(), previous_id: "a@1".into(), ..Default::default() };
        let swapped = SwapResponse { alias: Some(alias), model: Some(ready("b@2")) };
        assert_eq!(answer_line(&Answer::Swap(swapped)), "default -> b@2 (was a@1); b@2 READY");
        let split = AliasStatus {
            alias: "captions".into(),
            id: "b@2".into(),
            split: [("b@2".to_string(), 90), ("a@1".to_string(), 10)].into(),
            ..Default::default()
        };
        assert_eq!(answer_line(&Answer::Alias(split)), "captions -> a@1=10,b@2=90");
    }

    #[test]
    fn splits_parse_from_the_command_line() {
        assert_eq!(parse_split("coco@v1").unwrap(), None);
        let split = parse_split("coco@v1=90, coco@v2=10").unwrap().unwrap();
        assert_eq!(split, [("coco@v1".to_string(), 90), ("coco@v2".to_string(), 10)]);
        assert!(parse_split("coco@v1=ninety").unwrap_err().to_string().contains("not a weight"));
    }
}
