//! The sequential specification of what the chaos clients touch: one object per name, a
//! service or a secret, absent or present with what it holds. Shoal's real answers are outputs:
//! `AlreadyExists`, `NotFound`, and a service update based on an older version (`Changed`).
//!
//! Every write carries a value no other write has (a tag, secret data of its own), so a read
//! tells exactly which write it saw. IDs are learnt from the answers; an object created by an
//! op whose outcome is unknown gets its ID from the first read that shows it.

use std::collections::BTreeSet;

use super::linearizability::Model;

/// One object's state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum State {
    Absent,
    Service {
        /// `None` until an answer shows it (created by an op with no answer).
        id: Option<String>,
        replicas: u64,
        /// The `chaos` label: the tag of the write that set it.
        tag: String,
        /// Names of the secrets its tasks get.
        secrets: BTreeSet<String>,
    },
    Secret {
        id: Option<String>,
        /// The latest version (1 at creation; every update adds one).
        latest: u64,
    },
}

/// What a client asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    CreateService {
        replicas: u64,
        tag: String,
        secrets: BTreeSet<String>,
    },
    /// `service update --replicas R --label-add chaos=TAG [--secret-add A] [--secret-rm B]`.
    UpdateService {
        replicas: u64,
        tag: String,
        add: Option<String>,
        rm: Option<String>,
    },
    RemoveService,
    InspectService,
    /// `secret create NAME -` with data of its own.
    CreateSecret,
    /// `secret update NAME -` with data of its own (never the same as before: a new version).
    UpdateSecret,
    RemoveSecret,
    InspectSecret,
}

/// What it was told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// A create succeeded with this ID.
    Created {
        id: String,
    },
    /// A service update or a remove succeeded.
    Done,
    /// A secret update made this version.
    Version(u64),
    /// An inspect of a service.
    Service {
        id: String,
        replicas: u64,
        tag: String,
        secrets: BTreeSet<String>,
    },
    /// An inspect of a secret.
    Secret {
        id: String,
        latest: u64,
    },
    NotFound,
    AlreadyExists,
    /// A service update refused because the service changed since the CLI read it.
    Changed,
}

impl Input {
    /// Whether it changes nothing.
    pub fn is_read(&self) -> bool {
        matches!(self, Input::InspectService | Input::InspectSecret)
    }

    /// A short name of the operation, for counts.
    pub fn kind(&self) -> &'static str {
        match self {
            Input::CreateService { .. } => "service create",
            Input::UpdateService { .. } => "service update",
            Input::RemoveService => "service rm",
            Input::InspectService => "service inspect",
            Input::CreateSecret => "secret create",
            Input::UpdateSecret => "secret update",
            Input::RemoveSecret => "secret rm",
            Input::InspectSecret => "secret inspect",
        }
    }
}

/// The model of one service or secret name.
#[derive(Debug, Default)]
pub struct Objects;

/// Whether a known ID is `seen`, or the unknown one is bound to it: the ID after the read.
fn same_id(known: &Option<String>, seen: &str) -> Option<Option<String>> {
    match known {
        Some(id) if id != seen => None,
        _ => Some(Some(seen.to_string())),
    }
}

fn updated(
    secrets: &BTreeSet<String>,
    add: &Option<String>,
    rm: &Option<String>,
) -> BTreeSet<String> {
    let mut s = secrets.clone();
    if let Some(r) = rm {
        s.remove(r);
    }
    if let Some(a) = add {
        s.insert(a.clone());
    }
    s
}

impl Model for Objects {
    type State = State;
    type Input = Input;
    type Output = Output;

    fn init(&self) -> State {
        State::Absent
    }

