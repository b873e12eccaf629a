//! The node's own limits on what tasks may ask for. Every option that widens privilege beyond the
//! defaults must be allowed here, or the task is REJECTED naming the refused option. No IO.

use std::collections::BTreeSet;

use oci_spec::runtime::LinuxSeccomp;

use super::error::{Result, RuntimeError};

/// Why shoald's task-policy flags were refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyFlagError {
    /// A `--task-allow-cap-add` that names no capability.
    #[error("{0}")]
    Capability(String),
    /// `--userns-remap USER` without USER's range in /etc/subuid or /etc/subgid.
    #[error("{file} has no range for user {user:?}; add one (e.g. {user}:100000:65536)")]
    NoSubordinateIds { file: String, user: String },
}
use super::spec::{AppArmorChoice, HostNamespace, SeccompChoice, SelinuxChoice, TaskSpec};
use super::{caps, seccomp};

/// A range of host ids that container ids 0..size map onto.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    pub host_start: u32,
    pub size: u32,
}

impl IdRange {
    /// Reads `user`'s first range from a subordinate-id file (`/etc/subuid`, `/etc/subgid`).
    pub fn from_subid_file(text: &str, user: &str) -> Option<IdRange> {
        text.lines().find_map(|l| {
            let mut f = l.trim().split(':');
            let (name, start, size) = (f.next()?, f.next()?, f.next()?);
            (name == user).then_some(())?;
            Some(IdRange { host_start: start.parse().ok()?, size: size.parse().ok()? })
        })
    }
}

/// What this node allows beyond the defaults.
#[derive(Clone, Debug, Default)]
pub struct NodePolicy {
    /// Tasks may run with no seccomp filter.
    pub allow_unconfined_seccomp: bool,
    /// Tasks may bring their own seccomp profile, however permissive; without this, a custom
    /// profile runs only when it is provably at least as strict as the built-in default.
    pub allow_custom_seccomp: bool,
    /// Capabilities beyond Docker's 14 that tasks may add (`CAP_NET_ADMIN`, or `ALL`).
    pub allowed_cap_add: BTreeSet<String>,
    /// Host namespaces tasks may share.
    pub allowed_host_namespaces: BTreeSet<HostNamespace>,
    /// uid range for user-namespace remapping; `None` means the node cannot remap.
    pub userns_uids: Option<IdRange>,
    /// gid range for user-namespace remapping.
    pub userns_gids: Option<IdRange>,
    /// Tasks may run with no-new-privileges off.
    pub allow_new_privileges: bool,
    /// Tasks may run without the node's Landlock ruleset (`landlock=off`).
    pub allow_landlock_off: bool,
    /// Directories whose insides tasks may bind-mount (`--task-allow-bind`); none by default.
    pub allowed_bind_prefixes: Vec<std::path::PathBuf>,
    /// Tasks may set their own SELinux type or level, or run unlabelled
    /// (`--task-allow-label-override`).
    pub allow_label_override: bool,
    /// AppArmor profiles tasks may pick instead of shoal-default, `unconfined` among them
    /// (`--task-allow-apparmor`).
    pub allowed_apparmor: BTreeSet<String>,
}

impl NodePolicy {
    /// A node that allows nothing beyond the defaults.
    pub fn secure_default() -> NodePolicy {
        NodePolicy::default()
    }

    /// A policy from `shoald`'s flags: capabilities tasks may add, unconfined seccomp, custom
    /// seccomp profiles, no-new-privileges off, `landlock=off`, and the user whose subordinate
    /// ids (`/etc/subuid`, `/etc/subgid`) remapped tasks run as.
    pub fn from_flags(
        cap_add: &[String],
        unconfined_seccomp: bool,
        custom_seccomp: bool,
        new_privileges: bool,
        landlock_off: bool,
        userns_user: Option<&str>,
    ) -> std::result::Result<NodePolicy, PolicyFlagError> {
        let mut p = NodePolicy::secure_default();
        for cap in cap_add {
            caps::normalize(cap).map_err(|e| PolicyFlagError::Capability(e.to_string()))?;
            p.allowed_cap_add.insert(cap.clone());
        }
        p.allow_unconfined_seccomp = unconfined_seccomp;
        p.allow_custom_seccomp = custom_seccomp;
        p.allow_new_privileges = new_privileges;
        p.allow_landlock_off = landlock_off;
        if let Some(user) = userns_user {
            let range = |file: &str| {
                let text = std::fs::read_to_string(file).unwrap_or_default();
                IdRange::from_subid_file(&text, user).ok_or_else(|| {
                    PolicyFlagError::NoSubordinateIds {
                        file: file.to_string(),
                        user: user.to_string(),
                    }
                })
            };
            p.userns_uids = Some(range("/etc/subuid")?);
            p.userns_gids = Some(range("/etc/subgid")?);
        }
        Ok(p)
    }

