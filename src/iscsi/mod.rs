//! open-iscsi: sessions and LUNs read from sysfs, actions through
//! `iscsiadm` and sysfs writes.
//!
//! Logins use open-iscsi's manual scan (`node.session.scan = manual`): a
//! login then brings in no LUN at all, and only the wanted LUN is scanned
//! (`/sys/class/scsi_host/hostN/scan`), so other VMs' LUNs never appear on
//! this host. CHAP secrets never go on a command line: they are written into
//! the node record file (root-only, where open-iscsi keeps them anyway).
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::fsutil::FsError;
use crate::runner::{Cmd, Program, RunError, Runner};
use crate::sysfs::Sys;

mod record;
pub mod reservation;

pub use record::{restore_record, set_record_secrets, set_record_values, RecordText};

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
    /// The LUN's disks on the target's portals are not one disk.
    #[error("LUN {lun} of {target} is not the same disk on every portal ({found}): no multipath map over them")]
    PathsDiffer {
        /// Target.
        target: String,
        /// The LUN.
        lun: u32,
        /// `portal=wwid` per path.
        found: String,
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

/// The session to `target` through `portal`, preferring a logged-in one.
pub fn session_at(sys: &Sys, target: &str, portal: &str) -> Option<Session> {
    let mut v: Vec<Session> = sessions(sys)
        .into_iter()
        .filter(|s| s.target == target && s.portal.as_deref() == Some(portal))
        .collect();
    v.sort_by_key(|s| (!s.logged_in(), s.sid));
    v.into_iter().next()
}

/// The session a single-path leg recorded at `portal` uses: with several
/// portals a target has several sessions, and only that one carries the
/// leg's LUN. A record that names no portal, or a session whose portal
/// sysfs does not tell, falls back to the target's session.
pub fn leg_session(sys: &Sys, target: &str, portal: &str) -> Option<Session> {
    let any = || session_of(sys, target);
    if portal.is_empty() {
        return any();
    }
    session_at(sys, target, portal).or_else(|| any().filter(|s| s.portal.is_none()))
}

/// Whether the path at `hctl` carries I/O: its SCSI device is running
/// and its session logged in.
pub fn path_up(sys: &Sys, hctl: &str) -> bool {
    let running = sys
        .read(format!("/sys/bus/scsi/devices/{hctl}/state"))
        .is_some_and(|s| s == "running");
    let host: Option<u32> = hctl.split(':').next().and_then(|h| h.parse().ok());
    running
        && sessions(sys)
            .iter()
            .any(|s| Some(s.host) == host && s.logged_in())
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
/// `kname`: what tells one LUN from another that took its name. A
/// multipath map's is its paths' (None unless they all agree).
pub fn wwid(sys: &Sys, kname: &str) -> Option<String> {
    if let Some(w) = sys.read(format!("/sys/block/{kname}/device/wwid")) {
        return Some(w);
    }
    let paths = crate::multipath::paths_of(sys, kname);
    let mut ids = paths
        .iter()
        .map(|p| sys.read(format!("/sys/block/{p}/device/wwid")));
    let first = ids.next()??;
    ids.all(|w| w.as_deref() == Some(first.as_str()))
        .then_some(first)
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

#[cfg(test)]
mod tests;