    fn step(&self, state: &State, input: &Input, output: &Output) -> Option<State> {
        use {Input as I, Output as O, State as S};
        match (state, input, output) {
            (S::Absent, I::CreateService { replicas, tag, secrets }, O::Created { id }) => {
                Some(S::Service {
                    id: Some(id.clone()),
                    replicas: *replicas,
                    tag: tag.clone(),
                    secrets: secrets.clone(),
                })
            }
            (S::Service { .. }, I::CreateService { .. }, O::AlreadyExists) => Some(state.clone()),
            (
                S::Service { id, secrets, .. },
                I::UpdateService { replicas, tag, add, rm },
                O::Done,
            ) => Some(S::Service {
                id: id.clone(),
                replicas: *replicas,
                tag: tag.clone(),
                secrets: updated(secrets, add, rm),
            }),
            // Another write came between the CLI's read and its write: nothing changed.
            (_, I::UpdateService { .. }, O::Changed) => Some(state.clone()),
            (S::Service { .. }, I::RemoveService, O::Done) => Some(S::Absent),
            (S::Service { id, replicas, tag, secrets }, I::InspectService, O::Service { .. }) => {
                let O::Service { id: seen, replicas: r, tag: t, secrets: s } = output else {
                    return None;
                };
                let id = same_id(id, seen)?;
                (r == replicas && t == tag && s == secrets).then(|| S::Service {
                    id,
                    replicas: *replicas,
                    tag: tag.clone(),
                    secrets: secrets.clone(),
                })
            }
            (S::Absent, I::CreateSecret, O::Created { id }) => {
                Some(S::Secret { id: Some(id.clone()), latest: 1 })
            }
            (S::Secret { .. }, I::CreateSecret, O::AlreadyExists) => Some(state.clone()),
            (S::Secret { id, latest }, I::UpdateSecret, O::Version(v)) => {
                (*v == latest + 1).then(|| S::Secret { id: id.clone(), latest: *v })
            }
            (S::Secret { .. }, I::RemoveSecret, O::Done) => Some(S::Absent),
            (S::Secret { id, latest }, I::InspectSecret, O::Secret { id: seen, latest: l }) => {
                let id = same_id(id, seen)?;
                (l == latest).then_some(S::Secret { id, latest: *latest })
            }
            (
                S::Absent,
                I::UpdateService { .. }
                | I::RemoveService
                | I::InspectService
                | I::UpdateSecret
                | I::RemoveSecret
                | I::InspectSecret,
                O::NotFound,
            ) => Some(S::Absent),
            _ => None,
        }
    }

