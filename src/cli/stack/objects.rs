//! Owns the secrets and configs of a stack deploy: which real object each compose key means,
//! checking that files can be read and external ones exist before anything is created, and
//! creating or versioning the stack's own. A re-deploy sends the stack's files again; the
//! manager makes a new version only when the data differs (compared there, in constant time),
//! so nothing derived from a secret is ever shown.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::Result;
use shoal_proto::control_client::ControlClient;
use shoal_proto::*;
use tonic::transport::Channel;

use super::compose::{Compose, Source};
use super::NAMESPACE;
use crate::cli::client;

/// What deploy does with one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Already exists (external, or the stack's own with the same data).
    Keep,
    Create(Vec<u8>),
    /// The stack's own, with new data: a new version.
    Update(Vec<u8>),
}

/// One secret or config the stack uses.
#[derive(Debug, Clone)]
pub struct Planned {
    pub kind: SecretKind,
    pub name: String,
    pub labels: HashMap<String, String>,
    pub action: Action,
    /// Created by the stack (its services follow its new versions).
    pub owned: bool,
}

/// Real names by (kind, compose key).
pub type Names = BTreeMap<(i32, String), (String, bool)>;

/// Every secret and config of each kind, as the manager lists them.
pub async fn existing(control: &mut ControlClient<Channel>) -> Result<Vec<Secret>> {
    let mut all = Vec::new();
    for kind in [SecretKind::Secret, SecretKind::Config] {
        let req = ListSecretsRequest { kind: kind as i32 };
        let r = control.list_secrets(req).await.map_err(client::status)?;
        all.extend(r.into_inner().secrets);
    }
    Ok(all)
}

/// Decides, for each top-level secret and config, what deploy will do; every problem (a file
/// that cannot be read, an external one that does not exist, a name taken outside the
/// stack) is collected, so the caller can refuse before creating anything.
pub fn plan(
    file: &Compose,
    stack: &str,
    dir: &Path,
    existing: &[Secret],
) -> (Vec<Planned>, Names, Vec<String>) {
    let (mut out, mut names, mut problems) = (Vec::new(), Names::new(), Vec::new());
    for kind in [SecretKind::Secret, SecretKind::Config] {
        for (key, def) in file.objects(kind) {
            let owned = matches!(def.source, Source::File(_));
            let name = match (&def.name, owned) {
                (Some(n), _) => n.clone(),
                (None, true) => format!("{stack}_{key}"),
                (None, false) => key.clone(),
            };
            names.insert((kind as i32, key.clone()), (name.clone(), owned));
            let found = existing.iter().find(|s| s.kind() == kind && s.name == name);
            let what = format!("{} {key} (line {})", kind.word(), def.line);
            let action = match &def.source {
                Source::External => match found {
                    Some(_) => Ok(Action::Keep),
                    None => Err(format!(
                        "external {} {name} does not exist; create it first with 'shoal {} create {name} -'",
                        kind.word(),
                        kind.word()
                    )),
                },
                Source::File(path) => own(kind, &name, stack, &dir.join(path), found),
            };
            match action {
                Ok(action) => {
                    let mut labels = def.labels.clone();
                    labels.insert(NAMESPACE.into(), stack.into());
                    out.push(Planned { kind, name, labels, action, owned });
                }
                Err(e) => problems.push(format!("{what}: {e}")),
            }
        }
    }
    (out, names, problems)
}

fn own(
    kind: SecretKind,
    name: &str,
    stack: &str,
    path: &Path,
    found: Option<&Secret>,
) -> Result<Action, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let max = shoal_proto::spec::secret::max_data(kind);
    if data.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    if data.len() >= max {
        return Err(format!(
            "{} is {} bytes; the limit is {} KiB",
            path.display(),
            data.len(),
            max / 1024
        ));
    }
    shoal_proto::spec::secret::validate_name(kind, name).map_err(|e| e.to_string())?;
    let Some(found) = found else { return Ok(Action::Create(data)) };
    if found.labels.get(NAMESPACE).map(String::as_str) != Some(stack) {
        return Err(format!(
            "a {} named {name} already exists and is not part of stack {stack}; remove it, or declare it external",
            kind.word()
        ));
    }
    Ok(Action::Update(data))
}

/// Creates and versions the stack's own objects (after [`plan`] found no problem).
pub async fn apply(control: &mut ControlClient<Channel>, planned: &[Planned]) -> Result<()> {
    for p in planned {
        let data = match &p.action {
            Action::Keep => continue,
            Action::Create(d) | Action::Update(d) => d,
        };
        let labels = p.labels.clone();
        let kind = p.kind as i32;
        if let Action::Create(_) = p.action {
            println!("Creating {} {}", p.kind.word(), p.name);
            let req =
                CreateSecretRequest { kind, name: p.name.clone(), labels, data: data.clone() };
            control.create_secret(req).await.map_err(client::status)?;
        } else {
            let req = UpdateSecretRequest {
                kind,
                reference: p.name.clone(),
                data: data.clone(),
                set_labels: true,
                labels,
            };
            let get = GetSecretRequest { kind, reference: p.name.clone() };
            let before = control.get_secret(get).await.map_err(client::status)?.into_inner();
            let before = before.secret.map(|s| s.latest).unwrap_or_default();
            let r = control.update_secret(req).await.map_err(client::status)?.into_inner();
            let version = r.secret.map(|s| s.latest).unwrap_or_default();
            if version == before {
                continue;
            }
            println!("Updating {} {} (version {version})", p.kind.word(), p.name);
            for s in r.services {
                println!("  {s} rolls to the new version");
            }
        }
    }
    Ok(())
}
