//! Owns Shoal's protobuf messages and gRPC service stubs, small helpers on the generated types,
//! the rules of specs (in `spec`), wall-clock milliseconds (in `time`), and (in `dial`) the one
//! way to open a TLS gRPC channel to a manager.

#![allow(missing_debug_implementations)]

tonic::include_proto!("shoal");

pub mod dial;
pub mod limits;
pub mod spec;
pub mod time;

pub use shoal_role::Role;

impl NodeRole {
    /// The word the CLI shows and accepts for this role (the [`Role`]'s name).
    pub fn word(self) -> &'static str {
        Role::from(self).as_str()
    }
}

/// The one mapping between the domain role and its wire enum.
impl From<NodeRole> for Role {
    fn from(r: NodeRole) -> Role {
        match r {
            NodeRole::Worker => Role::Worker,
            NodeRole::Manager => Role::Manager,
        }
    }
}

impl From<Role> for NodeRole {
    fn from(r: Role) -> NodeRole {
        match r {
            Role::Worker => NodeRole::Worker,
            Role::Manager => NodeRole::Manager,
        }
    }
}

impl NodeState {
    /// The word `shoal node ls` shows for this state.
    pub fn word(self) -> &'static str {
        match self {
            NodeState::Unknown => "Unknown",
            NodeState::Ready => "Ready",
            NodeState::Down => "Down",
            NodeState::Disconnected => "Disconnected",
        }
    }
}

impl Availability {
    /// The word `shoal node ls` shows for this availability.
    pub fn word(self) -> &'static str {
        match self {
            Availability::Active => "Active",
            Availability::Pause => "Pause",
            Availability::Drain => "Drain",
        }
    }
}

impl SecretKind {
    /// "secret" or "config", as messages and the CLI say it.
    pub fn word(self) -> &'static str {
        match self {
            SecretKind::Secret => "secret",
            SecretKind::Config => "config",
        }
    }
}

impl TaskState {
    /// The word `shoal service ps` shows for this state.
    pub fn word(self) -> &'static str {
        match self {
            TaskState::New => "New",
            TaskState::Pending => "Pending",
            TaskState::Assigned => "Assigned",
            TaskState::Accepted => "Accepted",
            TaskState::Preparing => "Preparing",
            TaskState::Ready => "Ready",
            TaskState::Starting => "Starting",
            TaskState::Running => "Running",
            TaskState::Complete => "Complete",
            TaskState::Shutdown => "Shutdown",
            TaskState::Failed => "Failed",
            TaskState::Rejected => "Rejected",
            TaskState::Remove => "Remove",
            TaskState::Orphaned => "Orphaned",
        }
    }

    /// Whether a task in this state has stopped for good (or never ran).
    pub fn is_terminal(self) -> bool {
        self as i32 > TaskState::Running as i32
    }
}

impl Task {
    /// The task's observed state.
    pub fn state(&self) -> TaskState {
        self.status.as_ref().map(|s| s.state()).unwrap_or(TaskState::New)
    }
}

impl std::fmt::Debug for RootCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootCa")
            .field("cert_pem_len", &self.cert_pem.len())
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl std::fmt::Debug for RootRotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootRotation")
            .field("cert_pem_len", &self.cert_pem.len())
            .field("key_pem", &"<redacted>")
            .field("cross_signed_pem_len", &self.cross_signed_pem.len())
            .field("started_ms", &self.started_ms)
            .field("force", &self.force)
            .finish()
    }
}

impl std::fmt::Debug for RotateRootCaRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotateRootCaRequest")
            .field("rotate", &self.rotate)
            .field("cert_pem_len", &self.cert_pem.len())
            .field("key_pem", &"<redacted>")
            .field("force", &self.force)
            .finish()
    }
}

impl std::fmt::Debug for JoinTokenRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinTokenRecord")
            .field("secret", &"<redacted>")
            .field("created_at_ms", &self.created_at_ms)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("max_uses", &self.max_uses)
            .field("uses", &self.uses)
            .finish()
    }
}

/// Secret data never reaches logs or `Debug` output: only its length shows.
macro_rules! redact_data {
    ($t:ty, $($field:ident),*) => {
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($t))
                    $(.field(stringify!($field), &self.$field))*
                    .field("data", &format_args!("<redacted {} bytes>", self.data.len()))
                    .finish()
            }
        }
    };
}
redact_data!(SecretVersion, version, created_at_ms);
redact_data!(SecretData, id, version, kind);
redact_data!(CreateSecretRequest, kind, name, labels);
redact_data!(UpdateSecretRequest, kind, reference, set_labels, labels);

impl std::fmt::Debug for TrustTimestampKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustTimestampKey").field("id", &self.id).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for UnlockKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnlockKey(<redacted>)")
    }
}

/// Join tokens and unlock keys (strings on the wire) never reach logs or `Debug` output: only
/// whether one is set shows.
struct Hidden<'a>(&'a str);

impl std::fmt::Debug for Hidden<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "<empty>" } else { "<redacted>" })
    }
}

/// A hand-written `Debug` for a message whose named fields carry a token or key: those show as
/// [`Hidden`], the others as usual.
macro_rules! redact_fields {
    ($t:ty, shown: [$($field:ident),*], hidden: [$($secret:ident),*]) => {
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($t))
                    $(.field(stringify!($field), &self.$field))*
                    $(.field(stringify!($secret), &Hidden(&self.$secret)))*
                    .finish()
            }
        }
    };
}
redact_fields!(InitResponse, shown: [node_id, cluster_id, advertise_addr],
    hidden: [worker_token, manager_token, unlock_key]);
