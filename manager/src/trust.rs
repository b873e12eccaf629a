//! Owns content trust on the managers: storing the trust documents operators sign (each checked
//! against what is stored before it is written), the managers' timestamp key and the renewal
//! of every repository's timestamp, refusing services whose images no signer signed while the
//! cluster requires it, and the envelope sent with each task so its node can check again.

use std::time::Duration;

use shoal_pki::trust::{
    self, Bundle, Delegations, Envelope, Policy, PublicKey, Root, Signed, SigningKey, Targets,
    Timestamp, TrustError, Verified,
};
use shoal_proto::{
    Cluster, ClusterSpec, PutTrustRequest, ServiceSpec, Task, TrustInfo, TrustRepo, TrustRoot,
    TrustTimestampKey,
};
use shoal_registry::ImageRef;
use tonic::Status;

use crate::manager::Shared;
use crate::store::{Store, Tx};

const KEY_ID: &str = "timestamp";

pub(crate) fn status(e: TrustError) -> Status {
    let msg = format!("content trust: {e}");
    match e {
        TrustError::Untrusted(_) => Status::failed_precondition(msg),
        TrustError::Key(_) | TrustError::Malformed(_) => Status::invalid_argument(msg),
    }
}

/// How long a timestamp lasts.
pub(crate) fn lifetime(spec: Option<&ClusterSpec>) -> Duration {
    match spec.map(|s| s.trust_timestamp_secs).unwrap_or(0) {
        0 => trust::TIMESTAMP_LIFETIME,
        s => Duration::from_secs(s),
    }
}

/// Checks a timestamp lifetime asked for with `swarm update`.
pub(crate) fn validate_lifetime(d: Duration) -> Result<(), String> {
    if d < Duration::from_secs(1) || d > Duration::from_secs(365 * 86_400) {
        return Err(format!(
            "a trust timestamp lasts 1s to 365 days, not {}",
            humantime::format_duration(d)
        ));
    }
    Ok(())
}

/// The canonical repository of an image reference (`busybox` → `docker.io/library/busybox`),
/// its tag and its digest.
pub(crate) fn repo_of(image: &str) -> Result<(String, Option<String>, Option<String>), Status> {
    let r = ImageRef::parse(image)
        .map_err(|e| Status::invalid_argument(format!("image {image:?}: {e}")))?;
    Ok((r.name(), r.tag, r.digest))
}

fn chain_of(r: &TrustRoot) -> Result<Vec<Signed<Root>>, TrustError> {
    r.chain.iter().map(|b| Signed::<Root>::from_bytes(b)).collect()
}

/// Pins holding every stored root chain, as a node that joined now would.
fn pins_of(roots: &[TrustRoot]) -> Result<trust::Pins, TrustError> {
    let mut pins = trust::Pins::default();
    for r in roots {
        pins.roots.insert(r.id.clone(), chain_of(r)?);
    }
    Ok(pins)
}

/// The stored root chain whose prefix covers `repo` most closely.
fn covering<'a>(roots: &'a [TrustRoot], repo: &str) -> Option<&'a TrustRoot> {
    roots.iter().filter(|r| trust::covers(&r.id, repo)).max_by_key(|r| r.id.len())
}

/// The timestamp key, made the first time one is needed.
fn timestamp_key(tx: &mut Tx<'_>) -> Result<SigningKey, Status> {
    if let Some(k) = tx.get::<TrustTimestampKey>(KEY_ID)? {
        return SigningKey::from_pkcs8(KEY_ID, trust::Algorithm::Ed25519, &k.pkcs8)
            .map_err(|e| Status::internal(format!("the stored timestamp key: {e}")));
    }
    let key = SigningKey::generate(KEY_ID, trust::Algorithm::Ed25519)
        .map_err(|e| Status::internal(e.to_string()))?;
    let pkcs8 = key.pkcs8_der().to_vec();
    tx.create(TrustTimestampKey { id: KEY_ID.into(), meta: None, pkcs8 })?;
    tracing::info!(key = %key.public().short_id(), "made the managers' content-trust timestamp key");
    Ok(key)
}

