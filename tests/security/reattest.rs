//! Re-attestation (issue #20) is served without a client certificate, so anyone can call it.
//! An outsider who holds a node's certificate (public), or a certificate of another CA, or a
//! stale one, or whose node was removed, gets nothing from it, and leaves nothing behind.

use std::time::{Duration, SystemTime};

use shoal_pki::{NodeKey, Role, RootCa};
use shoal_proto::node_ca_client::NodeCaClient;
use shoal_proto::*;

use shoal_testkit::cluster::{node, worker_token, TestNode};

const BEAT: Duration = Duration::from_millis(200);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// Asks the manager at `addr` (verified against `root`) to re-attest, with no client certificate.
async fn ask(
    addr: &str,
    root: &str,
    chain: &str,
    csr_der: Vec<u8>,
    proof: Vec<u8>,
) -> tonic::Status {
    let config = std::sync::Arc::new(shoal_pki::tls::client_config(root, None).unwrap());
    let channel = shoal_proto::dial::connect(addr, config).await.unwrap();
    let req =
        ReattestNodeCertificateRequest { old_cert_chain_pem: chain.to_string(), csr_der, proof };
    match NodeCaClient::new(channel).reattest_node_certificate(req).await {
        Ok(_) => panic!("an outsider's re-attestation was served"),
        Err(status) => status,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outsider_gets_nothing_from_reattestation() {
    let m = TestNode::start("m").await;
    let addr = m.init(BEAT, None).await;
    let w = TestNode::start("w").await;
    let id = w.join(&worker_token(&m).await, &addr).await.unwrap();
    let (key, chain, root) = w.daemon.files().load_identity().unwrap();
    let manager = m.daemon.info().await.manager.unwrap();
    let cluster_id = manager.cluster_id().to_string();
    let stored = manager.store().get::<Cluster>(&cluster_id).unwrap().unwrap().root_ca.unwrap();
    let ca = RootCa::from_pem(&stored.cert_pem, &stored.key_pem).unwrap();
    let expired_for = |ca: &RootCa, key: &NodeKey| {
        let ten_days_ago = SystemTime::now() - 10 * DAY;
        ca.sign_node_csr(&key.csr_der().unwrap(), &id, Role::Worker, &cluster_id, DAY, ten_days_ago)
            .unwrap()
            .cert_pem
    };
    let new_csr = NodeKey::generate().unwrap().csr_der().unwrap();
    let proof = |key: &NodeKey| key.sign_reattest(&cluster_id, &new_csr).unwrap();

    // A current certificate renews with itself; re-attestation is not for it.
    let s = ask(&addr, &root, &chain, new_csr.clone(), proof(&key)).await;
    assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s}");
    assert!(s.message().contains("needs no re-attestation"), "{s}");

    // The node's expired certificate (its key, this CA), but the proof made with another key:
    // holding the certificate is not enough.
    let expired = expired_for(&ca, &key);
    let thief = NodeKey::generate().unwrap();
    let s = ask(&addr, &root, &expired, new_csr.clone(), proof(&thief)).await;
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s}");
    assert!(s.message().contains("not made with the old certificate's key"), "{s}");

    // A certificate for this node ID and cluster from another CA.
    let foreign = RootCa::generate().unwrap();
    let s = ask(&addr, &root, &expired_for(&foreign, &thief), new_csr.clone(), proof(&thief)).await;
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s}");
    assert!(s.message().contains("not issued by a root this cluster trusts"), "{s}");

    // The right key and CA, but not the node's latest certificate (an old copy from a backup).
    let s = ask(&addr, &root, &expired, new_csr.clone(), proof(&key)).await;
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s}");
    assert!(s.message().contains("latest"), "{s}");

    // Garbage.
    let s = ask(
        &addr,
        &root,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        new_csr.clone(),
        proof(&key),
    )
    .await;
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s}");

    // None of it left a request for an operator to approve by mistake.
    let stored = node(&m, &id).await;
    assert_eq!(stored.reattest_requested_ms, 0, "an attack left a pending request");

    // A removed node is out, whatever it proves.
    let mut control = m.control().await;
    control.remove_node(RemoveNodeRequest { reference: id.clone(), force: true }).await.unwrap();
    let s = ask(&addr, &root, &expired, new_csr.clone(), proof(&key)).await;
    assert!(
        matches!(s.code(), tonic::Code::PermissionDenied | tonic::Code::NotFound)
            && (s.message().contains("revoked") || s.message().contains("removed")),
        "{s}"
    );
}
