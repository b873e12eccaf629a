//! Owns the image half of a service spec on the manager: pinning the image to the digest its
//! registry gives at create and update, so that every replica runs the same bytes however the
//! tag moves, and keeping the spec's registry credentials across updates that do not send
//! new ones. Registries are reached with this node's TLS settings (`certs.d`,
//! `--insecure-registry`); credentials come only from the spec (`--with-registry-auth`).

use std::time::Duration;

use shoal_proto::{ContainerSpec, ServiceSpec};
use shoal_registry::{Credentials, ImageRef, RegistryError};

use crate::manager::Shared;

/// The longest a create or update waits for a registry before it goes on unpinned.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(20);

/// An image reference the manager can tell is wrong before any node tries it.
#[derive(Debug, thiserror::Error)]
#[error("image {image:?}: {reason}")]
pub struct BadImage {
    pub image: String,
    pub reason: String,
}

/// Checks the spec's image reference and pins it to a digest unless `no_resolve`, the spec
/// already carries one, or the image names one itself. A registry that cannot answer is not
/// an error (Docker's behaviour): the spec stays unpinned and the warning says so.
pub(crate) async fn pin(
    shared: &Shared,
    spec: &mut ServiceSpec,
    no_resolve: bool,
) -> Result<Vec<String>, BadImage> {
    let Some(c) = spec.container.as_mut() else { return Ok(Vec::new()) };
    if c.image.is_empty() {
        return Ok(Vec::new());
    }
    let r = ImageRef::parse(&c.image)
        .map_err(|e| BadImage { image: c.image.clone(), reason: e.to_string() })?;
    if let Some(d) = &r.digest {
        c.image_digest = d.clone();
        return Ok(Vec::new());
    }
    if no_resolve || !c.image_digest.is_empty() {
        return Ok(Vec::new());
    }
    let creds = credentials_for(c, &r);
    let resolved: Result<String, String> = match shared.registry() {
        Ok(client) => {
            match tokio::time::timeout(RESOLVE_TIMEOUT, client.resolve(&r, creds.as_ref())).await {
                Ok(result) => result.map_err(|e: RegistryError| e.to_string()),
                Err(_) => Err(format!("no answer within {}s", RESOLVE_TIMEOUT.as_secs())),
            }
        }
        Err(e) => Err(e.to_string()),
    };
    match resolved {
        Ok(digest) => {
            tracing::info!(image = %c.image, %digest, "pinned the service's image");
            c.image_digest = digest;
            Ok(Vec::new())
        }
        Err(e) => {
            tracing::warn!(image = %c.image, error = %e, "could not pin the service's image");
            Ok(vec![format!(
                "image {} could not be accessed on a registry to record its digest ({e}); each \
                 node will run the {} it has or can pull, possibly not the same on every node",
                c.image, c.image
            )])
        }
    }
}

/// The spec's credentials if they are for the image's registry.
fn credentials_for(c: &ContainerSpec, r: &ImageRef) -> Option<Credentials> {
    let a = c.registry_auth.as_ref()?;
    (a.registry == r.registry && !a.password.is_empty())
        .then(|| Credentials { username: a.username.clone(), password: a.password.clone() })
}

/// An update that sends no new credentials (or the password-less ones a read gave it) keeps
/// the current ones, as long as the image stays on the same registry.
pub(crate) fn keep_auth(new: &mut ServiceSpec, current: &ServiceSpec) {
    let (Some(n), Some(old)) = (new.container.as_mut(), current.container.as_ref()) else {
        return;
    };
    let Some(old_auth) = &old.registry_auth else { return };
    let sent = n.registry_auth.as_ref().is_some_and(|a| !a.password.is_empty());
    let same_registry =
        ImageRef::parse(&n.image).ok().is_some_and(|r| r.registry == old_auth.registry);
    if !sent {
        n.registry_auth = same_registry.then(|| old_auth.clone());
    }
}

/// An update that could not pin the image anew runs what runs now if the image is the same.
pub(crate) fn keep_pin(new: &mut ServiceSpec, current: &ServiceSpec) {
    let (Some(n), Some(old)) = (new.container.as_mut(), current.container.as_ref()) else {
        return;
    };
    if n.image_digest.is_empty() && n.image == old.image {
        n.image_digest = old.image_digest.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::RegistryAuth;

    fn spec(image: &str, auth: Option<(&str, &str)>) -> ServiceSpec {
        ServiceSpec {
            container: Some(ContainerSpec {
                image: image.into(),
                registry_auth: auth.map(|(r, p)| RegistryAuth {
                    registry: r.into(),
                    username: "u".into(),
                    password: p.into(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn auth(s: &ServiceSpec) -> Option<String> {
        s.container.as_ref()?.registry_auth.as_ref().map(|a| a.password.clone())
    }

    #[test]
    fn an_update_without_credentials_keeps_the_current_ones() {
        let current = spec("reg:5000/app:1", Some(("reg:5000", "pw")));
        let mut new = spec("reg:5000/app:2", None);
        keep_auth(&mut new, &current);
        assert_eq!(auth(&new).as_deref(), Some("pw"));
        // What a read gave back (no password) counts as not sending any.
        let mut new = spec("reg:5000/app:2", Some(("reg:5000", "")));
        keep_auth(&mut new, &current);
        assert_eq!(auth(&new).as_deref(), Some("pw"));
    }

    #[test]
    fn new_credentials_replace_and_another_registry_drops_them() {
        let current = spec("reg:5000/app:1", Some(("reg:5000", "pw")));
        let mut new = spec("reg:5000/app:1", Some(("reg:5000", "new")));
        keep_auth(&mut new, &current);
        assert_eq!(auth(&new).as_deref(), Some("new"));
        let mut moved = spec("other:5000/app:1", None);
        keep_auth(&mut moved, &current);
        assert_eq!(auth(&moved), None, "credentials followed the image to another registry");
    }
}
