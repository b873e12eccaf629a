//! A linearizability checker for recorded histories of a real system (Wing & Gong's search with
//! Lowe's memoisation, as Porcupine does it), partitioned per object (P-compositionality).
//!
//! A history is a list of [`Op`]s: what a client asked ([`Model::Input`]), when it asked, and
//! either what it got back and when ([`Outcome::Returned`]) or nothing known
//! ([`Outcome::Unknown`]: a timeout or a lost connection, so the operation may have taken effect
//! at any time after it was invoked, or never). A definite failure (the system said no and did
//! nothing) is an output like any other: the model says in which states that answer is right.
//!
//! The search: take the events in time order; repeatedly linearize a pending call whose model
//! step accepts its output, remembering `(set of linearized ops, model state)` pairs already
//! seen; when a return comes up whose call is not yet linearized, backtrack. An unknown op has
//! its return at the end of time, so it may be linearized anywhere after its call, including
//! after everything else (which is the same as never having happened).
//!
//! Owns no IO: it only judges histories. Never retries or times anything.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Debug;
use std::hash::Hash;

/// The sequential specification of one object.
pub trait Model {
    /// The object's state (absent, or present with what it holds).
    type State: Clone + Eq + Hash + Debug;
    /// What a client asked.
    type Input: Clone + Debug;
    /// What it was told.
    type Output: Clone + Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// The state after `input` answered with `output` in `state`, or `None` if that answer is
    /// impossible there.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: &Self::Output,
    ) -> Option<Self::State>;

    /// The state after `input` took effect with an answer nobody saw. Every state must allow
    /// some effect (possibly none): an unknown op can always be placed at the end.
    fn step_unknown(&self, state: &Self::State, input: &Self::Input) -> Self::State;
}

/// How an operation ended, as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<O> {
    /// An answer (success or a definite refusal) at this time.
    Returned { at: u64, output: O },
    /// No answer: it may have happened at any time after the call, or never.
    Unknown,
}

/// One operation of a history on one object.
#[derive(Clone, Debug)]
pub struct Op<I, O> {
    /// Which object it touched: histories are checked per key.
    pub key: String,
    /// When it was invoked (any monotonic unit, e.g. microseconds since the start).
    pub call: u64,
    pub input: I,
    pub outcome: Outcome<O>,
}

/// The verdict on one key's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order explains the history.
    Violation,
    /// The search gave up after its step budget: neither proven nor refuted.
    Undecided,
}

/// Where the search on a refuted key got furthest: how many ops it had placed, the state
/// they left, and the op it could not place there (whose return came before any order
/// could take it).
#[derive(Clone, Debug)]
pub struct Stuck {
    pub placed: usize,
    pub state: String,
    /// The blocking op's call and return times (`None`: it never returned).
    pub call: u64,
    pub ret: Option<u64>,
}

/// The verdict on a whole history.
#[derive(Debug)]
pub struct Report {
    /// Per key: its verdict and how many ops it had.
    pub keys: BTreeMap<String, (Verdict, usize)>,
    /// Per refuted key: where the search got furthest.
    pub stuck: BTreeMap<String, Stuck>,
    /// Search steps taken over all keys.
    pub steps: u64,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.keys.values().all(|(v, _)| *v == Verdict::Linearizable)
    }

    /// The keys whose history is not linearizable (or undecided), with their verdicts.
    pub fn failures(&self) -> Vec<(String, Verdict)> {
        let bad = self.keys.iter().filter(|(_, (v, _))| *v != Verdict::Linearizable);
        bad.map(|(k, (v, _))| (k.clone(), v.clone())).collect()
    }
}

/// One op of a model's history.
type OpOf<M> = Op<<M as Model>::Input, <M as Model>::Output>;

/// How many search steps one key may take before it is called undecided.
pub const DEFAULT_BUDGET: u64 = 20_000_000;

/// Checks every key's history of `ops` against `model`.
pub fn check<M: Model>(model: &M, ops: &[OpOf<M>], budget: u64) -> Report {
    let mut by_key: BTreeMap<&str, Vec<&OpOf<M>>> = BTreeMap::new();
    for op in ops {
        by_key.entry(&op.key).or_default().push(op);
    }
    let mut report = Report { keys: BTreeMap::new(), stuck: BTreeMap::new(), steps: 0 };
    for (key, ops) in by_key {
        let (verdict, steps, stuck) = check_one(model, &ops, budget);
        report.steps += steps;
        if let (Verdict::Violation, Some(stuck)) = (&verdict, stuck) {
            report.stuck.insert(key.to_string(), stuck);
        }
        report.keys.insert(key.to_string(), (verdict, ops.len()));
    }
    report
}

