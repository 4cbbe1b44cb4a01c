//! Attach and detach: the seed's steps, each with its undo.
//!
//! attach: read the label table → check the local volume → login (node
//! record, CHAP, manual scan) → scan the LUN → wait for its block device →
//! check sizes → `mdadm --build … missing --write-mostly ISCSI` → `--add
//! LOCAL`. Every step that changes the host pushes its undo; a failure runs
//! them backwards, so the host ends as it was before the call. Detach and
//! the cleanup of an attach that died half-way run the same undo steps,
//! derived from the record ([`undo`]), through the same executor.
//!
//! Names are not identities: before an array is stopped, failed or added
//! to, its members are checked to be the legs recorded (device numbers,
//! SCSI wwid, dm UUID) and its label link to point at it; a SCSI device is
//! deleted only if it is the LUN recorded; a session is logged out only if
//! this tool's login made it.
//!
//! The rooms: [`attach`] (plan and attach), [`session`] (the iSCSI leg:
//! login, scan, release and the one logout rule), [`array`] (build, find,
//! verify, stop), [`undo`] (the one executor), [`health`] (legs, records,
//! heal, join), [`copies`] (the local copies' records: which copy is
//! newer, of which LUN, at what size), [`detach`], and the [`budget`] every
//! wait draws from.
use std::cell::{Cell, RefCell};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::iscsi::Iscsiadm;
use crate::lock::{file_key, Lock, LockError};
use crate::md::Mdadm;
use crate::runner::{Cmd, Program, RunError, Runner};
use crate::spec::Spec;
use crate::state::{Attachment, Durable, StateError, Store};
use crate::sysfs::Sys;

mod array;
mod attach;
mod budget;
mod copies;
mod detach;
mod errors;
mod generations;
mod grow;
mod health;
mod multipath;
mod session;
mod undo;

pub use budget::{Budget, Limit};
pub use detach::{DetachOptions, Guard};
pub use errors::{BehindConflict, Cause, DiskError, NewerConflict, ShrinkConflict, Step};
pub use grow::{GrowOptions, Grown};

/// How to attach.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttachOptions {
    /// Build a mirror with its iSCSI leg only and let the local leg join
    /// later ([`Engine::join_local`]): on an incoming migration the source
    /// host still writes to the iSCSI disk, and a resync started now would
    /// copy blocks that are still changing.
    pub defer_local: bool,
    /// Build the mirror but let the local leg join only through
    /// [`Engine::join_local`], as `defer_local` does, without its migration
    /// meaning (records are kept, the bitmap is made): a caller attaching
    /// several disks attaches them all before any local volume is
    /// overwritten, so that a disk refused late (a local volume smaller
    /// than its LUN) leaves every local volume as it was. No effect when
    /// the local leg is the source (it is not written then).
    pub hold_local: bool,
    /// A migration's destination: with a shared store, the disk's writer
    /// (the source host) keeps it until it releases it, and the store
    /// records the handover ([`crate::cluster::Access::Handover`]).
    pub incoming: bool,
}

/// The engine: configuration, a runner and where to read and keep state.
#[derive(Debug)]
pub struct Engine<'a> {
    /// Configuration.
    pub config: &'a Config,
    /// Runs programs.
    pub runner: &'a dyn Runner,
    /// sysfs and /dev.
    pub sys: Sys,
    /// State and locks.
    pub store: Store,
    /// Records that survive a reboot.
    pub durable: Durable,
    /// What a caller should tell the person (also logged): which leg an
    /// attach trusted, a detach that leaves the iSCSI copy stale.
    pub notices: RefCell<Vec<String>>,
    /// The call's time budget, if it has one (`xen add`, a heal in
    /// `watch`): every wait draws from it ([`Engine::limit`]).
    pub budget: Option<Budget>,
    /// Undo steps are running: their waits may use the rollback's share.
    undoing: Cell<bool>,
    /// The disks' records an attach read before login (a shared store),
    /// for its swap after login: one read less. The swap compares
    /// revisions, so a stale one only costs a fresh read.
    seen: RefCell<Option<generations::Seen>>,
}

/// What the legs of a mirror say now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Both legs in sync, nothing running.
    InSync,
    /// The local leg holds writes the iSCSI leg lacks.
    LocalNewer {
        /// Why (the iSCSI leg's state).
        reason: String,
        /// The iSCSI leg is faulty or gone and no resync runs: heal it.
        heal: bool,
    },
    /// Anything else: a resync from the iSCSI leg, a deferred local leg.
    Other(String),
}

