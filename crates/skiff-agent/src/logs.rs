//! Container logs: one file per container run in the CRI log format that kubelets write
//! (`<RFC 3339 time> <stdout|stderr> <F|P> <text>`), so a line keeps its stream and time,
//! and reading them back with `kubectl logs`' options (tail, since, timestamps, limit,
//! follow, previous).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

/// Longest line kept whole; longer output is split into partial (`P`) lines.
const MAX_LINE: usize = 16 * 1024;

/// The log file of one container run, shared by its stdout and stderr.
#[derive(Clone)]
pub struct LogSink {
    inner: Arc<Mutex<SinkState>>,
}

struct SinkState {
    path: PathBuf,
    /// Opened at the first write: an idle HTTP function pod holds no descriptor.
    file: Option<std::fs::File>,
    /// Unterminated output per stream (0 stdout, 1 stderr).
    partial: [Vec<u8>; 2],
    /// Attached clients, each given the output as it is written.
    followers: Vec<tokio::sync::mpsc::Sender<Output>>,
    /// The run is over: nothing more will be written.
    finished: bool,
    /// The output is written by another process (a container's shim): followers read
    /// the file as it grows.
    written_elsewhere: bool,
}

/// A piece of a run's output: the stream (0 stdout, 1 stderr) and the bytes.
pub type Output = (usize, Vec<u8>);

/// How many pieces of output an attached client may lag behind; past that it misses
/// output rather than slow the container down.
const FOLLOWER_BACKLOG: usize = 1024;

impl LogSink {
    /// The log file at `path`, created if missing and otherwise appended to: the run of a
    /// container adopted after an agent restart goes on in the log it had.
    pub fn create(path: &Path) -> std::io::Result<LogSink> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        let state = SinkState { path: path.to_path_buf(), file: None, partial: [Vec::new(), Vec::new()], followers: Vec::new(), finished: false, written_elsewhere: false };
        Ok(LogSink { inner: Arc::new(Mutex::new(state)) })
    }

    pub fn path(&self) -> PathBuf {
        self.inner.lock().unwrap().path.clone()
    }

    /// From now on the run's output is written to the file by another process (the
    /// agent still writes its notes, and says when the run is over).
    pub fn set_written_elsewhere(&self) {
        self.inner.lock().unwrap().written_elsewhere = true;
    }

    pub fn stdout(&self) -> LogStream {
        LogStream { sink: self.clone(), stream: 0 }
    }

    pub fn stderr(&self) -> LogStream {
        LogStream { sink: self.clone(), stream: 1 }
    }

    /// Writes a line on behalf of the agent (e.g. why a guest was stopped), as stderr.
    pub fn note(&self, text: &str) {
        let mut s = self.inner.lock().unwrap();
        let _ = s.file().and_then(|f| write_line(f, 1, 'F', text.as_bytes()));
    }

    /// The output written from now on, until the run ends (`kubectl attach`).
    pub fn follow(&self) -> tokio::sync::mpsc::Receiver<Output> {
        let (tx, rx) = tokio::sync::mpsc::channel(FOLLOWER_BACKLOG);
        let mut s = self.inner.lock().unwrap();
        if s.finished {
            return rx;
        }
        if s.written_elsewhere {
            // From what is there now: attach shows output from the request on.
            let offset = std::fs::metadata(&s.path).map(|m| m.len()).unwrap_or(0);
            tokio::spawn(tail(self.clone(), s.path.clone(), offset, tx));
        } else {
            s.followers.push(tx);
        }
        rx
    }

    /// Writes out what is left of unterminated lines, at the end of a run; attached
    /// clients are told the run is over.
    pub fn finish(&self) {
        let mut s = self.inner.lock().unwrap();
        s.finished = true;
        s.followers.clear();
        for stream in 0..2 {
            let rest = std::mem::take(&mut s.partial[stream]);
            if !rest.is_empty() {
                let _ = s.file().and_then(|f| write_line(f, stream, 'F', &rest));
            }
        }
    }

    pub(crate) fn write(&self, stream: usize, mut buf: &[u8]) -> std::io::Result<()> {
        let mut s = self.inner.lock().unwrap();
        if !s.followers.is_empty() {
            // A follower that went away is dropped; one that lags misses this piece.
            s.followers.retain(|f| !matches!(f.try_send((stream, buf.to_vec())), Err(tokio::sync::mpsc::error::TrySendError::Closed(_))));
        }
        s.file()?;
        let SinkState { file: Some(file), partial, .. } = &mut *s else { unreachable!("opened above") };
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line = &buf[..end];
            if partial[stream].is_empty() {
                write_line(file, stream, 'F', line)?;
            } else {
                partial[stream].extend_from_slice(line);
                let whole = std::mem::take(&mut partial[stream]);
                write_line(file, stream, 'F', &whole)?;
            }
            buf = &buf[end + 1..];
        }
        partial[stream].extend_from_slice(buf);
        if partial[stream].len() >= MAX_LINE {
            let long = std::mem::take(&mut partial[stream]);
            write_line(file, stream, 'P', &long)?;
        }
        Ok(())
    }
}

