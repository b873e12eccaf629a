//! Drives an OCI runtime binary (runc by default; crun and youki speak the same commands).
//! Owns the command lines and the parsing of their answers; knows nothing of tasks.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use super::error::{Result, RuntimeError};

/// One OCI runtime binary and the state directory it keeps its containers in.
#[derive(Clone, Debug)]
pub struct Runc {
    pub binary: PathBuf,
    /// `--root`: where the binary keeps container state; ours alone so we never touch others'.
    pub root: PathBuf,
}

/// What `runc state` reports about a container.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct OciState {
    pub id: String,
    pub pid: i32,
    /// `created`, `running`, `paused` or `stopped`.
    pub status: String,
    pub bundle: PathBuf,
}

/// What a command run in a container (`runc exec`) did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    /// Its exit code (runc's own when runc failed, e.g. the container is not running).
    pub code: i32,
    /// The start of its stdout then stderr, at most [`EXEC_OUTPUT_MAX`] bytes of each.
    pub output: String,
    /// It was killed for running longer than allowed.
    pub timed_out: bool,
}

/// How much of an exec'd command's output is kept (Docker keeps 4 KiB of a health check's).
pub const EXEC_OUTPUT_MAX: usize = 4096;

/// How long runc gets to return once the command it runs was killed.
const EXEC_REAP_WAIT: Duration = Duration::from_secs(5);

/// The stdio a created container gets (runc passes its own through to the container).
#[derive(Debug)]
pub struct CreateIo {
    pub stdout: Stdio,
    pub stderr: Stdio,
}

impl Runc {
    /// A runtime using `binary` with its state under `root`.
    pub fn new(binary: impl Into<PathBuf>, root: impl Into<PathBuf>) -> Runc {
        Runc { binary: binary.into(), root: root.into() }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--root").arg(&self.root).stdin(Stdio::null()).kill_on_drop(false);
        c
    }

    fn name(&self) -> String {
        self.binary.display().to_string()
    }

    /// `runc create`: sets the container up, its process waits for `start`.
    pub async fn create(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        io: CreateIo,
    ) -> Result<()> {
        self.set_up("create", &["create"], id, bundle, pid_file, io).await
    }

    /// `runc run --detach`: create and start in one invocation (one process start fewer).
    pub async fn run_detached(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        io: CreateIo,
    ) -> Result<()> {
        self.set_up("run", &["run", "--detach"], id, bundle, pid_file, io).await
    }

    async fn set_up(
        &self,
        action: &'static str,
        verb: &[&str],
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        io: CreateIo,
    ) -> Result<()> {
        let log = bundle.join("runc.log");
        let mut c = self.command();
        c.arg("--log").arg(&log).arg("--log-format").arg("json").args(verb);
        c.arg("--bundle").arg(bundle).arg("--pid-file").arg(pid_file).arg(id);
        c.stdout(io.stdout).stderr(io.stderr);
        let status = c.status().await.map_err(|e| self.spawn_err(e))?;
        if status.success() {
            return Ok(());
        }
        let message = last_error(&log).unwrap_or_else(|| format!("exited with {status}"));
        Err(self.oci_err(action, id, message))
    }

    /// Where the binary keeps the state of container `id` (runc and crun: `<root>/<id>`).
    pub fn state_dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// `runc exec`: runs `args` in running container `id` with the process settings of its
    /// config (user, environment, capabilities, seccomp). After `timeout` the command is killed
    /// through the pid runc writes to `pid_file`, and runc is waited for, so nothing is left.
    pub async fn exec(
        &self,
        id: &str,
        args: &[String],
        pid_file: &Path,
        timeout: Duration,
    ) -> Result<ExecOutput> {
        let mut c = self.command();
        c.arg("exec").arg("--pid-file").arg(pid_file).arg(id).args(args);
        // Never kill runc itself: the command it runs would become our orphan, a zombie nobody
        // reaps, and a pid namespace's init cannot finish exiting while one of its processes is
        // unreaped. Kill the command; runc reaps it and exits, and tokio reaps runc.
        c.stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(false);
        let mut child = c.spawn().map_err(|e| self.spawn_err(e))?;
        let guard = KillExecOnDrop(pid_file);
        let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
        let run = async {
            let (o, e) = tokio::join!(read_capped(out.as_mut()), read_capped(err.as_mut()));
            (child.wait().await, o, e)
        };
        let finished = tokio::time::timeout(timeout, run).await;
        let (status, o, e, timed_out) = match finished {
            Ok((status, o, e)) => (status, o, e, false),
            Err(_) => {
                drop((out, err));
                kill_exec(pid_file);
                let status = match tokio::time::timeout(EXEC_REAP_WAIT, child.wait()).await {
                    Ok(status) => status,
                    Err(_) => {
                        let _ = child.kill().await;
                        child.wait().await
                    }
                };
                (status, Vec::new(), Vec::new(), true)
            }
        };
        std::mem::forget(guard);
        let status = status.map_err(|e| self.spawn_err(e))?;
        let mut output = String::from_utf8_lossy(&o).into_owned();
        output.push_str(&String::from_utf8_lossy(&e));
        Ok(ExecOutput { code: status.code().unwrap_or(128 + 9), output, timed_out })
    }

