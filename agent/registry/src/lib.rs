//! Shoal's registry client: the OCI distribution protocol (Docker Registry HTTP API v2) for
//! pulls, pushes, tag resolution and logins.
//!
//! - **Manifests**: OCI and Docker schema 2 manifests, OCI indexes and Docker manifest lists
//!   (the entry for this node's platform is chosen), every one checked against its digest;
//!   schema 1 is refused.
//! - **Blobs**: streamed to a temporary file beside their destination while their sha256 is
//!   computed, their size enforced, resumed with a `Range` request when a connection drops,
//!   synced and renamed into place only once the digest matches: nothing half-written or
//!   altered ever appears where a blob belongs.
//! - **Logins**: Basic, and Docker's Bearer token protocol (realm/service/scope), tokens cached
//!   per registry and scope until they expire. Redirects (blob downloads often go to storage
//!   elsewhere) are followed by reqwest, which drops the `Authorization` header when the host
//!   changes, so credentials never reach another host.
//! - **Retries**: connection failures, 5xx and 429 are retried with exponential back-off;
//!   every request has a connect and a read timeout, not a total deadline, so large blobs
//!   are fine.
//!
//! **TLS, secure by default.** Registries are reached over verified TLS (rustls, ring):
//! the host's CA bundle plus Docker's `certs.d` layout under [`Settings::certs_dir`]
//! (`HOST:PORT/*.crt` extra CAs, `client.cert` + `client.key` for mutual TLS), re-read when its
//! files change. Only a registry the node names insecure (`HOST:PORT` or a CIDR its address is
//! in) is tried over TLS without verification and then over plain HTTP, as Docker does;
//! loopback is not insecure by default (Docker's exception). An unknown CA gives one line that
//! says where to put the CA.
//!
//! Built on `reqwest` rather than `oci-client`: Shoal needs its own rustls configuration per
//! registry (extra CAs, client certificates, an explicit insecure list), downloads that hash
//! while they write and resume where they stopped, and errors in the registry's own words.

mod auth;
mod error;
mod reference;
mod tls;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use futures::StreamExt;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

pub use auth::{parse_challenge, Challenge};
pub use error::RegistryError;
pub use reference::{is_digest, registry_host, ImageRef, DOCKER_HUB, DOCKER_HUB_HOST};

/// Where Docker-style registry certificates live unless `shoald --certs-dir` moves them.
pub const DEFAULT_CERTS_DIR: &str = "/etc/shoal/certs.d";
/// The largest manifest or index accepted.
pub const MAX_MANIFEST: usize = 4 << 20;
/// Tries of a request that failed for a reason that may pass (no answer, 5xx, 429). A task
/// whose pull still fails is rejected and its replacement tries again, so a pull need not wait
/// long; a tag resolution at service create tries once (Docker's behaviour: it warns and goes
/// on).
pub const ATTEMPTS: u32 = 4;
/// First wait between tries; it doubles up to [`MAX_BACKOFF`].
pub const BACKOFF: Duration = Duration::from_millis(250);
pub const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// Times a blob download resumes after its connection dropped.
pub const RESUMES: u32 = 5;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

pub mod media {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
    pub const DOCKER_SCHEMA1_SIGNED: &str =
        "application/vnd.docker.distribution.manifest.v1+prettyjws";
}

const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// How this node reaches registries.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Docker's `certs.d`: `HOST:PORT/*.crt`, `client.cert`, `client.key`.
    pub certs_dir: PathBuf,
    /// Registries reached without verified TLS (and over plain HTTP if they speak nothing else).
    pub insecure: Vec<Insecure>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings { certs_dir: PathBuf::from(DEFAULT_CERTS_DIR), insecure: Vec::new() }
    }
}

/// A registry named insecure: by `HOST:PORT`, or by a network its address is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Insecure {
    Host(String),
    Cidr(ipnet::IpNet),
}

impl std::str::FromStr for Insecure {
    type Err = String;

    fn from_str(s: &str) -> Result<Insecure, String> {
        let s = s.trim();
        if s.contains('/') {
            return s
                .parse::<ipnet::IpNet>()
                .map(Insecure::Cidr)
                .map_err(|_| format!("{s:?} is neither HOST:PORT nor a CIDR such as 10.0.0.0/8"));
        }
        let ok = !s.is_empty()
            && !s.contains("://")
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
        if ok {
            Ok(Insecure::Host(s.to_string()))
        } else {
            Err(format!("{s:?} is neither HOST:PORT nor a CIDR such as 10.0.0.0/8"))
        }
    }
}

/// A login at a registry. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    fn basic(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
    }
}

/// An OS and CPU as images name them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// This machine: linux and Go's name for its CPU.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            "s390x" => "s390x",
            "riscv64" => "riscv64",
            "arm" => "arm",
            other => other,
        };
        Platform { os: "linux".into(), architecture: architecture.into(), variant: None }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A blob as a manifest names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

