//! Owns `stack deploy`: read and check the whole file and everything it needs first, then
//! create or version the stack's secrets and configs, then create the new services and update
//! only the ones whose spec changed. A refused deploy has created nothing.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use shoal_proto::control_client::ControlClient;
use shoal_proto::spec::service::normalize;
use shoal_proto::spec::{secret, SpecError};
use shoal_proto::*;
use tonic::transport::Channel;

use super::compose::{self, Compose};
use super::networks;
use super::objects::{self, Names};
use super::{stack_services, NAMESPACE};
use crate::cli::client;

/// Stack names become service-name prefixes: letters, digits, `-`, `_`, `.`.
pub fn validate_stack_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        bail!("invalid stack name {name:?}: use 1–32 letters and digits, with '-', '_' or '.', starting with a letter or digit");
    }
    Ok(())
}

/// Where a deploy reads its files from.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// `-c FILE` in order (`-` is standard input); later files override earlier ones.
    pub files: Vec<PathBuf>,
    /// `--env-file`: variables for substitution instead of `.env` beside the first file.
    pub env_file: Option<PathBuf>,
    /// `--profile`: services in these profiles are deployed too.
    pub profiles: Vec<String>,
}

impl Sources {
    /// The directory relative paths in the files are relative to: the first file's; for
    /// standard input, the `--env-file`'s, else the current one.
    pub fn dir(&self) -> PathBuf {
        let parent =
            |p: &Path| p.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        match (self.files.iter().find(|p| p.as_os_str() != "-"), &self.env_file) {
            (Some(p), _) => parent(p),
            (None, Some(e)) => parent(e),
            (None, None) => PathBuf::from("."),
        }
    }
}

/// The variables of a `.env`-style file.
fn env_file(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the env file {}", path.display()))?;
    super::interpolate::parse_env_file(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Reads, substitutes, merges and parses the compose files; prints the warning about ignored
/// keys and variables that are not set; merges each service's `env_file:` into its
/// environment (the environment wins).
pub fn read(src: &Sources) -> Result<Compose> {
    if src.files.is_empty() {
        bail!("name a compose file with -c FILE (- for standard input)");
    }
    let mut texts = Vec::new();
    for path in &src.files {
        let text = if path.as_os_str() == "-" {
            let mut t = String::new();
            std::io::stdin()
                .read_to_string(&mut t)
                .context("reading the compose file from standard input")?;
            t
        } else {
            std::fs::read_to_string(path)
                .with_context(|| format!("reading compose file {}", path.display()))?
        };
        texts.push((path.display().to_string(), text));
    }
    let dir = src.dir();
    let dotenv = match &src.env_file {
        Some(p) => env_file(p)?,
        None if dir.join(".env").is_file() => env_file(&dir.join(".env"))?,
        None => BTreeMap::new(),
    };
    let vars = |k: &str| std::env::var(k).ok().or_else(|| dotenv.get(k).cloned());
    let opts = compose::Options { vars: Some(&vars), profiles: src.profiles.clone() };
    let named: Vec<(&str, &str)> = texts.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    let mut file = compose::parse_files(&named, &opts).map_err(|e| {
        if texts.len() == 1 {
            anyhow::anyhow!("{}: {e}", texts[0].0)
        } else {
            anyhow::anyhow!("{e}")
        }
    })?;
    if let Some(w) = file.warning() {
        eprintln!("{w}");
    }
    for n in &file.notes {
        eprintln!("WARN: {n}");
    }
    for (service, paths) in std::mem::take(&mut file.env_files) {
        let mut vars = BTreeMap::new();
        for p in paths {
            let (p, required) = match p.strip_prefix('?') {
                Some(rest) => (rest.to_string(), false),
                None => (p, true),
            };
            let path = dir.join(&p);
            if !required && !path.exists() {
                continue;
            }
            vars.extend(env_file(&path).with_context(|| format!("service {service}: env_file"))?);
        }
        let Some(c) = file.services.get_mut(&service).and_then(|s| s.container.as_mut()) else {
            continue;
        };
        let own: Vec<String> =
            c.env.iter().map(|e| e.split('=').next().unwrap_or("").to_string()).collect();
        let from_files: Vec<String> = vars
            .into_iter()
            .filter(|(k, _)| !own.contains(k))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        c.env.splice(0..0, from_files);
    }
    Ok(file)
}

/// Gives a service's mounts their names on the nodes: a volume the file defines (or a
/// service's own, anonymous one) is `<stack>_<key>` unless it is external or names itself; a
/// relative bind source is taken from the compose file's directory.
fn name_mounts(
    spec: &mut ServiceSpec,
    stack: &str,
    service: &str,
    file: &Compose,
    dir: &Path,
) -> Result<()> {
    let Some(c) = spec.container.as_mut() else { return Ok(()) };
    for m in &mut c.mounts {
        match m.r#type.as_str() {
            "volume" => {
                let def = file.volumes.get(&m.source);
                if !def.is_some_and(|d| d.external) {
                    m.volume_labels.insert(super::NAMESPACE.into(), stack.into());
                }
                if let Some(def) = def {
                    m.volume_labels.extend(def.labels.clone());
                }
                m.source = match def {
                    Some(def) => match (&def.name, def.external) {
                        (Some(n), _) => n.clone(),
                        (None, true) => m.source.clone(),
                        (None, false) => format!("{stack}_{}", m.source),
                    },
                    None if m.source.starts_with(service)
                        && m.source.len() > service.len()
                        && m.source[service.len()..].starts_with('_') =>
                    {
                        format!("{stack}_{}", m.source)
                    }
                    None => bail!(
                        "service {service} refers to undefined volume {}: define it under the top-level volumes: key",
                        m.source
                    ),
                };
            }
            "bind" if m.source.starts_with('.') => {
                let abs = dir.join(&m.source);
                m.source = std::fs::canonicalize(&abs)
                    .with_context(|| format!("service {service}: bind source {}", abs.display()))?
                    .display()
                    .to_string();
            }
            "bind" if m.source.starts_with('~') => {
                let home = std::env::var("HOME").context("HOME is not set")?;
                m.source = m.source.replacen('~', &home, 1);
            }
            _ => {}
        }
    }
    Ok(())
}

/// When `stack deploy` asks registries for the digests of the services' images (Docker's
/// `--resolve-image`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ResolveImage {
    /// On every deploy: a tag that moved rolls the service to its new digest
    #[default]
    Always,
    /// Only for services whose image changed in the file, and new services
    Changed,
    /// Never: images stay as named (unpinned ones are not pinned)
    Never,
}

