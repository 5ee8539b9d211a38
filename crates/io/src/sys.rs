//! The only `unsafe` code in Tapestry, private to the I/O crate behind safe
//! functions: TAP ioctls (`TUNSETIFF`, offloads, persistence), `setns`, batched UDP
//! (`recvmmsg` with UDP GRO, `sendmmsg`, `sendmsg` with UDP GSO) and socket buffers.
//!
//! Why not the `tun-tap` crate: it opens TAPs without `IFF_VNET_HDR`, cannot turn on
//! offloads (`TUNSETOFFLOAD`) and cannot make a device persistent (`TUNSETPERSIST`).
//! Without the virtio-net header the kernel must segment every TCP stream into
//! 1,500-byte frames before handing it to us; with it we move 64 KiB segments.
//! See docs/architecture.md.
//!
//! Every block carries a `// SAFETY:` note; file descriptors are owned by
//! [`std::os::fd::OwnedFd`]/[`std::fs::File`]; [`cvt`] turns the C convention (`-1`
//! and `errno`) into [`io::Error`].
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
    // Without blocking: a FIFO put at that path must not hang the caller (setns
    // then refuses it).
    let ns = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(netns)
        .map_err(|e| {
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

/// Preallocated `recvmmsg`/`sendmmsg` bookkeeping for up to `cap` datagrams.
/// Allocated once per socket; every batch reuses it (no allocation per packet).
pub struct MmsgBatch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_in>,
    /// One control-message buffer per datagram (u64s for cmsghdr alignment).
    ctrl: Vec<[u64; CTRL_WORDS]>,
}

/// Control buffer per datagram: room for a few `int` control messages.
const CTRL_WORDS: usize = 8;

// SAFETY: the raw pointers inside the headers only ever point into buffers the
// owning thread passes to `recv`/`send` for the duration of one call; they are
// rewritten before every use, so moving the batch to another thread is sound.
unsafe impl Send for MmsgBatch {}

fn zeroed_sockaddr() -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: 0,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: 0 },
        sin_zero: [0; 8],
    }
}

fn sockaddr_from(addr: std::net::SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap_or(2),
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn sockaddr_to(sa: &libc::sockaddr_in) -> std::net::SocketAddrV4 {
    std::net::SocketAddrV4::new(
        u32::from_be(sa.sin_addr.s_addr).into(),
        u16::from_be(sa.sin_port),
    )
}

impl MmsgBatch {
    pub fn new(cap: usize) -> MmsgBatch {
        let iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        // SAFETY: mmsghdr is a plain C struct for which all-zero bytes is a valid
        // (empty) value.
        let hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        MmsgBatch {
            hdrs: vec![hdr; cap],
            iovs: vec![iov; cap],
            addrs: vec![zeroed_sockaddr(); cap],
            ctrl: vec![[0u64; CTRL_WORDS]; cap],
        }
    }

    /// Receives up to `bufs.len()` datagrams with one `recvmmsg`; fills `lens`,
    /// `from` and `segs` for each. `segs[i]` is the UDP GRO segment size when the
    /// kernel coalesced several datagrams of one flow into `bufs[i]` (they are
    /// then back to back, each that long but the last), else 0. Returns how many
    /// arrived (`WouldBlock` if none).
    pub fn recv(
        &mut self,
        fd: BorrowedFd<'_>,
        bufs: &mut [Vec<u8>],
        lens: &mut [usize],
        from: &mut [std::net::SocketAddrV4],
        segs: &mut [usize],
    ) -> io::Result<usize> {
        let n = bufs
            .len()
            .min(self.hdrs.len())
            .min(lens.len())
            .min(from.len())
            .min(segs.len());
        for (i, buf) in bufs.iter_mut().take(n).enumerate() {
            let (Some(iov), Some(addr), Some(hdr), Some(ctrl)) = (
                self.iovs.get_mut(i),
                self.addrs.get_mut(i),
                self.hdrs.get_mut(i),
                self.ctrl.get_mut(i),
            ) else {
                break;
            };
            *iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            hdr.msg_hdr.msg_name = (addr as *mut libc::sockaddr_in).cast();
            hdr.msg_hdr.msg_namelen =
                libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_in>()).unwrap_or(16);
            hdr.msg_hdr.msg_iov = iov;
            hdr.msg_hdr.msg_iovlen = 1;
            hdr.msg_hdr.msg_control = ctrl.as_mut_ptr().cast();
            hdr.msg_hdr.msg_controllen = std::mem::size_of::<[u64; CTRL_WORDS]>();
            hdr.msg_hdr.msg_flags = 0;
            hdr.msg_len = 0;
        }
        let vlen = libc::c_uint::try_from(n).unwrap_or(0);
        // SAFETY: the first `n` headers point at `n` live iovecs, each covering a
        // whole, exclusively borrowed buffer of `bufs`, at `n` sockaddr slots and
        // at `n` control buffers of the stated length; all outlive the call. The
        // kernel writes at most iov_len / msg_controllen bytes into them.
        let got = cvt(unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                vlen,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        })?;
        let got = usize::try_from(got).unwrap_or(0).min(n);
        for i in 0..got {
            if let (Some(h), Some(a), Some(l), Some(f), Some(g)) = (
                self.hdrs.get(i),
                self.addrs.get(i),
                lens.get_mut(i),
                from.get_mut(i),
                segs.get_mut(i),
            ) {
                *l = usize::try_from(h.msg_len).unwrap_or(0);
                *f = sockaddr_to(a);
                *g = gro_segment_size(&h.msg_hdr);
            }
        }
        Ok(got)
    }
}

