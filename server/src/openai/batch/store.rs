//! The Batch API's durable state: an SQLite database (WAL) in `batch.data_dir`, beside the files'
//! contents (`files/<id>`). One connection, used only on blocking threads: every call goes
//! through [`Store::run`].
//!
//! Crash safety (a process killed at any point; a power loss may also forget the last answers,
//! which are then asked again): a file's content is written to a temporary name, synced and renamed before its
//! row is inserted (an orphan content file is removed at the next start); a line's answer is
//! inserted with the job's counters updated in one transaction, keyed by (job, line), so a line
//! is recorded at most once and a job resumed after a crash skips the lines it holds; a job's
//! output files have ids derived from the job's, so finalising again after a crash rewrites the
//! same files.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use crate::error::{GitcapError, Result};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER
);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL,
    status TEXT NOT NULL,
    total INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    ended_at INTEGER
);
CREATE TABLE IF NOT EXISTS lines (
    batch_id TEXT NOT NULL,
    line_no INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    result TEXT NOT NULL,
    PRIMARY KEY (batch_id, line_no)
) WITHOUT ROWID;
";

/// A file's record.
#[derive(Debug, Clone)]
pub struct FileRow {
    pub id: String,
    pub filename: String,
    pub purpose: String,
    pub bytes: u64,
    pub created_at: i64,
    pub expires_at: Option<i64>,
}

/// A job's record: its API object (`body`, without the counts) and its counts.
#[derive(Debug, Clone)]
pub struct BatchRow {
    pub body: Value,
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
}

impl BatchRow {
    pub fn status(&self) -> &str {
        self.body["status"].as_str().unwrap_or("failed")
    }

    /// The API object, with its request counts.
    pub fn object(&self) -> Value {
        let mut object = self.body.clone();
        if let Some(fields) = object.as_object_mut() {
            // How a job that is finalizing will end: the runner's, not the API's.
            fields.remove("_ending");
        }
        object["request_counts"] =
            serde_json::json!({ "total": self.total, "completed": self.completed, "failed": self.failed });
        object
    }
}

/// Statuses of a job that is not finished.
pub const ACTIVE: [&str; 4] = ["validating", "in_progress", "finalizing", "cancelling"];

#[derive(Clone)]
pub struct Store {
    connection: Arc<Mutex<Connection>>,
    dir: PathBuf,
}

fn internal(error: impl std::fmt::Display) -> GitcapError {
    GitcapError::Internal(format!("batch store: {error}"))
}

