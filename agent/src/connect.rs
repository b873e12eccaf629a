//! Dialing managers: re-exported from `shoal_proto::dial`, shared with the manager's Raft peers.

pub use shoal_proto::dial::*;

#[cfg(test)]
mod tests {
    #[test]
    fn clients_verify_the_name_the_ca_puts_in_manager_certificates() {
        assert_eq!(shoal_proto::dial::MANAGER_SERVER_NAME, shoal_pki::MANAGER_SERVER_NAME);
    }
}
