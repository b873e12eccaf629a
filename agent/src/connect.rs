//! Dialing managers: re-exported from `shoal_proto::dial`, shared with the manager's Raft peers;
//! and what this node accepts as a manager, as the managers tell it.

pub use shoal_proto::dial::*;

use shoal_pki::ManagerTrust;
use shoal_proto::ManagerSet;

/// Takes in the manager set the managers sent: from now on a server is accepted as a manager
/// only if it is one of these nodes and its certificate is neither revoked nor superseded.
pub fn apply_manager_set(trust: &ManagerTrust, set: &ManagerSet) {
    let revocations = trust.revocations();
    revocations.replace_all(set.revoked_nodes.clone(), set.revoked_serials.clone());
    revocations.replace_superseded(set.superseded_serials.clone());
    trust.set_managers(set.node_ids.clone());
}

#[cfg(test)]
mod tests {
    #[test]
    fn clients_verify_the_name_the_ca_puts_in_manager_certificates() {
        assert_eq!(shoal_proto::dial::MANAGER_SERVER_NAME, shoal_pki::MANAGER_SERVER_NAME);
    }
}
