//! Owns the Raft gRPC service (inbound messages, membership joins, reachability pings) and the
//! client side of joining: a new manager asks the leader to add it, the leader checks it can
//! reach the joiner back, then commits the membership change.

use std::time::Duration;

use raft::prelude::{ConfChange, ConfChangeType};
use shoal_proto::raft_client::RaftClient;
use shoal_proto::raft_server::Raft;
use shoal_proto::{
    Member, Node, NodeRole, RaftAck, RaftChunk, RaftJoinRequest, RaftJoinResponse, RaftPingRequest,
    RaftPingResponse,
};
use tonic::{Request, Response, Status, Streaming};

use crate::authz::caller;
use crate::raft::transport::Reassembler;
use crate::{Manager, ManagerError};

const JOIN_ATTEMPTS: usize = 20;

/// The Raft gRPC service of one manager.
#[derive(Clone, Debug)]
pub struct RaftApi {
    manager: Manager,
}

impl Manager {
    /// The Raft service of this manager.
    pub fn raft_api(&self) -> RaftApi {
        RaftApi { manager: self.clone() }
    }

    /// Asks the cluster (through the manager at `remote`) to add this member, then waits until
    /// it has caught up. `addr` is where other managers reach this one.
    pub async fn join_raft(&self, remote: &str, addr: &str) -> Result<(), ManagerError> {
        let shared = &self.shared;
        let req = RaftJoinRequest {
            node_id: shared.local_node_id.clone(),
            addr: addr.into(),
            raft_id: shared.raft.status().id,
        };
        let mut target = remote.to_string();
        let mut last = String::new();
        for _ in 0..JOIN_ATTEMPTS {
            match call_join(&target, shared.tls.clone(), req.clone()).await {
                Ok(resp) => {
                    shared.peers.learn(&resp.members);
                    tracing::info!(
                        raft_id = resp.raft_id,
                        members = resp.members.len(),
                        "joined the managers' raft group"
                    );
                    return self.wait_caught_up().await;
                }
                Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                    last = status.message().to_string();
                    if let Some(leader) = last.strip_prefix("not the leader; leader at ") {
                        target = leader.to_string();
                    }
                }
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    last = status.message().to_string()
                }
                Err(status) => return Err(ManagerError::Join(status.message().to_string())),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(ManagerError::Join(format!("could not join the managers' raft group: {last}")))
    }
}

async fn call_join(
    addr: &str,
    tls: std::sync::Arc<rustls::ClientConfig>,
    req: RaftJoinRequest,
) -> Result<RaftJoinResponse, Status> {
    let channel = shoal_proto::dial::connect(addr, tls).await.map_err(Status::unavailable)?;
    Ok(RaftClient::new(channel).join(req).await?.into_inner())
}

#[tonic::async_trait]
impl Raft for RaftApi {
    async fn send(&self, req: Request<Streaming<RaftChunk>>) -> Result<Response<RaftAck>, Status> {
        let sender = caller(&req).node()?.clone();
        let shared = &self.manager.shared;
        let local = shared.raft.status().id;
        let mut stream = req.into_inner();
        tracing::debug!(from = %sender.node_id, "raft stream opened");
        let mut reassembler = Reassembler::default();
        let mut closing = shared.closing.subscribe();
        loop {
            let chunk = tokio::select! {
                chunk = stream.message() => chunk?,
                _ = closing.wait_for(|c| *c) => None,
            };
            let Some(chunk) = chunk else { break };
            let Some(msg) = reassembler.push(chunk).map_err(Status::invalid_argument)? else {
                continue;
            };
            if msg.to != local {
                return Err(Status::invalid_argument(format!(
                    "message for member {:x}, this is {local:x}",
                    msg.to
                )));
            }
            // Once this member holds the membership, a message must come from the manager whose
            // certificate the connection presented; before that (catching up) any manager of this
            // cluster may speak for the leader.
            match shared.store.get::<Member>(&format!("{:016x}", msg.from)).map_err(Status::from)? {
                Some(m) if m.node_id != sender.node_id => {
                    return Err(Status::permission_denied(format!(
                        "node {} sent a raft message as member {:x}, which is node {}",
                        sender.node_id, msg.from, m.node_id
                    )));
                }
                None if shared.cluster().is_ok() => {
                    return Err(Status::permission_denied(format!(
                        "member {:x} is not in this cluster",
                        msg.from
                    )));
                }
                _ => shared.raft.step(msg),
            }
        }
        Ok(Response::new(RaftAck {}))
    }

