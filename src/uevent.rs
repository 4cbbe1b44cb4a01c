//! Waiting for the kernel by watching, not by sleeping: a kernel uevent
//! netlink socket wakes the waiter whenever a device comes or goes, and the
//! caller's condition (read from sysfs) is checked again. This works with or
//! without udevd, because it listens to the kernel's own broadcast.
//! [`Watcher::udev`] hears udevd's broadcast instead, through libudev's
//! monitor (the `udev` crate): an event there means udevd has finished with
//! it (its links are made or gone), which is what `udevadm settle` waits
//! for, for one device instead of the whole queue.
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    bind, getsockopt, recv, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr,
    SockFlag, SockProtocol, SockType,
};

/// Kernel uevent multicast group.
const KERNEL_GROUP: u32 = 1;
/// The subsystems whose udevd events callers wait for (filtered in the
/// kernel by libudev's socket filter, so the rest never fills the buffer):
/// block, for an array's disk going away after `mdadm --stop`.
const UDEV_SUBSYSTEMS: &[&str] = &["block"];
/// Receive buffer for udevd's events: a detach's SCSI teardown sends dozens
/// of them while we wait for one; udevd asks for 128 MiB for its own socket.
const UDEV_RCVBUF: usize = 4 << 20;

/// A subscription to kernel uevents.
#[derive(Debug)]
pub struct Watcher {
    source: Source,
}

/// Where a [`Watcher`]'s events come from.
enum Source {
    /// The kernel's broadcast: a raw netlink socket bound to its group.
    Kernel(OwnedFd),
    /// udevd's broadcast, after its rules ran.
    Udev(udev::MonitorSocket),
    /// No socket could be opened: waiting polls.
    None,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Kernel(s) => f.debug_tuple("Kernel").field(s).finish(),
            Source::Udev(m) => f.debug_tuple("Udev").field(&m.as_raw_fd()).finish(),
            Source::None => f.write_str("None"),
        }
    }
}

impl Watcher {
    /// Subscribe. Must happen before the first check of the condition, so
    /// that an event between check and wait is not lost. If the socket
    /// cannot be opened, waiting degrades to polling every 50 ms.
    pub fn new() -> Watcher {
        // Under a virtual clock no real uevent can concern the modelled host.
        if crate::clock::is_virtual() {
            return Watcher::polling();
        }
        let sock = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            SockProtocol::NetlinkKObjectUEvent,
        )
        .ok()
        .filter(|s| bind(s.as_raw_fd(), &NetlinkAddr::new(0, KERNEL_GROUP)).is_ok());
        match sock {
            Some(s) => Watcher {
                source: Source::Kernel(s),
            },
            None => {
                tracing::debug!("no uevent socket; falling back to polling");
                Watcher::polling()
            }
        }
    }

    /// Subscribe to udevd's events (see the module doc) of the subsystems
    /// callers wait on. Only meaningful while udevd runs; without a monitor
    /// [`Watcher::wait_event`] answers Lost.
    pub fn udev() -> Watcher {
        if crate::clock::is_virtual() {
            return Watcher::polling();
        }
        let monitor = udev::MonitorBuilder::new()
            .and_then(|b| {
                UDEV_SUBSYSTEMS
                    .iter()
                    .try_fold(b, |b, s| b.match_subsystem(s))
            })
            .and_then(udev::MonitorBuilder::listen);
        match monitor {
            Ok(m) => {
                raise_rcvbuf(m.as_fd());
                Watcher {
                    source: Source::Udev(m),
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "no udev monitor; falling back to polling");
                Watcher::polling()
            }
        }
    }

    /// No subscription: [`Watcher::wait`] polls, [`Watcher::wait_event`]
    /// answers Lost.
    fn polling() -> Watcher {
        Watcher {
            source: Source::None,
        }
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
            self.next_events(left.min(Duration::from_millis(match self.source {
                // A bounded re-check interval also covers state that changes
                // without a uevent (sysfs attributes such as session state).
                Source::Kernel(_) | Source::Udev(_) => 500,
                Source::None => 50,
            })));
        }
    }

    /// Wait until an event carrying every `KEY=VALUE` of `props` arrives
    /// (Seen), `timeout` passes (Timeout), or events were dropped or cannot
    /// be read, so one may have been missed (Lost).
    pub fn wait_event(&self, timeout: Duration, props: &[&str]) -> Event {
        if let Source::None = self.source {
            return Event::Lost;
        }
        // The kernel's message is `ACTION@DEVPATH\0K=V\0...`: its properties
        // NUL-separated.
        let wanted: Vec<Vec<u8>> = props
            .iter()
            .map(|p| format!("{p}\0").into_bytes())
            .collect();
        let pairs: Vec<(&str, &str)> = props
            .iter()
            .map(|p| p.split_once('=').unwrap_or((p, "")))
            .collect();
        let start = crate::clock::now();
        loop {
            let left = timeout.saturating_sub(crate::clock::since(start));
            if left.is_zero() {
                return Event::Timeout;
            }
            let got = match &self.source {
                Source::Kernel(sock) => {
                    receive_kernel(sock, left, |msg| wanted.iter().all(|w| contains(msg, w)))
                }
                Source::Udev(m) => receive_udev(m, left, |ev| {
                    pairs
                        .iter()
                        .all(|(k, v)| ev.property_value(k).is_some_and(|x| x == *v))
                }),
                Source::None => Err(()),
            };
            match got {
                Ok(true) => return Event::Seen,
                Ok(false) => {}
                Err(()) => return Event::Lost,
            }
        }
    }

    /// Block until some uevent arrives or `max` passes; drain what is queued.
    fn next_events(&self, max: Duration) {
        // The caller checks its condition again either way.
        match &self.source {
            Source::Kernel(sock) => {
                let _ = receive_kernel(sock, max, |_| false);
            }
            Source::Udev(m) => {
                let _ = receive_udev(m, max, |_| false);
            }
            Source::None => crate::clock::sleep(max),
        }
    }
}

