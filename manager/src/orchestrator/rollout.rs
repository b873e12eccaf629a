//! Owns phase 3 of an orchestrator pass: the rolling update (or rollback) of the slots whose
//! tasks were made from an older spec — how many to replace at once, when to pause or roll
//! back on failures, and when to call it complete. Pure like the rest of the planner; never
//! does IO.

use shoal_proto::spec::service::{default_update, is_live as live};
use shoal_proto::{
    FailureAction, Task, TaskState, UpdateConfig, UpdateOrder, UpdateState, UpdateStatus,
};

use super::plan::{Ctx, Op, Pass};
use super::World;

/// The update a service is going through, as its status and spec say.
struct Rollout {
    status: UpdateStatus,
    /// Rolling back (the rollback settings apply) rather than forward.
    rollback: bool,
    paused: bool,
    cfg: UpdateConfig,
}

impl Rollout {
    fn of(pass: &Pass<'_>) -> Rollout {
        let status = pass.s.update_status.clone().unwrap_or_default();
        let rollback =
            matches!(status.state(), UpdateState::RollbackStarted | UpdateState::RollbackPaused);
        let paused = matches!(status.state(), UpdateState::Paused | UpdateState::RollbackPaused);
        let cfg = if rollback { pass.spec.rollback } else { pass.spec.update };
        Rollout { status, rollback, paused, cfg: cfg.unwrap_or_else(default_update) }
    }

    /// Whether tasks that fail now count against the update.
    fn active(&self) -> bool {
        matches!(self.status.state(), UpdateState::Updating | UpdateState::RollbackStarted)
    }
}

/// Where the slots stand against the current spec.
#[derive(Default)]
struct Progress {
    /// Slots whose live tasks are all of an older spec.
    dirty_slots: Vec<String>,
    /// New tasks not running yet: they hold back the next ones (like Swarm, which waits for
    /// RUNNING, then the delay).
    settling: usize,
    /// New tasks running for less than the monitor period: they only delay calling the update
    /// complete.
    watched: usize,
}

/// Phase 3: replaces the next slots of an older spec, or pauses or rolls back the update on
/// failures, or records it complete. `skip` tells the slots phases 1 and 2 already changed;
/// `live` is how many slots hold a live task. Returns true when the pass over this service
/// must end here (the update was paused or rolled back).
pub(super) fn advance(
    ctx: &mut Ctx<'_>,
    pass: &mut Pass<'_>,
    skip: impl Fn(&str) -> bool,
    live: usize,
) -> bool {
    let rollout = Rollout::of(pass);
    let progress = survey(ctx, pass, &skip, rollout.cfg.monitor_ms as i64);
    let world = ctx.world;
    let failures = if rollout.active() { failures(world, pass, &rollout) } else { Vec::new() };
    if !rollout.paused && halt_on_failures(ctx, pass, &rollout, &failures, live) {
        return true;
    }
    if !rollout.paused && !progress.dirty_slots.is_empty() {
        replace_next(ctx, pass, &rollout, &progress);
    } else if progress.dirty_slots.is_empty() && progress.settling == 0 && progress.watched == 0 {
        complete(ctx, pass, &rollout);
    }
    false
}

/// Counts where each slot stands, and stops an old task once its start-first successor runs.
fn survey(
    ctx: &mut Ctx<'_>,
    pass: &mut Pass<'_>,
    skip: &impl Fn(&str) -> bool,
    monitor: i64,
) -> Progress {
    let mut progress = Progress::default();
    for (key, tasks) in &pass.slots {
        if skip(key) {
            continue;
        }
        let live_tasks: Vec<&Task> = tasks.iter().copied().filter(|t| live(t)).collect();
        if live_tasks.is_empty() {
            continue;
        }
        let fresh: Vec<&Task> =
            live_tasks.iter().copied().filter(|t| !pass.stale.is_dirty(t)).collect();
        if fresh.is_empty() {
            progress.dirty_slots.push(key.clone());
            continue;
        }
        for t in &fresh {
            let st = t.state();
            let since = t.status.as_ref().map(|x| x.timestamp_ms).unwrap_or(0);
            if st < TaskState::Running {
                progress.settling += 1;
            } else if st == TaskState::Running && ctx.now - since < monitor {
                progress.watched += 1;
            }
        }
        if fresh.iter().any(|t| t.state() == TaskState::Running) {
            for old in live_tasks.iter().filter(|t| pass.stale.is_dirty(t)) {
                ctx.ops.push(Op::Desired(old.id.clone(), TaskState::Shutdown));
            }
        }
    }
    progress
}

