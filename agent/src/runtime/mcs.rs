//! SELinux multi-category security (MCS) pairs for tasks: where the node applies SELinux,
//! every live task gets two categories `cX,cY` (X < Y < 1024) no other live task on the node
//! holds, so its processes (`container_t:s0:cX,cY`) can reach only files with the same pair
//! (`container_file_t:s0:cX,cY`) — another task's rootfs, secrets and volumes stay out of
//! reach even with the same uid. Pairs are freed when tasks are deleted and claimed back from
//! the saved OCI configs when a restarted agent adopts its containers. No IO.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use rand::Rng;

/// Categories 0..CATEGORIES, as container-selinux uses (c0.c1023).
pub const CATEGORIES: u16 = 1024;

/// Two distinct categories, the lower first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct McsPair(u16, u16);

impl McsPair {
    /// The pair of `a` and `b` in either order; `None` unless both are distinct categories.
    pub fn new(a: u16, b: u16) -> Option<McsPair> {
        (a != b && a < CATEGORIES && b < CATEGORIES).then(|| McsPair(a.min(b), a.max(b)))
    }

    /// The level `s0:cX,cY`.
    pub fn level(self) -> String {
        format!("s0:{self}")
    }

    /// The pair in a label or level that ends `…:s0:cX,cY`; `None` for any other form.
    pub fn from_label(label: &str) -> Option<McsPair> {
        let cats = label.rsplit_once("s0:").map(|(_, c)| c)?;
        let (a, b) = cats.split_once(',')?;
        let num = |s: &str| s.strip_prefix('c')?.parse::<u16>().ok();
        McsPair::new(num(a)?, num(b)?)
    }
}

impl fmt::Display for McsPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{},c{}", self.0, self.1)
    }
}

/// The pairs live tasks hold on this node.
#[derive(Debug, Default)]
pub struct McsAllocator {
    inner: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    by_task: HashMap<String, McsPair>,
    /// How many tasks hold each pair (more than one only after adopting containers that
    /// already shared one).
    taken: HashMap<McsPair, usize>,
}

impl Held {
    fn hold(&mut self, task: &str, pair: McsPair) {
        *self.taken.entry(pair).or_default() += 1;
        if let Some(old) = self.by_task.insert(task.to_string(), pair) {
            self.drop_one(old);
        }
    }

    fn drop_one(&mut self, pair: McsPair) {
        if let Some(n) = self.taken.get_mut(&pair) {
            *n -= 1;
            if *n == 0 {
                self.taken.remove(&pair);
            }
        }
    }
}

/// Every pair is held: more live tasks than there are pairs (523,776).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("every SELinux category pair is held by a live task on this node")]
pub struct Exhausted;

impl McsAllocator {
    /// A random pair no live task holds, now held by `task` (the one it holds already, if any).
    pub fn allocate(&self, task: &str) -> Result<McsPair, Exhausted> {
        let mut held = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = held.by_task.get(task) {
            return Ok(*p);
        }
        let total = usize::from(CATEGORIES) * usize::from(CATEGORIES - 1) / 2;
        if held.taken.len() >= total {
            return Err(Exhausted);
        }
        let mut rng = rand::thread_rng();
        // Random probes first (the table is nearly always sparse), then a scan.
        let probe = (0..64).find_map(|_| {
            let p = McsPair::new(rng.gen_range(0..CATEGORIES), rng.gen_range(0..CATEGORIES))?;
            (!held.taken.contains_key(&p)).then_some(p)
        });
        let pair = match probe {
            Some(p) => p,
            None => (0..CATEGORIES)
                .flat_map(|a| (a + 1..CATEGORIES).map(move |b| McsPair(a, b)))
                .find(|p| !held.taken.contains_key(p))
                .ok_or(Exhausted)?,
        };
        held.hold(task, pair);
        Ok(pair)
    }

