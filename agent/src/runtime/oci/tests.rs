use std::time::Duration;

use oci_spec::runtime::{Capability, LinuxNamespaceType};

use super::*;
use crate::runtime::seccomp;
use crate::runtime::spec::{Resources, RootfsSource};

fn inputs() -> ConfigInputs {
    ConfigInputs {
        cgroups_path: "/shoal/t1".into(),
        default_pids_limit: 1024,
        seccomp: None,
        userns: None,
        init_binary: Some("/usr/bin/tini-static".into()),
        landlock_helper: None,
        labels: None,
        apparmor_profile: None,
        files_dir: "/b/secrets".into(),
    }
}

#[test]
fn secret_files_are_bound_read_only_from_the_tasks_tmpfs() {
    let mut s = spec();
    s.files.push(crate::runtime::SecretFile {
        target: "/run/secrets/pw".into(),
        uid: 0,
        gid: 0,
        mode: 0o400,
        data: b"hunter2".to_vec(),
    });
    let config = build(&s, &inputs()).unwrap();
    let m = config
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.destination() == std::path::Path::new("/run/secrets/pw"))
        .expect("a mount for the secret");
    assert_eq!(m.source().as_deref(), Some(std::path::Path::new("/b/secrets/f0")));
    let opts = m.options().clone().unwrap();
    for o in ["bind", "ro", "nosuid", "nodev", "noexec"] {
        assert!(opts.iter().any(|x| x == o), "{o} missing from {opts:?}");
    }
    assert!(!format!("{s:?}").contains("hunter2"), "Debug of a task spec shows no secret");
}

fn spec() -> TaskSpec {
    let mut s = TaskSpec::new("t1", RootfsSource::Dir("/r".into()), vec!["/bin/sh".into()]);
    s.stop_grace = Duration::from_secs(1);
    s
}

fn namespaces_of(cfg: &Spec) -> Vec<LinuxNamespaceType> {
    cfg.linux().as_ref().unwrap().namespaces().as_ref().unwrap().iter().map(|n| n.typ()).collect()
}

#[test]
fn defaults_isolate() {
    let cfg = build(&spec(), &inputs()).unwrap();
    let p = cfg.process().as_ref().unwrap();
    assert_eq!(p.no_new_privileges(), Some(true));
    let caps = p.capabilities().as_ref().unwrap();
    assert_eq!(caps.bounding().as_ref().unwrap().len(), 14);
    assert!(caps.effective().as_ref().unwrap().contains(&Capability::NetRaw));
    assert!(caps.inheritable().as_ref().unwrap().is_empty());
    let ns = namespaces_of(&cfg);
    for t in [LinuxNamespaceType::Pid, LinuxNamespaceType::Network, LinuxNamespaceType::Mount] {
        assert!(ns.contains(&t), "{t:?} missing");
    }
    assert!(!ns.contains(&LinuxNamespaceType::User));
    let linux = cfg.linux().as_ref().unwrap();
    assert_eq!(linux.masked_paths().as_ref().unwrap().len(), 11);
    assert_eq!(linux.cgroups_path().as_deref(), Some(Path::new("/shoal/t1")));
    let res = linux.resources().as_ref().unwrap();
    assert_eq!(res.pids().unwrap().limit(), 1024);
    assert!(res.memory().is_none());
    assert_eq!(cfg.hostname().as_deref(), Some("t1"));
}

#[test]
fn limits_are_applied() {
    let mut s = spec();
    s.resources =
        Resources { memory_bytes: Some(64 << 20), nano_cpus: Some(500_000_000), pids: Some(20) };
    let cfg = build(&s, &inputs()).unwrap();
    let res = cfg.linux().as_ref().unwrap().resources().as_ref().unwrap();
    assert_eq!(res.memory().unwrap().limit(), Some(64 << 20));
    assert_eq!(res.cpu().as_ref().unwrap().quota(), Some(50_000));
    assert_eq!(res.pids().unwrap().limit(), 20);
}

#[test]
fn host_namespaces_and_userns() {
    let mut s = spec();
    s.host_namespaces = vec![HostNamespace::Network];
    let mut i = inputs();
    let r = IdRange { host_start: 100_000, size: 65536 };
    i.userns = Some((r, r));
    let cfg = build(&s, &i).unwrap();
    let ns = namespaces_of(&cfg);
    assert!(!ns.contains(&LinuxNamespaceType::Network));
    assert!(ns.contains(&LinuxNamespaceType::User));
    let maps = cfg.linux().as_ref().unwrap().uid_mappings().as_ref().unwrap();
    assert_eq!((maps[0].container_id(), maps[0].host_id()), (0, 100_000));
}

#[test]
fn init_wraps_the_command() {
    let mut s = spec();
    s.init = true;
    let cfg = build(&s, &inputs()).unwrap();
    let args = cfg.process().as_ref().unwrap().args().clone().unwrap();
    assert_eq!(args, vec![INIT_PATH, "--", "/bin/sh"]);
    let mounts = cfg.mounts().as_ref().unwrap();
    assert!(mounts.iter().any(|m| m.destination() == Path::new(INIT_PATH)));
}

