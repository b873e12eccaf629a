//! Owns what people may do (issue #18): users, teams, roles and grants in the store, the
//! decision for one call (subject × operation × collection), and the audit log.
//!
//! A grant maps one subject (`user:NAME` or `team:NAME`) to one role (a set of operations) on
//! one collection (a path such as `/shared/prod`, covering its children). Every object belongs
//! to one collection, named by its `com.shoal.collection` label (`/shared` when unset, `/system`
//! for nodes). The local socket and manager certificates keep full control; a user certificate
//! gets what its grants give, decided on every call (so removing a user or a grant takes effect
//! on open connections too).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use shoal_pki::UserIdentity;
use shoal_proto::{AccessRole, ContainerSpec, Grant, Team, User};
use tonic::Status;

use crate::authz::Caller;
use crate::store::Store;

/// The label naming an object's collection.
pub const COLLECTION_LABEL: &str = "com.shoal.collection";
/// Where objects people make go when they name no collection.
pub const DEFAULT_COLLECTION: &str = "/shared";
/// Where nodes are.
pub const SYSTEM_COLLECTION: &str = "/system";

/// Every operation a role may hold.
pub const OPS: &[&str] = &[
    "node.view",
    "node.availability",
    "node.update",
    "node.admin",
    "service.view",
    "service.logs",
    "service.create",
    "service.update",
    "service.remove",
    "service.widen",
    "secret.read-metadata",
    "secret.create",
    "secret.update",
    "secret.remove",
    "secret.use",
    "config.read-metadata",
    "config.create",
    "config.update",
    "config.remove",
    "config.use",
    "network.view",
    "network.create",
    "network.remove",
    "network.use",
    "swarm.view",
    "swarm.admin",
    "access.admin",
];

const VIEW: &[&str] = &[
    "node.view",
    "service.view",
    "service.logs",
    "secret.read-metadata",
    "config.read-metadata",
    "network.view",
    "swarm.view",
];

/// What `restricted-control` leaves out: host-widening options and the cluster's own keys.
const NOT_RESTRICTED: &[&str] = &["service.widen", "node.admin", "swarm.admin", "access.admin"];

/// The built-in roles, by name.
pub const BUILT_IN: &[&str] =
    &["none", "view-only", "restricted-control", "scheduler", "full-control"];

/// The operations of a built-in role.
pub fn built_in(name: &str) -> Option<BTreeSet<&'static str>> {
    Some(match name {
        "none" => BTreeSet::new(),
        "view-only" => VIEW.iter().copied().collect(),
        "restricted-control" => {
            OPS.iter().copied().filter(|o| !NOT_RESTRICTED.contains(o)).collect()
        }
        "scheduler" => ["node.view", "node.availability"].into_iter().collect(),
        "full-control" => OPS.iter().copied().collect(),
        _ => return None,
    })
}

/// A collection path: `/` or `/a/b` of names (letters, digits, `.`, `_`, `-`).
pub fn check_collection(path: &str) -> Result<(), Status> {
    let ok = path == "/"
        || (path.starts_with('/')
            && !path.ends_with('/')
            && path.len() <= 256
            && path[1..].split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            }));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "collection {path:?}: use / or /NAME[/NAME…] with letters, digits, '.', '_' and '-'"
        )))
    }
}

/// Whether a grant on `grant` covers an object in `object`.
pub fn covers(grant: &str, object: &str) -> bool {
    grant == "/"
        || object == grant
        || (object.starts_with(grant) && object.as_bytes().get(grant.len()) == Some(&b'/'))
}

/// The collection of an object with `labels` (`default` when it names none).
pub fn collection_of<'a>(
    labels: &'a std::collections::HashMap<String, String>,
    default: &'a str,
) -> &'a str {
    labels.get(COLLECTION_LABEL).map(String::as_str).filter(|c| !c.is_empty()).unwrap_or(default)
}

