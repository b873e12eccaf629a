//! The checker on small hand-made histories that are and are not linearizable, and on random
//! ones against a brute-force search over every order.

use super::*;
use proptest::prelude::*;

/// A read/write register holding a number, 0 at first.
struct Register;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum In {
    Write(u8),
    Read,
}

impl Model for Register {
    type State = u8;
    type Input = In;
    /// What a read returned (writes return 0, ignored).
    type Output = u8;

    fn init(&self) -> u8 {
        0
    }

    fn step(&self, state: &u8, input: &In, output: &u8) -> Option<u8> {
        match input {
            In::Write(v) => Some(*v),
            In::Read => (output == state).then_some(*state),
        }
    }

    fn step_unknown(&self, state: &u8, input: &In) -> u8 {
        match input {
            In::Write(v) => *v,
            In::Read => *state,
        }
    }
}

fn op(call: u64, ret: u64, input: In, output: u8) -> Op<In, u8> {
    Op { key: "x".into(), call, input, outcome: Outcome::Returned { at: ret, output } }
}

fn lost(call: u64, input: In) -> Op<In, u8> {
    Op { key: "x".into(), call, input, outcome: Outcome::Unknown }
}

fn verdict(ops: &[Op<In, u8>]) -> Verdict {
    let r = check(&Register, ops, DEFAULT_BUDGET);
    r.keys.get("x").map(|(v, _)| v.clone()).unwrap_or(Verdict::Linearizable)
}

#[test]
fn sequential_history_that_follows_the_model_is_linearizable() {
    let h = [op(0, 1, In::Write(1), 0), op(2, 3, In::Read, 1), op(4, 5, In::Write(2), 0)];
    assert_eq!(verdict(&h), Verdict::Linearizable);
    assert_eq!(verdict(&[]), Verdict::Linearizable);
}

#[test]
fn stale_read_after_an_acknowledged_write_is_a_violation() {
    // The classic: the write of 1 returned before the read began, yet the read saw 0.
    let h = [op(0, 10, In::Write(1), 0), op(11, 12, In::Read, 0)];
    assert_eq!(verdict(&h), Verdict::Violation);
    // The report names the read, after the write, as where it got stuck.
    let stuck = &check(&Register, &h, DEFAULT_BUDGET).stuck["x"];
    assert_eq!((stuck.placed, stuck.state.as_str(), stuck.call, stuck.ret), (1, "1", 11, Some(12)));
    // Overlapping, the same read is fine: it may come before the write.
    let h = [op(0, 10, In::Write(1), 0), op(9, 12, In::Read, 0)];
    assert_eq!(verdict(&h), Verdict::Linearizable);
}

#[test]
fn reads_that_go_back_in_time_are_a_violation() {
    // Two reads during a long write: once one saw the new value, a later one may not see the
    // old one.
    let h = [op(0, 100, In::Write(1), 0), op(10, 20, In::Read, 1), op(30, 40, In::Read, 0)];
    assert_eq!(verdict(&h), Verdict::Violation);
    // The other way round is fine.
    let h = [op(0, 100, In::Write(1), 0), op(10, 20, In::Read, 0), op(30, 40, In::Read, 1)];
    assert_eq!(verdict(&h), Verdict::Linearizable);
}

#[test]
fn a_value_never_written_is_a_violation() {
    let h = [op(0, 1, In::Write(1), 0), op(0, 5, In::Read, 7)];
    assert_eq!(verdict(&h), Verdict::Violation);
}

#[test]
fn concurrent_writes_may_land_in_either_order_but_reads_must_agree() {
    let w = |a, b, v| op(a, b, In::Write(v), 0);
    let r = |a, b, v| op(a, b, In::Read, v);
    let ok = [w(0, 10, 1), w(0, 10, 2), r(20, 21, 1), r(22, 23, 1)];
    assert_eq!(verdict(&ok), Verdict::Linearizable);
    let ok = [w(0, 10, 1), w(0, 10, 2), r(20, 21, 2)];
    assert_eq!(verdict(&ok), Verdict::Linearizable);
    // After both writes returned, the register holds one of them for good.
    let bad = [w(0, 10, 1), w(0, 10, 2), r(20, 21, 1), r(22, 23, 2)];
    assert_eq!(verdict(&bad), Verdict::Violation);
}

#[test]
fn an_unknown_write_may_take_effect_late_or_never() {
    // It never took effect: reads keep seeing 0.
    let h = [lost(0, In::Write(5)), op(10, 11, In::Read, 0), op(12, 13, In::Read, 0)];
    assert_eq!(verdict(&h), Verdict::Linearizable);
    // It took effect long after its call (after the first read).
    let h = [lost(0, In::Write(5)), op(10, 11, In::Read, 0), op(12, 13, In::Read, 5)];
    assert_eq!(verdict(&h), Verdict::Linearizable);
    // But not twice, and not undone: 0, 5, then 0 again cannot be explained.
    let h = [
        lost(0, In::Write(5)),
        op(10, 11, In::Read, 0),
        op(12, 13, In::Read, 5),
        op(14, 15, In::Read, 0),
    ];
    assert_eq!(verdict(&h), Verdict::Violation);
}

#[test]
fn an_unknown_write_cannot_take_effect_before_its_call() {
    let h = [op(0, 1, In::Read, 5), lost(10, In::Write(5))];
    assert_eq!(verdict(&h), Verdict::Violation);
}

