//! Captures a task's stdout and stderr into per-task log files, rotating by size
//! (`stdout.log`, `stdout.log.1`, ... oldest dropped). Owns the files; never parses the output.

use std::io::Write;
use std::path::{Path, PathBuf};

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use super::error::{Result, RuntimeError};

/// How big a log file may grow and how many rotated files are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogLimits {
    pub max_bytes: u64,
    /// Rotated files kept besides the current one.
    pub max_files: u32,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits { max_bytes: 10 << 20, max_files: 3 }
    }
}

/// A log file that rotates itself when it reaches its size limit.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    file: std::fs::File,
    written: u64,
    limits: LogLimits,
}

impl RotatingFile {
    /// Opens (appending to) `path`.
    pub fn open(path: &Path, limits: LogLimits) -> Result<RotatingFile> {
        let file = open_append(path)?;
        let written = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(RotatingFile { path: path.to_path_buf(), file, written, limits })
    }

    /// Appends `buf`, rotating first if it would pass the limit.
    pub fn write(&mut self, buf: &[u8]) -> Result<()> {
        if self.written > 0 && self.written + buf.len() as u64 > self.limits.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(buf).map_err(|e| RuntimeError::io("writing log", &self.path, e))?;
        self.written += buf.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> Result<()> {
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", self.path.display()));
        if self.limits.max_files == 0 {
            self.file.set_len(0).map_err(|e| RuntimeError::io("truncating log", &self.path, e))?;
        } else {
            let _ = std::fs::remove_file(numbered(self.limits.max_files));
            for n in (1..self.limits.max_files).rev() {
                let _ = std::fs::rename(numbered(n), numbered(n + 1));
            }
            std::fs::rename(&self.path, numbered(1))
                .map_err(|e| RuntimeError::io("rotating log", &self.path, e))?;
            self.file = open_append(&self.path)?;
        }
        self.written = 0;
        Ok(())
    }
}

/// Opens a log for appending; a new one is 0600 (task output is the task's business).
fn open_append(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| RuntimeError::io("opening log", path, e))
}

/// The read end of a task's output pipe.
#[derive(Debug)]
pub struct LogReader {
    read_end: std::os::fd::OwnedFd,
}

/// A close-on-exec pipe: the write end goes to the container, the reader feeds a log file.
pub fn log_pipe() -> Result<(std::os::fd::OwnedFd, LogReader)> {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| RuntimeError::io("creating log pipe", "", e.into()))?;
    Ok((w, LogReader { read_end: r }))
}

/// A named pipe at `path` for a task's output: the container's end and our reader. The
/// container's end is opened read-write, so the container itself keeps the pipe open: while no
/// agent reads (an agent restart) its writes wait in the pipe, then block, instead of failing
/// with EPIPE, and a restarted agent reopens the pipe with [`LogReader::open_fifo`].
pub fn log_fifo(path: &Path) -> Result<(std::os::fd::OwnedFd, LogReader)> {
    use rustix::fs::{Mode, OFlags, CWD};
    rustix::fs::mkfifoat(CWD, path, Mode::from_raw_mode(0o600))
        .map_err(|e| RuntimeError::io("creating log fifo", path, e.into()))?;
    let container = rustix::fs::open(path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| RuntimeError::io("opening log fifo", path, e.into()))?;
    Ok((container, LogReader::open_fifo(path)?))
}

impl LogReader {
    /// Opens the read end of an existing log fifo (never blocks, whether or not a writer has it).
    pub fn open_fifo(path: &Path) -> Result<LogReader> {
        use rustix::fs::{Mode, OFlags};
        let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let read_end = rustix::fs::open(path, flags, Mode::empty())
            .map_err(|e| RuntimeError::io("opening log fifo", path, e.into()))?;
        Ok(LogReader { read_end })
    }

    /// Copies everything from the pipe into `path` until every writer has closed it.
    pub fn pump(self, path: &Path, limits: LogLimits) -> Result<JoinHandle<()>> {
        let mut file = RotatingFile::open(path, limits)?;
        let mut rx = pipe::Receiver::from_owned_fd(self.read_end)
            .map_err(|e| RuntimeError::io("watching log pipe", path, e))?;
        Ok(tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match rx.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if let Err(e) = file.write(&buf[..n]) {
                            tracing::warn!(error = %e, "task log lost output");
                        }
                    }
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout.log");
        let mut f = RotatingFile::open(&path, LogLimits { max_bytes: 10, max_files: 2 }).unwrap();
        for chunk in ["aaaaaaaa", "bbbbbbbb", "cccccccc", "dddddddd"] {
            f.write(chunk.as_bytes()).unwrap();
        }
        let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).unwrap();
        assert_eq!(read("stdout.log"), "dddddddd");
        assert_eq!(read("stdout.log.1"), "cccccccc");
        assert_eq!(read("stdout.log.2"), "bbbbbbbb");
        assert!(!dir.path().join("stdout.log.3").exists());
    }

    #[tokio::test]
    async fn pump_copies_until_writers_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.log");
        let (w, reader) = log_pipe().unwrap();
        let task = reader.pump(&path, LogLimits::default()).unwrap();
        let mut w = std::fs::File::from(w);
        w.write_all(b"hello\n").unwrap();
        drop(w);
        task.await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello\n");
    }

    #[tokio::test]
    async fn a_fifo_keeps_output_while_nobody_reads_and_a_new_reader_gets_it() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stdout.fifo");
        let (container, reader) = log_fifo(&fifo).unwrap();
        drop(reader); // the agent went away
        let mut w = std::fs::File::from(container);
        w.write_all(b"while away\n").expect("no EPIPE without a reader");
        let path = dir.path().join("out.log");
        let task = LogReader::open_fifo(&fifo).unwrap().pump(&path, LogLimits::default()).unwrap();
        w.write_all(b"after\n").unwrap();
        drop(w);
        task.await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "while away\nafter\n");
    }
}
