//! Owns secrets and configs in the control API: versions, the references services make to them,
//! and the rule that data never leaves the manager except in a node's assignments. Secrets live
//! inside the sealed store like every other object. The rules of names, sizes, targets and
//! modes are `shoal_proto::spec::secret`'s.

use std::collections::BTreeSet;

use shoal_proto::spec::secret::{
    check_mode, check_target, default_target, kind_of, validate_data, validate_name, DEFAULT_MODE,
};
use shoal_proto::spec::SpecError;
use shoal_proto::{
    CreateSecretRequest, GetSecretRequest, ListSecretsRequest, ListSecretsResponse,
    RemoveSecretRequest, RemoveSecretResponse, Secret, SecretKind, SecretReference, SecretResponse,
    SecretVersion, Service, ServiceSpec, Task, TaskState, UpdateSecretRequest, UpdateState,
    UpdateStatus,
};
use subtle::ConstantTimeEq;
use tonic::Status;

use crate::manager::{now_ms, Shared};
use crate::reference::{find, Miss};
use crate::store::{StoreError, Tx};

/// Why a secret or config request was refused; `kind` says which of the two it was about.
/// Messages never carry the data.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// No secret (config) has this ID, ID prefix or name.
    #[error("no such {}: {reference}", .kind.word())]
    NotFound { kind: SecretKind, reference: String },
    /// The ID prefix fits more than one.
    #[error("{reference} matches more than one {}; use a longer ID prefix", .kind.word())]
    Ambiguous { kind: SecretKind, reference: String },
    /// Another one of the same kind has this name.
    #[error("a {} named {name} already exists", .kind.word())]
    NameTaken { kind: SecretKind, name: String },
    /// Services still use it; they must drop it first.
    #[error(
        "{} {name} is in use by the following service{}: {}",
        .kind.word(),
        if .services.len() == 1 { "" } else { "s" },
        .services.join(", ")
    )]
    InUse { kind: SecretKind, name: String, services: Vec<String> },
    /// The request breaks a rule of names, sizes, targets or modes.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The store could not answer or commit.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<SecretError> for Status {
    fn from(e: SecretError) -> Status {
        match e {
            SecretError::NotFound { .. } => Status::not_found(e.to_string()),
            SecretError::Ambiguous { .. } => Status::invalid_argument(e.to_string()),
            SecretError::NameTaken { .. } => Status::already_exists(e.to_string()),
            SecretError::InUse { .. } => Status::failed_precondition(e.to_string()),
            SecretError::Spec(e) => e.into(),
            SecretError::Store(e) => e.into(),
        }
    }
}

/// The secret without any data, as the API shows it.
fn strip(s: &Secret) -> Secret {
    let mut s = s.clone();
    for v in &mut s.versions {
        v.data.clear();
    }
    s
}

fn refs(spec: &ServiceSpec) -> impl Iterator<Item = &SecretReference> {
    spec.container.iter().flat_map(|c| c.secrets.iter().chain(c.configs.iter()))
}

fn resolve<'a>(
    all: &'a [Secret],
    kind: SecretKind,
    reference: &str,
) -> Result<&'a Secret, SecretError> {
    let mine = all.iter().filter(|s| s.kind() == kind);
    find(mine, reference, |s| &s.id, |s| &s.name).map_err(|miss| match miss {
        Miss::NotFound => SecretError::NotFound { kind, reference: reference.into() },
        Miss::Ambiguous => SecretError::Ambiguous { kind, reference: reference.into() },
    })
}

/// Names of the services whose current spec uses secret `id`.
fn users(services: &[Service], id: &str) -> Vec<String> {
    let mut names: Vec<String> = services
        .iter()
        .filter(|s| s.spec.as_ref().is_some_and(|p| refs(p).any(|r| r.secret_id == id)))
        .map(|s| s.spec.as_ref().map(|p| p.name.clone()).unwrap_or_default())
        .collect();
    names.sort();
    names
}

