//! open-iscsi: sessions and LUNs read from sysfs, actions through
//! `iscsiadm` and sysfs writes.
//!
//! Logins use open-iscsi's manual scan (`node.session.scan = manual`): a
//! login then brings in no LUN at all, and only the wanted LUN is scanned
//! (`/sys/class/scsi_host/hostN/scan`), so other VMs' LUNs never appear on
//! this host. CHAP secrets never go on a command line: they are written into
//! the node record file (root-only, where open-iscsi keeps them anyway).
use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::Secret;
use crate::fsutil::{self, FsError};
use crate::runner::{Cmd, Program, RunError, Runner};
use crate::sysfs::Sys;

/// iscsiadm's exit code for an authentication failure (ISCSI_ERR_LOGIN_AUTH_FAILED).
const ERR_LOGIN_AUTH_FAILED: i32 = 24;
/// iscsiadm's exit code when no matching record/session exists (ISCSI_ERR_NO_OBJS_FOUND).
const ERR_NO_OBJS_FOUND: i32 = 21;
/// iscsiadm's exit code when the session already exists (ISCSI_ERR_SESS_EXISTS).
const ERR_SESS_EXISTS: i32 = 15;
/// iscsiadm's exit codes when iscsid gave up a login that got no answer in
/// time: no connection (ISCSI_ERR_TRANS_TIMEOUT) or no login response
/// (ISCSI_ERR_PDU_TIMEOUT).
const ERR_LOGIN_TIMEOUTS: [i32; 2] = [8, 11];
/// iscsiadm's exit code for a login iscsid will not retry
/// (ISCSI_ERR_FATAL_LOGIN): with mutual CHAP, how open-iscsi 2.1.8 reports
/// a target whose CHAP response failed (iscsid logs "Login authentication
/// failed with target"); no text of iscsiadm's says so.
const ERR_FATAL_LOGIN: i32 = 19;

/// Where open-iscsi keeps node records.
pub const NODE_DB: &str = "/etc/iscsi/nodes";
/// open-iscsi's lock directory (LOCK_DIR in open-iscsi 2.1.8's usr/initiator.h).
pub const IDBM_LOCK_DIR: &str = "/run/lock/iscsi";
/// How long a holder may keep open-iscsi's lock before it counts as dead
/// (see [`IdbmLock`]).
const IDBM_STALE_AFTER: Duration = Duration::from_secs(5);

/// Why an iSCSI step failed.
#[derive(Debug, thiserror::Error)]
pub enum IscsiError {
    /// iscsiadm failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The target refused our CHAP credentials, or failed to prove its own.
    #[error("login to {target} at {portal}: CHAP authentication failed (check the [[chap]] entry for this target)")]
    AuthFailed {
        /// Target.
        target: String,
        /// Portal.
        portal: String,
    },
    /// No node record and no discovery portal lists the target.
    #[error(
        "target {target} has no node record and no discovery portal lists it (tried: {tried})"
    )]
    TargetUnknown {
        /// Target.
        target: String,
        /// Portals tried, comma separated, or "none configured".
        tried: String,
    },
    /// The session did not reach LOGGED_IN in time.
    #[error("session to {target} did not appear in sysfs within {}s", .waited.as_secs())]
    NoSession {
        /// Target.
        target: String,
        /// How long we waited.
        waited: Duration,
    },
    /// No login within the wait: iscsid's attempts (made to fit it, see
    /// [`login_attempts`]) got no answer, or iscsiadm was stopped.
    #[error("no answer to the login to {target} at {portal} after {}s (iscsid's attempts set to end within {}s): {run}", .elapsed.as_secs(), .waited.as_secs())]
    LoginTimeout {
        /// Target.
        target: String,
        /// Portal.
        portal: String,
        /// How long the login could take.
        waited: Duration,
        /// How long it took.
        elapsed: Duration,
        /// What iscsiadm said, or that it was stopped.
        run: Box<RunError>,
    },
    /// The session exists but is not logged in (the target is away).
    #[error("session to {target} is {state}, not LOGGED_IN: retry once the target is back")]
    SessionDown {
        /// Target.
        target: String,
        /// Its sysfs state, or "absent".
        state: String,
    },
    /// Scanning found no such LUN. (The target's other LUNs are not
    /// listed: finding them would mean scanning other VMs' disks in.)
    #[error("target {target} has no LUN {lun}")]
    NoLun {
        /// Target.
        target: String,
        /// The LUN asked for.
        lun: u32,
    },
    /// The LUN is not a disk (tgt's LUN 0 is its controller).
    #[error("LUN {lun} of {target} is not a disk (SCSI type {kind})")]
    NotDisk {
        /// Target.
        target: String,
        /// The LUN.
        lun: u32,
        /// SCSI peripheral type.
        kind: u32,
    },
    /// The LUN's block device did not show up in time.
    #[error("LUN {lun} of {target} ({hctl}) got no block device within {}s", .waited.as_secs())]
    NoBlockDevice {
        /// Target.
        target: String,
        /// The LUN.
        lun: u32,
        /// SCSI address.
        hctl: String,
        /// How long we waited.
        waited: Duration,
    },
    /// open-iscsi's lock directory, or a file in the node DB, is not safe
    /// to use (a symlink, someone else's, writable by others).
    #[error(transparent)]
    Path(#[from] FsError),
    /// A live iscsiadm or iscsid held open-iscsi's node DB lock all along.
    #[error("open-iscsi's node DB lock {} was held by another process for {}s", path.display(), .waited.as_secs())]
    IdbmBusy {
        /// `lock.write`.
        path: PathBuf,
        /// How long we waited.
        waited: Duration,
    },
    /// A sysfs or node-record file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// An iSCSI session as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Session id (`sessionN`).
    pub sid: u32,
    /// Target name.
    pub target: String,
    /// SCSI host number (`hostN`).
    pub host: u32,
    /// `LOGGED_IN`, `FAILED`, `FREE`.
    pub state: String,
    /// Portal `addr:port` of its connection, if known.
    pub portal: Option<String>,
}