    /// The host group of remapped container roots, where this node remaps: the one group
    /// besides root's that may pass through the directories on the way to a task's rootfs.
    pub fn remapped_root_gid(&self) -> Option<u32> {
        self.userns_uids.and(self.userns_gids).map(|g| g.host_start)
    }

    /// Accepts `spec` or names the first option this node refuses.
    pub fn check(&self, spec: &TaskSpec) -> Result<()> {
        self.check_seccomp(&spec.seccomp)?;
        self.check_caps(spec)?;
        for ns in &spec.host_namespaces {
            if !self.allowed_host_namespaces.contains(ns) {
                return Err(RuntimeError::refused(
                    ns.option_name(),
                    "this node does not let tasks share its namespaces",
                    "run it where the runtime's policy allows that (shoald has no flag for it)",
                ));
            }
        }
        if spec.allow_new_privileges && !self.allow_new_privileges {
            return Err(RuntimeError::refused(
                "no-new-privileges=false",
                "this node runs every task with no-new-privileges",
                "allow it with shoald --task-allow-new-privileges",
            ));
        }
        if !spec.landlock && !self.allow_landlock_off {
            return Err(RuntimeError::refused(
                "landlock=off",
                "this node runs every task under its Landlock ruleset",
                "allow it with shoald --task-allow-landlock-off",
            ));
        }
        if spec.selinux != SelinuxChoice::Default && !self.allow_label_override {
            return Err(RuntimeError::refused(
                spec.selinux.option_name(),
                "this node gives every task its own SELinux label (container_t and a category pair no other task holds)",
                "allow it with shoald --task-allow-label-override",
            ));
        }
        if spec.apparmor != AppArmorChoice::Default
            && !self.allowed_apparmor.contains(spec.apparmor.name())
        {
            let name = spec.apparmor.name();
            return Err(RuntimeError::refused(
                format!("apparmor={name}"),
                format!(
                    "this node runs every task under AppArmor profile {}",
                    AppArmorChoice::Default.name()
                ),
                format!("allow it with shoald --task-allow-apparmor {name}"),
            ));
        }
        if spec.userns_remap && (self.userns_uids.is_none() || self.userns_gids.is_none()) {
            return Err(RuntimeError::refused(
                "userns-remap",
                "this node has no subordinate uid/gid range configured",
                "allow it with shoald --userns-remap USER (a user with /etc/subuid and /etc/subgid ranges)",
            ));
        }
        Ok(())
    }

    fn check_seccomp(&self, choice: &SeccompChoice) -> Result<()> {
        match choice {
            SeccompChoice::Unconfined if !self.allow_unconfined_seccomp => {
                Err(RuntimeError::refused(
                    "seccomp=unconfined",
                    "this node requires a seccomp filter",
                    "allow it with shoald --task-allow-unconfined-seccomp",
                ))
            }
            // A custom profile is judged once it is loaded and resolved: check_custom_seccomp.
            _ => Ok(()),
        }
    }

    /// Accepts a task's own seccomp filter where the node allows custom profiles, or where it
    /// lets through nothing the node's `default` filter (resolved for the same task) would not.
    pub fn check_custom_seccomp(
        &self,
        custom: &LinuxSeccomp,
        default: &LinuxSeccomp,
    ) -> Result<()> {
        if self.allow_custom_seccomp {
            return Ok(());
        }
        match seccomp::weaker_than(custom, default) {
            None => Ok(()),
            Some(why) => Err(RuntimeError::refused(
                "seccomp=<custom profile>",
                format!("this node runs custom seccomp profiles only when they are at least as strict as its default, and {why}"),
                "allow it with shoald --task-allow-custom-seccomp",
            )),
        }
    }

