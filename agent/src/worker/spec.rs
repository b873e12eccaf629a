//! From an assigned task to the runtime's `TaskSpec`: which stored image it runs, and every
//! option of its `ContainerSpec` and resource limits. Reads the image store; writes nothing.
//! Errors are sentences for the task's REJECTED status.

use std::path::PathBuf;
use std::time::Duration;

use shoal_proto::{ContainerSpec, Task};

use crate::image::{ImageError, ImageInfo, ImageStore};
use crate::runtime::{AppArmorChoice, SeccompChoice, SelinuxChoice, TaskSpec, Ulimit};

/// Why a task cannot run as specified on this node; the message becomes its REJECTED status.
#[derive(Debug, thiserror::Error)]
pub enum TaskSpecError {
    /// The spec names neither an image nor a digest.
    #[error("the task names no image")]
    NoImage,
    /// The image is not loaded here; `pin` is " (digest)" when the spec pins one.
    #[error("image {name}{pin} is not on node {node}; pull it with 'shoal image pull' or load it with 'shoal image load'")]
    ImageMissing { name: String, pin: String, node: String },
    /// The image store failed otherwise.
    #[error(transparent)]
    Image(ImageError),
    /// A task without a spec.
    #[error("the task has no spec")]
    NoSpec,
    /// A task spec without a container spec.
    #[error("the task has no container spec")]
    NoContainer,
    /// A user the image does not know (or whose files cannot be read safely).
    #[error("user {0:?}: {1}")]
    User(String, String),
    /// A mount the node refuses or cannot prepare.
    #[error("{0}")]
    Mount(String),
    /// A stop signal that is not one.
    #[error("stop signal {0:?} is not a signal; use e.g. SIGTERM, SIGINT or 15")]
    Signal(String),
    /// The custom seccomp profile could not be written.
    #[error("writing the task's seccomp profile to {path:?}: {source}")]
    Profile { path: PathBuf, source: std::io::Error },
    /// The directory for the profile could not be made.
    #[error(transparent)]
    ProfileDir(crate::runtime::RuntimeError),
    /// A `label=` or `apparmor=` option that cannot be applied.
    #[error(transparent)]
    SecurityOpt(shoal_proto::spec::SpecError),
    /// A `{{…}}` placeholder the hostname template does not know.
    #[error("hostname template {template:?}: unknown placeholder {field:?}; use .Service.Name, .Service.ID, .Task.Name, .Task.ID, .Task.Slot, .Node.ID or .Node.Hostname")]
    Template { template: String, field: String },
}

