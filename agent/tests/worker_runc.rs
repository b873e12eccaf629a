//! The worker with real containers (runc) from a busybox image: what the managers are told
//! when tasks run, exit, lack their image, ask for a relaxation, are shut down, turn unhealthy
//! or outlive their agent, and the logs they get. Needs root (fails under CI without it).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::dispatcher::{serve_fake, FakeDispatcher};
use common::*;
use shoal_agent::image::ImageStore;
use shoal_agent::worker::link::{self, Link};
use shoal_agent::worker::{Executor, OciExecutor, Worker};
use shoal_proto::{
    AssignmentsMessage, ContainerSpec, HealthCheck, LogSubscription, ServiceSpec, Task, TaskState,
    TaskStatus,
};

const NODE: &str = "node-t";
const IMAGE: &str = "busybox:test";

/// An executor on runc under `dir`, with busybox imported as `busybox:test`.
fn new_test_executor(dir: &std::path::Path) -> Arc<OciExecutor> {
    new_test_executor_with(dir, |_| {})
}

/// The same, on a runtime whose config `edit` adjusts (the node's policy, say).
fn new_test_executor_with(
    dir: &std::path::Path,
    edit: impl FnOnce(&mut shoal_agent::runtime::RuntimeConfig),
) -> Arc<OciExecutor> {
    let images = ImageStore::open(dir.join("images")).unwrap();
    if images.resolve(IMAGE).is_err() {
        let rootfs = busybox_rootfs(&dir.join("image"));
        tar_dir(&rootfs, &dir.join("busybox.tar"));
        images.import(&dir.join("busybox.tar"), IMAGE).unwrap();
    }
    let runtime = new_test_runtime_with(dir, edit);
    Arc::new(OciExecutor::new(runtime, Arc::new(images), NODE))
}

/// A task running `sh -c script` from `image`, just assigned and desired running.
fn sh_task(id: &str, image: &str, script: &str) -> Task {
    let container = ContainerSpec {
        image: image.into(),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        stop_grace_ms: 2000,
        ..Default::default()
    };
    Task {
        id: id.into(),
        desired_state: TaskState::Running as i32,
        status: Some(TaskStatus { state: TaskState::Assigned as i32, ..Default::default() }),
        spec: Some(ServiceSpec { container: Some(container), ..Default::default() }),
        ..Default::default()
    }
}

fn container(t: &mut Task) -> &mut ContainerSpec {
    t.spec.as_mut().unwrap().container.as_mut().unwrap()
}

fn complete(tasks: Vec<Task>) -> AssignmentsMessage {
    AssignmentsMessage { complete: true, tasks, ..Default::default() }
}

fn changed(task: Task) -> AssignmentsMessage {
    AssignmentsMessage { tasks: vec![task], ..Default::default() }
}

/// Every status the worker reports, collected as the managers would receive them.
#[derive(Clone, Default)]
struct Reports(Arc<Mutex<Vec<(String, TaskStatus)>>>);

impl Reports {
    fn collect(worker: &Worker) -> Reports {
        let reports = Reports::default();
        let (queue, sink) = (worker.statuses().clone(), reports.0.clone());
        tokio::spawn(async move {
            loop {
                queue.changed().await;
                for u in queue.take(usize::MAX) {
                    sink.lock().unwrap().push((u.task_id, u.status.unwrap()));
                }
            }
        });
        reports
    }

    fn of(&self, id: &str) -> Vec<TaskStatus> {
        let all = self.0.lock().unwrap();
        all.iter().filter(|(t, _)| t == id).map(|(_, s)| s.clone()).collect()
    }

    fn states(&self, id: &str) -> Vec<TaskState> {
        self.of(id).iter().map(|s| s.state()).collect()
    }