/// How often a log written by another process is read for a follower.
const TAIL_PERIOD: std::time::Duration = std::time::Duration::from_millis(100);

/// Gives `to` the lines another process appends to the log at `path` past `offset`,
/// until the run is over (or the follower leaves).
async fn tail(sink: LogSink, path: PathBuf, mut offset: u64, to: tokio::sync::mpsc::Sender<Output>) {
    loop {
        let finished = sink.inner.lock().unwrap().finished;
        let grown = read_from(&path, offset).unwrap_or_default();
        // Whole lines only; a line being written is read at the next turn.
        let whole = grown.iter().rposition(|b| *b == b'\n').map_or(0, |end| end + 1);
        offset += whole as u64;
        for line in grown[..whole].split(|b| *b == b'\n').filter_map(parse_line) {
            let mut text = line.text.to_vec();
            if line.whole {
                text.push(b'\n');
            }
            if to.send((line.stream, text)).await.is_err() {
                return;
            }
        }
        if finished {
            return;
        }
        tokio::time::sleep(TAIL_PERIOD).await;
    }
}

fn read_from(path: &Path, offset: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek};
    let mut file = std::fs::File::open(path)?;
    file.seek(std::io::SeekFrom::Start(offset))?;
    let mut out = Vec::new();
    file.read_to_end(&mut out)?;
    Ok(out)
}

impl SinkState {
    fn file(&mut self) -> std::io::Result<&mut std::fs::File> {
        if self.file.is_none() {
            self.file = Some(std::fs::OpenOptions::new().append(true).open(&self.path)?);
        }
        Ok(self.file.as_mut().expect("just opened"))
    }
}

fn write_line(file: &mut std::fs::File, stream: usize, tag: char, text: &[u8]) -> std::io::Result<()> {
    let name = if stream == 0 { "stdout" } else { "stderr" };
    let now = jiff::Timestamp::now();
    let mut line = Vec::with_capacity(text.len() + 48);
    write!(line, "{now:.9} {name} {tag} ")?;
    line.extend_from_slice(text);
    line.push(b'\n');
    file.write_all(&line)
}

/// A guest's stdout or stderr.
pub struct LogStream {
    sink: LogSink,
    stream: usize,
}

impl AsyncWrite for LogStream {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        // A local append: small and bounded, so done in place rather than on a thread.
        Poll::Ready(self.sink.write(self.stream, buf).map(|_| buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl wasmtime_wasi::cli::IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for LogStream {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LogStream { sink: self.sink.clone(), stream: self.stream })
    }
}

/// Where a pod's container logs live: `<root>/<namespace>_<pod>_<uid>/<container>/<run>.log`,
/// `run` being the container's restart count when it started.
#[derive(Debug, Clone)]
pub struct LogDir {
    root: PathBuf,
}

impl LogDir {
    pub fn new(root: PathBuf) -> Self {
        LogDir { root }
    }

