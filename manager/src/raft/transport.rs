//! Owns moving Raft messages between managers over the mTLS cluster port: one sender task per
//! peer streaming each message in chunks (so a snapshot of any size fits), and the receiving side,
//! which reassembles messages and steps them only after checking that the sending member is the
//! manager whose certificate the connection presented. A peer's address comes from the member
//! table at every connection; when the table gives a peer a new address, its sender drops the
//! connection (or the attempt) to the old one at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use shoal_proto::raft_client::RaftClient;
use shoal_proto::{Member, RaftChunk};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::raft::node::{RaftHandle, Transport};
use crate::server::AbortOnDrop;
use crate::store::Store;

/// Bytes per chunk on the wire.
pub const CHUNK: usize = 1 << 20;
/// Messages queued per peer before new ones are dropped (Raft retransmits).
const QUEUE: usize = 4096;

/// The local member's view of its peers.
#[derive(Debug)]
pub struct Peers {
    me: Weak<Peers>,
    tls: Arc<rustls::ClientConfig>,
    store: Arc<Store>,
    raft: OnceLock<RaftHandle>,
    senders: Mutex<HashMap<u64, mpsc::Sender<Message>>>,
    /// Addresses learned before the store holds the membership (while joining).
    learned: Mutex<HashMap<u64, String>>,
    /// Bumped whenever the member table may have changed.
    members_changed: watch::Sender<u64>,
}

impl Peers {
    /// Peers reached with `tls` (this manager's client identity), addresses from `store`.
    pub fn new(tls: Arc<rustls::ClientConfig>, store: Arc<Store>) -> Arc<Peers> {
        Arc::new_cyclic(|me| Peers {
            me: me.clone(),
            tls,
            store,
            raft: OnceLock::new(),
            senders: Mutex::new(HashMap::new()),
            learned: Mutex::new(HashMap::new()),
            members_changed: watch::Sender::new(0),
        })
    }

    /// Follows the member table: each change wakes the senders, which reconnect if their peer's
    /// address changed. Runs until the store's change feed closes or `self` is dropped.
    pub fn follow_members(&self) {
        let mut events = self.store.watch();
        let me = self.me.clone();
        tokio::spawn(async move {
            loop {
                let relevant = match events.recv().await {
                    Ok(e) => e.kind == "member" || e.kind == "snapshot",
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                    Err(_) => return,
                };
                let Some(peers) = me.upgrade() else { return };
                if relevant {
                    peers.members_changed.send_modify(|n| *n += 1);
                }
            }
        });
    }

    /// Connects the local Raft member, for reports about unreachable peers.
    pub fn attach(&self, raft: RaftHandle) {
        let _ = self.raft.set(raft);
    }

    /// Remembers members' addresses told by the leader, until the store has them.
    pub fn learn(&self, members: &[Member]) {
        let mut learned = self.learned.lock().unwrap_or_else(|p| p.into_inner());
        for m in members {
            learned.insert(m.raft_id, m.addr.clone());
        }
    }

    /// Where peer `id` is reached: the member table, else what the leader told while joining.
    fn addr_of(&self, id: u64) -> Option<String> {
        match self.store.get::<Member>(&format!("{id:016x}")).ok().flatten() {
            Some(member) => Some(member.addr),
            None => self.learned.lock().unwrap_or_else(|p| p.into_inner()).get(&id).cloned(),
        }
    }

    fn report(&self, to: u64, snapshot: bool) {
        if let Some(raft) = self.raft.get() {
            raft.unreachable(to);
            if snapshot {
                raft.snapshot_sent(to, false);
            }
        }
    }

    fn sender(&self, to: u64) -> mpsc::Sender<Message> {
        let mut senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = senders.get(&to).filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run_sender(self.me.clone(), to, rx));
        senders.insert(to, tx.clone());
        tx
    }
}

impl Transport for Peers {
    fn send(&self, msgs: Vec<Message>) {
        for msg in msgs {
            let (to, snapshot) = (msg.to, msg.get_msg_type() == MessageType::MsgSnapshot);
            if self.sender(to).try_send(msg).is_err() {
                self.report(to, snapshot);
            }
        }
    }
}