/// How to heal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealOptions {
    /// The LUN answers with another disk (another SCSI wwid) than the leg
    /// recorded: copy the local leg onto it in full instead of refusing.
    pub accept_new_disk: bool,
    /// Copy the whole local leg onto the iSCSI disk, even where md's
    /// write-intent bitmap says the legs agree, and even if they are in
    /// sync: for a target that may have come back from an older copy.
    pub full: bool,
}

/// What `heal` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Healed {
    /// Nothing to do: the leg is in sync or already resyncing.
    Nothing,
    /// Re-added with the write-intent bitmap: only dirty regions are copied.
    Incremental,
    /// Added as a new leg: a full resync local → iSCSI.
    Full,
}

/// The state key of a spec: its label, or `lunN@target`.
pub fn key_of(spec: &Spec) -> String {
    match (&spec.label, &spec.target) {
        (Some(l), _) => format!("label-{}", l.as_str()),
        (None, Some(t)) => format!("lun{}@{}", spec.lun, t.as_str()),
        (None, None) => "none".to_string(),
    }
}

/// The target an attachment uses: from its recorded leg, else from its spec
/// (an attach still logging in has no leg recorded yet).
fn target_of(a: &Attachment) -> Option<String> {
    a.iscsi.as_ref().map(|i| i.target.clone()).or_else(|| {
        a.spec
            .parse::<Spec>()
            .ok()
            .and_then(|s| s.target.map(|t| t.to_string()))
    })
}

/// The LUN an attachment uses (see [`target_of`]).
fn lun_of(a: &Attachment) -> Option<(String, u32)> {
    let target = target_of(a)?;
    let lun = a
        .iscsi
        .as_ref()
        .map(|i| i.lun)
        .or_else(|| a.spec.parse::<Spec>().ok().map(|s| s.lun))?;
    Some((target, lun))
}

/// How long to wait for udevd to finish an array's removal before falling
/// back to `udevadm settle` (which waits for its whole queue).
const UDEV_WAIT: Duration = Duration::from_secs(10);
/// `udevadm settle --timeout`, and the command's own timeout around it.
const SETTLE_WAIT: Duration = Duration::from_secs(10);
const SETTLE_CMD: Duration = Duration::from_secs(15);
/// How long open-iscsi's node DB lock is waited for (iscsiadm waits 30 s;
/// we hold it for a few ms only).
const IDBM_WAIT: Duration = Duration::from_secs(10);