    pub fn pod_dir(&self, namespace: &str, pod: &str, uid: &str) -> PathBuf {
        self.root.join(format!("{namespace}_{pod}_{uid}"))
    }

    /// Every pod's log directory.
    pub fn pod_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.root).into_iter().flatten().flatten().map(|e| e.path()).collect()
    }

    pub fn file(&self, namespace: &str, pod: &str, uid: &str, container: &str, run: u32) -> PathBuf {
        self.pod_dir(namespace, pod, uid).join(container).join(format!("{run}.log"))
    }

    /// The newest run's log of a container, and the one before it (`previous`).
    pub fn runs(&self, namespace: &str, pod: &str, uid: &str, container: &str) -> Vec<(u32, PathBuf)> {
        let dir = self.pod_dir(namespace, pod, uid).join(container);
        let mut runs: Vec<(u32, PathBuf)> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                let run = name.strip_suffix(".log")?.parse().ok()?;
                Some((run, e.path()))
            })
            .collect();
        runs.sort();
        runs
    }

    /// Keeps only the two newest runs of a container (current and previous), as kubelets do.
    pub fn prune(&self, namespace: &str, pod: &str, uid: &str, container: &str) {
        let runs = self.runs(namespace, pod, uid, container);
        for (_, path) in runs.iter().rev().skip(2) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// What `kubectl logs` asks for.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogOptions {
    #[serde(default, deserialize_with = "flag")]
    pub follow: bool,
    #[serde(default, deserialize_with = "flag")]
    pub previous: bool,
    #[serde(default, deserialize_with = "flag")]
    pub timestamps: bool,
    #[serde(default, deserialize_with = "number")]
    pub tail_lines: Option<i64>,
    #[serde(default, deserialize_with = "number")]
    pub since_seconds: Option<i64>,
    #[serde(default)]
    pub since_time: Option<jiff::Timestamp>,
    #[serde(default, deserialize_with = "number")]
    pub limit_bytes: Option<i64>,
}

fn flag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let s: String = serde::Deserialize::deserialize(d)?;
    match s.as_str() {
        "true" | "1" | "" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(serde::de::Error::custom(format!("{s:?} is not a boolean"))),
    }
}

fn number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let s: String = serde::Deserialize::deserialize(d)?;
    s.parse().map(Some).map_err(|_| serde::de::Error::custom(format!("{s:?} is not an integer")))
}

/// One parsed line of a log file.
struct Line<'a> {
    time: &'a str,
    /// 0 stdout, 1 stderr.
    stream: usize,
    text: &'a [u8],
    whole: bool,
}

fn parse_line(line: &[u8]) -> Option<Line<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let stream = if parts.next()? == b"stderr" { 1 } else { 0 };
    let tag = parts.next()?;
    let text = parts.next().unwrap_or_default();
    Some(Line { time, stream, text, whole: tag != b"P" })
}