/// Tasks of the current spec that were made since the update started and failed, in the
/// world's order of the service's tasks.
fn failures<'w>(world: &'w World, pass: &mut Pass<'_>, rollout: &Rollout) -> Vec<&'w Task> {
    let mut failed = Vec::new();
    for id in world.by_service.get(&pass.s.id).into_iter().flatten() {
        let t = &world.tasks[id];
        let made_here =
            t.meta.as_ref().is_some_and(|m| m.created_at_ms >= rollout.status.started_at_ms);
        if made_here
            && !pass.stale.is_dirty(t)
            && matches!(t.state(), TaskState::Failed | TaskState::Rejected)
        {
            failed.push(t);
        }
    }
    failed
}

/// Pauses or rolls back the update when too many of its new tasks failed (unless it is set
/// to continue regardless). Returns true if it did.
fn halt_on_failures(
    ctx: &mut Ctx<'_>,
    pass: &Pass<'_>,
    rollout: &Rollout,
    failures: &[&Task],
    live: usize,
) -> bool {
    let cfg = &rollout.cfg;
    let total = live.max(1) as f32;
    let failing = !failures.is_empty() && failures.len() as f32 / total > cfg.max_failure_ratio;
    if !failing || cfg.failure_action() == FailureAction::Continue {
        return false;
    }
    let s = pass.s;
    let why = failure_line(failures[0]);
    if cfg.failure_action() == FailureAction::Rollback
        && !rollout.rollback
        && s.previous_spec.is_some()
    {
        let message = format!("update rolled back: {why}");
        ctx.ops.push(Op::Rollback(s.id.clone(), message, s.spec_version));
    } else {
        let (state, message) = if rollout.rollback {
            (UpdateState::RollbackPaused, format!("rollback paused: {why}"))
        } else {
            (UpdateState::Paused, format!("update paused: {why}"))
        };
        let status = UpdateStatus { state: state as i32, message, ..rollout.status.clone() };
        ctx.ops.push(Op::UpdateStatus(s.id.clone(), status, s.spec_version));
    }
    true
}

/// "task <short id> failed: <why>", for an update's status.
fn failure_line(what: &Task) -> String {
    format!(
        "task {} failed{}",
        &what.id[..what.id.len().min(12)],
        what.status
            .as_ref()
            .map(|x| format!(": {}", if x.err.is_empty() { &x.message } else { &x.err }))
            .unwrap_or_default()
    )
}

/// Replaces the next dirty slots, as many as the parallelism leaves room for, once the delay
/// since the last batch has passed.
fn replace_next(ctx: &mut Ctx<'_>, pass: &Pass<'_>, rollout: &Rollout, progress: &Progress) {
    let cfg = &rollout.cfg;
    let parallel = if cfg.parallelism == 0 { usize::MAX } else { cfg.parallelism as usize };
    let due = ctx.world.next_update_at.get(&pass.s.id).is_none_or(|at| *at <= ctx.now);
    if !due || progress.settling >= parallel {
        return;
    }
    let start_first = cfg.order() == UpdateOrder::StartFirst;
    for key in progress.dirty_slots.iter().take(parallel - progress.settling) {
        let olds: Vec<&Task> = pass.slots[key].iter().copied().filter(|t| live(t)).collect();
        let slot = olds[0].slot;
        let node = if pass.global { key.as_str() } else { "" };
        if start_first {
            ctx.new_task(pass.s, slot, node, TaskState::Running, 0);
        } else {
            for old in &olds {
                ctx.ops.push(Op::Desired(old.id.clone(), TaskState::Shutdown));
            }
            let all_stopped = olds.iter().all(|o| ctx.stopped(o));
            let desired = if all_stopped { TaskState::Running } else { TaskState::Ready };
            ctx.new_task(pass.s, slot, node, desired, 0);
        }
    }
    if cfg.delay_ms > 0 {
        ctx.delayed.push((pass.s.id.clone(), ctx.now + cfg.delay_ms as i64));
    }
}

/// Records an update or rollback complete (every slot runs the current spec, past its
/// monitor period).
fn complete(ctx: &mut Ctx<'_>, pass: &Pass<'_>, rollout: &Rollout) {
    let (state, message) = match rollout.status.state() {
        UpdateState::Updating => (UpdateState::Completed, "update completed"),
        UpdateState::RollbackStarted => (UpdateState::RollbackCompleted, "rollback completed"),
        _ => return,
    };
    let status = UpdateStatus {
        state: state as i32,
        started_at_ms: rollout.status.started_at_ms,
        completed_at_ms: ctx.now,
        message: message.into(),
    };
    ctx.ops.push(Op::UpdateStatus(pass.s.id.clone(), status, pass.s.spec_version));
}
