//! The people half of the Control API (issue #18): users and their certificates, teams,
//! custom roles, grants, and reading the audit log. Managing any of them needs `access.admin`
//! on `/` (full control of the whole cluster); a user may read their own record and renew
//! their own certificate with the one they hold.

use std::time::{Duration, SystemTime};

use shoal_proto::control_client::ControlClient;
use shoal_proto::{
    AccessRole, Cluster, CreateGrantRequest, Grant, IssueUserCertificateRequest,
    IssueUserCertificateResponse, ListGrantsResponse, ListRolesResponse, ListTeamsResponse,
    ListUsersResponse, ReadAuditRequest, ReadAuditResponse, RoleRequest, Team, TeamRequest, User,
    UserCert, UserRequest, UserResponse,
};
use tonic::Status;

use crate::access::{self, Who};
use crate::manager::{now_ms, Shared};
use crate::store::StoreError;

/// How long a user certificate lasts unless asked otherwise (UCP's client bundles: 30 days).
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// Certificates a user may hold at once (bundles on several machines, renewals).
const MAX_LIVE_CERTS: usize = 8;
/// The longest a user certificate may last.
pub const MAX_VALIDITY: Duration = Duration::from_secs(366 * 24 * 3600);

/// Managing people needs `access.admin` on `/`; the decision is recorded as `op`.
fn admin(shared: &Shared, who: &Who, op: &str, object: &str, changes: bool) -> Result<(), Status> {
    access::decide_as(&shared.audit, who, op, "access.admin", object, "/", changes)
}