impl Session {
    /// Whether it is logged in (not recovering, not failed).
    pub fn logged_in(&self) -> bool {
        self.state == "LOGGED_IN"
    }
}

/// A SCSI device on a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiDev {
    /// `H:C:T:L`.
    pub hctl: String,
    /// LUN.
    pub lun: u32,
    /// SCSI peripheral type (0 = disk).
    pub kind: u32,
    /// Block device kernel name, once the disk driver bound it.
    pub block: Option<String>,
}

/// Every iSCSI session.
pub fn sessions(sys: &Sys) -> Vec<Session> {
    sys.list("/sys/class/iscsi_session")
        .into_iter()
        .filter_map(|name| {
            let sid = name.strip_prefix("session")?.parse().ok()?;
            let dir = format!("/sys/class/iscsi_session/{name}");
            let target = sys.read(format!("{dir}/targetname"))?;
            let state = sys.read(format!("{dir}/state")).unwrap_or_default();
            // .../hostN/sessionM/iscsi_session/sessionM: the host is two levels up.
            let real = sys.canonical(format!("{dir}/device"))?;
            let host = real
                .parent()?
                .file_name()?
                .to_str()?
                .strip_prefix("host")?
                .parse()
                .ok()?;
            let conn = sys
                .list(format!("{dir}/device"))
                .into_iter()
                .find(|c| c.starts_with("connection"))
                .map(|c| format!("/sys/class/iscsi_connection/{c}"));
            let portal = conn.and_then(|c| {
                let addr = sys
                    .read(format!("{c}/persistent_address"))
                    .or_else(|| sys.read(format!("{c}/address")))?;
                let port = sys
                    .read(format!("{c}/persistent_port"))
                    .or_else(|| sys.read(format!("{c}/port")))?;
                Some(if addr.contains(':') {
                    format!("[{addr}]:{port}")
                } else {
                    format!("{addr}:{port}")
                })
            });
            Some(Session {
                sid,
                target,
                host,
                state,
                portal,
            })
        })
        .collect()
}

/// The session to `target` (whole-name match), preferring a logged-in one.
pub fn session_of(sys: &Sys, target: &str) -> Option<Session> {
    let mut v: Vec<Session> = sessions(sys)
        .into_iter()
        .filter(|s| s.target == target)
        .collect();
    v.sort_by_key(|s| (!s.logged_in(), s.sid));
    v.into_iter().next()
}

/// SCSI devices on SCSI host `host`.
pub fn host_devices(sys: &Sys, host: u32) -> Vec<ScsiDev> {
    let prefix = format!("{host}:");
    sys.list("/sys/bus/scsi/devices")
        .into_iter()
        .filter(|n| n.starts_with(&prefix) && n.split(':').count() == 4)
        .filter_map(|hctl| device_at(sys, &hctl))
        .collect()
}

/// The SCSI device at address `hctl` (`H:C:T:L`), if present.
pub fn device_at(sys: &Sys, hctl: &str) -> Option<ScsiDev> {
    let lun = hctl.rsplit(':').next()?.parse().ok()?;
    let dir = format!("/sys/bus/scsi/devices/{hctl}");
    let kind = sys.read(format!("{dir}/type"))?.parse().ok()?;
    let block = sys.list(format!("{dir}/block")).into_iter().next();
    Some(ScsiDev {
        hctl: hctl.to_string(),
        lun,
        kind,
        block,
    })
}

/// The SCSI identity (`device/wwid`, from VPD page 0x83) of block device
/// `kname`: what tells one LUN from another that took its name.
pub fn wwid(sys: &Sys, kname: &str) -> Option<String> {
    sys.read(format!("/sys/block/{kname}/device/wwid"))
}

/// The SCSI device of `lun` on `session`, if present.
pub fn lun_device(sys: &Sys, session: &Session, lun: u32) -> Option<ScsiDev> {
    host_devices(sys, session.host)
        .into_iter()
        .find(|d| d.lun == lun)
}

/// Ask the kernel to scan one LUN of a session's host. The write returns
/// when the scan is done: afterwards the SCSI device exists or the LUN does
/// not (its block device may still be on its way).
pub fn scan_lun(sys: &Sys, session: &Session, lun: u32) -> Result<(), IscsiError> {
    let path = PathBuf::from(format!("/sys/class/scsi_host/host{}/scan", session.host));
    tracing::debug!(host = session.host, lun, "scanning LUN");
    crate::crash::point("scan", &path);
    sys.write(&path, &format!("- - {lun}"))
        .map_err(|source| IscsiError::Io { path, source })
}

/// Ask the kernel to read a SCSI device's identity (VPD pages, hence
/// `device/wwid`) and capacity again. The kernel reads them when it adds
/// the device and keeps them: after an outage the target may serve
/// another disk at the same address, and only this shows it. Blocks while
/// the target does not answer.
pub fn rescan_device(sys: &Sys, dev: &ScsiDev) -> Result<(), IscsiError> {
    let path = PathBuf::from(format!("/sys/bus/scsi/devices/{}/rescan", dev.hctl));
    tracing::debug!(hctl = %dev.hctl, "rescanning SCSI device");
    sys.write(&path, "1")
        .map_err(|source| IscsiError::Io { path, source })
}