/// Expands Docker's service templates (`{{.Task.Slot}}`, `{{.Node.Hostname}}`, …) in a
/// hostname, for task `task` on the node called `node_hostname`.
pub fn expand_template(
    template: &str,
    task: &Task,
    node_hostname: &str,
) -> Result<String, TaskSpecError> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let bad = |field: &str| TaskSpecError::Template {
            template: template.to_string(),
            field: field.to_string(),
        };
        let end = after.find("}}").ok_or_else(|| bad(after))?;
        let field = after[..end].trim();
        let slot = if task.slot > 0 { task.slot.to_string() } else { task.node_id.clone() };
        let value = match field {
            ".Service.Name" => task.service_name.clone(),
            ".Service.ID" => task.service_id.clone(),
            ".Task.ID" => task.id.clone(),
            ".Task.Slot" => slot,
            ".Task.Name" => format!("{}.{slot}.{}", task.service_name, task.id),
            ".Node.ID" => task.node_id.clone(),
            ".Node.Hostname" => node_hostname.to_string(),
            other => return Err(bad(other)),
        };
        out.push_str(&value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A task's runtime spec, and the custom seccomp profile to write where the spec says.
#[derive(Debug)]
pub struct Built {
    pub spec: TaskSpec,
    pub seccomp_profile: Option<(PathBuf, String)>,
    pub image_id: String,
}

/// The image task `task` runs: the pinned digest if the spec has one, else the name.
pub fn resolve_image(
    store: &ImageStore,
    c: &ContainerSpec,
    node: &str,
) -> Result<ImageInfo, TaskSpecError> {
    let wanted = if c.image_digest.is_empty() { &c.image } else { &c.image_digest };
    if wanted.is_empty() {
        return Err(TaskSpecError::NoImage);
    }
    store.resolve(wanted).map_err(|e| match e {
        ImageError::NotFound(_) => {
            let pin = if c.image_digest.is_empty() || c.image.is_empty() {
                String::new()
            } else {
                format!(" ({})", c.image_digest)
            };
            let name = if c.image.is_empty() { &c.image_digest } else { &c.image };
            TaskSpecError::ImageMissing { name: name.clone(), pin, node: node.to_string() }
        }
        other => TaskSpecError::Image(other),
    })
}

/// The runtime spec of `task` running `image`; a custom seccomp profile goes to `seccomp_path`.
pub fn build(
    task: &Task,
    image: &ImageInfo,
    store: &ImageStore,
    seccomp_path: PathBuf,
) -> Result<Built, TaskSpecError> {
    let spec = task.spec.as_ref().ok_or(TaskSpecError::NoSpec)?;
    let c = spec.container.as_ref().ok_or(TaskSpecError::NoContainer)?;
    let mut t = store
        .task_spec_with(&task.id, image, &c.command, &c.args, &c.env)
        .map_err(TaskSpecError::Image)?;
    if !c.workdir.is_empty() {
        t.workdir = Some(c.workdir.clone());
    }
    if !c.user.is_empty() {
        t.user = store
            .resolve_user(image, &c.user)
            .map_err(|e| TaskSpecError::User(c.user.clone(), e.to_string()))?;
    }
    if !c.hostname.is_empty() {
        t.hostname = Some(c.hostname.clone());
    }
    t.read_only_rootfs = c.read_only;
    t.cap_add = c.cap_add.clone();
    t.cap_drop = c.cap_drop.clone();
    t.allow_new_privileges = c.allow_new_privileges;
    t.landlock = !c.landlock_off;
    (t.selinux, t.apparmor) = mac_choices(c).map_err(TaskSpecError::SecurityOpt)?;
    t.userns_remap = c.userns;
    t.sysctls = c.sysctls.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    t.ulimits = c
        .ulimits
        .iter()
        .map(|u| Ulimit { name: u.name.clone(), soft: u.soft, hard: u.hard })
        .collect();
    if !c.stop_signal.is_empty() {
        t.stop_signal = parse_signal(&c.stop_signal)?;
    }
    if c.stop_grace_ms > 0 {
        t.stop_grace = Duration::from_millis(c.stop_grace_ms);
    }
    t.init = c.init;
    if c.pids_limit > 0 {
        t.resources.pids = Some(c.pids_limit);
    }
    if let Some(limits) = spec.resources.as_ref().and_then(|r| r.limits.as_ref()) {
        t.resources.memory_bytes = (limits.memory_bytes > 0).then_some(limits.memory_bytes);
        t.resources.nano_cpus = (limits.nano_cpus > 0).then_some(limits.nano_cpus as u64);
    }
    let (seccomp, seccomp_profile) = seccomp(&c.seccomp, seccomp_path);
    t.seccomp = seccomp;
    Ok(Built { spec: t, seccomp_profile, image_id: image.id.clone() })
}

/// The task's SELinux and AppArmor choices, checked again here: the node turns them into
/// labels and mount options and trusts no manager to have done so.
fn mac_choices(
    c: &ContainerSpec,
) -> Result<(SelinuxChoice, AppArmorChoice), shoal_proto::spec::SpecError> {
    use shoal_proto::spec::mac;
    let selinux = match &c.selinux {
        Some(o) => {
            mac::check_selinux(o)?;
            let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
            match (o.disable, some(&o.r#type), some(&o.level)) {
                (true, _, _) => SelinuxChoice::Disable,
                (false, None, None) => SelinuxChoice::Default,
                (false, kind, level) => SelinuxChoice::Custom { kind, level },
            }
        }
        None => SelinuxChoice::Default,
    };
    mac::check_apparmor(&c.apparmor)?;
    let apparmor = match c.apparmor.as_str() {
        "" | mac::APPARMOR_DEFAULT => AppArmorChoice::Default,
        "unconfined" => AppArmorChoice::Unconfined,
        name => AppArmorChoice::Profile(name.to_string()),
    };
    Ok((selinux, apparmor))
}

fn seccomp(choice: &str, path: PathBuf) -> (SeccompChoice, Option<(PathBuf, String)>) {
    match choice.trim() {
        "" | "default" => (SeccompChoice::Default, None),
        "unconfined" => (SeccompChoice::Unconfined, None),
        profile => (SeccompChoice::Profile(path.clone()), Some((path, profile.to_string()))),
    }
}

/// The stop signal a task spec names: `SIGTERM`, `TERM` or `15`.
pub fn parse_signal(name: &str) -> Result<i32, TaskSpecError> {
    const NAMES: [&str; 31] = [
        "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
        "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
        "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
    ];
    let bad = || TaskSpecError::Signal(name.to_string());
    if let Ok(n) = name.parse::<i32>() {
        return if (1..=64).contains(&n) { Ok(n) } else { Err(bad()) };
    }
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    let bare = if bare == "POLL" { "IO" } else { bare };
    NAMES.iter().position(|n| *n == bare).map(|i| i as i32 + 1).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::RunConfig;
    use shoal_proto::{ResourceRequirements, Resources, ServiceSpec};

    fn image() -> ImageInfo {
        ImageInfo {
            id: "sha256:abc".into(),
            names: vec!["web:1".into()],
            layers: vec!["sha256:l1".into()],
            config: RunConfig {
                env: vec!["PATH=/bin".into()],
                cmd: vec!["/bin/serve".into()],
                ..Default::default()
            },
            size: 0,
            repo_digests: vec![],
            blobs: vec![],
        }
    }

    fn task(c: ContainerSpec) -> Task {
        let limits = Resources { nano_cpus: 500_000_000, memory_bytes: 64 << 20 };
        let resources = ResourceRequirements { limits: Some(limits), reservations: None };
        let spec =
            ServiceSpec { container: Some(c), resources: Some(resources), ..Default::default() };
        Task { id: "task1".into(), spec: Some(spec), ..Default::default() }
    }

    #[test]
    fn every_option_reaches_the_runtime_spec() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let c = ContainerSpec {
            image: "web:1".into(),
            args: vec!["--port".into(), "80".into()],
            env: vec!["MODE=x".into()],
            workdir: "/srv".into(),
            user: "1000:2000".into(),
            hostname: "h".into(),
            read_only: true,
            cap_add: vec!["NET_ADMIN".into()],
            cap_drop: vec!["CHOWN".into()],
            seccomp: "{\"defaultAction\":\"SCMP_ACT_ALLOW\"}".into(),
            allow_new_privileges: true,
            landlock_off: true,
            userns: true,
            sysctls: [("net.core.somaxconn".to_string(), "1024".to_string())].into(),
            ulimits: vec![shoal_proto::Ulimit { name: "nofile".into(), soft: 10, hard: 20 }],
            stop_signal: "SIGINT".into(),
            stop_grace_ms: 1500,
            init: true,
            pids_limit: 50,
            ..Default::default()
        };
        let b = build(&task(c), &image(), &store, dir.path().join("p.json")).unwrap();
        let s = &b.spec;
        assert_eq!(s.args, vec!["--port", "80"], "args replace CMD");
        assert_eq!(s.env, vec!["PATH=/bin", "MODE=x"]);
        assert_eq!(s.workdir.as_deref(), Some("/srv"));
        assert_eq!((s.user.uid, s.user.gid), (1000, 2000));
        assert_eq!(s.hostname.as_deref(), Some("h"));
        assert!(s.read_only_rootfs && s.allow_new_privileges && s.userns_remap && s.init);
        assert!(!s.landlock, "landlock=off reaches the runtime");
        assert_eq!(
            (s.cap_add.clone(), s.cap_drop.clone()),
            (vec!["NET_ADMIN".into()], vec!["CHOWN".into()])
        );
        assert_eq!(s.sysctls.get("net.core.somaxconn").map(String::as_str), Some("1024"));
        assert_eq!(s.ulimits, vec![Ulimit { name: "nofile".into(), soft: 10, hard: 20 }]);
        assert_eq!((s.stop_signal, s.stop_grace), (2, Duration::from_millis(1500)));
        assert_eq!(s.resources.pids, Some(50));
        assert_eq!(s.resources.memory_bytes, Some(64 << 20));
        assert_eq!(s.resources.nano_cpus, Some(500_000_000));
        assert_eq!(s.seccomp, SeccompChoice::Profile(dir.path().join("p.json")));
        assert!(b.seccomp_profile.unwrap().1.contains("SCMP_ACT_ALLOW"));
    }

    #[test]
    fn defaults_stay_when_the_spec_is_silent() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let c = ContainerSpec { image: "web:1".into(), ..Default::default() };
        let b = build(&task(c), &image(), &store, dir.path().join("p.json")).unwrap();
        assert_eq!(b.spec.args, vec!["/bin/serve"]);
        assert_eq!((b.spec.stop_signal, b.spec.stop_grace), (15, Duration::from_secs(10)));
        assert_eq!(b.spec.seccomp, SeccompChoice::Default);
        assert!(b.seccomp_profile.is_none() && !b.spec.allow_new_privileges);
        assert!(b.spec.landlock, "Landlock stays on unless the spec turns it off");
    }

    #[test]
    fn a_missing_image_names_the_node_and_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let c = ContainerSpec { image: "busybox:latest".into(), ..Default::default() };
        assert_eq!(
            resolve_image(&store, &c, "node-7").unwrap_err().to_string(),
            "image busybox:latest is not on node node-7; pull it with 'shoal image pull' or load it with 'shoal image load'"
        );
        let pinned = ContainerSpec { image_digest: format!("sha256:{}", "a".repeat(64)), ..c };
        let err = resolve_image(&store, &pinned, "node-7").unwrap_err().to_string();
        assert!(err.starts_with("image busybox:latest (sha256:aaa"), "{err}");
    }

    #[test]
    fn signals_by_name_or_number() {
        for (s, n) in [("SIGTERM", 15), ("term", 15), ("SIGKILL", 9), ("USR1", 10), ("3", 3)] {
            assert_eq!(parse_signal(s).ok(), Some(n), "{s}");
        }
        for bad in ["SIGNOPE", "0", "99", ""] {
            assert!(parse_signal(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod template_tests {
    use super::*;

    #[test]
    fn hostname_templates_expand_like_docker_and_unknown_fields_are_named() {
        let task = Task {
            id: "t0abc".into(),
            service_id: "s1".into(),
            service_name: "web".into(),
            node_id: "n9".into(),
            slot: 3,
            ..Default::default()
        };
        let h = expand_template(
            "{{.Service.Name}}-{{ .Task.Slot }}.{{.Node.Hostname}}",
            &task,
            "host-a",
        )
        .unwrap();
        assert_eq!(h, "web-3.host-a");
        assert_eq!(expand_template("plain", &task, "x").unwrap(), "plain");
        assert_eq!(expand_template("{{.Task.Name}}", &task, "x").unwrap(), "web.3.t0abc");
        let err = expand_template("{{.Task.Secret}}", &task, "x").unwrap_err().to_string();
        assert!(err.contains("unknown placeholder \".Task.Secret\""), "{err}");
        assert!(expand_template("{{.Task.ID", &task, "x").is_err(), "unclosed");
    }
}
