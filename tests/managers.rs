//! Several managers in one process, each with its own Raft member, sled store and loopback port,
//! talking real gRPC over mTLS: joining, replication, leader loss, restarts, encryption at rest.

use std::time::{Duration, Instant};

use shoal_proto::{GetJoinTokenRequest, ListNodesRequest, NodeRole, RotateJoinTokenRequest};
use shoal_testkit::cluster::{token, TestNode};
use shoal_testkit::poll::eventually;

const BEAT: Duration = Duration::from_millis(300);

async fn leader_of(node: &TestNode) -> Result<String, String> {
    let mut control = node.control().await;
    let r = control.list_nodes(ListNodesRequest {}).await.map_err(|s| s.message().to_string())?;
    let leader = r.into_inner().leader_id;
    if leader.is_empty() {
        Err("no leader".into())
    } else {
        Ok(leader)
    }
}

async fn three_managers() -> Vec<TestNode> {
    shoal_testkit::cluster::three_managers(BEAT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn managers_join_and_every_one_answers_with_the_same_state() {
    let ms = three_managers().await;
    let worker_token = token(&ms[1], NodeRole::Worker).await;
    let addr2 = ms[1].daemon.info().await.state.unwrap().advertise_addr;
    let w = TestNode::start("w").await;
    w.join(&worker_token, &addr2).await.expect("a worker joins through a follower manager");
    for m in &ms {
        eventually("every manager lists 4 Ready nodes", Duration::from_secs(10), || async {
            let r = m
                .control()
                .await
                .list_nodes(ListNodesRequest {})
                .await
                .map_err(|s| s.to_string())?
                .into_inner();
            let ready =
                r.nodes.iter().filter(|n| n.state() == shoal_proto::NodeState::Ready).count();
            (r.nodes.len() == 4 && ready == 4 && r.manager_ids.len() == 3).then_some(()).ok_or(
                format!("{} nodes, {ready} ready, {} managers", r.nodes.len(), r.manager_ids.len()),
            )
        })
        .await;
    }
    let leaders: Vec<String> = futures_leaders(&ms).await;
    assert!(leaders.windows(2).all(|w| w[0] == w[1]), "one leader, seen by all: {leaders:?}");
}

async fn futures_leaders(ms: &[TestNode]) -> Vec<String> {
    let mut out = Vec::new();
    for m in ms {
        out.push(leader_of(m).await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_elects_another_and_keeps_every_acknowledged_write() {
    let mut ms = three_managers().await;
    let leader_id = leader_of(&ms[0]).await.unwrap();
    // Acknowledged writes: each rotation that returned is a write that must survive.
    let mut acked = Vec::new();
    for i in 0..10 {
        let role = if i % 2 == 0 { NodeRole::Worker } else { NodeRole::Manager };
        let req = RotateJoinTokenRequest { role: role as i32, ttl_secs: 0, max_uses: 0 };
        let info = ms[i % 3].control().await.rotate_join_token(req).await.unwrap().into_inner();
        acked.push((role, info.token));
    }
    let idx = {
        let mut found = None;
        for (i, m) in ms.iter().enumerate() {
            if m.id().await == leader_id {
                found = Some(i);
            }
        }
        found.unwrap()
    };
    let killed = ms.remove(idx);
    let (root, socket, dir) = killed.kill().await;
    let started = Instant::now();
    let survivor = &ms[0];
    eventually("a new leader commits a write", Duration::from_secs(10), || async {
        let req =
            RotateJoinTokenRequest { role: NodeRole::Worker as i32, ttl_secs: 0, max_uses: 0 };
        survivor
            .control()
            .await
            .rotate_join_token(req)
            .await
            .map(drop)
            .map_err(|s| s.message().to_string())
    })
    .await;
    let failover = started.elapsed();
    eprintln!("leader killed -> new leader and a committed write in {failover:?}");
    let new_leader = leader_of(survivor).await.unwrap();
    assert_ne!(new_leader, leader_id);
    // The last acknowledged rotation of each role is what every manager still serves.
    let last_manager = acked.iter().rev().find(|(r, _)| *r == NodeRole::Manager).unwrap().1.clone();
    for m in &ms {
        assert_eq!(token(m, NodeRole::Manager).await, last_manager);
    }
    // The old leader restarts from its data and converges.
    let back = TestNode::start_at("back", root, socket).await;
    eventually("the restarted manager catches up", Duration::from_secs(10), || async {
        let t = back
            .control()
            .await
            .get_join_token(GetJoinTokenRequest { role: NodeRole::Worker as i32 })
            .await;
        let want = token(survivor, NodeRole::Worker).await;
        match t {
            Ok(t) if t.get_ref().token == want => Ok(()),
            Ok(_) => Err("behind".into()),
            Err(s) => Err(s.message().to_string()),
        }
    })
    .await;
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_secret_is_readable_in_a_managers_data_dir() {
    let ms = three_managers().await;
    let w = TestNode::start("needle-host-5f1c").await;
    let worker_token = token(&ms[0], NodeRole::Worker).await;
    let addr = ms[0].daemon.info().await.state.unwrap().advertise_addr;
    w.join(&worker_token, &addr).await.unwrap();
    for m in &ms {
        eventually("worker replicated", Duration::from_secs(10), || async {
            let r = m
                .control()
                .await
                .list_nodes(ListNodesRequest {})
                .await
                .map_err(|s| s.to_string())?;
            r.into_inner()
                .nodes
                .iter()
                .any(|n| n.hostname == "needle-host-5f1c")
                .then_some(())
                .ok_or("not yet".into())
        })
        .await;
    }
    let secret = worker_token.rsplit('-').next().unwrap().to_string();
    for m in &ms {
        let store = m.root.join("manager");
        for needle in ["needle-host-5f1c", secret.as_str(), "PRIVATE KEY"] {
            let hits = grep(&store, needle.as_bytes());
            assert!(hits.is_empty(), "{needle:?} readable in {hits:?}");
        }
    }
}

fn grep(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut hits = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return hits };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            hits.extend(grep(&p, needle));
        } else if std::fs::read(&p).unwrap_or_default().windows(needle.len()).any(|w| w == needle) {
            hits.push(p);
        }
    }
    hits
}

async fn all_ready(m: &TestNode, count: usize) {
    eventually("all nodes Ready", Duration::from_secs(10), || async {
        let nodes = m.nodes().await;
        let ready = nodes.iter().filter(|n| n.state() == shoal_proto::NodeState::Ready).count();
        (ready == count).then_some(()).ok_or(format!("{ready} of {count} Ready"))
    })
    .await;
}

async fn id_of(ms: &[TestNode], node_id: &str) -> usize {
    for (i, m) in ms.iter().enumerate() {
        if m.id().await == node_id {
            return i;
        }
    }
    panic!("no manager {node_id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removing_a_manager_takes_it_out_of_raft_but_never_below_quorum() {
    let mut ms = three_managers().await;
    all_ready(&ms[0], 3).await;
    let leader = leader_of(&ms[0]).await.unwrap();
    let follower = ms.remove((id_of(&ms, &leader).await + 1) % 3);
    let follower_id = follower.id().await;
    let mut control = ms[0].control().await;
    let req = |force| shoal_proto::RemoveNodeRequest { reference: follower_id.clone(), force };
    let err = control.remove_node(req(false)).await.unwrap_err();
    assert!(err.message().contains("--force"), "{}", err.message());
    let (_root, _socket, _dir) = follower.kill().await;
    control.remove_node(req(true)).await.unwrap();
    for m in &ms {
        let r = m.control().await.list_nodes(ListNodesRequest {}).await.unwrap().into_inner();
        assert_eq!(r.manager_ids.len(), 2, "two managers remain");
        assert!(r.nodes.iter().all(|n| n.id != follower_id));
    }
    let status = ms[0].daemon.info().await.manager.unwrap().raft().status();
    assert_eq!(status.voters.len(), 2, "the raft group shrank: {status:?}");
    // With two managers left, removing one more would leave one of two: refused.
    let other = ms[1].id().await;
    let (_r, _s, _d) = ms.remove(1).kill().await;
    let err = control
        .remove_node(shoal_proto::RemoveNodeRequest { reference: other, force: true })
        .await
        .unwrap_err();
    // The commit cannot happen; which timeout speaks first (the proposal's, or the leader
    // stepping down without a quorum) depends on the machine's load.
    let said = err.message();
    assert!(said.contains("quorum") || said.contains("not confirmed in time"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn force_new_cluster_recovers_a_lone_survivor_with_all_its_state() {
    let mut ms = three_managers().await;
    let worker_token = token(&ms[0], NodeRole::Worker).await;
    let addr = ms[0].daemon.info().await.state.unwrap().advertise_addr;
    let w = TestNode::start("w").await;
    let worker_id = w.join(&worker_token, &addr).await.unwrap();
    let survivor = ms.remove(0);
    for m in ms.drain(..) {
        let (_r, _s, _d) = m.kill().await;
    }
    // No quorum: writes fail with a message that says so (not a hang, not a success).
    let req = RotateJoinTokenRequest { role: NodeRole::Worker as i32, ttl_secs: 0, max_uses: 0 };
    let err = survivor.control().await.rotate_join_token(req).await.unwrap_err();
    assert!(
        err.message().contains("quorum") || err.message().contains("leader"),
        "{}",
        err.message()
    );

    let opts = shoal::node::daemon::InitOptions { force_new_cluster: true, ..Default::default() };
    survivor.daemon.init(opts).await.unwrap();
    let nodes = survivor.nodes().await;
    assert!(nodes.iter().any(|n| n.id == worker_id), "state kept: {nodes:?}");
    assert_eq!(token(&survivor, NodeRole::Worker).await, worker_token, "tokens kept");
    let r = survivor.control().await.list_nodes(ListNodesRequest {}).await.unwrap().into_inner();
    assert_eq!(r.manager_ids.len(), 1);
    // Writes work again and a new manager can join the recovered cluster.
    let req = RotateJoinTokenRequest { role: NodeRole::Worker as i32, ttl_secs: 0, max_uses: 0 };
    survivor.control().await.rotate_join_token(req).await.unwrap();
    let fresh = TestNode::start("m4").await;
    fresh.join(&token(&survivor, NodeRole::Manager).await, &addr).await.unwrap();
    let r = survivor.control().await.list_nodes(ListNodesRequest {}).await.unwrap().into_inner();
    assert_eq!(r.manager_ids.len(), 2);
}

fn kek_file(node: &TestNode) -> std::path::PathBuf {
    node.root.join("manager/store/keys/kek")
}

async fn restart(node: TestNode, name: &str) -> (TestNode, Option<tempfile::TempDir>) {
    let (root, socket, dir) = node.kill().await;
    (TestNode::start_at(name, root, socket).await, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn autolocked_managers_restart_locked_and_open_only_with_the_key() {
    use shoal_proto::{
        Autolock, GetUnlockKeyRequest, RotateUnlockKeyRequest, UpdateClusterRequest,
    };
    let mut ms = three_managers().await;
    let mut control = ms[0].control().await;
    let on = UpdateClusterRequest { autolock: Autolock::On as i32, ..Default::default() };
    control.update_cluster(on).await.unwrap();
    let key1 = control.get_unlock_key(GetUnlockKeyRequest {}).await.unwrap().into_inner().key;
    assert!(key1.starts_with("SHLKEY-1-"), "{key1}");
    for m in &ms {
        eventually("no key file left beside the data", Duration::from_secs(10), || async {
            (!kek_file(m).exists()).then_some(()).ok_or("kek still on disk".into())
        })
        .await;
    }

    // A restarted manager is locked: it serves nothing until it gets the key.
    let addr = ms[2].daemon.info().await.state.unwrap().advertise_addr;
    let (m3, _d3) = restart(ms.remove(2), "m3").await;
    assert!(m3.daemon.info().await.locked);
    assert!(
        tokio::net::TcpStream::connect(&addr).await.is_err(),
        "a locked manager must not listen"
    );
    let err = format!("{:#}", m3.daemon.unlock("SHLKEY-1-garbage").await.unwrap_err());
    assert!(err.contains("invalid unlock key"), "{err}");
    let wrong =
        control.rotate_unlock_key(RotateUnlockKeyRequest {}).await.unwrap().into_inner().key;
    let err = format!("{:#}", m3.daemon.unlock(&wrong).await.unwrap_err());
    assert!(err.contains("wrong or rotated unlock key"), "{err}");

    // It was down during the rotation: the previous key still opens it, once; it then catches
    // up and re-wraps its data key with the current one.
    m3.daemon.unlock(&key1).await.unwrap();
    assert!(!m3.daemon.info().await.locked);
    eventually("the unlocked manager serves again", Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(&addr).await.map(drop).map_err(|e| e.to_string())
    })
    .await;
    let current = wrong;
    eventually("it adopts the rotated key", Duration::from_secs(10), || async {
        let k = m3
            .control()
            .await
            .get_unlock_key(GetUnlockKeyRequest {})
            .await
            .map_err(|s| s.to_string())?;
        (k.into_inner().key == current).then_some(()).ok_or("old key still".into())
    })
    .await;
    let keys = shoal_manager::raft::crypto::KeyFiles::new(m3.root.join("manager/store/keys"));
    let current_key = shoal_manager::raft::crypto::parse_unlock_key(&current).unwrap();
    eventually("its data key is wrapped with the current key", Duration::from_secs(10), || async {
        keys.load_with(&current_key).map(drop).map_err(|e| e.to_string())
    })
    .await;
    let (m3, _d3b) = restart(m3, "m3").await;
    assert!(m3.daemon.unlock(&key1).await.is_err(), "the previous key opens only once");
    m3.daemon.unlock(&current).await.unwrap();

    // Autolock off: key files come back, restarts need no key.
    let off = UpdateClusterRequest { autolock: Autolock::Off as i32, ..Default::default() };
    control.update_cluster(off).await.unwrap();
    // The key file is written first, then the data keys are wrapped with it: wait for both.
    eventually("data keys wrapped with a key file again", Duration::from_secs(10), || async {
        (kek_file(&m3).exists() && !keys.is_locked()).then_some(()).ok_or("still locked".into())
    })
    .await;
    let (m3, _d3c) = restart(m3, "m3").await;
    assert!(!m3.daemon.info().await.locked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_manager_catches_up_on_a_state_larger_than_64_mib() {
    let m1 = TestNode::start("m1").await;
    let addr = m1.init(BEAT, None).await;
    let manager = m1.daemon.info().await.manager.unwrap();
    // 72 objects of 1 MiB each: the snapshot a joiner needs is over 64 MiB.
    let blob: String = "x".repeat(1 << 20);
    for i in 0..72 {
        let node = shoal_proto::Node {
            id: format!("bulk-{i:03}"),
            state_message: blob.clone(),
            ..Default::default()
        };
        manager.store().update(|tx| tx.create(node.clone())).await.unwrap();
    }
    let started = Instant::now();
    let m2 = TestNode::start("m2").await;
    m2.join(&token(&m1, NodeRole::Manager).await, &addr).await.expect("join with a large state");
    eprintln!("caught up on a >64 MiB snapshot in {:?}", started.elapsed());
    let copy = m2.daemon.info().await.manager.unwrap();
    let bulk: Vec<_> = copy
        .store()
        .list::<shoal_proto::Node>()
        .unwrap()
        .into_iter()
        .filter(|n| n.id.starts_with("bulk-"))
        .collect();
    assert_eq!(bulk.len(), 72);
    assert!(bulk.iter().all(|n| n.state_message.len() == 1 << 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn promote_makes_a_worker_a_raft_member_and_demote_undoes_it() {
    use shoal_proto::UpdateNodeRoleRequest;
    let m1 = TestNode::start("m1").await;
    let addr = m1.init(BEAT, None).await;
    let w = TestNode::start("w").await;
    let wid = w.join(&token(&m1, NodeRole::Worker).await, &addr).await.unwrap();
    all_ready(&m1, 2).await;
    let mut control = m1.control().await;
    let set = |role: NodeRole| UpdateNodeRoleRequest { reference: wid.clone(), role: role as i32 };
    let err =
        control.update_node_role(UpdateNodeRoleRequest { reference: m1.id().await, role: 0 }).await;
    assert!(err.unwrap_err().message().contains("last manager"));

    control.update_node_role(set(NodeRole::Manager)).await.unwrap();
    eventually("the promoted node serves as a manager", Duration::from_secs(20), || async {
        let info = w.daemon.info().await;
        let cert_role = info.identity.map(|i| i.role);
        let voters = info.manager.map(|m| m.raft().status().voters.len()).unwrap_or(0);
        (cert_role == Some(shoal_pki::Role::Manager) && voters == 2)
            .then_some(())
            .ok_or(format!("cert {cert_role:?}, {voters} voters"))
    })
    .await;
    let r = m1.control().await.list_nodes(ListNodesRequest {}).await.unwrap().into_inner();
    assert_eq!(r.manager_ids.len(), 2);
    // The new manager answers control calls with the same state.
    assert_eq!(token(&w, NodeRole::Worker).await, token(&m1, NodeRole::Worker).await);

    control.update_node_role(set(NodeRole::Worker)).await.unwrap();
    eventually("the demoted node is a worker again", Duration::from_secs(20), || async {
        let info = w.daemon.info().await;
        let cert_role = info.identity.map(|i| i.role);
        (cert_role == Some(shoal_pki::Role::Worker) && info.manager.is_none())
            .then_some(())
            .ok_or(format!("cert {cert_role:?}"))
    })
    .await;
    let r = m1.control().await.list_nodes(ListNodesRequest {}).await.unwrap().into_inner();
    assert_eq!(r.manager_ids.len(), 1);
    assert_eq!(m1.daemon.info().await.manager.unwrap().raft().status().voters.len(), 1);
    all_ready(&m1, 2).await;
}

/// The data keys in a manager's key file (autolock off).
fn data_keys(node_root: &std::path::Path) -> shoal_manager::raft::crypto::DataKeys {
    shoal_manager::raft::crypto::KeyFiles::new(node_root.join("manager/store/keys")).load().unwrap()
}

/// Opens a stopped manager's store with `key` alone and reads every log entry and object.
fn read_everything_with(
    node_root: &std::path::Path,
    key: &shoal_manager::raft::crypto::Key,
) -> Result<Vec<shoal_proto::Node>, String> {
    use shoal_manager::raft::crypto::Sealer;
    use shoal_manager::raft::storage::LogStorage;
    use std::sync::Arc;
    let path = node_root.join("manager/store/db");
    let db = shoal_manager::store::open_db(&path).map_err(|e| e.to_string())?;
    let sealer = Arc::new(Sealer::new(key));
    let store =
        Arc::new(shoal_manager::Store::open(&db, sealer.clone()).map_err(|e| e.to_string())?);
    LogStorage::open(&db, sealer.clone(), store.clone())
        .and_then(|s| s.with_data_file(&path))
        .map_err(|e| e.to_string())?;
    store.snapshot().map_err(|e| e.to_string())?;
    store.list::<shoal_proto::Node>().map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn data_keys_rotate_under_load_and_every_record_is_sealed_again() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let ms = three_managers().await;
    let old: Vec<_> = ms.iter().map(|m| data_keys(&m.root)).collect();
    assert!(old.iter().all(|k| k.epoch == 0 && k.previous.is_none()));

    // A writer keeps committing through the first manager the whole time.
    let manager = ms[0].daemon.manager().await.expect("a manager");
    let (stop, acked, failed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(Mutex::new(Vec::new())),
    );
    let writer = {
        let (stop, acked, failed) = (stop.clone(), acked.clone(), failed.clone());
        tokio::spawn(async move {
            let mut written = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let node = shoal_proto::Node {
                    id: format!("rot-{i}"),
                    hostname: format!("h{i}"),
                    ..Default::default()
                };
                match manager.store().update(|tx| tx.create(node.clone())).await {
                    Ok(()) => {
                        written.push(node.id.clone());
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => failed.lock().unwrap().push(e.to_string()),
                }
                i += 1;
            }
            written
        })
    };
    eventually("the writer is under way", Duration::from_secs(10), || async {
        (acked.load(Ordering::SeqCst) >= 50).then_some(()).ok_or("not yet".into())
    })
    .await;

    let req = shoal_proto::UpdateClusterRequest { rotate_data_key: true, ..Default::default() };
    let info = ms[1].control().await.update_cluster(req).await.unwrap().into_inner();
    assert_eq!(info.data_key_epoch, 1);
    let at_request = acked.load(Ordering::SeqCst);
    for m in &ms {
        let manager = m.daemon.manager().await.expect("a manager");
        eventually("every manager finished rotating", Duration::from_secs(30), || async {
            match manager.data_key_status() {
                (1, false) => Ok(()),
                other => Err(format!("epoch, rotating = {other:?}")),
            }
        })
        .await;
    }
    eventually("writes go on after the rotation", Duration::from_secs(10), || async {
        (acked.load(Ordering::SeqCst) >= at_request + 50).then_some(()).ok_or("not yet".into())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let written = writer.await.unwrap();
    assert!(
        failed.lock().unwrap().is_empty(),
        "writes failed during the rotation: {:?}",
        failed.lock().unwrap()
    );

    // A follower learns the last commit with the leader's next message: let every manager
    // apply it before they stop.
    let last = written.last().expect("acknowledged writes").clone();
    for m in &ms {
        let manager = m.daemon.manager().await.expect("a manager");
        eventually(
            "every manager applied the last acknowledged write",
            Duration::from_secs(10),
            || async {
                match manager.store().get::<shoal_proto::Node>(&last) {
                    Ok(Some(_)) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
    }

    // Each manager has a new key; its store opens with that key alone, holding every
    // acknowledged write, and no longer with the old one.
    let mut roots = Vec::new();
    let mut dirs = Vec::new();
    for (m, old) in ms.into_iter().zip(&old) {
        let new = data_keys(&m.root);
        assert!(new.previous.is_none() && new.epoch == 1);
        assert_ne!(new.current.expose(), old.current.expose(), "the key changed");
        let (root, _, dir) = m.kill().await;
        roots.push((root, new, old.clone()));
        dirs.push(dir);
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // sled lets go of its lock
    for (root, new, old) in &roots {
        let nodes = read_everything_with(root, &new.current)
            .unwrap_or_else(|e| panic!("not readable with the new key alone: {e}"));
        let missing = written.iter().filter(|id| !nodes.iter().any(|n| &n.id == *id)).count();
        assert_eq!(missing, 0, "acknowledged writes missing after the rotation");
        let err = read_everything_with(root, &old.current).unwrap_err();
        assert!(err.contains("failed authentication") || err.contains("damaged"), "{err}");
    }
}

/// What `node ls` on `m` says of manager `id`: "Leader", "Reachable" or "Unreachable".
async fn manager_status_of(m: &TestNode, id: &str) -> Result<String, String> {
    let r = m
        .control()
        .await
        .list_nodes(ListNodesRequest {})
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    let output = shoal::cli::output::node_ls(&r, false);
    let line = output
        .lines()
        .find(|l| l.starts_with(id))
        .ok_or_else(|| format!("{id} not listed:\n{output}"))?;
    ["Leader", "Unreachable", "Reachable"]
        .into_iter()
        .find(|w| line.split_whitespace().any(|word| word == *w))
        .map(str::to_string)
        .ok_or_else(|| format!("no manager status in {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_manager_is_listed_unreachable_by_every_manager_until_it_is_back() {
    let mut ms = three_managers().await;
    let leader = leader_of(&ms[0]).await.unwrap();
    let mut ids = Vec::new();
    for m in &ms {
        ids.push(m.id().await);
    }
    let down = ids.iter().position(|id| *id != leader).expect("a follower");
    let down_id = ids[down].clone();
    let name = format!("m{}", down + 1);
    // A newly added voter is listed Reachable once the leader first hears from it.
    for m in &ms {
        eventually("every manager Reachable before the stop", Duration::from_secs(10), || async {
            match manager_status_of(m, &down_id).await? {
                s if s == "Reachable" => Ok(()),
                s => Err(s),
            }
        })
        .await;
    }
    let (root, socket, dir) = ms.remove(down).kill().await;
    for m in &ms {
        eventually(
            "the stopped manager is listed Unreachable",
            Duration::from_secs(10),
            || async {
                match manager_status_of(m, &down_id).await? {
                    s if s == "Unreachable" => Ok(()),
                    s => Err(s),
                }
            },
        )
        .await;
    }
    let back = TestNode::start_at(&name, root, socket).await;
    ms.push(back);
    for m in &ms {
        eventually("the manager is Reachable again", Duration::from_secs(15), || async {
            match manager_status_of(m, &down_id).await? {
                s if s == "Reachable" => Ok(()),
                s => Err(s),
            }
        })
        .await;
    }
    drop(dir);
}
