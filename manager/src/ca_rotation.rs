//! Owns root CA rotation (`swarm ca --rotate`): a new root cross-signed by the old one, every
//! node moved to a certificate from the new root while both are trusted, and the old root and
//! join tokens retired only when every node uses the new one (or, with `--force`, every node
//! that is up).
//!
//! The steps, all in the replicated cluster object so any leader carries them on:
//! 1. start: `Cluster.root_rotation` holds the new root, its key and its cross-signed copy.
//!    From then on the signer is the new root (chains end with the cross-signed copy), and
//!    every node is told to trust both roots.
//! 2. converge: the leader marks nodes still using an old-root certificate for renewal, a batch
//!    at a time; a node counts as done when the certificate it reports using came from the
//!    new root.
//! 3. finish: in one transaction the new root becomes `root_ca`, the rotation is cleared and
//!    both join tokens get new secrets (their digest changes with the root anyway); nodes are
//!    told to trust the new root alone.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use shoal_pki::ca::bundle_digests;
use shoal_pki::RootCa;
use shoal_proto::{Cluster, Node, NodeState, RootCaInfo, RootRotation, RotateRootCaRequest};
use tonic::Status;

use crate::manager::{now_ms, Manager, Shared};
use crate::tokens;

/// Nodes told to renew per round (Swarm's batch size).
pub const BATCH: usize = 30;
/// How often the leader looks at a rotation's progress.
const ROUND: Duration = Duration::from_millis(500);

/// The roots every node should trust now: the pinned root, and the new one during a rotation.
pub(crate) fn trusted_bundle(cluster: &Cluster) -> String {
    let mut bundle = cluster.root_ca.as_ref().map(|r| r.cert_pem.clone()).unwrap_or_default();
    if let Some(rotation) = &cluster.root_rotation {
        bundle.push_str(&rotation.cert_pem);
    }
    bundle
}

/// The digest of the root certificates come from now: the new one during a rotation.
fn signing_digest(cluster: &Cluster) -> Option<String> {
    let pem = match &cluster.root_rotation {
        Some(r) => &r.cert_pem,
        None => &cluster.root_ca.as_ref()?.cert_pem,
    };
    bundle_digests(pem).ok()?.into_iter().next()
}

/// Whether `node` uses a certificate from the root with digest `digest`: the certificate the
/// managers last issued it came from that root, and the node says it uses that certificate.
fn uses_root(node: &Node, digest: &str) -> bool {
    node.certificate
        .as_ref()
        .is_some_and(|c| c.root_digest == digest && c.serial_hex == node.tls_serial)
}

/// Nodes a rotation still waits for (with `force`, only those that are Ready: down ones, and
/// ones that joined but never opened a session, are not waited for).
fn waiting_for<'a>(nodes: &'a [Node], digest: &str, force: bool) -> Vec<&'a Node> {
    nodes
        .iter()
        .filter(|n| !uses_root(n, digest))
        .filter(|n| !(force && n.state() != NodeState::Ready))
        .collect()
}

/// Each node's certificate state as `node ls` shows it, by node ID (the rotation's root is
/// read once for all of them).
pub(crate) fn tls_status<'a>(
    cluster: &Cluster,
    nodes: impl IntoIterator<Item = &'a Node>,
) -> std::collections::HashMap<String, String> {
    let rotating_to = cluster.root_rotation.as_ref().and(signing_digest(cluster));
    let status = |node: &Node| match (node.reattest_requested_ms, &rotating_to) {
        (0, Some(digest)) if !uses_root(node, digest) => "Rotating",
        (0, _) => "Ready",
        _ if node.reattest_approved_ms != 0 => "Approved",
        _ => "Approval",
    };
    nodes.into_iter().map(|n| (n.id.clone(), status(n).to_string())).collect()
}

/// The nodes to tell to renew next: up to [`BATCH`] at a time are renewing (told and not done,
/// or issued a new-root certificate they have not reported using yet, and up); nodes that are
/// down are told when they are back, and one already issued a certificate of the root with
/// digest `digest` is not told again (it reports using it with its next heartbeat).
fn next_batch(waiting: &[&Node], digest: &str) -> Vec<String> {
    let up = |n: &&&Node| n.state() != NodeState::Down;
    let issued = |n: &&&Node| n.certificate.as_ref().is_some_and(|c| c.root_digest == digest);
    let renewing = waiting.iter().filter(up).filter(|n| n.rotate_certificate || issued(n)).count();
    waiting
        .iter()
        .filter(up)
        .filter(|n| !n.rotate_certificate && !issued(n))
        .take(BATCH.saturating_sub(renewing))
        .map(|n| n.id.clone())
        .collect()
}