impl Store {
    /// Opens (creating) the database in `dir`, and removes content files no record names (an
    /// upload or output interrupted by a crash). Blocking: call at start-up.
    pub fn open(dir: &Path) -> Result<Self> {
        let setting = |e: std::io::Error| GitcapError::invalid("batch.data_dir", format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(dir.join("files")).map_err(setting)?;
        std::fs::create_dir_all(dir.join("tmp")).map_err(setting)?;
        let connection = Connection::open(dir.join("batch.sqlite3"))
            .map_err(|e| GitcapError::invalid("batch.data_dir", format!("{}: {e}", dir.display())))?;
        connection
            // WAL with synchronous NORMAL: a transaction is durable once the process has written it
            // (a crash or SIGKILL loses nothing); a power loss may lose the last ones, never
            // half of one, and a lost answer is only asked again. FULL synced every line's
            // commit and took the job to 0.4× the throughput of gRPC clients.
            .execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
            .map_err(internal)?;
        connection.execute_batch(SCHEMA).map_err(internal)?;
        let store = Self { connection: Arc::new(Mutex::new(connection)), dir: dir.to_path_buf() };
        store.remove_orphans()?;
        Ok(store)
    }

    /// Where a file's content lives.
    pub fn content_path(&self, id: &str) -> PathBuf {
        self.dir.join("files").join(id)
    }

    /// A new temporary file's path (in the same filesystem as the contents, to be renamed).
    pub fn temp_path(&self) -> PathBuf {
        self.dir.join("tmp").join(format!("{:032x}", rand::random::<u128>()))
    }

    fn remove_orphans(&self) -> Result<()> {
        let known: HashSet<String> = self.blocking(|c| {
            let mut statement = c.prepare("SELECT id FROM files")?;
            let ids = statement.query_map([], |row| row.get(0))?.collect::<rusqlite::Result<_>>();
            ids
        })?;
        for dir in ["files", "tmp"] {
            for entry in std::fs::read_dir(self.dir.join(dir)).map_err(internal)?.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if dir == "tmp" || !known.contains(&name) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(())
    }

    fn blocking<T>(&self, work: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T> {
        let mut connection = self.connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        work(&mut connection).map_err(internal)
    }

    /// Runs `work` on the connection, on a blocking thread.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.blocking(work)).await.map_err(internal)?
    }

    /// Bytes held: every file, and the answers of jobs not finalised yet.
    pub async fn disk_bytes(&self) -> Result<u64> {
        self.run(|c| {
            c.query_row(
                "SELECT (SELECT COALESCE(SUM(bytes), 0) FROM files) + (SELECT COALESCE(SUM(LENGTH(result)), 0) FROM lines)",
                [],
                |row| row.get::<_, i64>(0),
            )
        })
        .await
        .map(|n| n.max(0) as u64)
    }

    pub async fn insert_file(&self, file: FileRow) -> Result<()> {
        self.run(move |c| {
            c.execute(
                "INSERT INTO files (id, filename, purpose, bytes, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![file.id, file.filename, file.purpose, file.bytes as i64, file.created_at, file.expires_at],
            )
            .map(drop)
        })
        .await
    }

    pub async fn file(&self, id: &str) -> Result<Option<FileRow>> {
        let id = id.to_string();
        self.run(move |c| {
            c.query_row(&format!("SELECT {FILE_COLUMNS} FROM files WHERE id = ?1"), [id], file_row).optional()
        })
        .await
    }

    /// Files newest first, after the one named `after`; one more than `limit` when there are more.
    pub async fn files(&self, after: Option<String>, limit: usize, purpose: Option<String>) -> Result<Vec<FileRow>> {
        self.run(move |c| {
            let mut statement = c.prepare(&format!(
                "SELECT {FILE_COLUMNS} FROM files
                 WHERE (?1 IS NULL OR seq < (SELECT seq FROM files WHERE id = ?1))
                   AND (?2 IS NULL OR purpose = ?2)
                 ORDER BY seq DESC LIMIT ?3"
            ))?;
            let rows = statement.query_map(params![after, purpose, limit as i64 + 1], file_row)?.collect();
            rows
        })
        .await
    }

    /// Deletes a file's record and content; whether there was one.
    pub async fn delete_file(&self, id: &str) -> Result<bool> {
        let id_owned = id.to_string();
        let deleted = self.run(move |c| c.execute("DELETE FROM files WHERE id = ?1", [id_owned])).await? > 0;
        if deleted {
            let _ = tokio::fs::remove_file(self.content_path(id)).await;
        }
        Ok(deleted)
    }

    pub async fn insert_batch(&self, id: String, body: Value) -> Result<()> {
        self.run(move |c| {
            c.execute(
                "INSERT INTO batches (id, body, status) VALUES (?1, ?2, ?3)",
                params![id, body.to_string(), body["status"].as_str().unwrap_or("validating")],
            )
            .map(drop)
        })
        .await
    }

    pub async fn batch(&self, id: &str) -> Result<Option<BatchRow>> {
        let id = id.to_string();
        self.run(move |c| {
            c.query_row(&format!("SELECT {BATCH_COLUMNS} FROM batches WHERE id = ?1"), [id], batch_row).optional()
        })
        .await
    }

    /// Jobs newest first, after the one named `after`; one more than `limit` when there are more.
    pub async fn batches(&self, after: Option<String>, limit: usize) -> Result<Vec<BatchRow>> {
        self.run(move |c| {
            let mut statement = c.prepare(&format!(
                "SELECT {BATCH_COLUMNS} FROM batches
                 WHERE (?1 IS NULL OR seq < (SELECT seq FROM batches WHERE id = ?1))
                 ORDER BY seq DESC LIMIT ?2"
            ))?;
            let rows = statement.query_map(params![after, limit as i64 + 1], batch_row)?.collect();
            rows
        })
        .await
    }

    /// The ids of jobs not finished, oldest first.
    pub async fn active_batches(&self) -> Result<Vec<String>> {
        self.run(|c| {
            let mut statement = c.prepare(
                "SELECT id FROM batches WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling') ORDER BY seq",
            )?;
            let ids = statement.query_map([], |row| row.get(0))?.collect();
            ids
        })
        .await
    }

    /// How many jobs there are in each status.
    pub async fn status_counts(&self) -> Result<Vec<(String, u64)>> {
        self.run(|c| {
            let mut statement = c.prepare("SELECT status, COUNT(*) FROM batches GROUP BY status")?;
            let counts = statement.query_map([], |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64)))?.collect();
            counts
        })
        .await
    }

