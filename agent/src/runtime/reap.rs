//! Waits for container processes to exit. The agent is a child subreaper, so a container's init
//! is re-parented to it when `runc create` returns; a pidfd then tells us, without polling or a
//! thread per task, when it exits, and `waitid` collects its status.

use std::os::fd::{AsFd, OwnedFd};

use rustix::process::{pidfd_open, waitid, Pid, PidfdFlags, WaitId, WaitIdOptions};
use tokio::io::unix::AsyncFd;

use super::error::{Result, RuntimeError};

/// How a task's process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitStatus {
    /// The exit code, Docker-style: 128 + signal when killed by a signal.
    pub code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// The kernel's OOM killer ended it (the task's memory limit was reached).
    pub oom_killed: bool,
}

impl ExitStatus {
    /// The code of an exit whose status could not be collected: a container adopted after an
    /// agent restart whose init is no longer our child.
    pub const UNKNOWN_CODE: i32 = -1;

    /// An exit whose status is unknown.
    pub fn unknown() -> ExitStatus {
        ExitStatus { code: Self::UNKNOWN_CODE, signal: None, oom_killed: false }
    }

    /// Whether the task succeeded.
    pub fn success(&self) -> bool {
        self.code == 0 && !self.oom_killed
    }

    /// Whether the process ended without us learning how.
    pub fn is_unknown(&self) -> bool {
        self.code == Self::UNKNOWN_CODE
    }
}

/// Makes this process the reaper of its orphaned descendants (container inits among them).
pub fn become_subreaper() -> Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .map_err(|e| RuntimeError::io("becoming child subreaper", "", e.into()))
}

/// A handle on one process's exit.
#[derive(Debug)]
pub struct ExitWatch {
    pid: i32,
    fd: AsyncFd<OwnedFd>,
}

impl ExitWatch {
    /// Watches process `pid`; must be called from inside a tokio runtime.
    #[allow(unsafe_code)]
    pub fn open(pid: i32) -> Result<ExitWatch> {
        let bad = || RuntimeError::InvalidSpec(format!("container pid {pid} is not a valid pid"));
        let p = Pid::from_raw(pid).ok_or_else(bad)?;
        let fd = pidfd_open(p, PidfdFlags::NONBLOCK).map_err(|e| {
            RuntimeError::io("opening pidfd of container", format!("pid {pid}"), e.into())
        })?;
        // SAFETY: `fd` is an open pidfd owned by the OwnedFd we hand over; it stays open and
        // unchanged until the AsyncFd (which owns it) is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| RuntimeError::io("registering pidfd", format!("pid {pid}"), e.into()))?;
        Ok(ExitWatch { pid, fd })
    }

    /// Waits until the process exits. Returns the raw status, or `None` when the process is not
    /// our child (after an agent restart) so its status cannot be collected.
    pub async fn wait(&self) -> Option<(i32, Option<i32>)> {
        loop {
            match self.fd.readable().await {
                Ok(mut guard) => {
                    guard.clear_ready();
                    match self.try_collect() {
                        Ok(Some(st)) => return Some(st),
                        Ok(None) => continue,
                        Err(rustix::io::Errno::CHILD) => return None,
                        Err(e) => {
                            tracing::warn!(pid = self.pid, error = %e, "waitid on container failed");
                            return None;
                        }
                    }
                }
                Err(_) => return None,
            }
        }
    }

    fn try_collect(&self) -> rustix::io::Result<Option<(i32, Option<i32>)>> {
        let opts = WaitIdOptions::EXITED | WaitIdOptions::NOHANG;
        let Some(st) = waitid(WaitId::PidFd(self.fd.get_ref().as_fd()), opts)? else {
            return Ok(None);
        };
        if let Some(sig) = st.terminating_signal() {
            return Ok(Some((128 + sig, Some(sig))));
        }
        Ok(st.exit_status().map(|c| (c, None)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    #[allow(clippy::zombie_processes)] // reaped through the pidfd instead of Child::wait
    async fn collects_exit_code_and_signal() {
        let child = std::process::Command::new("sh").args(["-c", "exit 7"]).spawn().unwrap();
        let w = ExitWatch::open(child.id() as i32).unwrap();
        assert_eq!(w.wait().await, Some((7, None)));
        let child = std::process::Command::new("sh").args(["-c", "kill -9 $$"]).spawn().unwrap();
        let w = ExitWatch::open(child.id() as i32).unwrap();
        assert_eq!(w.wait().await, Some((137, Some(9))));
    }
}
