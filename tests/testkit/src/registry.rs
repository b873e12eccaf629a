//! A real registry for tests and benchmarks: Debian's `docker-registry` (distribution 2.8),
//! with filesystem storage under a test directory, TLS from a test CA made here (rcgen), and
//! htpasswd logins (`htpasswd -B` from apache2-utils). It may run inside a network namespace
//! (`wrap`: a command prefix such as `nsenter --net=/run/netns/X`).

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// The registry binary Debian's `docker-registry` package installs.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// How to run a registry.
#[derive(Clone, Debug)]
pub struct RegistryOpts {
    /// Serve HTTPS with a certificate from a test CA (else plain HTTP).
    pub tls: bool,
    /// One user that must log in (else anyone may pull and push).
    pub htpasswd: Option<(String, String)>,
    /// Where to listen; it must be an address the registry's namespace has.
    pub listen: SocketAddr,
    /// A command prefix to run it with (empty: as it is).
    pub wrap: Vec<String>,
}

/// A running registry; killed when dropped.
#[derive(Debug)]
pub struct TestRegistry {
    pub addr: SocketAddr,
    /// `IP:PORT`, as image references name it.
    pub host: String,
    /// The test CA's certificate (PEM) when it serves TLS.
    pub ca_pem: Option<String>,
    /// The filesystem storage root.
    pub storage: PathBuf,
    dir: PathBuf,
    wrap: Vec<String>,
    child: Option<Child>,
}

fn fail(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// A test CA and a server certificate for `ip` (and localhost) signed by it: (CA PEM, server
/// certificate PEM, server key PEM).
pub fn test_certs(ip: &str) -> Result<(String, String, String), String> {
    let ca_key = KeyPair::generate().map_err(|e| fail("CA key", e))?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(|e| fail("CA", e))?;
    ca.distinguished_name.push(DnType::CommonName, "shoal test registry CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(|e| fail("self-signing the CA", e))?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().map_err(|e| fail("server key", e))?;
    let mut server = CertificateParams::new(vec![ip.to_string(), "localhost".to_string()])
        .map_err(|e| fail("server certificate", e))?;
    server.distinguished_name.push(DnType::CommonName, ip);
    let cert = server.signed_by(&key, &issuer).map_err(|e| fail("signing", e))?;
    Ok((ca_cert.pem(), cert.pem(), key.serialize_pem()))
}

/// `user:bcrypt` as `htpasswd -B` writes it.
fn htpasswd(user: &str, password: &str) -> Result<String, String> {
    let out = Command::new("htpasswd")
        .args(["-nbB", user, password])
        .output()
        .map_err(|e| fail("running htpasswd (apt-get install apache2-utils)", e))?;
    if !out.status.success() {
        return Err(format!("htpasswd failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string() + "\n")
}

impl TestRegistry {
    /// Writes its configuration under `dir` (made if missing) and starts it; returns once it
    /// listens.
    pub fn start(dir: &Path, opts: RegistryOpts) -> Result<TestRegistry, String> {
        if !Path::new(REGISTRY_BIN).exists() {
            return Err(format!("{REGISTRY_BIN} is missing (apt-get install docker-registry)"));
        }
        std::fs::create_dir_all(dir).map_err(|e| fail("creating the registry directory", e))?;
        let storage = dir.join("storage");
        let ip = opts.listen.ip().to_string();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {}\n  secret: shoal-test-secret\n",
            storage.display(),
            opts.listen
        );
        let mut ca_pem = None;
        if opts.tls {
            let (ca, cert, key) = test_certs(&ip)?;
            std::fs::write(dir.join("server.crt"), cert).map_err(|e| fail("writing", e))?;
            std::fs::write(dir.join("server.key"), key).map_err(|e| fail("writing", e))?;
            config += &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                dir.join("server.crt").display(),
                dir.join("server.key").display()
            );
            ca_pem = Some(ca);
        }
        if let Some((user, password)) = &opts.htpasswd {
            std::fs::write(dir.join("htpasswd"), htpasswd(user, password)?)
                .map_err(|e| fail("writing htpasswd", e))?;
            config += &format!(
                "auth:\n  htpasswd:\n    realm: shoal-test\n    path: {}\n",
                dir.join("htpasswd").display()
            );
        }
        std::fs::write(dir.join("config.yml"), config).map_err(|e| fail("writing config", e))?;
        let mut reg = TestRegistry {
            addr: opts.listen,
            host: opts.listen.to_string(),
            ca_pem,
            storage,
            dir: dir.to_path_buf(),
            wrap: opts.wrap,
            child: None,
        };
        reg.spawn()?;
        Ok(reg)
    }

    fn log(&self) -> PathBuf {
        self.dir.join("registry.log")
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .map_err(|e| fail("opening the log", e))?;
        let start_len = std::fs::metadata(self.log()).map(|m| m.len()).unwrap_or(0);
        let mut cmd = match self.wrap.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(REGISTRY_BIN);
                c
            }
            None => Command::new(REGISTRY_BIN),
        };
        let child = cmd
            .arg("serve")
            .arg(self.dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| fail("log", e))?)
            .stderr(log)
            .spawn()
            .map_err(|e| fail("starting docker-registry", e))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read(self.log()).unwrap_or_default();
            let new = String::from_utf8_lossy(text.get(start_len as usize..).unwrap_or_default())
                .into_owned();
            if new.contains("listening on") {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                return Err(format!("docker-registry exited ({status}):\n{new}"));
            }
            if Instant::now() > deadline {
                return Err(format!("docker-registry did not listen within 20s:\n{new}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Puts the test CA where a node with certs.d directory `certs_dir` looks for this
    /// registry's (`certs_dir/IP:PORT/ca.crt`).
    pub fn install_ca(&self, certs_dir: &Path) {
        let ca = self.ca_pem.as_ref().expect("a TLS registry");
        let dir = certs_dir.join(&self.host);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.crt"), ca).unwrap();
    }

    /// Where the registry keeps the bytes of blob `digest`.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.storage.join("docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }

    /// Stops it (the storage stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same storage and address.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn().unwrap_or_else(|e| panic!("restarting the registry: {e}"));
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A registry layer of `files` (name, bytes; root's, mode 0644): the gzip'd tar and the diff
/// id (the digest of the uncompressed tar) its image config lists.
pub fn gzip_layer(files: &[(&str, &[u8])]) -> (Vec<u8>, String) {
    use std::io::Write;
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, name, *data).expect("a tar in memory");
    }
    let tar = b.into_inner().expect("a tar in memory");
    let diff_id = shoal_registry::sha256(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).expect("gzip in memory");
    (gz.finish().expect("gzip in memory"), diff_id)
}