/// Checks and completes a spec's secret and config references inside a transaction: each
/// names an existing one (by name or ID), gets its ID, target, mode and version. A reference
/// the old spec already had keeps its version, so unrelated updates do not roll secrets.
pub(crate) fn resolve_refs(
    tx: &mut Tx<'_>,
    spec: &mut ServiceSpec,
    old: Option<&ServiceSpec>,
) -> Result<(), SecretError> {
    let Some(c) = spec.container.as_mut() else { return Ok(()) };
    if c.secrets.is_empty() && c.configs.is_empty() {
        return Ok(());
    }
    let all = tx.list::<Secret>()?;
    for (kind, list) in [(SecretKind::Secret, &mut c.secrets), (SecretKind::Config, &mut c.configs)]
    {
        let mut targets = BTreeSet::new();
        for r in list.iter_mut() {
            let by =
                if r.secret_id.is_empty() { r.secret_name.clone() } else { r.secret_id.clone() };
            let found = resolve(&all, kind, &by)?;
            // Read by ID so a concurrent removal makes the transaction conflict.
            tx.get::<Secret>(&found.id)?;
            r.secret_id = found.id.clone();
            r.secret_name = found.name.clone();
            if r.target.is_empty() {
                r.target = default_target(kind, &found.name);
            }
            check_target(kind, &r.target)?;
            if !targets.insert(r.target.clone()) {
                return Err(SpecError::SameTarget { kind, target: r.target.clone() }.into());
            }
            if r.mode == 0 {
                r.mode = DEFAULT_MODE;
            }
            check_mode(r.mode)?;
            let kept =
                old.and_then(|o| refs(o).find(|x| x.secret_id == r.secret_id)).map(|x| x.version);
            let exists = |v: u64| found.versions.iter().any(|x| x.version == v);
            r.version = match (r.version, kept) {
                (v, _) if v != 0 && exists(v) => v,
                (0, Some(v)) if exists(v) && !r.follow => v,
                _ => found.latest,
            };
        }
    }
    Ok(())
}

/// Drops versions that no service spec (current or previous) and no unfinished task uses.
fn prune(secret: &mut Secret, services: &[Service], tasks: &[Task]) {
    let mut used: BTreeSet<u64> = BTreeSet::from([secret.latest]);
    let specs = services.iter().flat_map(|s| s.spec.iter().chain(s.previous_spec.iter()));
    let task_specs =
        tasks.iter().filter(|t| t.state() <= TaskState::Running).filter_map(|t| t.spec.as_ref());
    for spec in specs.chain(task_specs) {
        used.extend(refs(spec).filter(|r| r.secret_id == secret.id).map(|r| r.version));
    }
    secret.versions.retain(|v| used.contains(&v.version));
}

pub(crate) async fn create(
    shared: &Shared,
    req: CreateSecretRequest,
) -> Result<SecretResponse, SecretError> {
    let kind = kind_of(req.kind)?;
    validate_name(kind, &req.name)?;
    validate_data(kind, &req.data)?;
    let id = shoal_pki::id::new_id();
    let secret = Secret {
        id: id.clone(),
        kind: kind as i32,
        name: req.name.clone(),
        labels: req.labels.clone(),
        versions: vec![SecretVersion {
            version: 1,
            data: req.data.clone(),
            created_at_ms: now_ms(),
        }],
        latest: 1,
        ..Default::default()
    };
    shared
        .store
        .update(|tx| {
            let exists = || SecretError::NameTaken { kind, name: req.name.clone() };
            if tx.list::<Secret>()?.iter().any(|s| s.kind() == kind && s.name == req.name) {
                return Err(exists());
            }
            tx.claim_name(kind.word(), &req.name, &id).map_err(|e| match e {
                StoreError::Exists { .. } => exists(),
                e => e.into(),
            })?;
            tx.create(secret.clone())?;
            Ok(())
        })
        .await?;
    tracing::info!(id = %id, kind = kind.word(), name = %req.name, "created");
    let stored = shared.store.get::<Secret>(&id)?.unwrap_or(secret);
    Ok(SecretResponse { secret: Some(strip(&stored)), services: Vec::new() })
}