    /// `runc start`: runs the user's process in a created container.
    pub async fn start(&self, id: &str) -> Result<()> {
        self.simple("start", id, &["start", id]).await
    }

    /// `runc kill`: sends `signal` to the container's init (or every process with `all`).
    pub async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        let sig = signal.to_string();
        let mut args = vec!["kill"];
        if all {
            args.push("--all");
        }
        args.extend([id, sig.as_str()]);
        self.simple("kill", id, &args).await
    }

    /// `runc delete --force`: stops the container if needed and removes its state and cgroups.
    pub async fn delete(&self, id: &str) -> Result<()> {
        self.simple("delete", id, &["delete", "--force", id]).await
    }

    /// The container's state, or `None` if the runtime does not know it.
    pub async fn state(&self, id: &str) -> Result<Option<OciState>> {
        let out =
            self.command().args(["state", id]).output().await.map_err(|e| self.spawn_err(e))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("does not exist") || err.contains("not exist") {
                return Ok(None);
            }
            return Err(self.oci_err("state", id, err.trim().to_string()));
        }
        serde_json::from_slice(&out.stdout)
            .map(Some)
            .map_err(|e| self.oci_err("state", id, format!("unreadable answer: {e}")))
    }

    /// Every container under our root.
    pub async fn list(&self) -> Result<Vec<OciState>> {
        let out = self
            .command()
            .args(["list", "--format", "json"])
            .output()
            .await
            .map_err(|e| self.spawn_err(e))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(self.oci_err("list", "*", err));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        if text.trim() == "null" || text.trim().is_empty() {
            return Ok(Vec::new());
        }
        serde_json::from_str(&text).map_err(|e| self.oci_err("list", "*", e.to_string()))
    }

    async fn simple(&self, action: &'static str, id: &str, args: &[&str]) -> Result<()> {
        let out = self.command().args(args).output().await.map_err(|e| self.spawn_err(e))?;
        if out.status.success() {
            return Ok(());
        }
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(self.oci_err(action, id, err))
    }

    fn spawn_err(&self, source: std::io::Error) -> RuntimeError {
        RuntimeError::Spawn { binary: self.name(), source }
    }

    fn oci_err(&self, action: &'static str, id: &str, message: String) -> RuntimeError {
        RuntimeError::Oci { binary: self.name(), action, id: id.to_string(), message }
    }
}

/// Reads `from` to its end, keeping the first [`EXEC_OUTPUT_MAX`] bytes.
async fn read_capped(from: Option<&mut (impl AsyncRead + Unpin)>) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(from) = from else { return kept };
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = from.read(&mut buf).await {
        let room = EXEC_OUTPUT_MAX.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    kept
}

/// Kills the command of a `runc exec` whose caller went away before it finished.
struct KillExecOnDrop<'a>(&'a Path);

impl Drop for KillExecOnDrop<'_> {
    fn drop(&mut self) {
        kill_exec(self.0);
    }
}

/// SIGKILLs the command `runc exec` started, by the pid it wrote.
fn kill_exec(pid_file: &Path) {
    let pid = std::fs::read_to_string(pid_file).ok().and_then(|t| t.trim().parse::<i32>().ok());
    if let Some(pid) = pid.and_then(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// The last `error`-level message in a runc JSON log.
fn last_error(log: &Path) -> Option<String> {
    #[derive(Deserialize)]
    struct Line {
        level: String,
        msg: String,
    }
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Line>(l).ok())
        .find(|l| l.level == "error" || l.level == "fatal")
        .map(|l| l.msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_error_finds_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("runc.log");
        std::fs::write(
            &log,
            "{\"level\":\"info\",\"msg\":\"hi\",\"time\":\"t\"}\n{\"level\":\"error\",\"msg\":\"exec: no such file\",\"time\":\"t\"}\n",
        )
        .unwrap();
        assert_eq!(last_error(&log).as_deref(), Some("exec: no such file"));
    }

    #[test]
    fn state_parses() {
        let s: OciState = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","id":"a","pid":42,"status":"running","bundle":"/b","rootfs":"/b/rootfs","created":"x","owner":""}"#,
        )
        .unwrap();
        assert_eq!(s.pid, 42);
    }
}
