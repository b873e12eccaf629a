//! Owns join-token policy: which role a presented token grants, whether it has expired or been
//! used up, and minting new ones. Pure logic over the cluster object; no IO.

use shoal_pki::token::ca_digest;
use shoal_pki::{JoinToken, Role};
use shoal_proto::{Cluster, JoinTokenRecord, JoinTokens};

/// Why a presented token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenRefused {
    #[error(
        "the join token is for a different cluster (its CA digest does not match this manager's \
         CA); get a token from a manager of the cluster you want to join"
    )]
    OtherCluster,
    #[error(
        "the join token is not valid for this cluster: it may have been rotated; get the current \
         one with 'shoal swarm join-token worker' (or manager) on a manager"
    )]
    Unknown,
    #[error(
        "the {0} join token has expired; rotate it with 'shoal swarm join-token --rotate {0}'"
    )]
    Expired(&'static str),
    #[error(
        "the {0} join token has been used its maximum of {1} times; rotate it with \
         'shoal swarm join-token --rotate {0}'"
    )]
    UsedUp(&'static str, u32),
}

/// Parameters of a newly minted token.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokenPolicy {
    /// Lifetime in milliseconds, 0 for none.
    pub ttl_ms: i64,
    /// Maximum number of joins, 0 for unlimited.
    pub max_uses: u32,
}

/// A fresh token record for a role.
pub fn mint(policy: TokenPolicy, now_ms: i64) -> JoinTokenRecord {
    let token = JoinToken::generate(b"");
    JoinTokenRecord {
        secret: token.secret().to_vec(),
        created_at_ms: now_ms,
        expires_at_ms: if policy.ttl_ms > 0 { now_ms + policy.ttl_ms } else { 0 },
        max_uses: policy.max_uses,
        uses: 0,
    }
}

/// The record of one role's token.
pub fn record(tokens: &JoinTokens, role: Role) -> Option<&JoinTokenRecord> {
    match role {
        Role::Worker => tokens.worker.as_ref(),
        Role::Manager => tokens.manager.as_ref(),
    }
}

/// The mutable record of one role's token.
pub fn record_mut(tokens: &mut JoinTokens, role: Role) -> &mut Option<JoinTokenRecord> {
    match role {
        Role::Worker => &mut tokens.worker,
        Role::Manager => &mut tokens.manager,
    }
}

/// The token string users see for a record.
pub fn encode(root_ca_pem: &str, rec: &JoinTokenRecord) -> String {
    as_token(root_ca_pem, rec).encode()
}

/// Checks a parsed token against the cluster and, if it is good, counts one use of it.
pub fn redeem(
    cluster: &mut Cluster,
    presented: &JoinToken,
    now_ms: i64,
) -> Result<Role, TokenRefused> {
    let root = cluster.root_ca.as_ref().map(|r| r.cert_pem.as_str()).unwrap_or_default();
    if !presented.matches_ca(root.as_bytes()) {
        return Err(TokenRefused::OtherCluster);
    }
    let tokens = cluster.join_tokens.get_or_insert_with(JoinTokens::default);
    // Compare against both roles, always, so timing does not tell which one matched.
    let matches: Vec<Role> = [Role::Worker, Role::Manager]
        .into_iter()
        .filter(|role| {
            record(tokens, *role).is_some_and(|rec| presented.secret_eq(&as_token(root, rec)))
        })
        .collect();
    let role = *matches.first().ok_or(TokenRefused::Unknown)?;
    let Some(rec) = record_mut(tokens, role).as_mut() else { return Err(TokenRefused::Unknown) };
    if rec.expires_at_ms != 0 && now_ms >= rec.expires_at_ms {
        return Err(TokenRefused::Expired(role.as_str()));
    }
    if rec.max_uses != 0 && rec.uses >= rec.max_uses {
        return Err(TokenRefused::UsedUp(role.as_str(), rec.max_uses));
    }
    // Only limited tokens are counted: counting every join would make all joins write the
    // cluster object and conflict with each other.
    if rec.max_uses != 0 {
        rec.uses += 1;
    }
    Ok(role)
}