/// The host-widening options of a container spec, for `service.widen`.
pub fn widenings(c: &ContainerSpec) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(set) = shoal_proto::spec::caps::effective(&c.cap_add, &c.cap_drop) {
        out.extend(shoal_proto::spec::caps::widening(&set).iter().map(|c| format!("cap-add {c}")));
    }
    if c.mounts.iter().any(|m| m.r#type == "bind") {
        out.push("bind mounts".into());
    }
    if !matches!(c.seccomp.as_str(), "" | "default") {
        out.push(format!(
            "seccomp {}",
            if c.seccomp == "unconfined" { "unconfined" } else { "profile" }
        ));
    }
    if c.allow_new_privileges {
        out.push("no-new-privileges off".into());
    }
    if c.landlock_off {
        out.push("landlock off".into());
    }
    if let Some(o) = &c.selinux {
        out.extend(shoal_proto::spec::mac::selinux_option_names(o));
    }
    if !matches!(c.apparmor.as_str(), "" | shoal_proto::spec::mac::APPARMOR_DEFAULT) {
        out.push(format!("apparmor={}", c.apparmor));
    }
    out
}

/// Who is calling, for decisions and the audit log.
#[derive(Clone, Debug)]
pub enum Who {
    /// The local socket or a manager certificate: full control, as before people existed.
    Admin(String),
    /// A person.
    User(Person),
}

/// A user with the grants that apply to them now.
#[derive(Clone, Debug)]
pub struct Person {
    pub name: String,
    pub teams: Vec<String>,
    /// (operations, collection) of each grant that names the user or one of their teams.
    grants: Vec<(BTreeSet<String>, String)>,
}

impl Person {
    /// Whether some grant gives `op` on `collection`.
    pub fn may(&self, op: &str, collection: &str) -> bool {
        self.grants.iter().any(|(ops, c)| ops.contains(op) && covers(c, collection))
    }
}

impl Who {
    pub fn subject(&self) -> String {
        match self {
            Who::Admin(s) => s.clone(),
            Who::User(p) => format!("user:{}", p.name),
        }
    }

    /// Whether the caller may do `op` on an object in `collection`.
    pub fn may(&self, op: &str, collection: &str) -> bool {
        match self {
            Who::Admin(_) => true,
            Who::User(p) => p.may(op, collection),
        }
    }
}

/// The operations of role `name`: built in, or stored.
pub fn role_ops(roles: &[AccessRole], name: &str) -> Option<BTreeSet<String>> {
    built_in(name)
        .map(|s| s.into_iter().map(String::from).collect())
        .or_else(|| roles.iter().find(|r| r.name == name).map(|r| r.ops.iter().cloned().collect()))
}

/// The teams `user` is in.
pub fn teams_of(teams: &[Team], user: &str) -> Vec<String> {
    teams.iter().filter(|t| t.members.iter().any(|m| m == user)).map(|t| t.name.clone()).collect()
}

/// Establishes who a call comes from; a user must exist and hold this certificate.
pub fn who(store: &Store, caller: &Caller) -> Result<Who, Status> {
    match caller {
        Caller::Local => Ok(Who::Admin("root (local socket)".into())),
        Caller::Node(id) => Ok(Who::Admin(format!("node:{}", id.node_id))),
        Caller::User(id) => person(store, id).map(Who::User),
        Caller::Anonymous => Err(Status::unauthenticated("this call needs a certificate")),
    }
}

fn person(store: &Store, id: &UserIdentity) -> Result<Person, Status> {
    let gone = || {
        Status::permission_denied(format!(
            "user {} does not exist (any more); ask an administrator for a new bundle",
            id.name
        ))
    };
    let user = store.get::<User>(&id.name).map_err(Status::from)?.ok_or_else(gone)?;
    if !user.certs.iter().any(|c| c.serial_hex == id.serial_hex) {
        return Err(Status::permission_denied(format!(
            "this certificate of user {} was replaced or revoked; use the current bundle",
            id.name
        )));
    }
    let teams = teams_of(&store.list::<Team>().map_err(Status::from)?, &id.name);
    let roles = store.list::<AccessRole>().map_err(Status::from)?;
    let mut grants = Vec::new();
    for g in store.list::<Grant>().map_err(Status::from)? {
        let applies = match g.subject.split_once(':') {
            Some(("user", n)) => n == id.name,
            Some(("team", t)) => teams.iter().any(|x| x == t),
            _ => false,
        };
        if applies {
            if let Some(ops) = role_ops(&roles, &g.role) {
                grants.push((ops, g.collection.clone()));
            }
        }
    }
    Ok(Person { name: id.name.clone(), teams, grants })
}