const BACKOFF_START: Duration = Duration::from_millis(50);

async fn run_sender(peers: Weak<Peers>, to: u64, mut rx: mpsc::Receiver<Message>) {
    let mut backoff = BACKOFF_START;
    loop {
        let Some(p) = peers.upgrade() else { return };
        // Watch from before the address is read, so a change after it is not missed.
        let mut changes = p.members_changed.subscribe();
        let (addr, tls) = (p.addr_of(to), p.tls.clone());
        drop(p);
        let Some(addr) = addr else {
            // Not (or no longer) a member: let the queue go; a later message starts a new one.
            tracing::debug!(peer = to, "no address known for raft peer");
            return;
        };
        let result = tokio::select! {
            r = stream_to(&addr, tls, &mut rx, &peers, to) => r,
            () = moved(&peers, to, &addr, &mut changes) => {
                tracing::info!(peer = to, old = %addr, "raft peer has a new address; reconnecting");
                backoff = BACKOFF_START;
                continue;
            }
        };
        match result {
            Ok(()) => return, // the queue closed: this peer is gone
            Err(e) => tracing::debug!(peer = to, error = %e, "raft peer unreachable"),
        }
        // Drop what queued up while the peer was away; Raft resends what matters.
        while let Ok(msg) = rx.try_recv() {
            if let Some(p) = peers.upgrade() {
                p.report(to, msg.get_msg_type() == MessageType::MsgSnapshot);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = moved(&peers, to, &addr, &mut changes) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Resolves once the member table gives peer `to` an address other than `addr`, or the peers
/// are dropped.
async fn moved(peers: &Weak<Peers>, to: u64, addr: &str, changes: &mut watch::Receiver<u64>) {
    loop {
        if changes.changed().await.is_err() {
            return;
        }
        let Some(p) = peers.upgrade() else { return };
        if p.addr_of(to).is_some_and(|now| now != addr) {
            return;
        }
    }
}

async fn stream_to(
    addr: &str,
    tls: Arc<rustls::ClientConfig>,
    rx: &mut mpsc::Receiver<Message>,
    peers: &Weak<Peers>,
    to: u64,
) -> Result<(), StreamError> {
    let channel = shoal_proto::dial::connect(addr, tls).await?;
    tracing::debug!(peer = to, %addr, "raft stream connected");
    let (chunks, chunk_rx) = mpsc::channel::<RaftChunk>(64);
    let mut client = RaftClient::new(channel);
    let call = tokio::spawn(async move { client.send(ReceiverStream::new(chunk_rx)).await });
    let _abort = AbortOnDrop(call);
    while let Some(msg) = rx.recv().await {
        let snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
        let bytes = msg.write_to_bytes().map_err(StreamError::Encode)?;
        let sent = send_chunks(&chunks, &bytes).await;
        if let (true, Some(p)) = (snapshot, peers.upgrade()) {
            if let Some(raft) = p.raft.get() {
                raft.snapshot_sent(to, sent);
            }
        }
        if !sent {
            if let Some(p) = peers.upgrade() {
                p.report(to, false);
            }
            return Err(StreamError::Broken);
        }
    }
    Ok(())
}

/// Why a stream to a Raft peer ended before its queue closed.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    /// The peer could not be dialed.
    #[error(transparent)]
    Dial(#[from] shoal_proto::dial::DialError),
    /// A message could not be encoded (a bug: Raft built it).
    #[error("a raft message could not be encoded: {0}")]
    Encode(protobuf::ProtobufError),
    /// The peer stopped taking chunks.
    #[error("the stream to the peer broke")]
    Broken,
}

async fn send_chunks(chunks: &mpsc::Sender<RaftChunk>, bytes: &[u8]) -> bool {
    let mut parts = bytes.chunks(CHUNK).peekable();
    if parts.peek().is_none() {
        return chunks.send(RaftChunk { data: vec![], last: true }).await.is_ok();
    }
    while let Some(part) = parts.next() {
        let chunk = RaftChunk { data: part.to_vec(), last: parts.peek().is_none() };
        if chunks.send(chunk).await.is_err() {
            return false;
        }
    }
    true
}

/// Reassembles chunked messages from one inbound stream.
#[derive(Debug, Default)]
pub struct Reassembler {
    buf: Vec<u8>,
}

/// The most one message may grow to before the stream is refused.
pub const MAX_MESSAGE: usize = 4 << 30;

impl Reassembler {
    /// Adds a chunk; returns a whole decoded message when `chunk.last`.
    pub fn push(&mut self, chunk: RaftChunk) -> Result<Option<Message>, ChunkError> {
        if self.buf.len() + chunk.data.len() > MAX_MESSAGE {
            return Err(ChunkError::TooLarge);
        }
        self.buf.extend_from_slice(&chunk.data);
        if !chunk.last {
            return Ok(None);
        }
        let bytes = std::mem::take(&mut self.buf);
        Message::parse_from_bytes(&bytes)
            .map(Some)
            .map_err(|e| ChunkError::Undecodable(e.to_string()))
    }
}

/// Why a stream of Raft chunks was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("a raft message exceeded the size limit")]
    TooLarge,
    #[error("undecodable raft message: {0}")]
    Undecodable(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn large_messages_cross_in_chunks_and_come_back_whole() {
        let mut msg = Message::default();
        msg.set_msg_type(MessageType::MsgSnapshot);
        msg.mut_snapshot().data = vec![7u8; 3 * CHUNK + 5].into();
        let bytes = msg.write_to_bytes().unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let sender = tokio::spawn(async move { send_chunks(&tx, &bytes).await });
        let mut r = Reassembler::default();
        let mut whole = None;
        let mut count = 0;
        while let Some(chunk) = rx.recv().await {
            count += 1;
            if let Some(m) = r.push(chunk).unwrap() {
                whole = Some(m);
            }
        }
        assert!(sender.await.unwrap());
        assert_eq!(count, 4);
        assert_eq!(whole.unwrap(), msg);
    }

    /// The member table puts peer `id` at `addr`.
    fn place(store: &Store, index: u64, id: u64, addr: &str) {
        let member = Member {
            id: format!("{id:016x}"),
            raft_id: id,
            addr: addr.into(),
            ..Default::default()
        };
        let write = shoal_proto::Write {
            key: format!("member/{id:016x}").into_bytes(),
            value: prost::Message::encode_to_vec(&member),
            delete: false,
        };
        let batch = shoal_proto::StoreBatch { preconditions: vec![], writes: vec![write] };
        store.apply_batch(index, &batch).unwrap();
    }

    #[tokio::test]
    async fn a_peer_that_moves_is_dialled_at_its_new_address_at_once() {
        shoal_pki::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::open_db(dir.path()).unwrap();
        let sealer = Arc::new(crate::raft::crypto::Sealer::new(
            &crate::raft::crypto::Key::generate().unwrap(),
        ));
        let store = Arc::new(Store::open(&db, sealer).unwrap());
        // The old address takes the connection and never answers the TLS handshake (a host
        // that went away mid-connection); the new one only counts who calls.
        let old = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let new = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        place(&store, 1, 7, &old.local_addr().unwrap().to_string());
        let root = shoal_pki::RootCa::generate().unwrap();
        let tls = Arc::new(shoal_pki::tls::client_config(root.cert_pem(), None).unwrap());
        let peers = Peers::new(tls, store.clone());
        peers.follow_members();
        let msg = Message { to: 7, ..Default::default() };
        peers.send(vec![msg]);
        let (_held, _) =
            tokio::time::timeout(Duration::from_secs(5), old.accept()).await.unwrap().unwrap();
        place(&store, 2, 7, &new.local_addr().unwrap().to_string());
        let dialled = tokio::time::timeout(Duration::from_secs(2), new.accept()).await;
        assert!(dialled.is_ok(), "the sender kept waiting on the old address after the move");
    }

    #[test]
    fn garbage_is_refused_not_stepped() {
        let mut r = Reassembler::default();
        let err = r.push(RaftChunk { data: vec![0xff; 10], last: true }).unwrap_err();
        assert!(matches!(err, ChunkError::Undecodable(_)), "{err}");
    }
}