#[test]
fn an_acknowledged_write_cannot_be_lost_behind_an_unknown_one() {
    // Unknown write of 5, then acknowledged write of 6: a read after both may show 6, or 5 if
    // the unknown one landed late; never the initial 0.
    let base = [lost(0, In::Write(5)), op(10, 20, In::Write(6), 0)];
    for (seen, want) in
        [(6, Verdict::Linearizable), (5, Verdict::Linearizable), (0, Verdict::Violation)]
    {
        let mut h = base.to_vec();
        h.push(op(30, 31, In::Read, seen));
        assert_eq!(verdict(&h), want, "read {seen}");
    }
}

#[test]
fn keys_are_checked_apart() {
    let mut h = vec![op(0, 1, In::Write(1), 0), op(2, 3, In::Read, 1)];
    let mut other = op(0, 1, In::Read, 1);
    other.key = "y".into(); // y was never written: a violation on y only
    h.push(other);
    let r = check(&Register, &h, DEFAULT_BUDGET);
    assert!(!r.ok());
    assert_eq!(r.failures(), vec![("y".to_string(), Verdict::Violation)]);
    assert_eq!(r.keys["x"], (Verdict::Linearizable, 2));
}

#[test]
fn a_search_over_its_budget_is_undecided_not_passed() {
    // Many concurrent writes and a read of a value that was never written: refuting it takes
    // more than a handful of steps.
    let mut h: Vec<_> = (1..=8).map(|v| op(0, 100, In::Write(v), 0)).collect();
    h.push(op(200, 201, In::Read, 99));
    let r = check(&Register, &h, 5);
    assert_eq!(r.keys["x"].0, Verdict::Undecided);
    assert!(!r.ok());
    assert_eq!(verdict(&h), Verdict::Violation);
}

/// Whether some order of `ops` that keeps real-time order (an op that returned before another
/// was called comes first; unknown ops never return) follows the model: every permutation.
fn brute_force(ops: &[Op<In, u8>]) -> bool {
    fn ret(op: &Op<In, u8>) -> u64 {
        match op.outcome {
            Outcome::Returned { at, .. } => at,
            Outcome::Unknown => u64::MAX,
        }
    }
    fn go(ops: &[Op<In, u8>], used: &mut Vec<bool>, state: u8) -> bool {
        if used.iter().all(|u| *u) {
            return true;
        }
        for i in 0..ops.len() {
            if used[i] {
                continue;
            }
            // i may go next only if no unused op returned before i was called.
            let blocked = (0..ops.len()).any(|j| j != i && !used[j] && ret(&ops[j]) < ops[i].call);
            if blocked {
                continue;
            }
            let next = match &ops[i].outcome {
                Outcome::Returned { output, .. } => Register.step(&state, &ops[i].input, output),
                Outcome::Unknown => Some(Register.step_unknown(&state, &ops[i].input)),
            };
            if let Some(next) = next {
                used[i] = true;
                let ok = go(ops, used, next);
                used[i] = false;
                if ok {
                    return true;
                }
            }
        }
        false
    }
    go(ops, &mut vec![false; ops.len()], 0)
}

/// A random small history: writes of 1..=3 and reads that see 0..=3, random intervals, some
/// outcomes unknown.
fn small_history() -> impl Strategy<Value = Vec<Op<In, u8>>> {
    let one = (0u64..20, 0u64..8, any::<bool>(), 0u8..4, prop::bool::weighted(0.15));
    prop::collection::vec(one, 0..7).prop_map(|raw| {
        raw.into_iter()
            .map(|(call, len, write, v, unknown)| {
                let input = if write { In::Write(v.max(1)) } else { In::Read };
                if unknown {
                    lost(call, input)
                } else {
                    op(call, call + len, input, if write { 0 } else { v })
                }
            })
            .collect()
    })
}

/// A history that is linearizable by construction: ops applied one after another at points
/// 10 apart, each given a random interval around its point; some made unknown.
fn linearizable_history() -> impl Strategy<Value = Vec<Op<In, u8>>> {
    let one = (any::<bool>(), 1u8..50, 0u64..25, 0u64..25, prop::bool::weighted(0.2));
    prop::collection::vec(one, 0..40).prop_map(|raw| {
        let mut state = 0u8;
        let mut out = Vec::new();
        for (k, (write, v, before, after, unknown)) in raw.into_iter().enumerate() {
            let point = 100 + 10 * k as u64;
            let input = if write { In::Write(v) } else { In::Read };
            let seen = state;
            if write {
                state = v;
            }
            out.push(if unknown && write {
                lost(point - before, input)
            } else {
                op(point - before, point + after, input, if write { 0 } else { seen })
            });
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn agrees_with_brute_force_on_small_histories(h in small_history()) {
        let linearizable = verdict(&h) == Verdict::Linearizable;
        prop_assert_eq!(linearizable, brute_force(&h), "history {:?}", h);
    }

    #[test]
    fn accepts_histories_linearizable_by_construction(h in linearizable_history()) {
        prop_assert_eq!(verdict(&h), Verdict::Linearizable);
    }

    #[test]
    fn refuses_a_read_of_a_value_nobody_wrote(h in linearizable_history(), at in 0u64..500) {
        let mut h = h;
        h.push(op(at, at + 5, In::Read, 200));
        prop_assert_eq!(verdict(&h), Verdict::Violation);
    }
}