/// One line of the audit log.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub time: String,
    pub time_ms: i64,
    pub subject: String,
    pub operation: String,
    pub object: String,
    pub collection: String,
    /// "allow" or "deny".
    pub decision: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// The manager's append-only audit log: JSON lines in `<store dir>/audit.log`, moved to
/// `audit.log.1` … `audit.log.N` as it reaches its size.
#[derive(Debug)]
pub struct Audit {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: Mutex<Option<std::fs::File>>,
}

impl Audit {
    pub fn open(path: PathBuf) -> Audit {
        Audit { path, max_bytes: 16 << 20, keep: 4, file: Mutex::new(None) }
    }

    /// An audit log rotated at `max_bytes` (tests use small ones).
    pub fn with_limit(path: PathBuf, max_bytes: u64, keep: usize) -> Audit {
        Audit { path, max_bytes, keep, file: Mutex::new(None) }
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        p.into()
    }

    /// Appends `entry`; a failure to write is logged, never fails the call.
    pub fn record(&self, entry: &Entry) {
        let mut line = serde_json::to_vec(entry).expect("plain data serializes");
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = self.append(&mut file, &line) {
            tracing::error!(error = %e, path = %self.path.display(), "could not write the audit log");
            *file = None;
        }
    }

    fn append(&self, file: &mut Option<std::fs::File>, line: &[u8]) -> std::io::Result<()> {
        let size = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        if size > 0 && size + line.len() as u64 > self.max_bytes {
            *file = None;
            for n in (1..self.keep).rev() {
                let _ = std::fs::rename(self.rotated(n), self.rotated(n + 1));
            }
            std::fs::rename(&self.path, self.rotated(1))?;
        }
        if file.is_none() {
            use std::os::unix::fs::OpenOptionsExt;
            *file = Some(
                std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o600)
                    .open(&self.path)?,
            );
        }
        let f = file.as_mut().expect("opened above");
        f.write_all(line)?;
        f.flush()
    }

    /// Entries at or after `since_ms`, of `subject` when given, oldest first.
    pub fn read(&self, since_ms: i64, subject: &str) -> Vec<String> {
        let _held = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let mut files: Vec<PathBuf> = (1..=self.keep).rev().map(|n| self.rotated(n)).collect();
        files.push(self.path.clone());
        let mut out = Vec::new();
        for f in files {
            let Ok(text) = std::fs::read_to_string(&f) else { continue };
            for line in text.lines() {
                let Ok(e) = serde_json::from_str::<Entry>(line) else { continue };
                if e.time_ms >= since_ms && (subject.is_empty() || e.subject == subject) {
                    out.push(line.to_string());
                }
            }
        }
        out
    }
}

/// Records one decision and returns `Ok` when allowed, or the denial.
pub fn decide(
    audit: &Audit,
    who: &Who,
    op: &str,
    object: &str,
    collection: &str,
    changes: bool,
) -> Result<(), Status> {
    decide_as(audit, who, op, op, object, collection, changes)
}

/// As [`decide`], for an operation `op` that the permission `needs` allows.
pub fn decide_as(
    audit: &Audit,
    who: &Who,
    op: &str,
    needs: &str,
    object: &str,
    collection: &str,
    changes: bool,
) -> Result<(), Status> {
    let allowed = who.may(needs, collection);
    if changes || !allowed {
        record(audit, who, op, object, collection, allowed);
    }
    if allowed {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "{} may not {op} (needs {needs} on collection {collection}; object {object}); ask for a grant",
            who.subject()
        )))
    }
}

/// Appends one decision to the audit log.
pub fn record(audit: &Audit, who: &Who, op: &str, object: &str, collection: &str, allowed: bool) {
    let now = crate::manager::now_ms();
    audit.record(&Entry {
        time: rfc3339(now),
        time_ms: now,
        subject: who.subject(),
        operation: op.into(),
        object: object.into(),
        collection: collection.into(),
        decision: if allowed { "allow" } else { "deny" }.into(),
        reason: String::new(),
    });
}

