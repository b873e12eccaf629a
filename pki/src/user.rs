//! People: a user's client certificate (OU `shoal-user`, CN the user's name, O the cluster),
//! signed by the cluster CA for client authentication only, and the identity read back from
//! one. A user certificate never serves and never passes for a node's.

use std::time::SystemTime;

use crate::node::{asn1_to_system, parse_cert, serial_hex};
use crate::PkiError;

/// The organizational unit of every user certificate.
pub const USER_OU: &str = "shoal-user";

/// The longest user (or team, or role) name.
pub const MAX_NAME: usize = 64;

/// The identity a user certificate carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserIdentity {
    /// The user's name (certificate CN).
    pub name: String,
    /// The cluster ID (certificate O).
    pub cluster_id: String,
    /// The serial number as lowercase hex without leading zero bytes.
    pub serial_hex: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// A user, team or role name: 1–64 of `a-z`, `0-9`, `.`, `_`, `-`, starting with a letter or
/// digit (no `:` or `/`, so subjects and collections read unambiguously).
pub fn check_name(what: &str, name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(PkiError::BadIdentity(format!(
            "{what} name {name:?}: use 1-{MAX_NAME} of a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
        )))
    }
}

fn text<'a>(
    mut it: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
    what: &str,
) -> Result<String, PkiError> {
    it.next()
        .and_then(|a| a.as_str().ok().map(str::to_string))
        .ok_or_else(|| PkiError::BadCert(format!("the subject has no {what}")))
}

impl UserIdentity {
    /// Reads a user identity from a DER certificate; fails for any certificate whose OU is not
    /// [`USER_OU`] (a node's included).
    pub fn from_der(cert_der: &[u8]) -> Result<UserIdentity, PkiError> {
        let cert = parse_cert(cert_der)?;
        let subject = cert.subject();
        let ou = text(subject.iter_organizational_unit(), "organizational unit (OU)")?;
        if ou != USER_OU {
            return Err(PkiError::BadCert(format!(
                "organizational unit {ou:?} is not a user's ({USER_OU})"
            )));
        }
        let name = text(subject.iter_common_name(), "common name (CN)")?;
        check_name("user", &name)?;
        Ok(UserIdentity {
            name,
            cluster_id: text(subject.iter_organization(), "organization (O)")?,
            serial_hex: serial_hex(&cert),
            not_before: asn1_to_system(cert.validity().not_before),
            not_after: asn1_to_system(cert.validity().not_after),
        })
    }

    /// Reads the identity from the first certificate of a PEM text.
    pub fn from_pem(cert_pem: &str) -> Result<UserIdentity, PkiError> {
        UserIdentity::from_der(&crate::node::first_cert_der(cert_pem)?)
    }
}

/// Whether a DER certificate is a user's (its OU says so), without checking anything else.
pub fn is_user_cert(cert_der: &[u8]) -> bool {
    parse_cert(cert_der)
        .is_ok_and(|c| c.subject().iter_organizational_unit().any(|a| a.as_str() == Ok(USER_OU)))
}
