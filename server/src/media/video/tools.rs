//! Finding the `ffmpeg` and `ffprobe` programs and what version they are.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// How to get the programs, for the error a missing one gives.
const INSTALL_HINT: &str = "install FFmpeg 5.1 or newer (apt-get install ffmpeg, dnf install ffmpeg, \
    brew install ffmpeg) or give the paths of its ffmpeg and ffprobe programs";

/// The two programs, found and working.
#[derive(Debug, Clone)]
pub(crate) struct Tools {
    pub ffmpeg: PathBuf,
    pub ffprobe: PathBuf,
    /// `ffmpeg 5.1.6`, say.
    pub version: String,
}

/// Finds both programs (the given paths, else on `$PATH`) and checks that they run.
pub(crate) fn find(ffmpeg: Option<&Path>, ffprobe: Option<&Path>) -> Result<Tools, String> {
    let ffmpeg = locate("ffmpeg", ffmpeg)?;
    let ffprobe = locate("ffprobe", ffprobe)?;
    let version = version_line(&ffmpeg)?;
    version_line(&ffprobe)?;
    let version = parse_version(&version)
        .ok_or_else(|| format!("{} -version printed `{version}`, not a version of ffmpeg", ffmpeg.display()))?;
    if let Some((major, minor)) = numeric_version(&version) {
        if (major, minor) < (5, 1) {
            return Err(format!(
                "video decoding needs FFmpeg 5.1 or newer, {} is {version}; {INSTALL_HINT}",
                ffmpeg.display()
            ));
        }
    }
    Ok(Tools { ffmpeg, ffprobe, version })
}

fn locate(name: &str, given: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(path) = given {
        return if is_executable(path) {
            Ok(path.to_path_buf())
        } else {
            Err(format!("video decoding needs the {name} program, and {} is not one; {INSTALL_HINT}", path.display()))
        };
    }
    let search = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&search)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| format!("video decoding needs the {name} program, which is not on PATH; {INSTALL_HINT}"))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// The first line `program -version` prints.
fn version_line(program: &Path) -> Result<String, String> {
    let output = Command::new(program)
        .arg("-version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("{} does not run: {e}; {INSTALL_HINT}", program.display()))?;
    if !output.status.success() {
        return Err(format!("{} -version failed ({}); {INSTALL_HINT}", program.display(), output.status));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text.lines().next().unwrap_or_default().to_string())
}

/// `ffmpeg version 5.1.6-0+deb12u1 Copyright (c) …` → `ffmpeg 5.1.6-0+deb12u1`.
fn parse_version(line: &str) -> Option<String> {
    let rest = line.strip_prefix("ffmpeg version ")?;
    let version = rest.split_whitespace().next()?;
    Some(format!("ffmpeg {version}"))
}

/// `ffmpeg 5.1.6-0+deb12u1` → (5, 1); `None` for builds from git (`N-112233-g…`).
fn numeric_version(version: &str) -> Option<(u32, u32)> {
    let number = version.strip_prefix("ffmpeg ")?.trim_start_matches('n');
    let mut parts = number.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().and_then(|part| part.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_version_lines() {
        assert_eq!(
            parse_version("ffmpeg version 5.1.6-0+deb12u1 Copyright (c) 2000-2024 the FFmpeg developers").as_deref(),
            Some("ffmpeg 5.1.6-0+deb12u1")
        );
        assert_eq!(parse_version("ffprobe version 5.1.6"), None);
        assert_eq!(numeric_version("ffmpeg 5.1.6-0+deb12u1"), Some((5, 1)));
        assert_eq!(numeric_version("ffmpeg n7.0.2"), Some((7, 0)));
        assert_eq!(numeric_version("ffmpeg 4.4"), Some((4, 4)));
        assert_eq!(numeric_version("ffmpeg N-112233-gabcdef"), None);
    }

    #[test]
    fn missing_programs_say_how_to_install_them() {
        let error = find(Some(Path::new("/nonexistent/ffmpeg")), None).unwrap_err();
        assert!(error.contains("needs the ffmpeg program") && error.contains("apt-get install ffmpeg"), "{error}");
        let error = locate("ffmpeg-that-does-not-exist", None).unwrap_err();
        assert!(error.contains("not on PATH") && error.contains("brew install ffmpeg"), "{error}");
    }
}
