//! A fake node for the security tests: an outsider that holds a join token asks the real CA for
//! a certificate with its own key (as `swarm join` would, but running nothing), then speaks the
//! real protocol with it over mTLS.

use shoal::client::{Host, TlsFiles};
use shoal_proto::node_ca_client::NodeCaClient;
use shoal_proto::{GetJoinTokenRequest, IssueNodeCertificateRequest, NodeRole};
use tonic::transport::Channel;

use crate::harness::TestNode;

/// A certificate (and key) the cluster's CA issued to a node that runs no daemon.
pub struct FakeNode {
    pub node_id: String,
    pub files: TlsFiles,
    _dir: tempfile::TempDir,
}

impl FakeNode {
    /// Joins the cluster of `manager` (reached at `addr`) with its join token for `role`.
    pub async fn join(manager: &TestNode, addr: &str, role: NodeRole, hostname: &str) -> FakeNode {
        let req = GetJoinTokenRequest { role: role as i32 };
        let token = manager.control().await.get_join_token(req).await.unwrap().into_inner().token;
        let root_pem = manager.daemon.info().await.manager.unwrap().root_ca_pem().to_string();
        let tls = shoal_pki::tls::client_config(&root_pem, None).unwrap();
        let channel = shoal_agent::connect::connect(addr, std::sync::Arc::new(tls)).await.unwrap();
        let key = shoal_pki::NodeKey::generate().unwrap();
        let req = IssueNodeCertificateRequest {
            csr_der: key.csr_der().unwrap(),
            token,
            hostname: hostname.into(),
            advertise_addr: String::new(),
        };
        let resp =
            NodeCaClient::new(channel).issue_node_certificate(req).await.unwrap().into_inner();
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            ca: Some(dir.path().join("root-ca.crt")),
            cert: Some(dir.path().join("node.crt")),
            key: Some(dir.path().join("node.pem")),
        };
        std::fs::write(files.ca.as_ref().unwrap(), &root_pem).unwrap();
        std::fs::write(files.cert.as_ref().unwrap(), &resp.cert_chain_pem).unwrap();
        std::fs::write(files.key.as_ref().unwrap(), key.to_pem()).unwrap();
        FakeNode { node_id: resp.node_id, files, _dir: dir }
    }

    /// A real node's own certificate, read from its data root.
    pub fn of(node: &TestNode, node_id: &str) -> FakeNode {
        let certs = node.root.join("certificates");
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            ca: Some(certs.join("root-ca.crt")),
            cert: Some(certs.join("node.crt")),
            key: Some(certs.join("node.pem")),
        };
        FakeNode { node_id: node_id.into(), files, _dir: dir }
    }

    /// An mTLS channel to the manager at `addr` presenting this certificate.
    pub async fn channel(&self, addr: &str) -> Channel {
        shoal::client::connect(&Host::Tcp(addr.into()), &self.files).await.unwrap()
    }
}