/// The public timestamp key, if one was made.
fn timestamp_public(store: &Store) -> Option<PublicKey> {
    let k = store.get::<TrustTimestampKey>(KEY_ID).ok().flatten()?;
    SigningKey::from_pkcs8(KEY_ID, trust::Algorithm::Ed25519, &k.pkcs8).ok().map(|k| k.public())
}

/// Stores the documents of `req`, checked, and stamps the repository anew.
pub(crate) async fn put(shared: &Shared, req: PutTrustRequest) -> Result<TrustInfo, Status> {
    let root = (!req.root.is_empty())
        .then(|| Signed::<Root>::from_bytes(&req.root))
        .transpose()
        .map_err(status)?;
    let delegations = (!req.delegations.is_empty())
        .then(|| Signed::<Delegations>::from_bytes(&req.delegations))
        .transpose()
        .map_err(status)?;
    let targets = (!req.targets.is_empty())
        .then(|| Signed::<Targets>::from_bytes(&req.targets))
        .transpose()
        .map_err(status)?;
    let repo = match (&delegations, &targets) {
        (Some(d), Some(t)) if d.signed.repo != t.signed.repo => {
            return Err(Status::invalid_argument(
                "the delegations and targets name different repositories",
            ))
        }
        (Some(d), _) => Some(d.signed.repo.clone()),
        (None, Some(t)) => Some(t.signed.repo.clone()),
        (None, None) => None,
    };
    if root.is_none() && repo.is_none() {
        return Err(Status::invalid_argument("no trust document to store"));
    }
    let life = lifetime(shared.cluster()?.spec.as_ref());
    let info = shared
        .store
        .update(|tx| {
            if let Some(root) = &root {
                put_root(tx, root)?;
            }
            let Some(repo) = &repo else { return Ok::<_, Status>(None) };
            put_repo(tx, repo, delegations.as_ref(), targets.as_ref(), life)?;
            Ok(Some(repo.clone()))
        })
        .await?;
    let repo = info.unwrap_or_else(|| root.map(|r| r.signed.prefix).unwrap_or_default());
    get(shared, &repo).await
}

fn put_root(tx: &mut Tx<'_>, root: &Signed<Root>) -> Result<(), Status> {
    let prefix = root.signed.prefix.trim_end_matches('/').to_string();
    if prefix.is_empty() || prefix != root.signed.prefix {
        return Err(Status::invalid_argument(
            "a root prefix is a repository path without a trailing '/' (e.g. reg:5000/team)",
        ));
    }
    ImageRef::parse(&prefix)
        .map_err(|e| Status::invalid_argument(format!("root prefix {prefix:?}: {e}")))?;
    let stored = tx.get::<TrustRoot>(&prefix)?;
    let mut chain = match &stored {
        Some(r) => chain_of(r).map_err(status)?,
        None => Vec::new(),
    };
    chain.push(root.clone());
    // The managers take a root by the rule the nodes apply to what they are sent (a chain from
    // the current root, or a voucher from an existing one for a new prefix): a root the nodes
    // would refuse is refused here, when it is stored.
    let mut pins = pins_of(&tx.list::<TrustRoot>()?).map_err(status)?;
    if !pins.learn_roots(&chain).map_err(status)? {
        return Err(status(TrustError::Untrusted(format!(
            "root version {} of {prefix} is not newer than the stored one",
            root.signed.version
        ))));
    }
    let bytes: Vec<Vec<u8>> = chain.iter().map(Signed::to_bytes).collect();
    match stored {
        Some(mut r) => {
            r.chain = bytes;
            tx.update(r)?;
        }
        None => tx.create(TrustRoot { id: prefix.clone(), meta: None, chain: bytes })?,
    }
    tracing::info!(%prefix, version = root.signed.version, key = %root.signed.key.short_id(), "content-trust root stored");
    Ok(())
}

