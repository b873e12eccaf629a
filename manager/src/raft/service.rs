//! Owns the Raft gRPC service (inbound messages, membership joins, reachability pings) and the
//! client side of joining: a new manager asks the leader to add it, the leader checks it can
//! reach the joiner back, then commits the membership change. A member whose address changed
//! asks the same way and keeps its identity; only its address changes.

use std::collections::{HashSet, VecDeque};
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
use crate::raft::inbound;
use crate::raft::transport::Reassembler;
use crate::{Manager, ManagerError};
use shoal_proto::dial::DialError;

const JOIN_ATTEMPTS: usize = 20;
/// How a manager that is not the leader points to it (the leader's address follows).
const NOT_LEADER: &str = "not the leader; leader at ";
/// What a manager that knows no leader answers.
const NO_LEADER: &str = "the managers have no leader right now; retry";

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
                    if let Some(leader) = last.strip_prefix(NOT_LEADER) {
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

    /// Sets how many bytes of unfinished Raft messages one peer may hold on this manager, across
    /// all its streams (default [`inbound::PEER_LIMIT`]); a stream that would pass it is cut.
    pub fn limit_raft_inbound(&self, bytes: usize) {
        self.shared.raft_inbound.set_limit(bytes);
    }

    /// This manager's address in the member table, as far as this manager knows.
    pub fn member_addr(&self) -> Option<String> {
        let me = &self.shared.local_node_id;
        self.shared.members().ok()?.into_iter().find(|m| &m.node_id == me).map(|m| m.addr)
    }

    /// Tells the managers that this one is now reached at `addr`: asks the leader (found
    /// through the other members this manager knows, then `via`, then itself) to dial `addr`
    /// back and commit it as this member's address. Returns once the leader has committed it;
    /// the error says why not (the leader cannot reach `addr`, no leader, nobody reachable).
    pub async fn announce_addr(&self, addr: &str, via: &[String]) -> Result<(), ManagerError> {
        let shared = &self.shared;
        let req = RaftJoinRequest {
            node_id: shared.local_node_id.clone(),
            addr: addr.into(),
            raft_id: shared.raft.status().id,
        };
        let others = shared.members()?.into_iter().filter(|m| m.node_id != req.node_id);
        let mut queue: VecDeque<String> = others.map(|m| m.addr).collect();
        let listed = self.member_addr();
        queue.extend(via.iter().filter(|v| Some(*v) != listed.as_ref()).cloned());
        queue.push_back(addr.to_string());
        let (mut asked, mut why) = (HashSet::new(), Unanswered::default());
        while let Some(target) = queue.pop_front() {
            if !asked.insert(target.clone()) {
                continue;
            }
            match ask(&target, shared.tls.clone(), req.clone()).await {
                Answer::Accepted => return Ok(()),
                Answer::Leader(leader) => queue.push_front(leader),
                Answer::NoLeader => why.no_leader = true,
                Answer::Refused(reason) => return Err(ManagerError::Join(reason)),
                Answer::Unreachable(e) => why.unreachable.push(brief(&target, &e)),
                Answer::Failed(e) => why.failed = Some(format!("{target}: {e}")),
            }
        }
        Err(ManagerError::Join(why.explain()))
    }
}

/// What one manager answered to a request to move this member.
enum Answer {
    Accepted,
    /// Not the leader; the leader is at this address.
    Leader(String),
    NoLeader,
    /// A final no (the leader cannot reach the new address, or this node may not move).
    Refused(String),
    Unreachable(DialError),
    /// Anything else (a commit that timed out, say).
    Failed(String),
}

async fn ask(
    target: &str,
    tls: std::sync::Arc<rustls::ClientConfig>,
    req: RaftJoinRequest,
) -> Answer {
    let channel = match shoal_proto::dial::connect(target, tls).await {
        Ok(channel) => channel,
        Err(e) => return Answer::Unreachable(e),
    };
    let Err(status) = RaftClient::new(channel).join(req).await else { return Answer::Accepted };
    let message = status.message().to_string();
    match status.code() {
        tonic::Code::FailedPrecondition => match message.strip_prefix(NOT_LEADER) {
            Some(leader) => Answer::Leader(leader.to_string()),
            None => Answer::Refused(message),
        },
        tonic::Code::Unavailable if message == NO_LEADER => Answer::NoLeader,
        tonic::Code::PermissionDenied | tonic::Code::NotFound | tonic::Code::InvalidArgument => {
            Answer::Refused(message)
        }
        _ => Answer::Failed(message),
    }
}

/// `addr (cause)` from a dialling error, without the advice (which would repeat per address).
fn brief(addr: &str, error: &DialError) -> String {
    format!("{addr} ({})", error.detail())
}

/// Why no manager took a new address.
#[derive(Debug, Default)]
struct Unanswered {
    no_leader: bool,
    unreachable: Vec<String>,
    failed: Option<String>,
}

impl Unanswered {
    fn explain(&self) -> String {
        let unreachable = self.unreachable.join(", ");
        match (&self.failed, self.no_leader) {
            (Some(failed), _) => failed.clone(),
            (None, true) if unreachable.is_empty() => NO_QUORUM.to_string(),
            (None, true) => format!("{NO_QUORUM} (not reachable: {unreachable})"),
            (None, false) if unreachable.is_empty() => "no other manager is known".to_string(),
            (None, false) => format!("no manager could be reached: {unreachable}"),
        }
    }
}

