//! Owns spreading: choosing, among nodes that passed the filters, where each task of a group
//! goes — evenly across spread-preference buckets, then across nodes. Never filters.
//!
//! Cost: one pass over the nodes per preference level, then O(log B) per task across B buckets
//! and O(log N) per task across N nodes (a heap whose top is refilled in place).

use std::cmp::Reverse;
use std::collections::binary_heap::PeekMut;
use std::collections::{BTreeMap, BinaryHeap};

use super::view::ClusterView;

/// A node that can take `room` more tasks of the group.
#[derive(Debug, Clone, Copy)]
pub(super) struct Candidate {
    pub idx: usize,
    pub room: usize,
}

/// What orders nodes within a bucket.
#[derive(Debug)]
pub(super) struct Ordering<'a> {
    pub service_id: &'a str,
    /// (service ID, spec version), for faulty-node avoidance.
    pub version: &'a (String, u64),
    pub now_ms: i64,
}

/// Chooses nodes for up to `n` tasks; returns one node index per placed task (fewer than `n`
/// when the candidates run out of room). `labels` are the spread labels, outermost first.
pub(super) fn plan(
    view: &ClusterView,
    cands: Vec<Candidate>,
    labels: &[String],
    order: &Ordering<'_>,
    n: usize,
) -> Vec<usize> {
    let all: Vec<usize> = (0..view.nodes().len()).collect();
    let mut out = Vec::with_capacity(n);
    place_in(view, &all, cands, labels, order, n, &mut out);
    out
}

/// The nodes that share one value of a spread label.
#[derive(Debug, Default)]
struct Bucket {
    /// Tasks of the service on every node of the bucket, feasible or not.
    tasks: usize,
    all: Vec<usize>,
    cands: Vec<Candidate>,
    room: usize,
}

fn place_in(
    view: &ClusterView,
    all: &[usize],
    cands: Vec<Candidate>,
    labels: &[String],
    order: &Ordering<'_>,
    n: usize,
    out: &mut Vec<usize>,
) {
    let Some((label, inner)) = labels.split_first() else {
        return fill_nodes(view, &cands, order, n, out);
    };
    let buckets = split(view, all, cands, label, order.service_id);
    let shares = share(&buckets, n);
    for (b, k) in buckets.into_iter().zip(shares) {
        if k > 0 {
            place_in(view, &b.all, b.cands, inner, order, k, out);
        }
    }
}

/// Groups nodes by their value of `label`; nodes without it share the bucket of "".
fn split(
    view: &ClusterView,
    all: &[usize],
    cands: Vec<Candidate>,
    label: &str,
    service_id: &str,
) -> Vec<Bucket> {
    let value = |i: usize| view.node_at(i).labels.get(label).map_or("", String::as_str);
    let mut buckets: BTreeMap<&str, Bucket> = BTreeMap::new();
    for &i in all {
        let b = buckets.entry(value(i)).or_default();
        b.tasks += view.node_at(i).service_tasks(service_id);
        b.all.push(i);
    }
    for c in cands {
        let b = buckets.entry(value(c.idx)).or_default();
        b.room = b.room.saturating_add(c.room);
        b.cands.push(c);
    }
    buckets.into_values().collect()
}

/// How many of `n` tasks each bucket gets: always the bucket with the fewest tasks of the
/// service (then the first by label value) among those with room left.
fn share(buckets: &[Bucket], n: usize) -> Vec<usize> {
    let mut given = vec![0; buckets.len()];
    let mut heap: BinaryHeap<Reverse<(usize, usize)>> = buckets
        .iter()
        .enumerate()
        .filter(|(_, b)| b.room > 0)
        .map(|(j, b)| Reverse((b.tasks, j)))
        .collect();
    for _ in 0..n {
        let Some(mut top) = heap.peek_mut() else { break };
        let j = top.0 .1;
        given[j] += 1;
        if given[j] == buckets[j].room {
            PeekMut::pop(top);
        } else {
            top.0 .0 += 1;
        }
    }
    given
}

/// Heap key of a node: faulty nodes last, then fewest tasks of the service, then fewest tasks
/// in total, then the node ID (nodes are sorted by ID, so the index stands for it).
type NodeKey = Reverse<(bool, usize, usize, usize, usize)>;

fn fill_nodes(
    view: &ClusterView,
    cands: &[Candidate],
    order: &Ordering<'_>,
    n: usize,
    out: &mut Vec<usize>,
) {
    let mut heap: BinaryHeap<NodeKey> = cands
        .iter()
        .enumerate()
        .map(|(j, c)| {
            let node = view.node_at(c.idx);
            let faulty = node.is_faulty(order.version, order.now_ms);
            Reverse((faulty, node.service_tasks(order.service_id), node.tasks_total, c.idx, j))
        })
        .collect();
    let mut left: Vec<usize> = cands.iter().map(|c| c.room).collect();
    for _ in 0..n {
        let Some(mut top) = heap.peek_mut() else { break };
        let (_, _, _, idx, j) = top.0;
        out.push(idx);
        left[j] -= 1;
        if left[j] == 0 {
            PeekMut::pop(top);
        } else {
            top.0 .1 += 1;
            top.0 .2 += 1;
        }
    }
}
