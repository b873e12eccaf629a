//! Owns the rules of a service's mandatory-access-control options: SELinux `label=` options
//! and the AppArmor profile name. Checked by the client and the manager before a spec is
//! accepted and by the agent again before it turns them into an OCI config; the node decides
//! separately whether it allows them at all.

use crate::SelinuxOptions;

use super::SpecError;

/// The AppArmor profile every task runs under where the node has AppArmor.
pub const APPARMOR_DEFAULT: &str = "shoal-default";

/// The SELinux type of task processes where nothing else is asked for.
pub const SELINUX_PROCESS_TYPE: &str = "container_t";

/// The SELinux type of a task's files (rootfs, secrets tmpfs, named volumes).
pub const SELINUX_FILE_TYPE: &str = "container_file_t";

/// The MAC layers a node may report applying, and `node.platform.mac` may name.
pub const MAC_LAYERS: [&str; 3] = ["landlock", "selinux", "apparmor"];

fn bad(value: &str, why: impl Into<String>) -> SpecError {
    SpecError::SecurityOpt { value: value.to_string(), why: why.into() }
}

/// Checks `label=` options: `disable` alone, a type such as `spc_t` (letters, digits, `_`,
/// ending in `_t`), an MLS/MCS level such as `s0:c1,c2` or `s0-s0:c0.c1023`.
pub fn check_selinux(o: &SelinuxOptions) -> Result<(), SpecError> {
    if o.disable && (!o.r#type.is_empty() || !o.level.is_empty()) {
        return Err(bad("label=disable", "disable cannot be combined with a type or level"));
    }
    if !o.r#type.is_empty() {
        let t = &o.r#type;
        let word = t.len() <= 64
            && t.ends_with("_t")
            && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !word {
            return Err(bad(
                &format!("label=type:{t}"),
                "an SELinux type is letters, digits and '_', ending in _t (e.g. container_t)",
            ));
        }
    }
    if !o.level.is_empty() && !valid_level(&o.level) {
        return Err(bad(
            &format!("label=level:{}", o.level),
            "an SELinux level is a sensitivity and optional categories, e.g. s0:c1,c2",
        ));
    }
    Ok(())
}

/// `s0`, `s0:c1,c2`, `s0:c0.c1023`, `s0-s0:c0.c1023`: sensitivities `sN`, categories `cN` (N ≤
/// 1023) separated by `,` or joined in ranges by `.`.
fn valid_level(level: &str) -> bool {
    let (range, cats) = match level.split_once(':') {
        Some((r, c)) => (r, Some(c)),
        None => (level, None),
    };
    let numbered = |s: &str, p: char| {
        s.strip_prefix(p).is_some_and(|n| {
            !n.is_empty() && n.len() <= 4 && n.chars().all(|c| c.is_ascii_digit()) && {
                n.parse::<u32>().is_ok_and(|v| v <= 1023)
            }
        })
    };
    let sens_ok = match range.split_once('-') {
        Some((a, b)) => numbered(a, 's') && numbered(b, 's'),
        None => numbered(range, 's'),
    };
    let cats_ok = cats.is_none_or(|c| {
        !c.is_empty()
            && c.split(',').all(|part| match part.split_once('.') {
                Some((a, b)) => numbered(a, 'c') && numbered(b, 'c'),
                None => numbered(part, 'c'),
            })
    });
    sens_ok && cats_ok && level.len() <= 256
}

/// Checks an `apparmor=` profile name: `unconfined` or a profile name AppArmor accepts
/// (letters, digits and `-_.`, not starting with `-`).
pub fn check_apparmor(name: &str) -> Result<(), SpecError> {
    if name.is_empty() {
        return Ok(());
    }
    let ok = name.len() <= 128
        && !name.starts_with(['-', '.'])
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(bad(
            &format!("apparmor={name}"),
            "a profile name is letters, digits, '-', '_' and '.' (or unconfined)",
        ))
    }
}

/// Whether the options ask for anything but the node's own label.
pub fn selinux_overridden(o: Option<&SelinuxOptions>) -> bool {
    o.is_some_and(|o| o.disable || !o.r#type.is_empty() || !o.level.is_empty())
}

/// What `--security-opt` spells for the options, for messages (`label=disable`, …).
pub fn selinux_option_names(o: &SelinuxOptions) -> Vec<String> {
    let mut v = Vec::new();
    if o.disable {
        v.push("label=disable".to_string());
    }
    if !o.r#type.is_empty() {
        v.push(format!("label=type:{}", o.r#type));
    }
    if !o.level.is_empty() {
        v.push(format!("label=level:{}", o.level));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(disable: bool, t: &str, l: &str) -> SelinuxOptions {
        SelinuxOptions { disable, r#type: t.into(), level: l.into() }
    }

    #[test]
    fn selinux_options_are_checked() {
        for ok in [
            opts(true, "", ""),
            opts(false, "spc_t", ""),
            opts(false, "", "s0:c1,c2"),
            opts(false, "container_t", "s0-s0:c0.c1023"),
            opts(false, "", "s0"),
        ] {
            check_selinux(&ok).unwrap();
        }
        for (bad, says) in [
            (opts(true, "spc_t", ""), "cannot be combined"),
            (opts(false, "spc", ""), "ending in _t"),
            (opts(false, "a:b_t", ""), "ending in _t"),
            (opts(false, "", "s0:c1024"), "sensitivity and optional categories"),
            (opts(false, "", "c1,c2"), "sensitivity"),
            (opts(false, "", "s0:"), "sensitivity"),
            (opts(false, "", "s0:c1;rm"), "sensitivity"),
        ] {
            let e = check_selinux(&bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad:?}: {e}");
            assert!(e.starts_with("invalid --security-opt label="), "{e}");
        }
    }

    #[test]
    fn apparmor_names_are_checked() {
        for ok in ["", "unconfined", "shoal-default", "my.profile_2"] {
            check_apparmor(ok).unwrap();
        }
        for bad in ["-x", "a b", "a/b", "x\n", &"p".repeat(129)] {
            assert!(check_apparmor(bad).unwrap_err().to_string().contains("apparmor="), "{bad}");
        }
    }

    #[test]
    fn overrides_are_named_as_the_user_wrote_them() {
        assert!(!selinux_overridden(None) && !selinux_overridden(Some(&opts(false, "", ""))));
        let o = opts(false, "spc_t", "s0:c1,c2");
        assert!(selinux_overridden(Some(&o)));
        assert_eq!(selinux_option_names(&o), ["label=type:spc_t", "label=level:s0:c1,c2"]);
    }
}
