//! Waiting for the kernel by watching, not by sleeping: a kernel uevent
//! netlink socket wakes the waiter whenever a device comes or goes, and the
//! caller's condition (read from sysfs) is checked again. This works with or
//! without udevd, because it listens to the kernel's own broadcast.
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    bind, recv, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

/// Kernel uevent multicast group (udevd's own group is 2).
const KERNEL_GROUP: u32 = 1;

/// A subscription to kernel uevents.
#[derive(Debug)]
pub struct Watcher {
    sock: Option<OwnedFd>,
}

impl Watcher {
    /// Subscribe. Must happen before the first check of the condition, so
    /// that an event between check and wait is not lost. If the socket
    /// cannot be opened, waiting degrades to polling every 50 ms.
    pub fn new() -> Watcher {
        let sock = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            SockProtocol::NetlinkKObjectUEvent,
        )
        .ok()
        .filter(|s| {
            use std::os::fd::AsRawFd;
            bind(s.as_raw_fd(), &NetlinkAddr::new(0, KERNEL_GROUP)).is_ok()
        });
        if sock.is_none() {
            tracing::debug!("no uevent socket; falling back to polling");
        }
        Watcher { sock }
    }

    /// Check `cond` now and after every uevent until it returns Some or
    /// `timeout` passes (then None).
    pub fn wait<T>(&self, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
        let start = Instant::now();
        loop {
            if let Some(v) = cond() {
                return Some(v);
            }
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return None;
            }
            self.next_events(left.min(Duration::from_millis(match self.sock {
                // A bounded re-check interval also covers state that changes
                // without a uevent (sysfs attributes such as session state).
                Some(_) => 500,
                None => 50,
            })));
        }
    }

    /// Block until some uevent arrives or `max` passes; drain what is queued.
    fn next_events(&self, max: Duration) {
        let Some(sock) = &self.sock else {
            std::thread::sleep(max);
            return;
        };
        let ms = u16::try_from(max.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(ms)).unwrap_or(0) > 0 {
            use std::os::fd::AsRawFd;
            let mut buf = [0u8; 8192];
            while recv(sock.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT)
                .map(|n| n > 0)
                .unwrap_or(false)
            {}
        }
    }
}

impl Default for Watcher {
    fn default() -> Self {
        Watcher::new()
    }
}