fn name_ok(what: &str, name: &str) -> Result<(), Status> {
    shoal_pki::user::check_name(what, name).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn exists(e: StoreError, what: &str, name: &str) -> Status {
    match e {
        StoreError::Exists { .. } => {
            Status::already_exists(format!("a {what} named {name} exists"))
        }
        e => e.into(),
    }
}

fn user_response(shared: &Shared, user: User) -> Result<UserResponse, Status> {
    let teams = access::teams_of(&shared.store.list::<Team>()?, &user.name);
    let grants = access::grants_for(&shared.store.list::<Grant>()?, &user.name, &teams);
    Ok(UserResponse { user: Some(user), teams, grants })
}

pub(crate) async fn create_user(
    shared: &Shared,
    who: &Who,
    req: UserRequest,
) -> Result<UserResponse, Status> {
    name_ok("user", &req.name)?;
    admin(shared, who, "user.create", &format!("user:{}", req.name), true)?;
    let user = User { id: req.name.clone(), name: req.name.clone(), ..Default::default() };
    shared
        .store
        .update(|tx| tx.create(user.clone()).map_err(|e| exists(e, "user", &req.name)))
        .await?;
    tracing::info!(user = %req.name, by = %who.subject(), "user created");
    user_response(shared, user)
}

pub(crate) async fn get_user(
    shared: &Shared,
    who: &Who,
    req: UserRequest,
) -> Result<UserResponse, Status> {
    if !matches!(who, Who::User(p) if p.name == req.name) {
        admin(shared, who, "user.view", &format!("user:{}", req.name), false)?;
    }
    shared.store.barrier().await?;
    let user = shared
        .store
        .get::<User>(&req.name)?
        .ok_or_else(|| Status::not_found(format!("no such user: {}", req.name)))?;
    user_response(shared, user)
}

pub(crate) async fn list_users(shared: &Shared, who: &Who) -> Result<ListUsersResponse, Status> {
    shared.store.barrier().await?;
    let mut users = shared.store.list::<User>()?;
    match who {
        Who::User(p) if !p.may("access.admin", "/") => users.retain(|u| u.name == p.name),
        _ => {}
    }
    users.sort_by(|a, b| a.name.cmp(&b.name));
    let users = users.into_iter().map(|u| user_response(shared, u)).collect::<Result<_, _>>()?;
    Ok(ListUsersResponse { users })
}

/// Removes a user, their team memberships and the grants naming them. Their certificates stop
/// working on the next call, on connections already open too.
pub(crate) async fn remove_user(
    shared: &Shared,
    who: &Who,
    req: UserRequest,
) -> Result<(), Status> {
    admin(shared, who, "user.remove", &format!("user:{}", req.name), true)?;
    let subject = format!("user:{}", req.name);
    shared
        .store
        .update(|tx| {
            if tx.get::<User>(&req.name)?.is_none() {
                return Err(Status::not_found(format!("no such user: {}", req.name)));
            }
            tx.delete::<User>(&req.name)?;
            for mut t in tx.list::<Team>()? {
                if t.members.contains(&req.name) {
                    t.members.retain(|m| *m != req.name);
                    tx.update(t)?;
                }
            }
            for g in tx.list::<Grant>()?.into_iter().filter(|g| g.subject == subject) {
                tx.delete::<Grant>(&g.id)?;
            }
            Ok(())
        })
        .await?;
    tracing::info!(user = %req.name, by = %who.subject(), "user removed");
    Ok(())
}

/// Signs a user's CSR: an administrator for anyone, a user for themselves (renewal with the
/// certificate they hold, before it expires).
pub(crate) async fn issue_certificate(
    shared: &Shared,
    who: &Who,
    req: IssueUserCertificateRequest,
) -> Result<IssueUserCertificateResponse, Status> {
    let object = format!("user:{}", req.name);
    match who {
        Who::User(p) if p.name == req.name => {
            access::record(&shared.audit, who, "user.renew", &object, "/", true)
        }
        _ => admin(shared, who, "user.certificate", &object, true)?,
    }
    let validity = match req.validity_ms {
        0 => DEFAULT_VALIDITY,
        ms => Duration::from_millis(ms),
    };
    if validity > MAX_VALIDITY {
        return Err(Status::invalid_argument("a user certificate lasts at most 366 days"));
    }
    // A person renewing themselves may not outlast what an administrator would give by default.
    if matches!(who, Who::User(p) if p.name == req.name) && validity > DEFAULT_VALIDITY {
        return Err(Status::permission_denied(format!(
            "a renewal you make yourself lasts at most {} days; ask an administrator for longer",
            DEFAULT_VALIDITY.as_secs() / 86_400
        )));
    }
    let cluster = shared
        .store
        .get::<Cluster>(&shared.cluster_id)?
        .ok_or_else(|| Status::internal("cluster object missing"))?;
    let ca = shared.signer(&cluster)?;
    let issued = ca
        .sign_user_csr(&req.csr_der, &req.name, &shared.cluster_id, validity, SystemTime::now())
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let not_after_ms = crate::manager::unix(issued.not_after) * 1000;
    let serial = issued.serial_hex.clone();
    shared
        .store
        .update(|tx| {
            let mut user = tx
                .get::<User>(&req.name)?
                .ok_or_else(|| Status::not_found(format!("no such user: {}", req.name)))?;
            let now = now_ms();
            user.certs.retain(|c| c.not_after_ms > now);
            user.certs.push(UserCert { serial_hex: serial.clone(), not_after_ms });
            // A bounded list: past the limit the certificates expiring soonest stop working.
            user.certs.sort_by_key(|c| std::cmp::Reverse(c.not_after_ms));
            user.certs.truncate(MAX_LIVE_CERTS);
            tx.update(user)?;
            Ok::<_, Status>(())
        })
        .await?;
    tracing::info!(user = %req.name, serial = %issued.serial_hex, by = %who.subject(), "user certificate issued");
    Ok(IssueUserCertificateResponse {
        cert_pem: issued.cert_pem,
        ca_pem: shared.roots.pem(),
        not_after_ms,
    })
}

pub(crate) async fn create_team(
    shared: &Shared,
    who: &Who,
    req: TeamRequest,
) -> Result<Team, Status> {
    name_ok("team", &req.name)?;
    admin(shared, who, "team.create", &format!("team:{}", req.name), true)?;
    let team = Team { id: req.name.clone(), name: req.name.clone(), ..Default::default() };
    shared
        .store
        .update(|tx| tx.create(team.clone()).map_err(|e| exists(e, "team", &req.name)))
        .await?;
    update_team(shared, who, TeamRequest { name: req.name, add: req.add, remove: req.remove }).await
}

pub(crate) async fn update_team(
    shared: &Shared,
    who: &Who,
    req: TeamRequest,
) -> Result<Team, Status> {
    admin(shared, who, "team.update", &format!("team:{}", req.name), true)?;
    shared
        .store
        .update(|tx| {
            let mut team = tx
                .get::<Team>(&req.name)?
                .ok_or_else(|| Status::not_found(format!("no such team: {}", req.name)))?;
            for m in &req.add {
                if tx.get::<User>(m)?.is_none() {
                    return Err(Status::not_found(format!("no such user: {m}")));
                }
                if !team.members.contains(m) {
                    team.members.push(m.clone());
                }
            }
            team.members.retain(|m| !req.remove.contains(m));
            team.members.sort();
            tx.update(team.clone())?;
            Ok(team)
        })
        .await
}

pub(crate) async fn list_teams(shared: &Shared, who: &Who) -> Result<ListTeamsResponse, Status> {
    shared.store.barrier().await?;
    let mut teams = shared.store.list::<Team>()?;
    if let Who::User(p) = who {
        if !p.may("access.admin", "/") {
            teams.retain(|t| p.teams.contains(&t.name));
        }
    }
    teams.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(ListTeamsResponse { teams })
}

pub(crate) async fn remove_team(
    shared: &Shared,
    who: &Who,
    req: TeamRequest,
) -> Result<(), Status> {
    admin(shared, who, "team.remove", &format!("team:{}", req.name), true)?;
    let subject = format!("team:{}", req.name);
    shared
        .store
        .update(|tx| {
            if tx.get::<Team>(&req.name)?.is_none() {
                return Err(Status::not_found(format!("no such team: {}", req.name)));
            }
            tx.delete::<Team>(&req.name)?;
            for g in tx.list::<Grant>()?.into_iter().filter(|g| g.subject == subject) {
                tx.delete::<Grant>(&g.id)?;
            }
            Ok(())
        })
        .await
}

pub(crate) async fn create_role(
    shared: &Shared,
    who: &Who,
    req: RoleRequest,
) -> Result<AccessRole, Status> {
    name_ok("role", &req.name)?;
    if access::BUILT_IN.contains(&req.name.as_str()) {
        return Err(Status::already_exists(format!("{} is a built-in role", req.name)));
    }
    access::check_ops(&req.ops)?;
    admin(shared, who, "role.create", &format!("role:{}", req.name), true)?;
    let mut ops = req.ops.clone();
    ops.sort();
    ops.dedup();
    let role =
        AccessRole { id: req.name.clone(), name: req.name.clone(), ops, ..Default::default() };
    shared
        .store
        .update(|tx| tx.create(role.clone()).map_err(|e| exists(e, "role", &req.name)))
        .await?;
    Ok(role)
}

pub(crate) async fn list_roles(shared: &Shared) -> Result<ListRolesResponse, Status> {
    shared.store.barrier().await?;
    let mut roles: Vec<AccessRole> = access::BUILT_IN
        .iter()
        .map(|n| AccessRole {
            name: n.to_string(),
            ops: access::built_in(n).unwrap_or_default().into_iter().map(String::from).collect(),
            ..Default::default()
        })
        .collect();
    roles.extend(access::by_name(shared.store.list::<AccessRole>()?).into_values());
    Ok(ListRolesResponse { roles })
}

pub(crate) async fn remove_role(
    shared: &Shared,
    who: &Who,
    req: RoleRequest,
) -> Result<(), Status> {
    if access::BUILT_IN.contains(&req.name.as_str()) {
        return Err(Status::invalid_argument(format!("{} is a built-in role", req.name)));
    }
    admin(shared, who, "role.remove", &format!("role:{}", req.name), true)?;
    shared
        .store
        .update(|tx| {
            if tx.get::<AccessRole>(&req.name)?.is_none() {
                return Err(Status::not_found(format!("no such role: {}", req.name)));
            }
            if let Some(g) = tx.list::<Grant>()?.into_iter().find(|g| g.role == req.name) {
                return Err(Status::failed_precondition(format!(
                    "role {} is used by grant {} ({} on {}); remove the grant first",
                    req.name, g.id, g.subject, g.collection
                )));
            }
            tx.delete::<AccessRole>(&req.name)?;
            Ok(())
        })
        .await
}

pub(crate) async fn create_grant(
    shared: &Shared,
    who: &Who,
    req: CreateGrantRequest,
) -> Result<Grant, Status> {
    access::check_collection(&req.collection)?;
    let object = format!("grant:{},{},{}", req.subject, req.role, req.collection);
    admin(shared, who, "grant.create", &object, true)?;
    shared
        .store
        .update(|tx| {
            access::check_subject(&req.subject, &tx.list::<User>()?, &tx.list::<Team>()?)?;
            if access::role_ops(&tx.list::<AccessRole>()?, &req.role).is_none() {
                return Err(Status::not_found(format!("no such role: {}", req.role)));
            }
            let same = |g: &Grant| {
                g.subject == req.subject && g.role == req.role && g.collection == req.collection
            };
            if let Some(g) = tx.list::<Grant>()?.into_iter().find(same) {
                return Ok(g);
            }
            let grant = Grant {
                id: shoal_pki::id::new_id(),
                subject: req.subject.clone(),
                role: req.role.clone(),
                collection: req.collection.clone(),
                ..Default::default()
            };
            tx.create(grant.clone())?;
            Ok(grant)
        })
        .await
}

pub(crate) async fn list_grants(shared: &Shared, who: &Who) -> Result<ListGrantsResponse, Status> {
    shared.store.barrier().await?;
    let mut grants = shared.store.list::<Grant>()?;
    if let Who::User(p) = who {
        if !p.may("access.admin", "/") {
            grants = access::grants_for(&grants, &p.name, &p.teams);
        }
    }
    grants.sort_by(|a, b| (&a.collection, &a.subject).cmp(&(&b.collection, &b.subject)));
    Ok(ListGrantsResponse { grants })
}

pub(crate) async fn remove_grant(
    shared: &Shared,
    who: &Who,
    reference: String,
) -> Result<(), Status> {
    admin(shared, who, "grant.remove", &format!("grant:{reference}"), true)?;
    shared
        .store
        .update(|tx| {
            let grants = tx.list::<Grant>()?;
            let found = grants.iter().find(|g| {
                g.id == reference
                    || format!("{},{},{}", g.subject, g.role, g.collection) == reference
            });
            let g =
                found.ok_or_else(|| Status::not_found(format!("no such grant: {reference}")))?;
            tx.delete::<Grant>(&g.id)?;
            Ok(())
        })
        .await
}

/// The audit entries of this manager and, unless `local_only`, of every other manager
/// reachable now (each keeps the calls it served), merged by time.
pub(crate) async fn read_audit(
    shared: &Shared,
    who: &Who,
    req: ReadAuditRequest,
) -> Result<ReadAuditResponse, Status> {
    admin(shared, who, "audit.read", "audit", false)?;
    // Each entry says which manager served the call it records.
    let mut entries: Vec<String> = shared
        .audit
        .read(req.since_ms, &req.subject)
        .into_iter()
        .map(|line| match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(serde_json::Value::Object(mut e)) => {
                e.insert("manager".into(), shared.local_node_id.clone().into());
                serde_json::Value::Object(e).to_string()
            }
            _ => line,
        })
        .collect();
    if !req.local_only {
        for m in shared.members()?.into_iter().filter(|m| m.node_id != shared.local_node_id) {
            let ask = ReadAuditRequest { local_only: true, ..req.clone() };
            let got = async {
                let ch = shoal_proto::dial::connect(&m.addr, shared.tls.clone()).await.ok()?;
                ControlClient::new(ch).read_audit(ask).await.ok()
            };
            match tokio::time::timeout(Duration::from_secs(5), got).await {
                Ok(Some(r)) => entries.extend(r.into_inner().entries),
                _ => entries.push(format!(
                    "{{\"note\":\"manager {} did not answer; its entries are missing\"}}",
                    m.node_id
                )),
            }
        }
        let time = |l: &String| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["time_ms"].as_i64())
                .unwrap_or(i64::MAX)
        };
        entries.sort_by_key(time);
    }
    Ok(ReadAuditResponse { entries })
}