    /// Changes a job with `change` applied to its object, atomically; `None` when there is no such
    /// job. `change` returns whether to write (false leaves the job as it was).
    pub async fn update_batch(
        &self,
        id: &str,
        change: impl FnOnce(&mut BatchRow) -> bool + Send + 'static,
    ) -> Result<Option<BatchRow>> {
        let id = id.to_string();
        self.run(move |c| {
            let tx = c.transaction()?;
            let Some(mut row) =
                tx.query_row(&format!("SELECT {BATCH_COLUMNS} FROM batches WHERE id = ?1"), [&id], batch_row).optional()?
            else {
                return Ok(None);
            };
            if change(&mut row) {
                let ended = row.body["status"]
                    .as_str()
                    .filter(|s| !ACTIVE.contains(s))
                    .map(|_| crate::openai::batch::now());
                tx.execute(
                    "UPDATE batches SET body = ?2, status = ?3, total = ?4, ended_at = COALESCE(ended_at, ?5) WHERE id = ?1",
                    params![id, row.body.to_string(), row.status(), row.total as i64, ended],
                )?;
            }
            tx.commit()?;
            Ok(Some(row))
        })
        .await
    }

    /// The lines of a job already answered.
    pub async fn done_lines(&self, id: &str) -> Result<HashSet<u64>> {
        let id = id.to_string();
        self.run(move |c| {
            let mut statement = c.prepare("SELECT line_no FROM lines WHERE batch_id = ?1")?;
            let lines = statement.query_map([id], |row| row.get::<_, i64>(0).map(|n| n as u64))?.collect();
            lines
        })
        .await
    }

    /// Records a line's answer (`ok`: it goes to the output file, else to the error file) and
    /// counts it, in one transaction; a line already recorded is left as it was.
    pub async fn record_line(&self, id: &str, line_no: u64, ok: bool, result: String) -> Result<()> {
        let id = id.to_string();
        self.run(move |c| {
            let tx = c.transaction()?;
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO lines (batch_id, line_no, ok, result) VALUES (?1, ?2, ?3, ?4)",
                params![id, line_no as i64, ok, result],
            )?;
            if inserted > 0 {
                let column = if ok { "completed" } else { "failed" };
                tx.execute(&format!("UPDATE batches SET {column} = {column} + 1 WHERE id = ?1"), [&id])?;
            }
            tx.commit()
        })
        .await
    }

    /// Writes a job's recorded answers that succeeded (`ok`) or failed, in line order, one a line,
    /// to a new file at `path` (synced); how many bytes, `None` when there were none (no file).
    /// Streams from the database: a job's answers are never all in memory.
    pub async fn write_results(&self, id: &str, ok: bool, path: PathBuf) -> Result<Option<u64>> {
        let id = id.to_string();
        self.run(move |c| {
            let mut statement =
                c.prepare("SELECT result FROM lines WHERE batch_id = ?1 AND ok = ?2 ORDER BY line_no")?;
            let mut rows = statement.query(params![id, ok])?;
            let mut file: Option<std::io::BufWriter<std::fs::File>> = None;
            let mut bytes = 0u64;
            let io = |e: std::io::Error| rusqlite::Error::ToSqlConversionFailure(Box::new(e));
            while let Some(row) = rows.next()? {
                let line: String = row.get(0)?;
                let out = match &mut file {
                    Some(out) => out,
                    None => file.insert(std::io::BufWriter::new(std::fs::File::create(&path).map_err(io)?)),
                };
                out.write_all(line.as_bytes()).and_then(|()| out.write_all(b"\n")).map_err(io)?;
                bytes += line.len() as u64 + 1;
            }
            match file {
                None => Ok(None),
                Some(out) => {
                    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
                    file.sync_all().map_err(io)?;
                    Ok(Some(bytes))
                }
            }
        })
        .await
    }

    /// Ends a job: its output files' records (their contents already in place), its object, and
    /// its answers dropped from the database (the files hold them now), in one transaction.
    pub async fn finish_batch(&self, id: &str, files: Vec<FileRow>, body: Value) -> Result<()> {
        let id = id.to_string();
        self.run(move |c| {
            let tx = c.transaction()?;
            for file in files {
                tx.execute(
                    "INSERT OR REPLACE INTO files (id, filename, purpose, bytes, created_at, expires_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![file.id, file.filename, file.purpose, file.bytes as i64, file.created_at, file.expires_at],
                )?;
            }
            tx.execute(
                "UPDATE batches SET body = ?2, status = ?3, ended_at = ?4 WHERE id = ?1",
                params![id, body.to_string(), body["status"].as_str().unwrap_or("failed"), crate::openai::batch::now()],
            )?;
            tx.execute("DELETE FROM lines WHERE batch_id = ?1", [&id])?;
            tx.commit()
        })
        .await
    }

    /// Files whose time is up (their ids), and finished jobs' records older than `job_ttl` seconds
    /// are deleted.
    pub async fn sweep(&self, now: i64, job_ttl: Option<i64>) -> Result<Vec<String>> {
        let expired: Vec<String> = self
            .run(move |c| {
                let mut statement =
                    c.prepare("SELECT id FROM files WHERE expires_at IS NOT NULL AND expires_at <= ?1")?;
                let ids = statement.query_map([now], |row| row.get(0))?.collect::<rusqlite::Result<Vec<String>>>()?;
                if let Some(ttl) = job_ttl {
                    c.execute("DELETE FROM batches WHERE ended_at IS NOT NULL AND ended_at <= ?1", [now - ttl])?;
                }
                Ok(ids)
            })
            .await?;
        for id in &expired {
            self.delete_file(id).await?;
        }
        Ok(expired)
    }
}

