//! The only `unsafe` code in Tapestry: TAP ioctls and `setns`.
//!
//! Why not the `tun-tap` crate: it opens TAPs without `IFF_VNET_HDR`, cannot turn on
//! offloads (`TUNSETOFFLOAD`) and cannot make a device persistent (`TUNSETPERSIST`).
//! Without the virtio-net header the kernel must segment every TCP stream into
//! 1,500-byte frames before handing it to us; with it we move 64 KiB segments.
//! See docs/architecture.md.
//!
//! Every block carries a `// SAFETY:` note; file descriptors are owned by
//! [`OwnedFd`]/[`File`]; [`cvt`] turns the C convention (`-1` and `errno`) into
//! [`io::Error`].
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Offloads we ask the kernel for: checksum offload and TCP segmentation offload
/// for IPv4 and IPv6 (with ECN), so TCP arrives as up to 64 KiB segments.
pub const TAP_OFFLOADS: libc::c_uint =
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;

/// Maximum length of an interface name, without the terminating NUL.
pub const IFNAME_MAX: usize = libc::IFNAMSIZ - 1;

/// Turns a C return value into a Result: `-1` means `errno` holds the error.
fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `struct ifreq` as TUNSETIFF reads it: a name and a flags short (the rest of
/// the kernel's union is padding here).
#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn ifreq(name: &str, flags: libc::c_short) -> io::Result<IfReqFlags> {
    if name.is_empty() || name.len() > IFNAME_MAX || name.bytes().any(|b| b == 0 || b == b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {name:?} (1 to {IFNAME_MAX} bytes, no '/')"),
        ));
    }
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags,
        _pad: [0; 22],
    };
    for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
        *dst = libc::c_char::from_ne_bytes([src]);
    }
    Ok(req)
}

/// Opens (creating it if needed) the TAP device `name` in the calling thread's
/// network namespace, with `IFF_VNET_HDR` and `IFF_NO_PI`, and returns its
/// queue file and the name the kernel gave it.
pub fn open_tap(name: &str) -> io::Result<(File, String)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open("/dev/net/tun")?;
    let flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    let mut req = ifreq(
        name,
        libc::c_short::try_from(flags).map_err(io::Error::other)?,
    )?;
    // SAFETY: `file` is an open /dev/net/tun descriptor; TUNSETIFF reads and writes
    // a `struct ifreq`, and `req` is a properly sized, initialised, exclusively
    // borrowed buffer of at least that size (IFNAMSIZ + 24 bytes) for the call.
    cvt(unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::TUNSETIFF,
            &mut req as *mut IfReqFlags,
        )
    })?;
    // SAFETY: the kernel wrote a NUL-terminated name of at most IFNAMSIZ bytes into
    // `req.name`, which lives for this whole expression.
    let got = unsafe { CStr::from_ptr(req.name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    Ok((file, got))
}

/// Turns the offloads in `flags` (TUN_F_*) on for the TAP behind `fd`.
pub fn set_offload(fd: BorrowedFd<'_>, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long); `fd`
    // is a TAP queue descriptor borrowed for the call.
    cvt(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            libc::c_ulong::from(flags),
        )
    })?;
    Ok(())
}

/// Makes the TAP outlive its file descriptor (`true`) or not (`false`): a
/// persistent TAP survives an agent restart, so the pod keeps its `eth0`.
pub fn set_persist(fd: BorrowedFd<'_>, persist: bool) -> io::Result<()> {
    let arg = libc::c_ulong::from(persist);
    // SAFETY: TUNSETPERSIST takes its argument by value; `fd` is a TAP queue
    // descriptor borrowed for the call.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETPERSIST, arg) })?;
    Ok(())
}

/// Runs `f` on a fresh thread that has joined the network namespace at `netns`
/// (a bind-mounted namespace such as `/run/netns/NAME`, or `/proc/PID/ns/net`).
/// Only that thread changes namespace; processes it spawns inherit it. File
/// descriptors opened there (a TAP queue) stay valid wherever they are used.
pub fn in_netns<T, F>(netns: &Path, f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    let ns = File::open(netns).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("network namespace {}: {e}", netns.display()),
        )
    })?;
    let handle = std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            // SAFETY: `ns` is an open namespace file for the whole call; setns only
            // changes the namespace of this (new, otherwise idle) thread.
            cvt(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("setns into the pod's network namespace: {e}"),
                )
            })?;
            f()
        })?;
    handle
        .join()
        .map_err(|_| io::Error::other("netns worker thread panicked"))?
}
