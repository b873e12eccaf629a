//! Capability sets as the runtime applies them: the names and the add/drop arithmetic are
//! `shoal_proto::spec::caps` (the managers check with them too); this adds the kernel mask and
//! the OCI form. No IO.

use std::collections::BTreeSet;

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};
pub use shoal_proto::spec::caps::{widening, ALL_CAPS, DEFAULT_CAPS};

use super::error::{Result, RuntimeError};

/// `net_admin`, `NET_ADMIN` and `CAP_NET_ADMIN` all name `CAP_NET_ADMIN`; `all` is `ALL`.
pub fn normalize(name: &str) -> Result<&'static str> {
    shoal_proto::spec::caps::normalize(name).map_err(RuntimeError::InvalidSpec)
}

/// The capability set after applying `add` and `drop` to the default, Docker's way.
pub fn effective(add: &[String], drop: &[String]) -> Result<BTreeSet<&'static str>> {
    shoal_proto::spec::caps::effective(add, drop).map_err(RuntimeError::InvalidSpec)
}

/// The kernel bit mask of a set, as `/proc/self/status` prints it.
pub fn mask(set: &BTreeSet<&'static str>) -> u64 {
    ALL_CAPS
        .iter()
        .enumerate()
        .filter(|(_, c)| set.contains(*c))
        .fold(0, |m, (i, _)| m | (1u64 << i))
}

/// OCI capabilities: bounding = effective = permitted = `set`; inheritable and ambient empty.
pub fn to_oci(set: &BTreeSet<&'static str>) -> Result<LinuxCapabilities> {
    let caps: Capabilities = set.iter().map(|c| parse(c)).collect::<Result<_>>()?;
    Ok(LinuxCapabilities::default()
        .set_bounding(Some(caps.clone()))
        .set_effective(Some(caps.clone()))
        .set_permitted(Some(caps))
        .set_inheritable(Some(Capabilities::new()))
        .set_ambient(Some(Capabilities::new()))
        .clone())
}

fn parse(name: &str) -> Result<Capability> {
    serde_json::from_value(serde_json::Value::String(name.to_string()))
        .map_err(|e| RuntimeError::Config(format!("capability {name} unknown to oci-spec: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_mask_matches_docker() {
        assert_eq!(mask(&effective(&[], &[]).unwrap()), 0xa80425fb);
    }

    #[test]
    fn every_name_converts_to_oci() {
        let all: BTreeSet<_> = ALL_CAPS.iter().copied().collect();
        let oci = to_oci(&all).unwrap();
        assert_eq!(oci.bounding().as_ref().unwrap().len(), 41);
        assert!(oci.ambient().as_ref().unwrap().is_empty());
    }
}
