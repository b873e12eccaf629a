//! Owns moving Raft messages between managers over the mTLS cluster port: one sender task per
//! peer streaming each message in chunks (so a snapshot of any size fits), and the receiving side,
//! which reassembles messages and steps them only after checking that the sending member is the
//! manager whose certificate the connection presented.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use shoal_proto::raft_client::RaftClient;
use shoal_proto::{Member, RaftChunk};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::raft::node::{RaftHandle, Transport};
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
        })
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

async fn run_sender(peers: Weak<Peers>, to: u64, mut rx: mpsc::Receiver<Message>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(p) = peers.upgrade() else { return };
        let (addr, tls) = (p.addr_of(to), p.tls.clone());
        drop(p);
        let Some(addr) = addr else {
            // Not (or no longer) a member: let the queue go; a later message starts a new one.
            tracing::debug!(peer = to, "no address known for raft peer");
            return;
        };
        let result = stream_to(&addr, tls, &mut rx, &peers, to).await;
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
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

async fn stream_to(
    addr: &str,
    tls: Arc<rustls::ClientConfig>,
    rx: &mut mpsc::Receiver<Message>,
    peers: &Weak<Peers>,
    to: u64,
) -> Result<(), String> {
    let channel = shoal_proto::dial::connect(addr, tls).await?;
    tracing::debug!(peer = to, %addr, "raft stream connected");
    let (chunks, chunk_rx) = mpsc::channel::<RaftChunk>(64);
    let mut client = RaftClient::new(channel);
    let call = tokio::spawn(async move { client.send(ReceiverStream::new(chunk_rx)).await });
    let _abort = AbortOnDrop(call);
    while let Some(msg) = rx.recv().await {
        let snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
        let bytes = msg.write_to_bytes().map_err(|e| e.to_string())?;
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
            return Err("the stream to the peer broke".into());
        }
    }
    Ok(())
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
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
    pub fn push(&mut self, chunk: RaftChunk) -> Result<Option<Message>, String> {
        if self.buf.len() + chunk.data.len() > MAX_MESSAGE {
            return Err("a raft message exceeded the size limit".into());
        }
        self.buf.extend_from_slice(&chunk.data);
        if !chunk.last {
            return Ok(None);
        }
        let bytes = std::mem::take(&mut self.buf);
        Message::parse_from_bytes(&bytes)
            .map(Some)
            .map_err(|e| format!("undecodable raft message: {e}"))
    }
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

    #[test]
    fn garbage_is_refused_not_stepped() {
        let mut r = Reassembler::default();
        let err = r.push(RaftChunk { data: vec![0xff; 10], last: true }).unwrap_err();
        assert!(err.contains("undecodable"), "{err}");
    }
}
