//! One task's controller: takes the task through the states the agent owns (ACCEPTED,
//! PREPARING, READY, STARTING, RUNNING, then COMPLETE, FAILED, SHUTDOWN or REJECTED) by calling
//! the executor, following the desired state the managers set, and queueing a report at each
//! step. Holds no container state itself; the container is removed when the task ends.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use shoal_proto::time::now_ms;
use shoal_proto::{Task, TaskState, TaskStatus};
use tokio::sync::watch;

use super::executor::{ExecError, Executor, ExitStatus};
use super::health::{self, Probe};
use super::status::StatusQueue;

/// What the managers want of a task, as far as its controller cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Desired {
    pub state: i32,
    pub not_before_ms: i64,
    /// The task left this node's assignments: stop it and report nothing more.
    pub removed: bool,
}

impl Desired {
    pub fn of(task: &Task) -> Desired {
        Desired { state: task.desired_state, not_before_ms: task.not_before_ms, removed: false }
    }

    /// Stop, or never start: SHUTDOWN, REMOVE and beyond, or gone from the assignments.
    fn stops(&self) -> bool {
        self.removed || self.state >= TaskState::Shutdown as i32
    }

    /// Prepare at least: READY (prepare and wait), RUNNING or COMPLETE.
    fn runs(&self) -> bool {
        !self.stops() && self.state >= TaskState::Ready as i32
    }

    /// Start (once past `not_before_ms`): RUNNING or COMPLETE.
    fn starts(&self) -> bool {
        self.runs() && self.state >= TaskState::Running as i32
    }
}

/// How a task's run ended: the status to report, if any.
pub(super) enum End {
    Report(TaskStatus),
    Silent,
}

/// Drives one task.
pub(super) struct Controller {
    pub id: String,
    pub exec: Arc<dyn Executor>,
    pub queue: Arc<StatusQueue>,
    pub secrets: Arc<super::secrets::SecretStore>,
    pub desired: watch::Receiver<Desired>,
}

/// Where a task's first phase left it.
enum Next {
    /// Running: supervise it (with its health check, if any).
    Supervise(Option<Probe>),
    Done(End),
}

impl Controller {
    /// Runs the task to its end. `adopt`: a container of this task survived an agent restart.
    /// Each phase is boxed and freed when it ends, so a running task costs little memory.
    pub async fn run(mut self, task: Box<Task>, adopt: bool) {
        let end = match Box::pin(self.begin(task, adopt)).await {
            Next::Supervise(probe) => Box::pin(self.supervise(probe)).await,
            Next::Done(end) => end,
        };
        if let Err(e) = self.exec.remove(&self.id).await {
            if !matches!(e, ExecError::Unknown(_)) {
                tracing::warn!(task = %self.id, error = %e, "could not remove the task's container");
            }
        }
        if let End::Report(status) = end {
            self.report(status);
        }
    }

    /// Everything before RUNNING: re-attach, or prepare and start, or give up.
    async fn begin(&mut self, task: Box<Task>, adopt: bool) -> Next {
        let observed = task.state();
        if observed.is_terminal() {
            if adopt {
                self.discard_adopted(&task).await;
            }
            return Next::Done(End::Silent);
        }
        let d = until(&mut self.desired, |d| d.stops() || d.runs()).await;
        if d.stops() {
            if adopt {
                self.discard_adopted(&task).await;
            }
            return Next::Done(stopped(d, None));
        }
        if adopt && self.exec.adopt(&task).await.is_ok() {
            tracing::info!(task = %self.id, "re-attached to the task's container");
            let probe = probe_of(&task);
            self.report(running(probe.is_some()));
            return Next::Supervise(probe);
        }
        if adopt {
            self.exec.forget(&self.id).await;
        }
        if observed as i32 >= TaskState::Starting as i32 {
            let err = "the task's container did not survive an agent restart";
            return Next::Done(End::Report(failed(err, None)));
        }
        self.launch(task).await
    }

    /// Prepare, wait for the go, start.
    async fn launch(&mut self, task: Box<Task>) -> Next {
        self.report(status(TaskState::Accepted, "accepted"));
        match self.exec.must_pull(&task) {
            Some(image) => self.report(status(TaskState::Preparing, &format!("pulling {image}"))),
            None => self.report(status(TaskState::Preparing, "preparing")),
        }
        let prepared = match self.secrets.files_for(&task) {
            Ok(files) => self.exec.prepare_with(&task, files).await,
            Err(e) => Err(ExecError::Rejected(e.to_string())),
        };
        if let Err(e) = prepared {
            tracing::info!(task = %self.id, error = %e, "task rejected");
            let mut s = status(TaskState::Rejected, "rejected");
            s.err = e.to_string();
            return Next::Done(End::Report(s));
        }
        let probe = probe_of(&task);
        drop(task);
        self.report(status(TaskState::Ready, "prepared"));
        if let Some(d) = self.until_start().await {
            return Next::Done(stopped(d, None));
        }
        self.report(status(TaskState::Starting, "starting"));
        if let Err(e) = self.exec.start(&self.id).await {
            return Next::Done(End::Report(failed(&e.to_string(), None)));
        }
        self.report(running(probe.is_some()));
        Next::Supervise(probe)
    }

