//! The raft benchmark's peer: three etcd processes with peer and client mTLS, and a hand-written
//! `KV.Put` client.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{drive, first_commit_after, random_value, FORM_TIMEOUT, MEMBERS};
use crate::common::{free_ports, log_tail, temp_dir};

/// The few etcd v3 API messages the benchmark uses (field numbers as in etcd's rpc.proto).
mod etcdpb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResponseHeader {
        #[prost(uint64, tag = "1")]
        pub cluster_id: u64,
        #[prost(uint64, tag = "2")]
        pub member_id: u64,
        #[prost(int64, tag = "3")]
        pub revision: i64,
        #[prost(uint64, tag = "4")]
        pub raft_term: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StatusRequest {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StatusResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
        #[prost(string, tag = "2")]
        pub version: String,
        #[prost(uint64, tag = "4")]
        pub leader: u64,
    }
}

/// A gRPC client of etcd's `KV.Put` and `Maintenance.Status`.
#[derive(Clone, Debug)]
struct EtcdClient {
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

impl EtcdClient {
    async fn connect(url: &str, tls: &EtcdTls) -> Result<EtcdClient> {
        let config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca))
            .identity(tonic::transport::Identity::from_pem(&tls.client_cert, &tls.client_key))
            .domain_name("localhost");
        let channel = tonic::transport::Endpoint::from_shared(url.to_string())?
            .connect_timeout(Duration::from_secs(2))
            .tls_config(config)?
            .connect()
            .await
            .with_context(|| format!("connecting to etcd at {url}"))?;
        Ok(EtcdClient { grpc: tonic::client::Grpc::new(channel) })
    }

    async fn unary<Req, Resp>(&mut self, path: &'static str, req: Req) -> Result<Resp>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        self.grpc.ready().await.map_err(|e| anyhow::anyhow!("etcd connection: {e}"))?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
        let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
        let resp = self.grpc.unary(tonic::Request::new(req), path, codec).await?;
        Ok(resp.into_inner())
    }

    async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<etcdpb::PutResponse> {
        self.unary("/etcdserverpb.KV/Put", etcdpb::PutRequest { key, value }).await
    }

    async fn status(&mut self) -> Result<etcdpb::StatusResponse> {
        self.unary("/etcdserverpb.Maintenance/Status", etcdpb::StatusRequest {}).await
    }
}

/// PEM files of the etcd cluster's private CA.
#[derive(Debug, Clone)]
struct EtcdTls {
    ca: String,
    client_cert: String,
    client_key: String,
}

/// Makes a CA and one certificate (server and client use, SANs localhost and 127.0.0.1) for the
/// members, one for the benchmark's client, and writes them under `dir`.
fn make_etcd_certs(dir: &Path) -> Result<EtcdTls> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name.push(DnType::CommonName, "shoal bench etcd CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |cn: &str| -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        p.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (member_cert, member_key) = leaf("etcd-member")?;
    let (client_cert, client_key) = leaf("bench-client")?;
    std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
    std::fs::write(dir.join("member.pem"), member_cert)?;
    std::fs::write(dir.join("member-key.pem"), member_key)?;
    Ok(EtcdTls { ca: ca_cert.pem(), client_cert, client_key })
}

#[derive(Debug)]
struct EtcdMember {
    client_url: String,
    child: Option<Child>,
    log: PathBuf,
}

