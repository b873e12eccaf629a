//! Item 9, the smaller holes: secrets in `Debug` output, a daemon whose memory another process
//! of its user may read (and that may dump core with keys in it), services and replicas without
//! bound, and a `service ps` table that task output can break.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use shoal_proto::{
    CreateServiceRequest, ListTasksResponse, Service, ServiceSpec, Task, TaskState, TaskStatus,
};

use shoal_testkit::cluster::TestNode;
use shoal_testkit::netns;

const BEAT: Duration = Duration::from_millis(200);
/// The user the host's unprivileged processes run as.
const NOBODY: u32 = 65534;

#[test]
fn logging_a_request_never_shows_a_join_token_or_unlock_key() {
    let token = "SWMTKN-1-OUTSIDER-WOULD-LOVE-THIS";
    let key = "SWMKEY-1-OUTSIDER-WOULD-LOVE-THIS";
    let logged = format!(
        "{:?} {:?} {:?} {:?} {:?} {:?} {:?}",
        shoal_proto::InitResponse {
            worker_token: token.into(),
            manager_token: token.into(),
            unlock_key: key.into(),
            ..Default::default()
        },
        shoal_proto::JoinRequest { token: token.into(), ..Default::default() },
        shoal_proto::IssueNodeCertificateRequest { token: token.into(), ..Default::default() },
        shoal_proto::UnlockRequest { key: key.into() },
        shoal_proto::JoinTokenInfo { token: token.into(), ..Default::default() },
        shoal_proto::UnlockKeyInfo { key: key.into() },
        shoal::node::daemon::JoinOptions { token: token.into(), ..Default::default() },
    );
    assert!(!logged.contains("OUTSIDER"), "a secret reached Debug output: {logged}");
}

/// `shoald` marks itself not dumpable first thing: no core dump of it is written, and even a
/// process of the same user cannot read its memory, environment or file descriptors. The
/// observable: its /proc files belong to root, not to the user it runs as (here `nobody`, which
/// the fake executor allows), and that user's `cat` is refused.
#[test]
fn another_process_of_shoalds_user_cannot_read_its_memory() {
    if !netns::root_for("another_process_of_shoalds_user_cannot_read_its_memory", "setuid") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .unwrap();
    let socket = dir.path().join("shoal.sock");
    let mut shoald = Command::new(&*netns::SHOALD)
        .arg("--data-root")
        .arg(dir.path().join("data"))
        .arg("-H")
        .arg(format!("unix://{}", socket.display()))
        .args(["--executor", "fake"])
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = shoald.id();
    let ready = (0..300).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        socket.exists()
    });
    let environ = format!("/proc/{pid}/environ");
    let owner = std::fs::metadata(&environ).map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    let read = Command::new("cat").arg(&environ).uid(NOBODY).gid(NOBODY).output().unwrap();
    let _ = shoald.kill();
    let _ = shoald.wait();
    assert!(ready, "shoald (as nobody, fake executor) did not come up");
    assert_eq!(owner.unwrap(), 0, "{environ} belongs to shoald's user: shoald is dumpable");
    assert!(!read.status.success(), "a process of shoald's user read its environment");
    assert!(String::from_utf8_lossy(&read.stderr).contains("Permission denied"));
}

fn spec(name: &str, replicas: u64) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        container: Some(shoal_proto::ContainerSpec {
            image: "busybox".into(),
            ..Default::default()
        }),
        replicas,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_and_services_are_capped_with_an_error_naming_the_limit() {
    let m = TestNode::start("m").await;
    m.init(BEAT, None).await;
    let mut control = m.control().await;

    // `--replicas 18446744073709551615` would have the managers build tasks until they run
    // out of memory; it is refused before anything is stored.
    let create = |name: &str, replicas| CreateServiceRequest {
        spec: Some(spec(name, replicas)),
        ..Default::default()
    };
    let err = control.create_service(create("huge", u64::MAX)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("at most 10000"), "{}", err.message());
    let err = control.create_service(create("huge", 10_001)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{}", err.message());

    // Fill the cluster to the cap in one write (creating ten thousand services one by one would
    // take minutes), then ask for one more.
    let manager = m.daemon.info().await.manager.unwrap();
    let cap = 10_000; // shoal_manager::services::MAX_SERVICES
    manager
        .store()
        .update(|tx| {
            for i in 0..cap {
                let id = format!("filler{i:019}");
                let name = format!("filler-{i}");
                tx.claim_name("service", &name, &id)?;
                let service = Service { id, spec: Some(spec(&name, 0)), ..Default::default() };
                tx.create(service)?;
            }
            Ok::<_, shoal_manager::store::StoreError>(())
        })
        .await
        .unwrap();
    let err = control.create_service(create("one-more", 1)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{}", err.message());
    assert!(err.message().contains("(10000)"), "{}", err.message());
    assert!(manager.store().list::<Service>().unwrap().len() == cap, "nothing was added");
}

/// A worker controls its tasks' error text. A line break, carriage return or terminal escape in
/// it must not break `service ps`'s rows or leave the cursor where the next prompt lands on
/// the table: every task is one line, and the output ends with a newline.
#[test]
fn service_ps_prints_one_whole_line_per_task_whatever_a_task_reported() {
    let task = |id: &str, slot, err: &str| Task {
        id: id.into(),
        service_name: "web".into(),
        slot,
        status: Some(TaskStatus {
            state: TaskState::Failed as i32,
            err: err.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let listing = ListTasksResponse {
        tasks: vec![
            task("t1", 1, "exit status 1: boom\n"),
            task("t2", 2, "oops\r\x1b[2K\x1b[1A"),
            task("t3", 3, "half a line\r"),
        ],
        ..Default::default()
    };
    for no_trunc in [false, true] {
        let out = shoal::cli::service::service_ps(&listing, no_trunc, false);
        assert!(out.ends_with('\n'), "{out:?}");
        assert_eq!(out.lines().count(), 4, "a header and one line per task: {out:?}");
        assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out:?}");
        assert!(out.contains("exit status 1: boom"), "{out:?}");
    }
}