    fn step_unknown(&self, state: &State, input: &Input) -> State {
        use {Input as I, State as S};
        match (state, input) {
            (S::Absent, I::CreateService { replicas, tag, secrets }) => S::Service {
                id: None,
                replicas: *replicas,
                tag: tag.clone(),
                secrets: secrets.clone(),
            },
            (S::Service { id, secrets, .. }, I::UpdateService { replicas, tag, add, rm }) => {
                S::Service {
                    id: id.clone(),
                    replicas: *replicas,
                    tag: tag.clone(),
                    secrets: updated(secrets, add, rm),
                }
            }
            (S::Service { .. }, I::RemoveService) | (S::Secret { .. }, I::RemoveSecret) => {
                S::Absent
            }
            (S::Absent, I::CreateSecret) => S::Secret { id: None, latest: 1 },
            (S::Secret { id, latest }, I::UpdateSecret) => {
                S::Secret { id: id.clone(), latest: latest + 1 }
            }
            // Refused (the object is absent, or already there), or a read: no change.
            _ => state.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::linearizability::{check, Op, Outcome, Verdict, DEFAULT_BUDGET};
    use super::*;

    fn op(call: u64, ret: u64, input: Input, output: Output) -> Op<Input, Output> {
        Op { key: "s".into(), call, input, outcome: Outcome::Returned { at: ret, output } }
    }

    fn verdict(ops: &[Op<Input, Output>]) -> Verdict {
        check(&Objects, ops, DEFAULT_BUDGET).keys["s"].0.clone()
    }

    fn create(tag: &str) -> Input {
        Input::CreateService { replicas: 1, tag: tag.into(), secrets: BTreeSet::new() }
    }

    fn seen(id: &str, replicas: u64, tag: &str) -> Output {
        Output::Service { id: id.into(), replicas, tag: tag.into(), secrets: BTreeSet::new() }
    }

    #[test]
    fn a_second_create_of_one_name_is_refused() {
        let created = || Output::Created { id: "a".into() };
        let h = [op(0, 1, create("t1"), created()), op(2, 3, create("t2"), Output::AlreadyExists)];
        assert_eq!(verdict(&h), Verdict::Linearizable);
        // Two acknowledged creates of one name without a remove between them: a violation.
        let h = [op(0, 1, create("t1"), created()), op(2, 3, create("t2"), created())];
        assert_eq!(verdict(&h), Verdict::Violation);
    }

    #[test]
    fn an_acknowledged_remove_is_not_undone() {
        let h = [
            op(0, 1, create("t1"), Output::Created { id: "a".into() }),
            op(2, 3, Input::RemoveService, Output::Done),
            op(4, 5, Input::InspectService, seen("a", 1, "t1")),
        ];
        assert_eq!(verdict(&h), Verdict::Violation);
    }

    #[test]
    fn an_update_is_seen_with_the_id_of_its_service() {
        let up = Input::UpdateService { replicas: 3, tag: "t2".into(), add: None, rm: None };
        let h = [
            op(0, 1, create("t1"), Output::Created { id: "a".into() }),
            op(2, 3, up.clone(), Output::Done),
            op(4, 5, Input::InspectService, seen("a", 3, "t2")),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable);
        let mut h = h.to_vec();
        h[2] = op(4, 5, Input::InspectService, seen("b", 3, "t2"));
        assert_eq!(verdict(&h), Verdict::Violation, "another ID");
        h[2] = op(4, 5, Input::InspectService, seen("a", 1, "t1"));
        assert_eq!(verdict(&h), Verdict::Violation, "the update lost");
    }

    #[test]
    fn an_unknown_create_binds_the_id_a_read_shows() {
        let lost = Op { key: "s".into(), call: 0, input: create("t1"), outcome: Outcome::Unknown };
        let h = [
            lost.clone(),
            op(10, 11, Input::InspectService, seen("x", 1, "t1")),
            op(12, 13, Input::InspectService, seen("x", 1, "t1")),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable);
        let h = [
            lost,
            op(10, 11, Input::InspectService, seen("x", 1, "t1")),
            op(12, 13, Input::InspectService, seen("y", 1, "t1")),
        ];
        assert_eq!(verdict(&h), Verdict::Violation);
    }

    #[test]
    fn secret_versions_go_up_by_one_per_update() {
        let h = [
            op(0, 1, Input::CreateSecret, Output::Created { id: "s1".into() }),
            op(2, 3, Input::UpdateSecret, Output::Version(2)),
            op(4, 5, Input::UpdateSecret, Output::Version(3)),
            op(6, 7, Input::InspectSecret, Output::Secret { id: "s1".into(), latest: 3 }),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable);
        let mut twice = h.to_vec();
        twice[2] = op(4, 5, Input::UpdateSecret, Output::Version(2));
        twice.pop();
        assert_eq!(verdict(&twice), Verdict::Violation, "two updates made one version");
        // An update whose answer was lost may have made version 2 before the next one.
        let mut lost = h.to_vec();
        lost[1] =
            Op { key: "s".into(), call: 2, input: Input::UpdateSecret, outcome: Outcome::Unknown };
        assert_eq!(verdict(&lost), Verdict::Linearizable);
    }

    #[test]
    fn a_refused_update_of_a_changed_service_changes_nothing() {
        let up = Input::UpdateService { replicas: 2, tag: "t2".into(), add: None, rm: None };
        let h = [
            op(0, 1, create("t1"), Output::Created { id: "a".into() }),
            op(2, 3, up, Output::Changed),
            op(4, 5, Input::InspectService, seen("a", 1, "t1")),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable);
    }
}