/// The manifest a pull uses, and what named it.
#[derive(Clone, Debug)]
pub struct Pulled {
    /// The digest of what the tag or digest named: an index, or the manifest itself.
    pub pinned: String,
    pub manifest_digest: String,
    pub manifest_media_type: String,
    /// Its exact bytes.
    pub manifest: Vec<u8>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// A registry client: cheap to clone, shared by every pull of a node.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("settings", &self.inner.settings).finish_non_exhaustive()
    }
}

struct Inner {
    settings: Settings,
    /// Per registry: the certs.d stamp it was built for, and the ways to reach it in order.
    routes: Mutex<HashMap<String, (String, Vec<Route>)>>,
    /// The route that last answered, per registry (an insecure one: HTTPS or plain HTTP).
    answered: Mutex<HashMap<String, usize>>,
    /// `Authorization` values per (registry, scope, whose login), with when they stop being
    /// good: one caller's token never serves another caller (or an anonymous one).
    auths: Mutex<HashMap<AuthKey, (String, Instant)>>,
}

/// Which cached answer to a challenge a request may use.
type AuthKey = (String, String, String);

/// Whose login it is: a digest of the credentials, or `anonymous`.
fn who(creds: Option<&Credentials>) -> String {
    match creds {
        Some(c) => sha256(format!("{}\0{}", c.username, c.password).as_bytes()),
        None => "anonymous".into(),
    }
}

fn auth_key(registry: &str, scope: &str, creds: Option<&Credentials>) -> AuthKey {
    (registry.to_string(), scope.to_string(), who(creds))
}

/// One way to reach a registry: a scheme and base URL, and the HTTP client for it.
#[derive(Clone)]
struct Route {
    base: String,
    http: reqwest::Client,
    /// TLS that verifies the registry's certificate.
    verified: bool,
}

/// What a request is for: its scope in the token protocol.
#[derive(Clone, Copy)]
enum Access {
    Pull,
    Push,
    Login,
}

fn scope(r: &ImageRef, access: Access) -> String {
    match access {
        Access::Pull => format!("repository:{}:pull", r.repository),
        Access::Push => format!("repository:{}:pull,push", r.repository),
        Access::Login => String::new(),
    }
}

fn http_client(tls: rustls::ClientConfig) -> Result<reqwest::Client, RegistryError> {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .user_agent(concat!("shoal/", env!("CARGO_PKG_VERSION")))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            // Never from HTTPS down to plain HTTP; reqwest itself drops Authorization when a
            // redirect changes host or port.
            let down = attempt.previous().last().is_some_and(|p| p.scheme() == "https")
                && attempt.url().scheme() == "http";
            if down || attempt.previous().len() > 10 {
                attempt.stop()
            } else {
                attempt.follow()
            }
        }))
        .build()
        .map_err(|e| RegistryError::Setup(format!("HTTP client: {e}")))
}

fn unreachable(registry: &str, e: &reqwest::Error) -> RegistryError {
    let mut message = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        message = format!("{message}: {s}");
        src = s.source();
    }
    RegistryError::Unreachable { registry: registry.to_string(), message }
}

