//! The server's spool: the directory its temporary media files (video uploads, video files in
//! requests, URL downloads) are written to, and the removal of the ones killed servers left.
//!
//! Temporary files are removed when dropped, but a process killed by SIGKILL, the OOM killer or a
//! node failure drops nothing. So each server process spools into its own directory under the
//! spool root (`media.spool_dir`, or the system's temporary directory),
//! `gitcap-spool-<pid>-<random>/`, and holds an advisory lock (`flock`) on the `lock` file inside
//! it for as long as it runs. The kernel releases that lock when the process dies, however it
//! dies, so at start-up a server removes every sibling directory whose lock it can take: their
//! owners are dead. A directory whose lock is held belongs to a live server sharing the root and
//! is never touched. Files that versions before the per-process directory wrote straight into the
//! root (`gitcap-video-*`, `gitcap-url-*`) carry no lock: those older than an hour are removed.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The name of every server's spool directory starts with this.
pub const DIR_PREFIX: &str = "gitcap-spool-";
/// The file in a spool directory its server keeps locked.
const LOCK_FILE: &str = "lock";
/// What versions without a spool directory named their files in the root.
const LOOSE_PREFIXES: [&str; 2] = ["gitcap-video-", "gitcap-url-"];
/// A lock-less spool file or directory this old is abandoned: no server takes anywhere near this
/// long between creating a directory and locking it, and a live old-version server does not keep
/// a request's file this long (video decoding is bounded by `media.video.wall_secs`).
const ABANDONED_AFTER: Duration = Duration::from_secs(3600);
/// Attempts at a directory of our own when a sweeping neighbour removes each one before it is
/// locked (it takes a start-up racing ours, at the same instant, every time).
const CREATE_ATTEMPTS: usize = 8;

/// This process's spool directory, locked while this lives and removed when it is dropped.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    /// Holds the `flock`; closing the file (or the process dying) releases it.
    _lock: File,
}

/// What a sweep of the spool root removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Spool directories of dead servers.
    pub dirs: usize,
    /// Files, in those directories and loose in the root.
    pub files: u64,
    pub bytes: u64,
    /// Entries that could not be removed (another user's, say); each was logged.
    pub failed: usize,
}

impl Spool {
    /// Creates and locks this process's directory under `root`.
    pub fn create(root: &Path) -> io::Result<Self> {
        for _ in 0..CREATE_ATTEMPTS {
            // Private: nobody else may list it, nor lock its lock file and so keep it forever.
            let dir = tempfile::Builder::new()
                .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
                .permissions(fs::Permissions::from_mode(0o700))
                .tempdir_in(root)?
                .keep();
            let lock_path = dir.join(LOCK_FILE);
            let lock = match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&lock_path) {
                Ok(lock) => lock,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            // A neighbour's sweep may have taken the lock between the file's creation and this
            // line, and removed the directory: then the lock we hold is on a file no longer
            // there, and we start again under a new name.
            if try_lock(&lock)? && is_at(&lock, &lock_path)? {
                return Ok(Self { dir, _lock: lock });
            }
        }
        Err(io::Error::other(format!(
            "no spool directory of its own in {} after {CREATE_ATTEMPTS} attempts: each was removed before it \
             could be locked",
            root.display()
        )))
    }

    /// Where this process's temporary media files go.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.dir.display(), "could not remove the spool directory: {e}");
            }
        }
    }
}

/// A server's start: removes what dead servers left in `root` (`None`: the system's temporary
/// directory) and says so in the log, then creates this process's directory there.
pub fn start(root: Option<&Path>) -> io::Result<Spool> {
    let root = root.map_or_else(std::env::temp_dir, Path::to_path_buf);
    let swept = sweep(&root);
    if swept.dirs > 0 || swept.files > 0 {
        tracing::info!(
            root = %root.display(),
            dirs = swept.dirs,
            files = swept.files,
            bytes = swept.bytes,
            "removed the spool files that killed servers left"
        );
    }
    Spool::create(&root)
}

/// Removes from `root` what dead servers left: every `gitcap-spool-*` directory whose lock can be
/// taken, and loose `gitcap-video-*`/`gitcap-url-*` files older than an hour. Never fails: an
/// entry that cannot be removed is logged and counted in [`Swept::failed`].
pub fn sweep(root: &Path) -> Swept {
    let mut swept = Swept::default();
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(root = %root.display(), "could not list the spool root for leftover files: {e}");
            swept.failed += 1;
            return swept;
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Ok(kind) = entry.file_type() else { continue };
        let path = entry.path();
        let result = if kind.is_dir() && name.starts_with(DIR_PREFIX) {
            sweep_dir(&path, &mut swept)
        } else if kind.is_file() && LOOSE_PREFIXES.iter().any(|prefix| name.starts_with(prefix)) {
            sweep_loose_file(&path, &mut swept)
        } else {
            Ok(())
        };
        match result {
            // Removed meanwhile by a neighbour's sweep.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), "could not remove a leftover spool entry: {e}");
                swept.failed += 1;
            }
            Ok(()) => {}
        }
    }
    swept
}

