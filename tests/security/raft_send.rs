//! Item 7: a manager accepts Raft traffic only from current Raft members, decided before it
//! reads a byte, and a member cannot make it hold more than a bounded amount of unfinished
//! messages.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shoal_proto::raft_client::RaftClient;
use shoal_proto::{NodeRole, RaftChunk};

use shoal_testkit::cluster::{token, TestNode};
use shoal_testkit::fake_worker::FakeWorker;

const BEAT: Duration = Duration::from_millis(200);
const MIB: usize = 1 << 20;

/// `count` chunks of 1 MiB that never finish a message; counts the chunks the client has
/// handed to the connection, i.e. that the server could have read.
fn unfinished_chunks(
    count: usize,
) -> (impl tokio_stream::Stream<Item = RaftChunk>, Arc<AtomicUsize>) {
    let taken = Arc::new(AtomicUsize::new(0));
    let counter = taken.clone();
    let chunks = tokio_stream::iter(0..count).map(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
        RaftChunk { data: vec![0x5a; MIB], last: false }
    });
    (chunks, taken)
}

use tokio_stream::StreamExt as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manager_certificate_of_a_non_member_is_refused_before_a_chunk_is_read() {
    let m = TestNode::start("m").await;
    let addr = m.init(BEAT, None).await;
    // An outsider with the manager token gets a manager certificate but never joins the Raft
    // group (it runs no manager), so it is no Raft member.
    let manager_token = token(&m, NodeRole::Manager).await;
    let intruder = FakeWorker::join(&addr, &manager_token, "intruder", "").await.unwrap();
    let (chunks, taken) = unfinished_chunks(64);
    let mut raft = RaftClient::new(intruder.channel().await);
    let answer = tokio::time::timeout(Duration::from_secs(20), raft.send(chunks)).await;
    let taken = taken.load(Ordering::SeqCst);
    let status = match answer {
        Ok(Err(status)) => status,
        Ok(Ok(_)) => panic!("the manager read all {taken} MiB a non-member sent, and said OK"),
        Err(_) => panic!("the manager was still reading a non-member's chunks after 20 s"),
    };
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{}", status.message());
    assert!(
        status.message().contains(&format!("node {} is not a raft member", intruder.node_id)),
        "{}",
        status.message()
    );
    // The client may queue a few chunks into the connection's flow-control window before the
    // answer arrives, but not the 64 MiB it meant to send.
    assert!(taken < 64, "the manager read all {taken} MiB before refusing");
    eprintln!("non-member refused after the client had queued {taken} of 64 MiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_sending_more_than_its_allowance_is_cut_off_with_a_clear_status() {
    let m = TestNode::start("m").await;
    let addr = m.init(BEAT, None).await;
    let manager = m.daemon.info().await.manager.unwrap();
    manager.limit_raft_inbound(8 * MIB);
    // The manager's own certificate: a current member (the only one).
    let member = FakeWorker::of(&m, &m.id().await, &addr);
    let (chunks, _) = unfinished_chunks(32);
    let mut raft = RaftClient::new(member.channel().await);
    let status = tokio::time::timeout(Duration::from_secs(20), raft.send(chunks))
        .await
        .expect("the stream was not cut within 20 s")
        .expect_err("a member held 32 MiB of an unfinished message past its 8 MiB allowance");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{}", status.message());
    assert!(status.message().contains("more than the 8388608 a peer may"), "{}", status.message());
    // The allowance came back when the stream was cut: the member's own traffic goes on.
    let mut control = m.control().await;
    let info = control.get_cluster_info(shoal_proto::GetClusterInfoRequest {}).await;
    assert!(info.is_ok(), "the manager stopped working after cutting a stream: {info:?}");
}