redact_fields!(JoinRequest, shown: [remote_addr, listen_addr, advertise_addr], hidden: [token]);
redact_fields!(UnlockRequest, shown: [], hidden: [key]);
redact_fields!(UnlockKeyInfo, shown: [], hidden: [key]);
redact_fields!(RegistryAuth, shown: [registry, username], hidden: [password]);

impl RegistryAuth {
    /// The same login without its password: what reads through the control API show.
    pub fn redacted(&self) -> RegistryAuth {
        RegistryAuth { password: String::new(), ..self.clone() }
    }
}

impl ContainerSpec {
    /// Drops the registry password: for every answer that leaves the managers except a
    /// node's own assignments.
    pub fn redact(&mut self) {
        if let Some(a) = &mut self.registry_auth {
            *a = a.redacted();
        }
    }
}

impl Service {
    /// [`ContainerSpec::redact`] on the current and the previous spec.
    pub fn redact(&mut self) {
        for spec in [&mut self.spec, &mut self.previous_spec].into_iter().flatten() {
            if let Some(c) = &mut spec.container {
                c.redact();
            }
        }
    }
}

impl Task {
    /// [`ContainerSpec::redact`] on the task's spec.
    pub fn redact(&mut self) {
        if let Some(c) = self.spec.as_mut().and_then(|s| s.container.as_mut()) {
            c.redact();
        }
    }
}
redact_fields!(JoinTokenInfo, shown: [role, expires_at_ms, max_uses, uses, manager_addrs],
    hidden: [token]);

impl std::fmt::Debug for IssueNodeCertificateRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssueNodeCertificateRequest")
            .field("csr_der", &format_args!("<{} bytes>", self.csr_der.len()))
            .field("token", &Hidden(&self.token))
            .field("hostname", &self.hostname)
            .field("advertise_addr", &self.advertise_addr)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_roles_convert_both_ways_and_share_the_domain_names() {
        for role in Role::ALL {
            assert_eq!(Role::from(NodeRole::from(role)), role);
            assert_eq!(NodeRole::from(role).word(), role.as_str());
        }
    }

    #[test]
    fn debug_output_of_secrets_hides_their_data() {
        let secret = Secret {
            name: "db".into(),
            versions: vec![SecretVersion {
                version: 1,
                data: b"hunter2-TOPSECRET".to_vec(),
                created_at_ms: 0,
            }],
            ..Default::default()
        };
        let shown = format!(
            "{secret:?} {:?} {:?}",
            SecretData { data: b"hunter2-TOPSECRET".to_vec(), ..Default::default() },
            CreateSecretRequest { data: b"hunter2-TOPSECRET".to_vec(), ..Default::default() }
        );
        assert!(!shown.contains("TOPSECRET") && !shown.contains("104, 117"), "{shown}");
        assert!(shown.contains("<redacted 17 bytes>"));
    }

    #[test]
    fn debug_output_of_a_cluster_hides_keys_and_token_secrets() {
        let cluster = Cluster {
            root_ca: Some(RootCa { cert_pem: "CERT".into(), key_pem: "TOPSECRETKEY".into() }),
            join_tokens: Some(JoinTokens {
                worker: Some(JoinTokenRecord { secret: vec![0xAB; 16], ..Default::default() }),
                manager: None,
            }),
            unlock_key: Some(UnlockKey { key: b"UNLOCKSECRET".to_vec() }),
            root_rotation: Some(RootRotation {
                cert_pem: "NEWCERT".into(),
                key_pem: "NEWROOTSECRETKEY".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let request =
            RotateRootCaRequest { key_pem: "OPERATORSECRETKEY".into(), ..Default::default() };
        let shown = format!("{cluster:?} {request:?}");
        assert!(!shown.contains("NEWROOTSECRETKEY") && !shown.contains("OPERATORSECRETKEY"));
        assert!(!shown.contains("85, 78, 76"), "unlock key bytes leaked: {shown}");
        assert!(!shown.contains("TOPSECRETKEY"), "{shown}");
        assert!(!shown.contains("171"), "secret bytes leaked: {shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn debug_output_of_messages_carrying_tokens_or_unlock_keys_hides_them() {
        let token = "SWMTKN-1-TOPSECRETTOKEN";
        let key = "SWMKEY-1-TOPSECRETUNLOCK";
        let shown = format!(
            "{:?} {:?} {:?} {:?} {:?} {:?}",
            InitResponse {
                node_id: "n1".into(),
                worker_token: token.into(),
                manager_token: token.into(),
                unlock_key: key.into(),
                ..Default::default()
            },
            JoinRequest {
                token: token.into(),
                remote_addr: "10.0.0.1:4242".into(),
                ..Default::default()
            },
            IssueNodeCertificateRequest {
                token: token.into(),
                hostname: "w1".into(),
                ..Default::default()
            },
            UnlockRequest { key: key.into() },
            JoinTokenInfo { token: token.into(), max_uses: 3, ..Default::default() },
            UnlockKeyInfo { key: key.into() },
        );
        assert!(!shown.contains("TOPSECRET"), "a token or key leaked: {shown}");
        // What is not secret still shows, and so does whether a secret is set.
        for visible in ["n1", "10.0.0.1:4242", "w1", "max_uses: 3", "<redacted>"] {
            assert!(shown.contains(visible), "{visible} missing from {shown}");
        }
        assert!(format!("{:?}", UnlockKeyInfo::default()).contains("<empty>"));
    }
}
