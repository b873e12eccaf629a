//! `shoal trust …`: content-trust keys on the operator's disk, and the trust documents they
//! sign, stored on the managers (see `shoal_pki::trust` for the roles and the format).
//!
//! Keys live in `$SHOAL_TRUST_DIR` (default `~/.shoal/trust/private`) as `NAME.key` (sealed
//! with a passphrase, 0600) and `NAME.pub`. A `--key` argument is a path or a name there.
//! Passphrases come from `SHOAL_CONTENT_TRUST_ROOT_PASSPHRASE` (root keys) or
//! `SHOAL_CONTENT_TRUST_REPOSITORY_PASSPHRASE` (signer keys), then
//! `SHOAL_CONTENT_TRUST_PASSPHRASE`, else one line of standard input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use shoal_pki::trust::{
    self, key::sealed_public, Algorithm, Delegations, Policy, PublicKey, Root, Signed, SigningKey,
    Target, Targets, Timestamp,
};
use shoal_proto::control_client::ControlClient;
use shoal_proto::daemon_client::DaemonClient;
use shoal_proto::{
    GetTrustRequest, ImagePushRequest, ImageVerifyCosignRequest, PutTrustRequest, TrustInfo,
};
use tonic::transport::Channel;

use super::client;

#[derive(Debug, Subcommand)]
pub enum TrustCmd {
    /// Manage signing keys
    #[command(subcommand)]
    Key(KeyCmd),
    /// Manage the root of a repository prefix (its offline key)
    #[command(subcommand)]
    Root(RootCmd),
    /// Manage who may sign a repository
    #[command(subcommand)]
    Signer(SignerCmd),
    /// Sign an image's tag (pushing it from this node to get its digest)
    Sign {
        /// REPOSITORY:TAG
        image: String,
        /// The signer's key (default: the only one in the key directory that can sign)
        #[arg(long)]
        key: String,
        /// Sign this manifest digest instead of pushing the image from this node
        #[arg(long)]
        digest: Option<String>,
    },
    /// Show the signatures, signers and keys of a repository
    Inspect {
        /// REPOSITORY[:TAG]
        image: String,
        #[arg(long)]
        pretty: bool,
    },
    /// Check cosign (sigstore) signatures with a public key, offline
    #[command(subcommand)]
    Cosign(CosignCmd),
    /// Remove the signature of a tag, or of every tag of a repository
    Revoke {
        /// REPOSITORY[:TAG]
        image: String,
        /// A signer's key
        #[arg(long)]
        key: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum CosignCmd {
    /// Verify IMAGE's cosign signature in its registry against KEY (PEM public key)
    Verify {
        image: String,
        #[arg(long)]
        key: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Make a key pair (NAME.key sealed with a passphrase, NAME.pub)
    Generate {
        name: String,
        /// ed25519 or ecdsa-p256
        #[arg(long, default_value = "ed25519")]
        algorithm: String,
        /// Where to write the key (default $SHOAL_TRUST_DIR or ~/.shoal/trust/private)
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Seal an existing PKCS#8 PEM private key (Ed25519 or P-256) as a trust key
    Load {
        /// The PEM file
        file: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum RootCmd {
    /// Make KEY the root of PREFIX (e.g. reg:5000/team); a new prefix needs a voucher once
    /// the cluster has any root
    Add {
        prefix: String,
        #[arg(long)]
        key: String,
        /// An existing root's key that vouches for the new prefix
        #[arg(long)]
        vouch_key: Option<String>,
    },
    /// Replace the root of PREFIX: the new root is signed by the old key and the new one
    Rotate {
        prefix: String,
        /// The current root key
        #[arg(long)]
        key: String,
        #[arg(long)]
        new_key: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SignerCmd {
    /// Let NAME sign REPOSITORY with the public key KEY (signed by the prefix's root)
    Add {
        name: String,
        repo: String,
        /// The signer's public key (NAME.pub) or key file
        #[arg(long)]
        key: String,
        /// The root key of the repository's prefix
        #[arg(long)]
        root_key: String,
    },
    /// Stop NAME signing REPOSITORY: what it signed no longer verifies
    Remove {
        name: String,
        repo: String,
        #[arg(long)]
        root_key: String,
    },
}

/// The directory keys live in.
fn key_dir(dir: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(d) = dir.or_else(|| std::env::var_os("SHOAL_TRUST_DIR").map(PathBuf::from)) {
        return Ok(d);
    }
    let home = std::env::var_os("HOME").context("HOME is not set; set SHOAL_TRUST_DIR")?;
    Ok(PathBuf::from(home).join(".shoal/trust/private"))
}

/// A key file: `arg` as a path, or `NAME.key` in the key directory.
fn key_path(arg: &str, ext: &str) -> Result<PathBuf> {
    let p = PathBuf::from(arg);
    if p.exists() {
        return Ok(p);
    }
    let named = key_dir(None)?.join(format!("{arg}.{ext}"));
    if named.exists() {
        return Ok(named);
    }
    bail!("no key {arg:?}: not a file, and no {} (shoal trust key generate {arg})", named.display())
}

#[derive(Clone, Copy)]
enum KeyRole {
    Root,
    Repository,
}

fn passphrase(role: KeyRole, name: &str) -> Result<String> {
    let specific = match role {
        KeyRole::Root => "SHOAL_CONTENT_TRUST_ROOT_PASSPHRASE",
        KeyRole::Repository => "SHOAL_CONTENT_TRUST_REPOSITORY_PASSPHRASE",
    };
    for var in [specific, "SHOAL_CONTENT_TRUST_PASSPHRASE"] {
        if let Ok(p) = std::env::var(var) {
            return Ok(p);
        }
    }
    let line = super::prompt::read_hidden_line(&format!("Passphrase for key {name}: "))
        .context("reading the passphrase")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Opens a private key given as a path or a name.
fn open_key(arg: &str, role: KeyRole) -> Result<SigningKey> {
    let path = key_path(arg, "key")?;
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let (name, _) = sealed_public(&bytes).with_context(|| format!("{}", path.display()))?;
    let pass = passphrase(role, &name)?;
    SigningKey::open(&bytes, &pass).with_context(|| format!("{}", path.display()))
}

/// A public key from a `.pub` file or the public half of a key file.
fn public_key(arg: &str) -> Result<PublicKey> {
    let path = key_path(arg, "pub").or_else(|_| key_path(arg, "key"))?;
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    if let Ok((_, k)) = sealed_public(&bytes) {
        return Ok(k);
    }
    let k: PublicKey = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is neither a public key nor a key file", path.display()))?;
    k.check()?;
    Ok(k)
}

fn write_key(dir: &Path, key: &SigningKey, pass: &str) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = key.name();
    let (sealed, public) = (dir.join(format!("{name}.key")), dir.join(format!("{name}.pub")));
    if sealed.exists() {
        bail!("{} exists; remove it or choose another name", sealed.display());
    }
    shoal_pki::files::write_atomic(&sealed, &key.seal(pass)?, 0o600)
        .with_context(|| format!("writing {}", sealed.display()))?;
    let mut pubtext = serde_json::to_vec_pretty(&key.public())?;
    pubtext.push(b'\n');
    shoal_pki::files::write_atomic(&public, &pubtext, 0o644)
        .with_context(|| format!("writing {}", public.display()))?;
    println!("Generated {} key {name} ({})", key.algorithm().name(), key.public().short_id());
    println!("Private key: {} (sealed with your passphrase)", sealed.display());
    println!("Public key:  {}", public.display());
    Ok(())
}

/// The canonical repository of a reference and its tag.
fn repo_and_tag(image: &str) -> Result<(String, Option<String>)> {
    let r = shoal_registry::ImageRef::parse(image)?;
    let explicit_tag = {
        let last = image.rsplit('/').next().unwrap_or(image);
        last.split('@').next().unwrap_or(last).contains(':')
    };
    Ok((r.name(), r.tag.filter(|_| explicit_tag)))
}

async fn get(control: &mut ControlClient<Channel>, repo: &str) -> Result<TrustInfo> {
    let req = GetTrustRequest { repo: repo.to_string() };
    Ok(control.get_trust(req).await.map_err(client::status)?.into_inner())
}

async fn put(control: &mut ControlClient<Channel>, req: PutTrustRequest) -> Result<TrustInfo> {
    Ok(control.put_trust(req).await.map_err(client::status)?.into_inner())
}

fn current_delegations(info: &TrustInfo) -> Result<Option<Signed<Delegations>>> {
    if info.delegations.is_empty() {
        return Ok(None);
    }
    Ok(Some(Signed::from_bytes(&info.delegations)?))
}

fn current_targets(info: &TrustInfo, repo: &str) -> Result<Targets> {
    if info.targets.is_empty() {
        return Ok(Targets { repo: repo.into(), version: 0, tags: BTreeMap::new(), expires: 0 });
    }
    Ok(Signed::<Targets>::from_bytes(&info.targets)?.signed)
}

fn expires() -> u64 {
    trust::now() + trust::TARGETS_LIFETIME.as_secs()
}

/// `trust key …`: keys live on the operator's disk, so no daemon is needed.
pub fn key(cmd: KeyCmd) -> Result<()> {
    match cmd {
        KeyCmd::Generate { name, algorithm, dir } => {
            let key = SigningKey::generate(&name, Algorithm::parse(&algorithm)?)?;
            let pass = passphrase(KeyRole::Repository, &name)?;
            write_key(&key_dir(dir)?, &key, &pass)
        }
        KeyCmd::Load { file, name, dir } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let key = SigningKey::from_pem(&name, &text)?;
            let pass = passphrase(KeyRole::Repository, &name)?;
            write_key(&key_dir(dir)?, &key, &pass)
        }
    }
}

pub async fn run(cmd: TrustCmd, channel: Channel) -> Result<()> {
    let mut control = ControlClient::new(channel.clone());
    match cmd {
        TrustCmd::Key(k) => key(k),
        TrustCmd::Root(RootCmd::Add { prefix, key, vouch_key }) => {
            let root = open_key(&key, KeyRole::Root)?;
            let prefix = prefix.trim_end_matches('/').to_string();
            let doc = Root { prefix: prefix.clone(), version: 1, key: root.public() };
            let mut signed = Signed::sign(doc, &[&root])?;
            if let Some(v) = vouch_key {
                signed.add_signature(&open_key(&v, KeyRole::Root)?)?;
            }
            put(&mut control, PutTrustRequest { root: signed.to_bytes(), ..Default::default() })
                .await?;
            println!("Root of {prefix}: key {} (version 1)", root.public().short_id());
            Ok(())
        }
        TrustCmd::Root(RootCmd::Rotate { prefix, key, new_key }) => {
            let prefix = prefix.trim_end_matches('/').to_string();
            let info = get(&mut control, &prefix).await?;
            let last = info.roots.last().context("no root for that prefix")?;
            let last = Signed::<Root>::from_bytes(last)?;
            if last.signed.prefix != prefix {
                bail!("{prefix} has no root of its own (it is under {})", last.signed.prefix);
            }
            let (old, new) = (open_key(&key, KeyRole::Root)?, open_key(&new_key, KeyRole::Root)?);
            if old.public() != last.signed.key {
                bail!("{key} is not the current root key of {prefix}");
            }
            let doc = Root {
                prefix: prefix.clone(),
                version: last.signed.version + 1,
                key: new.public(),
            };
            let signed = Signed::sign(doc, &[&old, &new])?;
            put(&mut control, PutTrustRequest { root: signed.to_bytes(), ..Default::default() })
                .await?;
            println!(
                "Root of {prefix} rotated: key {} (version {})",
                new.public().short_id(),
                last.signed.version + 1
            );
            println!("Re-add each repository's signers with the new root key (trust signer add).");
            Ok(())
        }
        TrustCmd::Signer(SignerCmd::Add { name, repo, key, root_key }) => {
            trust::key::check_name(&name)?;
            let (repo, _) = repo_and_tag(&repo)?;
            let public = public_key(&key)?;
            edit_signers(&mut control, &repo, &root_key, |s| {
                s.insert(name.clone(), public.clone());
                Ok(())
            })
            .await?;
            println!("Signer {name} ({}) added to {repo}", public.short_id());
            Ok(())
        }
        TrustCmd::Signer(SignerCmd::Remove { name, repo, root_key }) => {
            let (repo, _) = repo_and_tag(&repo)?;
            edit_signers(&mut control, &repo, &root_key, |s| {
                if s.remove(&name).is_none() {
                    bail!("{name} is not a signer of {repo}");
                }
                Ok(())
            })
            .await?;
            println!("Signer {name} removed from {repo}; what it signed no longer verifies");
            Ok(())
        }
        TrustCmd::Sign { image, key, digest } => {
            let (repo, tag) = repo_and_tag(&image)?;
            let tag = tag.context("trust sign needs REPOSITORY:TAG")?;
            let signer = open_key(&key, KeyRole::Repository)?;
            let info = get(&mut control, &repo).await?;
            check_signer(&info, &repo, &signer)?;
            let digest = match digest {
                Some(d) if shoal_registry::is_digest(&d) => d,
                Some(d) => bail!("--digest {d:?} is not sha256:<64 hex>"),
                None => push(channel, &image).await?,
            };
            let mut t = current_targets(&info, &repo)?;
            t.version += 1;
            t.expires = expires();
            t.tags.insert(
                tag.clone(),
                Target { digest: digest.clone(), signer: signer.name().into() },
            );
            let signed = Signed::sign(t, &[&signer])?;
            put(&mut control, PutTrustRequest { targets: signed.to_bytes(), ..Default::default() })
                .await?;
            println!("Signed {repo}:{tag} ({digest}) as {}", signer.name());
            Ok(())
        }
        TrustCmd::Revoke { image, key } => {
            let (repo, tag) = repo_and_tag(&image)?;
            let signer = open_key(&key, KeyRole::Repository)?;
            let info = get(&mut control, &repo).await?;
            check_signer(&info, &repo, &signer)?;
            let mut t = current_targets(&info, &repo)?;
            match &tag {
                Some(tag) if t.tags.remove(tag).is_none() => bail!("{repo}:{tag} is not signed"),
                Some(_) => {}
                None if t.tags.is_empty() => bail!("{repo} has no signed tags"),
                None => t.tags.clear(),
            }
            t.version += 1;
            t.expires = expires();
            let signed = Signed::sign(t, &[&signer])?;
            put(&mut control, PutTrustRequest { targets: signed.to_bytes(), ..Default::default() })
                .await?;
            match tag {
                Some(tag) => println!("Signature of {repo}:{tag} revoked"),
                None => println!("Every signature of {repo} revoked"),
            }
            Ok(())
        }
        TrustCmd::Cosign(CosignCmd::Verify { image, key }) => {
            let public_key_pem = std::fs::read_to_string(&key)
                .with_context(|| format!("reading {}", key.display()))?;
            let auth = super::login::for_image(&image)?;
            let req = ImageVerifyCosignRequest { reference: image.clone(), public_key_pem, auth };
            let r = DaemonClient::new(channel)
                .image_verify_cosign(req)
                .await
                .map_err(client::status)?
                .into_inner();
            println!(
                "Verified OK: {image}@{} ({} signature{} with key {}; signed as {})",
                r.digest,
                r.signatures,
                if r.signatures == 1 { "" } else { "s" },
                &r.key_id[..12],
                r.docker_reference
            );
            Ok(())
        }
        TrustCmd::Inspect { image, pretty } => {
            let (repo, tag) = repo_and_tag(&image)?;
            let info = get(&mut control, &repo).await?;
            print!("{}", inspect(&info, &repo, tag.as_deref(), pretty)?);
            Ok(())
        }
    }
}

/// Pushes `image` from this node; its manifest digest.
async fn push(channel: Channel, image: &str) -> Result<String> {
    let auth = super::login::for_image(image)?;
    let req = ImagePushRequest { reference: image.to_string(), auth };
    let r = DaemonClient::new(channel)
        .image_push(req)
        .await
        .map_err(client::status)
        .with_context(|| format!("pushing {image} to sign it (or give --digest)"))?
        .into_inner();
    let digest = r.repo_digest.rsplit_once('@').map(|(_, d)| d.to_string());
    digest.context("the push gave no digest")
}

fn check_signer(info: &TrustInfo, repo: &str, signer: &SigningKey) -> Result<()> {
    let d = current_delegations(info)?
        .with_context(|| format!("{repo} has no signers; add one with trust signer add"))?;
    match d.signed.signers.get(signer.name()) {
        Some(k) if *k == signer.public() => Ok(()),
        Some(_) => bail!("the key of signer {} of {repo} is not this one", signer.name()),
        None => bail!("{} is not a signer of {repo} (trust signer add)", signer.name()),
    }
}

async fn edit_signers(
    control: &mut ControlClient<Channel>,
    repo: &str,
    root_key: &str,
    edit: impl FnOnce(&mut BTreeMap<String, PublicKey>) -> Result<()>,
) -> Result<()> {
    let info = get(control, repo).await?;
    let root = open_key(root_key, KeyRole::Root)?;
    let current = info.roots.last().map(|r| Signed::<Root>::from_bytes(r)).transpose()?;
    let current =
        current.with_context(|| format!("no root covers {repo}; trust root add first"))?;
    if current.signed.key != root.public() {
        bail!("{root_key} is not the root key of {} (which covers {repo})", current.signed.prefix);
    }
    let old = current_delegations(&info)?;
    let mut signers = old.as_ref().map(|d| d.signed.signers.clone()).unwrap_or_default();
    edit(&mut signers)?;
    let d = Delegations {
        repo: repo.to_string(),
        version: old.map_or(0, |d| d.signed.version) + 1,
        signers,
        expires: expires(),
    };
    let signed = Signed::sign(d, &[&root])?;
    put(control, PutTrustRequest { delegations: signed.to_bytes(), ..Default::default() }).await?;
    Ok(())
}

fn date(unix: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `trust inspect`: JSON (Docker's shape) or `--pretty` tables.
fn inspect(info: &TrustInfo, repo: &str, tag: Option<&str>, pretty: bool) -> Result<String> {
    let d = current_delegations(info)?;
    let t = (!info.targets.is_empty())
        .then(|| Signed::<Targets>::from_bytes(&info.targets))
        .transpose()?;
    let ts = (!info.timestamp.is_empty())
        .then(|| Signed::<Timestamp>::from_bytes(&info.timestamp))
        .transpose()?;
    let roots: Vec<Signed<Root>> =
        info.roots.iter().map(|r| Signed::<Root>::from_bytes(r)).collect::<Result<_, _>>()?;
    let tags: Vec<(&String, &Target)> = t
        .as_ref()
        .map(|t| {
            t.signed.tags.iter().filter(|(k, _)| tag.is_none_or(|w| w == k.as_str())).collect()
        })
        .unwrap_or_default();
    let signers: Vec<(&String, &PublicKey)> =
        d.as_ref().map(|d| d.signed.signers.iter().collect()).unwrap_or_default();
    if !pretty {
        let v = serde_json::json!([{
            "Name": match tag { Some(t) => format!("{repo}:{t}"), None => repo.to_string() },
            "SignedTags": tags.iter().map(|(k, x)| serde_json::json!({
                "SignedTag": k, "Digest": x.digest, "Signers": [x.signer],
            })).collect::<Vec<_>>(),
            "Signers": signers.iter().map(|(n, k)| serde_json::json!({
                "Name": n, "Keys": [{"ID": k.id(), "Algorithm": k.algorithm.name()}],
            })).collect::<Vec<_>>(),
            "AdministrativeKeys": [
                {"Name": "Root", "Prefix": roots.last().map(|r| r.signed.prefix.clone()),
                 "Version": roots.last().map(|r| r.signed.version),
                 "Keys": roots.last().map(|r| vec![serde_json::json!({"ID": r.signed.key.id()})]).unwrap_or_default()},
            ],
            "Targets": t.as_ref().map(|t| serde_json::json!({"Version": t.signed.version, "Expires": date(t.signed.expires)})),
            "Timestamp": ts.as_ref().map(|ts| serde_json::json!({"Version": ts.signed.version, "Expires": date(ts.signed.expires)})),
            "ContentTrustRequired": info.content_trust_required,
        }]);
        return Ok(format!("{}\n", serde_json::to_string_pretty(&v)?));
    }
    let mut out = String::new();
    out.push_str(&format!("\nSignatures for {repo}\n\n"));
    if tags.is_empty() {
        out.push_str("No signatures for this repository.\n");
    } else {
        out.push_str(&format!("{:<16} {:<72} {}\n", "SIGNED TAG", "DIGEST", "SIGNERS"));
        for (k, x) in &tags {
            out.push_str(&format!("{:<16} {:<72} {}\n", k, x.digest, x.signer));
        }
    }
    out.push_str(&format!("\nList of signers and their keys for {repo}\n\n"));
    if signers.is_empty() {
        out.push_str("No signers.\n");
    } else {
        out.push_str(&format!("{:<16} {}\n", "SIGNER", "KEYS"));
        for (n, k) in &signers {
            out.push_str(&format!("{:<16} {} ({})\n", n, k.short_id(), k.algorithm.name()));
        }
    }
    out.push_str(&format!("\nAdministrative keys for {repo}\n\n"));
    match roots.last() {
        Some(r) => out.push_str(&format!(
            "  Root key ({}, version {}):\t{}\n",
            r.signed.prefix,
            r.signed.version,
            r.signed.key.short_id()
        )),
        None => out.push_str("  No root covers this repository.\n"),
    }
    if let Some(t) = &t {
        out.push_str(&format!(
            "  Targets:\tversion {}, expires {}\n",
            t.signed.version,
            date(t.signed.expires)
        ));
    }
    if let Some(ts) = &ts {
        out.push_str(&format!(
            "  Timestamp:\tversion {}, expires {} (renewed by the managers)\n",
            ts.signed.version,
            date(ts.signed.expires)
        ));
    }
    Ok(out)
}

/// Whether `SHOAL_CONTENT_TRUST` asks the CLI to verify images itself (`1` or `true`).
pub fn client_required() -> bool {
    std::env::var("SHOAL_CONTENT_TRUST").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Where the CLI pins the roots it has checked images against (`~/.shoal/trust/pins.json`).
fn client_pins_path() -> Result<PathBuf> {
    Ok(key_dir(None)?.parent().map(Path::to_path_buf).unwrap_or_default().join("pins.json"))
}

/// With `SHOAL_CONTENT_TRUST=1`: checks `image` against the cluster's trust data and the
/// CLI's own pins (roots seen first are pinned, later ones must chain from them, as on the
/// nodes); the signed digest.
pub async fn client_verify(channel: &Channel, image: &str) -> Result<String> {
    let (repo, tag) = repo_and_tag(image)?;
    let r = shoal_registry::ImageRef::parse(image)?;
    let tag = tag.or(if r.digest.is_none() { r.tag.clone() } else { None });
    let info = get(&mut ControlClient::new(channel.clone()), &repo).await?;
    let untrusted =
        || anyhow::anyhow!("content trust (SHOAL_CONTENT_TRUST=1): {repo} has no signed tags");
    if info.targets.is_empty() || info.timestamp.is_empty() {
        return Err(untrusted());
    }
    let bundle =
        trust::Bundle::from_parts(&info.roots, &info.delegations, &info.targets, &info.timestamp)?;
    let key: PublicKey =
        serde_json::from_slice(&info.timestamp_key).context("the timestamp key")?;
    let path = client_pins_path()?;
    let mut pins = trust::Pins::load(&path)?;
    pins.learn_timestamp_key(&key)?;
    pins.learn_policy(true, None)?;
    let verified = pins
        .check(&repo, tag.as_deref(), r.digest.as_deref(), Some(&bundle), trust::now())
        .map_err(|e| anyhow::anyhow!("content trust (SHOAL_CONTENT_TRUST=1): {e}"))?
        .ok_or_else(untrusted)?;
    pins.save(&path).with_context(|| format!("saving {}", path.display()))?;
    Ok(verified.digest)
}

/// With `SHOAL_CONTENT_TRUST=1`: verifies the spec's image and pins it to the signed digest.
pub async fn client_pin(channel: &Channel, spec: &mut shoal_proto::ServiceSpec) -> Result<()> {
    if !client_required() {
        return Ok(());
    }
    let Some(c) = spec.container.as_mut() else { return Ok(()) };
    c.image_digest = client_verify(channel, &c.image).await?;
    Ok(())
}

/// The root-signed statement that turns content trust off (`swarm update --content-trust
/// off --root-key KEY`).
pub fn policy_off(root_key: &str) -> Result<Vec<u8>> {
    let root = open_key(root_key, KeyRole::Root)?;
    let doc = Policy { required: false, version: trust::now() };
    Ok(Signed::sign(doc, &[&root])?.to_bytes())
}