    async fn join(
        &self,
        req: Request<RaftJoinRequest>,
    ) -> Result<Response<RaftJoinResponse>, Status> {
        caller(&req).node()?;
        let req = req.into_inner();
        let shared = &self.manager.shared;
        if !shared.raft.status().is_leader {
            return match shared.leader_addr() {
                Some(leader) => {
                    Err(Status::failed_precondition(format!("not the leader; leader at {leader}")))
                }
                None => Err(Status::unavailable("the managers have no leader right now; retry")),
            };
        }
        shared.store.barrier().await?;
        let node = shared.store.get::<Node>(&req.node_id)?.ok_or_else(|| {
            Status::not_found(format!("node {} is not part of this cluster", req.node_id))
        })?;
        if node.role() != NodeRole::Manager {
            return Err(Status::permission_denied(format!("node {} is not a manager", node.id)));
        }
        let members = shared.members()?;
        if let Some(existing) = members.iter().find(|m| m.node_id == req.node_id) {
            return self.readdress(existing.clone(), &req.addr).await;
        }
        if req.raft_id == 0 || members.iter().any(|m| m.raft_id == req.raft_id) {
            return Err(Status::invalid_argument(
                "the raft ID is zero or already taken; retry with another",
            ));
        }
        ping(&req.addr, shared.tls.clone(), &req.node_id).await?;
        let member = Member {
            raft_id: req.raft_id,
            node_id: req.node_id.clone(),
            addr: req.addr.clone(),
            ..Default::default()
        };
        let mut cc = ConfChange::default();
        cc.set_change_type(ConfChangeType::AddNode);
        cc.node_id = req.raft_id;
        cc.context = prost::Message::encode_to_vec(&member).into();
        shared.raft.change_member(cc).await?;
        Ok(Response::new(RaftJoinResponse { raft_id: req.raft_id, members: shared.members()? }))
    }

    async fn ping(
        &self,
        _req: Request<RaftPingRequest>,
    ) -> Result<Response<RaftPingResponse>, Status> {
        Ok(Response::new(RaftPingResponse { node_id: self.manager.shared.local_node_id.clone() }))
    }
}

impl RaftApi {
    /// A member that comes back at a new address keeps its identity; only its address changes.
    async fn readdress(
        &self,
        mut member: Member,
        addr: &str,
    ) -> Result<Response<RaftJoinResponse>, Status> {
        let shared = &self.manager.shared;
        if member.addr != addr {
            ping(addr, shared.tls.clone(), &member.node_id).await?;
            member.addr = addr.to_string();
            shared.store.update(|tx| tx.update(member.clone())).await?;
        }
        Ok(Response::new(RaftJoinResponse { raft_id: member.raft_id, members: shared.members()? }))
    }
}

/// Checks that the manager `node_id` answers at `addr` with its own certificate.
async fn ping(
    addr: &str,
    tls: std::sync::Arc<rustls::ClientConfig>,
    node_id: &str,
) -> Result<(), Status> {
    let unreachable = |e: String| {
        Status::failed_precondition(format!("cannot reach the joining manager at {addr}: {e}"))
    };
    let channel =
        tokio::time::timeout(Duration::from_secs(5), shoal_proto::dial::connect(addr, tls))
            .await
            .map_err(|_| unreachable("timed out".into()))?
            .map_err(unreachable)?;
    let answer = RaftClient::new(channel)
        .ping(RaftPingRequest {})
        .await
        .map_err(|s| unreachable(s.message().into()))?;
    if answer.into_inner().node_id != node_id {
        return Err(unreachable("a different node answered there".into()));
    }
    Ok(())
}
