//! The TUN device: opened here, configured by `plumbing` with `ip`.
//!
//! Hand-rolled on purpose: it is one `open` and one `TUNSETIFF` ioctl. The TUN crates also
//! set addresses, MTUs and routes through ioctls or netlink of their own, which this project
//! does with iproute2, and bring dependencies we would not otherwise use.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use super::coalesce::VNET_HDR;
use super::segment::TUNNEL_VNET_HDR;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags in the union.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _union_rest: [u8; 22],
}

/// Offloads asked of the device: checksums, TCP segmentation, and UDP tunnels around it,
/// with or without their own checksum (`TUN_F_UDP_TUNNEL_GSO` and `…_CSUM`, Linux 6.17;
/// VXLAN devices checksum by default): TCP over VXLAN then reaches us as one packet.
const OFFLOADS: libc::c_uint = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | 0x080 | 0x100;

/// Creates the TUN device `name` (layer 3, no packet-info header, a `virtio_net_hdr` before
/// each packet so writes can be UDP GSO packets) in the calling thread's network namespace,
/// non-blocking, with [`OFFLOADS`] when the kernel has them. It lives as long as the file
/// (and its duplicates). Returns the vnet header's size: 24 with offloads, else 10.
pub(super) fn open(name: &str) -> io::Result<(File, usize)> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad interface name"));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
        _union_rest: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    set_iff(&file, &mut req)?;
    let hdr = if cfg!(target_endian = "little") && set_offloads(&file, TUNNEL_VNET_HDR, OFFLOADS) {
        TUNNEL_VNET_HDR
    } else {
        set_offloads(&file, VNET_HDR, 0);
        VNET_HDR
    };
    Ok((file, hdr))
}

/// Sets the vnet header's size and the offloads; `false` if the kernel refuses either.
#[allow(unsafe_code)]
fn set_offloads(file: &File, hdr: usize, offloads: libc::c_uint) -> bool {
    let size = hdr as libc::c_int;
    let fd = file.as_raw_fd();
    // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which outlives the call;
    // TUNSETOFFLOAD takes its flags by value.
    unsafe {
        libc::ioctl(fd, libc::TUNSETVNETHDRSZ, &size as *const libc::c_int) == 0
            && libc::ioctl(fd, libc::TUNSETOFFLOAD, offloads as libc::c_ulong) == 0
    }
}

#[allow(unsafe_code)]
fn set_iff(file: &File, req: &mut IfReq) -> io::Result<()> {
    // SAFETY: `file` is an open /dev/net/tun; TUNSETIFF reads (and writes back) a `struct
    // ifreq`, which `IfReq` matches in layout and size (40 bytes), and `req` outlives the call.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, req as *mut IfReq) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_has_the_kernels_layout() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        assert!(open("").is_err());
        assert!(open("a-name-longer-than-15").is_err());
    }
}
