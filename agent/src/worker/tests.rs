//! The worker's task state machine with the fake executor: what the managers are told, and
//! what runs, for each kind of assignment.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_proto::{
    AssignmentsMessage, ContainerSpec, HealthCheck, ServiceSpec, Task, TaskState, TaskStatus,
};

use super::*;

/// A task of `image` the scheduler has just assigned, desired in `desired`.
pub(super) fn new_test_task(id: &str, image: &str, desired: TaskState) -> Task {
    let container = ContainerSpec { image: image.into(), ..Default::default() };
    Task {
        id: id.into(),
        desired_state: desired as i32,
        status: Some(TaskStatus { state: TaskState::Assigned as i32, ..Default::default() }),
        spec: Some(ServiceSpec { container: Some(container), ..Default::default() }),
        ..Default::default()
    }
}

pub(super) fn complete(tasks: Vec<Task>) -> AssignmentsMessage {
    AssignmentsMessage { complete: true, tasks, ..Default::default() }
}

fn changes(tasks: Vec<Task>, removed: &[&str]) -> AssignmentsMessage {
    let removed = removed.iter().map(|s| s.to_string()).collect();
    AssignmentsMessage { complete: false, tasks, removed, ..Default::default() }
}

fn with_desired(mut t: Task, d: TaskState) -> Task {
    t.desired_state = d as i32;
    t
}

/// A worker on a fake executor, with every report it makes collected as the managers would
/// receive them.
struct Fixture {
    worker: Worker,
    fake: Arc<FakeExecutor>,
    reports: Arc<Mutex<Vec<(String, TaskStatus)>>>,
    _logs: Arc<tempfile::TempDir>,
}

impl Fixture {
    fn new() -> Fixture {
        let logs = tempfile::tempdir().unwrap();
        let fake = FakeExecutor::new("n1").with_logs(logs.path());
        Fixture::with(Arc::new(fake), Arc::new(logs))
    }

    fn with(fake: Arc<FakeExecutor>, logs: Arc<tempfile::TempDir>) -> Fixture {
        let worker = Worker::new(fake.clone());
        let reports = Arc::new(Mutex::new(Vec::new()));
        let (queue, sink) = (worker.statuses().clone(), reports.clone());
        tokio::spawn(async move {
            loop {
                queue.changed().await;
                for u in queue.take(usize::MAX) {
                    sink.lock().unwrap().push((u.task_id, u.status.unwrap()));
                }
            }
        });
        Fixture { worker, fake, reports, _logs: logs }
    }

    /// The agent goes away (its containers stay) and a new one starts on the same executor.
    fn restart(self) -> Fixture {
        self.worker.shutdown();
        Fixture::with(self.fake.clone(), self._logs.clone())
    }

    fn reports_of(&self, id: &str) -> Vec<TaskStatus> {
        let all = self.reports.lock().unwrap();
        all.iter().filter(|(t, _)| t == id).map(|(_, s)| s.clone()).collect()
    }

    fn states_of(&self, id: &str) -> Vec<TaskState> {
        self.reports_of(id).iter().map(|s| s.state()).collect()
    }

