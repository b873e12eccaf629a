//! Seccomp profiles in Docker's JSON format, and their resolution into the OCI `linux.seccomp`
//! of one task (rules kept or dropped by the task's capabilities, architecture and kernel).
//! Owns no IO beyond reading a profile file.

mod default;
mod strictness;

use std::collections::BTreeSet;
use std::path::Path;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompOperator, LinuxSyscall,
};
use serde::{Deserialize, Serialize};

use super::error::{Result, RuntimeError};

pub use default::builtin_profile;
pub use strictness::weaker_than;

/// A seccomp profile as Docker, Podman and containers-common write it.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DockerProfile {
    pub default_action: LinuxSeccompAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arch_map: Vec<ArchMap>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<Arch>,
    #[serde(default)]
    pub syscalls: Vec<SyscallRule>,
}

/// An architecture and the sub-architectures that share its filter.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchMap {
    pub architecture: Arch,
    #[serde(default)]
    pub sub_architectures: Vec<Arch>,
}

/// One rule: names, action, optional argument filters and conditions.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyscallRule {
    #[serde(default)]
    pub names: Vec<String>,
    /// The pre-2017 single-name form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub action: LinuxSeccompAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<LinuxSeccompArg>>,
    #[serde(default)]
    pub includes: Filter,
    #[serde(default)]
    pub excludes: Filter,
}

/// Conditions under which a rule applies (`includes`) or does not (`excludes`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caps: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arches: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_kernel: Option<String>,
}

/// What a profile is resolved against.
#[derive(Clone, Debug)]
pub struct Target<'a> {
    pub caps: &'a BTreeSet<&'static str>,
    /// Go's name for the architecture (`amd64`, `arm64`).
    pub arch: &'static str,
    pub kernel: (u32, u32),
}

impl Target<'_> {
    /// This machine's architecture and kernel, with `caps`.
    pub fn native<'a>(caps: &'a BTreeSet<&'static str>) -> Target<'a> {
        Target { caps, arch: native_arch(), kernel: running_kernel() }
    }
}

/// Reads a Docker-format profile from `path`, unchanged.
pub fn load_profile(path: &Path) -> Result<DockerProfile> {
    let err = |reason: String| RuntimeError::SeccompProfile { path: path.into(), reason };
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| err(format!("not a seccomp profile: {e}")))
}

/// The OCI filter for `target`: rules whose conditions do not hold are left out.
pub fn resolve(profile: &DockerProfile, target: &Target) -> LinuxSeccomp {
    let syscalls: Vec<LinuxSyscall> = profile
        .syscalls
        .iter()
        .filter(|r| applies(r, target))
        .map(|r| {
            let mut names = r.names.clone();
            names.extend(r.name.clone());
            let mut s = LinuxSyscall::default();
            s.set_names(names).set_action(r.action).set_errno_ret(r.errno_ret);
            s.set_args(r.args.clone().filter(|a| !a.is_empty()));
            s
        })
        .collect();
    let mut out = LinuxSeccomp::default();
    out.set_default_action(profile.default_action)
        .set_default_errno_ret(profile.default_errno_ret)
        .set_architectures(architectures(profile, target.arch))
        .set_syscalls(Some(syscalls));
    out
}

fn applies(rule: &SyscallRule, t: &Target) -> bool {
    let inc = &rule.includes;
    let exc = &rule.excludes;
    let has = |c: &String| t.caps.contains(c.as_str());
    inc.caps.iter().all(has)
        && (inc.arches.is_empty() || inc.arches.iter().any(|a| a == t.arch))
        && inc.min_kernel.as_deref().is_none_or(|k| t.kernel >= parse_kernel(k))
        && !exc.caps.iter().any(has)
        && !exc.arches.iter().any(|a| a == t.arch)
        && exc.min_kernel.as_deref().is_none_or(|k| t.kernel < parse_kernel(k))
}

fn architectures(profile: &DockerProfile, arch: &str) -> Option<Vec<Arch>> {
    let native = scmp_arch(arch)?;
    if let Some(m) = profile.arch_map.iter().find(|m| m.architecture == native) {
        let mut v = vec![m.architecture];
        v.extend(m.sub_architectures.iter().copied());
        return Some(v);
    }
    (!profile.architectures.is_empty()).then(|| profile.architectures.clone())
}

fn scmp_arch(go_arch: &str) -> Option<Arch> {
    match go_arch {
        "amd64" => Some(Arch::ScmpArchX86_64),
        "arm64" => Some(Arch::ScmpArchAarch64),
        _ => None,
    }
}

/// Go's name for this machine's architecture, as profiles use it.
pub fn native_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn parse_kernel(s: &str) -> (u32, u32) {
    let mut it = s.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse().ok());
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// The running kernel's major and minor version.
pub fn running_kernel() -> (u32, u32) {
    parse_kernel(rustix::system::uname().release().to_str().unwrap_or("0.0"))
}

/// What a resolved filter does with one call; used to compare profiles without running them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Errno(u32),
    Other(LinuxSeccompAction),
}

impl Decision {
    /// Whether the call runs.
    pub fn allowed(self) -> bool {
        matches!(self, Decision::Allow | Decision::Other(LinuxSeccompAction::ScmpActLog))
    }
}

/// The decision of `filter` for `name` called with `args`: a rule whose argument conditions
/// match wins over an unconditional rule, which wins over the default action.
pub fn decide(filter: &LinuxSeccomp, name: &str, args: [u64; 6]) -> Decision {
    let rules = filter.syscalls().as_deref().unwrap_or_default();
    let named = || rules.iter().filter(|r| r.names().iter().any(|n| n == name));
    let conditional = named().find(|r| {
        r.args().as_ref().is_some_and(|a| !a.is_empty() && a.iter().all(|c| arg_matches(c, &args)))
    });
    let plain = named().find(|r| r.args().as_ref().is_none_or(|a| a.is_empty()));
    match conditional.or(plain) {
        Some(r) => to_decision(r.action(), r.errno_ret()),
        None => to_decision(filter.default_action(), filter.default_errno_ret()),
    }
}

fn to_decision(action: LinuxSeccompAction, errno: Option<u32>) -> Decision {
    match action {
        LinuxSeccompAction::ScmpActAllow => Decision::Allow,
        LinuxSeccompAction::ScmpActErrno => Decision::Errno(errno.unwrap_or(1)),
        other => Decision::Other(other),
    }
}

fn arg_matches(c: &LinuxSeccompArg, args: &[u64; 6]) -> bool {
    let Some(&v) = args.get(c.index()) else { return false };
    let (a, b) = (c.value(), c.value_two().unwrap_or(0));
    match c.op() {
        LinuxSeccompOperator::ScmpCmpNe => v != a,
        LinuxSeccompOperator::ScmpCmpLt => v < a,
        LinuxSeccompOperator::ScmpCmpLe => v <= a,
        LinuxSeccompOperator::ScmpCmpEq => v == a,
        LinuxSeccompOperator::ScmpCmpGe => v >= a,
        LinuxSeccompOperator::ScmpCmpGt => v > a,
        LinuxSeccompOperator::ScmpCmpMaskedEq => v & a == b,
    }
}

#[cfg(test)]
mod tests;