/// Flush a SCSI disk's cache and remove the device from the kernel.
pub fn delete_device(sys: &Sys, dev: &ScsiDev) -> Result<(), IscsiError> {
    // An offline device (its session failed past the replacement timeout)
    // cannot take a flush: fsync fails with EIO and nothing could reach the
    // target anyway. md has already failed such a leg.
    let state = sys.read(format!("/sys/bus/scsi/devices/{}/state", dev.hctl));
    let reachable = !matches!(state.as_deref(), Some("transport-offline" | "offline"));
    if !reachable {
        tracing::warn!(hctl = %dev.hctl, state = ?state, "SCSI device offline: deleting it without a flush");
    }
    let start = crate::clock::now();
    if let Some(b) = dev.block.as_ref().filter(|_| reachable) {
        let node = PathBuf::from(format!("/dev/{b}"));
        sys.flush(&node)
            .map_err(|source| IscsiError::Io { path: node, source })?;
    }
    let path = PathBuf::from(format!("/sys/bus/scsi/devices/{}/delete", dev.hctl));
    let flushed = crate::clock::since(start);
    crate::crash::point("delete SCSI device", &path);
    match sys.write(&path, "1") {
        Ok(()) => {
            tracing::debug!(hctl = %dev.hctl, flush_ms = flushed.as_millis(), elapsed_ms = crate::clock::since(start).as_millis(), "SCSI device deleted");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(IscsiError::Io { path, source }),
    }
}

/// The node records (portals) open-iscsi has for `target`.
pub fn node_portals(sys: &Sys, target: &str) -> Vec<String> {
    // Entries are `ADDR,PORT` (a file, made by `-o new`) or `ADDR,PORT,TPGT`
    // (a directory holding one file per iface, made by discovery).
    sys.list(Path::new(NODE_DB).join(target))
        .into_iter()
        .filter_map(|e| {
            let mut parts = e.split(',');
            let (addr, port) = (parts.next()?, parts.next()?);
            Some(if addr.contains(':') {
                format!("[{addr}]:{port}")
            } else {
                format!("{addr}:{port}")
            })
        })
        .collect()
}

/// The record file of `target` at `portal` (iface `default`).
pub fn node_record_file(sys: &Sys, target: &str, portal: &str) -> Option<PathBuf> {
    let (addr, port) = split_portal(portal);
    let addr = addr.trim_start_matches('[').trim_end_matches(']');
    let base = format!("{addr},{port}");
    let dir = Path::new(NODE_DB).join(target);
    for e in sys.list(&dir) {
        if e == base || e.starts_with(&format!("{base},")) {
            let p = sys.path(dir.join(&e));
            if p.is_file() {
                return Some(p);
            }
            let d = p.join("default");
            if d.is_file() {
                return Some(d);
            }
        }
    }
    None
}

fn split_portal(portal: &str) -> (&str, &str) {
    match portal.rsplit_once(':') {
        Some((a, p)) if !p.contains(']') => (a, p),
        _ => (portal, "3260"),
    }
}

/// What a login did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Login {
    /// This login made the session.
    LoggedIn,
    /// A session existed already (iscsiadm's ISCSI_ERR_SESS_EXISTS).
    Existed,
}

/// iscsid's own login attempts, made to end within `wait`: the node
/// record's per-attempt timeout (`node.conn[0].timeo.login_timeout`, in
/// seconds) and `node.session.initial_login_retry_max`. iscsid keeps
/// retrying a first login until an attempt fails after retries × attempt
/// seconds, and with open-iscsi's defaults (15 s, 8) that is over two
/// minutes; it does so even when the iscsiadm that asked is killed, and
/// no logout can cancel it meanwhile ("in invalid state for logout"). A
/// login whose attempts end within its wait leaves nothing behind: iscsid
/// destroys the half-made session before it answers. Worst case: the
/// retry window, iscsid's 3 s reconnect delay, and one more attempt; a
/// target that never answers gets `retries` attempts.
pub fn login_attempts(wait: Duration) -> (u64, u64) {
    const RECONNECT_DELAY: u64 = 3;
    const ATTEMPT_MAX: u64 = 15; // open-iscsi's default per attempt
    let w = wait.as_secs();
    if w < 5 {
        // One attempt only (the retry window is then zero).
        return (w.saturating_sub(1).max(1), 0);
    }
    let attempt = ((w - RECONNECT_DELAY) / 3).clamp(1, ATTEMPT_MAX);
    let retries = ((w - RECONNECT_DELAY - attempt) / attempt).max(1);
    (attempt, retries)
}

/// Thin typed wrappers around iscsiadm.
#[derive(Debug)]
pub struct Iscsiadm<'a> {
    /// The runner.
    pub runner: &'a dyn Runner,
    /// Timeout of ordinary calls.
    pub timeout: Duration,
    /// Timeout of a login.
    pub login_timeout: Duration,
    /// No call may run past this (the caller's time budget).
    pub deadline: Option<Instant>,
}

