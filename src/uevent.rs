//! Waiting for the kernel by watching, not by sleeping: a kernel uevent
//! netlink socket wakes the waiter whenever a device comes or goes, and the
//! caller's condition (read from sysfs) is checked again. This works with or
//! without udevd, because it listens to the kernel's own broadcast.
//! [`Watcher::udev`] hears udevd's broadcast instead: an event there means
//! udevd has finished with it (its links are made or gone), which is what
//! `udevadm settle` waits for, for one device instead of the whole queue.
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    bind, recv, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol,
    SockType,
};

/// Kernel uevent multicast group.
const KERNEL_GROUP: u32 = 1;
/// udevd's multicast group: events after its rules ran.
const UDEV_GROUP: u32 = 2;
/// Receive buffer for udevd's events: a detach's SCSI teardown sends dozens
/// of them while we wait for one; udevd asks for 128 MiB for its own socket.
const UDEV_RCVBUF: usize = 4 << 20;

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
        Watcher::subscribe(KERNEL_GROUP)
    }

    /// Subscribe to udevd's events (see the module doc). Only meaningful
    /// while udevd runs.
    pub fn udev() -> Watcher {
        let w = Watcher::subscribe(UDEV_GROUP);
        if let Some(s) = &w.sock {
            // Best effort: a smaller buffer only makes an overflow likelier,
            // and an overflow is reported (see `wait_event`).
            let _ = nix::sys::socket::setsockopt(s, sockopt::RcvBufForce, &UDEV_RCVBUF)
                .or_else(|_| nix::sys::socket::setsockopt(s, sockopt::RcvBuf, &UDEV_RCVBUF));
        }
        w
    }

    fn subscribe(group: u32) -> Watcher {
        // Under a virtual clock no real uevent can concern the modelled host.
        if crate::clock::is_virtual() {
            return Watcher { sock: None };
        }
        let sock = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            SockProtocol::NetlinkKObjectUEvent,
        )
        .ok()
        .filter(|s| {
            use std::os::fd::AsRawFd;
            bind(s.as_raw_fd(), &NetlinkAddr::new(0, group)).is_ok()
        });
        if sock.is_none() {
            tracing::debug!("no uevent socket; falling back to polling");
        }
        Watcher { sock }
    }

    /// Check `cond` now and after every uevent until it returns Some or
    /// `timeout` passes (then None).
    pub fn wait<T>(&self, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
        let start = crate::clock::now();
        loop {
            if let Some(v) = cond() {
                return Some(v);
            }
            let left = timeout.saturating_sub(crate::clock::since(start));
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

    /// Wait until an event carrying every `KEY=VALUE` of `props` arrives
    /// (Seen), `timeout` passes (Timeout), or events were dropped or cannot
    /// be read, so one may have been missed (Lost).
    pub fn wait_event(&self, timeout: Duration, props: &[&str]) -> Event {
        let Some(sock) = &self.sock else {
            return Event::Lost;
        };
        // Both message formats (the kernel's `ACTION@DEVPATH\0K=V\0...` and
        // libudev's header + `K=V\0...`) carry the properties NUL-separated.
        let wanted: Vec<Vec<u8>> = props
            .iter()
            .map(|p| format!("{p}\0").into_bytes())
            .collect();
        let start = crate::clock::now();
        loop {
            let left = timeout.saturating_sub(crate::clock::since(start));
            if left.is_zero() {
                return Event::Timeout;
            }
            match receive(sock, left, |msg| wanted.iter().all(|w| contains(msg, w))) {
                Ok(true) => return Event::Seen,
                Ok(false) => {}
                Err(()) => return Event::Lost,
            }
        }
    }

    /// Block until some uevent arrives or `max` passes; drain what is queued.
    fn next_events(&self, max: Duration) {
        match &self.sock {
            // The caller checks its condition again either way.
            Some(sock) => {
                let _ = receive(sock, max, |_| false);
            }
            None => crate::clock::sleep(max),
        }
    }
}

/// Wait up to `max` for the socket to be readable, then hand each queued
/// message to `found` until it returns true (Ok(true)) or the queue is
/// empty (Ok(false)). Err when the socket failed or overflowed (ENOBUFS:
/// events were dropped).
fn receive(
    sock: &OwnedFd,
    max: Duration,
    mut found: impl FnMut(&[u8]) -> bool,
) -> Result<bool, ()> {
    use std::os::fd::AsRawFd;
    let ms = u16::try_from(max.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(0) | Err(nix::errno::Errno::EINTR) => return Ok(false),
        Ok(_) => {}
        Err(_) => return Err(()),
    }
    let mut buf = [0u8; 16384];
    loop {
        match recv(sock.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(n) if found(&buf[..n]) => return Ok(true),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::EAGAIN) => return Ok(false),
            Err(_) => return Err(()),
        }
    }
}

/// What [`Watcher::wait_event`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The event came.
    Seen,
    /// It did not come in time.
    Timeout,
    /// It may have come unseen (no socket, or dropped events).
    Lost,
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

impl Default for Watcher {
    fn default() -> Self {
        Watcher::new()
    }
}