#[test]
fn the_landlock_helper_comes_first_and_is_bound_read_only() {
    let mut s = spec();
    s.init = true;
    let mut i = inputs();
    i.landlock_helper = Some("/data/bin/shoal-landlock".into());
    let cfg = build(&s, &i).unwrap();
    let args = cfg.process().as_ref().unwrap().args().clone().unwrap();
    assert_eq!(args, vec![LANDLOCK_PATH, "--", INIT_PATH, "--", "/bin/sh"]);
    let mounts = cfg.mounts().as_ref().unwrap();
    let m = mounts.iter().find(|m| m.destination() == Path::new(LANDLOCK_PATH)).unwrap();
    assert_eq!(m.source().as_deref(), Some(Path::new("/data/bin/shoal-landlock")));
    assert_eq!(m.options().clone().unwrap(), ["bind", "ro", "nosuid", "nodev"]);
    s.init = false;
    let args = build(&s, &i).unwrap().process().as_ref().unwrap().args().clone().unwrap();
    assert_eq!(args, vec![LANDLOCK_PATH, "--", "/bin/sh"]);
}

#[test]
fn exec_d_commands_start_through_the_helper_with_the_scopes_of_shared_namespaces() {
    use shoal_landlock::Scopes;
    let mut i = inputs();
    i.landlock_helper = Some("/data/bin/shoal-landlock".into());
    let mut s = spec();
    assert_eq!(exec_landlock(&build(&s, &i).unwrap()), Some(Scopes::NONE));
    s.host_namespaces = vec![HostNamespace::Pid];
    let signal = Scopes { signal: true, abstract_unix_socket: false };
    assert_eq!(exec_landlock(&build(&s, &i).unwrap()), Some(signal));
    s.host_namespaces = vec![HostNamespace::Network, HostNamespace::Pid];
    i.userns = Some((IdRange { host_start: 1, size: 2 }, IdRange { host_start: 1, size: 2 }));
    assert_eq!(exec_landlock(&build(&s, &i).unwrap()), Some(Scopes::ALL));
    // Tasks without the helper (no Landlock here, landlock=off, no-new-privileges off).
    i.landlock_helper = None;
    assert_eq!(exec_landlock(&build(&s, &i).unwrap()), None);
}

#[test]
fn seccomp_and_ulimits_serialize() {
    let mut s = spec();
    s.ulimits.push(crate::runtime::spec::Ulimit { name: "nofile".into(), soft: 10, hard: 20 });
    let mut i = inputs();
    let caps = crate::runtime::caps::effective(&[], &[]).unwrap();
    i.seccomp =
        Some(seccomp::resolve(&seccomp::builtin_profile(), &seccomp::Target::native(&caps)));
    let cfg = build(&s, &i).unwrap();
    let json = serde_json::to_value(&cfg).unwrap();
    assert_eq!(json["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
    assert_eq!(json["process"]["rlimits"][0]["type"], "RLIMIT_NOFILE");
    assert_eq!(json["process"]["rlimits"][0]["soft"], 10);
    assert_eq!(json["process"]["capabilities"]["bounding"].as_array().unwrap().len(), 14);
}

#[test]
fn new_privileges_only_when_the_task_asks() {
    let mut s = spec();
    s.allow_new_privileges = true;
    let cfg = build(&s, &inputs()).unwrap();
    assert_eq!(cfg.process().as_ref().unwrap().no_new_privileges(), Some(false));
}

#[test]
fn mac_labels_and_the_apparmor_profile_reach_the_config() {
    let bare = build(&spec(), &inputs()).unwrap();
    let p = bare.process().as_ref().unwrap();
    assert_eq!((p.selinux_label(), p.apparmor_profile()), (&None, &None));
    assert_eq!(bare.linux().as_ref().unwrap().mount_label(), &None);
    let mut i = inputs();
    i.labels = Some(crate::runtime::mac::TaskLabels {
        process: "system_u:system_r:container_t:s0:c1,c2".into(),
        file: "system_u:object_r:container_file_t:s0:c1,c2".into(),
    });
    i.apparmor_profile = Some("shoal-default".into());
    let config = build(&spec(), &i).unwrap();
    let p = config.process().as_ref().unwrap();
    assert_eq!(p.selinux_label().as_deref(), Some("system_u:system_r:container_t:s0:c1,c2"));
    assert_eq!(p.apparmor_profile().as_deref(), Some("shoal-default"));
    assert_eq!(
        config.linux().as_ref().unwrap().mount_label().as_deref(),
        Some("system_u:object_r:container_file_t:s0:c1,c2")
    );
    let json = serde_json::to_value(&config).unwrap();
    assert_eq!(json["process"]["apparmorProfile"], "shoal-default");
    assert_eq!(json["process"]["selinuxLabel"], "system_u:system_r:container_t:s0:c1,c2");
    assert_eq!(json["linux"]["mountLabel"], "system_u:object_r:container_file_t:s0:c1,c2");
}
