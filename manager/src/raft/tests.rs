//! Raft member tests over an in-memory network that can cut links, in the style of raft-rs's
//! `Network`: elections, replication, leader loss, and catching up by snapshot.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raft::prelude::{ConfChange, ConfChangeType, ConfState, Message};
use shoal_proto::Node;

use super::crypto::{Key, Sealer};
use super::node::{spawn, RaftConfig, RaftHandle, Transport};
use super::storage::LogStorage;
use crate::store::{open_db, Store};

#[derive(Debug, Default)]
struct Net {
    members: Mutex<HashMap<u64, RaftHandle>>,
    cut: Mutex<HashSet<u64>>,
}

impl Transport for Net {
    fn send(&self, msgs: Vec<Message>) {
        let cut = self.cut.lock().unwrap().clone();
        let members = self.members.lock().unwrap();
        for m in msgs {
            if cut.contains(&m.from) || cut.contains(&m.to) {
                continue;
            }
            if let Some(h) = members.get(&m.to) {
                h.step(m);
            }
        }
    }
}

struct Member {
    handle: RaftHandle,
    store: Arc<Store>,
    _dir: tempfile::TempDir,
}

fn start(
    id: u64,
    voters: &[u64],
    net: &Arc<Net>,
    cfg: impl Fn(RaftConfig) -> RaftConfig,
) -> Member {
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(dir.path()).unwrap();
    let sealer = Arc::new(Sealer::new(&Key::generate().unwrap()));
    let store = Arc::new(Store::open(&db, sealer.clone()).unwrap());
    let mut storage = LogStorage::open(&db, sealer, store.clone()).unwrap();
    if !voters.is_empty() {
        storage.set_conf_state(ConfState::from((voters.to_vec(), vec![]))).unwrap();
    }
    let handle = spawn(cfg(RaftConfig::new(id)), storage, store.clone(), net.clone()).unwrap();
    store.set_proposer(Arc::new(handle.clone()));
    net.members.lock().unwrap().insert(id, handle.clone());
    Member { handle, store, _dir: dir }
}

async fn leader_among(members: &[&Member]) -> u64 {
    for _ in 0..100 {
        let leaders: Vec<u64> = members
            .iter()
            .filter(|m| m.handle.status().is_leader)
            .map(|m| m.handle.status().id)
            .collect();
        if leaders.len() == 1 {
            return leaders[0];
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no single leader emerged");
}

async fn converged(members: &[&Member], count: usize) {
    for _ in 0..100 {
        if members.iter().all(|m| m.store.list::<Node>().unwrap().len() == count) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("members did not converge on {count} nodes");
}

fn node(id: &str) -> Node {
    Node { id: id.into(), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_replicate_and_survive_leader_loss() {
    let net = Arc::new(Net::default());
    let ms: Vec<Member> = (1..=3).map(|id| start(id, &[1, 2, 3], &net, |c| c)).collect();
    let all: Vec<&Member> = ms.iter().collect();
    let leader = leader_among(&all).await;
    // Writes through a follower are forwarded to the leader.
    let follower = ms.iter().find(|m| m.handle.status().id != leader).unwrap();
    for i in 0..20 {
        follower.store.update(|tx| tx.create(node(&format!("n{i}")))).await.unwrap();
    }
    converged(&all, 20).await;

    net.cut.lock().unwrap().insert(leader);
    let rest: Vec<&Member> = ms.iter().filter(|m| m.handle.status().id != leader).collect();
    let started = std::time::Instant::now();
    let new_leader = loop {
        let l = leader_among(&rest).await;
        if l != leader {
            break l;
        }
    };
    let writer = ms.iter().find(|m| m.handle.status().id == new_leader).unwrap();
    writer.store.update(|tx| tx.create(node("after"))).await.unwrap();
    eprintln!(
        "new leader and a committed write {:?} after cutting the old leader",
        started.elapsed()
    );
    converged(&rest, 21).await;

    net.cut.lock().unwrap().clear();
    converged(&all, 21).await;
    assert_eq!(ms[0].store.list::<Node>().unwrap(), ms[2].store.list::<Node>().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_catches_up_by_snapshot_after_compaction() {
    let net = Arc::new(Net::default());
    let small = |mut c: RaftConfig| {
        c.snapshot_interval = 20;
        c.keep_entries = 5;
        c
    };
    let first = start(1, &[1], &net, small);
    first.handle.campaign();
    first.handle.wait_for_leader(Duration::from_secs(5)).await.unwrap();
    for i in 0..100 {
        first.store.update(|tx| tx.create(node(&format!("n{i}")))).await.unwrap();
    }
    let second = start(2, &[], &net, small);
    let mut cc = ConfChange::default();
    cc.set_change_type(ConfChangeType::AddNode);
    cc.node_id = 2;
    first.handle.change_member(cc).await.unwrap();
    converged(&[&first, &second], 100).await;
    assert_eq!(first.store.list::<Node>().unwrap(), second.store.list::<Node>().unwrap());
    assert_eq!(second.handle.status().voters, vec![1, 2]);
}

/// A crash could leave the object store applied past the log's saved commit index (objects
/// written before the hard state); the member must still start, not trip raft-rs's check.
#[tokio::test]
async fn a_member_starts_when_its_objects_are_applied_past_the_saved_commit() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(dir.path()).unwrap();
    let sealer = Arc::new(Sealer::new(&Key::generate().unwrap()));
    let store = Arc::new(Store::open(&db, sealer.clone()).unwrap());
    let mut storage = LogStorage::open(&db, sealer, store.clone()).unwrap();
    storage.bootstrap(1).unwrap();
    let entries: Vec<_> = (2..=6)
        .map(|index| raft::prelude::Entry { index, term: 1, ..Default::default() })
        .collect();
    storage.append(&entries).unwrap();
    store.set_applied(6).unwrap();
    let handle = spawn(RaftConfig::new(1), storage, store.clone(), Arc::new(Net::default()))
        .expect("the member starts");
    store.set_proposer(Arc::new(handle.clone()));
    handle.wait_for_leader(Duration::from_secs(5)).await.unwrap();
    store.update(|tx| tx.create(Node { id: "n".into(), ..Default::default() })).await.unwrap();
    assert!(store.version() > 6);
}