impl Iscsiadm<'_> {
    fn cap(&self, t: Duration) -> Duration {
        match self.deadline {
            Some(d) => t.min(d.saturating_duration_since(crate::clock::now())),
            None => t,
        }
    }

    fn cmd(&self) -> Cmd {
        Cmd::new(Program::Iscsiadm).timeout(self.cap(self.timeout))
    }

    /// SendTargets discovery on `portal` without touching the node DB:
    /// (portal, target) pairs.
    pub fn discover(&self, portal: &str) -> Result<Vec<(String, String)>, IscsiError> {
        let out = self.runner.run(&self.cmd().args([
            "-m",
            "discovery",
            "-t",
            "sendtargets",
            "-p",
            portal,
            "-o",
            "nonpersistent",
        ]))?;
        Ok(out
            .stdout
            .lines()
            .filter_map(|l| {
                let (p, t) = l.trim().split_once(' ')?;
                let p = p.rsplit_once(',').map(|(a, _tpgt)| a).unwrap_or(p);
                Some((p.to_string(), t.trim().to_string()))
            })
            .collect())
    }

    /// Create the node record of `target` at `portal`.
    pub fn node_new(&self, target: &str, portal: &str) -> Result<(), IscsiError> {
        self.runner.run(
            &self
                .cmd()
                .args(["-m", "node", "-T", target, "-p", portal, "-o", "new"]),
        )?;
        Ok(())
    }

    /// Delete the node record of `target` at `portal`.
    pub fn node_delete(&self, target: &str, portal: &str) -> Result<(), IscsiError> {
        match self.runner.run(
            &self
                .cmd()
                .args(["-m", "node", "-T", target, "-p", portal, "-o", "delete"]),
        ) {
            Err(e) if e.code() == Some(ERR_NO_OBJS_FOUND) => Ok(()),
            r => r.map(|_| ()).map_err(Into::into),
        }
    }

    /// Set a non-secret node record value.
    pub fn node_set(
        &self,
        target: &str,
        portal: &str,
        key: &str,
        value: &str,
    ) -> Result<(), IscsiError> {
        self.runner.run(&self.cmd().args([
            "-m", "node", "-T", target, "-p", portal, "-o", "update", "-n", key, "-v", value,
        ]))?;
        Ok(())
    }

    /// Log in. An existing session is not an error, but is not ours either.
    /// The node record's attempts should fit `login_timeout` (see
    /// [`login_attempts`]): iscsiadm is killed only if they do not.
    /// `mutual_chap`: the record makes the target prove itself, so a
    /// non-retryable failure is taken as its CHAP failing.
    pub fn login(
        &self,
        target: &str,
        portal: &str,
        mutual_chap: bool,
    ) -> Result<Login, IscsiError> {
        let waited = self.cap(self.login_timeout);
        let start = crate::clock::now();
        let cmd = Cmd::new(Program::Iscsiadm)
            .timeout(waited)
            .args(["-m", "node", "-T", target, "-p", portal, "--login"]);
        match self.runner.run(&cmd) {
            Ok(_) => Ok(Login::LoggedIn),
            Err(e) if e.code() == Some(ERR_SESS_EXISTS) => Ok(Login::Existed),
            Err(e)
                if e.code() == Some(ERR_LOGIN_AUTH_FAILED)
                    || auth_text(&e)
                    || (mutual_chap && e.code() == Some(ERR_FATAL_LOGIN)) =>
            {
                Err(IscsiError::AuthFailed {
                    target: target.to_string(),
                    portal: portal.to_string(),
                })
            }
            Err(run)
                if matches!(run, RunError::Timeout { .. })
                    || run.code().is_some_and(|c| ERR_LOGIN_TIMEOUTS.contains(&c)) =>
            {
                Err(IscsiError::LoginTimeout {
                    target: target.to_string(),
                    portal: portal.to_string(),
                    waited,
                    elapsed: crate::clock::since(start),
                    run: Box::new(run),
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Log out of session `sid` only.
    pub fn logout(&self, sid: u32) -> Result<(), IscsiError> {
        match self.runner.run(&self.cmd().args([
            "-m",
            "session",
            "-r",
            &sid.to_string(),
            "--logout",
        ])) {
            Err(e) if e.code() == Some(ERR_NO_OBJS_FOUND) => Ok(()),
            r => r.map(|_| ()).map_err(Into::into),
        }
    }
}

fn auth_text(e: &RunError) -> bool {
    match e {
        RunError::Failed { stderr, .. } => {
            stderr.contains("Authentication failure") || stderr.contains("authorization failure")
        }
        _ => false,
    }
}

/// open-iscsi's node DB lock, taken the way iscsiadm 2.1.8 takes it
/// (`idbm_lock()` in usr/idbm.c): the lock directory is made if missing,
/// `lock` is created if missing, and the lock is held while the hard link
/// `lock.write` → `lock` exists.
///
/// open-iscsi has no staleness rule: a holder that dies keeps the lock.
/// iscsiadm retries `link()` every 10 ms, 3000 times (30 s), then carries on
/// *without* the lock and removes `lock.write` when done (libopeniscsiusr's
/// copy fails instead). So a holder past 30 s is ignored by iscsiadm anyway,
/// and iscsiadm and iscsid hold it only around reading or writing record
/// files (milliseconds). We count `lock.write` as stale, and remove it, when
/// it is not a link of `lock` (no `idbm_lock()` made it from this lock file),
/// or when it has been held for [`IDBM_STALE_AFTER`]: the `link()` that took
/// it set its inode's ctime, and nothing changes that inode while it is
/// held. The removal is judged again under an `flock` of `lock` (between
/// iscsimple calls) and only removes the very inode and ctime judged stale,
/// so a lock taken meanwhile stays. A live holder is waited for up to
/// the caller's wait (10 s, or what is left of a time budget).
#[derive(Debug)]
struct IdbmLock {
    write: PathBuf,
    /// `lock.write` as we made it: removed on drop only while it is still ours.
    ours: Option<Stamp>,
}

/// Which link, and when it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

impl IdbmLock {
    fn take(sys: &Sys, wait: Duration) -> Result<IdbmLock, IscsiError> {
        IdbmLock::take_with(sys, wait, IDBM_STALE_AFTER)
    }

    fn take_with(sys: &Sys, wait: Duration, stale_after: Duration) -> Result<IdbmLock, IscsiError> {
        let dir = sys.path(IDBM_LOCK_DIR);
        // /run/lock is world-writable on Debian: whoever makes iscsi/ owns it.
        fsutil::root_dir(&dir)?;
        let (lock, write) = (dir.join("lock"), dir.join("lock.write"));
        let file = fsutil::open_lock(&lock)?;
        let start = crate::clock::now();
        loop {
            // link(2) follows no symlink, and fails if anything is at `write`.
            match fs::hard_link(&lock, &write) {
                Ok(()) => {
                    let ours = fs::symlink_metadata(&write).ok().map(|m| Stamp::of(&m));
                    return Ok(IdbmLock { write, ours });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(IscsiError::Io {
                        path: write,
                        source,
                    })
                }
            }
            if break_stale(&file, &lock, &write, stale_after)? {
                continue;
            }
            if crate::clock::since(start) >= wait {
                return Err(IscsiError::IdbmBusy {
                    path: write,
                    waited: crate::clock::since(start),
                });
            }
            crate::clock::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for IdbmLock {
    fn drop(&mut self) {
        let still_ours = match (self.ours, fs::symlink_metadata(&self.write)) {
            (Some(ours), Ok(m)) => Stamp::of(&m) == ours,
            (None, Ok(_)) => true,
            (_, Err(_)) => false,
        };
        if still_ours {
            let _ = fs::remove_file(&self.write);
        }
    }
}

/// Why `lock.write` (`write`) no longer stands for a live holder of `lock`,
/// if it does not.
fn stale_reason(
    lock: &fs::Metadata,
    write: &fs::Metadata,
    stale_after: Duration,
    now: std::time::SystemTime,
) -> Option<String> {
    let (l, w) = (Stamp::of(lock), Stamp::of(write));
    if (w.dev, w.ino) != (l.dev, l.ino) {
        return Some("it is not a link of lock: no idbm_lock() made it".to_string());
    }
    let secs = u64::try_from(w.ctime.0).unwrap_or(0);
    let nanos = u32::try_from(w.ctime.1).unwrap_or(0);
    let taken = std::time::UNIX_EPOCH + Duration::new(secs, nanos);
    // A clock stepped back makes the age 0: waited for, never broken.
    let held = now.duration_since(taken).unwrap_or_default();
    (held >= stale_after).then(|| {
        format!(
            "held for {:.1}s; iscsiadm and iscsid hold it for milliseconds",
            held.as_secs_f32()
        )
    })
}

/// Remove `write` if it is stale; true when it was (or is gone already).
fn break_stale(
    file: &fs::File,
    lock: &Path,
    write: &Path,
    stale_after: Duration,
) -> Result<bool, IscsiError> {
    use std::os::fd::AsRawFd;
    let judge = || -> Result<Option<(Stamp, String)>, IscsiError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IscsiError::Io { path, source }
        };
        let w = match fs::symlink_metadata(write) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(write)(e)),
        };
        let l = fs::symlink_metadata(lock).map_err(io(lock))?;
        let why = stale_reason(&l, &w, stale_after, std::time::SystemTime::now());
        Ok(why.map(|why| (Stamp::of(&w), why)))
    };
    let Some((seen, _)) = judge()? else {
        return Ok(false);
    };
    // One iscsimple call at a time judges again and removes: another one
    // cannot remove the lock this one takes right after.
    // SAFETY: flock(2) on a descriptor we own; no memory is passed.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    let removed = match judge() {
        Ok(Some((now, why))) if now == seen => match fs::remove_file(write) {
            Ok(()) => {
                tracing::warn!(lock = %write.display(), why, "removed a stale open-iscsi node DB lock (its holder died)");
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(source) => Err(IscsiError::Io {
                path: write.to_path_buf(),
                source,
            }),
        },
        Ok(_) => Ok(false),
        Err(e) => Err(e),
    };
    // SAFETY: as above.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
    removed
}

/// The text of a node record. It holds the CHAP secrets in clear
/// (`node.session.auth.password`, `..._in`), so Debug and Display show its
/// size only: an undo that carries it can be logged, and an error that
/// quotes it leaks nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct RecordText(String);

impl RecordText {
    /// Read a record file.
    pub fn read(path: &Path) -> std::io::Result<RecordText> {
        fs::read_to_string(path).map(RecordText)
    }

    /// The text itself, to write it back or parse it; never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for RecordText {
    fn from(s: String) -> Self {
        RecordText(s)
    }
}

impl fmt::Debug for RecordText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordText(<{} bytes, not shown>)", self.0.len())
    }
}

impl fmt::Display for RecordText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<node record, {} bytes, not shown>", self.0.len())
    }
}

