//! Owns reading a compose file (versions 3.0–3.9 and the current Compose spec) into service
//! specs and the secrets and configs they name. Pure: never reads other files or talks to a
//! manager; keys Shoal cannot honour are collected for one warning.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use shoal_proto::{SecretKind, ServiceSpec};

use super::service::read_service;
use super::yaml::{self, At, ComposeError, Entry};

/// A compose file version (`3.8` is `(3, 8)`); `None` in [`Compose`] means the Compose spec.
pub type FileVersion = (u32, u32);

/// A parsed compose file.
#[derive(Debug, Default)]
pub struct Compose {
    pub version: Option<FileVersion>,
    /// By service name (the compose key, without the stack prefix).
    pub services: BTreeMap<String, ServiceSpec>,
    pub secrets: BTreeMap<String, ObjectDef>,
    pub configs: BTreeMap<String, ObjectDef>,
    /// Top-level networks by compose key; `default` (the stack's own network for services
    /// that name none) is added when a service uses it.
    pub networks: BTreeMap<String, NetworkDef>,
    /// Top-level named volumes by compose key.
    pub volumes: BTreeMap<String, VolumeDef>,
    /// `path (line N)` of each key that is ignored.
    pub unsupported: Vec<String>,
    /// Other things to tell the user (variables that are not set).
    pub notes: Vec<String>,
    /// `env_file:` of each service (by its compose key), relative to the compose file.
    pub env_files: BTreeMap<String, Vec<String>>,
}

/// A top-level secret or config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectDef {
    pub source: Source,
    /// `name:`: the real name (otherwise `<stack>_<key>`, or the key for external ones).
    pub name: Option<String>,
    pub labels: HashMap<String, String>,
    pub line: u64,
}

/// A top-level network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkDef {
    /// Must already exist (named `name`, or the key).
    pub external: bool,
    /// `name:`: the real name (otherwise `<stack>_<key>`, or the key for external ones).
    pub name: Option<String>,
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    pub attachable: bool,
    pub internal: bool,
    pub encrypted: bool,
    pub labels: HashMap<String, String>,
    pub line: u64,
}

/// A top-level named volume (the `local` driver: a directory on each node that runs a task).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeDef {
    /// Must already exist (named `name`, or the key).
    pub external: bool,
    /// `name:`: the real name (otherwise `<stack>_<key>`, or the key for external ones).
    pub name: Option<String>,
    /// `labels:`, given to the volume where a task first makes it.
    pub labels: BTreeMap<String, String>,
}

fn read_volume_def(def: &Entry<'_>, r: &mut Reader) -> Result<VolumeDef, ComposeError> {
    let mut v = VolumeDef::default();
    for e in def.at().entries()? {
        match e.key {
            "external" => match &e.node.value {
                yaml::Value::Map(_) => {
                    v.external = true;
                    for x in e.at().entries()? {
                        if x.key == "name" {
                            v.name = Some(x.at().text()?);
                        }
                    }
                }
                _ => v.external = e.at().bool()?,
            },
            "name" => v.name = Some(e.at().text()?),
            "labels" => {
                for (k, val) in e.at().pairs()? {
                    v.labels.insert(k, val.unwrap_or_default());
                }
            }
            "driver_opts" if !matches!(&e.node.value, yaml::Value::Map(m) if m.is_empty()) => {
                return Err(e.at().error(
                    "driver_opts: the local driver here keeps a volume as a directory on each node and takes no options (no NFS or device mounts)",
                ));
            }
            "driver" => {
                let d = e.at().text()?;
                if d != "local" {
                    return Err(e
                        .at()
                        .error(format!("volume driver {d:?}: Shoal has the local driver only")));
                }
            }
            _ => r.skip(&e),
        }
    }
    Ok(v)
}

/// The network a service that names none joins (Docker's `<stack>_default`).
pub const DEFAULT_NETWORK: &str = "default";

/// Where a secret's or config's data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Read from this file (relative to the compose file) and created by the stack.
    File(PathBuf),
    /// Must already exist.
    External,
}

impl Compose {
    /// The one warning naming every ignored key, if any.
    pub fn warning(&self) -> Option<String> {
        (!self.unsupported.is_empty())
            .then(|| format!("Ignoring unsupported options: {}", self.unsupported.join(", ")))
    }

    /// The top-level definitions of one kind.
    pub fn objects(&self, kind: SecretKind) -> &BTreeMap<String, ObjectDef> {
        match kind {
            SecretKind::Secret => &self.secrets,
            SecretKind::Config => &self.configs,
        }
    }
}