/// One event of the time-ordered list: the call or the return of op `op`.
#[derive(Clone, Copy, Debug)]
struct Event {
    op: usize,
    is_call: bool,
}

/// The events as a doubly linked list over indices, so an op's two events can be lifted out and
/// put back in O(1). Index 0 is the head sentinel.
struct Events {
    ev: Vec<Event>,
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Per op: the index of its call and of its return.
    call_of: Vec<usize>,
    ret_of: Vec<usize>,
}

const NIL: usize = usize::MAX;

impl Events {
    /// Calls before returns at equal times: ops that touch in time count as concurrent (the
    /// lenient reading of clocks that cannot tell).
    fn new<I, O>(ops: &[&Op<I, O>]) -> Events {
        let mut timed: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            timed.push((op.call, false, i));
            let ret = match op.outcome {
                Outcome::Returned { at, .. } => at.max(op.call),
                Outcome::Unknown => u64::MAX,
            };
            timed.push((ret, true, i));
        }
        // (time, is_return, op): calls (false) sort before returns (true) at the same time.
        timed.sort();
        let n = timed.len();
        let mut ev = vec![Event { op: NIL, is_call: false }];
        let (mut call_of, mut ret_of) = (vec![0; ops.len()], vec![0; ops.len()]);
        for (k, (_, is_ret, op)) in timed.into_iter().enumerate() {
            ev.push(Event { op, is_call: !is_ret });
            if is_ret {
                ret_of[op] = k + 1;
            } else {
                call_of[op] = k + 1;
            }
        }
        let next = (0..=n).map(|i| if i == n { NIL } else { i + 1 }).collect();
        let prev = (0..=n).map(|i| if i == 0 { NIL } else { i - 1 }).collect();
        Events { ev, next, prev, call_of, ret_of }
    }

    fn unlink(&mut self, i: usize) {
        let (p, n) = (self.prev[i], self.next[i]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, i: usize) {
        let (p, n) = (self.prev[i], self.next[i]);
        self.next[p] = i;
        if n != NIL {
            self.prev[n] = i;
        }
    }

    /// Takes op `op`'s call and return out of the list.
    fn lift(&mut self, op: usize) {
        self.unlink(self.call_of[op]);
        self.unlink(self.ret_of[op]);
    }

    /// Puts them back (in the reverse order of [`Events::lift`]).
    fn unlift(&mut self, op: usize) {
        self.relink(self.ret_of[op]);
        self.relink(self.call_of[op]);
    }
}

/// A set of op indices.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// The search on one key's ops. Returns the verdict, the steps it took, and where a refuted
/// search got furthest.
fn check_one<M: Model>(model: &M, ops: &[&OpOf<M>], budget: u64) -> (Verdict, u64, Option<Stuck>) {
    let mut list = Events::new(ops);
    let mut seen: HashSet<(Bits, M::State)> = HashSet::new();
    let mut linearized = Bits::new(ops.len());
    let mut state = model.init();
    // What to go back to: the op linearized and the state before it.
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut entry = list.next[0];
    let mut steps = 0u64;
    let mut furthest: Option<Stuck> = None;
    while list.next[0] != NIL {
        steps += 1;
        if steps > budget {
            return (Verdict::Undecided, steps, None);
        }
        if entry != NIL && list.ev[entry].is_call {
            let i = list.ev[entry].op;
            let after = match &ops[i].outcome {
                Outcome::Returned { output, .. } => model.step(&state, &ops[i].input, output),
                Outcome::Unknown => Some(model.step_unknown(&state, &ops[i].input)),
            };
            if let Some(after) = after {
                let mut with = linearized.clone();
                with.set(i);
                if seen.insert((with.clone(), after.clone())) {
                    stack.push((i, std::mem::replace(&mut state, after)));
                    linearized = with;
                    list.lift(i);
                    entry = list.next[0];
                    continue;
                }
            }
            entry = list.next[entry];
        } else {
            // A return whose call is not linearized (or the end of the list): undo the last
            // choice and try the next call after it.
            if entry != NIL && furthest.as_ref().is_none_or(|f| stack.len() > f.placed) {
                let op = ops[list.ev[entry].op];
                let ret = match op.outcome {
                    Outcome::Returned { at, .. } => Some(at),
                    Outcome::Unknown => None,
                };
                let state = format!("{state:?}");
                furthest = Some(Stuck { placed: stack.len(), state, call: op.call, ret });
            }
            let Some((i, before)) = stack.pop() else {
                return (Verdict::Violation, steps, furthest);
            };
            state = before;
            linearized.clear(i);
            list.unlift(i);
            entry = list.next[list.call_of[i]];
        }
    }
    (Verdict::Linearizable, steps, None)
}

#[cfg(test)]
mod tests;
