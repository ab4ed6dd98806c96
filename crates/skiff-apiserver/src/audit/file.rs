//! Where audit events go: JSON lines appended to a file by a thread of its own, so a
//! request never waits on the disk (kube-apiserver's batch mode). The writer wakes every
//! [`WRITE_EVERY`] and writes what has queued: a request queueing a line never wakes it
//! (on a two-core machine, a thread woken per request cost a fifth of the API's create
//! rate), and the file gets one write per interval. The file is rotated past a size, its
//! backups named by time as kube-apiserver names them
//! (`audit-2026-12-02T13-05-07.123.log`), the oldest beyond a count removed. When the
//! writer falls behind by a whole buffer, events are dropped and counted, not queued
//! without bound. [`AuditFile::close`] writes out what is queued (a clean stop loses
//! nothing; a crash, at most the last interval).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the writer writes out what has queued.
const WRITE_EVERY: Duration = Duration::from_millis(100);
/// Events waiting for the writer at most: ten times the API's create rate per interval.
const BUFFER: usize = 20_000;

#[derive(Debug, Clone)]
pub struct Rotation {
    /// Rotate once the file passes this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept.
    pub max_backups: usize,
}

pub struct AuditFile {
    lines: SyncSender<Vec<u8>>,
    dropped: AtomicU64,
    /// Set to have the writer write out what is queued and stop; and the writer.
    writer: Mutex<Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>>,
}

impl AuditFile {
    /// Opens (or creates) `path` for appending, owner-only, and starts its writer.
    pub fn open(path: &Path, rotation: Rotation) -> std::io::Result<AuditFile> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = open_append(path)?;
        let (lines, receive) = std::sync::mpsc::sync_channel(BUFFER);
        let path = path.to_path_buf();
        let closing = Arc::new(AtomicBool::new(false));
        let told = closing.clone();
        let writer = std::thread::Builder::new().name("audit-log".into()).spawn(move || write_lines(receive, path, file, rotation, &told))?;
        Ok(AuditFile { lines, dropped: AtomicU64::new(0), writer: Mutex::new(Some((closing, writer))) })
    }

    /// Queues one line (without its newline).
    pub fn write(&self, line: Vec<u8>) {
        match self.lines.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(dropped, "the audit log's writer is behind; events are being dropped");
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Writes out every queued line and stops the writer; later lines are not written.
    pub fn close(&self) {
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((closing, handle)) = writer {
            closing.store(true, Ordering::Release);
            handle.thread().unpark();
            let _ = handle.join();
        }
    }
}

impl Drop for AuditFile {
    fn drop(&mut self) {
        self.close();
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

fn write_lines(lines: Receiver<Vec<u8>>, path: PathBuf, file: std::fs::File, rotation: Rotation, closing: &AtomicBool) {
    let mut size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, file);
    loop {
        // (Read first: lines queued before `close` are written in this round.)
        let last_round = closing.load(Ordering::Acquire);
        let gone = loop {
            let mut line = match lines.try_recv() {
                Ok(line) => line,
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            };
            line.push(b'\n');
            if size > 0 && size + line.len() as u64 > rotation.max_bytes {
                flush(&mut out, &path);
                match rotate(&path, &rotation) {
                    Ok(file) => {
                        out = std::io::BufWriter::with_capacity(64 * 1024, file);
                        size = 0;
                    }
                    Err(e) => tracing::warn!(error = %e, path = %path.display(), "rotating the audit log"),
                }
            }
            if let Err(e) = out.write_all(&line) {
                tracing::warn!(error = %e, path = %path.display(), "writing the audit log");
            }
            size += line.len() as u64;
        };
        flush(&mut out, &path);
        if gone || last_round {
            return;
        }
        std::thread::park_timeout(WRITE_EVERY);
    }
}

fn flush(out: &mut std::io::BufWriter<std::fs::File>, path: &Path) {
    if let Err(e) = out.flush() {
        tracing::warn!(error = %e, path = %path.display(), "writing the audit log");
    }
}

/// Renames the full file to a timestamped backup, removes the oldest backups beyond the
/// count, and opens a new file.
fn rotate(path: &Path, rotation: &Rotation) -> std::io::Result<std::fs::File> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let (stem, ext) = stem_and_extension(path);
    // Named by the millisecond; a name taken (two rotations within one) takes the next.
    let mut at = jiff::Timestamp::now();
    let backup = loop {
        let name = dir.join(format!("{stem}-{}{ext}", at.strftime("%Y-%m-%dT%H-%M-%S%.3f")));
        if !name.exists() {
            break name;
        }
        at += jiff::SignedDuration::from_millis(1);
    };
    std::fs::rename(path, backup)?;
    let mut backups: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("{stem}-")) && n.ends_with(&ext)))
        .collect();
    // The timestamps sort as the backups were made.
    backups.sort();
    let excess = backups.len().saturating_sub(rotation.max_backups);
    for old in &backups[..excess] {
        let _ = std::fs::remove_file(old);
    }
    open_append(path)
}

/// `audit` and `.log` of `audit.log`.
fn stem_and_extension(path: &Path) -> (String, String) {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("audit").to_string();
    let ext = path.extension().and_then(|s| s.to_str()).map(|e| format!(".{e}")).unwrap_or_default();
    (stem, ext)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_appended_and_rotated_with_backups_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let file = AuditFile::open(&path, Rotation { max_bytes: 100, max_backups: 2 }).unwrap();
        for i in 0..30 {
            file.write(format!("{{\"n\":{i}}}").into_bytes());
        }
        // Closing writes out what is queued.
        file.close();
        let mut files: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        files.sort();
        assert_eq!(files.len(), 3, "the file and two backups: {files:?}");
        assert!(files.iter().filter(|n| n.starts_with("audit-") && n.ends_with(".log")).count() == 2);
        let current = std::fs::read_to_string(&path).unwrap();
        assert!(current.len() <= 100 && current.ends_with("{\"n\":29}\n"), "{current:?}");
        // No line is split across files.
        for name in &files {
            for line in std::fs::read_to_string(dir.path().join(name)).unwrap().lines() {
                serde_json::from_str::<serde_json::Value>(line).unwrap();
            }
        }
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