fn put_repo(
    tx: &mut Tx<'_>,
    repo: &str,
    delegations: Option<&Signed<Delegations>>,
    targets: Option<&Signed<Targets>>,
    life: Duration,
) -> Result<(), Status> {
    let untrusted = |why: String| status(TrustError::Untrusted(why));
    let roots = tx.list::<TrustRoot>()?;
    let root = covering(&roots, repo).ok_or_else(|| {
        untrusted(format!("no trust root covers {repo}; add one with trust root add"))
    })?;
    let root_key = chain_of(root).map_err(status)?.pop().map(|r| r.signed.key);
    let root_key = root_key.ok_or_else(|| untrusted("an empty root chain".into()))?;
    let stored = tx.get::<TrustRepo>(repo)?;
    let old_d = stored
        .as_ref()
        .filter(|s| !s.delegations.is_empty())
        .map(|s| Signed::<Delegations>::from_bytes(&s.delegations))
        .transpose()
        .map_err(status)?;
    let old_t = stored
        .as_ref()
        .filter(|s| !s.targets.is_empty())
        .map(|s| Signed::<Targets>::from_bytes(&s.targets))
        .transpose()
        .map_err(status)?;
    let now = trust::now();
    if let Some(d) = delegations {
        let newer = old_d.as_ref().is_none_or(|o| d.signed.version > o.signed.version);
        if !d.signed_by(&root_key) || !newer || d.signed.expires <= now {
            return Err(untrusted(format!(
                "the signers of {repo} must be signed by the root of {}, newer than version {} and not expired",
                root.id,
                old_d.as_ref().map_or(0, |o| o.signed.version)
            )));
        }
        for k in d.signed.signers.values() {
            k.check().map_err(status)?;
        }
    }
    let d = delegations.cloned().or(old_d);
    let Some(d) = d else {
        return Err(untrusted(format!("{repo} has no signers; add one with trust signer add")));
    };
    if let Some(t) = targets {
        let newer = old_t.as_ref().is_none_or(|o| t.signed.version > o.signed.version);
        let by_signer = d.signed.signers.values().any(|k| t.signed_by(k));
        if !by_signer || !newer || t.signed.expires <= now {
            return Err(untrusted(format!(
                "the targets of {repo} must be signed by one of its signers ({}), newer than version {} and not expired",
                d.signed.signers.keys().cloned().collect::<Vec<_>>().join(", "),
                old_t.as_ref().map_or(0, |o| o.signed.version)
            )));
        }
        for target in t.signed.tags.values() {
            if !shoal_registry::is_digest(&target.digest) {
                return Err(Status::invalid_argument(format!(
                    "the targets of {repo} name {:?}, not a sha256 digest",
                    target.digest
                )));
            }
        }
    }
    let t = match targets.cloned().or(old_t) {
        Some(t) => t,
        None => {
            // No tags signed yet: an empty targets document needs a signer's key, which the
            // managers do not have; the repository waits for its first trust sign.
            let mut r = stored.unwrap_or(TrustRepo { id: repo.into(), ..Default::default() });
            r.delegations = d.to_bytes();
            return save(tx, r);
        }
    };
    let key = timestamp_key(tx)?;
    let version = stored
        .as_ref()
        .filter(|s| !s.timestamp.is_empty())
        .and_then(|s| Signed::<Timestamp>::from_bytes(&s.timestamp).ok())
        .map_or(0, |ts| ts.signed.version)
        + 1;
    let ts = Timestamp::over(&d, &t, version, now + life.as_secs());
    let ts = Signed::sign(ts, &[&key]).map_err(status)?;
    let mut r = stored.unwrap_or(TrustRepo { id: repo.into(), ..Default::default() });
    r.delegations = d.to_bytes();
    r.targets = t.to_bytes();
    r.timestamp = ts.to_bytes();
    save(tx, r)
}