/// RFC 3339 UTC time of `ms` since the epoch, to the millisecond.
fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// Labels with the collection set to `/shared` when they name none, checked.
pub fn place(labels: &mut std::collections::HashMap<String, String>) -> Result<String, Status> {
    let c = labels
        .entry(COLLECTION_LABEL.to_string())
        .or_insert_with(|| DEFAULT_COLLECTION.to_string())
        .clone();
    check_collection(&c)?;
    Ok(c)
}

/// The subjects a grant may name, checked against what exists.
pub fn check_subject(subject: &str, users: &[User], teams: &[Team]) -> Result<(), Status> {
    match subject.split_once(':') {
        Some(("user", n)) if users.iter().any(|u| u.name == n) => Ok(()),
        Some(("team", n)) if teams.iter().any(|t| t.name == n) => Ok(()),
        Some(("user" | "team", n)) => Err(Status::not_found(format!("no such user or team: {n}"))),
        _ => Err(Status::invalid_argument(format!(
            "subject {subject:?}: use user:NAME or team:NAME"
        ))),
    }
}

/// Role operations, checked.
pub fn check_ops(ops: &[String]) -> Result<(), Status> {
    if ops.is_empty() {
        return Err(Status::invalid_argument("a role needs at least one --op"));
    }
    match ops.iter().find(|o| !OPS.contains(&o.as_str())) {
        Some(bad) => Err(Status::invalid_argument(format!(
            "unknown operation {bad:?}; operations are: {}",
            OPS.join(", ")
        ))),
        None => Ok(()),
    }
}

/// Grants by subject, for `user inspect`.
pub fn grants_for(grants: &[Grant], user: &str, teams: &[String]) -> Vec<Grant> {
    let subjects: BTreeSet<String> = std::iter::once(format!("user:{user}"))
        .chain(teams.iter().map(|t| format!("team:{t}")))
        .collect();
    grants.iter().filter(|g| subjects.contains(&g.subject)).cloned().collect()
}

/// Custom roles by name (for listing next to the built-in ones).
pub fn by_name(roles: Vec<AccessRole>) -> BTreeMap<String, AccessRole> {
    roles.into_iter().map(|r| (r.name.clone(), r)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_covers_its_collection_and_children_only() {
        assert!(covers("/", "/anything/below"));
        assert!(covers("/kubeadmins", "/kubeadmins"));
        assert!(covers("/kubeadmins", "/kubeadmins/prod"));
        assert!(!covers("/kubeadmins", "/kubeadminsx"), "a sibling with a longer name");
        assert!(!covers("/kubeadmins/prod", "/kubeadmins"), "the parent");
        assert!(!covers("/shared", "/system"));
        for bad in ["", "shared", "/shared/", "/a//b", "/a/../b", "/a b"] {
            assert!(check_collection(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn built_in_roles_hold_what_their_names_say() {
        let rc = built_in("restricted-control").unwrap();
        assert!(rc.contains("service.create") && rc.contains("secret.use"));
        assert!(!rc.contains("service.widen") && !rc.contains("swarm.admin"));
        assert_eq!(built_in("scheduler").unwrap().len(), 2);
        assert!(built_in("view-only").unwrap().iter().all(|o| VIEW.contains(o)));
        assert_eq!(built_in("full-control").unwrap().len(), OPS.len());
        assert!(built_in("none").unwrap().is_empty() && built_in("root").is_none());
    }

    #[test]
    fn the_audit_log_rotates_and_reads_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::with_limit(dir.path().join("audit.log"), 400, 2);
        let who = Who::Admin("root".into());
        for i in 0..10 {
            decide(&audit, &who, "service.create", &format!("s{i}"), "/shared", true).unwrap();
        }
        let read = audit.read(0, "");
        assert!(read.len() < 10 && read.len() >= 3, "older files dropped: {}", read.len());
        assert!(read.last().unwrap().contains("\"s9\""));
        assert!(std::fs::metadata(dir.path().join("audit.log.1")).is_ok());
        assert!(std::fs::metadata(dir.path().join("audit.log.3")).is_err(), "keeps 2");
        assert!(audit.read(0, "user:nobody").is_empty());
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_796_428_800_123), "2026-12-05T00:00:00.123Z");
    }
}