/// Removes a spool directory if its owner is dead (its lock can be taken).
fn sweep_dir(dir: &Path, swept: &mut Swept) -> io::Result<()> {
    let lock_path = dir.join(LOCK_FILE);
    let lock = match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&lock_path) {
        Ok(lock) => lock,
        // Being created this instant, or a server died before locking it (or a sweep died
        // halfway through removing it): only the latter grows old.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if is_abandoned(&fs::symlink_metadata(dir)?) {
                remove_dir(dir, swept)?;
            }
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    // Held: a live server. Not at its path any more: another sweep removed it meanwhile.
    if !try_lock(&lock)? || !is_at(&lock, &lock_path)? {
        return Ok(());
    }
    // Still locked while it goes, so that a second sweep leaves it alone.
    remove_dir(dir, swept)
}

/// Removes a spool directory, counting the files in it (a spool directory holds no directories;
/// any are removed uncounted). `remove_dir_all` follows no symbolic link, not even `dir` itself:
/// where others may write (/tmp), a directory swapped for a link elsewhere costs only the link.
fn remove_dir(dir: &Path, swept: &mut Swept) -> io::Result<()> {
    let mut files = (0, 0);
    for entry in fs::read_dir(dir)?.flatten() {
        // An entry's own metadata, not its target's.
        match entry.metadata() {
            Ok(metadata) if metadata.is_file() && entry.file_name() != LOCK_FILE => {
                files = (files.0 + 1, files.1 + metadata.len());
            }
            _ => {}
        }
    }
    fs::remove_dir_all(dir)?;
    swept.dirs += 1;
    swept.files += files.0;
    swept.bytes += files.1;
    Ok(())
}

/// Removes a loose file of an older version once it is abandoned (unlinking the name in the
/// root: a link is removed, never its target).
fn sweep_loose_file(path: &Path, swept: &mut Swept) -> io::Result<()> {
    let metadata = fs::symlink_metadata(path)?;
    if metadata.is_file() && is_abandoned(&metadata) {
        fs::remove_file(path)?;
        swept.files += 1;
        swept.bytes += metadata.len();
    }
    Ok(())
}

fn is_abandoned(metadata: &fs::Metadata) -> bool {
    let modified = metadata.modified().unwrap_or_else(|_| SystemTime::now());
    SystemTime::now().duration_since(modified).is_ok_and(|age| age >= ABANDONED_AFTER)
}

/// Takes an exclusive `flock` on `file` without waiting: false when another open file holds one.
fn try_lock(file: &File) -> io::Result<bool> {
    // SAFETY: flock(2) on a descriptor `file` owns for the duration of the call; no memory is
    // passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    if error.kind() == io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(error)
    }
}