impl Client {
    pub fn new(settings: Settings) -> Result<Client, RegistryError> {
        Ok(Client {
            inner: Arc::new(Inner {
                settings,
                routes: Mutex::new(HashMap::new()),
                answered: Mutex::new(HashMap::new()),
                auths: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Where this node looks for `registry`'s CA.
    pub fn ca_path(&self, registry: &str) -> PathBuf {
        self.inner.settings.certs_dir.join(registry).join("ca.crt")
    }

    async fn is_insecure(&self, registry: &str) -> bool {
        let host = registry_host(registry);
        let mut cidrs = Vec::new();
        for i in &self.inner.settings.insecure {
            match i {
                Insecure::Host(h) if h == registry || h == host => return true,
                Insecure::Cidr(net) => cidrs.push(*net),
                Insecure::Host(_) => {}
            }
        }
        if cidrs.is_empty() {
            return false;
        }
        let name = host.rsplit_once(':').map_or(host, |(h, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                host
            }
        });
        let name = name.trim_start_matches('[').trim_end_matches(']');
        let ips: Vec<IpAddr> = match name.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => tokio::net::lookup_host((name, 0))
                .await
                .map(|a| a.map(|s| s.ip()).collect())
                .unwrap_or_default(),
        };
        ips.iter().any(|ip| cidrs.iter().any(|n| n.contains(ip)))
    }

    /// The ways to reach `registry`, built anew when its certs.d directory changed.
    async fn routes(&self, registry: &str) -> Result<Vec<Route>, RegistryError> {
        let dir = self.inner.settings.certs_dir.join(registry);
        let stamp = tls::dir_stamp(&dir);
        if let Some((s, routes)) =
            self.inner.routes.lock().unwrap_or_else(|p| p.into_inner()).get(registry)
        {
            if *s == stamp {
                return Ok(routes.clone());
            }
        }
        let host = registry_host(registry);
        let routes = if self.is_insecure(registry).await {
            vec![
                Route {
                    base: format!("https://{host}"),
                    http: http_client(tls::unverified()?)?,
                    verified: false,
                },
                // Plain HTTP; the TLS config only serves a redirect to HTTPS.
                Route {
                    base: format!("http://{host}"),
                    http: http_client(tls::unverified()?)?,
                    verified: false,
                },
            ]
        } else {
            vec![Route {
                base: format!("https://{host}"),
                http: http_client(tls::verified(&dir)?)?,
                verified: true,
            }]
        };
        self.inner
            .routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(registry.to_string(), (stamp, routes.clone()));
        Ok(routes)
    }

    /// The route that answers (the first, or the next after a TLS failure on an insecure
    /// registry), and the error a request through it gave.
    fn tls_error(
        &self,
        registry: &str,
        route: &Route,
        e: &reqwest::Error,
    ) -> Option<RegistryError> {
        match tls::classify(e)? {
            tls::TlsFailure::UnknownIssuer => Some(RegistryError::UnknownAuthority {
                registry: registry.to_string(),
                ca_path: self.ca_path(registry),
            }),
            tls::TlsFailure::PlainHttp if route.verified => {
                Some(RegistryError::PlainHttp { registry: registry.to_string() })
            }
            tls::TlsFailure::PlainHttp => None,
            tls::TlsFailure::Other(message) => {
                Some(RegistryError::Tls { registry: registry.to_string(), message })
            }
        }
    }

    fn cached_auth(
        &self,
        registry: &str,
        scope: &str,
        creds: Option<&Credentials>,
    ) -> Option<String> {
        let auths = self.inner.auths.lock().unwrap_or_else(|p| p.into_inner());
        let (value, until) = auths.get(&auth_key(registry, scope, creds))?;
        (Instant::now() < *until).then(|| value.clone())
    }

    /// Answers a 401's challenge: the `Authorization` value to retry with.
    async fn answer(
        &self,
        registry: &str,
        route: &Route,
        challenge: Option<Challenge>,
        scope: &str,
        creds: Option<&Credentials>,
        words: String,
    ) -> Result<String, RegistryError> {
        let refused = |message: String| RegistryError::Unauthorized {
            registry: registry.to_string(),
            message,
        };
        let (value, lasts) = match challenge {
            Some(Challenge::Basic) => {
                let c = creds.ok_or_else(|| refused(format!("{words} (log in first)")))?;
                (c.basic(), Duration::from_secs(3600))
            }
            Some(Challenge::Bearer { realm, service, scope: asked }) => {
                let scope =
                    if scope.is_empty() { asked.unwrap_or_default() } else { scope.to_string() };
                let mut url = reqwest::Url::parse(&realm).map_err(|e| {
                    refused(format!("the registry's token realm {realm:?} is not a URL: {e}"))
                })?;
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = &service {
                        q.append_pair("service", s);
                    }
                    if !scope.is_empty() {
                        q.append_pair("scope", &scope);
                    }
                }
                let realm_host = match (url.host_str(), url.port()) {
                    (Some(h), Some(p)) => format!("{h}:{p}"),
                    (Some(h), None) => h.to_string(),
                    (None, _) => String::new(),
                };
                let same_host = realm_host == registry_host(registry);
                if url.scheme() != "https" && (route.verified || !same_host) {
                    return Err(refused(format!(
                        "the registry's token realm {realm} is not HTTPS; refusing to send credentials"
                    )));
                }
                // The token service is checked like any registry (its own certs.d), unless it
                // is the insecure registry itself.
                let http = if same_host && !route.verified {
                    route.http.clone()
                } else {
                    let dir = self.inner.settings.certs_dir.join(&realm_host);
                    http_client(tls::verified(&dir)?)?
                };
                let mut req = http.get(url);
                if let Some(c) = creds {
                    req = req.header(AUTHORIZATION, c.basic());
                }
                let resp = req.send().await.map_err(|e| unreachable(registry, &e))?;
                let status = resp.status();
                let body = resp.bytes().await.map_err(|e| unreachable(registry, &e))?;
                if !status.is_success() {
                    return Err(refused(auth::registry_words(&body)));
                }
                let (token, secs) = auth::token_of(&body)
                    .ok_or_else(|| refused("the token service answered without a token".into()))?;
                (format!("Bearer {token}"), Duration::from_secs(secs))
            }
            None => return Err(refused(words)),
        };
        self.inner
            .auths
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(auth_key(registry, scope, creds), (value.clone(), Instant::now() + lasts));
        Ok(value)
    }

    /// Sends a request built by `make` (called anew for each try) to `registry`, answering a
    /// login challenge once and retrying transient failures with back-off.
    async fn send(
        &self,
        registry: &str,
        access_scope: &str,
        creds: Option<&Credentials>,
        make: &(dyn Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder + Send + Sync),
    ) -> Result<reqwest::Response, RegistryError> {
        self.send_tries(registry, access_scope, creds, make, ATTEMPTS).await
    }

    async fn send_tries(
        &self,
        registry: &str,
        access_scope: &str,
        creds: Option<&Credentials>,
        make: &(dyn Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder + Send + Sync),
        attempts: u32,
    ) -> Result<reqwest::Response, RegistryError> {
        let routes = self.routes(registry).await?;
        let mut wait = BACKOFF;
        let mut last = None;
        for attempt in 1..=attempts {
            match self.send_once(registry, &routes, access_scope, creds, make).await {
                Ok(resp) => {
                    let s = resp.status();
                    if s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error() {
                        let status = s.as_u16();
                        let body = resp.bytes().await.unwrap_or_default();
                        let e = RegistryError::Registry {
                            registry: registry.to_string(),
                            status,
                            message: auth::registry_words(&body),
                        };
                        last = Some(e);
                    } else {
                        return Ok(resp);
                    }
                }
                Err(e) if e.is_transient() => last = Some(e),
                Err(e) => return Err(e),
            }
            if attempt < attempts {
                tracing::debug!(registry, attempt, error = ?last, "retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_BACKOFF);
            }
        }
        Err(last.expect("a failed attempt left its error"))
    }

    async fn send_once(
        &self,
        registry: &str,
        routes: &[Route],
        access_scope: &str,
        creds: Option<&Credentials>,
        make: &(dyn Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder + Send + Sync),
    ) -> Result<reqwest::Response, RegistryError> {
        let mut last = None;
        let first =
            self.inner.answered.lock().unwrap_or_else(|p| p.into_inner()).get(registry).copied();
        let first = first.filter(|i| *i < routes.len()).unwrap_or(0);
        for (i, route) in routes.iter().enumerate().cycle().skip(first).take(routes.len()) {
            let auth = self.cached_auth(registry, access_scope, creds);
            let resp = match self.execute(route, make, auth.as_deref()).await {
                Ok(r) => r,
                Err(e) => {
                    if let Some(err) = self.tls_error(registry, route, &e) {
                        return Err(err);
                    }
                    last = Some(unreachable(registry, &e));
                    continue;
                }
            };
            self.inner
                .answered
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(registry.to_string(), i);
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            let challenge = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|h| h.to_str().ok())
                .and_then(parse_challenge);
            let words = auth::registry_words(&resp.bytes().await.unwrap_or_default());
            if auth.is_some() {
                // What we sent was refused: a token gone stale is fetched once more.
                self.inner.auths.lock().unwrap_or_else(|p| p.into_inner()).remove(&auth_key(
                    registry,
                    access_scope,
                    creds,
                ));
            }
            let value = self.answer(registry, route, challenge, access_scope, creds, words).await?;
            let resp = self
                .execute(route, make, Some(&value))
                .await
                .map_err(|e| unreachable(registry, &e))?;
            if resp.status() == StatusCode::UNAUTHORIZED {
                let words = auth::registry_words(&resp.bytes().await.unwrap_or_default());
                return Err(RegistryError::Unauthorized {
                    registry: registry.to_string(),
                    message: words,
                });
            }
            return Ok(resp);
        }
        Err(last.unwrap_or_else(|| RegistryError::Unreachable {
            registry: registry.to_string(),
            message: "no way to reach it".into(),
        }))
    }

    /// Sends the request `make` builds through `route`, with `auth` only if the request goes
    /// to the registry's own host (an upload Location may name another).
    async fn execute(
        &self,
        route: &Route,
        make: &(dyn Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder + Send + Sync),
        auth: Option<&str>,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let mut req = make(&route.http, &route.base).build()?;
        let base = reqwest::Url::parse(&route.base).ok();
        let same = base.as_ref().is_some_and(|b| {
            b.scheme() == req.url().scheme()
                && b.host_str() == req.url().host_str()
                && b.port_or_known_default() == req.url().port_or_known_default()
        });
        if let (Some(a), true) = (auth, same) {
            if let Ok(v) = reqwest::header::HeaderValue::from_str(a) {
                req.headers_mut().insert(AUTHORIZATION, v);
            }
        }
        route.http.execute(req).await
    }

    /// An error for an answer that is not a success.
    async fn refused(r: &ImageRef, resp: reqwest::Response) -> RegistryError {
        let status = resp.status();
        let words = auth::registry_words(&resp.bytes().await.unwrap_or_default());
        match status {
            StatusCode::NOT_FOUND => {
                RegistryError::NotFound { reference: r.familiar(), message: words }
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                RegistryError::Unauthorized { registry: r.registry.clone(), message: words }
            }
            s => RegistryError::Registry {
                registry: r.registry.clone(),
                status: s.as_u16(),
                message: words,
            },
        }
    }

    /// The digest the reference names now: the tag's current manifest (or index), or the
    /// reference's own digest once the registry confirmed it has it. One try: a caller that
    /// cannot wait (a service create) goes on without.
    pub async fn resolve(
        &self,
        r: &ImageRef,
        creds: Option<&Credentials>,
    ) -> Result<String, RegistryError> {
        let path = format!("/v2/{}/manifests/{}", r.repository, r.manifest_ref());
        let sc = scope(r, Access::Pull);
        let head = |http: &reqwest::Client, base: &str| {
            http.head(format!("{base}{path}")).header(ACCEPT, ACCEPT_MANIFESTS)
        };
        let resp = self.send_tries(&r.registry, &sc, creds, &head, 1).await?;
        if !resp.status().is_success() {
            return Err(Self::refused(r, resp).await);
        }
        if let Some(d) = &r.digest {
            return Ok(d.clone());
        }
        let header = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|h| h.to_str().ok())
            .filter(|d| is_digest(d))
            .map(str::to_string);
        match header {
            Some(d) => Ok(d),
            None => Ok(self.get_manifest(r, r.manifest_ref(), creds).await?.0),
        }
    }

    /// GETs the manifest `reference` (tag or digest) of `r`'s repository: its digest (checked
    /// when asked by digest), media type and bytes.
    async fn get_manifest(
        &self,
        r: &ImageRef,
        reference: &str,
        creds: Option<&Credentials>,
    ) -> Result<(String, String, Vec<u8>), RegistryError> {
        let path = format!("/v2/{}/manifests/{reference}", r.repository);
        let sc = scope(r, Access::Pull);
        let resp = self
            .send(&r.registry, &sc, creds, &|http, base| {
                http.get(format!("{base}{path}")).header(ACCEPT, ACCEPT_MANIFESTS)
            })
            .await?;
        if !resp.status().is_success() {
            return Err(Self::refused(r, resp).await);
        }
        let said_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|h| h.to_str().ok())
            .map(str::to_string);
        let header_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|h| h.to_str().ok())
            .map(|t| t.split(';').next().unwrap_or(t).trim().to_string());
        let bad = |reason: String| RegistryError::BadManifest { reference: r.familiar(), reason };
        if resp.content_length().is_some_and(|l| l > MAX_MANIFEST as u64) {
            return Err(bad(format!("the manifest is larger than {MAX_MANIFEST} bytes")));
        }
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| unreachable(&r.registry, &e))?;
            if body.len() + chunk.len() > MAX_MANIFEST {
                return Err(bad(format!("the manifest is larger than {MAX_MANIFEST} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        let digest = sha256(&body);
        if is_digest(reference) && digest != reference {
            return Err(RegistryError::DigestMismatch {
                expected: reference.into(),
                actual: digest,
            });
        }
        if let Some(said) = said_digest.filter(|d| is_digest(d)) {
            if said != digest {
                return Err(RegistryError::DigestMismatch { expected: said, actual: digest });
            }
        }
        let value: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| bad(format!("the manifest is not JSON: {e}")))?;
        let media = value
            .get("mediaType")
            .and_then(|m| m.as_str())
            .map(str::to_string)
            .or(header_type)
            .unwrap_or_default();
        Ok((digest, media, body))
    }

    /// The manifest of `r` for `platform`: an index or list is followed to the platform's
    /// entry. Every manifest is checked against its digest.
    pub async fn manifest(
        &self,
        r: &ImageRef,
        creds: Option<&Credentials>,
        platform: &Platform,
    ) -> Result<Pulled, RegistryError> {
        let bad = |reason: String| RegistryError::BadManifest { reference: r.familiar(), reason };
        let (pinned, mut media_type, mut body) =
            self.get_manifest(r, r.manifest_ref(), creds).await?;
        let mut digest = pinned.clone();
        if media_type == media::OCI_INDEX || media_type == media::DOCKER_LIST {
            let index: Index =
                serde_json::from_slice(&body).map_err(|e| bad(format!("the index: {e}")))?;
            let entry =
                select_platform(&index, platform).ok_or_else(|| RegistryError::NoPlatform {
                    reference: r.familiar(),
                    platform: platform.to_string(),
                    available: index
                        .manifests
                        .iter()
                        .filter_map(|m| {
                            m.platform.as_ref().map(|p| format!("{}/{}", p.os, p.architecture))
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            let (d, m, b) = self.get_manifest(r, &entry.digest, creds).await?;
            (digest, media_type, body) = (d, m, b);
        }
        let m = decode_manifest(&media_type, &body).map_err(bad)?;
        Ok(Pulled {
            pinned,
            manifest_digest: digest,
            manifest_media_type: if media_type.is_empty() {
                media::OCI_MANIFEST.into()
            } else {
                media_type
            },
            manifest: body,
            config: m.config,
            layers: m.layers,
        })
    }

    /// Downloads blob `d` of `r`'s repository to `dest`: through a temporary file beside it,
    /// hashed and counted as it comes, resumed where it stopped when the connection drops,
    /// and renamed into place only when the digest and size match. `progress` gets the bytes
    /// written so far.
    pub async fn fetch_blob(
        &self,
        r: &ImageRef,
        d: &Descriptor,
        dest: &Path,
        creds: Option<&Credentials>,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), RegistryError> {
        if !is_digest(&d.digest) {
            return Err(RegistryError::BadManifest {
                reference: r.familiar(),
                reason: format!("unsupported blob digest {:?}", d.digest),
            });
        }
        let hex = &d.digest[7..];
        let tmp = dest.with_file_name(format!(".{hex}.partial"));
        let result = self.fetch_into(r, d, &tmp, creds, progress).await;
        let result = match result {
            Ok(()) => tokio::fs::rename(&tmp, dest).await.map_err(|source| RegistryError::Io {
                what: "storing the blob at",
                path: dest.to_path_buf(),
                source,
            }),
            Err(e) => Err(e),
        };
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    async fn fetch_into(
        &self,
        r: &ImageRef,
        d: &Descriptor,
        tmp: &Path,
        creds: Option<&Credentials>,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), RegistryError> {
        let io = |what: &'static str| {
            let path = tmp.to_path_buf();
            move |source| RegistryError::Io { what, path, source }
        };
        let mut file = tokio::fs::File::create(tmp).await.map_err(io("creating"))?;
        let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
        let mut written: u64 = 0;
        let path = format!("/v2/{}/blobs/{}", r.repository, d.digest);
        let sc = scope(r, Access::Pull);
        let mut resumes = 0;
        loop {
            let from = written;
            let sent = self
                .send(&r.registry, &sc, creds, &|http, base| {
                    let req = http.get(format!("{base}{path}"));
                    if from > 0 {
                        req.header("range", format!("bytes={from}-"))
                    } else {
                        req
                    }
                })
                .await;
            let resp = match sent {
                Ok(resp) => resp,
                Err(e) if e.is_transient() && resumes < RESUMES => {
                    resumes += 1;
                    tracing::info!(blob = %d.digest, error = %e, "the registry did not answer; trying again");
                    tokio::time::sleep(MAX_BACKOFF / 4).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let status = resp.status();
            if !status.is_success() {
                return Err(Self::refused(r, resp).await);
            }
            let resumed_here = resp
                .headers()
                .get("content-range")
                .and_then(|h| h.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.trim().parse::<u64>().ok())
                == Some(from);
            if from > 0 && (status != StatusCode::PARTIAL_CONTENT || !resumed_here) {
                // The registry sends it all again: start over.
                file.set_len(0).await.map_err(io("truncating"))?;
                file = tokio::fs::File::create(tmp).await.map_err(io("creating"))?;
                hash = ring::digest::Context::new(&ring::digest::SHA256);
                written = 0;
            }
            let mut stream = resp.bytes_stream();
            let mut cut = None;
            while let Some(chunk) = stream.next().await {
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(e) => {
                        cut = Some(unreachable(&r.registry, &e));
                        break;
                    }
                };
                if written + chunk.len() as u64 > d.size {
                    return Err(RegistryError::SizeMismatch {
                        digest: d.digest.clone(),
                        expected: d.size,
                        actual: written + chunk.len() as u64,
                    });
                }
                file.write_all(&chunk).await.map_err(io("writing"))?;
                hash.update(&chunk);
                written += chunk.len() as u64;
                progress(written);
            }
            if written == d.size {
                break;
            }
            resumes += 1;
            let why =
                cut.map_or_else(|| "the connection closed early".to_string(), |e| e.to_string());
            if resumes > RESUMES {
                return Err(RegistryError::Unreachable {
                    registry: r.registry.clone(),
                    message: format!(
                        "blob {} stopped at {written} of {} bytes: {why}",
                        d.digest, d.size
                    ),
                });
            }
            tracing::info!(blob = %d.digest, written, size = d.size, %why, "resuming a download");
            tokio::time::sleep(BACKOFF).await;
        }
        file.flush().await.map_err(io("writing"))?;
        file.sync_all().await.map_err(io("syncing"))?;
        let actual = format!("sha256:{}", hex(hash.finish().as_ref()));
        if actual != d.digest {
            return Err(RegistryError::DigestMismatch { expected: d.digest.clone(), actual });
        }
        Ok(())
    }

    /// True if `r`'s repository holds blob `digest`.
    pub async fn blob_exists(
        &self,
        r: &ImageRef,
        digest: &str,
        creds: Option<&Credentials>,
    ) -> Result<bool, RegistryError> {
        let path = format!("/v2/{}/blobs/{digest}", r.repository);
        let sc = scope(r, Access::Push);
        let resp = self
            .send(&r.registry, &sc, creds, &|http, base| http.head(format!("{base}{path}")))
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(Self::refused(r, resp).await),
        }
    }

    /// Uploads blob `d` from `src` unless the repository has it: a session, then one PUT of
    /// the whole file, streamed.
    pub async fn push_blob(
        &self,
        r: &ImageRef,
        d: &Descriptor,
        src: &Path,
        creds: Option<&Credentials>,
    ) -> Result<(), RegistryError> {
        std::fs::File::open(src).map_err(|source| RegistryError::Io {
            what: "reading",
            path: src.to_path_buf(),
            source,
        })?;
        if self.blob_exists(r, &d.digest, creds).await? {
            return Ok(());
        }
        let sc = scope(r, Access::Push);
        let start = format!("/v2/{}/blobs/uploads/", r.repository);
        let resp = self
            .send(&r.registry, &sc, creds, &|http, base| {
                http.post(format!("{base}{start}")).header("content-length", "0")
            })
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(Self::refused(r, resp).await);
        }
        let location = resp
            .headers()
            .get("location")
            .and_then(|l| l.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| RegistryError::Registry {
                registry: r.registry.clone(),
                status: 202,
                message: "the upload session has no Location".into(),
            })?;
        let digest = d.digest.clone();
        let size = d.size;
        let src = src.to_path_buf();
        let resp = self
            .send(&r.registry, &sc, creds, &|http, base| {
                let url = upload_url(base, &start, &location, &digest);
                // A file gone between tries uploads nothing, which the registry refuses (the
                // digest does not match); the open error is reported after.
                let body = match std::fs::File::open(&src) {
                    Ok(f) => reqwest::Body::from(tokio::fs::File::from_std(f)),
                    Err(_) => reqwest::Body::from(Vec::new()),
                };
                http.request(Method::PUT, url)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header("content-length", size)
                    .body(body)
            })
            .await;
        let resp = match (resp, std::fs::metadata(&src)) {
            (_, Err(source)) => {
                return Err(RegistryError::Io { what: "reading", path: src, source })
            }
            (r, _) => r?,
        };
        if resp.status() != StatusCode::CREATED {
            return Err(Self::refused(r, resp).await);
        }
        Ok(())
    }

    /// Puts a manifest under `r`'s tag; returns its digest.
    pub async fn push_manifest(
        &self,
        r: &ImageRef,
        media_type: &str,
        bytes: &[u8],
        creds: Option<&Credentials>,
    ) -> Result<String, RegistryError> {
        let path = format!("/v2/{}/manifests/{}", r.repository, r.manifest_ref());
        let sc = scope(r, Access::Push);
        let body = bytes.to_vec();
        let media = media_type.to_string();
        let resp = self
            .send(&r.registry, &sc, creds, &|http, base| {
                http.put(format!("{base}{path}"))
                    .header(CONTENT_TYPE, media.as_str())
                    .body(body.clone())
            })
            .await?;
        if resp.status() != StatusCode::CREATED && !resp.status().is_success() {
            return Err(Self::refused(r, resp).await);
        }
        Ok(sha256(bytes))
    }

    /// Checks a login: `/v2/` answered with the credentials.
    pub async fn login(&self, registry: &str, creds: &Credentials) -> Result<(), RegistryError> {
        let sc = scope(&ImageRef::parse("x").expect("a valid reference"), Access::Login);
        // Without a cached answer, the first request goes out bare and the challenge decides.
        self.inner.auths.lock().unwrap_or_else(|p| p.into_inner()).remove(&auth_key(
            registry,
            &sc,
            Some(creds),
        ));
        let get = |http: &reqwest::Client, base: &str| http.get(format!("{base}/v2/"));
        let resp = self.send_tries(registry, &sc, Some(creds), &get, 1).await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let words = auth::registry_words(&resp.bytes().await.unwrap_or_default());
        Err(RegistryError::Registry {
            registry: registry.to_string(),
            status: status.as_u16(),
            message: words,
        })
    }
}

/// The URL of an upload session's final PUT: the Location (absolute, or a path on the
/// registry), with `digest=` added to its query.
fn upload_url(base: &str, start: &str, location: &str, digest: &str) -> String {
    let url = reqwest::Url::parse(&format!("{base}{start}"))
        .and_then(|b| b.join(location))
        .map(|u| u.to_string())
        .unwrap_or_else(|_| location.to_string());
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}digest={}", digest.replace(':', "%3A"))
}

/// Reads an image manifest a registry sent (`media_type` as it said, possibly empty): its
/// config and layers, each with a sha256 digest; any other kind, or schema 1, is refused with
/// what is wrong. The bytes come from the network: nothing in them is trusted.
pub fn decode_manifest(media_type: &str, body: &[u8]) -> Result<Manifest, String> {
    match media_type {
        media::OCI_MANIFEST | media::DOCKER_MANIFEST | "" => {}
        media::DOCKER_SCHEMA1 | media::DOCKER_SCHEMA1_SIGNED => {
            return Err("Docker schema 1 manifests are not supported; push the image again with a current client".into())
        }
        other => return Err(format!("unsupported manifest type {other}")),
    }
    if body.len() > MAX_MANIFEST {
        return Err(format!("a manifest of {} bytes (at most {MAX_MANIFEST})", body.len()));
    }
    let m: Manifest = serde_json::from_slice(body).map_err(|e| format!("the manifest: {e}"))?;
    for d in std::iter::once(&m.config).chain(&m.layers) {
        if !is_digest(&d.digest) {
            return Err(format!("unsupported blob digest {:?}", d.digest));
        }
    }
    Ok(m)
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<IndexEntry>,
}

#[derive(Deserialize)]
struct IndexEntry {
    digest: String,
    #[serde(default)]
    platform: Option<IndexPlatform>,
}

#[derive(Deserialize)]
struct IndexPlatform {
    os: String,
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

/// An image manifest's blobs.
#[derive(Clone, Debug, Deserialize)]
pub struct Manifest {
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// The index entry for `p`: same OS and CPU, the same variant when `p` names one.
fn select_platform<'a>(index: &'a Index, p: &Platform) -> Option<&'a IndexEntry> {
    let matching = |e: &&IndexEntry| {
        e.platform.as_ref().is_some_and(|q| q.os == p.os && q.architecture == p.architecture)
    };
    // The variant asked for; without one, an entry that names none (a plain amd64 before
    // amd64/v3, which this CPU may lack).
    let variant = |e: &&IndexEntry| {
        e.platform.as_ref().and_then(|q| q.variant.as_ref()) == p.variant.as_ref()
    };
    index
        .manifests
        .iter()
        .filter(matching)
        .find(variant)
        .or_else(|| index.manifests.iter().find(matching))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insecure_entries() {
        assert_eq!("reg:5000".parse::<Insecure>(), Ok(Insecure::Host("reg:5000".into())));
        assert!(matches!("10.0.0.0/8".parse::<Insecure>(), Ok(Insecure::Cidr(_))));
        assert!("http://reg".parse::<Insecure>().is_err());
        assert!("10.0.0.0/99".parse::<Insecure>().is_err());
        assert!("".parse::<Insecure>().is_err());
    }

    #[test]
    fn credentials_never_show_their_password() {
        let c = Credentials { username: "u".into(), password: "hunter2-secret".into() };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn the_platform_entry_is_chosen_from_an_index() {
        let index: Index = serde_json::from_value(serde_json::json!({"manifests": [
            {"digest": "sha256:arm", "platform": {"os": "linux", "architecture": "arm64"}},
            {"digest": "sha256:v6", "platform": {"os": "linux", "architecture": "arm", "variant": "v6"}},
            {"digest": "sha256:v7", "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
            {"digest": "sha256:amd", "platform": {"os": "linux", "architecture": "amd64"}},
            {"digest": "sha256:win", "platform": {"os": "windows", "architecture": "amd64"}},
        ]}))
        .unwrap();
        let p = |a: &str, v: Option<&str>| Platform {
            os: "linux".into(),
            architecture: a.into(),
            variant: v.map(Into::into),
        };
        assert_eq!(select_platform(&index, &p("amd64", None)).unwrap().digest, "sha256:amd");
        assert_eq!(select_platform(&index, &p("arm", Some("v7"))).unwrap().digest, "sha256:v7");
        // No variant asked: one that names none, else the first listed.
        assert_eq!(select_platform(&index, &p("arm", None)).unwrap().digest, "sha256:v6");
        let v3: Index = serde_json::from_value(serde_json::json!({"manifests": [
            {"digest": "sha256:v3", "platform": {"os": "linux", "architecture": "amd64", "variant": "v3"}},
            {"digest": "sha256:plain", "platform": {"os": "linux", "architecture": "amd64"}},
        ]}))
        .unwrap();
        assert_eq!(select_platform(&v3, &p("amd64", None)).unwrap().digest, "sha256:plain");
        assert!(select_platform(&index, &p("s390x", None)).is_none());
        assert_eq!(Platform::host().os, "linux");
    }

    #[test]
    fn upload_locations() {
        let d = "sha256:ab";
        let start = "/v2/a/blobs/uploads/";
        assert_eq!(
            upload_url("https://r:5000", start, "/v2/a/blobs/uploads/u1?_state=x", d),
            "https://r:5000/v2/a/blobs/uploads/u1?_state=x&digest=sha256%3Aab"
        );
        assert_eq!(
            upload_url("https://r:5000", start, "u2", d),
            "https://r:5000/v2/a/blobs/uploads/u2?digest=sha256%3Aab"
        );
        assert_eq!(
            upload_url("https://r", start, "https://s3.example/up/1", d),
            "https://s3.example/up/1?digest=sha256%3Aab"
        );
    }
}
