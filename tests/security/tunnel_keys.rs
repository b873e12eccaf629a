//! Encrypted overlays: what a node says about its tunnel keys is checked before it is stored,
//! and a rotation it reports reaches the cluster. A fake worker (a real certificate, the real
//! dispatcher protocol) sends what a broken or hostile agent could: keys of the wrong length,
//! all zeroes, one key twice, too many keys.

use std::time::Duration;

use shoal_proto::{HeartbeatRequest, SessionRequest, TunnelKey};
use tonic::Code;

use shoal_testkit::cluster::{node, worker_token, TestNode};
use shoal_testkit::fake_worker::FakeWorker;
use shoal_testkit::poll::eventually;

const BEAT: Duration = Duration::from_millis(200);

fn key(byte: u8, len: usize) -> TunnelKey {
    TunnelKey { public_key: vec![byte; len], created_ms: 1_700_000_000_000 }
}

fn session_with(keys: Vec<TunnelKey>) -> SessionRequest {
    SessionRequest { hostname: "w".into(), tunnel_keys: keys, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tunnel_keys_are_checked_stored_and_rotated() {
    let m = TestNode::start("m").await;
    let addr = m.init(BEAT, None).await;
    let token = worker_token(&m).await;
    let w = FakeWorker::join(&addr, &token, "w", "").await.unwrap();

    // Malformed key lists are refused at session open, saying what is wrong; nothing is stored.
    for (keys, says) in [
        (vec![key(1, 31)], "tunnel key 0 is 31 bytes"),
        (vec![key(0, 32)], "all zeroes"),
        (vec![key(1, 32), key(1, 32)], "listed twice"),
        (vec![key(1, 32), key(2, 32), key(3, 32)], "at most 2"),
    ] {
        let Err(err) = w.session(session_with(keys)).await else { panic!("{says}: accepted") };
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
        assert!(err.message().contains(says), "{says:?} in {:?}", err.message());
    }
    assert!(node(&m, &w.node_id).await.tunnel_keys.is_empty(), "nothing stored");

    // A good key is stored with the session.
    let session = w.session(session_with(vec![key(1, 32)])).await.unwrap();
    assert_eq!(node(&m, &w.node_id).await.tunnel_keys, vec![key(1, 32)]);

    // A heartbeat with a bad list is refused; one with a rotation is stored.
    let mut client = w.dispatcher().await;
    let beat = |keys| HeartbeatRequest {
        session_id: session.id.clone(),
        tunnel_keys: keys,
        ..Default::default()
    };
    let err = client.heartbeat(beat(vec![key(2, 64)])).await.expect_err("refused");
    assert!(err.message().contains("tunnel key 0 is 64 bytes"), "{}", err.message());
    let answer = client.heartbeat(beat(vec![key(2, 32), key(1, 32)])).await.unwrap();
    assert_eq!(answer.into_inner().network_key_rotation_secs, 12 * 3600, "the default period");
    eventually("the rotation is stored", Duration::from_secs(10), || async {
        let keys = node(&m, &w.node_id).await.tunnel_keys;
        (keys == vec![key(2, 32), key(1, 32)]).then_some(()).ok_or(format!("{keys:?}"))
    })
    .await;
}
