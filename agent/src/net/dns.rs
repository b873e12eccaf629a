//! The resolver each task with networks asks (at 127.0.0.11:53 inside its own namespace):
//! a UDP socket the agent opens in the task's network namespace and serves itself. Names of
//! the cluster on the task's networks are answered from the network maps (`names::lookup`);
//! other names are passed to the node's resolvers as they are.
//!
//! Messages are read and written with `hickory-proto`. (`hickory-server` is built around one
//! catalogue of zones per server; here every socket answers a different asker from live maps,
//! which its request handler would have to rebuild per query, so the protocol crate alone
//! is the better fit.)

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{rdata::A, RData, Record, RecordType};
use tokio::net::UdpSocket;

use super::files::RESOLVER;
use super::NetError;

/// How long a cluster answer may be cached: tasks come and go.
const TTL: u32 = 600;
/// How long a forwarded query waits for the node's resolver.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);

/// Answers a name for the asking task: `Some(addresses)` for a cluster name, `None` for one
/// to forward.
pub type Resolve = Arc<dyn Fn(&str) -> Option<Vec<Ipv4Addr>> + Send + Sync>;

/// Opens the resolver's socket inside the network namespace at `netns` (a thread enters it,
/// binds, and leaves; the socket stays in that namespace).
pub fn bind_in(netns: &Path) -> Result<std::net::UdpSocket, NetError> {
    let path = netns.to_path_buf();
    let fail = |e: std::io::Error| NetError::Resolver(format!("{}: {e}", path.display()));
    let job = {
        let path = path.clone();
        move || -> std::io::Result<std::net::UdpSocket> {
            let ns = std::fs::File::open(&path)?;
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&ns),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )?;
            let socket = std::net::UdpSocket::bind(SocketAddr::from((RESOLVER, 53)))?;
            socket.set_nonblocking(true)?;
            Ok(socket)
        }
    };
    std::thread::spawn(job)
        .join()
        .map_err(|_| NetError::Resolver(format!("{}: the binding thread died", path.display())))?
        .map_err(fail)
}

/// Serves queries on `socket` until the returned task is aborted.
pub fn serve(
    socket: std::net::UdpSocket,
    resolve: Resolve,
    upstreams: Arc<Vec<SocketAddr>>,
) -> Result<tokio::task::JoinHandle<()>, NetError> {
    let socket =
        Arc::new(UdpSocket::from_std(socket).map_err(|e| NetError::Resolver(e.to_string()))?);
    Ok(tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else { continue };
            let query = buf[..n].to_vec();
            let (socket, resolve, upstreams) = (socket.clone(), resolve.clone(), upstreams.clone());
            tokio::spawn(async move {
                if let Some(reply) = respond(&query, &resolve, &upstreams).await {
                    let _ = socket.send_to(&reply, from).await;
                }
            });
        }
    }))
}

/// The reply to one query: answered here, forwarded, or (for garbage) nothing.
async fn respond(query: &[u8], resolve: &Resolve, upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    let msg = Message::from_vec(query).ok()?;
    if msg.message_type() != MessageType::Query {
        return None;
    }
    let Some(q) = msg.queries().first() else {
        return reply(&msg, ResponseCode::FormErr, &[]);
    };
    let name = q.name().to_ascii();
    match resolve(&name) {
        Some(addrs) => {
            // Other record types of a cluster name: an empty answer, never NXDOMAIN (a
            // resolver asking A and AAAA at once would take that as "no such name").
            let addrs: Vec<Ipv4Addr> = if q.query_type() == RecordType::A {
                let mut a = addrs;
                // Round robin between askers.
                if !a.is_empty() {
                    let k = msg.id() as usize % a.len();
                    a.rotate_left(k);
                }
                a
            } else {
                Vec::new()
            };
            reply(&msg, ResponseCode::NoError, &addrs)
        }
        None => match forward(query, upstreams).await {
            Some(r) => Some(r),
            None => reply(&msg, ResponseCode::ServFail, &[]),
        },
    }
}

fn reply(query: &Message, code: ResponseCode, addrs: &[Ipv4Addr]) -> Option<Vec<u8>> {
    let mut m = Message::new();
    m.set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(code);
    if let Some(q) = query.queries().first() {
        m.add_query(q.clone());
        for a in addrs {
            m.add_answer(Record::from_rdata(q.name().clone(), TTL, RData::A(A(*a))));
        }
    }
    m.to_vec().ok()
}