    /// Records that `task` holds `pair` (an adopted container's); false when another live
    /// task holds it already (the adopted one keeps running, but shares it).
    pub fn claim(&self, task: &str, pair: McsPair) -> bool {
        let mut held = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if held.by_task.get(task) == Some(&pair) {
            return true;
        }
        let free = !held.taken.contains_key(&pair);
        held.hold(task, pair);
        free
    }

    /// Frees `task`'s pair, if it holds one.
    pub fn release(&self, task: &str) {
        let mut held = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // A pair claimed twice stays taken while another task still holds it.
        if let Some(p) = held.by_task.remove(task) {
            held.drop_one(p);
        }
    }

    /// The pair `task` holds.
    pub fn of(&self, task: &str) -> Option<McsPair> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).by_task.get(task).copied()
    }

    /// How many pairs are held.
    pub fn held(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).taken.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pairs_read_back_from_labels() {
        let p = McsPair::new(900, 3).unwrap();
        assert_eq!(p.to_string(), "c3,c900");
        assert_eq!(p.level(), "s0:c3,c900");
        let label = format!("system_u:system_r:container_t:{}", p.level());
        assert_eq!(McsPair::from_label(&label), Some(p));
        for bad in ["", "s0", "x:s0:c1", "s0:c1,c1", "s0:c1,c1024", "s0:c1,c2,c3", "s0:1,2"] {
            assert_eq!(McsPair::from_label(bad), None, "{bad}");
        }
        assert_eq!(McsPair::new(5, 5), None);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Allocate(u8),
        Release(u8),
        /// An agent restart: a fresh allocator claims what the live tasks held.
        Restart,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..40).prop_map(Op::Allocate),
            2 => (0u8..40).prop_map(Op::Release),
            1 => Just(Op::Restart),
        ]
    }

    proptest! {
        /// Whatever the order of starts, stops and agent restarts, no two live tasks share a
        /// pair, a task keeps its pair while live, and a freed pair no longer counts as held.
        #[test]
        fn live_tasks_never_share_a_pair(ops in proptest::collection::vec(op(), 1..200)) {
            let mut mcs = McsAllocator::default();
            let mut live: HashMap<String, McsPair> = HashMap::new();
            for op in ops {
                match op {
                    Op::Allocate(t) => {
                        let id = format!("task{t}");
                        let p = mcs.allocate(&id).unwrap();
                        if let Some(before) = live.get(&id) {
                            prop_assert_eq!(*before, p, "a live task keeps its pair");
                        }
                        live.insert(id, p);
                    }
                    Op::Release(t) => {
                        let id = format!("task{t}");
                        mcs.release(&id);
                        live.remove(&id);
                        prop_assert_eq!(mcs.of(&id), None);
                    }
                    Op::Restart => {
                        let fresh = McsAllocator::default();
                        for (id, p) in &live {
                            prop_assert!(fresh.claim(id, *p), "recovered pairs are distinct");
                        }
                        mcs = fresh;
                    }
                }
                let distinct: std::collections::HashSet<_> = live.values().collect();
                prop_assert_eq!(distinct.len(), live.len(), "two live tasks share a pair");
                prop_assert_eq!(mcs.held(), live.len());
                for (id, p) in &live {
                    prop_assert_eq!(mcs.of(id), Some(*p));
                }
            }
        }
    }

    #[test]
    fn a_claimed_duplicate_stays_held_until_both_are_gone() {
        let mcs = McsAllocator::default();
        let p = McsPair::new(1, 2).unwrap();
        assert!(mcs.claim("a", p));
        assert!(!mcs.claim("b", p), "a second claim of one pair is reported");
        mcs.release("a");
        assert_eq!(mcs.held(), 1, "b still holds it");
        for _ in 0..200 {
            let id = format!("n{}", mcs.held());
            assert_ne!(mcs.allocate(&id).unwrap(), p);
        }
        mcs.release("b");
        assert!(mcs.claim("c", p));
    }
}