/// Raise the monitor's receive buffer to [`UDEV_RCVBUF`] unless it is larger
/// already. Best effort: a smaller buffer only makes an overflow likelier,
/// and an overflow is reported (see `wait_event`).
fn raise_rcvbuf(fd: BorrowedFd<'_>) {
    // The kernel reports twice what was set (its bookkeeping overhead).
    if getsockopt(&fd, sockopt::RcvBuf).is_ok_and(|n| n >= 2 * UDEV_RCVBUF) {
        return;
    }
    let _ = setsockopt(&fd, sockopt::RcvBufForce, &UDEV_RCVBUF)
        .or_else(|_| setsockopt(&fd, sockopt::RcvBuf, &UDEV_RCVBUF));
}

/// Wait up to `max` for `fd` to be readable. Ok(false): nothing came.
fn readable(fd: BorrowedFd<'_>, max: Duration) -> Result<bool, ()> {
    let ms = u16::try_from(max.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(0) | Err(Errno::EINTR) => Ok(false),
        Ok(_) => Ok(true),
        Err(_) => Err(()),
    }
}

/// Wait up to `max` for the socket to be readable, then hand each queued
/// message to `found` until it returns true (Ok(true)) or the queue is
/// empty (Ok(false)). Err when the socket failed or overflowed (ENOBUFS:
/// events were dropped).
fn receive_kernel(
    sock: &OwnedFd,
    max: Duration,
    mut found: impl FnMut(&[u8]) -> bool,
) -> Result<bool, ()> {
    if !readable(sock.as_fd(), max)? {
        return Ok(false);
    }
    let mut buf = [0u8; 16384];
    loop {
        match recv(sock.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(n) if found(&buf[..n]) => return Ok(true),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => return Ok(false),
            Err(_) => return Err(()),
        }
    }
}

/// [`receive_kernel`] for libudev's monitor: the same answers, with each
/// event's device (its properties as udevd sent them) handed to `found`.
fn receive_udev(
    m: &udev::MonitorSocket,
    max: Duration,
    mut found: impl FnMut(&udev::Device) -> bool,
) -> Result<bool, ()> {
    if !readable(m.as_fd(), max)? {
        return Ok(false);
    }
    // An overflow is pending on the socket (the kernel sets ENOBUFS and
    // wakes the poll): reading it here clears it, and libudev's receive
    // would otherwise hide it behind an end of the iterator.
    if getsockopt(&m.as_fd(), sockopt::SocketError).is_ok_and(|e| e != 0) {
        return Err(());
    }
    let mut events = m.iter();
    loop {
        if let Some(ev) = events.next() {
            if found(&ev) {
                return Ok(true);
            }
            continue;
        }
        // libudev returns no device with errno set: EAGAIN once the queue
        // is empty (filtered-out messages are skipped inside), anything
        // else (ENOBUFS from an overflow after the check above) is a loss.
        match Errno::last() {
            Errno::EAGAIN | Errno::EINTR => return Ok(false),
            _ => return Err(()),
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