/// Set secret values (`node.session.auth.password`, `..._in`) in a node
/// record file, under open-iscsi's lock (waited for up to `wait`),
/// atomically. Returns the previous content so the caller can restore it.
pub fn set_record_secrets(
    sys: &Sys,
    record: &Path,
    values: &[(&str, &Secret)],
    wait: Duration,
) -> Result<RecordText, IscsiError> {
    let values: Vec<(&str, &str)> = values.iter().map(|(k, v)| (*k, v.expose())).collect();
    set_record_values(sys, record, &values, wait)
}

/// Set node record values (`node.session.scan = manual`, ...) in a record
/// file, under open-iscsi's lock (waited for up to `wait`), atomically:
/// what `iscsiadm -o update` does, without a process per value. A line is
/// replaced where its key is, a missing key is appended; the file is not
/// rewritten when it holds every value already. Returns the previous content.
pub fn set_record_values(
    sys: &Sys,
    record: &Path,
    values: &[(&str, &str)],
    wait: Duration,
) -> Result<RecordText, IscsiError> {
    let io = |source| IscsiError::Io {
        path: record.to_path_buf(),
        source,
    };
    let _lock = IdbmLock::take(sys, wait)?;
    let old = fs::read_to_string(record).map_err(io)?;
    let key = |l: &str| l.split('=').next().map(str::trim).unwrap_or("").to_string();
    let mut done = vec![false; values.len()];
    let mut lines: Vec<String> = Vec::new();
    for l in old.lines() {
        match values.iter().position(|(k, _)| key(l) == *k) {
            Some(i) if done[i] => {} // a duplicate: dropped
            Some(i) => {
                done[i] = true;
                lines.push(format!("{} = {}", values[i].0, values[i].1));
            }
            None => lines.push(l.to_string()),
        }
    }
    for (i, (k, v)) in values.iter().enumerate() {
        if !done[i] {
            lines.push(format!("{k} = {v}"));
        }
    }
    let new = lines.join("\n") + "\n";
    if new != old {
        write_record(record, &new)?;
    }
    Ok(RecordText(old))
}

