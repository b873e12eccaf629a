//! Item 2: a demoted manager keeps no manager rights. Its saved certificate (OU manager, valid
//! for 90 days) is refused manager calls at once, and the other nodes refuse a server that
//! presents it as a manager.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shoal::cli::client::{self, Host, TlsFiles};
use shoal_agent::NodeFiles;
use shoal_proto::control_client::ControlClient;
use shoal_proto::{
    CreateServiceRequest, GetJoinTokenRequest, ListNodesRequest, NodeRole, NodeState,
    UpdateNodeRoleRequest,
};
use tokio_rustls::TlsAcceptor;

use shoal_testkit::cluster::TestNode;
use shoal_testkit::poll::eventually;

const BEAT: Duration = Duration::from_millis(300);

async fn token(node: &TestNode, role: NodeRole) -> String {
    let req = GetJoinTokenRequest { role: role as i32 };
    node.control().await.get_join_token(req).await.unwrap().into_inner().token
}

/// Copies a node's certificates directory aside, as an attacker holding the node would.
fn save_certificates(node: &TestNode, to: &Path) -> PathBuf {
    let (from, saved) = (node.root.join("certificates"), to.join("certificates"));
    std::fs::create_dir_all(&saved).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), saved.join(entry.file_name())).unwrap();
    }
    saved
}

/// A control client over mTLS presenting the saved certificate.
async fn control_with(saved: &Path, addr: &str) -> ControlClient<tonic::transport::Channel> {
    let files = TlsFiles {
        ca: Some(saved.join("root-ca.crt")),
        cert: Some(saved.join("node.crt")),
        key: Some(saved.join("node.pem")),
    };
    ControlClient::new(client::connect(&Host::Tcp(addr.into()), &files).await.unwrap())
}

async fn three_node_cluster() -> (TestNode, TestNode, TestNode, String) {
    let m1 = TestNode::start("m1").await;
    let addr = m1.init(BEAT, None).await;
    let (m2, w) = (TestNode::start("m2").await, TestNode::start("w").await);
    m2.join(&token(&m1, NodeRole::Manager).await, &addr).await.unwrap();
    w.join(&token(&m1, NodeRole::Worker).await, &addr).await.unwrap();
    eventually("three nodes ready", Duration::from_secs(20), || async {
        let ready = m1.nodes().await.iter().filter(|n| n.state() == NodeState::Ready).count();
        (ready == 3).then_some(()).ok_or(format!("{ready} ready"))
    })
    .await;
    (m1, m2, w, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_demoted_managers_saved_certificate_gets_no_manager_rights() {
    let (m1, m2, _w, addr) = three_node_cluster().await;
    let attacker = tempfile::tempdir().unwrap();
    let saved = save_certificates(&m2, attacker.path());
    let mut stolen = control_with(&saved, &addr).await;
    stolen.list_nodes(ListNodesRequest {}).await.expect("a manager's certificate lists nodes");

    let m2_id = m2.id().await;
    let demote = UpdateNodeRoleRequest { reference: m2_id.clone(), role: NodeRole::Worker as i32 };
    m1.control().await.update_node_role(demote).await.unwrap();

    let denied = |r: Result<(), tonic::Status>, what: &str| {
        let s = r.expect_err(&format!("{what} with a demoted manager's certificate"));
        assert_eq!(s.code(), tonic::Code::PermissionDenied, "{what}: {s:?}");
    };
    let mut stolen = control_with(&saved, &addr).await;
    denied(stolen.list_nodes(ListNodesRequest {}).await.map(drop), "list nodes");
    let manager_token = GetJoinTokenRequest { role: NodeRole::Manager as i32 };
    denied(stolen.get_join_token(manager_token).await.map(drop), "read the manager token");
    denied(stolen.create_service(CreateServiceRequest::default()).await.map(drop), "create");
    let promote = UpdateNodeRoleRequest { reference: m2_id, role: NodeRole::Manager as i32 };
    denied(stolen.update_node_role(promote).await.map(drop), "promote itself back");

    // The demoted node itself renews into its new role with that certificate, and stays Ready.
    eventually("the demoted node holds a worker certificate", Duration::from_secs(20), || async {
        let role = m2.daemon.info().await.identity.map(|i| i.role);
        (role == Some(shoal_pki::Role::Worker)).then_some(()).ok_or(format!("{role:?}"))
    })
    .await;
    let mut stolen = control_with(&saved, &addr).await;
    denied(stolen.list_nodes(ListNodesRequest {}).await.map(drop), "list nodes later");
}

/// A TLS server presenting `saved` (a node's key and certificate), counting finished handshakes.
async fn impostor(saved: &Path) -> (String, Arc<AtomicUsize>) {
    let files = NodeFiles::new(saved.parent().unwrap());
    let (key, chain, root) = files.load_identity().unwrap();
    let cert = shoal_pki::ReloadableCert::new(&chain, &key).unwrap();
    let config =
        shoal_pki::tls::server_config(shoal_pki::TrustRoots::new(&root).unwrap(), cert, None)
            .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, count) = (acceptor.clone(), count.clone());
            tokio::spawn(async move {
                if acceptor.accept(tcp).await.is_ok() {
                    count.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_refuse_a_demoted_manager_posing_as_a_manager() {
    let (m1, m2, w, _addr) = three_node_cluster().await;
    let attacker = tempfile::tempdir().unwrap();
    let saved = save_certificates(&m2, attacker.path());
    let (m1_id, m2_id) = (m1.id().await, m2.id().await);
    let demote = UpdateNodeRoleRequest { reference: m2_id.clone(), role: NodeRole::Worker as i32 };
    m1.control().await.update_node_role(demote).await.unwrap();
    let files = NodeFiles::new(&w.root);
    eventually("the worker saves that m1 alone is a manager", Duration::from_secs(20), || async {
        let ids = files.load_state().unwrap().unwrap().manager_ids;
        (ids == vec![m1_id.clone()]).then_some(()).ok_or(format!("{ids:?}"))
    })
    .await;

    // The worker restarts knowing only the impostor's address (as if m2's address were the
    // only one it had saved): the impostor holds m2's old manager certificate.
    let (imp_addr, handshakes) = impostor(&saved).await;
    let wid = w.id().await;
    let (root, socket, _dir) = w.kill().await;
    let mut state = files.load_state().unwrap().unwrap();
    state.manager_addrs = vec![imp_addr.clone()];
    files.save_state(&state).unwrap();
    let w = TestNode::start_at("w", root, socket).await;
    eventually("the worker refuses the impostor", Duration::from_secs(20), || async {
        let status = w.daemon.info().await.agent;
        let error = status.error.unwrap_or_default();
        (error.contains("no longer a manager") && !status.connected)
            .then_some(())
            .ok_or(format!("connected {}, error {error:?}", status.connected))
    })
    .await;
    assert_eq!(handshakes.load(Ordering::SeqCst), 0, "no handshake with the impostor finished");
    assert_eq!(w.id().await, wid);
}
