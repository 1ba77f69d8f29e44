//! Spool files of killed servers: a server killed with SIGKILL (the OOM killer, a node failure)
//! while a video upload is half sent leaves its spool directory behind; the next server on the
//! same `media.spool_dir` removes it at start-up, never the files of a live server sharing the
//! root, and a server stopped cleanly removes its own. Each test starts its servers on 127.0.0.1
//! with a temporary spool root and generates its video with ffmpeg.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use common::server::TestServer;
use common::spool::spooled;
use common::tools::{self, Tool};
use common::videos::Videos;
use gitcap_client::{CaptionOptions, VideoUploadOptions};

const MODEL: &str = "tiny-git-video";

/// An `UploadVideo` call under way.
type Upload = JoinHandle<gitcap_client::Result<gitcap_client::Caption>>;

/// How long a server may take to exit, and a call to end.
const EXIT_LIMIT: Duration = Duration::from_secs(30);

fn server_on(root: &Path) -> TestServer {
    TestServer::start_with_env(MODEL, &[], &[("GITCAP__MEDIA__SPOOL_DIR", root.to_str().unwrap())])
}

/// A small H.264 clip (the model's 6 frames are sampled from it).
fn clip(videos: &Videos) -> Vec<u8> {
    std::fs::read(videos.h264_mp4("clip.mp4", "64x48", 10, 2.0)).unwrap()
}

/// An `UploadVideo` call that sends the first half of `video` at once and the rest when `rest`
/// fires (never, if it is dropped first): until then its spool file holds half a video.
fn half_sent_upload(server: &TestServer, video: &[u8]) -> (oneshot::Sender<()>, Upload) {
    let (first, second) = video.split_at(video.len() / 2);
    let (rest, released) = oneshot::channel::<()>();
    let second = second.to_vec();
    let chunks = futures::stream::iter([first.to_vec()]).chain(
        futures::stream::once(async move { released.await.map(|()| second) })
            .filter_map(|sent| async move { sent.ok() }),
    );
    let url = server.url();
    let call = tokio::spawn(async move {
        let client = gitcap_client::GitcapClient::connect(gitcap_client::ClientConfig::new(url)).await?;
        let upload = VideoUploadOptions::new(CaptionOptions::default().max_new_tokens(4));
        client.upload_video(chunks, &upload).await
    });
    (rest, call)
}

/// Waits (up to 10 s) until the spooled media files under `root`, other than `known`, are
/// `count`; returns them.
async fn new_spool_files(root: &Path, known: &[PathBuf], count: usize) -> Vec<PathBuf> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let new: Vec<PathBuf> = spooled(root).into_iter().filter(|path| !known.contains(path)).collect();
        if new.len() == count {
            return new;
        }
        assert!(Instant::now() < until, "expected {count} new spool files under {root:?}, found {new:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGKILL, and the upload `call` it was receiving fails.
async fn kill(server: &mut TestServer, call: Upload) {
    server.signal("KILL");
    assert!(server.wait_exit(EXIT_LIMIT).is_some(), "the server survived SIGKILL");
    let ended = tokio::time::timeout(EXIT_LIMIT, call).await.expect("the upload outlived its server by 30 s");
    assert!(ended.unwrap().is_err(), "the upload succeeded without its server");
}

fn entries(root: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(root).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    entries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_servers_spool_is_removed_by_the_next_server_and_a_stopped_ones_by_itself() {
    if tools::require(Tool::Ffmpeg, "spool_cleanup_killed_server").is_none() {
        return;
    }
    let videos = Videos::new();
    let video = clip(&videos);
    let root = tempfile::tempdir().unwrap();

    let mut killed = server_on(root.path());
    let (_never, call) = half_sent_upload(&killed, &video);
    let left = new_spool_files(root.path(), &[], 1).await.remove(0);
    kill(&mut killed, call).await;
    assert!(left.exists(), "SIGKILL removes nothing: {left:?} should still be there");

    let mut next = server_on(root.path());
    assert!(!left.exists(), "the next server kept the killed one's spool file {left:?}");
    let remaining = entries(root.path());
    assert_eq!(remaining.len(), 1, "only the new server's own directory may remain: {remaining:?}");
    assert!(spooled(root.path()).is_empty(), "{:?}", spooled(root.path()));

    next.signal_term();
    let status = next.wait_exit(EXIT_LIMIT).expect("the server did not stop on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert_eq!(entries(root.path()), Vec::<PathBuf>::new(), "a server stopped cleanly left its spool");
}

/// Tests run many servers side by side on one /tmp: a server's start-up must never take a live
/// neighbour's files for a dead one's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_servers_spool_survives_the_start_of_a_server_beside_it() {
    if tools::require(Tool::Ffmpeg, "spool_cleanup_live_neighbour").is_none() {
        return;
    }
    let videos = Videos::new();
    let video = clip(&videos);
    let root = tempfile::tempdir().unwrap();

    let survivor = server_on(root.path());
    let (release, survivors_call) = half_sent_upload(&survivor, &video);
    let survivors_file = new_spool_files(root.path(), &[], 1).await.remove(0);

    let mut victim = server_on(root.path());
    let (_never, victims_call) = half_sent_upload(&victim, &video);
    let victims_file = new_spool_files(root.path(), std::slice::from_ref(&survivors_file), 1).await.remove(0);
    kill(&mut victim, victims_call).await;

    let _third = server_on(root.path());
    assert!(!victims_file.exists(), "the killed server's spool file {victims_file:?} was kept");
    assert!(survivors_file.exists(), "a live server's in-flight spool file {survivors_file:?} was removed");

    // The survivor's upload completes on the file it had half written.
    release.send(()).unwrap();
    let caption = tokio::time::timeout(EXIT_LIMIT, survivors_call)
        .await
        .expect("the survivor's upload did not finish in 30 s")
        .unwrap()
        .expect("the survivor's upload failed");
    assert_eq!(caption.frame_timestamps_s.len(), 6, "{caption:?}");
    assert!(!survivors_file.exists(), "the finished upload's file was kept");
}

/// SIGTERM the moment the port is announced (a rollout that changes its mind): the server stops
/// cleanly, exit 0, and takes its spool directory with it. Its signal handlers were once set only
/// when serving began, after the announcement: such a SIGTERM killed it, leaving its spool behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stopped_as_soon_as_it_listens_stops_cleanly_and_removes_its_spool() {
    let root = tempfile::tempdir().unwrap();
    let mut server = server_on(root.path());
    server.signal_term();
    let status = server.wait_exit(EXIT_LIMIT).expect("the server did not stop on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert_eq!(entries(root.path()), Vec::<PathBuf>::new(), "a server stopped cleanly left its spool");
}