/// Passes the query to the node's resolvers in turn; the first answer wins. Only a reply from
/// the resolver asked, to the query's ID, counts (anything else on the port is dropped).
async fn forward(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for up in upstreams {
        let bind: SocketAddr = if up.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().ok()?;
        let Ok(socket) = UdpSocket::bind(bind).await else { continue };
        if socket.send_to(query, up).await.is_err() {
            continue;
        }
        let deadline = tokio::time::Instant::now() + FORWARD_TIMEOUT;
        let mut buf = vec![0u8; 4096];
        while let Ok(Ok((n, from))) =
            tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await
        {
            if from == *up && n >= 2 && buf[..2] == query[..2] {
                buf.truncate(n);
                return Some(buf);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;
    use std::str::FromStr;

    fn ask(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(7).set_message_type(MessageType::Query).set_recursion_desired(true);
        m.add_query(Query::query(Name::from_str(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    fn resolver() -> Resolve {
        Arc::new(|name: &str| {
            (name.trim_end_matches('.') == "web").then(|| vec![Ipv4Addr::new(10, 0, 1, 2)])
        })
    }

    #[tokio::test]
    async fn cluster_names_are_answered_and_others_fail_without_upstreams() {
        let r = respond(&ask("web.", RecordType::A), &resolver(), &[]).await.unwrap();
        let m = Message::from_vec(&r).unwrap();
        assert_eq!((m.id(), m.response_code()), (7, ResponseCode::NoError));
        assert_eq!(m.answers().len(), 1);
        assert_eq!(m.answers()[0].data(), &RData::A(A(Ipv4Addr::new(10, 0, 1, 2))));
        let r = respond(&ask("web.", RecordType::AAAA), &resolver(), &[]).await.unwrap();
        let m = Message::from_vec(&r).unwrap();
        assert_eq!((m.response_code(), m.answers().len()), (ResponseCode::NoError, 0));
        let r = respond(&ask("example.com.", RecordType::A), &resolver(), &[]).await.unwrap();
        assert_eq!(Message::from_vec(&r).unwrap().response_code(), ResponseCode::ServFail);
        assert!(respond(b"\x00garbage", &resolver(), &[]).await.is_none());
    }

    #[tokio::test]
    async fn other_names_go_to_the_nodes_resolver() {
        // A stand-in upstream that answers every query with REFUSED.
        let up = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = up.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 512];
            let (n, from) = up.recv_from(&mut buf).await.unwrap();
            let q = Message::from_vec(&buf[..n]).unwrap();
            let r = reply(&q, ResponseCode::Refused, &[]).unwrap();
            up.send_to(&r, from).await.unwrap();
        });
        let r = respond(&ask("example.com.", RecordType::A), &resolver(), &[addr]).await.unwrap();
        assert_eq!(Message::from_vec(&r).unwrap().response_code(), ResponseCode::Refused);
    }

    #[tokio::test]
    async fn mangled_queries_never_panic_and_answers_keep_the_id() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(14);
        let seeds = [ask("web.", RecordType::A), ask("tasks.web.", RecordType::AAAA)];
        for round in 0..5_000 {
            let mut q = seeds[round % seeds.len()].clone();
            match round % 4 {
                0 => {
                    let i = rng.gen_range(0..q.len());
                    q[i] = rng.gen();
                }
                1 => q.truncate(rng.gen_range(0..q.len())),
                2 => q.extend((0..rng.gen_range(1..64)).map(|_| rng.gen::<u8>())),
                _ => q = (0..rng.gen_range(0..600)).map(|_| rng.gen()).collect(),
            }
            if let Some(r) = respond(&q, &resolver(), &[]).await {
                let m = Message::from_vec(&r).expect("every reply parses");
                assert_eq!(m.id(), u16::from_be_bytes([q[0], q[1]]), "round {round}");
            }
        }
    }

    #[tokio::test]
    async fn a_reply_from_anyone_but_the_upstream_is_ignored() {
        let up = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = up.local_addr().unwrap();
        let spoofer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 512];
            let (n, from) = up.recv_from(&mut buf).await.unwrap();
            let q = Message::from_vec(&buf[..n]).unwrap();
            // Someone else answers first, with a forged address; then the upstream, refusing.
            let forged = reply(&q, ResponseCode::NoError, &[Ipv4Addr::new(6, 6, 6, 6)]).unwrap();
            spoofer.send_to(&forged, from).await.unwrap();
            let mut wrong_id = q.clone();
            wrong_id.set_id(q.id().wrapping_add(1));
            let r = reply(&wrong_id, ResponseCode::NoError, &[Ipv4Addr::new(6, 6, 6, 6)]).unwrap();
            up.send_to(&r, from).await.unwrap();
            let r = reply(&q, ResponseCode::Refused, &[]).unwrap();
            up.send_to(&r, from).await.unwrap();
        });
        let r = respond(&ask("example.com.", RecordType::A), &resolver(), &[addr]).await.unwrap();
        assert_eq!(Message::from_vec(&r).unwrap().response_code(), ResponseCode::Refused);
    }
}