/// Collects ignored keys while reading.
#[derive(Debug, Default)]
pub(super) struct Reader {
    pub(super) version: Option<FileVersion>,
    pub(super) unsupported: Vec<(u64, String)>,
    /// Top-level secret and config keys, which services may name.
    pub(super) secrets: Vec<String>,
    pub(super) configs: Vec<String>,
    /// Top-level network keys, which services may name.
    pub(super) networks: Vec<String>,
    /// Keys that are not Compose at all (typos): the file is refused.
    pub(super) unknown: Vec<ComposeError>,
    /// `env_file:` of each service (by its key), read by the deploy.
    pub(super) env_files: BTreeMap<String, Vec<String>>,
}

impl Reader {
    /// Notes a key Shoal ignores (extension keys `x-…` are ignored silently).
    pub(super) fn skip(&mut self, e: &Entry<'_>) {
        if super::keys::is_compose_key(&e.path) == Some(false) && !e.key.starts_with("x-") {
            let hint = super::keys::nearest(&e.path)
                .map(|k| format!("; did you mean {k}?"))
                .unwrap_or_default();
            self.unknown.push(ComposeError {
                line: e.line,
                key: e.path.clone(),
                message: format!("{} is not a Compose key{hint}", e.key),
            });
            return;
        }
        if !e.key.starts_with("x-") {
            self.unsupported.push((e.line, format!("{} (line {})", e.path, e.line)));
        }
    }

    /// Refuses `key` in files older than `min`.
    pub(super) fn need(&self, e: &Entry<'_>, min: FileVersion) -> Result<(), ComposeError> {
        match self.version {
            Some(v) if v < min => Err(ComposeError {
                line: e.line,
                key: e.path.clone(),
                message: format!(
                    "compose file version {}.{} has no {}: use version \"{}.{}\" or later",
                    v.0, v.1, e.key, min.0, min.1
                ),
            }),
            _ => Ok(()),
        }
    }
}

/// A variable's value, if it is set.
pub type Lookup<'a> = dyn Fn(&str) -> Option<String> + 'a;

/// How to read compose files: where variables come from, and which profiles are on.
#[derive(Default)]
#[allow(missing_debug_implementations)]
pub struct Options<'a> {
    /// A variable's value (the environment, then `.env`); `None`: nothing is set.
    pub vars: Option<&'a Lookup<'a>>,
    /// `--profile`: services in these profiles run too.
    pub profiles: Vec<String>,
}

/// Reads a compose file's text (no variables set, no profiles).
pub fn parse(text: &str) -> Result<Compose, ComposeError> {
    parse_files(&[("", text)], &Options::default())
}

/// Reads compose files (name, text), each with its variables substituted, merged in order
/// as Docker Compose merges them (later files win; lists of ports, volumes, secrets,
/// configs, environment and the like merge item by item).
pub fn parse_files(files: &[(&str, &str)], opts: &Options<'_>) -> Result<Compose, ComposeError> {
    let mut merged: Option<yaml::Node> = None;
    let mut unset = Vec::new();
    for (name, text) in files {
        let named = |mut e: ComposeError| {
            if !name.is_empty() && files.len() > 1 {
                e.message = format!("{name}: {}", e.message);
            }
            e
        };
        let mut doc = yaml::parse(text).map_err(named)?;
        let lookup = |k: &str| opts.vars.and_then(|v| v(k));
        doc.map_strings("", &mut |s, path, line| {
            if !s.contains('$') {
                return Ok(None);
            }
            match super::interpolate::interpolate(s, &lookup) {
                Ok((out, missing)) => {
                    unset.extend(missing);
                    Ok(Some(out))
                }
                Err(message) => Err(named(ComposeError { line, key: path.to_string(), message })),
            }
        })?;
        match &mut merged {
            None => merged = Some(doc),
            Some(m) => m.merge(doc, &merge_identity),
        }
    }
    let doc = merged.unwrap_or_else(|| yaml::parse("").expect("an empty document"));
    let mut out = parse_node(&doc, opts)?;
    unset.sort();
    unset.dedup();
    out.notes.extend(
        unset
            .into_iter()
            .map(|v| format!("The {v} variable is not set. Defaulting to a blank string.")),
    );
    Ok(out)
}

