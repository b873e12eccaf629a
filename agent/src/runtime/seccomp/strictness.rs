//! Whether a task's own seccomp filter is at least as strict as the node's default, both resolved
//! for the same task (capabilities, architecture, kernel): a node that does not allow custom
//! profiles still runs one that lets through nothing the default would not.
//!
//! The rule is deliberately simple and sound rather than complete: every call the custom filter
//! lets run must be let run by the default, rule by rule. A rule that lets a call run with
//! argument conditions passes when the default allows that call unconditionally, or has a rule
//! with exactly the same conditions; anything cleverer is refused, and the node's flag is the way
//! out.

use std::collections::BTreeSet;

use oci_spec::runtime::{Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSyscall};

/// Why `custom` is not provably as strict as `default` (`None` when it is).
pub fn weaker_than(custom: &LinuxSeccomp, default: &LinuxSeccomp) -> Option<String> {
    if lets_run(custom.default_action()) {
        return Some(format!(
            "its default action {} lets every unlisted call run",
            action_name(custom.default_action())
        ));
    }
    if let Some(arch) = extra_architecture(custom, default) {
        return Some(format!("it covers architecture {arch:?}, which the default does not"));
    }
    let rules = custom.syscalls().as_deref().unwrap_or_default();
    rules.iter().filter(|r| lets_run(r.action())).find_map(|r| weaker_rule(r, default))
}

/// Whether a call that meets `action` reaches the kernel (or a tracer or supervisor that may
/// let it): everything except errno, trap and the kill actions.
fn lets_run(action: LinuxSeccompAction) -> bool {
    use LinuxSeccompAction::*;
    !matches!(
        action,
        ScmpActErrno | ScmpActTrap | ScmpActKill | ScmpActKillThread | ScmpActKillProcess
    )
}

fn action_name(action: LinuxSeccompAction) -> String {
    serde_json::to_value(action)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{action:?}"))
}

/// An architecture the custom filter covers and the default does not (no list means the
/// native one only, which every list here includes).
fn extra_architecture(custom: &LinuxSeccomp, default: &LinuxSeccomp) -> Option<Arch> {
    let theirs = custom.architectures().as_deref().unwrap_or_default();
    let ours = default.architectures().as_deref().unwrap_or_default();
    theirs.iter().copied().find(|a| !ours.contains(a))
}

/// Why `rule` (which lets its calls run) allows more than `default`, if it does.
fn weaker_rule(rule: &LinuxSyscall, default: &LinuxSeccomp) -> Option<String> {
    let conditions = normalized(rule.args().as_deref().unwrap_or_default());
    let allowed = default.syscalls().as_deref().unwrap_or_default();
    rule.names().iter().find_map(|name| {
        let of_name = || {
            allowed.iter().filter(|d| {
                d.action() == LinuxSeccompAction::ScmpActAllow && d.names().contains(name)
            })
        };
        let unconditional = of_name().any(|d| d.args().as_deref().is_none_or(|a| a.is_empty()));
        let same =
            |d: &&LinuxSyscall| normalized(d.args().as_deref().unwrap_or_default()) == conditions;
        if unconditional || (!conditions.is_empty() && of_name().any(|d| same(&d))) {
            return None;
        }
        Some(match of_name().next() {
            None => format!("it lets {name} run, which the default refuses"),
            Some(_) => {
                format!("it lets {name} run under other argument conditions than the default's")
            }
        })
    })
}

/// Conditions as a set, `valueTwo` absent and zero alike.
fn normalized(args: &[LinuxSeccompArg]) -> BTreeSet<(usize, u64, u64, String)> {
    args.iter()
        .map(|a| (a.index(), a.value(), a.value_two().unwrap_or(0), format!("{:?}", a.op())))
        .collect()
}
