//! `shoal login` / `logout` and the credentials they keep: `~/.shoal/config.json` (0600,
//! written atomically) in Docker's layout, `{"auths": {"HOST[:PORT]": {"auth": base64(user:pw)}}}`.
//! The daemon checks a login against the registry (with the node's TLS settings); the file is
//! the CLI's alone, read when a command sends credentials (`image pull|push`,
//! `--with-registry-auth`).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use base64::Engine;
use serde::{Deserialize, Serialize};
use shoal_proto::daemon_client::DaemonClient;
use shoal_proto::{RegistryAuth, RegistryLoginRequest};
use tonic::transport::Channel;

use super::client;

/// Docker Hub, as image references name it.
pub const DEFAULT_REGISTRY: &str = "docker.io";

#[derive(Debug, Default, Serialize, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
    /// Whatever else the file holds is kept as it is.
    #[serde(flatten)]
    rest: BTreeMap<String, serde_json::Value>,
}

#[derive(Default, Serialize, Deserialize)]
struct Entry {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    auth: String,
    #[serde(flatten)]
    rest: BTreeMap<String, serde_json::Value>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Entry(<redacted>)")
    }
}

/// Where the credentials live: `$SHOAL_CONFIG/config.json`, else `~/.shoal/config.json`.
pub fn config_path() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("SHOAL_CONFIG") {
        return Ok(PathBuf::from(dir).join("config.json"));
    }
    let home = std::env::var_os("HOME").context("HOME is not set; set SHOAL_CONFIG")?;
    Ok(PathBuf::from(home).join(".shoal/config.json"))
}

fn read_config() -> Result<ConfigFile> {
    let path = config_path()?;
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a credentials file", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_config(cfg: &ConfigFile) -> Result<()> {
    let path = config_path()?;
    let dir = path.parent().context("the credentials file has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let bytes = serde_json::to_vec_pretty(cfg).expect("credentials serialize");
    shoal_pki::files::write_atomic(&path, &bytes, 0o600)
        .with_context(|| format!("writing {}", path.display()))
}

/// The registry part of an image reference (`docker.io` when it names none).
pub fn registry_of(image: &str) -> Result<String> {
    Ok(shoal_registry::ImageRef::parse(image).map_err(|e| anyhow::anyhow!("{e}"))?.registry)
}

/// The saved login for `registry`, if any.
pub fn saved(registry: &str) -> Result<Option<RegistryAuth>> {
    let cfg = read_config()?;
    let Some(entry) = cfg.auths.get(registry) else { return Ok(None) };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(entry.auth.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .with_context(|| format!("the saved login for {registry} is unreadable; log in again"))?;
    let (user, password) = raw
        .split_once(':')
        .with_context(|| format!("the saved login for {registry} is unreadable; log in again"))?;
    Ok(Some(RegistryAuth {
        registry: registry.to_string(),
        username: user.to_string(),
        password: password.to_string(),
    }))
}

/// The saved login for the registry of `image`, or an error saying to log in when asked for.
pub fn for_image(image: &str) -> Result<Option<RegistryAuth>> {
    saved(&registry_of(image)?)
}

/// `shoal login [-u USER] [--password-stdin] [SERVER]`.
pub async fn login(
    channel: Channel,
    server: Option<String>,
    username: Option<String>,
    password: Option<String>,
    password_stdin: bool,
) -> Result<()> {
    let registry = server.unwrap_or_else(|| DEFAULT_REGISTRY.to_string());
    let registry = registry.trim_start_matches("https://").trim_end_matches('/').to_string();
    let Some(username) = username else {
        bail!("login: give the user name with -u USER (and the password on standard input)");
    };
    let password = match (password, password_stdin) {
        (Some(_), true) => bail!("--password and --password-stdin are mutually exclusive"),
        (Some(p), false) => {
            eprintln!("WARNING! Using --password is insecure (it shows in the process list); use --password-stdin.");
            p
        }
        (None, _) => {
            let mut p = String::new();
            std::io::stdin().read_to_string(&mut p).context("reading the password from stdin")?;
            p.trim_end_matches(['\n', '\r']).to_string()
        }
    };
    if password.is_empty() {
        bail!("login: the password is empty");
    }
    let auth = RegistryAuth { registry: registry.clone(), username: username.clone(), password };
    DaemonClient::new(channel)
        .registry_login(RegistryLoginRequest { auth: Some(auth.clone()) })
        .await
        .map_err(client::status)?;
    let mut cfg = read_config()?;
    let encoded = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", auth.username, auth.password));
    cfg.auths.entry(registry.clone()).or_default().auth = encoded;
    write_config(&cfg)?;
    println!("Login Succeeded ({username} at {registry}; saved in {})", config_path()?.display());
    Ok(())
}

/// `shoal logout [SERVER]`.
pub fn logout(server: Option<String>) -> Result<()> {
    let registry = server.unwrap_or_else(|| DEFAULT_REGISTRY.to_string());
    let mut cfg = read_config()?;
    if cfg.auths.remove(&registry).is_none() {
        println!("Not logged in to {registry}");
        return Ok(());
    }
    write_config(&cfg)?;
    println!("Removing login credentials for {registry}");
    Ok(())
}
