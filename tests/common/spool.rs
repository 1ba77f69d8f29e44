//! The media files a server spools (video uploads and files, URL downloads) under a
//! `media.spool_dir`, wherever in it they are: in a server's own `gitcap-spool-*` directory, or
//! (before those) loose in the root.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// What spooled media files' names start with.
pub const PREFIXES: [&str; 2] = ["gitcap-video-", "gitcap-url-"];

/// Every spooled media file under `root`, at any depth (links are not followed), sorted.
pub fn spooled(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    collect(root, &mut found);
    found.sort();
    found
}

/// The spooled media files under `root` whose names start with `prefix`.
pub fn spooled_with(root: &Path, prefix: &str) -> Vec<PathBuf> {
    spooled(root).into_iter().filter(|path| file_name(path).starts_with(prefix)).collect()
}

fn collect(dir: &Path, found: &mut Vec<PathBuf>) {
    // A directory may vanish while it is read (its server's request ended, or a sweep).
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else { continue };
        let path = entry.path();
        if kind.is_dir() {
            collect(&path, found);
        } else if kind.is_file() && PREFIXES.iter().any(|prefix| file_name(&path).starts_with(prefix)) {
            found.push(path);
        }
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default()
}