const FILE_COLUMNS: &str = "id, filename, purpose, bytes, created_at, expires_at";

fn file_row(row: &rusqlite::Row) -> rusqlite::Result<FileRow> {
    Ok(FileRow {
        id: row.get(0)?,
        filename: row.get(1)?,
        purpose: row.get(2)?,
        bytes: row.get::<_, i64>(3)? as u64,
        created_at: row.get(4)?,
        expires_at: row.get(5)?,
    })
}

const BATCH_COLUMNS: &str = "body, total, completed, failed";

fn batch_row(row: &rusqlite::Row) -> rusqlite::Result<BatchRow> {
    let body: String = row.get(0)?;
    Ok(BatchRow {
        body: serde_json::from_str(&body).unwrap_or(Value::Null),
        total: row.get::<_, i64>(1)? as u64,
        completed: row.get::<_, i64>(2)? as u64,
        failed: row.get::<_, i64>(3)? as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_line_is_recorded_and_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .insert_batch("batch_1".into(), serde_json::json!({"id": "batch_1", "status": "in_progress"}))
            .await
            .unwrap();
        store.record_line("batch_1", 3, true, "first".into()).await.unwrap();
        store.record_line("batch_1", 3, false, "again".into()).await.unwrap();
        store.record_line("batch_1", 4, false, "bad".into()).await.unwrap();
        let row = store.batch("batch_1").await.unwrap().unwrap();
        assert_eq!((row.completed, row.failed), (1, 1));
        let path = dir.path().join("errors");
        assert_eq!(store.write_results("batch_1", false, path.clone()).await.unwrap(), Some(4));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "bad\n");
        let none = dir.path().join("none");
        store.record_line("batch_1", 5, true, "second".into()).await.unwrap();
        assert_eq!(store.write_results("batch_1", true, none.clone()).await.unwrap(), Some(13));
        assert_eq!(std::fs::read_to_string(&none).unwrap(), "first\nsecond\n", "in line order");
        assert_eq!(store.write_results("batch_0", true, dir.path().join("x")).await.unwrap(), None);
        assert!(!dir.path().join("x").exists());
        assert_eq!(store.done_lines("batch_1").await.unwrap(), HashSet::from([3, 4, 5]));
        drop(store);
        let reopened = Store::open(dir.path()).unwrap();
        assert_eq!(reopened.done_lines("batch_1").await.unwrap().len(), 3, "the answers survive a restart");
    }

    #[tokio::test]
    async fn content_without_a_record_is_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        std::fs::write(store.content_path("file-orphan"), b"x").unwrap();
        std::fs::write(store.content_path("file-kept"), b"{}").unwrap();
        let row = FileRow {
            id: "file-kept".into(),
            filename: "a.jsonl".into(),
            purpose: "batch".into(),
            bytes: 2,
            created_at: 0,
            expires_at: None,
        };
        store.insert_file(row).await.unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert!(!store.content_path("file-orphan").exists());
        assert!(store.content_path("file-kept").exists());
    }
}
