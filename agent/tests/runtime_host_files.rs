//! What a host user without privileges (`nobody`) can reach of a task remapped into a user
//! namespace: runc's init, as the remapped root, must pass through the runtime's directories, so
//! they are open to that root's group, and to nobody else. The task still reads its secret as
//! its own root; nobody on the host reads the secret, the environment or the log. Needs root.
//! (The security suite's `host_files` test covers a task without remapping through a real
//! shoald.)

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use shoal_agent::runtime::{IdRange, Runtime, SecretFile};

const SECRET: &str = "remapped-secret-3f8a1c";
const ENV: &str = "remapped-env-9d20b7";

#[tokio::test]
async fn a_remapped_tasks_secret_env_and_log_are_out_of_reach_of_host_users() {
    if !have_root("a_remapped_tasks_secret_env_and_log_are_out_of_reach_of_host_users") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(dir.path());
    // The remapped root owns its rootfs (runc creates the secret's mount point in it).
    let chown =
        std::process::Command::new("chown").arg("-R").arg("200000:200000").arg(&rootfs).status();
    assert!(chown.unwrap().success());
    let rt = new_test_runtime_with(&dir.path().join("rt"), |cfg| {
        let r = IdRange { host_start: 200_000, size: 65_536 };
        cfg.policy.userns_uids = Some(r);
        cfg.policy.userns_gids = Some(r);
    });
    let id = task_id("hostfiles-userns");
    let mut spec =
        sh_task(&id, &rootfs, "cat /run/secrets/s; echo; echo secret-read; exec sleep 60");
    spec.userns_remap = true;
    spec.env.push(format!("TOKEN={ENV}"));
    spec.files.push(SecretFile {
        target: "/run/secrets/s".into(),
        uid: 0,
        gid: 0,
        mode: 0o400,
        data: SECRET.as_bytes().to_vec(),
    });
    rt.create(spec).await.unwrap();
    rt.start(&id).await.unwrap();
    let (out, err) = rt.log_paths(&id);
    let read = || std::fs::read_to_string(&out).is_ok_and(|s| s.contains("secret-read"));
    assert!(
        eventually(Duration::from_secs(10), read).await,
        "the remapped task did not read its secret: {:?} {:?}",
        std::fs::read_to_string(&out),
        std::fs::read_to_string(&err)
    );
    assert!(std::fs::read_to_string(&out).unwrap().contains(SECRET));

    let bundle = rt.bundle_dir(&id);
    let attempts = [
        format!("cat {}", bundle.join("secrets/f0").display()),
        format!("cat {}", bundle.join("config.json").display()),
        format!("cat {}", out.display()),
        format!("ls {}", rt.config().data_root.display()),
        format!("ls {}", bundle.join("rootfs").display()),
    ];
    for attempt in attempts {
        let ok = as_nobody(&attempt);
        assert!(!ok, "nobody on the host could `{attempt}`");
    }
    rt.delete(&id).await.unwrap();
    assert!(!Path::new(&bundle).exists());
}

/// Runs `cmd` with sh as uid and gid 65534 with no other groups; whether it succeeded.
fn as_nobody(cmd: &str) -> bool {
    std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "/bin/sh", "-c"])
        .arg(format!("{cmd} >/dev/null 2>&1"))
        .status()
        .expect("setpriv (util-linux)")
        .success()
}