/// Put back a node record's previous content (rollback).
pub fn restore_record(
    sys: &Sys,
    record: &Path,
    content: &RecordText,
    wait: Duration,
) -> Result<(), IscsiError> {
    let _lock = IdbmLock::take(sys, wait)?;
    write_record(record, content.expose())
}

/// Replace a record file through a new temporary file next to it: a
/// leftover one (a killed write, or a link planted there) is removed, never
/// written through.
fn write_record(record: &Path, content: &str) -> Result<(), IscsiError> {
    crate::crash::point("node record write", record);
    let io = |source| IscsiError::Io {
        path: record.to_path_buf(),
        source,
    };
    let tmp = record.with_extension("iscsimple-tmp");
    fsutil::remove_stale(&tmp)?;
    let mut f = fsutil::create_new(&tmp, 0o600)?;
    f.write_all(content.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, record).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::recording::RecordingRunner;
    use std::os::unix::fs::MetadataExt;

    const WAIT: Duration = Duration::from_secs(1);

    /// iscsiadm through `r`, commands capped at 1 s, no deadline.
    fn adm(r: &RecordingRunner, login_timeout: Duration) -> Iscsiadm<'_> {
        Iscsiadm {
            runner: r,
            timeout: Duration::from_secs(1),
            login_timeout,
            deadline: None,
        }
    }

    #[test]
    fn discovery_output_is_parsed_into_portal_and_target() {
        let r = RecordingRunner::new();
        r.ok(
            "iscsiadm -m discovery",
            "127.0.0.1:3260,1 iqn.2024-01.lab:a\n[::1]:3260,1 iqn.2024-01.lab:b\n",
        );
        let a = adm(&r, Duration::from_secs(1));
        let v = a.discover("127.0.0.1").expect("discover");
        assert_eq!(
            v,
            vec![
                ("127.0.0.1:3260".into(), "iqn.2024-01.lab:a".into()),
                ("[::1]:3260".into(), "iqn.2024-01.lab:b".into())
            ]
        );
        assert_eq!(
            r.calls(),
            vec!["iscsiadm -m discovery -t sendtargets -p 127.0.0.1 -o nonpersistent"]
        );
    }

    #[test]
    fn login_exit_24_is_an_auth_failure() {
        let r = RecordingRunner::new();
        r.fail("iscsiadm -m node", 24, "iscsiadm: Login failed");
        let a = adm(&r, Duration::from_secs(1));
        let e = a
            .login("iqn.2024-01.lab:a", "127.0.0.1:3260", false)
            .expect_err("auth");
        assert!(matches!(e, IscsiError::AuthFailed { .. }), "{e}");
    }

    #[test]
    fn a_target_failing_mutual_chap_is_an_auth_failure() {
        // iscsiadm 2.1.8 when the target's CHAP response is wrong (lab, LIO).
        let r = RecordingRunner::new();
        for _ in 0..2 {
            r.fail(
                "iscsiadm -m node",
                19,
                "iscsiadm: initiator reported error (19 - encountered non-retryable iSCSI login failure)\niscsiadm: Could not log into all portals",
            );
        }
        let a = adm(&r, Duration::from_secs(1));
        let e = a
            .login("iqn.2024-01.lab:a", "127.0.0.1:3260", true)
            .expect_err("auth");
        assert!(matches!(e, IscsiError::AuthFailed { .. }), "{e}");
        // Without mutual CHAP the target has nothing to prove: not CHAP's doing.
        let e = a
            .login("iqn.2024-01.lab:a", "127.0.0.1:3260", false)
            .expect_err("fatal");
        assert!(matches!(e, IscsiError::Run(_)), "{e:?}");
    }

    #[test]
    fn record_secrets_replace_lines_and_restore() {
        let d = tempfile::tempdir().expect("tempdir");
        let sys = Sys::new(d.path());
        let rec = d.path().join("rec");
        fs::write(&rec, "node.name = x\nnode.session.auth.password = old\n").expect("write");
        let s = Secret::from("n3wsecret".to_string());
        let old = set_record_secrets(&sys, &rec, &[("node.session.auth.password", &s)], WAIT)
            .expect("set");
        let now = fs::read_to_string(&rec).expect("read");
        assert_eq!(
            now,
            "node.name = x\nnode.session.auth.password = n3wsecret\n"
        );
        assert!(
            !d.path().join("run/lock/iscsi/lock.write").exists(),
            "lock released"
        );
        assert!(!format!("{old:?} {old}").contains("old"), "{old:?} {old}");
        restore_record(&sys, &rec, &old, WAIT).expect("restore");
        assert_eq!(fs::read_to_string(&rec).expect("read"), old.expose());
    }

    #[test]
    fn record_values_replace_in_place_append_missing_and_skip_unchanged() {
        let d = tempfile::tempdir().expect("tempdir");
        let sys = Sys::new(d.path());
        let rec = d.path().join("rec");
        let body = "# BEGIN RECORD 2.1.8\nnode.session.scan = auto\nnode.startup = manual\nnode.session.scan = auto\n# END RECORD\n";
        fs::write(&rec, body).expect("write");
        let old = set_record_values(
            &sys,
            &rec,
            &[
                ("node.session.scan", "manual"),
                ("node.startup", "manual"),
                ("node.conn[0].timeo.noop_out_interval", "5"),
            ],
            WAIT,
        )
        .expect("set");
        assert_eq!(old.expose(), body);
        assert_eq!(
            fs::read_to_string(&rec).expect("read"),
            "# BEGIN RECORD 2.1.8\nnode.session.scan = manual\nnode.startup = manual\n# END RECORD\nnode.conn[0].timeo.noop_out_interval = 5\n"
        );
        let before = fs::metadata(&rec).expect("stat").modified().expect("mtime");
        crate::clock::sleep(std::time::Duration::from_millis(20));
        set_record_values(&sys, &rec, &[("node.startup", "manual")], WAIT).expect("set");
        let after = fs::metadata(&rec).expect("stat").modified().expect("mtime");
        assert_eq!(before, after, "nothing to change: not rewritten");
    }

    #[test]
    fn iscsids_login_attempts_end_within_the_wait() {
        // iscsid gives up at the first failure after retries × attempt
        // seconds; the last attempt may start just before, after its 3 s
        // reconnect delay. Everything must end within the wait.
        for w in 1..=120u64 {
            let (attempt, retries) = login_attempts(Duration::from_secs(w));
            assert!(attempt >= 1, "{w}s: an attempt lasts at least a second");
            let worst = if retries == 0 {
                attempt
            } else {
                retries * attempt + 3 + attempt
            };
            assert!(
                worst <= w.max(2),
                "{w}s: attempts of {attempt}s, {retries} retries end at {worst}s"
            );
        }
        assert_eq!(login_attempts(Duration::from_secs(15)), (4, 2));
        assert_eq!(login_attempts(Duration::from_secs(60)), (15, 2));
    }

    #[test]
    fn a_login_that_gets_no_answer_in_time_says_so() {
        let r = RecordingRunner::new();
        r.fail(
            "iscsiadm -m node",
            11,
            "iscsiadm: Could not login to [iface: default, target: iqn.2024-01.lab:a, portal: 127.0.0.1,3261].",
        );
        let a = adm(&r, Duration::from_secs(15));
        let e = a
            .login("iqn.2024-01.lab:a", "127.0.0.1:3261", false)
            .expect_err("no answer");
        assert!(matches!(e, IscsiError::LoginTimeout { .. }), "{e}");
        assert!(
            e.to_string().starts_with(
                "no answer to the login to iqn.2024-01.lab:a at 127.0.0.1:3261 after 0s (iscsid's attempts set to end within 15s)"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_lun_that_is_not_a_disk_is_named_alone() {
        let e = IscsiError::NotDisk {
            target: "iqn.x:y".into(),
            lun: 0,
            kind: 12,
        };
        assert_eq!(
            e.to_string(),
            "LUN 0 of iqn.x:y is not a disk (SCSI type 12)"
        );
    }

    /// A fake host with a node record and open-iscsi's lock directory.
    fn idbm_host() -> (tempfile::TempDir, Sys, PathBuf) {
        let d = tempfile::tempdir().expect("tempdir");
        let sys = Sys::new(d.path());
        let rec = d.path().join("rec");
        fs::write(&rec, "node.startup = automatic\n").expect("write");
        (d, sys, rec)
    }

    #[test]
    fn a_stale_idbm_lock_does_not_block_the_record_write() {
        // lock.write is not a link of lock: no idbm_lock() taker made it.
        let (d, sys, rec) = idbm_host();
        let lockdir = d.path().join("run/lock/iscsi");
        fs::create_dir_all(&lockdir).expect("mkdir");
        fs::write(lockdir.join("lock"), "").expect("lock");
        fs::write(lockdir.join("lock.write"), "").expect("stale lock.write");
        let start = crate::clock::now();
        set_record_values(&sys, &rec, &[("node.startup", "manual")], WAIT).expect("set");
        assert!(
            crate::clock::since(start) < Duration::from_secs(2),
            "{:?}",
            crate::clock::since(start)
        );
        assert_eq!(
            fs::read_to_string(&rec).expect("read"),
            "node.startup = manual\n"
        );
        assert!(!lockdir.join("lock.write").exists(), "released");
    }

    #[test]
    fn a_live_idbm_holder_is_waited_for_not_broken() {
        let (d, sys, rec) = idbm_host();
        let lockdir = d.path().join("run/lock/iscsi");
        fs::create_dir_all(&lockdir).expect("mkdir");
        let (lock, write) = (lockdir.join("lock"), lockdir.join("lock.write"));
        fs::write(&lock, "").expect("lock");
        fs::hard_link(&lock, &write).expect("held");
        let holder = std::thread::spawn(move || {
            crate::clock::sleep(Duration::from_millis(400));
            // Still the holder's own link: nobody broke it meanwhile.
            let m = fs::metadata(&write).expect("still held");
            assert_eq!(m.ino(), fs::metadata(&lock).expect("lock").ino());
            fs::remove_file(&write).expect("release");
            crate::clock::now()
        });
        set_record_values(&sys, &rec, &[("node.startup", "manual")], WAIT).expect("set");
        let done = crate::clock::now();
        let released = holder.join().expect("holder");
        assert!(done >= released, "wrote only after the holder let go");
    }

    #[test]
    fn a_symlinked_idbm_lock_dir_is_refused_and_nothing_lands_at_its_target() {
        let (d, sys, rec) = idbm_host();
        let planted = d.path().join("planted");
        fs::create_dir(&planted).expect("mkdir");
        fs::create_dir_all(d.path().join("run/lock")).expect("mkdir");
        std::os::unix::fs::symlink(&planted, d.path().join("run/lock/iscsi")).expect("plant");
        let e = set_record_values(&sys, &rec, &[("node.startup", "manual")], WAIT)
            .expect_err("refused");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(
            fs::read_dir(&planted).expect("ls").count(),
            0,
            "nothing there"
        );
        assert_eq!(
            fs::read_to_string(&rec).expect("read"),
            "node.startup = automatic\n"
        );
    }

    #[test]
    fn a_foreign_idbm_lock_dir_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            return; // only root can give a directory away
        }
        let (d, sys, rec) = idbm_host();
        let lockdir = d.path().join("run/lock/iscsi");
        fs::create_dir_all(&lockdir).expect("mkdir");
        std::os::unix::fs::chown(&lockdir, Some(65534), Some(65534)).expect("chown");
        let e = set_record_values(&sys, &rec, &[("node.startup", "manual")], WAIT)
            .expect_err("refused");
        assert!(e.to_string().contains("owned by uid 65534"), "{e}");
        assert_eq!(
            fs::read_dir(&lockdir).expect("ls").count(),
            0,
            "nothing made in it"
        );
    }

    #[test]
    fn a_missing_idbm_lock_dir_is_made_not_writable_by_others() {
        let (d, sys, rec) = idbm_host();
        set_record_values(&sys, &rec, &[("node.startup", "manual")], WAIT).expect("set");
        let m = fs::symlink_metadata(d.path().join("run/lock/iscsi")).expect("made");
        assert!(m.is_dir());
        assert_eq!(m.uid(), nix::unistd::geteuid().as_raw());
        assert_eq!(m.mode() & 0o022, 0, "{:o}", m.mode());
    }

    #[test]
    fn a_planted_record_temporary_symlink_is_not_followed() {
        let (d, sys, rec) = idbm_host();
        let victim = d.path().join("victim");
        fs::write(&victim, "precious").expect("write");
        std::os::unix::fs::symlink(&victim, rec.with_extension("iscsimple-tmp")).expect("plant");
        set_record_values(&sys, &rec, &[("node.startup", "manual")], WAIT).expect("set");
        assert_eq!(fs::read_to_string(&victim).expect("read"), "precious");
        assert_eq!(
            fs::read_to_string(&rec).expect("read"),
            "node.startup = manual\n"
        );
    }

    #[test]
    fn a_dead_holders_link_is_removed_once_held_too_long() {
        // What a holder killed between link() and unlink() leaves.
        let (d, sys, _rec) = idbm_host();
        let lockdir = d.path().join("run/lock/iscsi");
        fs::create_dir_all(&lockdir).expect("mkdir");
        let (lock, write) = (lockdir.join("lock"), lockdir.join("lock.write"));
        fs::write(&lock, "").expect("lock");
        fs::hard_link(&lock, &write).expect("left behind");
        let start = crate::clock::now();
        let held = IdbmLock::take_with(&sys, Duration::from_secs(5), Duration::from_millis(300))
            .expect("taken");
        let waited = crate::clock::since(start);
        assert!(
            waited >= Duration::from_millis(250),
            "{waited:?}: judged by age"
        );
        assert!(waited < Duration::from_secs(2), "{waited:?}");
        assert!(write.exists(), "ours now");
        drop(held);
        assert!(!write.exists(), "released");
        // And before it is old enough, it is waited for, not removed.
        fs::hard_link(&lock, &write).expect("held");
        let e = IdbmLock::take_with(&sys, Duration::from_millis(100), Duration::from_secs(5))
            .expect_err("busy");
        assert!(matches!(e, IscsiError::IdbmBusy { .. }), "{e}");
        assert!(write.exists(), "a live holder's lock stays");
    }

    #[test]
    fn a_lock_that_is_no_longer_ours_is_left_on_release() {
        let (d, sys, _rec) = idbm_host();
        let held = IdbmLock::take(&sys, WAIT).expect("taken");
        let (lock, write) = (
            d.path().join("run/lock/iscsi/lock"),
            d.path().join("run/lock/iscsi/lock.write"),
        );
        // Someone judged ours stale and took it: a new link, a new ctime.
        fs::remove_file(&write).expect("broken");
        crate::clock::sleep(Duration::from_millis(20));
        fs::hard_link(&lock, &write).expect("theirs");
        drop(held);
        assert!(write.exists(), "their lock stays");
    }
}