impl MmsgBatch {
    /// Sends `bytes` to `dst` as consecutive datagrams of `segment_len` bytes (the
    /// last may be shorter), batched into as few `sendmmsg` calls as possible.
    /// Returns how many datagrams were sent; stops at the first error.
    pub fn send_segments(
        &mut self,
        fd: BorrowedFd<'_>,
        bytes: &[u8],
        segment_len: usize,
        dst: std::net::SocketAddrV4,
    ) -> io::Result<usize> {
        if segment_len == 0 || bytes.is_empty() {
            return Ok(0);
        }
        let total = bytes.len().div_ceil(segment_len);
        let mut sent = 0;
        while sent < total {
            let n = (total - sent).min(self.hdrs.len());
            for i in 0..n {
                let start = (sent + i) * segment_len;
                let end = (start + segment_len).min(bytes.len());
                let Some(chunk) = bytes.get(start..end) else {
                    break;
                };
                let (Some(iov), Some(addr), Some(hdr)) = (
                    self.iovs.get_mut(i),
                    self.addrs.get_mut(i),
                    self.hdrs.get_mut(i),
                ) else {
                    break;
                };
                *addr = sockaddr_from(dst);
                *iov = libc::iovec {
                    iov_base: chunk.as_ptr().cast_mut().cast(),
                    iov_len: chunk.len(),
                };
                hdr.msg_hdr.msg_name = (addr as *mut libc::sockaddr_in).cast();
                hdr.msg_hdr.msg_namelen =
                    libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_in>())
                        .unwrap_or(16);
                hdr.msg_hdr.msg_iov = iov;
                hdr.msg_hdr.msg_iovlen = 1;
                hdr.msg_hdr.msg_control = std::ptr::null_mut();
                hdr.msg_hdr.msg_controllen = 0;
                hdr.msg_hdr.msg_flags = 0;
            }
            let vlen = libc::c_uint::try_from(n).unwrap_or(0);
            // SAFETY: the first `n` headers point at live iovecs over sub-slices of
            // `bytes` (only read by the kernel) and at initialised sockaddrs, all
            // outliving the call.
            let got = match cvt(unsafe {
                libc::sendmmsg(
                    fd.as_raw_fd(),
                    self.hdrs.as_mut_ptr(),
                    vlen,
                    libc::MSG_DONTWAIT,
                )
            }) {
                Ok(g) => usize::try_from(g).unwrap_or(0),
                Err(_) if sent > 0 => return Ok(sent),
                Err(e) => return Err(e),
            };
            if got == 0 {
                break;
            }
            sent += got;
        }
        Ok(sent)
    }
}