/// What makes two list items the same item when files merge, for the lists that merge item
/// by item; `None` for lists a later file replaces.
fn merge_identity(key: &str, item: &yaml::Node) -> Option<String> {
    let at = At { node: item, path: key };
    let text = || at.text().ok();
    let field = |name: &str| {
        at.entries().ok()?.into_iter().find(|e| e.key == name).and_then(|e| e.at().text().ok())
    };
    match key {
        "ports" => text().or_else(|| {
            Some(format!("{:?}/{:?}/{:?}", field("published"), field("target"), field("protocol")))
        }),
        // A volume is known by where it is mounted.
        "volumes" => text()
            .map(|t| {
                let parts: Vec<&str> = t.split(':').collect();
                parts.get(1).unwrap_or(&parts[0]).to_string()
            })
            .or_else(|| field("target")),
        "secrets" | "configs" => text().or_else(|| field("source")),
        "environment" | "labels" => text().map(|t| t.split('=').next().unwrap_or("").to_string()),
        "expose" | "dns" | "dns_search" | "dns_opt" | "extra_hosts" | "cap_add" | "cap_drop"
        | "env_file" | "networks" | "profiles" => text(),
        _ => None,
    }
}

/// Reads a compose document.
fn parse_node(doc: &yaml::Node, opts: &Options<'_>) -> Result<Compose, ComposeError> {
    let root = At { node: doc, path: "" };
    let entries = match doc.value {
        yaml::Value::Map(_) => root.entries()?,
        yaml::Value::Null => return Err(root.error("the compose file is empty")),
        _ => return Err(root.error("a compose file is a mapping with a services key")),
    };
    let mut r = Reader::default();
    if let Some(e) = entries.iter().find(|e| e.key == "version") {
        r.version = Some(read_version(e.at())?);
    }
    let mut out = Compose { version: r.version, ..Default::default() };
    let mut services = None;
    for e in &entries {
        match e.key {
            "version" => {}
            "services" => services = Some(e),
            "secrets" => {
                r.need(e, (3, 1))?;
                out.secrets = read_objects(e, SecretKind::Secret, &mut r)?;
            }
            "configs" => {
                r.need(e, (3, 3))?;
                out.configs = read_objects(e, SecretKind::Config, &mut r)?;
            }
            "networks" => {
                for def in e.at().entries()? {
                    out.networks.insert(def.key.to_string(), read_network(&def, &mut r)?);
                }
            }
            "volumes" => {
                for def in e.at().entries()? {
                    out.volumes.insert(def.key.to_string(), read_volume_def(&def, &mut r)?);
                }
            }
            _ => r.skip(e),
        }
    }
    let Some(services) = services else {
        return Err(root.error("the compose file has no services key"));
    };
    r.secrets = out.secrets.keys().cloned().collect();
    r.configs = out.configs.keys().cloned().collect();
    r.networks = out.networks.keys().cloned().collect();
    for e in services.at().entries()? {
        if !in_profiles(&e, &opts.profiles)? {
            continue;
        }
        let mut spec = read_service(&e, &mut r)?;
        if spec.networks.is_empty() {
            spec.networks.push(shoal_proto::NetworkAttachmentConfig {
                target: DEFAULT_NETWORK.into(),
                aliases: Vec::new(),
            });
        }
        if spec.networks.iter().any(|n| n.target == DEFAULT_NETWORK) {
            out.networks.entry(DEFAULT_NETWORK.into()).or_default();
        }
        out.services.insert(e.key.to_string(), spec);
    }
    if out.services.is_empty() {
        return Err(services.at().error("the stack has no services"));
    }
    if let Some(first) = r.unknown.into_iter().next() {
        return Err(first);
    }
    r.unsupported.sort();
    out.unsupported = r.unsupported.into_iter().map(|(_, s)| s).collect();
    out.env_files = r.env_files;
    Ok(out)
}

/// Whether a service runs with these profiles on: one without `profiles:` always does.
fn in_profiles(service: &Entry<'_>, active: &[String]) -> Result<bool, ComposeError> {
    let Some(p) = service.at().entries()?.into_iter().find(|e| e.key == "profiles") else {
        return Ok(true);
    };
    let names = p.at().strings()?;
    Ok(names.is_empty() || names.iter().any(|n| active.contains(n)))
}

/// `3`, `"3.8"`: versions 3.0–3.9 (older formats have no swarm mode).
fn read_version(at: At<'_>) -> Result<FileVersion, ComposeError> {
    let text = at.text()?;
    let (major, minor) = text.trim().split_once('.').unwrap_or((text.trim(), "0"));
    match (major.parse::<u32>(), minor.parse::<u32>()) {
        (Ok(3), Ok(minor)) if minor <= 9 && !minor_has_extra_digits(text.trim()) => Ok((3, minor)),
        _ => Err(at.error(format!(
            "unsupported compose file version {text:?}: stacks take versions 3.0–3.9, or no version for the Compose spec"
        ))),
    }
}