const NO_QUORUM: &str = "the managers have no leader: too few of them are up or reach each \
                         other, and a quorum of them must accept a manager's new address";

async fn call_join(
    addr: &str,
    tls: std::sync::Arc<rustls::ClientConfig>,
    req: RaftJoinRequest,
) -> Result<RaftJoinResponse, Status> {
    let channel = shoal_proto::dial::connect(addr, tls).await?;
    Ok(RaftClient::new(channel).join(req).await?.into_inner())
}

#[tonic::async_trait]
impl Raft for RaftApi {
    async fn send(&self, req: Request<Streaming<RaftChunk>>) -> Result<Response<RaftAck>, Status> {
        let sender = caller(&req).node()?.clone();
        let shared = &self.manager.shared;
        // Who speaks is settled before a byte of what they say is read.
        inbound::check_member(shared, &sender.node_id)?;
        let local = shared.raft.status().id;
        let mut stream = req.into_inner();
        tracing::debug!(from = %sender.node_id, "raft stream opened");
        let mut reassembler = Reassembler::default();
        let mut held = shared.raft_inbound.account(&sender.node_id);
        let mut closing = shared.closing.subscribe();
        loop {
            let chunk = tokio::select! {
                chunk = stream.message() => chunk?,
                _ = closing.wait_for(|c| *c) => None,
            };
            let Some(chunk) = chunk else { break };
            held.take(chunk.data.len())?;
            let Some(msg) =
                reassembler.push(chunk).map_err(|e| Status::invalid_argument(e.to_string()))?
            else {
                continue;
            };
            held.release();
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
        let sender = caller(&req).node()?.node_id.clone();
        let req = req.into_inner();
        if sender != req.node_id {
            return Err(Status::permission_denied(format!(
                "node {sender} asked to add or move node {}; a manager joins or moves only itself",
                req.node_id
            )));
        }
        let shared = &self.manager.shared;
        if !shared.raft.status().is_leader {
            return match shared.leader_addr() {
                Some(leader) => Err(Status::failed_precondition(format!("{NOT_LEADER}{leader}"))),
                None => Err(Status::unavailable(NO_LEADER)),
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
        ping(&req.addr, shared.tls.clone(), &req.node_id).await.map_err(|e| {
            Status::failed_precondition(format!(
                "cannot reach the joining manager at {}: {e}",
                req.addr
            ))
        })?;
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
            ping(addr, shared.tls.clone(), &member.node_id).await.map_err(|e| {
                Status::failed_precondition(format!(
                    "the leader cannot reach this manager at {addr}: {e}; check the address and \
                     that the managers can reach that port"
                ))
            })?;
            let old = std::mem::replace(&mut member.addr, addr.to_string());
            shared.store.update(|tx| tx.update(member.clone())).await?;
            tracing::info!(node = %member.node_id, %old, new = %addr, "manager moved to a new address");
        }
        Ok(Response::new(RaftJoinResponse { raft_id: member.raft_id, members: shared.members()? }))
    }
}

/// Checks that the manager `node_id` answers at `addr` with its own certificate; the error says
/// what went wrong.
async fn ping(
    addr: &str,
    tls: std::sync::Arc<rustls::ClientConfig>,
    node_id: &str,
) -> Result<(), PingError> {
    let channel =
        tokio::time::timeout(Duration::from_secs(5), shoal_proto::dial::connect(addr, tls))
            .await
            .map_err(|_| PingError::Timeout)??;
    let answer = RaftClient::new(channel).ping(RaftPingRequest {}).await?;
    if answer.into_inner().node_id != node_id {
        return Err(PingError::OtherNode);
    }
    Ok(())
}

/// Why a manager did not answer a ping at an address; the address is the caller's to say.
#[derive(Debug, thiserror::Error)]
enum PingError {
    /// Nothing within five seconds.
    #[error("no answer within 5s")]
    Timeout,
    /// The address could not be dialed.
    #[error("{}", .0.reason())]
    Dial(#[from] DialError),
    /// A manager answered with an error.
    #[error("{}", .0.message())]
    Refused(#[from] Status),
    /// Another node holds the address.
    #[error("a different node answered there")]
    OtherNode,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn why_no_manager_took_a_new_address_reads_as_one_line() {
        let refused = DialError::Refused {
            addr: "10.0.0.1:4242".into(),
            detail: "Connection refused (os error 111)".into(),
        };
        let mut why = Unanswered {
            no_leader: true,
            unreachable: vec![brief("10.0.0.1:4242", &refused)],
            failed: None,
        };
        let gone = "10.0.0.1:4242 (Connection refused (os error 111))";
        assert_eq!(why.explain(), format!("{NO_QUORUM} (not reachable: {gone})"));
        why.no_leader = false;
        assert_eq!(why.explain(), format!("no manager could be reached: {gone}"));
        why.failed = Some("10.0.0.2:4242: the write was not confirmed in time".into());
        assert_eq!(why.explain(), "10.0.0.2:4242: the write was not confirmed in time");
        assert_eq!(Unanswered::default().explain(), "no other manager is known");
    }
}
