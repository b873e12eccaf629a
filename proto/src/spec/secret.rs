//! Owns the rules of secrets and configs and of the references services make to them: names,
//! data sizes (Swarm's limits), mount targets and file modes.

use crate::SecretKind;

use super::SpecError;

/// Swarm's limit for secrets: under 500 KiB.
pub const MAX_SECRET: usize = 500 * 1024;
/// Swarm's limit for configs: under 1000 KiB.
pub const MAX_CONFIG: usize = 1000 * 1024;
/// The longest secret or config name.
pub const MAX_NAME: usize = 64;
/// The file mode of a mounted secret or config unless the reference says otherwise.
pub const DEFAULT_MODE: u32 = 0o444;

/// The size data of `kind` must stay under.
pub fn max_data(kind: SecretKind) -> usize {
    match kind {
        SecretKind::Secret => MAX_SECRET,
        SecretKind::Config => MAX_CONFIG,
    }
}

/// The kind a request names.
pub fn kind_of(raw: i32) -> Result<SecretKind, SpecError> {
    SecretKind::try_from(raw).map_err(|_| SpecError::SecretKind(raw))
}

/// Names like Swarm's: letters and digits, with `-`, `_` or `.` inside, at most 64.
pub fn validate_name(kind: SecretKind, name: &str) -> Result<(), SpecError> {
    let inner_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(inner_ok);
    if ok {
        Ok(())
    } else {
        Err(SpecError::SecretName { kind, name: name.to_string() })
    }
}

/// Data must be at least one byte and under its kind's limit.
pub fn validate_data(kind: SecretKind, data: &[u8]) -> Result<(), SpecError> {
    if data.is_empty() {
        return Err(SpecError::EmptyData { kind });
    }
    if data.len() >= max_data(kind) {
        return Err(SpecError::DataSize { kind, size: data.len() });
    }
    Ok(())
}

/// Where a reference without a target mounts: `/run/secrets/<name>` for a secret (the target is
/// the file name), `/<name>` for a config.
pub fn default_target(kind: SecretKind, name: &str) -> String {
    match kind {
        SecretKind::Secret => name.to_string(),
        SecretKind::Config => format!("/{name}"),
    }
}

/// Secrets are file names under /run/secrets; configs absolute paths without `..`.
pub fn check_target(kind: SecretKind, target: &str) -> Result<(), SpecError> {
    let ok = match kind {
        SecretKind::Secret => !target.contains('/') && target != "." && target != "..",
        SecretKind::Config => target.starts_with('/') && !target.split('/').any(|p| p == ".."),
    };
    if ok {
        Ok(())
    } else {
        Err(SpecError::Target { kind, target: target.to_string() })
    }
}

/// What a target of `kind` must be, for messages.
pub(super) fn target_rule(kind: SecretKind) -> &'static str {
    match kind {
        SecretKind::Secret => "a file name under /run/secrets",
        SecretKind::Config => "an absolute path without '..'",
    }
}

/// File modes are permission bits only.
pub fn check_mode(mode: u32) -> Result<(), SpecError> {
    if mode > 0o777 {
        return Err(SpecError::FileMode(mode));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_sizes_follow_swarm() {
        for ok in ["db", "psql_user", "a.b-c_d", "x"] {
            validate_name(SecretKind::Secret, ok).unwrap();
        }
        for bad in ["", "-db", "db-", "a/b", "with space", &"x".repeat(65)] {
            let e = validate_name(SecretKind::Secret, bad).unwrap_err().to_string();
            assert!(e.contains("invalid secret name"), "{bad}: {e}");
        }
        assert!(validate_data(SecretKind::Secret, b"").is_err());
        assert!(validate_data(SecretKind::Secret, &vec![1; MAX_SECRET - 1]).is_ok());
        let e = validate_data(SecretKind::Secret, &vec![1; MAX_SECRET]).unwrap_err().to_string();
        assert!(e.contains("500 KiB"), "{e}");
        assert!(validate_data(SecretKind::Config, &vec![1; MAX_SECRET]).is_ok());
        assert!(validate_data(SecretKind::Config, &vec![1; MAX_CONFIG]).is_err());
    }

    #[test]
    fn targets_and_modes_are_checked_with_the_rule_named() {
        for (kind, ok) in [(SecretKind::Secret, "db"), (SecretKind::Config, "/etc/app.conf")] {
            check_target(kind, ok).unwrap();
        }
        let e = check_target(SecretKind::Secret, "a/b").unwrap_err().to_string();
        assert_eq!(e, "invalid secret target \"a/b\": a file name under /run/secrets");
        let e = check_target(SecretKind::Config, "/a/../b").unwrap_err().to_string();
        assert_eq!(e, "invalid config target \"/a/../b\": an absolute path without '..'");
        assert_eq!(check_mode(0o1777).unwrap_err().to_string(), "invalid file mode 1777");
        assert_eq!(default_target(SecretKind::Config, "app"), "/app");
    }
}
