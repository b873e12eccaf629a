//! Every client call of a run as the client saw it: when it was invoked, when it returned and
//! with what, or that nobody knows. Shared by the client threads; read by the checker and the
//! report.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::linearizability::{Op, Outcome};
use super::model::{Input, Output};

/// How a call ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The cluster answered (a success, or a refusal that changed nothing).
    Known(Output),
    /// Timed out or unavailable: it may or may not have taken effect.
    Unknown(String),
    /// Never reached a daemon (its socket refused the connection): it did nothing. Kept for
    /// the counts, left out of the check.
    NotSent(String),
}

/// One call.
#[derive(Clone, Debug)]
pub struct Record {
    /// The client thread (`usize::MAX` for the final reads).
    pub client: usize,
    /// The manager it went to.
    pub via: String,
    /// The object's name.
    pub key: String,
    pub input: Input,
    pub call: Duration,
    /// When it returned (also for unknown outcomes: when the client gave up).
    pub ret: Duration,
    pub answer: Answer,
}

impl Record {
    /// `ok`, `refused` (a definite no), `unknown` or `not sent`, for counts.
    pub fn class(&self) -> &'static str {
        use Output::*;
        match &self.answer {
            Answer::Known(NotFound | AlreadyExists | Changed) => "refused",
            Answer::Known(_) => "ok",
            Answer::Unknown(_) => "unknown",
            Answer::NotSent(_) => "not sent",
        }
    }

    fn show(&self) -> String {
        let who =
            if self.client == usize::MAX { "final".into() } else { format!("c{}", self.client) };
        let answer = match &self.answer {
            Answer::Known(o) => format!("{o:?}"),
            Answer::Unknown(why) => format!("UNKNOWN ({why})"),
            Answer::NotSent(why) => format!("not sent ({why})"),
        };
        format!(
            "[{:>8.3}s..{:>8.3}s] {who} via {}: {} {:?} -> {answer}",
            self.call.as_secs_f64(),
            self.ret.as_secs_f64(),
            self.via,
            self.key,
            self.input
        )
    }
}

/// The history of a run.
#[derive(Debug)]
pub struct History {
    pub t0: Instant,
    records: Mutex<Vec<Record>>,
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

impl History {
    pub fn new() -> History {
        History { t0: Instant::now(), records: Mutex::new(Vec::new()) }
    }

    /// Time since the start of the run.
    pub fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    pub fn push(&self, r: Record) {
        self.records.lock().unwrap_or_else(|p| p.into_inner()).push(r);
    }

    pub fn records(&self) -> Vec<Record> {
        self.records.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The calls as the checker takes them, in microseconds: answered ones with their
    /// answer, unknown writes with none; unknown reads and calls never sent say nothing.
    pub fn ops(&self) -> Vec<Op<Input, Output>> {
        let us = |d: Duration| d.as_micros() as u64;
        let mut ops = Vec::new();
        for r in self.records() {
            let outcome = match r.answer {
                Answer::Known(output) => Outcome::Returned { at: us(r.ret), output },
                Answer::Unknown(_) if !r.input.is_read() => Outcome::Unknown,
                _ => continue,
            };
            ops.push(Op { key: r.key, call: us(r.call), input: r.input, outcome });
        }
        ops
    }

    /// Counts per operation kind and outcome class.
    pub fn counts(&self) -> BTreeMap<(&'static str, &'static str), usize> {
        let mut counts = BTreeMap::new();
        for r in self.records() {
            *counts.entry((r.input.kind(), r.class())).or_default() += 1;
        }
        counts
    }

    /// The calls on `key`, one a line, in call order.
    pub fn show_key(&self, key: &str) -> String {
        let mut rs: Vec<Record> = self.records().into_iter().filter(|r| r.key == key).collect();
        rs.sort_by_key(|r| r.call);
        rs.iter().map(|r| format!("  {}\n", r.show())).collect()
    }

    /// The calls on `key` that overlap `[from, to]` (microseconds), one a line, in call order.
    pub fn show_key_between(&self, key: &str, from: u64, to: u64) -> String {
        let us = |d: Duration| d.as_micros() as u64;
        let mut rs: Vec<Record> = self
            .records()
            .into_iter()
            .filter(|r| r.key == key && us(r.call) <= to && us(r.ret) >= from)
            .collect();
        rs.sort_by_key(|r| r.call);
        rs.iter().map(|r| format!("  {}\n", r.show())).collect()
    }

    /// Every call, one a line, in call order.
    pub fn show_all(&self) -> String {
        let mut rs = self.records();
        rs.sort_by_key(|r| r.call);
        rs.iter().map(|r| format!("{}\n", r.show())).collect()
    }
}