/// Three etcd processes in one temp dir; killed (and the dir removed) when dropped.
#[derive(Debug)]
pub(super) struct EtcdCluster {
    members: Vec<EtcdMember>,
    tls: EtcdTls,
    keys: Arc<AtomicU64>,
    _dir: tempfile::TempDir,
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl EtcdCluster {
    pub(super) async fn start(binary: &Path) -> Result<EtcdCluster> {
        let dir = temp_dir("shoal-bench-etcd-")?;
        let tls = make_etcd_certs(dir.path())?;
        let ports = free_ports(2 * MEMBERS)?;
        let peer_url = |i: usize| format!("https://127.0.0.1:{}", ports[2 * i + 1]);
        let initial: Vec<String> = (0..MEMBERS).map(|i| format!("m{i}={}", peer_url(i))).collect();
        let mut cluster =
            EtcdCluster { members: Vec::new(), tls, keys: Arc::new(AtomicU64::new(0)), _dir: dir };
        let root = cluster._dir.path().to_path_buf();
        let file = |name: &str| root.join(name).display().to_string();
        for i in 0..MEMBERS {
            let client_url = format!("https://127.0.0.1:{}", ports[2 * i]);
            let log = root.join(format!("m{i}.log"));
            let out = std::fs::File::create(&log)?;
            let child = Command::new(binary)
                .args(["--name", &format!("m{i}")])
                .args(["--data-dir", &file(&format!("m{i}.etcd"))])
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url(i)])
                .args(["--initial-advertise-peer-urls", &peer_url(i)])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "shoal-bench"])
                .args(["--cert-file", &file("member.pem"), "--key-file", &file("member-key.pem")])
                .args(["--trusted-ca-file", &file("ca.pem"), "--client-cert-auth"])
                .args(["--peer-cert-file", &file("member.pem")])
                .args(["--peer-key-file", &file("member-key.pem")])
                .args(["--peer-trusted-ca-file", &file("ca.pem"), "--peer-client-cert-auth"])
                .args(["--logger", "zap", "--log-level", "warn"])
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .spawn()
                .with_context(|| {
                    format!(
                        "running {}: install Debian's etcd-server (apt-get install etcd-server) \
                         or pass --etcd PATH, or --skip-etcd",
                        binary.display()
                    )
                })?;
            cluster.members.push(EtcdMember { client_url, child: Some(child), log });
        }
        let deadline = Instant::now() + FORM_TIMEOUT;
        loop {
            for m in &mut cluster.members {
                if let Some(status) = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    bail!("etcd exited ({status}): {}", log_tail(&m.log, 5));
                }
            }
            if cluster.leader().await.is_ok() {
                return Ok(cluster);
            }
            if Instant::now() > deadline {
                let tails: Vec<String> =
                    cluster.members.iter().map(|m| log_tail(&m.log, 5)).collect();
                bail!("the etcd cluster did not elect a leader in time:\n{}", tails.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(super) async fn version(&self) -> Result<String> {
        let mut c = EtcdClient::connect(&self.members[0].client_url, &self.tls).await?;
        Ok(c.status().await?.version)
    }

    /// The index of the member that is leader, as the live members report.
    pub(super) async fn leader(&self) -> Result<usize> {
        let mut ids = Vec::new();
        let mut leader = 0;
        for m in &self.members {
            if m.child.is_none() {
                ids.push(None);
                continue;
            }
            let status = match EtcdClient::connect(&m.client_url, &self.tls).await {
                Ok(mut c) => tokio::time::timeout(Duration::from_secs(1), c.status()).await,
                Err(e) => return Err(e),
            };
            let status = status.context("etcd status timed out")??;
            ids.push(status.header.map(|h| h.member_id));
            leader = leader.max(status.leader);
        }
        if leader == 0 {
            bail!("etcd has no leader yet");
        }
        ids.iter().position(|id| *id == Some(leader)).context("the etcd leader is not known")
    }

    /// Puts 8-byte keys with {VALUE_BYTES}-byte values through member `i`, all clients sharing
    /// one connection.
    pub(super) async fn writer(
        &self,
        i: usize,
    ) -> Result<
        impl Fn(usize, u64) -> std::pin::Pin<Box<dyn Future<Output = Result<String>> + Send>>
            + Send
            + Sync
            + 'static,
    > {
        let client = EtcdClient::connect(&self.members[i].client_url, &self.tls).await?;
        let keys = self.keys.clone();
        Ok(move |_c: usize, _seq: u64| {
            let mut client = client.clone();
            let key = format!("{:08x}", keys.fetch_add(1, Ordering::Relaxed));
            Box::pin(async move {
                client.put(key.clone().into_bytes(), random_value().into_bytes()).await?;
                Ok(key)
            }) as std::pin::Pin<Box<dyn Future<Output = Result<String>> + Send>>
        })
    }

    /// Kills the leader (SIGKILL) and returns the time until a survivor commits a Put.
    pub(super) async fn failover(&mut self) -> Result<Duration> {
        let leader = self.leader().await?;
        drive(8, Duration::from_millis(500), self.writer(leader).await?).await?;
        let survivor = (0..self.members.len()).find(|i| *i != leader).context("no survivor")?;
        let write = self.writer(survivor).await?;
        let killed = Instant::now();
        if let Some(mut child) = self.members[leader].child.take() {
            child.kill()?;
            child.wait()?;
        }
        first_commit_after(killed, "etcd members", write).await
    }
}