impl<'a> Engine<'a> {
    /// An engine on the real host.
    pub fn new(config: &'a Config, runner: &'a dyn Runner) -> Engine<'a> {
        Engine {
            config,
            runner,
            sys: Sys::default(),
            store: Store::new(&config.run_dir),
            durable: Durable::new(&config.state_dir),
            notices: RefCell::new(Vec::new()),
            budget: None,
            undoing: Cell::new(false),
            seen: RefCell::new(None),
        }
    }

    /// The same engine reading sysfs and /dev under `sys` (tests build a
    /// fake host in a directory).
    pub fn with_sys(mut self, sys: Sys) -> Self {
        self.sys = sys;
        self
    }

    /// The same engine with a time budget for the call (see [`Budget`]).
    pub fn with_budget(mut self, budget: Budget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// A fresh engine on the same host and configuration: no budget, no
    /// notices (for a job of its own, such as one mirror's heal in
    /// `watch`, which runs on its own thread).
    pub fn fork(&self) -> Engine<'a> {
        Engine {
            config: self.config,
            runner: self.runner,
            sys: self.sys.clone(),
            store: self.store.clone(),
            durable: self.durable.clone(),
            notices: RefCell::new(Vec::new()),
            budget: None,
            undoing: Cell::new(false),
            seen: RefCell::new(None),
        }
    }

    /// When the current waits must end: the steps' share of the budget,
    /// or all of it while undoing. None without a budget.
    fn deadline(&self) -> Option<Instant> {
        self.budget.map(|b| {
            if self.undoing.get() {
                b.end()
            } else {
                b.steps_end()
            }
        })
    }

    /// How long a wait whose own timeout is `own` may last now.
    pub fn limit(&self, own: Duration) -> Limit {
        Limit::of(own, self.deadline())
    }

    /// `cause`, marked as the budget's doing when it is a wait that ran out
    /// and the budget is what ended it.
    fn blame(&self, cause: Cause) -> Cause {
        match self.budget {
            Some(b)
                if cause.is_timeout()
                    && !matches!(cause, Cause::Budget { .. })
                    && self.deadline().is_some_and(|d| crate::clock::now() >= d) =>
            {
                Cause::Budget {
                    budget: b.total(),
                    left: None,
                    cause: Box::new(cause),
                }
            }
            _ => cause,
        }
    }

    /// `cause`, marked as the budget's doing when `limit` was the budget's:
    /// it ran out, or (the wait ended before the deadline) it left too
    /// little.
    fn over(&self, limit: Limit, cause: Cause) -> Cause {
        match self.budget {
            Some(b) if limit.by_budget && cause.is_timeout() => {
                let passed = self.deadline().is_some_and(|d| crate::clock::now() >= d);
                Cause::Budget {
                    budget: b.total(),
                    left: (!passed).then_some(limit.wait),
                    cause: Box::new(cause),
                }
            }
            _ => cause,
        }
    }

    /// [`Engine::blame`] for a finished call's error.
    fn blame_err(&self, mut e: DiskError) -> DiskError {
        let cause = std::mem::replace(&mut *e.cause, Cause::BothMissing);
        *e.cause = self.blame(cause);
        e
    }

    /// Tell the caller something (and log it; the CLI prints notices).
    fn notice(&self, spec: &str, msg: String) {
        tracing::info!(spec, notice = %msg, "notice");
        self.notices.borrow_mut().push(msg);
    }

    /// Take the notices gathered so far.
    pub fn take_notices(&self) -> Vec<String> {
        std::mem::take(&mut *self.notices.borrow_mut())
    }

    fn iscsiadm(&self) -> Iscsiadm<'_> {
        Iscsiadm {
            runner: self.runner,
            timeout: self.config.timeouts.command,
            login_timeout: self.config.timeouts.login,
            deadline: self.deadline(),
        }
    }

    fn mdadm(&self) -> Mdadm<'_> {
        Mdadm {
            runner: self.runner,
            timeout: self.config.timeouts.command,
            deadline: self.deadline(),
        }
    }

    /// How long open-iscsi's node DB lock may be waited for now.
    fn idbm_wait(&self) -> Duration {
        self.limit(IDBM_WAIT).wait
    }

    fn lock(&self, name: &str, what: &str) -> Result<Lock, Cause> {
        let limit = self.limit(self.config.timeouts.lock);
        Lock::take(&self.store.lock_dir(), &file_key(name), what, limit.wait)
            .map_err(|e: LockError| self.over(limit, e.into()))
    }

    /// The lock of one attachment record (attach, detach, heal, join).
    fn key_lock(&self, key: &str) -> Result<Lock, Cause> {
        self.lock(&format!("attach-{key}"), &format!("attachment {key}"))
    }

    /// The lock around a target's login, scan, logout and session claim:
    /// every user of it must name it alike.
    fn target_lock(&self, target: &str) -> Result<Lock, Cause> {
        self.lock(&format!("target-{target}"), &format!("target {target}"))
    }

    /// The lock of one LUN: whatever spec names it (mirrored or plain),
    /// one call at a time decides who uses it. Taken after the key lock.
    fn lun_lock(&self, target: &str, lun: u32) -> Result<Lock, Cause> {
        self.lock(
            &format!("lun{lun}@{target}"),
            &format!("LUN {lun} of {target}"),
        )
    }

    /// Let udev finish (when it runs) so links exist before we hand them out.
    fn settle(&self) {
        if self.udev_running() {
            let wait = self.limit(SETTLE_WAIT).wait;
            let cmd = Cmd::new(Program::Udevadm)
                .arg("settle")
                .arg(format!("--timeout={}", wait.as_secs()))
                .timeout(self.limit(SETTLE_CMD).wait);
            if let Err(e) = self.runner.run(&cmd) {
                tracing::debug!(error = %e, "udevadm settle");
            }
        }
    }

    fn udev_running(&self) -> bool {
        self.sys.exists("/run/udev/control")
    }

    /// Whether udev has processed block device `devnum` (`MAJ:MIN`): its
    /// database entry exists.
    fn udev_knows(&self, devnum: &str) -> bool {
        self.sys.exists(format!("/run/udev/data/b{devnum}"))
    }

    /// Find what `what` (a spec, a label, or a device) names among the
    /// attachments. A spec names only the attachment of that very spec.
    pub fn find(&self, what: &str) -> Result<Option<(String, Attachment)>, StateError> {
        if let Ok(spec) = what.parse::<Spec>() {
            // A spec names its record: read that one, not every record
            // (watch looks up each attachment on every tick).
            let key = key_of(&spec);
            return Ok(self
                .store
                .load(&key)?
                .filter(|a| a.spec == spec.to_string())
                .map(|a| (file_key(&key), a)));
        }
        let all = self.store.all()?;
        let dev = self.sys.canonical(what);
        Ok(all.into_iter().find(|(_, a)| {
            a.mirror.as_ref().map(|m| m.label == what).unwrap_or(false)
                || a.device.as_deref() == Some(Path::new(what))
                || (dev.is_some() && a.device.as_ref().and_then(|d| self.sys.canonical(d)) == dev)
        }))
    }

    /// When `what` is a spec that names no attachment but shares its
    /// label or its LUN with one: that attachment's spec, and what they
    /// share. A caller acting on `what` must not act on that one.
    fn other_spec(&self, what: &str) -> Result<Option<Cause>, StateError> {
        let Ok(spec) = what.parse::<Spec>() else {
            return Ok(None);
        };
        let asked = spec.to_string();
        let other = |what: String, a: Attachment| Cause::OtherSpec {
            asked: asked.clone(),
            what,
            attached: a.spec,
        };
        if let Some(a) = self.store.load(&key_of(&spec))? {
            if a.spec != asked {
                let what = match &spec.label {
                    Some(l) => format!("label {l}"),
                    None => format!("LUN {} of {}", spec.lun, target_of(&a).unwrap_or_default()),
                };
                return Ok(Some(other(what, a)));
            }
            return Ok(None);
        }
        if let Some(t) = &spec.target {
            let want = (t.to_string(), spec.lun);
            if let Some((_, a)) = self
                .store
                .all()?
                .into_iter()
                .find(|(_, a)| lun_of(a).as_ref() == Some(&want))
            {
                return Ok(Some(other(format!("LUN {} of {}", want.1, want.0), a)));
            }
        }
        Ok(None)
    }

    /// Start the detached `iscsimple join WAIT_ARGS... SPEC` watcher that
    /// lets a deferred local leg join once the hypervisor says the domain
    /// took over (it must outlive the hotplug script or hook).
    pub fn spawn_join_watcher(&self, wait_args: &[&str], spec: &Spec) -> Result<u32, RunError> {
        let mut args = Vec::new();
        if let Some(c) = &self.config.path {
            args.extend(["--config".to_string(), c.display().to_string()]);
        }
        args.push("join".to_string());
        args.extend(wait_args.iter().map(|a| (*a).to_string()));
        args.push(spec.to_string());
        self.runner.spawn_self_detached(&args)
    }

    /// Find the attachment `what` names, take its lock, and read its record
    /// again under the lock (a concurrent call may have changed or removed
    /// it meanwhile). None when it is not attached; an error when `what` is
    /// a spec whose label or LUN another spec holds.
    fn locked(
        &self,
        op: &'static str,
        what: &str,
    ) -> Result<Option<(String, Attachment, Lock)>, DiskError> {
        let fail = |step, cause: Cause| DiskError::new(op, what, step, cause);
        let Some((key, _)) = self.find(what).map_err(|e| fail(Step::State, e.into()))? else {
            if let Some(c) = self
                .other_spec(what)
                .map_err(|e| fail(Step::State, e.into()))?
            {
                return Err(fail(Step::Find, c));
            }
            return Ok(None);
        };
        let lock = self.key_lock(&key).map_err(|e| fail(Step::Lock, e))?;
        // A call killed while writing this record left its temporary file.
        self.store
            .tidy(&key)
            .map_err(|e| fail(Step::State, e.into()))?;
        let a = self
            .store
            .load(&key)
            .map_err(|e| fail(Step::State, e.into()))?;
        // Under the lock the record may have become another spec's.
        if let (Some(a), Ok(spec)) = (&a, what.parse::<Spec>()) {
            if a.spec != spec.to_string() {
                return Err(fail(
                    Step::Find,
                    Cause::OtherSpec {
                        asked: spec.to_string(),
                        what: "label or LUN".into(),
                        attached: a.spec.clone(),
                    },
                ));
            }
        }
        Ok(a.map(|a| (key, a, lock)))
    }
}

/// Remove a file; gone already is fine.
fn remove_file(path: &Path) -> Result<(), crate::md::MdError> {
    if !path.exists() {
        return Ok(());
    }
    crate::crash::point("remove file", path);
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(crate::md::MdError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A record's time for people: RFC 3339, UTC.
fn when(since: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(since);
    format!("since {}", humantime::format_rfc3339_seconds(t))
}

#[cfg(test)]
mod tests;