impl Shared {
    /// The root join tokens pin and joiners fetch: the old one until a rotation ends.
    pub(crate) fn pinned_root(&self) -> Result<String, crate::store::StoreError> {
        let cluster = self.cluster()?;
        Ok(cluster.root_ca.map(|r| r.cert_pem).unwrap_or_default())
    }

    /// Trusts the roots the cluster says, from the next handshake on.
    pub(crate) fn refresh_roots(&self) {
        let Ok(cluster) = self.cluster() else { return };
        let bundle = trusted_bundle(&cluster);
        if bundle.is_empty() {
            return;
        }
        match self.roots.replace(&bundle) {
            Ok(true) => tracing::info!(
                roots = bundle_digests(&bundle).map(|d| d.len()).unwrap_or(0),
                "trusted roots changed"
            ),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "the cluster's root bundle is unusable"),
        }
    }

    /// `swarm ca`: the root in force and a rotation's progress.
    pub(crate) fn root_ca_info(&self) -> Result<RootCaInfo, Status> {
        let cluster = self.cluster()?;
        let root = cluster.root_ca.as_ref().map(|r| r.cert_pem.clone()).unwrap_or_default();
        let mut info = RootCaInfo {
            root_ca_digest: root_digest_label(&root),
            root_ca_pem: root,
            ..Default::default()
        };
        let Some(rotation) = &cluster.root_rotation else { return Ok(info) };
        let nodes = self.store.list::<Node>()?;
        let new_digest = signing_digest(&cluster).unwrap_or_default();
        let waiting = waiting_for(&nodes, &new_digest, false);
        info.rotating = true;
        info.new_root_pem = rotation.cert_pem.clone();
        info.nodes_total = nodes.len() as u32;
        info.nodes_done = (nodes.len() - waiting.len()) as u32;
        info.waiting_for = waiting
            .iter()
            .map(|n| format!("{} ({}, {})", n.id, n.hostname, n.state().word()))
            .collect();
        info.force = rotation.force;
        info.started_ms = rotation.started_ms;
        Ok(info)
    }

    /// `swarm ca --rotate [--ca-cert --ca-key] [--force]`, or `--force` alone for a rotation in
    /// progress.
    pub(crate) async fn rotate_root(&self, req: RotateRootCaRequest) -> Result<(), Status> {
        if !req.rotate {
            if !req.force {
                return Err(Status::invalid_argument("nothing to do: give --rotate or --force"));
            }
            return self
                .store
                .update(|tx| {
                    let mut cluster = tx
                        .get::<Cluster>(&self.cluster_id)?
                        .ok_or_else(|| Status::unavailable("the cluster object is missing"))?;
                    let rotation = cluster.root_rotation.as_mut().ok_or_else(|| {
                        Status::failed_precondition(
                            "no root rotation is in progress; start one with 'shoal swarm ca --rotate'",
                        )
                    })?;
                    if !rotation.force {
                        rotation.force = true;
                        tx.update(cluster)?;
                    }
                    Ok::<_, Status>(())
                })
                .await;
        }
        if req.cert_pem.is_empty() != req.key_pem.is_empty() {
            return Err(Status::invalid_argument(
                "--ca-cert and --ca-key go together: Shoal signs with the root it is given",
            ));
        }
        let cluster = self.cluster()?;
        if cluster.root_rotation.is_some() {
            let info = self.root_ca_info()?;
            return Err(Status::failed_precondition(format!(
                "a root rotation is already in progress ({} of {} nodes done); wait for it, or \
                 stop waiting for nodes that are down with 'shoal swarm ca --force'",
                info.nodes_done, info.nodes_total
            )));
        }
        let current = self.signer(&cluster)?;
        let current_root = cluster.root_ca.clone();
        let new = if req.cert_pem.is_empty() {
            RootCa::generate_for_rotation()
        } else {
            RootCa::from_operator_pem(&req.cert_pem, &req.key_pem, &current, SystemTime::now())
        }
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let cross = current.cross_sign(&new).map_err(|e| Status::internal(e.to_string()))?;
        let rotation = RootRotation {
            cert_pem: new.cert_pem().to_string(),
            key_pem: new.key_pem(),
            cross_signed_pem: cross,
            started_ms: now_ms(),
            force: req.force,
        };
        self.store
            .update(|tx| {
                let mut cluster = tx
                    .get::<Cluster>(&self.cluster_id)?
                    .ok_or_else(|| Status::unavailable("the cluster object is missing"))?;
                if cluster.root_rotation.is_some() || cluster.root_ca != current_root {
                    return Err(Status::failed_precondition(
                        "a root rotation started or ended meanwhile; see 'shoal swarm ca'",
                    ));
                }
                cluster.root_rotation = Some(rotation.clone());
                tx.update(cluster)?;
                Ok(())
            })
            .await?;
        tracing::info!(new_root = %new.digest_hex(), "root CA rotation started");
        Ok(())
    }

    /// One round of a rotation on the leader: mark a batch of nodes for renewal, or finish.
    async fn rotation_round(&self) -> Result<(), Status> {
        let cluster = self.cluster()?;
        let Some(rotation) = cluster.root_rotation.clone() else { return Ok(()) };
        let digest = signing_digest(&cluster).unwrap_or_default();
        let nodes = self.store.list::<Node>()?;
        let waiting = waiting_for(&nodes, &digest, rotation.force);
        if waiting.is_empty() {
            return self.finish_rotation(&rotation, &nodes, &digest).await;
        }
        let batch = next_batch(&waiting, &digest);
        if batch.is_empty() {
            return Ok(());
        }
        self.store
            .update(|tx| {
                for id in &batch {
                    let Some(mut node) = tx.get::<Node>(id)? else { continue };
                    if !node.rotate_certificate && !uses_root(&node, &digest) {
                        node.rotate_certificate = true;
                        tx.update(node)?;
                    }
                }
                Ok::<_, Status>(())
            })
            .await?;
        tracing::info!(nodes = batch.len(), "root rotation: nodes told to renew");
        Ok(())
    }

    async fn finish_rotation(
        &self,
        rotation: &RootRotation,
        nodes: &[Node],
        digest: &str,
    ) -> Result<(), Status> {
        let left_behind: Vec<String> =
            nodes.iter().filter(|n| !uses_root(n, digest)).map(|n| n.id.clone()).collect();
        self.store
            .update(|tx| {
                let mut cluster = tx
                    .get::<Cluster>(&self.cluster_id)?
                    .ok_or_else(|| Status::unavailable("the cluster object is missing"))?;
                if cluster.root_rotation.as_ref() != Some(rotation) {
                    return Ok(());
                }
                cluster.root_ca = Some(shoal_proto::RootCa {
                    cert_pem: rotation.cert_pem.clone(),
                    key_pem: rotation.key_pem.clone(),
                });
                cluster.root_rotation = None;
                // New secrets, the same expiry and uses: a token that had expired or was used
                // up stays so.
                let now = now_ms();
                let mut join = cluster.join_tokens.clone().unwrap_or_default();
                for role in [shoal_pki::Role::Worker, shoal_pki::Role::Manager] {
                    let slot = tokens::record_mut(&mut join, role);
                    let fresh = tokens::mint(tokens::TokenPolicy::default(), now);
                    match slot {
                        Some(rec) => rec.secret = fresh.secret,
                        None => *slot = Some(fresh),
                    }
                }
                cluster.join_tokens = Some(join);
                tx.update(cluster)?;
                Ok::<_, Status>(())
            })
            .await?;
        if left_behind.is_empty() {
            tracing::info!(root = %digest, "root CA rotation finished: every node uses the new root");
        } else {
            tracing::warn!(root = %digest, nodes = ?left_behind, "root CA rotation finished without nodes that were down; they must join again");
        }
        Ok(())
    }
}

