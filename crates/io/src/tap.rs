//! A TAP device queue opened the way the data plane needs it: virtio-net header
//! on every frame, checksum and TCP segmentation offloads on, non-blocking,
//! optionally persistent.
//!
//! Every frame read from or written to a [`Tap`] starts with a
//! [`tapestry_dataplane::VNET_HDR_LEN`]-byte virtio-net header; the data plane
//! carries it through unchanged, so a 64 KiB TCP segment from one pod reaches
//! another pod as one write.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use crate::sys;

/// An open TAP queue.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    netns: Option<PathBuf>,
}

impl Tap {
    /// Opens or creates TAP `name` in the caller's network namespace, with offloads on.
    /// `persist` keeps the device after the descriptor is closed.
    pub fn open(name: &str, persist: bool) -> io::Result<Tap> {
        let (file, name) = sys::open_tap(name)?;
        let tap = Tap {
            file,
            name,
            netns: None,
        };
        tap.configure(persist)?;
        Ok(tap)
    }

    /// Opens or creates TAP `name` inside the network namespace at `netns`: a pod's
    /// `eth0` is created where it lives, and reattached there after a restart.
    pub fn open_in(netns: &Path, name: &str, persist: bool) -> io::Result<Tap> {
        let owned = name.to_owned();
        let (file, name) = sys::in_netns(netns, move || sys::open_tap(&owned))?;
        let tap = Tap {
            file,
            name,
            netns: Some(netns.to_path_buf()),
        };
        tap.configure(persist)?;
        Ok(tap)
    }

    /// Takes over a TAP queue another process opened and configured (the
    /// upgrade hand-off): nothing is set again, the device is as it was.
    pub fn from_fd(fd: OwnedFd, name: String, netns: Option<PathBuf>) -> Tap {
        Tap {
            file: File::from(fd),
            name,
            netns,
        }
    }

    /// The queue's descriptor, for handing over to another process.
    pub fn into_fd(self) -> OwnedFd {
        OwnedFd::from(self.file)
    }

    fn configure(&self, persist: bool) -> io::Result<()> {
        sys::set_offload(self.file.as_fd(), sys::TAP_OFFLOADS)?;
        sys::set_persist(self.file.as_fd(), persist)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The network namespace the TAP was opened in, if not the agent's own.
    pub fn netns(&self) -> Option<&Path> {
        self.netns.as_deref()
    }

    /// Stops the device outliving this descriptor: dropping the [`Tap`] after this
    /// removes the interface.
    pub fn unpersist(&self) -> io::Result<()> {
        sys::set_persist(self.file.as_fd(), false)
    }

    /// Reads one frame (virtio-net header included). `WouldBlock` when none is queued.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one frame (virtio-net header included).
    pub fn send(&self, frame: &[u8]) -> io::Result<usize> {
        (&self.file).write(frame)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}