fn save(tx: &mut Tx<'_>, r: TrustRepo) -> Result<(), Status> {
    if r.meta.is_some() {
        tx.update(r).map_err(Status::from)
    } else {
        tx.create(r).map_err(Status::from)
    }
}

/// What the store holds for `repo` (or, for a prefix, its roots).
pub(crate) async fn get(shared: &Shared, repo: &str) -> Result<TrustInfo, Status> {
    shared.store.barrier().await?;
    let store = &shared.store;
    let roots = store.list::<TrustRoot>()?;
    let mut info = TrustInfo {
        repo: repo.to_string(),
        roots: covering(&roots, repo).map(|r| r.chain.clone()).unwrap_or_default(),
        timestamp_key: timestamp_public(store)
            .map(|k| serde_json::to_vec(&k).expect("a key serializes"))
            .unwrap_or_default(),
        content_trust_required: shared.cluster()?.spec.is_some_and(|s| s.content_trust_required),
        ..Default::default()
    };
    if let Some(r) = store.get::<TrustRepo>(repo)? {
        info.delegations = r.delegations;
        info.targets = r.targets;
        info.timestamp = r.timestamp;
    }
    Ok(info)
}

/// The whole bundle for `repo`, if it has signed tags.
fn bundle(store: &Store, repo: &str) -> Result<Option<Bundle>, Status> {
    let Some(r) = store.get::<TrustRepo>(repo)? else { return Ok(None) };
    if r.targets.is_empty() || r.timestamp.is_empty() {
        return Ok(None);
    }
    let roots = store.list::<TrustRoot>()?;
    let Some(root) = covering(&roots, repo) else { return Ok(None) };
    Bundle::from_parts(&root.chain, &r.delegations, &r.targets, &r.timestamp)
        .map(Some)
        .map_err(status)
}

/// Checks a service's image against the stored trust data while the cluster requires it, and
/// pins the spec to the signed digest (which wins over what the registry said the tag is).
pub(crate) fn check_service(shared: &Shared, spec: &mut ServiceSpec) -> Result<(), Status> {
    // Trust data reaches nodes only as the managers attach it to tasks, never from a client.
    if let Some(c) = spec.container.as_mut() {
        c.trust.clear();
    }
    let cluster = shared.cluster()?;
    if !cluster.spec.as_ref().is_some_and(|s| s.content_trust_required) {
        return Ok(());
    }
    let Some(c) = spec.container.as_mut() else { return Ok(()) };
    let v = verify(&shared.store, &c.image, &c.image_digest)?;
    if !c.image_digest.is_empty() && c.image_digest != v.digest {
        tracing::warn!(image = %c.image, registry = %c.image_digest, signed = %v.digest, "the registry's digest for the tag is not the signed one; running the signed one");
    }
    c.image_digest = v.digest;
    Ok(())
}

/// Checks `image` (pinned to `pinned` if not empty) against the store's trust data.
fn verify(store: &Store, image: &str, pinned: &str) -> Result<Verified, Status> {
    let (repo, tag, digest) = repo_of(image)?;
    let digest =
        digest.or_else(|| (!pinned.is_empty() && tag.is_none()).then(|| pinned.to_string()));
    let Some(b) = bundle(store, &repo)? else {
        return Err(status(TrustError::Untrusted(format!(
            "content trust is required and {repo} has no signed tags (trust sign {repo}:TAG)"
        ))));
    };
    let root = b.roots.last().map(|r| r.signed.clone());
    let root = root.ok_or_else(|| status(TrustError::Untrusted("no root".into())))?;
    let key = timestamp_public(store)
        .ok_or_else(|| status(TrustError::Untrusted("no timestamp key yet".into())))?;
    // A digest reference alone is found among the signed tags; a tag reference is checked as
    // the tag (its pinned digest may be the registry's, which the signed one replaces).
    b.verify(&root, &key, &repo, tag.as_deref(), digest.as_deref(), trust::now()).map_err(status)
}

