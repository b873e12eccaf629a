//! Serves one log subscription from the log files the executor keeps: the lines already written
//! (all, or the last `tail` of each stream; rotated files first), then, when following, new
//! lines as they are written, until the subscription closes or its tasks leave this node.
//! Reads the files; never writes them. The files hold no timestamps: lines already written get
//! their file's modification time, followed lines the time they were read.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shoal_proto::dispatcher_client::DispatcherClient;
use shoal_proto::time::{ms_since_epoch, now_ms};
use shoal_proto::{LogMessage, LogSubscription, PublishLogsMessage};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::Worker;

/// How often followed files are checked for new lines.
const POLL: Duration = Duration::from_millis(200);
/// A following subscription whose tasks this node does not know ends after this long.
const UNKNOWN_GRACE: Duration = Duration::from_secs(5);
/// Lines and bytes per message.
const BATCH_LINES: usize = 100;
const BATCH_BYTES: usize = 64 * 1024;
/// A line longer than this is sent in pieces.
const MAX_LINE: usize = 16 * 1024;
/// How many rotated files (`<file>.1` …) are read at most.
const MAX_ROTATED: u32 = 16;

/// Streams the lines `sub` asks for on a `PublishLogs` call. Without follow, an empty message
/// after the lines says this node is done.
pub(crate) async fn publish(
    worker: Worker,
    mut client: DispatcherClient<Channel>,
    session_id: String,
    sub: LogSubscription,
) {
    let (tx, rx) = mpsc::channel(8);
    let out = Outbox { tx, session_id, subscription_id: sub.id.clone() };
    let call = client.publish_logs(ReceiverStream::new(rx));
    let (result, ()) = tokio::join!(call, produce(&worker, &sub, out));
    if let Err(e) = result {
        tracing::debug!(subscription = %sub.id, error = %e, "publishing logs ended");
    }
}

struct Outbox {
    tx: mpsc::Sender<PublishLogsMessage>,
    session_id: String,
    subscription_id: String,
}

impl Outbox {
    /// Sends `lines` in messages of bounded size; false when the managers stopped listening.
    async fn send(&self, lines: Vec<LogMessage>) -> bool {
        let mut batch = Vec::new();
        let mut bytes = 0;
        for line in lines {
            bytes += line.data.len();
            batch.push(line);
            if batch.len() >= BATCH_LINES || bytes >= BATCH_BYTES {
                if !self.message(std::mem::take(&mut batch)).await {
                    return false;
                }
                bytes = 0;
            }
        }
        batch.is_empty() || self.message(batch).await
    }

    async fn message(&self, messages: Vec<LogMessage>) -> bool {
        let msg = PublishLogsMessage {
            session_id: self.session_id.clone(),
            subscription_id: self.subscription_id.clone(),
            messages,
        };
        self.tx.send(msg).await.is_ok()
    }
}

async fn produce(worker: &Worker, sub: &LogSubscription, out: Outbox) {
    let mut followers: Vec<Follower> = Vec::new();
    let mut pending: Vec<String> = Vec::new();
    for id in &sub.task_ids {
        match worker.executor().log_paths(id) {
            Some(paths) => {
                let (task, tail) = (id.clone(), sub.tail as usize);
                let read = tokio::task::spawn_blocking(move || history(&task, paths, tail)).await;
                let Ok((lines, mut fs)) = read else { continue };
                if !out.send(lines).await {
                    return;
                }
                followers.append(&mut fs);
            }
            None => pending.push(id.clone()),
        }
    }
    if !sub.follow {
        out.message(Vec::new()).await;
        return;
    }
    let started = Instant::now();
    loop {
        tokio::time::sleep(POLL).await;
        if out.tx.is_closed() {
            return;
        }
        let known = sub.task_ids.iter().any(|id| worker.knows(id));
        if !known && started.elapsed() > UNKNOWN_GRACE {
            return;
        }
        followers.retain(|f| worker.knows(&f.task_id) || started.elapsed() <= UNKNOWN_GRACE);
        pending.retain(|id| match worker.executor().log_paths(id) {
            Some(paths) => {
                followers.extend(Follower::both(id, paths));
                false
            }
            None => true,
        });
        let now = now_ms();
        let mut lines = Vec::new();
        for f in &mut followers {
            lines.extend(f.read_new(now));
        }
        if !out.send(lines).await {
            return;
        }
    }
}

/// What task `id` has written so far (the last `tail` lines of each stream, 0: all), and the
/// followers positioned after it.
fn history(
    id: &str,
    (stdout, stderr): (PathBuf, PathBuf),
    tail: usize,
) -> (Vec<LogMessage>, Vec<Follower>) {
    let mut lines = Vec::new();
    let mut followers = Vec::new();
    for (stream, path) in [(1, stdout), (2, stderr)] {
        let mut f = Follower::new(id, stream, path);
        let mut these = Vec::new();
        for rotated in f.rotated_files() {
            these.extend(whole_lines(id, stream, &rotated));
        }
        these.extend(f.read_new(f.modified_ms()));
        if let Some(partial) = f.take_partial(f.modified_ms()) {
            these.push(partial);
        }
        if tail > 0 && these.len() > tail {
            these.drain(..these.len() - tail);
        }
        lines.extend(these);
        followers.push(f);
    }
    (lines, followers)
}

/// Every line of a rotated file, stamped with its modification time.
fn whole_lines(id: &str, stream: i32, path: &Path) -> Vec<LogMessage> {
    let Ok(bytes) = std::fs::read(path) else { return Vec::new() };
    let ts = modified_ms(path);
    let mut out: Vec<LogMessage> =
        bytes.split(|b| *b == b'\n').map(|l| message(id, stream, ts, l)).collect();
    if bytes.last() == Some(&b'\n') || bytes.is_empty() {
        out.pop();
    }
    out
}

