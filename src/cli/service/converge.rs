//! The live display of a service converging after create, update, scale or rollback: one
//! progress line per slot (or per node for a global service), an overall count, and the verdict.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use shoal_proto::control_client::ControlClient;
use shoal_proto::spec::service::task_part;
use shoal_proto::*;
use tonic::transport::Channel;

use crate::cli::client;

/// The states a task walks through to running, one bar step each.
const STEPS: [TaskState; 8] = [
    TaskState::New,
    TaskState::Pending,
    TaskState::Assigned,
    TaskState::Accepted,
    TaskState::Preparing,
    TaskState::Ready,
    TaskState::Starting,
    TaskState::Running,
];

/// How long a service may take to converge before the command gives up.
const DEADLINE: Duration = Duration::from_secs(180);

/// Follows a service until every slot runs a task of its current spec (or the update is
/// over), showing one progress line per slot; fails if the service does not converge.
pub(super) async fn converge(control: &mut ControlClient<Channel>, s: &Service) -> Result<()> {
    let mut display = Display::new();
    let start = Instant::now();
    let mut failures: HashMap<String, String> = HashMap::new();
    loop {
        let (sum, tasks) = observe(control, &s.id).await?;
        let current = sum.service.clone().unwrap_or_default();
        let count = display.show(&tasks, &current, &mut failures);
        display.overall(count.fresh_running, sum.desired);
        let update = current.update_status.clone().unwrap_or_default();
        if let Some(verdict) = update_verdict(&update, &current, s) {
            display.clear();
            return Err(verdict);
        }
        let updating =
            matches!(update.state(), UpdateState::Updating | UpdateState::RollbackStarted);
        if count.fresh_running == sum.desired && count.stale_live == 0 && !updating {
            display.clear();
            let name = current.spec.map(|p| p.name).unwrap_or_default();
            println!("verify: service {name} converged ({} running)", count.fresh_running);
            return Ok(());
        }
        if failures.len() as u64 > 3 * sum.desired.max(1) || start.elapsed() > DEADLINE {
            display.clear();
            let last =
                failures.values().next().cloned().unwrap_or_else(|| "tasks are not running".into());
            bail!("service did not converge after {:.0?}: {last}", start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The service's summary and its tasks, as the manager sees them now.
async fn observe(
    control: &mut ControlClient<Channel>,
    id: &str,
) -> Result<(ServiceSummary, ListTasksResponse)> {
    let list =
        control.list_services(ListServicesRequest {}).await.map_err(client::status)?.into_inner();
    let Some(sum) =
        list.services.into_iter().find(|x| x.service.as_ref().is_some_and(|x| x.id == id))
    else {
        bail!("service {id} was removed");
    };
    let tasks = control
        .list_tasks(ListTasksRequest { service: id.to_string(), ..Default::default() })
        .await
        .map_err(client::status)?
        .into_inner();
    Ok((sum, tasks))
}

/// An update that paused, or was rolled back from the spec this command asked for, ends the
/// wait with its message.
fn update_verdict(
    update: &UpdateStatus,
    current: &Service,
    asked: &Service,
) -> Option<anyhow::Error> {
    match update.state() {
        UpdateState::Paused | UpdateState::RollbackPaused => {
            Some(anyhow::anyhow!("{}", update.message))
        }
        UpdateState::RollbackCompleted if current.spec_version != asked.spec_version => {
            Some(anyhow::anyhow!("the update was rolled back: {}", update.message))
        }
        _ => None,
    }
}

/// Live tasks counted in one look.
struct Count {
    /// Tasks of the current spec that run.
    fresh_running: u64,
    /// Tasks of an older spec that are still meant to run.
    stale_live: u64,
}

/// The progress bars on stderr.
struct Display {
    multi: MultiProgress,
    style: ProgressStyle,
    overall: ProgressBar,
    bars: BTreeMap<String, ProgressBar>,
}

impl Display {
    fn new() -> Display {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8));
        let style = ProgressStyle::with_template("{prefix:>8}: {msg:<10} [{bar:24}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let overall = multi.add(ProgressBar::new_spinner());
        Display { multi, style, overall, bars: BTreeMap::new() }
    }

    /// Moves each slot's bar to its task's state; records failures of current-spec tasks.
    fn show(
        &mut self,
        tasks: &ListTasksResponse,
        current: &Service,
        failures: &mut HashMap<String, String>,
    ) -> Count {
        let mut count = Count { fresh_running: 0, stale_live: 0 };
        for t in &tasks.tasks {
            let live = t.desired_state <= TaskState::Running as i32;
            let fresh = t.spec_version == current.spec_version
                || t.spec.as_ref().map(task_part) == current.spec.as_ref().map(task_part);
            if matches!(t.state(), TaskState::Failed | TaskState::Rejected) && fresh {
                let st = t.status.clone().unwrap_or_default();
                let why = if st.err.is_empty() { t.state().word().to_string() } else { st.err };
                failures.insert(t.id.clone(), why);
            }
            match (live, fresh) {
                (false, _) => continue,
                (true, false) => count.stale_live += 1,
                (true, true) => {
                    self.step(t, &tasks.node_names);
                    if t.state() == TaskState::Running {
                        count.fresh_running += 1;
                    }
                }
            }
        }
        count
    }

    fn step(&mut self, t: &Task, node_names: &HashMap<String, String>) {
        let key = if t.slot > 0 {
            t.slot.to_string()
        } else {
            node_names.get(&t.node_id).cloned().unwrap_or_default()
        };
        let bar = self.bars.entry(key.clone()).or_insert_with(|| {
            let b = self.multi.add(ProgressBar::new(STEPS.len() as u64 - 1));
            b.set_style(self.style.clone());
            b.set_prefix(key);
            b
        });
        let pos = STEPS.iter().position(|x| *x == t.state()).unwrap_or(STEPS.len() - 1);
        bar.set_position(pos as u64);
        bar.set_message(if t.unscheduled_reason.is_empty() {
            t.state().word().to_lowercase()
        } else {
            t.unscheduled_reason.clone()
        });
    }

    fn overall(&self, running: u64, desired: u64) {
        self.overall.set_message(format!("overall progress: {running} out of {desired} tasks"));
        self.overall.tick();
    }

    fn clear(&self) {
        self.multi.clear().ok();
    }
}
