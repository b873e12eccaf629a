//! From a stored image to a task spec: the image's entrypoint, command, environment, working
//! directory and user, overridden by what the service sets. No IO.

use super::{ImageError, ImageInfo, ImageStore};
use crate::runtime::TaskSpec;

impl ImageStore {
    /// A task running `image` with the service's `args` (replacing CMD) and `env` (added to and
    /// overriding the image's). The user is the image's `USER`, by number or by name (from the
    /// image's /etc/passwd and /etc/group).
    pub fn task_spec(
        &self,
        id: &str,
        image: &ImageInfo,
        args: &[String],
        env: &[String],
    ) -> Result<TaskSpec, ImageError> {
        self.task_spec_with(id, image, &[], args, env)
    }

    /// Like [`ImageStore::task_spec`], with a service `command` that, when given, replaces the
    /// image's ENTRYPOINT and CMD both (`command` then `args` run), as in Swarm.
    pub fn task_spec_with(
        &self,
        id: &str,
        image: &ImageInfo,
        command: &[String],
        args: &[String],
        env: &[String],
    ) -> Result<TaskSpec, ImageError> {
        let command = if command.is_empty() {
            image.config.command(args)
        } else {
            command.iter().chain(args).cloned().collect()
        };
        if command.is_empty() {
            return Err(ImageError::UnknownArchive(format!(
                "image {} has no ENTRYPOINT or CMD and the task gives no command",
                image.id
            )));
        }
        let mut spec = TaskSpec::new(id, self.rootfs(image), command);
        if !image.config.env.is_empty() {
            spec.env = image.config.env.clone();
        }
        for kv in env {
            let key = kv.split('=').next().unwrap_or(kv);
            spec.env.retain(|e| e.split('=').next() != Some(key));
            spec.env.push(kv.clone());
        }
        spec.workdir = image.config.workdir.clone();
        spec.user = self.resolve_user(image, image.config.user.as_deref().unwrap_or(""))?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::RunConfig;

    fn image(cfg: RunConfig) -> ImageInfo {
        ImageInfo {
            id: "sha256:x".into(),
            names: vec![],
            layers: vec!["sha256:l".into()],
            config: cfg,
            size: 0,
            repo_digests: vec![],
            blobs: vec![],
        }
    }

    #[test]
    fn service_overrides_image_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let img = image(RunConfig {
            env: vec!["PATH=/bin".into(), "MODE=prod".into()],
            entrypoint: vec!["/init".into()],
            cmd: vec!["serve".into()],
            workdir: Some("/srv".into()),
            user: Some("1000:50".into()),
        });
        let spec = store.task_spec("t", &img, &["debug".into()], &["MODE=dev".into()]).unwrap();
        assert_eq!(spec.args, vec!["/init", "debug"]);
        assert_eq!(spec.env, vec!["PATH=/bin", "MODE=dev"]);
        assert_eq!((spec.user.uid, spec.user.gid), (1000, 50));
        assert_eq!(spec.workdir.as_deref(), Some("/srv"));
    }

    #[test]
    fn a_service_command_replaces_entrypoint_and_cmd() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let img = image(RunConfig {
            entrypoint: vec!["/init".into()],
            cmd: vec!["serve".into()],
            ..Default::default()
        });
        let spec =
            store.task_spec_with("t", &img, &["/bin/sh".into()], &["-c".into()], &[]).unwrap();
        assert_eq!(spec.args, vec!["/bin/sh", "-c"]);
        let bare = image(RunConfig::default());
        let spec = store.task_spec_with("t", &bare, &["/bin/true".into()], &[], &[]).unwrap();
        assert_eq!(spec.args, vec!["/bin/true"], "imported images need no CMD");
    }

    #[test]
    fn names_and_empty_commands_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let named = image(RunConfig {
            cmd: vec!["x".into()],
            user: Some("nginx".into()),
            ..Default::default()
        });
        assert!(store
            .task_spec("t", &named, &[], &[])
            .unwrap_err()
            .to_string()
            .contains("no user nginx"));
        assert!(store.task_spec("t", &image(RunConfig::default()), &[], &[]).is_err());
    }
}