    /// Waits until the task may start; returns the desired state instead if it must stop.
    async fn until_start(&mut self) -> Option<Desired> {
        loop {
            let d = until(&mut self.desired, |d| d.stops() || d.starts()).await;
            if d.stops() {
                return Some(d);
            }
            let wait = d.not_before_ms.saturating_sub(now_ms());
            if wait <= 0 {
                return None;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
                _ = self.desired.changed() => {}
            }
        }
    }

    /// Watches a running task: its exit, a desired stop, its health.
    pub(super) async fn supervise(&mut self, probe: Option<Probe>) -> End {
        let (exec, queue, id) = (self.exec.clone(), self.queue.clone(), self.id.clone());
        let health = Mutex::new("");
        // Boxed only when there is a check: a task without one carries no probe state.
        let watch_health: BoxFuture<'_, String> = match &probe {
            Some(p) => Box::pin(health::watch(&*exec, &id, p, |h| {
                *health.lock().unwrap_or_else(|p| p.into_inner()) = health_word(h);
                queue.push(&id, with_health(running(true), h));
            })),
            None => Box::pin(std::future::pending()),
        };
        let last_health = || *health.lock().unwrap_or_else(|p| p.into_inner());
        tokio::select! {
            exit = exec.wait(&id) => {
                let mut s = match exit {
                    Ok(exit) => exited(exit),
                    Err(e) => failed(&format!("lost track of the task's container: {e}"), None),
                };
                s.health = last_health().into();
                End::Report(s)
            }
            d = until(&mut self.desired, Desired::stops) => {
                let exit = exec.stop(&id).await.ok();
                match stopped(d, exit) {
                    End::Report(s) => End::Report(with_health(s, last_health())),
                    silent => silent,
                }
            }
            output = watch_health => {
                tracing::info!(task = %id, %output, "task unhealthy; stopping it");
                let exit = exec.stop(&id).await.ok();
                let s = failed(&format!("unhealthy: {output}"), exit);
                End::Report(with_health(s, health::UNHEALTHY))
            }
        }
    }

    /// Stops and removes a leftover container the managers no longer want running.
    async fn discard_adopted(&self, task: &Task) {
        if self.exec.adopt(task).await.is_ok() {
            let _ = self.exec.stop(&self.id).await;
            let _ = self.exec.remove(&self.id).await;
        } else {
            self.exec.forget(&self.id).await;
        }
    }

    fn report(&self, status: TaskStatus) {
        self.queue.push(&self.id, status);
    }
}

/// The current desired state once it satisfies `pred`. If the worker is gone, never returns:
/// it aborts its controllers, and a container must not be stopped because an agent exits.
async fn until(rx: &mut watch::Receiver<Desired>, pred: impl FnMut(&Desired) -> bool) -> Desired {
    let found = rx.wait_for(pred).await.map(|d| *d);
    match found {
        Ok(d) => d,
        Err(_) => std::future::pending().await,
    }
}

fn probe_of(task: &Task) -> Option<Probe> {
    let check = task.spec.as_ref()?.container.as_ref()?.healthcheck.as_ref();
    Probe::from_spec(check)
}

fn status(state: TaskState, message: &str) -> TaskStatus {
    TaskStatus {
        state: state as i32,
        timestamp_ms: now_ms(),
        message: message.into(),
        ..Default::default()
    }
}

fn running(has_health_check: bool) -> TaskStatus {
    let s = status(TaskState::Running, "started");
    if has_health_check {
        with_health(s, health::STARTING)
    } else {
        s
    }
}

fn with_health(mut s: TaskStatus, health: &str) -> TaskStatus {
    s.health = health.into();
    s
}

fn health_word(h: &str) -> &'static str {
    match h {
        health::HEALTHY => health::HEALTHY,
        health::UNHEALTHY => health::UNHEALTHY,
        _ => health::STARTING,
    }
}

fn failed(err: &str, exit: Option<ExitStatus>) -> TaskStatus {
    let mut s = status(TaskState::Failed, "failed");
    s.err = err.into();
    if let Some(e) = exit {
        s.exit_code = e.code;
        s.oom_killed = e.oom_killed;
    }
    s
}

/// The status of a task whose process exited by itself.
fn exited(exit: ExitStatus) -> TaskStatus {
    if exit.is_unknown() {
        let err = "the container exited, but its exit status is unknown: an earlier agent process started it";
        return failed(err, Some(exit));
    }
    if exit.oom_killed {
        return failed("OOM killed", Some(exit));
    }
    if exit.code == 0 {
        return status(TaskState::Complete, "finished");
    }
    failed(&format!("task: non-zero exit ({})", exit.code), Some(exit))
}

/// The end of a task stopped on the managers' request (nothing to say if it was removed).
fn stopped(d: Desired, exit: Option<ExitStatus>) -> End {
    if d.removed {
        return End::Silent;
    }
    let mut s = status(TaskState::Shutdown, "shutdown");
    if let Some(e) = exit {
        s.exit_code = e.code;
    }
    End::Report(s)
}