/// Sets a socket's receive buffer, past `rmem_max` if we may (`SO_RCVBUFFORCE`
/// needs CAP_NET_ADMIN, which the agent has), else as far as allowed.
pub fn set_recv_buffer(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    set_buffer(fd, [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF], bytes)
}

/// Sets a socket's send buffer (`SO_SNDBUFFORCE`, else `SO_SNDBUF`).
pub fn set_send_buffer(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    set_buffer(fd, [libc::SO_SNDBUFFORCE, libc::SO_SNDBUF], bytes)
}

/// Tries each `SOL_SOCKET` option in turn with `bytes`; the first that works wins.
fn set_buffer(fd: BorrowedFd<'_>, options: [libc::c_int; 2], bytes: usize) -> io::Result<()> {
    let val = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
    for opt in options {
        // SAFETY: `val` is a live c_int and `len` its size; the kernel only reads it.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&val as *const libc::c_int).cast(),
                len,
            )
        };
        if r == 0 {
            return Ok(());
        }
    }
    Err(io::Error::last_os_error())
}

/// The `UDP_GRO` segment size in a received message's control data, or 0.
fn gro_segment_size(msg: &libc::msghdr) -> usize {
    // SAFETY: `msg` was filled by recvmmsg: msg_control points at this batch's
    // control buffer (alive for the batch's lifetime) and msg_controllen is the
    // length the kernel wrote; the CMSG_* helpers stay within it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == libc::UDP_GRO {
                let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                return usize::try_from(data.read_unaligned()).unwrap_or(0);
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    0
}

/// Asks the kernel to coalesce received datagrams of one flow (`UDP_GRO`,
/// Linux 5.0): one receive then carries up to 64 KiB of same-sized datagrams.
pub fn enable_udp_gro(fd: BorrowedFd<'_>) -> io::Result<()> {
    let one: libc::c_int = 1;
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: `one` is a live c_int of size `len`; the kernel only reads it.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&one as *const libc::c_int).cast(),
            len,
        )
    })?;
    Ok(())
}

/// Largest UDP payload of one IPv4 datagram: what one GSO send may carry in all.
pub const UDP_GSO_MAX_BYTES: usize = 65_507;
/// Most segments one GSO send may carry (the kernel's UDP_MAX_SEGMENTS is 64 on
/// older kernels, 128 on newer).
pub const UDP_GSO_MAX_SEGMENTS: usize = 64;

/// Sends `bytes` to `dst` as datagrams of `segment_len` bytes (the last may be
/// shorter) with one `sendmsg` carrying a `UDP_SEGMENT` control message (UDP GSO,
/// Linux 4.18): one trip through the stack for the whole run. `bytes` must hold
/// at most [`UDP_GSO_MAX_SEGMENTS`] segments and [`UDP_GSO_MAX_BYTES`] bytes.
pub fn send_gso(
    fd: BorrowedFd<'_>,
    bytes: &[u8],
    segment_len: usize,
    dst: std::net::SocketAddrV4,
) -> io::Result<usize> {
    let seg =
        u16::try_from(segment_len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut addr = sockaddr_from(dst);
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    let mut ctrl = [0u64; CTRL_WORDS];
    // SAFETY: msghdr is a plain C struct; all-zero is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_in).cast();
    msg.msg_namelen =
        libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_in>()).unwrap_or(16);
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctrl.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(u32::try_from(std::mem::size_of::<u16>()).unwrap_or(2)) };
    msg.msg_controllen = usize::try_from(space).unwrap_or(0);
    // SAFETY: msg_control points at `ctrl` (64 bytes, u64-aligned) and
    // msg_controllen (CMSG_SPACE of a u16, 24 bytes) fits inside it, so
    // CMSG_FIRSTHDR returns a header within `ctrl` and CMSG_DATA room for a u16.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() {
            return Err(io::Error::other(
                "no room for the UDP_SEGMENT control message",
            ));
        }
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
        (*cmsg).cmsg_len = usize::try_from(libc::CMSG_LEN(
            u32::try_from(std::mem::size_of::<u16>()).unwrap_or(2),
        ))
        .unwrap_or(0);
        libc::CMSG_DATA(cmsg).cast::<u16>().write_unaligned(seg);
    }
    // SAFETY: every pointer in `msg` refers to locals (`addr`, `iov` over
    // `bytes`, `ctrl`) that outlive the call; the kernel only reads them.
    let sent = cvt_isize(unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_DONTWAIT) })?;
    Ok(sent)
}

