//! iscsimple: attach iSCSI LUNs for Xen and KVM hosts, optionally mirrored
//! with a local volume through a non-persistent md RAID1.
//!
//! The library owns every decision; the binary (`src/main.rs`) only parses
//! arguments, sets up logging and prints the one error line.
//!
//! - [`spec`] — the disk spec `[iscsimple:][lunN@]TARGET[+LABEL]`.
//! - [`config`] — `/etc/iscsimple/iscsimple.toml`.
//! - [`labels`] — the label table (`LABEL DEVICE` lines).
//! - [`runner`] — the only place that spawns programs.
//! - [`sysfs`], [`uevent`] — reading and watching the kernel.
//! - [`iscsi`], [`md`], [`volume`] — the three kinds of device.
//! - [`lock`], [`state`] — concurrency and memory across calls; [`fsutil`]:
//!   the directories and files they make, safe from other users.
//! - [`disk`] — attach and detach with rollback; [`status`]: what is attached.
//! - [`holders`] — which domains hold an attachment, and whether they still run.
//! - [`xen`], [`libvirt`] — the hypervisors' hooks (Xen's hotplug script,
//!   libvirt's qemu hook), each claiming and releasing through [`holders`].
//! - [`doctor`] — host checks, each with the exact fix.
#![deny(missing_docs)]

pub mod clock;
pub mod cluster;
pub mod config;
pub mod crash;
pub mod disk;
pub mod doctor;
pub mod fsutil;
pub mod holders;
pub mod iscsi;
pub mod labels;
pub mod libvirt;
pub mod lock;
pub mod md;
pub mod metrics;
pub mod multipath;
pub mod openers;
pub mod runner;
#[cfg(feature = "sim")]
pub mod sim;
pub mod spec;
pub mod state;
pub mod status;
pub mod sysfs;
pub mod uevent;
pub mod volume;
pub mod watch;
pub mod xen;