    /// The report that put `id` in `state`; panics after 20 s.
    async fn reaches(&self, id: &str, state: TaskState) -> TaskStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.of(id).into_iter().rev().find(|s| s.state() == state) {
                return s;
            }
            assert!(Instant::now() < deadline, "{id} never {state:?}: {:?}", self.of(id));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The task's container, mounts and cgroups are gone.
async fn assert_removed(exec: &OciExecutor, id: &str) {
    let rt = exec.runtime();
    let gone = eventually(Duration::from_secs(10), || !rt.bundle_dir(id).exists()).await;
    assert!(gone, "bundle of {id} left");
    assert!(rt.runc().state(id).await.unwrap().is_none(), "runc state of {id} left");
    assert!(rt.cgroup_layout().leftovers(&rt.cgroup_path(id)).is_empty(), "cgroups of {id} left");
}

#[tokio::test]
async fn a_task_runs_and_its_exit_code_is_reported() {
    if !have_root("worker_exit_code") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exec = new_test_executor(dir.path());
    let worker = Worker::new(exec.clone());
    let reports = Reports::collect(&worker);
    let (bad, good) = (task_id("w-exit3"), task_id("w-exit0"));
    let tasks = vec![
        sh_task(&bad, IMAGE, "echo working; sleep 0.5; exit 3"),
        sh_task(&good, IMAGE, "sleep 0.5"),
    ];
    worker.apply(complete(tasks)).await;

    reports.reaches(&bad, TaskState::Running).await;
    let failed = reports.reaches(&bad, TaskState::Failed).await;
    assert_eq!((failed.exit_code, failed.err.as_str()), (3, "task: non-zero exit (3)"));
    let done = reports.reaches(&good, TaskState::Complete).await;
    assert_eq!(done.exit_code, 0);
    let states = reports.states(&bad);
    assert!(states.windows(2).all(|w| (w[0] as i32) < (w[1] as i32)), "{states:?}");
    for id in [&bad, &good] {
        assert_removed(&exec, id).await;
    }
    let (out, _) = exec.log_paths(&bad).expect("a finished task's logs are kept");
    assert_eq!(std::fs::read_to_string(out).unwrap(), "working\n");
}

#[tokio::test]
async fn a_missing_image_or_a_refused_option_is_rejected_with_what_to_do() {
    if !have_root("worker_rejects") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exec = new_test_executor(dir.path());
    let worker = Worker::new(exec.clone());
    let reports = Reports::collect(&worker);
    let (missing, privileged) = (task_id("w-missing"), task_id("w-privileged"));
    let mut wants_caps = sh_task(&privileged, IMAGE, "true");
    container(&mut wants_caps).cap_add = vec!["SYS_ADMIN".into()];
    worker.apply(complete(vec![sh_task(&missing, "nginx:latest", "true"), wants_caps])).await;

    let r = reports.reaches(&missing, TaskState::Rejected).await;
    assert_eq!(
        r.err,
        "image nginx:latest is not on node node-t; pull it with 'shoal image pull' or load it with 'shoal image load'"
    );
    let r = reports.reaches(&privileged, TaskState::Rejected).await;
    assert!(r.err.contains("cap-add CAP_SYS_ADMIN"), "{}", r.err);
    for id in [&missing, &privileged] {
        assert!(!reports.states(id).contains(&TaskState::Starting), "{id} never starts");
        assert_removed(&exec, id).await;
    }
}

#[tokio::test]
async fn landlock_off_is_rejected_unless_the_node_allows_it_and_then_runs_unconfined() {
    if !have_root("worker_landlock_off") {
        return;
    }
    let landlock = shoal_agent::runtime::mac::MacSupport::detect().landlock_abi.is_some();
    // Root in the task has CAP_MKNOD: only Landlock keeps the node out of /tmp.
    let mknod = "busybox mknod /tmp/node c 1 3 && echo made";
    let relaxed = |id: &str| {
        let mut t = sh_task(id, IMAGE, mknod);
        container(&mut t).landlock_off = true;
        t
    };

    let strict_dir = tempfile::tempdir().unwrap();
    let strict = Worker::new(new_test_executor(strict_dir.path()));
    let reports = Reports::collect(&strict);
    let refused = task_id("w-landlock-refused");
    strict.apply(complete(vec![relaxed(&refused)])).await;
    let r = reports.reaches(&refused, TaskState::Rejected).await;
    assert_eq!(
        r.err,
        "node policy refuses task option `landlock=off`: this node runs every task under its Landlock ruleset; allow it with shoald --task-allow-landlock-off, or remove it from the service"
    );
    assert!(!reports.states(&refused).contains(&TaskState::Starting), "it never starts");

    let dir = tempfile::tempdir().unwrap();
    let exec = new_test_executor_with(dir.path(), |c| c.policy.allow_landlock_off = true);
    let worker = Worker::new(exec.clone());
    let reports = Reports::collect(&worker);
    let (off, on) = (task_id("w-landlock-off"), task_id("w-landlock-on"));
    worker.apply(complete(vec![relaxed(&off), sh_task(&on, IMAGE, mknod)])).await;
    let done = reports.reaches(&off, TaskState::Complete).await;
    assert_eq!(done.exit_code, 0, "without Landlock the node is made");
    let (out, _) = exec.log_paths(&off).unwrap();
    assert_eq!(std::fs::read_to_string(out).unwrap(), "made\n");
    // The same command in a task that kept the ruleset, on the same node.
    let want = if landlock { TaskState::Failed } else { TaskState::Complete };
    reports.reaches(&on, want).await;
    for id in [&off, &on] {
        assert_removed(&exec, id).await;
    }
}

#[tokio::test]
async fn shutdown_uses_the_stop_signal_and_honours_the_grace_period() {
    if !have_root("worker_shutdown") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exec = new_test_executor(dir.path());
    let worker = Worker::new(exec.clone());
    let reports = Reports::collect(&worker);
    let (stubborn, polite) = (task_id("w-stubborn"), task_id("w-polite"));
    // Each says when its trap is set (see `trap_set`).
    let mut s =
        sh_task(&stubborn, IMAGE, "trap '' TERM; echo trapped; while true; do sleep 0.1; done");
    container(&mut s).stop_grace_ms = 3000;
    let mut p =
        sh_task(&polite, IMAGE, "trap 'exit 0' USR1; echo trapped; while true; do sleep 0.1; done");
    container(&mut p).stop_signal = "SIGUSR1".into();
    container(&mut p).stop_grace_ms = 60_000;
    worker.apply(complete(vec![s.clone(), p.clone()])).await;
    for id in [&stubborn, &polite] {
        reports.reaches(id, TaskState::Running).await;
        trap_set(&exec.log_paths(id).unwrap().0).await;
    }

    // Bounds with a wide margin: the polite task ends well inside the stubborn one's 3 s grace
    // (it does not wait for it, nor for its own minute), the stubborn one not before its 3 s.
    let started = Instant::now();
    for mut t in [s, p] {
        t.desired_state = TaskState::Shutdown as i32;
        worker.apply(changed(t)).await;
    }
    let r = reports.reaches(&polite, TaskState::Shutdown).await;
    assert_eq!(r.exit_code, 0, "its stop signal ended it cleanly");
    assert!(started.elapsed() < Duration::from_millis(2500), "{:?}", started.elapsed());
    let r = reports.reaches(&stubborn, TaskState::Shutdown).await;
    assert_eq!(r.exit_code, 137, "killed once the grace period was over");
    assert!(started.elapsed() >= Duration::from_millis(2950), "{:?}", started.elapsed());
    for id in [&stubborn, &polite] {
        assert_removed(&exec, id).await;
    }
}

#[tokio::test]
async fn a_failing_health_check_fails_the_task() {
    if !have_root("worker_health") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exec = new_test_executor(dir.path());
    let worker = Worker::new(exec.clone());
    let reports = Reports::collect(&worker);
    let (sick, well) = (task_id("w-sick"), task_id("w-well"));
    let check = |test: Vec<&str>| HealthCheck {
        test: test.into_iter().map(String::from).collect(),
        interval_ms: 150,
        timeout_ms: 2000,
        retries: 2,
        start_period_ms: 0,
    };
    let mut s = sh_task(&sick, IMAGE, "sleep 1000");
    container(&mut s).healthcheck = Some(check(vec!["CMD-SHELL", "echo sick; exit 1"]));
    let mut w = sh_task(&well, IMAGE, "touch /tmp/ok; sleep 1000");
    container(&mut w).healthcheck = Some(check(vec!["CMD", "cat", "/tmp/ok"]));
    worker.apply(complete(vec![s, w])).await;

    let r = reports.reaches(&sick, TaskState::Running).await;
    assert_eq!(r.health, "starting");
    let r = reports.reaches(&sick, TaskState::Failed).await;
    assert_eq!((r.err.as_str(), r.health.as_str()), ("unhealthy: sick", "unhealthy"));
    assert_removed(&exec, &sick).await;

    let deadline = Instant::now() + Duration::from_secs(10);
    while reports.of(&well).last().map(|s| s.health.clone()).as_deref() != Some("healthy") {
        assert!(Instant::now() < deadline, "never healthy: {:?}", reports.of(&well));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(reports.states(&well).last(), Some(&TaskState::Running));
    let mut w = sh_task(&well, IMAGE, "");
    w.desired_state = TaskState::Shutdown as i32;
    worker.apply(changed(w)).await;
    reports.reaches(&well, TaskState::Shutdown).await;
    assert_removed(&exec, &well).await;
}

#[tokio::test]
async fn logs_are_published_to_the_managers() {
    if !have_root("worker_logs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exec = new_test_executor(dir.path());
    let worker = Worker::new(exec.clone());
    let d = Arc::new(FakeDispatcher::default());
    let assignments = d.feed_assignments();
    let subs = d.feed_subscriptions();
    let (client, manager) = serve_fake(d.clone()).await;
    let w = worker.clone();
    let link = Link { client, session_id: "s1".into(), manager };
    tokio::spawn(async move { link::serve(&w, link).await });

    let id = task_id("w-logs");
    let script =
        "echo one; echo two >&2; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done";
    assignments.send(Ok(complete(vec![sh_task(&id, IMAGE, script)]))).await.unwrap();
    let running =
        |d: &FakeDispatcher| d.reported(&id).last().map(|r| r.1) == Some(TaskState::Running);
    assert!(eventually(Duration::from_secs(20), || running(&d)).await);

    let follow = LogSubscription {
        id: "sub".into(),
        task_ids: vec![id.clone()],
        follow: true,
        tail: 0,
        close: false,
    };
    subs.send(Ok(follow)).await.unwrap();
    assert!(eventually(Duration::from_secs(10), || d.lines().len() >= 6).await, "{:?}", d.lines());
    let published = d.published.lock().unwrap().clone();
    let lines: Vec<(i32, String)> = published
        .iter()
        .flat_map(|(_, m)| m.messages.iter())
        .map(|l| (l.stream, String::from_utf8_lossy(&l.data).into_owned()))
        .collect();
    assert_eq!(lines[0], (1, "one".to_string()));
    assert!(lines.contains(&(2, "two".to_string())), "{lines:?}");
    let ticks: Vec<&str> =
        lines.iter().filter(|(s, _)| *s == 1).skip(1).map(|(_, l)| l.as_str()).collect();
    let want: Vec<String> = (0..ticks.len()).map(|i| format!("tick {i}")).collect();
    assert_eq!(ticks, want, "every line once, in order, as it is written");
    assert!(published.iter().all(|(_, m)| m.session_id == "s1" && m.subscription_id == "sub"));

    worker.remove_all().await;
    assert_removed(&exec, &id).await;
    assert!(exec.log_paths(&id).is_none(), "a removed task's logs go with it");
}

#[tokio::test]
async fn a_restarted_agent_reattaches_the_tasks_still_wanted_and_removes_the_rest() {
    if !have_root("worker_restart") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (kept, dropped) = (task_id("w-kept"), task_id("w-dropped"));
    let script = "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done";
    let tasks = vec![sh_task(&kept, IMAGE, script), sh_task(&dropped, IMAGE, "sleep 1000")];

    // The first agent runs both, then goes away without stopping anything.
    let pid = {
        let (dir, tasks, kept) = (dir.path().to_path_buf(), tasks.clone(), kept.clone());
        std::thread::spawn(move || {
            let tokio = tokio::runtime::Runtime::new().unwrap();
            tokio.block_on(async {
                let exec = new_test_executor(&dir);
                let worker = Worker::new(exec.clone());
                let reports = Reports::collect(&worker);
                let ids: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
                worker.apply(complete(tasks)).await;
                for id in &ids {
                    reports.reaches(id, TaskState::Running).await;
                }
                worker.shutdown();
                exec.runtime().runc().state(&kept).await.unwrap().unwrap().pid
            })
        })
        .join()
        .unwrap()
    };

    // The managers still want one of them running (and know it is RUNNING).
    let exec = new_test_executor(dir.path());
    let worker = Worker::new(exec.clone());
    let reports = Reports::collect(&worker);
    let mut still = tasks[0].clone();
    still.status = Some(TaskStatus { state: TaskState::Running as i32, ..Default::default() });
    worker.apply(complete(vec![still.clone()])).await;

    assert_removed(&exec, &dropped).await;
    let (out, _) = exec.log_paths(&kept).unwrap();
    let ticks = || std::fs::read_to_string(&out).unwrap_or_default().lines().count();
    let before = ticks();
    assert!(eventually(Duration::from_secs(5), || ticks() > before + 3).await, "output flows");
    assert_eq!(exec.runtime().runc().state(&kept).await.unwrap().unwrap().pid, pid, "same process");
    assert!(reports.of(&kept).is_empty(), "nothing to tell: it is still RUNNING");

    still.desired_state = TaskState::Shutdown as i32;
    worker.apply(changed(still)).await;
    reports.reaches(&kept, TaskState::Shutdown).await;
    assert_removed(&exec, &kept).await;
}
