//! Image references as Docker reads them: `[REGISTRY/]REPOSITORY[:TAG][@sha256:HEX]`, with
//! Docker Hub's normalisation (`busybox` is `docker.io/library/busybox:latest`).

use crate::RegistryError;

/// Docker Hub's name in references, and the host that serves it.
pub const DOCKER_HUB: &str = "docker.io";
pub const DOCKER_HUB_HOST: &str = "registry-1.docker.io";

/// A parsed, normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// `HOST[:PORT]`, `docker.io` for Docker Hub.
    pub registry: String,
    /// `library/busybox`, `app/web`.
    pub repository: String,
    /// `None` only when pinned by digest alone.
    pub tag: Option<String>,
    /// `sha256:<64 hex>`.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses `s`; a reference without tag or digest means `:latest`.
    pub fn parse(s: &str) -> Result<ImageRef, RegistryError> {
        let bad = |reason: &str| RegistryError::BadReference {
            reference: s.to_string(),
            reason: reason.to_string(),
        };
        if s.is_empty() || s.len() > 512 {
            return Err(bad("a reference is 1 to 512 characters"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                if !is_digest(d) {
                    return Err(bad("a digest is sha256: and 64 lowercase hex digits"));
                }
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[slash..].rfind(':') {
            Some(i) => (&rest[..slash + i], Some(rest[slash + i + 1..].to_string())),
            None => (rest, None),
        };
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                && !t.starts_with(['.', '-']);
            if !ok {
                return Err(bad("a tag is up to 128 letters, digits, '.', '_' or '-'"));
            }
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), path.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        if !registry_ok(&registry) {
            return Err(bad("a registry is HOST[:PORT]"));
        }
        if path.is_empty() || !path.split('/').all(component_ok) {
            return Err(bad(
                "repository names are lowercase letters and digits, separated by '.', '_', '-' or '/'",
            ));
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        let tag = tag.or_else(|| digest.is_none().then(|| "latest".to_string()));
        Ok(ImageRef { registry, repository, tag, digest })
    }

    /// The reference as users write it: Docker Hub's `docker.io/` and `library/` left out.
    pub fn familiar(&self) -> String {
        let mut out = if self.registry == DOCKER_HUB {
            self.repository.strip_prefix("library/").unwrap_or(&self.repository).to_string()
        } else {
            format!("{}/{}", self.registry, self.repository)
        };
        if let Some(t) = &self.tag {
            out.push(':');
            out.push_str(t);
        }
        if let Some(d) = &self.digest {
            out.push('@');
            out.push_str(d);
        }
        out
    }

    /// The repository in full, `HOST[:PORT]/PATH` (`docker.io/library/busybox`): how content
    /// trust names it.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same repository pinned to `digest` (the tag is kept for display).
    pub fn with_digest(&self, digest: &str) -> ImageRef {
        ImageRef { digest: Some(digest.to_string()), ..self.clone() }
    }

    /// What a manifest request names: the digest if pinned, else the tag.
    pub fn manifest_ref(&self) -> &str {
        self.digest.as_deref().or(self.tag.as_deref()).unwrap_or("latest")
    }

    /// The host the registry's API is served on.
    pub fn host(&self) -> &str {
        registry_host(&self.registry)
    }
}

/// `docker.io` is served by `registry-1.docker.io`; every other registry by its own name.
pub fn registry_host(registry: &str) -> &str {
    if registry == DOCKER_HUB || registry == "index.docker.io" {
        DOCKER_HUB_HOST
    } else {
        registry
    }
}

/// `sha256:` and 64 lowercase hex digits.
pub fn is_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64 && h.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    })
}

fn component_ok(c: &str) -> bool {
    !c.is_empty()
        && c.chars().all(|ch| {
            ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-')
        })
        && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
        && c.ends_with(|ch: char| ch.is_ascii_alphanumeric())
}

fn registry_ok(r: &str) -> bool {
    let (host, port) = match r.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (r, None),
    };
    !host.is_empty()
        && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
        && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn docker_hub_names_are_normalised() {
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("docker.io", "library/busybox", Some("latest"))
        );
        assert_eq!(r.familiar(), "busybox:latest");
        assert_eq!(r.host(), "registry-1.docker.io");
        let r = ImageRef::parse("bitnami/redis:7").unwrap();
        assert_eq!((r.registry.as_str(), r.repository.as_str()), ("docker.io", "bitnami/redis"));
        assert_eq!(r.familiar(), "bitnami/redis:7");
    }

    #[test]
    fn registries_ports_tags_and_digests() {
        let r = ImageRef::parse("10.0.0.4:5000/app/web:1.2").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("10.0.0.4:5000", "app/web", Some("1.2"))
        );
        let r = ImageRef::parse(&format!("localhost/web:1@{D}")).unwrap();
        assert_eq!((r.registry.as_str(), r.digest.as_deref()), ("localhost", Some(D)));
        assert_eq!(r.manifest_ref(), D);
        let r = ImageRef::parse(&format!("reg.example/web@{D}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.familiar(), format!("reg.example/web@{D}"));
        let pinned = ImageRef::parse("reg.example/web:2").unwrap().with_digest(D);
        assert_eq!(pinned.familiar(), format!("reg.example/web:2@{D}"));
        let bare = ImageRef { tag: None, digest: None, ..pinned };
        assert_eq!(bare.familiar(), "reg.example/web");
    }

    #[test]
    fn bad_references_are_refused_with_a_reason() {
        for bad in [
            "",
            "UPPER",
            "web:",
            "web@sha256:12",
            "a//b",
            "reg:99999/x",
            "web:-tag",
            "-web",
            "web:a b",
        ] {
            match ImageRef::parse(bad) {
                Err(RegistryError::BadReference { reason, .. }) => assert!(!reason.is_empty()),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any string: an error or a reference that prints back to one that parses the same.
        #[test]
        fn references_round_trip(s in ".{0,80}") {
            if let Ok(r) = ImageRef::parse(&s) {
                prop_assert_eq!(ImageRef::parse(&r.familiar()).unwrap(), r);
            }
        }
    }
}
