//! Image references: `name[:tag][@sha256:hex]` or a bare `sha256:hex` image id. No IO.

use super::ImageError;

/// A parsed image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// Repository name, `None` for a bare id.
    pub name: Option<String>,
    pub tag: Option<String>,
    /// `sha256:<64 hex>` pin.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses `s`; a name without a tag or digest means `:latest`.
    pub fn parse(s: &str) -> Result<Reference, ImageError> {
        let bad =
            |why: &str| ImageError::BadReference { reference: s.to_string(), reason: why.into() };
        if s.starts_with("sha256:") {
            check_digest(s).ok_or_else(|| bad("an image id is sha256: and 64 hex digits"))?;
            return Ok(Reference { name: None, tag: None, digest: Some(s.to_string()) });
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                check_digest(d).ok_or_else(|| bad("a digest pin is @sha256: and 64 hex digits"))?;
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A ':' after the last '/' starts the tag (a ':' before it belongs to a registry port).
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[slash..].rfind(':') {
            Some(i) => (&rest[..slash + i], Some(rest[slash + i + 1..].to_string())),
            None => (rest, None),
        };
        if name.is_empty() || !name.chars().all(name_char) {
            return Err(bad("names are lowercase letters, digits and . _ - / :"));
        }
        if tag.as_deref().is_some_and(|t| t.is_empty() || t.len() > 128 || !t.chars().all(tag_char))
        {
            return Err(bad("tags are up to 128 letters, digits, '.', '_' or '-'"));
        }
        let tag = tag.or_else(|| digest.is_none().then(|| "latest".to_string()));
        Ok(Reference { name: Some(name.to_string()), tag, digest })
    }

    /// `name:tag`, the key under which the store keeps names.
    pub fn tagged(&self) -> Option<String> {
        Some(format!("{}:{}", self.name.as_ref()?, self.tag.as_ref()?))
    }
}

fn name_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '/' | ':')
}

fn tag_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// The hex part of `sha256:<64 lowercase hex>`, or `None` if `d` is not such a digest.
pub fn check_digest(d: &str) -> Option<&str> {
    shoal_registry::is_digest(d).then(|| &d[7..])
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_the_forms() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.tagged().unwrap(), "busybox:latest");
        let r = Reference::parse("localhost:5000/app/web:1.2").unwrap();
        assert_eq!(
            (r.name.as_deref(), r.tag.as_deref()),
            (Some("localhost:5000/app/web"), Some("1.2"))
        );
        let r = Reference::parse(&format!("web@{D}")).unwrap();
        assert_eq!((r.tag, r.digest.as_deref()), (None, Some(D)));
        let r = Reference::parse(D).unwrap();
        assert!(r.name.is_none());
    }

    #[test]
    fn rejects_bad_ones() {
        for bad in ["", "UPPER", "a:", "a@sha256:12", "sha256:xyz", "a:b c"] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