/// How images are handled: pinning and credentials.
#[derive(Clone, Copy, Debug, Default)]
pub struct ImageOpts {
    pub resolve: ResolveImage,
    pub with_registry_auth: bool,
}

/// `stack deploy -c FILE STACK`.
pub async fn deploy(
    channel: &Channel,
    stack: &str,
    src: &Sources,
    prune: bool,
    images: ImageOpts,
) -> Result<()> {
    validate_stack_name(stack)?;
    let file = read(src)?;
    let dir = src.dir();
    let dir = dir.as_path();
    let mut control = ControlClient::new(channel.clone());
    let existing = objects::existing(&mut control).await?;
    let (planned, names, mut problems) = objects::plan(&file, stack, dir, &existing);
    let (nets, net_problems) =
        networks::plan(&file, stack, &networks::existing(&mut control).await?);
    problems.extend(net_problems);
    if !problems.is_empty() {
        bail!("stack {stack} was not deployed (nothing was created):\n  {}", problems.join("\n  "));
    }
    let mut specs = Vec::new();
    for (key, spec) in &file.services {
        let mut spec = desired(stack, key, spec, &names)?;
        name_mounts(&mut spec, stack, key, &file, dir)?;
        normalize(spec.clone()).map_err(|e| anyhow::anyhow!("service {key}: {e}"))?;
        // A reference no registry could serve is refused here, before anything is created.
        if let Some(c) = spec.container.as_ref().filter(|c| !c.image.is_empty()) {
            shoal_registry::ImageRef::parse(&c.image)
                .map_err(|e| anyhow::anyhow!("service {key}: {e}"))?;
        }
        check_targets(&comparable(&spec)).with_context(|| format!("service {key}"))?;
        crate::cli::service::check_user(channel, &spec).await?;
        crate::cli::service::check_scan(channel, &spec).await?;
        crate::cli::trust::client_pin(channel, &mut spec)
            .await
            .with_context(|| format!("service {key}"))?;
        specs.push(spec);
    }
    objects::apply(&mut control, &planned).await?;
    let ids = networks::apply(&mut control, &nets).await?;
    for spec in &mut specs {
        networks::attach(spec, &ids)?;
    }
    // Read after the secrets changed: versioning one rolls the services that follow it.
    let current = stack_services(&mut control, stack).await?;
    for spec in specs {
        let old = current.iter().find(|s| s.spec.as_ref().is_some_and(|p| p.name == spec.name));
        apply_service(&mut control, channel, spec, old, images).await?;
    }
    if prune {
        let keep: Vec<String> = file.services.keys().map(|k| format!("{stack}_{k}")).collect();
        for s in &current {
            let name = s.spec.as_ref().map(|p| p.name.clone()).unwrap_or_default();
            if !keep.contains(&name) {
                println!("Removing service {name}");
                let req = RemoveServiceRequest { reference: s.id.clone() };
                control.remove_service(req).await.map_err(client::status)?;
            }
        }
    }
    Ok(())
}

/// The spec to send for compose service `key`: named and labelled for the stack, its secrets
/// and configs by real name (following new versions of the stack's own).
pub fn desired(stack: &str, key: &str, spec: &ServiceSpec, names: &Names) -> Result<ServiceSpec> {
    let mut spec = spec.clone();
    spec.name = format!("{stack}_{key}");
    spec.labels.insert(NAMESPACE.into(), stack.into());
    // Services of a stack find one another by their compose names (Docker's alias).
    for a in &mut spec.networks {
        if !a.aliases.iter().any(|x| x == key) {
            a.aliases.insert(0, key.to_string());
        }
    }
    let c = spec.container.get_or_insert_with(Default::default);
    for (kind, refs) in [(SecretKind::Secret, &mut c.secrets), (SecretKind::Config, &mut c.configs)]
    {
        for r in refs.iter_mut() {
            let (name, owned) = names
                .get(&(kind as i32, r.secret_name.clone()))
                .with_context(|| format!("{} {} is not defined", kind.word(), r.secret_name))?;
            r.secret_name = name.clone();
            r.follow = *owned;
        }
    }
    Ok(spec)
}