/// Whether `path` still names the open `file` (it was not removed, nor replaced).
fn is_at(file: &File, path: &Path) -> io::Result<bool> {
    let open = file.metadata()?;
    match fs::symlink_metadata(path) {
        Ok(named) => Ok(named.dev() == open.dev() && named.ino() == open.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    /// A spool directory as a killed server leaves it: an unlocked lock file and its files.
    fn dead_servers_dir(root: &Path, files: &[(&str, usize)]) -> PathBuf {
        let dir = root.join(format!("{DIR_PREFIX}4242-dead"));
        fs::create_dir(&dir).unwrap();
        File::create(dir.join(LOCK_FILE)).unwrap();
        for (name, bytes) in files {
            fs::write(dir.join(name), vec![7u8; *bytes]).unwrap();
        }
        dir
    }

    fn age(path: &Path, by: Duration) {
        File::open(path).unwrap().set_modified(SystemTime::now() - by).unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn a_server_spools_in_a_locked_directory_of_its_own_that_goes_with_it() {
        let root = tempfile::tempdir().unwrap();
        let spool = Spool::create(root.path()).unwrap();
        let name = spool.dir().file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(&format!("{DIR_PREFIX}{}-", std::process::id())), "{name}");
        assert_eq!(spool.dir().parent(), Some(root.path()));
        let lock = File::open(spool.dir().join(LOCK_FILE)).unwrap();
        assert!(!try_lock(&lock).unwrap(), "the lock is not held");
        let mode = fs::metadata(spool.dir()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "the directory is not private: {mode:o}");
        drop(spool);
        assert!(names(root.path()).is_empty(), "left: {:?}", names(root.path()));
    }

    #[test]
    fn a_dead_servers_directory_is_removed_and_counted() {
        let root = tempfile::tempdir().unwrap();
        let dir = dead_servers_dir(root.path(), &[("gitcap-video-a", 1000), ("gitcap-url-b", 24)]);
        fs::create_dir(dir.join("nested")).unwrap();
        fs::write(dir.join("nested/x"), [1, 2, 3]).unwrap();
        let swept = sweep(root.path());
        assert_eq!(swept, Swept { dirs: 1, files: 2, bytes: 1024, failed: 0 });
        assert!(names(root.path()).is_empty(), "left: {:?}", names(root.path()));
    }

    #[test]
    fn a_live_servers_directory_is_never_touched() {
        let root = tempfile::tempdir().unwrap();
        let live = Spool::create(root.path()).unwrap();
        fs::write(live.dir().join("gitcap-video-inflight"), [0u8; 10]).unwrap();
        age(&live.dir().join("gitcap-video-inflight"), 2 * HOUR);
        age(live.dir(), 2 * HOUR);
        assert_eq!(sweep(root.path()), Swept::default());
        assert_eq!(names(live.dir()), ["gitcap-video-inflight", LOCK_FILE]);
        // Nor by a server starting beside it.
        let neighbour = start(Some(root.path())).unwrap();
        assert_eq!(names(live.dir()), ["gitcap-video-inflight", LOCK_FILE]);
        assert_eq!(names(root.path()).len(), 2);
        drop(neighbour);
    }

    #[test]
    fn loose_files_of_older_versions_go_after_an_hour_and_nothing_else_does() {
        let root = tempfile::tempdir().unwrap();
        for name in ["gitcap-video-old", "gitcap-url-old", "gitcap-video-young", "gitcap-videos.txt", "other"] {
            fs::write(root.path().join(name), [0u8; 5]).unwrap();
        }
        for name in ["gitcap-video-old", "gitcap-url-old", "gitcap-videos.txt", "other"] {
            age(&root.path().join(name), 2 * HOUR);
        }
        assert_eq!(sweep(root.path()), Swept { dirs: 0, files: 2, bytes: 10, failed: 0 });
        assert_eq!(names(root.path()), ["gitcap-video-young", "gitcap-videos.txt", "other"]);
    }

    #[test]
    fn a_directory_without_a_lock_goes_only_once_it_is_an_hour_old() {
        let root = tempfile::tempdir().unwrap();
        let young = root.path().join(format!("{DIR_PREFIX}1-being-created"));
        let old = root.path().join(format!("{DIR_PREFIX}2-died-before-locking"));
        fs::create_dir(&young).unwrap();
        fs::create_dir(&old).unwrap();
        age(&old, 2 * HOUR);
        assert_eq!(sweep(root.path()), Swept { dirs: 1, ..Swept::default() });
        assert_eq!(names(root.path()), [young.file_name().unwrap().to_string_lossy()]);
    }

    #[test]
    fn links_are_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let target = dead_servers_dir(elsewhere.path(), &[("precious", 3)]);
        std::os::unix::fs::symlink(&target, root.path().join(format!("{DIR_PREFIX}9-link"))).unwrap();
        std::os::unix::fs::symlink(target.join("precious"), root.path().join("gitcap-video-link")).unwrap();
        assert_eq!(sweep(root.path()), Swept::default());
        assert_eq!(names(&target), [LOCK_FILE, "precious"]);
        // Inside a dead server's directory, a link goes with it; what it points at stays.
        let dead = dead_servers_dir(root.path(), &[]);
        std::os::unix::fs::symlink(target.join("precious"), dead.join("gitcap-video-x")).unwrap();
        std::os::unix::fs::symlink(&target, dead.join("sub")).unwrap();
        assert_eq!(sweep(root.path()), Swept { dirs: 1, ..Swept::default() });
        assert!(!dead.exists());
        assert_eq!(names(&target), [LOCK_FILE, "precious"]);
    }

    #[test]
    fn a_lock_whose_file_was_removed_is_not_taken_for_the_directorys() {
        let root = tempfile::tempdir().unwrap();
        let dir = dead_servers_dir(root.path(), &[]);
        let lock_path = dir.join(LOCK_FILE);
        let lock = File::open(&lock_path).unwrap();
        assert!(is_at(&lock, &lock_path).unwrap());
        // A sweep removed it and a new file took its name: the old lock guards nothing.
        fs::remove_file(&lock_path).unwrap();
        assert!(!is_at(&lock, &lock_path).unwrap());
        File::create(&lock_path).unwrap();
        assert!(!is_at(&lock, &lock_path).unwrap());
    }
}