fn cvt_isize(ret: isize) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(usize::try_from(ret).unwrap_or(0))
    }
}

/// A shared, writable mapping of a whole file (`MAP_SHARED`): stores into it land
/// in the file's pages, which the kernel keeps when the process dies. Unmapped on
/// drop. Used for the flow file (`crate::flowfile`).
pub struct SharedMapping {
    ptr: core::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value alone (no other handle
// in this process aliases it); moving it to another thread moves that ownership.
unsafe impl Send for SharedMapping {}

impl SharedMapping {
    /// Maps the first `len` bytes of `file` (opened read-write, at least `len`
    /// long) read-write and shared.
    pub fn map(file: &File, len: usize) -> io::Result<SharedMapping> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot map 0 bytes",
            ));
        }
        // SAFETY: a fresh mapping (no address hint) of `len` bytes of a file
        // descriptor borrowed for the call; the result is checked against
        // MAP_FAILED before use.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = core::ptr::NonNull::new(p.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null address"))?;
        Ok(SharedMapping { ptr, len })
    }

    /// The mapped bytes.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is the start of a live mapping of `len` readable and
        // writable bytes (unmapped only in `drop`), and `&mut self` makes this
        // the only reference into it for the borrow's life. The file is the
        // agent's own (its state dir is locked), so no other process writes it.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region `map` created; no reference into it
        // outlives `self`.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// Most descriptors one `sendmsg` may carry (the kernel's `SCM_MAX_FD`).
pub const MAX_FDS_PER_MESSAGE: usize = 253;

/// The bytes `n` descriptors take in a control message.
fn fd_bytes(n: usize) -> io::Result<libc::c_uint> {
    n.checked_mul(std::mem::size_of::<libc::c_int>())
        .and_then(|b| libc::c_uint::try_from(b).ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors"))
}

/// Sends `data` (not empty) with `fds` attached (`SCM_RIGHTS`) on the Unix
/// stream socket `sock`, as one message. The descriptors stay open here too.
pub fn send_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if data.is_empty() || fds.len() > MAX_FDS_PER_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a descriptor message needs 1 or more data bytes and at most {MAX_FDS_PER_MESSAGE} descriptors"
            ),
        ));
    }
    let raw: Vec<libc::c_int> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let payload = std::mem::size_of_val(raw.as_slice());
    let payload_c = fd_bytes(raw.len())?;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(payload_c) } as usize;
    // u64 words keep the control buffer aligned for `cmsghdr`.
    let mut control = vec![0u64; space.div_ceil(8).max(1)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is valid (no name, no iov, no control).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !raw.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: `msg_control` points at `space` zeroed, aligned bytes, room for
        // one header and `payload` bytes of data, which CMSG_FIRSTHDR/CMSG_DATA
        // address inside it; the copy writes exactly `payload` bytes there.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            if cmsg.is_null() {
                return Err(io::Error::other("no room for the descriptors' header"));
            }
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(payload_c) as _;
            core::ptr::copy_nonoverlapping(
                raw.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                payload,
            );
        }
    }
    loop {
        // SAFETY: `msg` points at `iov` (over `data`, alive for the call) and at
        // `control`, both valid for the lengths it gives.
        let sent = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        match sent {
            -1 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            // The descriptors went with the first byte; the rest as plain data.
            n if (n as usize) < data.len() => {
                use std::io::Write;
                let rest = data.get(n as usize..).unwrap_or_default();
                let mut stream = std::os::unix::net::UnixStream::from(sock.try_clone_to_owned()?);
                return stream.write_all(rest);
            }
            _ => return Ok(()),
        }
    }
}