/// Renders complete lines of a log file's bytes as `kubectl logs` shows them.
pub fn render(content: &[u8], options: &LogOptions, out: &mut Vec<u8>) {
    let since = options.since_time.or_else(|| options.since_seconds.map(|s| jiff::Timestamp::now() - jiff::SignedDuration::from_secs(s)));
    let lines: Vec<Line> = content.split(|b| *b == b'\n').filter(|l| !l.is_empty()).filter_map(parse_line)
        .filter(|l| since.is_none_or(|since| l.time.parse::<jiff::Timestamp>().is_ok_and(|t| t >= since)))
        .collect();
    let skip = match options.tail_lines {
        Some(n) if n >= 0 => lines.iter().filter(|l| l.whole).count().saturating_sub(n as usize),
        _ => 0,
    };
    let mut whole_seen = 0;
    let mut at_line_start = true;
    for line in lines {
        let counted = whole_seen;
        if line.whole {
            whole_seen += 1;
        }
        if counted < skip {
            continue;
        }
        if options.timestamps && at_line_start {
            out.extend_from_slice(line.time.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(line.text);
        if line.whole {
            out.push(b'\n');
        }
        at_line_start = line.whole;
    }
}

/// Cuts `out` to `limitBytes`, if asked.
pub fn limit(out: &mut Vec<u8>, options: &LogOptions, already_sent: u64) -> bool {
    if let Some(limit) = options.limit_bytes.filter(|l| *l >= 0) {
        let room = (limit as u64).saturating_sub(already_sent) as usize;
        if out.len() >= room {
            out.truncate(room);
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_and_read(options: &LogOptions) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let sink = LogSink::create(&path).unwrap();
        sink.write(0, b"one\ntw").unwrap();
        sink.write(1, b"err\n").unwrap();
        sink.write(0, b"o\nthree").unwrap();
        sink.finish();
        let mut out = Vec::new();
        render(&std::fs::read(&path).unwrap(), options, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn lines_keep_their_order_across_streams_and_partial_writes() {
        assert_eq!(write_and_read(&LogOptions::default()), "one\nerr\ntwo\nthree\n");
    }

    #[test]
    fn tail_and_timestamps() {
        let tail = LogOptions { tail_lines: Some(2), ..Default::default() };
        assert_eq!(write_and_read(&tail), "two\nthree\n");
        let stamped = LogOptions { timestamps: true, tail_lines: Some(1), ..Default::default() };
        let line = write_and_read(&stamped);
        let (time, text) = line.split_once(' ').unwrap();
        assert!(time.parse::<jiff::Timestamp>().is_ok(), "{line}");
        assert_eq!(text, "three\n");
    }

    #[test]
    fn since_in_the_future_shows_nothing() {
        let since = LogOptions { since_time: Some(jiff::Timestamp::now() + jiff::SignedDuration::from_secs(60)), ..Default::default() };
        assert_eq!(write_and_read(&since), "");
    }

    proptest::proptest! {
        /// Whatever a guest writes, in whatever chunks, reads back as its lines.
        #[test]
        fn output_reads_back_as_written(text in "[a-z \n]{0,200}", cuts in proptest::collection::vec(0usize..200, 0..6)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("0.log");
            let sink = LogSink::create(&path).unwrap();
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|c| *c <= text.len()).collect();
            cuts.sort();
            let mut start = 0;
            for cut in cuts.into_iter().chain([text.len()]) {
                sink.write(0, &text.as_bytes()[start..cut]).unwrap();
                start = cut;
            }
            sink.finish();
            let mut out = Vec::new();
            render(&std::fs::read(&path).unwrap(), &LogOptions::default(), &mut out);
            let mut expected = text.clone();
            if !expected.is_empty() && !expected.ends_with('\n') {
                expected.push('\n');
            }
            proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), expected);
        }

        /// Rendering a corrupt log file never panics.
        #[test]
        fn rendering_arbitrary_bytes_is_safe(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300), tail in proptest::option::of(0i64..5)) {
            let mut out = Vec::new();
            render(&bytes, &LogOptions { tail_lines: tail, timestamps: true, ..Default::default() }, &mut out);
        }
    }

    #[test]
    fn limit_cuts_bytes() {
        let mut out = b"abcdef".to_vec();
        assert!(limit(&mut out, &LogOptions { limit_bytes: Some(4), ..Default::default() }, 0));
        assert_eq!(out, b"abcd");
    }

    #[tokio::test]
    async fn a_follower_reads_what_another_process_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let agent = LogSink::create(&path).unwrap();
        agent.set_written_elsewhere();
        let mut followed = agent.follow();
        // The shim's own sink on the same file.
        let shim = LogSink::create(&path).unwrap();
        shim.write(0, b"out\npart").unwrap();
        shim.write(1, b"err\n").unwrap();
        assert_eq!(followed.recv().await.unwrap(), (0, b"out\n".to_vec()));
        assert_eq!(followed.recv().await.unwrap(), (1, b"err\n".to_vec()));
        shim.finish();
        agent.finish();
        assert_eq!(followed.recv().await.unwrap(), (0, b"part\n".to_vec()));
        assert!(followed.recv().await.is_none(), "the run is over");
    }
}