/// A spec as the manager would store it, minus what the manager picks (IDs, versions), so a
/// deployed spec and a freshly read one compare equal when nothing changed.
pub fn comparable(spec: &ServiceSpec) -> ServiceSpec {
    let mut spec = normalize(spec.clone()).unwrap_or_else(|_| spec.clone());
    if let Some(c) = spec.container.as_mut() {
        // Reads give the login back without its password; the managers keep the one they have.
        c.registry_auth = None;
        for (kind, refs) in
            [(SecretKind::Secret, &mut c.secrets), (SecretKind::Config, &mut c.configs)]
        {
            for r in refs.iter_mut() {
                r.secret_id.clear();
                r.version = 0;
                if r.target.is_empty() {
                    r.target = secret::default_target(kind, &r.secret_name);
                }
                if r.mode == 0 {
                    r.mode = secret::DEFAULT_MODE;
                }
            }
        }
    }
    spec
}

/// The manager's target rules, checked before anything is created: secrets are file names
/// under /run/secrets, configs absolute paths, and no two share a target.
pub(super) fn check_targets(spec: &ServiceSpec) -> Result<()> {
    let Some(c) = &spec.container else { return Ok(()) };
    for (kind, refs) in [(SecretKind::Secret, &c.secrets), (SecretKind::Config, &c.configs)] {
        let mut seen = std::collections::BTreeSet::new();
        for r in refs {
            let t = r.target.as_str();
            if secret::check_target(kind, t).is_err() {
                bail!("invalid {} target {t:?}", kind.word());
            }
            if !seen.insert(t) {
                return Err(SpecError::SameTarget { kind, target: t.to_string() }.into());
            }
        }
    }
    Ok(())
}

async fn apply_service(
    control: &mut ControlClient<Channel>,
    channel: &Channel,
    mut spec: ServiceSpec,
    old: Option<&Service>,
    images: ImageOpts,
) -> Result<()> {
    let old_spec = old.and_then(|s| s.spec.clone()).unwrap_or_default();
    let c = spec.container.get_or_insert_with(Default::default);
    let old_c = old_spec.container.as_ref().filter(|o| o.image == c.image);
    // The old pin stays unless the registry is to be asked again; an image loaded by hand
    // on this node pins to its own ID (no registry knows it).
    c.image_digest = match (old_c, images.resolve) {
        (Some(o), ResolveImage::Changed | ResolveImage::Never) => o.image_digest.clone(),
        _ => crate::cli::service::pin_image(channel, &c.image).await.unwrap_or_default(),
    };
    if images.with_registry_auth {
        c.registry_auth = crate::cli::service::registry_auth(&c.image)?;
    }
    let no_resolve_image = images.resolve == ResolveImage::Never;
    let Some(old) = old else {
        println!("Creating service {}", spec.name);
        let req = CreateServiceRequest { spec: Some(spec), no_resolve_image };
        let r = control.create_service(req).await.map_err(client::status)?.into_inner();
        crate::cli::service::print_warnings(&r.warnings);
        return Ok(());
    };
    // A digest left for the manager to find is compared as the one there now: a deploy that
    // changes nothing else is an update only if the registry says the tag moved.
    let mut seen = spec.clone();
    if let (Some(c), Some(o)) = (seen.container.as_mut(), old_spec.container.as_ref()) {
        if c.image_digest.is_empty() && c.image == o.image {
            c.image_digest = o.image_digest.clone();
        }
    }
    // Asking the registry again is worth an update only for a service it pinned before (one
    // it could not pin, it still cannot).
    let ask_registry = images.resolve == ResolveImage::Always
        && spec.container.as_ref().is_some_and(|c| c.image_digest.is_empty())
        && old_spec.container.as_ref().is_some_and(|c| !c.image_digest.is_empty());
    if comparable(&seen) == comparable(&old_spec) && !ask_registry {
        println!("Service {} is up to date", spec.name);
        return Ok(());
    }
    let name = spec.name.clone();
    let version = old.meta.as_ref().map(|m| m.version).unwrap_or(0);
    let req = UpdateServiceRequest {
        reference: old.id.clone(),
        spec: Some(spec),
        version,
        no_resolve_image,
        ..Default::default()
    };
    let r = control.update_service(req).await.map_err(client::status)?.into_inner();
    let now = r.service.as_ref().and_then(|s| s.meta.as_ref()).map(|m| m.version);
    if now == Some(version) {
        println!("Service {name} is up to date (its image digest has not moved)");
    } else {
        println!("Updating service {name} (id: {})", old.id);
    }
    crate::cli::service::print_warnings(&r.warnings);
    Ok(())
}