/// Receives one message sent by [`send_fds`] on the Unix stream socket `sock`:
/// its data (up to `buf.len()` bytes) and the descriptors it carried, owned
/// (close-on-exec). `Ok((0, _))` is the peer gone. Descriptors beyond
/// `max_fds`, or cut off by the kernel (`MSG_CTRUNC`), are an error (the ones
/// that did arrive are closed).
pub fn recv_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    max_fds: usize,
) -> io::Result<(usize, Vec<std::os::fd::OwnedFd>)> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let max_fds = max_fds.min(MAX_FDS_PER_MESSAGE);
    let room = fd_bytes(max_fds)?;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(room) } as usize;
    let mut control = vec![0u64; space.div_ceil(8).max(1)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let n = loop {
        // SAFETY: `msg` points at `iov` (over `buf`) and `control`, valid for
        // the lengths it gives; the kernel writes within them.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `control` up to `msg_controllen`; the CMSG_*
    // macros walk headers inside it, and each SCM_RIGHTS payload holds
    // `(cmsg_len - CMSG_LEN(0)) / sizeof(int)` descriptors now owned by this
    // process, each taken into an OwnedFd exactly once (read unaligned: the
    // payload's alignment is the header's).
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let bytes = ((*cmsg).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                for i in 0..bytes / std::mem::size_of::<libc::c_int>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("more than {max_fds} descriptors in one message"),
        ));
    }
    Ok((n, fds))
}

#[cfg(test)]
mod fd_tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    fn temp_file(tag: &str, text: &str) -> File {
        let path = std::env::temp_dir().join(format!("tapestry-fd-{}-{tag}", std::process::id()));
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn descriptors_cross_a_socketpair_and_stay_the_same_open_files() {
        let (a, b) = UnixStream::pair().unwrap();
        let files: Vec<File> = (0..3)
            .map(|i| temp_file(&i.to_string(), &format!("file {i}")))
            .collect();
        let fds: Vec<BorrowedFd<'_>> = files.iter().map(AsFd::as_fd).collect();
        send_fds(a.as_fd(), b"three files\n", &fds).unwrap();
        // A second message right behind, without descriptors: not glued to the first.
        send_fds(a.as_fd(), b"none\n", &[]).unwrap();
        let mut buf = [0u8; 64];
        let (n, got) = recv_fds(b.as_fd(), &mut buf, 8).unwrap();
        assert_eq!(&buf[..n], b"three files\n");
        assert_eq!(got.len(), 3);
        for (i, fd) in got.into_iter().enumerate() {
            // The same open file description: the offset the sender left is shared.
            let mut f = File::from(fd);
            f.seek(std::io::SeekFrom::Start(0)).unwrap();
            let mut text = String::new();
            f.read_to_string(&mut text).unwrap();
            assert_eq!(text, format!("file {i}"));
        }
        let (n, got) = recv_fds(b.as_fd(), &mut buf, 8).unwrap();
        assert_eq!((&buf[..n], got.len()), (&b"none\n"[..], 0));
        drop(a);
        assert_eq!(recv_fds(b.as_fd(), &mut buf, 8).unwrap().0, 0, "peer gone");
    }

    #[test]
    fn more_descriptors_than_room_is_an_error_not_a_silent_loss() {
        let (a, b) = UnixStream::pair().unwrap();
        let files: Vec<File> = (0..4).map(|i| temp_file(&format!("x{i}"), "x")).collect();
        let fds: Vec<BorrowedFd<'_>> = files.iter().map(AsFd::as_fd).collect();
        send_fds(a.as_fd(), b"four", &fds).unwrap();
        let mut buf = [0u8; 16];
        let e = recv_fds(b.as_fd(), &mut buf, 2).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(
            send_fds(a.as_fd(), b"", &fds).is_err(),
            "no data byte to carry them"
        );
    }
}