fn minor_has_extra_digits(v: &str) -> bool {
    v.split_once('.').is_some_and(|(_, m)| m.len() > 1)
}

fn read_objects(
    e: &Entry<'_>,
    kind: SecretKind,
    r: &mut Reader,
) -> Result<BTreeMap<String, ObjectDef>, ComposeError> {
    let mut out = BTreeMap::new();
    for def in e.at().entries()? {
        out.insert(def.key.to_string(), read_object(&def, kind, r)?);
    }
    Ok(out)
}

fn read_object(
    def: &Entry<'_>,
    kind: SecretKind,
    r: &mut Reader,
) -> Result<ObjectDef, ComposeError> {
    let mut file = None;
    let mut external = false;
    let mut name = None;
    let mut labels = HashMap::new();
    for e in def.at().entries()? {
        match e.key {
            "file" => file = Some(PathBuf::from(e.at().text()?)),
            // `external: true`, or the 3.x form `external: {name: real}`.
            "external" => match e.node.value {
                yaml::Value::Map(_) => {
                    external = true;
                    for x in e.at().entries()? {
                        match x.key {
                            "name" => name = Some(x.at().text()?),
                            _ => r.skip(&x),
                        }
                    }
                }
                _ => external = e.at().bool()?,
            },
            "name" => name = Some(e.at().text()?),
            "labels" => labels = labels_of(e.at())?,
            _ => r.skip(&e),
        }
    }
    let word = if kind == SecretKind::Secret { "secret" } else { "config" };
    let source = match (file, external) {
        (Some(_), true) => {
            return Err(def.at().error(format!("a {word} is either external or read from a file, not both")))
        }
        (Some(f), false) => Source::File(f),
        (None, true) => Source::External,
        (None, false) => {
            return Err(def.at().error(format!(
                "the {word} needs file: PATH (created by the stack) or external: true (already created)"
            )))
        }
    };
    Ok(ObjectDef { source, name, labels, line: def.line })
}

/// Reads `networks.<key>`: an overlay network the stack makes, or an external one.
fn read_network(def: &Entry<'_>, r: &mut Reader) -> Result<NetworkDef, ComposeError> {
    let mut out = NetworkDef { line: def.line, ..Default::default() };
    for e in def.at().entries()? {
        let at = e.at();
        match e.key {
            "driver" => {
                let driver = at.text()?;
                if driver != "overlay" {
                    return Err(at.error(format!(
                        "network driver {driver:?} is not supported: stack networks are overlay networks"
                    )));
                }
            }
            "driver_opts" => {
                for (k, v) in at.pairs()? {
                    match (k.as_str(), v.as_deref()) {
                        ("encrypted", None | Some("" | "true")) => out.encrypted = true,
                        ("encrypted", Some("false")) => {}
                        _ => {
                            return Err(at.error(format!(
                                "unsupported driver option {k:?}: the overlay takes encrypted"
                            )))
                        }
                    }
                }
            }
            "ipam" => {
                for x in at.entries()? {
                    match x.key {
                        "driver" if x.at().text()? == "default" => {}
                        "config" => {
                            let items = x.at().items()?;
                            if items.len() > 1 {
                                return Err(x.at().error("a network takes one subnet"));
                            }
                            for (path, node) in items {
                                for c in (At { node, path: &path }).entries()? {
                                    match c.key {
                                        "subnet" => out.subnet = Some(c.at().text()?),
                                        "gateway" => out.gateway = Some(c.at().text()?),
                                        _ => r.skip(&c),
                                    }
                                }
                            }
                        }
                        _ => r.skip(&x),
                    }
                }
            }
            "external" => match e.node.value {
                yaml::Value::Map(_) => {
                    out.external = true;
                    for x in at.entries()? {
                        match x.key {
                            "name" => out.name = Some(x.at().text()?),
                            _ => r.skip(&x),
                        }
                    }
                }
                _ => out.external = at.bool()?,
            },
            "name" => out.name = Some(at.text()?),
            "attachable" => out.attachable = at.bool()?,
            "internal" => out.internal = at.bool()?,
            "labels" => out.labels = labels_of(at)?,
            _ => r.skip(&e),
        }
    }
    Ok(out)
}

/// Labels as a mapping or a `k=v` list.
pub(super) fn labels_of(at: At<'_>) -> Result<HashMap<String, String>, ComposeError> {
    Ok(at.pairs()?.into_iter().map(|(k, v)| (k, v.unwrap_or_default())).collect())
}