/// Fills each task's envelope: the cluster's requirement, the timestamp key and its image's
/// bundle.
pub(crate) fn seal_tasks(store: &Store, cluster: Option<&Cluster>, tasks: &mut [Task]) {
    let spec = cluster.and_then(|c| c.spec.as_ref());
    let required = spec.is_some_and(|s| s.content_trust_required);
    let policy = spec
        .filter(|s| !s.content_trust_policy.is_empty())
        .and_then(|s| Signed::<Policy>::from_bytes(&s.content_trust_policy).ok());
    let key = timestamp_public(store);
    let scan_block = spec.map(|s| s.scan_block.clone()).filter(|s| !s.is_empty());
    let active = required || policy.is_some() || key.is_some() || scan_block.is_some();
    let mut cache: std::collections::HashMap<String, Vec<u8>> = Default::default();
    for t in tasks {
        let Some(c) = t.spec.as_mut().and_then(|s| s.container.as_mut()) else { continue };
        // Only what the managers put here reaches a node, never what a client sent.
        c.trust = Vec::new();
        let Ok((repo, _, _)) = repo_of(&c.image) else { continue };
        if !active {
            continue;
        }
        let bytes = cache.entry(repo.clone()).or_insert_with(|| {
            Envelope {
                required,
                policy: policy.clone(),
                timestamp_key: key.clone(),
                bundle: bundle(store, &repo).ok().flatten(),
                scan_block: scan_block.clone(),
            }
            .to_bytes()
        });
        c.trust = bytes.clone();
    }
}

/// What a joining node pins: every root chain, the timestamp key and the requirement.
/// Empty when the cluster has no trust data.
pub(crate) fn join_pins(shared: &Shared) -> Vec<u8> {
    let store = &shared.store;
    let Ok(mut pins) = pins_of(&store.list::<TrustRoot>().unwrap_or_default()) else {
        return Vec::new();
    };
    pins.timestamp_key = timestamp_public(store);
    pins.required =
        shared.cluster().ok().and_then(|c| c.spec).is_some_and(|s| s.content_trust_required);
    if pins == trust::Pins::default() {
        return Vec::new();
    }
    serde_json::to_vec(&pins).expect("pins serialize")
}

/// Renews timestamps that are past half their life, or that last longer than the lifetime
/// now set (on the leader).
pub(crate) async fn renew(shared: &Shared) -> Result<usize, Status> {
    let life = lifetime(shared.cluster()?.spec.as_ref());
    let now = trust::now();
    let due: Vec<String> = shared
        .store
        .list::<TrustRepo>()?
        .into_iter()
        .filter(|r| {
            Signed::<Timestamp>::from_bytes(&r.timestamp).is_ok_and(|ts| {
                let left = ts.signed.expires.saturating_sub(now);
                left < life.as_secs() / 2 || left > life.as_secs()
            })
        })
        .map(|r| r.id)
        .collect();
    for repo in &due {
        shared.store.update(|tx| put_repo(tx, repo, None, None, life)).await?;
        tracing::info!(%repo, "content-trust timestamp renewed");
    }
    Ok(due.len())
}

/// Checks a statement turning the requirement off by the nodes' rule: signed by a current
/// root, and newer than the statement that last turned it off (`previous`), so an old one
/// cannot be replayed.
pub(crate) fn check_policy_off(store: &Store, bytes: &[u8], previous: &[u8]) -> Result<(), Status> {
    let s = Signed::<Policy>::from_bytes(bytes).map_err(status)?;
    let mut pins = pins_of(&store.list::<TrustRoot>()?).map_err(status)?;
    pins.required = true;
    if !previous.is_empty() {
        pins.policy_version =
            Signed::<Policy>::from_bytes(previous).map_or(0, |p| p.signed.version);
    }
    pins.learn_policy(false, Some(&s)).map(drop).map_err(|e| {
        status(TrustError::Untrusted(format!(
            "{e} (swarm update --content-trust off --root-key KEY)"
        )))
    })
}
