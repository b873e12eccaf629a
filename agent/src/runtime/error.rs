//! Errors of the container runtime: each says what went wrong and what to do about it.

use std::path::PathBuf;

/// What the runtime could not do.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The node's policy refuses an option the task asked for; the task must be REJECTED.
    /// `allow` says how a node allows it (the `shoald` flag, where there is one).
    #[error("node policy refuses task option `{option}`: {reason}; {allow}, or remove it from the service")]
    Refused { option: String, reason: String, allow: String },

    /// The node applies Landlock to every task but has no helper to do it with; the task must
    /// be REJECTED.
    #[error("this node applies Landlock to every task but {0}; restart shoald, which reinstalls its Landlock helper under its data root (it must be writable)")]
    LandlockHelper(String),

    /// The task spec is malformed.
    #[error("invalid task spec: {0}")]
    InvalidSpec(String),

    /// A seccomp profile could not be read or understood.
    #[error("seccomp profile {path:?}: {reason}; pass a Docker-format seccomp JSON profile")]
    SeccompProfile { path: PathBuf, reason: String },

    /// The OCI runtime binary failed.
    #[error("`{binary} {action}` for task {id} failed: {message}")]
    Oci { binary: String, action: &'static str, id: String, message: String },

    /// The OCI runtime binary could not be started at all.
    #[error("cannot run OCI runtime `{binary}`: {source}; install runc (apt-get install runc) or set the runtime path")]
    Spawn { binary: String, source: std::io::Error },

    /// No task with this id is known.
    #[error("no task {0} on this node")]
    UnknownTask(String),

    /// A task with this id already exists.
    #[error("task {0} already exists on this node; delete it first")]
    Exists(String),

    /// Building the OCI config failed.
    #[error("building the OCI config: {0}")]
    Config(String),

    /// A filesystem or system call failed.
    #[error("{what} {path:?}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
}

impl RuntimeError {
    /// An IO error with the operation and path it happened on.
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RuntimeError::Io { what, path: path.into(), source }
    }

    /// A refusal of `option` by the node policy; `allow` says how a node allows it.
    pub fn refused(
        option: impl Into<String>,
        reason: impl Into<String>,
        allow: impl Into<String>,
    ) -> Self {
        RuntimeError::Refused { option: option.into(), reason: reason.into(), allow: allow.into() }
    }
}

impl From<oci_spec::OciSpecError> for RuntimeError {
    fn from(e: oci_spec::OciSpecError) -> Self {
        RuntimeError::Config(e.to_string())
    }
}

/// Shorthand for runtime results.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
