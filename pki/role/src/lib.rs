//! Owns a node's role and every way it is spelled: the lowercase name users type and see
//! (`worker`, `manager`; also how `state.json` stores it) and the certificate OU. The PKI
//! re-exports [`Role`] as the domain role and the protocol crate converts it to and from its
//! wire enum, so no other crate maps names to roles.

use std::fmt;
use std::str::FromStr;

/// The role a node plays in the cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Role {
    /// Runs tasks only.
    #[default]
    Worker,
    /// Runs the control plane (and the CA).
    Manager,
}

impl Role {
    /// Both roles, worker first.
    pub const ALL: [Role; 2] = [Role::Worker, Role::Manager];

    /// The role's lowercase name: `"worker"` or `"manager"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Manager => "manager",
        }
    }

    /// The organizational unit (and DNS SAN) used in certificates for this role.
    pub fn ou(&self) -> &'static str {
        match self {
            Role::Worker => "shoal-worker",
            Role::Manager => "shoal-manager",
        }
    }

    /// The role whose [`Role::ou`] is `s`, if any.
    pub fn from_ou(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.ou() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error returned when parsing a [`Role`] from an unknown name.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("unknown role \"{0}\": use worker or manager")]
pub struct UnknownRoleError(pub String);

impl FromStr for Role {
    type Err = UnknownRoleError;

    /// Parses a role's name exactly as [`Role::as_str`] writes it.
    fn from_str(s: &str) -> Result<Role, UnknownRoleError> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRoleError(s.escape_debug().to_string()))
    }
}

/// Stored as its name, the same string `state.json` always held.
impl serde::Serialize for Role {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Role {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Role, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_round_trip() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            assert_eq!(Role::from_ou(role.ou()), Some(role));
        }
        assert_eq!(Role::from_ou("worker"), None);
    }

    #[test]
    fn unknown_role_message() {
        let err = "boss".parse::<Role>().err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("unknown role \"boss\": use worker or manager"));
    }

    #[test]
    fn stored_as_the_lowercase_name() {
        assert_eq!(serde_json::to_string(&Role::Manager).unwrap(), "\"manager\"");
        assert_eq!(serde_json::from_str::<Role>("\"worker\"").unwrap(), Role::Worker);
        assert!(serde_json::from_str::<Role>("\"boss\"").is_err());
    }
}