    /// The last report for `id` once it is in `state`; panics after 5 s.
    async fn reaches(&self, id: &str, state: TaskState) -> TaskStatus {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(s) = self.reports_of(id).last().filter(|s| s.state() == state) {
                return s.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{id} never reached {state:?}: {:?}",
                self.states_of(id)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn container_gone(&self, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.fake.containers().iter().any(|c| c == id) {
            assert!(Instant::now() < deadline, "container {id} still there");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn assert_forward_only(&self, id: &str) {
        let states = self.states_of(id);
        assert!(
            states.windows(2).all(|w| w[0] as i32 <= w[1] as i32),
            "{id} went back: {states:?}"
        );
    }
}

#[tokio::test]
async fn a_task_runs_and_its_states_only_move_forward() {
    let f = Fixture::new();
    f.worker.apply(complete(vec![new_test_task("a", "web:1", TaskState::Running)])).await;
    f.reaches("a", TaskState::Running).await;
    f.assert_forward_only("a");
    assert_eq!(f.fake.containers(), vec!["a".to_string()]);
    // The same set again (a reconnect) starts nothing twice and reports nothing new.
    let before = f.reports_of("a").len();
    f.worker.apply(complete(vec![new_test_task("a", "web:1", TaskState::Running)])).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(f.reports_of("a").len(), before);
    assert_eq!(f.fake.containers().len(), 1);
}

#[tokio::test]
async fn the_state_the_managers_know_is_never_reported_lower() {
    let f = Fixture::new();
    let mut t = new_test_task("a", "web:1", TaskState::Running);
    t.status = Some(TaskStatus { state: TaskState::Running as i32, ..Default::default() });
    f.worker.apply(complete(vec![t])).await;
    let s = f.reaches("a", TaskState::Failed).await;
    assert!(s.err.contains("did not survive an agent restart"), "{}", s.err);
    assert_eq!(f.states_of("a"), vec![TaskState::Failed]);
}

#[tokio::test]
async fn a_complete_set_stops_and_removes_tasks_not_in_it() {
    let f = Fixture::new();
    let (a, b) = (
        new_test_task("a", "web:1", TaskState::Running),
        new_test_task("b", "web:1", TaskState::Running),
    );
    f.worker.apply(complete(vec![a.clone(), b])).await;
    f.reaches("a", TaskState::Running).await;
    f.reaches("b", TaskState::Running).await;
    let reported_b = f.reports_of("b").len();

    f.worker.apply(complete(vec![a])).await;
    f.container_gone("b").await;
    assert!(!f.worker.knows("b") && f.worker.knows("a"));
    assert_eq!(f.fake.containers(), vec!["a".to_string()]);
    assert_eq!(f.reports_of("b").len(), reported_b, "a removed task is not reported on");
}

#[tokio::test]
async fn desired_shutdown_stops_the_task_and_removes_its_container() {
    let f = Fixture::new();
    let a = new_test_task("a", "web:1", TaskState::Running);
    f.worker.apply(complete(vec![a.clone()])).await;
    f.reaches("a", TaskState::Running).await;
    f.worker.apply(changes(vec![with_desired(a, TaskState::Shutdown)], &[])).await;
    let s = f.reaches("a", TaskState::Shutdown).await;
    assert_eq!(s.exit_code, 143, "stopped by its stop signal");
    f.container_gone("a").await;
    assert!(f.worker.knows("a"), "the task stays known until the managers drop it");
    f.assert_forward_only("a");
}

#[tokio::test]
async fn a_task_removed_from_the_assignments_is_stopped_silently() {
    let f = Fixture::new();
    f.worker.apply(complete(vec![new_test_task("a", "web:1", TaskState::Running)])).await;
    f.reaches("a", TaskState::Running).await;
    f.worker.apply(changes(vec![], &["a"])).await;
    f.container_gone("a").await;
    assert!(!f.worker.knows("a"));
    assert_eq!(f.states_of("a").last(), Some(&TaskState::Running));
    assert!(f.fake.log_paths("a").is_none(), "its logs go too");
}

#[tokio::test]
async fn desired_ready_prepares_and_waits_for_running() {
    let f = Fixture::new();
    let a = new_test_task("a", "web:1", TaskState::Ready);
    f.worker.apply(complete(vec![a.clone()])).await;
    f.reaches("a", TaskState::Ready).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(f.states_of("a").last(), Some(&TaskState::Ready), "not started");
    assert!(f.fake.log_paths("a").is_none(), "nothing ran yet");
    f.worker.apply(changes(vec![with_desired(a, TaskState::Running)], &[])).await;
    f.reaches("a", TaskState::Running).await;
}

#[tokio::test]
async fn a_delayed_restart_waits_for_not_before() {
    let f = Fixture::new();
    let mut a = new_test_task("a", "web:1", TaskState::Running);
    a.not_before_ms = shoal_proto::time::now_ms() + 300;
    let started = Instant::now();
    f.worker.apply(complete(vec![a])).await;
    f.reaches("a", TaskState::Running).await;
    assert!(started.elapsed() >= Duration::from_millis(250), "{:?}", started.elapsed());
}

#[tokio::test]
async fn shutdown_before_start_never_runs_the_task() {
    let f = Fixture::new();
    let a = new_test_task("a", "web:1", TaskState::Shutdown);
    f.worker.apply(complete(vec![a])).await;
    f.reaches("a", TaskState::Shutdown).await;
    assert_eq!(f.states_of("a"), vec![TaskState::Shutdown]);
    assert!(f.fake.containers().is_empty());
}

#[tokio::test]
async fn each_fate_of_the_fake_is_reported_as_swarm_would() {
    let f = Fixture::new();
    let check = HealthCheck {
        test: vec!["CMD".into(), "true".into()],
        interval_ms: 20,
        retries: 2,
        ..Default::default()
    };
    let mut sick = new_test_task("sick", "unhealthy/web", TaskState::Running);
    let mut well = new_test_task("well", "web:1", TaskState::Running);
    for t in [&mut sick, &mut well] {
        t.spec.as_mut().unwrap().container.as_mut().unwrap().healthcheck = Some(check.clone());
    }
    let tasks = vec![
        new_test_task("gone", "missing/web", TaskState::Running),
        new_test_task("crash", "fail/web", TaskState::Running),
        sick,
        well,
    ];
    f.worker.apply(complete(tasks)).await;

    let s = f.reaches("gone", TaskState::Rejected).await;
    assert_eq!(s.err, "image missing/web is not on node n1; pull it with 'shoal image pull' or load it with 'shoal image load'");
    let s = f.reaches("crash", TaskState::Failed).await;
    assert_eq!((s.exit_code, s.err.as_str()), (1, "task: non-zero exit (1)"));
    let s = f.reaches("sick", TaskState::Failed).await;
    assert_eq!((s.err.as_str(), s.health.as_str()), ("unhealthy: fake: unhealthy", "unhealthy"));
    let healths: Vec<String> = f.reports_of("sick").iter().map(|s| s.health.clone()).collect();
    assert!(healths.contains(&"starting".to_string()), "{healths:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while f.reports_of("well").last().map(|s| s.health.as_str()) != Some("healthy") {
        assert!(Instant::now() < deadline, "never healthy: {:?}", f.reports_of("well"));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for id in ["gone", "crash", "sick"] {
        f.container_gone(id).await;
        f.assert_forward_only(id);
    }
}

#[tokio::test]
async fn a_new_agent_on_the_same_executor_takes_over_the_tasks_still_wanted() {
    let f = Fixture::new();
    let (a, b) = (
        new_test_task("a", "web:1", TaskState::Running),
        new_test_task("b", "web:1", TaskState::Running),
    );
    f.worker.apply(complete(vec![a.clone(), b])).await;
    f.reaches("a", TaskState::Running).await;
    f.reaches("b", TaskState::Running).await;
    let f = f.restart();
    let mut a = a;
    a.status = Some(TaskStatus { state: TaskState::Running as i32, ..Default::default() });
    f.worker.apply(complete(vec![a.clone()])).await;
    f.container_gone("b").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(f.reports_of("a").is_empty(), "nothing to report: a is still running");
    assert_eq!(f.fake.containers(), vec!["a".to_string()]);

    f.worker.apply(changes(vec![with_desired(a, TaskState::Shutdown)], &[])).await;
    f.reaches("a", TaskState::Shutdown).await;
    f.container_gone("a").await;
}

#[tokio::test]
async fn leaving_removes_every_task_and_its_logs() {
    let f = Fixture::new();
    let tasks = vec![
        new_test_task("a", "web:1", TaskState::Running),
        new_test_task("b", "fail/web", TaskState::Running),
    ];
    f.worker.apply(complete(tasks)).await;
    f.reaches("a", TaskState::Running).await;
    f.reaches("b", TaskState::Failed).await;
    f.worker.remove_all().await;
    assert!(f.fake.containers().is_empty());
    assert_eq!(f.worker.task_count(), 0);
    assert!(f.fake.log_paths("a").is_none() && f.fake.log_paths("b").is_none());
}

#[tokio::test]
async fn many_tasks_stay_cheap() {
    // No log files: removing thousands of directories is slow on some filesystems.
    let f =
        Fixture::with(Arc::new(FakeExecutor::new("n1")), Arc::new(tempfile::tempdir().unwrap()));
    let tasks: Vec<Task> =
        (0..2000).map(|i| new_test_task(&format!("t{i}"), "web:1", TaskState::Running)).collect();
    f.worker.apply(complete(tasks)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.fake.containers().len() < 2000
        || (0..2000).any(|i| {
            f.worker.statuses().last_state(&format!("t{i}")) != Some(TaskState::Running as i32)
        })
    {
        assert!(Instant::now() < deadline, "not all running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(f.worker.task_count(), 2000);
}

/// 1,000 simulated agents × 100 tasks share one process: a running task must stay small.
#[tokio::test]
async fn a_running_tasks_controller_is_small() {
    let task = new_test_task("a", "web:1", TaskState::Running);
    let (_tx, rx) = watch::channel(controller::Desired::of(&task));
    let exec: Arc<dyn Executor> = Arc::new(FakeExecutor::new("n1"));
    let queue = Arc::new(StatusQueue::default());
    let secrets = Arc::default();
    let mut c = Controller { id: "a".into(), exec, queue, secrets, desired: rx };
    let running = std::mem::size_of_val(&c.supervise(None));
    let whole = std::mem::size_of_val(&c.run(Box::new(task), false));
    assert!(running + whole < 2048, "{running} + {whole} bytes per running task");
}
