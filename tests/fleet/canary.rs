//! Canary splits: an alias split 90/10 between two versions, from the desired-state file (on two
//! replicas) and from the admin API; sticky route keys; per-version metrics; promotion.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use tonic::Request;

use super::common::fixtures::model_dir;
use super::common::probe::http_get;
use super::common::server::TestServer;
use super::{caption_request, desired, follower, wait_for, ADMIN};
use gitcap_client::proto::captioner_client::CaptionerClient;
use gitcap_client::{ClientConfig, GitcapClient, ModelEvent, ModelSpec};

const ROUTE_KEY: &str = "x-gitcap-route-key";

/// Sends `count` captions of `model` (8 at a time), each with its route key if `keys` has one;
/// the version that answered each, in order of the keys.
async fn versions(server: &TestServer, model: &str, count: usize, keys: Option<&[String]>) -> Vec<String> {
    let channel = server.channel().await;
    let calls = (0..count).map(|i| {
        let mut client = CaptionerClient::new(channel.clone());
        let mut request = Request::new(caption_request(model));
        if let Some(keys) = keys {
            request.metadata_mut().insert(ROUTE_KEY, keys[i].parse().unwrap());
        }
        async move { client.caption(request).await.expect("a caption").into_inner().version }
    });
    futures::stream::iter(calls).buffered(8).collect().await
}