    fn check_caps(&self, spec: &TaskSpec) -> Result<()> {
        let set = caps::effective(&spec.cap_add, &spec.cap_drop)?;
        let all = self.allowed_cap_add.iter().any(|c| c.eq_ignore_ascii_case("ALL"));
        let allowed: BTreeSet<&str> =
            self.allowed_cap_add.iter().filter_map(|c| caps::normalize(c).ok()).collect();
        match caps::widening(&set).into_iter().find(|c| !all && !allowed.contains(c)) {
            Some(cap) => Err(RuntimeError::refused(
                format!("cap-add {cap}"),
                "this node does not allow that capability",
                format!("allow it with shoald --task-allow-cap-add {cap}"),
            )),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::spec::RootfsSource;

    fn spec() -> TaskSpec {
        TaskSpec::new("t", RootfsSource::Dir("/x".into()), vec!["/bin/true".into()])
    }

    fn refused_option(p: &NodePolicy, s: &TaskSpec) -> String {
        match p.check(s) {
            Err(RuntimeError::Refused { option, .. }) => option,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn defaults_pass() {
        assert!(NodePolicy::secure_default().check(&spec()).is_ok());
    }

    #[test]
    fn table_of_refusals() {
        let p = NodePolicy::secure_default();
        type Edit = fn(&mut TaskSpec);
        let cases: Vec<(Edit, &str)> = vec![
            (|s| s.seccomp = SeccompChoice::Unconfined, "seccomp=unconfined"),
            (|s| s.cap_add = vec!["SYS_ADMIN".into()], "cap-add CAP_SYS_ADMIN"),
            (|s| s.cap_add = vec!["ALL".into()], "cap-add CAP_AUDIT_CONTROL"),
            (|s| s.host_namespaces = vec![HostNamespace::Pid], "pid=host"),
            (|s| s.userns_remap = true, "userns-remap"),
            (|s| s.allow_new_privileges = true, "no-new-privileges=false"),
            (|s| s.landlock = false, "landlock=off"),
            (|s| s.selinux = SelinuxChoice::Disable, "label=disable"),
            (
                |s| s.selinux = SelinuxChoice::Custom { kind: Some("spc_t".into()), level: None },
                "label=type:spc_t",
            ),
            (
                |s| {
                    s.selinux = SelinuxChoice::Custom { kind: None, level: Some("s0:c1,c2".into()) }
                },
                "label=level:s0:c1,c2",
            ),
            (|s| s.apparmor = AppArmorChoice::Unconfined, "apparmor=unconfined"),
            (|s| s.apparmor = AppArmorChoice::Profile("mine".into()), "apparmor=mine"),
        ];
        for (edit, option) in cases {
            let mut s = spec();
            edit(&mut s);
            assert_eq!(refused_option(&p, &s), option);
        }
    }

    #[test]
    fn a_refusal_names_the_option_and_the_flag_that_allows_it() {
        let mut s = spec();
        s.landlock = false;
        let err = NodePolicy::secure_default().check(&s).unwrap_err().to_string();
        assert_eq!(
            err,
            "node policy refuses task option `landlock=off`: this node runs every task under its Landlock ruleset; allow it with shoald --task-allow-landlock-off, or remove it from the service"
        );
        let mut s = spec();
        s.cap_add = vec!["NET_ADMIN".into()];
        let err = NodePolicy::secure_default().check(&s).unwrap_err().to_string();
        assert!(err.contains("allow it with shoald --task-allow-cap-add CAP_NET_ADMIN,"), "{err}");
    }

    #[test]
    fn mac_relaxations_pass_only_as_far_as_the_node_allows() {
        let mut p = NodePolicy::secure_default();
        p.allow_label_override = true;
        p.allowed_apparmor.insert("unconfined".into());
        let mut s = spec();
        s.selinux = SelinuxChoice::Disable;
        s.apparmor = AppArmorChoice::Unconfined;
        p.check(&s).unwrap();
        s.apparmor = AppArmorChoice::Profile("other".into());
        assert_eq!(refused_option(&p, &s), "apparmor=other", "unconfined allows no other profile");
        let msg = p.check(&s).unwrap_err().to_string();
        assert!(msg.contains("shoald --task-allow-apparmor other"), "{msg}");
    }

    #[test]
    fn dropping_and_readding_defaults_is_not_widening() {
        let mut s = spec();
        s.cap_drop = vec!["ALL".into()];
        s.cap_add = vec!["CHOWN".into()];
        assert!(NodePolicy::secure_default().check(&s).is_ok());
    }

    #[test]
    fn allowed_options_pass() {
        let mut p = NodePolicy::secure_default();
        p.allow_unconfined_seccomp = true;
        p.allowed_cap_add.insert("net_admin".into());
        p.allowed_host_namespaces.insert(HostNamespace::Network);
        p.allow_landlock_off = true;
        let mut s = spec();
        s.landlock = false;
        s.seccomp = SeccompChoice::Unconfined;
        s.cap_add = vec!["CAP_NET_ADMIN".into()];
        s.host_namespaces = vec![HostNamespace::Network];
        assert!(p.check(&s).is_ok());
    }

    #[test]
    fn flags_build_a_policy_and_bad_capabilities_are_caught() {
        let p =
            NodePolicy::from_flags(&["NET_ADMIN".into()], true, false, true, true, None).unwrap();
        assert!(p.allow_unconfined_seccomp && p.allow_new_privileges && !p.allow_custom_seccomp);
        assert!(p.allow_landlock_off);
        let mut s = spec();
        s.cap_add = vec!["CAP_NET_ADMIN".into()];
        s.landlock = false;
        assert!(p.check(&s).is_ok());
        let strict =
            NodePolicy::from_flags(&["ALL".into()], true, true, true, false, None).unwrap();
        assert_eq!(refused_option(&strict, &s), "landlock=off", "only its own flag allows it");
        assert!(NodePolicy::from_flags(&["NOT_A_CAP".into()], false, false, false, false, None)
            .is_err());
    }

    #[test]
    fn subid_file_parsing() {
        let text = "alice:100000:65536\nshoal:231072:65536\n";
        assert_eq!(
            IdRange::from_subid_file(text, "shoal"),
            Some(IdRange { host_start: 231072, size: 65536 })
        );
        assert_eq!(IdRange::from_subid_file(text, "bob"), None);
    }
}