/// Whether redeeming a token of `role` changes the cluster object (its use count).
pub fn counts_uses(cluster: &Cluster, role: Role) -> bool {
    let tokens = cluster.join_tokens.clone().unwrap_or_default();
    record(&tokens, role).is_some_and(|r| r.max_uses != 0)
}

fn as_token(root_ca_pem: &str, rec: &JoinTokenRecord) -> JoinToken {
    let mut secret = [0u8; 16];
    let n = rec.secret.len().min(16);
    secret[..n].copy_from_slice(&rec.secret[..n]);
    JoinToken::from_parts(ca_digest(root_ca_pem.as_bytes()), secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::RootCa;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nfake\n-----END CERTIFICATE-----\n";

    fn cluster(worker: JoinTokenRecord, manager: JoinTokenRecord) -> Cluster {
        Cluster {
            root_ca: Some(RootCa { cert_pem: CA.into(), key_pem: String::new() }),
            join_tokens: Some(JoinTokens { worker: Some(worker), manager: Some(manager) }),
            ..Default::default()
        }
    }

    fn token_of(rec: &JoinTokenRecord) -> JoinToken {
        JoinToken::parse(&encode(CA, rec)).unwrap()
    }

    #[test]
    fn each_token_grants_its_own_role() {
        let (w, m) = (mint(TokenPolicy::default(), 0), mint(TokenPolicy::default(), 0));
        let mut c = cluster(w.clone(), m.clone());
        assert_eq!(redeem(&mut c, &token_of(&w), 1), Ok(Role::Worker));
        assert_eq!(redeem(&mut c, &token_of(&m), 1), Ok(Role::Manager));
    }

    #[test]
    fn a_rotated_token_is_refused_and_the_other_role_still_works() {
        let (w, m) = (mint(TokenPolicy::default(), 0), mint(TokenPolicy::default(), 0));
        let mut c = cluster(w.clone(), m.clone());
        let fresh = mint(TokenPolicy::default(), 5);
        *record_mut(c.join_tokens.as_mut().unwrap(), Role::Worker) = Some(fresh.clone());
        assert_eq!(redeem(&mut c, &token_of(&w), 6), Err(TokenRefused::Unknown));
        assert_eq!(redeem(&mut c, &token_of(&fresh), 6), Ok(Role::Worker));
        assert_eq!(redeem(&mut c, &token_of(&m), 6), Ok(Role::Manager));
    }

    #[test]
    fn ttl_and_max_uses_are_enforced() {
        let w = mint(TokenPolicy { ttl_ms: 1000, max_uses: 2 }, 0);
        let mut c = cluster(w.clone(), mint(TokenPolicy::default(), 0));
        assert_eq!(redeem(&mut c, &token_of(&w), 10), Ok(Role::Worker));
        assert_eq!(redeem(&mut c, &token_of(&w), 20), Ok(Role::Worker));
        assert_eq!(redeem(&mut c, &token_of(&w), 30), Err(TokenRefused::UsedUp("worker", 2)));
        let w2 = mint(TokenPolicy { ttl_ms: 1000, max_uses: 0 }, 0);
        *record_mut(c.join_tokens.as_mut().unwrap(), Role::Worker) = Some(w2.clone());
        assert_eq!(redeem(&mut c, &token_of(&w2), 1000), Err(TokenRefused::Expired("worker")));
    }

    #[test]
    fn a_token_of_another_ca_is_refused_as_such() {
        let w = mint(TokenPolicy::default(), 0);
        let mut c = cluster(w.clone(), mint(TokenPolicy::default(), 0));
        let other = JoinToken::from_parts(ca_digest(b"another CA"), *token_of(&w).secret());
        assert_eq!(redeem(&mut c, &other, 1), Err(TokenRefused::OtherCluster));
    }
}