/// Reads one log file as it grows, across rotation (renamed away) and truncation.
#[derive(Debug)]
struct Follower {
    task_id: String,
    stream: i32,
    path: PathBuf,
    file: Option<File>,
    ino: u64,
    pos: u64,
    partial: Vec<u8>,
}

impl Follower {
    fn new(task_id: &str, stream: i32, path: PathBuf) -> Follower {
        let mut f = Follower {
            task_id: task_id.into(),
            stream,
            path,
            file: None,
            ino: 0,
            pos: 0,
            partial: Vec::new(),
        };
        f.open();
        f
    }

    /// Followers of both streams from their start (a task whose logs appeared later).
    fn both(id: &str, (stdout, stderr): (PathBuf, PathBuf)) -> Vec<Follower> {
        vec![Follower::new(id, 1, stdout), Follower::new(id, 2, stderr)]
    }

    fn open(&mut self) {
        self.file = File::open(&self.path).ok();
        self.ino = self.file.as_ref().and_then(|f| f.metadata().ok()).map_or(0, |m| m.ino());
        self.pos = 0;
    }

    /// Existing rotated files, oldest first.
    fn rotated_files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = (1..=MAX_ROTATED)
            .map(|n| PathBuf::from(format!("{}.{n}", self.path.display())))
            .take_while(|p| p.exists())
            .collect();
        v.reverse();
        v
    }

    fn modified_ms(&self) -> i64 {
        modified_ms(&self.path)
    }

    /// Complete lines written since the last call, stamped `ts`.
    fn read_new(&mut self, ts: i64) -> Vec<LogMessage> {
        let mut out = Vec::new();
        self.drain(ts, &mut out);
        match std::fs::metadata(&self.path) {
            Ok(m) if m.ino() != self.ino => {
                self.open();
                self.drain(ts, &mut out);
            }
            Ok(m) if m.len() < self.pos => {
                if let Some(f) = self.file.as_mut() {
                    let _ = f.seek(SeekFrom::Start(0));
                }
                self.pos = 0;
                self.drain(ts, &mut out);
            }
            _ => {}
        }
        out
    }

    fn drain(&mut self, ts: i64, out: &mut Vec<LogMessage>) {
        let Some(file) = self.file.as_mut() else { return };
        let mut buf = [0u8; 64 * 1024];
        while let Ok(n @ 1..) = file.read(&mut buf) {
            self.pos += n as u64;
            for b in &buf[..n] {
                if *b == b'\n' {
                    out.push(message(&self.task_id, self.stream, ts, &self.partial));
                    self.partial.clear();
                } else {
                    self.partial.push(*b);
                    if self.partial.len() >= MAX_LINE {
                        out.push(message(&self.task_id, self.stream, ts, &self.partial));
                        self.partial.clear();
                    }
                }
            }
        }
    }

    /// The unfinished last line, if any (sent when not following).
    fn take_partial(&mut self, ts: i64) -> Option<LogMessage> {
        (!self.partial.is_empty()).then(|| {
            let m = message(&self.task_id, self.stream, ts, &self.partial);
            self.partial.clear();
            m
        })
    }
}

fn message(task_id: &str, stream: i32, timestamp_ms: i64, data: &[u8]) -> LogMessage {
    LogMessage { task_id: task_id.into(), timestamp_ms, stream, data: data.to_vec() }
}

fn modified_ms(path: &Path) -> i64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map(ms_since_epoch)
        .unwrap_or_else(|_| now_ms())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(lines: &[LogMessage]) -> Vec<String> {
        lines.iter().map(|l| format!("{}:{}", l.stream, String::from_utf8_lossy(&l.data))).collect()
    }

    #[test]
    fn history_reads_rotated_files_first_and_tails_each_stream() {
        let dir = tempfile::tempdir().unwrap();
        let (out, err) = (dir.path().join("stdout.log"), dir.path().join("stderr.log"));
        std::fs::write(dir.path().join("stdout.log.2"), "a\nb\n").unwrap();
        std::fs::write(dir.path().join("stdout.log.1"), "c\n").unwrap();
        std::fs::write(&out, "d\npartial").unwrap();
        std::fs::write(&err, "oops\n").unwrap();
        let (all, _) = history("t", (out.clone(), err.clone()), 0);
        assert_eq!(texts(&all), ["1:a", "1:b", "1:c", "1:d", "1:partial", "2:oops"]);
        let (last, _) = history("t", (out, err), 2);
        assert_eq!(texts(&last), ["1:d", "1:partial", "2:oops"]);
    }

    #[test]
    fn a_follower_sees_appends_rotation_and_truncation() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout.log");
        std::fs::write(&path, "old\n").unwrap();
        let mut f = Follower::new("t", 1, path.clone());
        assert_eq!(texts(&f.read_new(0)), ["1:old"]);
        let mut w = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        w.write_all(b"new\nhalf").unwrap();
        assert_eq!(texts(&f.read_new(0)), ["1:new"]);
        w.write_all(b" done\n").unwrap();
        std::fs::rename(&path, dir.path().join("stdout.log.1")).unwrap();
        std::fs::write(&path, "fresh\n").unwrap();
        assert_eq!(texts(&f.read_new(0)), ["1:half done", "1:fresh"]);
        std::fs::write(&path, "").unwrap();
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"x\n").unwrap();
        assert_eq!(texts(&f.read_new(0)), ["1:x"]);
    }
}