fn share(versions: &[String], version: &str) -> f64 {
    versions.iter().filter(|v| *v == version).count() as f64 * 100.0 / versions.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_90_10_split_from_the_file_holds_and_route_keys_stick_across_replicas() {
    let _timing = super::TIMING.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("models.toml");
    let (image, wide) = (model_dir("tiny-git-image"), model_dir("tiny-git-wide"));
    let versions_in_file = [("tiny@v1", image.as_path()), ("tiny@v2", wide.as_path())];
    let split = r#"{ "tiny@v1" = 90, "tiny@v2" = 10 }"#;
    std::fs::write(&path, desired(&versions_in_file, &[("tiny", split)], "tiny")).unwrap();
    let poll = [("GITCAP__ADMIN__DESIRED_STATE_POLL_SECS", "0.1")];
    let replicas =
        [follower(&path, dir.path(), "127.0.0.1:0", &poll), follower(&path, dir.path(), "127.0.0.1:0", &poll)];

    // 1000 requests without a key: exactly 900/100, as docs/fleet.md promises (the split follows
    // a low-discrepancy sequence, not a coin toss).
    let started = std::time::Instant::now();
    let answered = versions(&replicas[0], "tiny", 1000, None).await;
    let v2 = share(&answered, "v2");
    eprintln!("1000 requests without a key: {v2:.1} % on v2 ({:?})", started.elapsed());
    assert_eq!(v2, 10.0, "{v2} % of requests went to the 10 % version");
    assert_eq!(share(&answered, "v1"), 90.0);
    // The per-version metrics count the same split.
    let metrics = http_get(&replicas[0].addr, "/metrics").2;
    // Summed over any other labels (a `protocol` one, say).
    let count = |version: &str| -> f64 {
        let prefix = format!(r#"gitcap_requests_total{{model="tiny",version="{version}","#);
        metrics
            .lines()
            .filter(|l| l.starts_with(&prefix) && l.contains(r#"rpc="Caption""#) && l.contains(r#"code="OK""#))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!((count("v1"), count("v2")), ((1000.0 - v2 * 10.0).round(), (v2 * 10.0).round()), "{metrics}");

    // Route keys: each key reaches one version, the same on both replicas and every time.
    let keys: Vec<String> = (0..300).map(|i| format!("caller-{i}")).collect();
    let first = versions(&replicas[0], "tiny", keys.len(), Some(&keys)).await;
    let again = versions(&replicas[0], "tiny", keys.len(), Some(&keys)).await;
    let elsewhere = versions(&replicas[1], "tiny", keys.len(), Some(&keys)).await;
    assert_eq!(first, again, "a key moved between versions");
    assert_eq!(first, elsewhere, "a key reached different versions on two replicas");
    let keyed = share(&first, "v2");
    eprintln!("300 keys: {keyed:.1} % on v2");
    assert!((4.0..=16.0).contains(&keyed), "{keyed} % of keys on the 10 % version");

    // Watching the alias, promote v2 by changing the weights in the file: 50/50, then all of it.
    let admin = GitcapClient::connect(ClientConfig::new(replicas[0].url()).admin_token(ADMIN)).await.unwrap();
    let list = admin.list_models().await.unwrap();
    assert_eq!(
        list.splits["tiny"].weights,
        BTreeMap::from([("tiny@v1".into(), 90), ("tiny@v2".into(), 10)]).into_iter().collect()
    );
    assert_eq!(list.aliases["tiny"], "tiny@v1", "a split's primary version");
    let mut events = admin.watch_models().await.unwrap();
    let half = r#"{ "tiny@v1" = 50, "tiny@v2" = 50 }"#;
    std::fs::write(&path, desired(&versions_in_file, &[("tiny", half)], "tiny")).unwrap();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.next()).await.unwrap().unwrap().unwrap();
        if let ModelEvent::Alias(alias) = event {
            if alias.alias == "tiny" && alias.split.get("tiny@v2") == Some(&50) {
                break;
            }
        }
    }
    let after = versions(&replicas[0], "tiny", keys.len(), Some(&keys)).await;
    // Growing v2's share only moves keys onto v2.
    for ((key, before), now) in keys.iter().zip(&first).zip(&after) {
        assert!(before == now || now == "v2", "{key} moved from {before} to {now}");
    }
    std::fs::write(&path, desired(&versions_in_file, &[("tiny", "\"tiny@v2\"")], "tiny")).unwrap();
    for replica in &replicas {
        let admin = GitcapClient::connect(ClientConfig::new(replica.url()).admin_token(ADMIN)).await.unwrap();
        wait_for(Duration::from_secs(10), "v2 takes every request", || async {
            admin.list_models().await.unwrap().splits.is_empty()
        })
        .await;
        assert_eq!(share(&versions(replica, "tiny", 50, None).await, "v2"), 100.0);
    }
}

#[tokio::test]
async fn the_admin_api_splits_an_alias_and_promotes_by_weights() {
    let server = TestServer::start_with_env(
        "tiny-git-image",
        &[],
        &[("GITCAP__AUTH__ADMIN_TOKEN", ADMIN), ("GITCAP__ADMIN__MODEL_ROOTS", model_dir("").to_str().unwrap())],
    );
    let admin = GitcapClient::connect(ClientConfig::new(server.url()).admin_token(ADMIN)).await.unwrap();
    let wide = model_dir("tiny-git-wide");
    admin.load_model(ModelSpec::new("tiny", wide.to_str().unwrap()).version("v2")).await.unwrap();
    let alias = admin.set_alias_split("tiny", [("tiny@local", 75), ("tiny@v2", 25)]).await.unwrap();
    assert_eq!((alias.id.as_str(), alias.previous_id.as_str()), ("tiny@local", "tiny@local"));
    assert_eq!(alias.split.len(), 2);
    let answered = versions(&server, "tiny", 200, None).await;
    assert_eq!(share(&answered, "v2"), 25.0, "200 requests at 75/25 are 150/50");
    let model = admin.get_model("tiny@v2").await.unwrap();
    assert_eq!(model.aliases, ["tiny"], "a version lists the splits it is in");

    // A split naming a version that is not loaded changes nothing.
    let error = admin.set_alias_split("tiny", [("tiny@local", 50), ("tiny@v9", 50)]).await.unwrap_err();
    assert!(error.to_string().contains("tiny@v9"), "{error}");
    let error = admin.set_alias_split("tiny", [("tiny@local", 0)]).await.unwrap_err();
    assert!(error.to_string().contains("split"), "{error}");
    assert_eq!(admin.list_models().await.unwrap().splits["tiny"].weights.len(), 2);

    // Promotion; unloading a version of a split leaves the others serving.
    admin.set_alias_split("tiny", [("tiny@local", 0), ("tiny@v2", 100)]).await.unwrap();
    assert_eq!(share(&versions(&server, "tiny", 20, None).await, "v2"), 100.0);
    admin.set_alias_split("tiny", [("tiny@local", 50), ("tiny@v2", 50)]).await.unwrap();
    admin.unload_model("tiny@local").await.unwrap();
    let list = admin.list_models().await.unwrap();
    assert_eq!((list.aliases["tiny"].as_str(), list.splits.len()), ("tiny@v2", 0));
    assert_eq!(share(&versions(&server, "tiny", 20, None).await, "v2"), 100.0);
}