/// How people see a root: `sha256:` and the digest join tokens pin (of the PEM's bytes).
pub(crate) fn root_digest_label(root_pem: &str) -> String {
    let digest = shoal_pki::token::ca_digest(root_pem.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

impl Manager {
    /// On the leader, carries a root rotation on: marks nodes for renewal and finishes it.
    pub(crate) fn spawn_root_rotation(&self) {
        let weak = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(ROUND).await;
                let Some(shared) = weak.upgrade() else { return };
                if !shared.raft.status().is_leader {
                    continue;
                }
                let rotating = shared.cluster().is_ok_and(|c| c.root_rotation.is_some());
                if rotating {
                    if let Err(e) = shared.rotation_round().await {
                        tracing::warn!(error = %e.message(), "root rotation round failed; retrying");
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::NodeCertificate;

    fn node(id: &str, digest: &str, serial: &str, reported: &str, state: NodeState) -> Node {
        let mut n = Node {
            id: id.into(),
            certificate: Some(NodeCertificate {
                root_digest: digest.into(),
                serial_hex: serial.into(),
                ..Default::default()
            }),
            tls_serial: reported.into(),
            ..Default::default()
        };
        n.set_state(state);
        n
    }

    #[test]
    fn a_node_is_done_only_when_it_uses_a_new_root_certificate() {
        let nodes = vec![
            node("done", "new", "01", "01", NodeState::Ready),
            node("issued-not-installed", "new", "02", "01", NodeState::Ready),
            node("old", "old", "03", "03", NodeState::Ready),
            node("down", "old", "04", "04", NodeState::Down),
            node("never-connected", "old", "05", "", NodeState::Unknown),
        ];
        let ids = |v: Vec<&Node>| v.iter().map(|n| n.id.clone()).collect::<Vec<_>>();
        assert_eq!(
            ids(waiting_for(&nodes, "new", false)),
            ["issued-not-installed", "old", "down", "never-connected"]
        );
        // --force waits only for nodes that are Ready.
        assert_eq!(ids(waiting_for(&nodes, "new", true)), ["issued-not-installed", "old"]);
    }

    #[test]
    fn at_most_a_batch_renews_at_once_and_down_nodes_wait() {
        let mut nodes: Vec<Node> = (0..40)
            .map(|i| node(&format!("n{i:02}"), "old", "01", "01", NodeState::Ready))
            .collect();
        let waiting = |nodes: &[Node]| -> Vec<String> {
            let refs: Vec<&Node> = nodes.iter().collect();
            next_batch(&refs, "new")
        };
        let first = waiting(&nodes);
        assert_eq!(first.len(), BATCH);
        assert_eq!(first[0], "n00");
        for n in nodes.iter_mut().take(BATCH) {
            n.rotate_certificate = true;
        }
        assert!(waiting(&nodes).is_empty(), "a full batch is still renewing");
        // Five of the told nodes go down: five more may start; down ones are never told.
        for n in nodes.iter_mut().take(5) {
            n.set_state(NodeState::Down);
        }
        nodes[39].set_state(NodeState::Down);
        assert_eq!(waiting(&nodes), ["n30", "n31", "n32", "n33", "n34"]);
        // A node issued a new-root certificate is not told again while it has not reported
        // using it, and still counts as renewing.
        nodes[30].certificate.as_mut().unwrap().root_digest = "new".into();
        assert_eq!(waiting(&nodes), ["n31", "n32", "n33", "n34"]);
    }

    #[test]
    fn node_ls_shows_who_a_rotation_waits_for_and_who_waits_for_approval() {
        let root = RootCa::generate().unwrap();
        let digest = root.digest_hex();
        let mut cluster = Cluster { root_rotation: None, ..Default::default() };
        let mut asking = node("asking", "old", "01", "01", NodeState::Down);
        asking.reattest_requested_ms = 5;
        let mut approved = asking.clone();
        approved.id = "approved".into();
        approved.reattest_approved_ms = 6;
        let nodes = vec![
            node("moved", &digest, "02", "02", NodeState::Ready),
            node("behind", "old", "03", "03", NodeState::Ready),
            asking,
            approved,
        ];
        let shown = tls_status(&cluster, &nodes);
        assert_eq!((shown["moved"].as_str(), shown["behind"].as_str()), ("Ready", "Ready"));
        cluster.root_rotation =
            Some(RootRotation { cert_pem: root.cert_pem().into(), ..Default::default() });
        let shown = tls_status(&cluster, &nodes);
        assert_eq!(shown["moved"], "Ready");
        assert_eq!(shown["behind"], "Rotating");
        assert_eq!(shown["asking"], "Approval");
        assert_eq!(shown["approved"], "Approved");
    }

    #[test]
    fn the_bundle_holds_both_roots_during_a_rotation() {
        let mut cluster = Cluster {
            root_ca: Some(shoal_proto::RootCa { cert_pem: "OLD\n".into(), key_pem: String::new() }),
            ..Default::default()
        };
        assert_eq!(trusted_bundle(&cluster), "OLD\n");
        cluster.root_rotation =
            Some(RootRotation { cert_pem: "NEW\n".into(), ..Default::default() });
        assert_eq!(trusted_bundle(&cluster), "OLD\nNEW\n");
    }
}
