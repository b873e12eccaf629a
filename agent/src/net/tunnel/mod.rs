//! The encrypted data plane (WireGuard protocol over UDP, through a TUN device).