pub(crate) async fn update(
    shared: &Shared,
    req: UpdateSecretRequest,
) -> Result<SecretResponse, SecretError> {
    let kind = kind_of(req.kind)?;
    if !req.data.is_empty() {
        validate_data(kind, &req.data)?;
    }
    shared.store.barrier().await?;
    let id = resolve(&shared.store.list::<Secret>()?, kind, &req.reference)?.id.clone();
    let gone = || SecretError::NotFound { kind, reference: req.reference.clone() };
    let (secret, rolled) = shared
        .store
        .update(|tx| {
            let mut secret = tx.get::<Secret>(&id)?.ok_or_else(gone)?;
            let services = tx.list::<Service>()?;
            let mut rolled = Vec::new();
            let latest = secret.versions.iter().find(|v| v.version == secret.latest);
            let same = latest.is_some_and(|v| bool::from(v.data.as_slice().ct_eq(&req.data)));
            if !req.data.is_empty() && !same {
                secret.latest += 1;
                let v = SecretVersion {
                    version: secret.latest,
                    data: req.data.clone(),
                    created_at_ms: now_ms(),
                };
                secret.versions.push(v);
                // Services that follow the secret move to the new version: a rolling update.
                for s in &services {
                    let Some(spec) = &s.spec else { continue };
                    if !refs(spec).any(|r| r.secret_id == id && r.follow) {
                        continue;
                    }
                    let mut s = tx.get::<Service>(&s.id)?.unwrap_or_else(|| s.clone());
                    let mut spec = spec.clone();
                    if let Some(c) = spec.container.as_mut() {
                        for r in c.secrets.iter_mut().chain(c.configs.iter_mut()) {
                            if r.secret_id == id && r.follow {
                                r.version = secret.latest;
                            }
                        }
                    }
                    s.previous_spec = s.spec.take();
                    s.previous_spec_version = s.spec_version;
                    s.spec = Some(spec);
                    s.spec_version += 1;
                    s.update_status = Some(UpdateStatus {
                        state: UpdateState::Updating as i32,
                        started_at_ms: now_ms(),
                        message: format!(
                            "{} {} updated to version {}",
                            kind.word(),
                            secret.name,
                            secret.latest
                        ),
                        ..Default::default()
                    });
                    rolled.push(s.spec.as_ref().map(|p| p.name.clone()).unwrap_or_default());
                    tx.update(s)?;
                }
                let services = tx.list::<Service>()?;
                let tasks = tx.list::<Task>()?;
                prune(&mut secret, &services, &tasks);
            }
            if req.set_labels {
                secret.labels = req.labels.clone();
            }
            tx.update(secret.clone())?;
            Ok::<_, SecretError>((secret, rolled))
        })
        .await?;
    tracing::info!(id = %id, kind = kind.word(), version = secret.latest, rolled = ?rolled, "updated");
    Ok(SecretResponse { secret: Some(strip(&secret)), services: rolled })
}

pub(crate) async fn get(
    shared: &Shared,
    req: GetSecretRequest,
) -> Result<SecretResponse, SecretError> {
    let kind = kind_of(req.kind)?;
    shared.store.barrier().await?;
    let all = shared.store.list::<Secret>()?;
    let secret = resolve(&all, kind, &req.reference)?;
    let services = users(&shared.store.list::<Service>()?, &secret.id);
    Ok(SecretResponse { secret: Some(strip(secret)), services })
}

pub(crate) async fn list(
    shared: &Shared,
    req: ListSecretsRequest,
) -> Result<ListSecretsResponse, SecretError> {
    let kind = kind_of(req.kind)?;
    shared.store.barrier().await?;
    let mut secrets: Vec<Secret> =
        shared.store.list::<Secret>()?.iter().filter(|s| s.kind() == kind).map(strip).collect();
    secrets.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(ListSecretsResponse { secrets })
}

pub(crate) async fn remove(
    shared: &Shared,
    req: RemoveSecretRequest,
) -> Result<RemoveSecretResponse, SecretError> {
    let kind = kind_of(req.kind)?;
    shared.store.barrier().await?;
    let id = resolve(&shared.store.list::<Secret>()?, kind, &req.reference)?.id.clone();
    let gone = || SecretError::NotFound { kind, reference: req.reference.clone() };
    let name = shared
        .store
        .update(|tx| {
            let secret = tx.get::<Secret>(&id)?.ok_or_else(gone)?;
            let services = users(&tx.list::<Service>()?, &id);
            if !services.is_empty() {
                return Err(SecretError::InUse { kind, name: secret.name, services });
            }
            tx.delete::<Secret>(&id)?;
            tx.release_name(kind.word(), &secret.name)?;
            Ok(secret.name)
        })
        .await?;
    tracing::info!(id = %id, kind = kind.word(), "removed");
    Ok(RemoveSecretResponse { id, name })
}

/// The (ID, version) pairs a task reads.
pub(crate) fn task_refs(t: &Task) -> Vec<(String, u64)> {
    t.spec
        .as_ref()
        .map(|s| refs(s).map(|r| (r.secret_id.clone(), r.version)).collect())
        .unwrap_or_default()
}

/// One version's data, for a node's assignments.
pub(crate) fn data_of(secret: &Secret, version: u64) -> Option<Vec<u8>> {
    secret.versions.iter().find(|v| v.version == version).map(|v| v.data.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripped_secrets_carry_no_data() {
        let s = Secret {
            versions: vec![SecretVersion { version: 1, data: b"pw".to_vec(), created_at_ms: 1 }],
            ..Default::default()
        };
        assert!(strip(&s).versions.iter().all(|v| v.data.is_empty()));
    }
}
