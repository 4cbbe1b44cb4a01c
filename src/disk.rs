//! Attach and detach: the seed's steps, each with its undo.
//!
//! attach: read the label table → check the local volume → login (node
//! record, CHAP, manual scan) → scan the LUN → wait for its block device →
//! check sizes → `mdadm --build … missing --write-mostly ISCSI` → `--add
//! LOCAL`. Every step that changes the host pushes its undo; a failure runs
//! them backwards, so the host ends as it was before the call.
use std::cell::RefCell;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Config, ConfigError};
use crate::iscsi::{self, IscsiError, Iscsiadm, ScsiDev, Session};
use crate::labels::{LabelTable, LabelTableError, LocalDevice};
use crate::lock::{file_key, Lock, LockError};
use crate::md::{self, Bitmap, Leg, MdError, Mdadm};
use crate::runner::{Cmd, Program, RunError, Runner};
use crate::spec::{Spec, TargetName};
use crate::state::{
    self, Attachment, Durable, IscsiLeg, LocalNewer, Mirror, OpenRecord, OwnedSession, Phase,
    StateError, Store,
};
use crate::sysfs::Sys;
use crate::uevent::{Event, Watcher};
use crate::volume::{self, VolumeError};

/// A step of attach or detach, named in errors and plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Reading the label table.
    LabelTable,
    /// Resolving and checking the local volume.
    LocalVolume,
    /// Checking that the label is free.
    Label,
    /// Taking a lock.
    Lock,
    /// Recording state.
    State,
    /// Finding the target's portal.
    Portal,
    /// Preparing the node record.
    Node,
    /// Logging in.
    Login,
    /// Scanning the LUN.
    Scan,
    /// Waiting for the LUN's block device.
    Device,
    /// Comparing sizes.
    Size,
    /// Building the array.
    Build,
    /// Adding the local leg.
    AddLocal,
    /// Stopping the array.
    Stop,
    /// Removing the SCSI device.
    DeleteDevice,
    /// Logging out.
    Logout,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::LabelTable => "label table",
            Step::LocalVolume => "local leg",
            Step::Label => "label",
            Step::Lock => "lock",
            Step::State => "state",
            Step::Portal => "portal",
            Step::Node => "node record",
            Step::Login => "login",
            Step::Scan => "LUN scan",
            Step::Device => "block device",
            Step::Size => "size check",
            Step::Build => "mdadm --build",
            Step::AddLocal => "mdadm --add",
            Step::Stop => "mdadm --stop",
            Step::DeleteDevice => "SCSI device delete",
            Step::Logout => "logout",
        })
    }
}

/// What went wrong in a step.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    /// Configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Label table.
    #[error(transparent)]
    Labels(#[from] LabelTableError),
    /// Local volume.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// iSCSI.
    #[error(transparent)]
    Iscsi(#[from] IscsiError),
    /// md.
    #[error(transparent)]
    Md(#[from] MdError),
    /// Locks.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// State files.
    #[error(transparent)]
    State(#[from] StateError),
    /// An external program.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The label is not in the table.
    #[error("label {label} is not in the label table {}", table.display())]
    UnknownLabel {
        /// The label.
        label: String,
        /// The table.
        table: PathBuf,
    },
    /// Both legs MISSING.
    #[error("both legs are MISSING: nothing to attach")]
    BothMissing,
    /// The label already names an array this call did not make.
    #[error("/dev/md/{label} already exists ({kname}){}", held_by(.by))]
    LabelInUse {
        /// The label.
        label: String,
        /// Its array.
        kname: String,
        /// The attachment holding it, if known.
        by: Option<String>,
    },
    /// The local volume holds newer data than the iSCSI disk, but this
    /// attach would not use that volume as its source.
    #[error(transparent)]
    LocalIsNewer(Box<NewerConflict>),
    /// The LUN is already attached under another spec.
    #[error("LUN {lun} of {target} is already attached as {by}")]
    LunInUse {
        /// Target.
        target: String,
        /// LUN.
        lun: u32,
        /// The other attachment's spec.
        by: String,
    },
}

/// An attach that would lose a local leg's newer data.
#[derive(Debug, thiserror::Error)]
#[error("the local leg {} of {label} holds writes the iSCSI disk lacks (recorded in {}: {reason}); {what}; put it back in the label table, or delete that file to accept the iSCSI copy", local.display(), record.display())]
pub struct NewerConflict {
    /// The label.
    pub label: String,
    /// The local volume with the newer data.
    pub local: PathBuf,
    /// The record file.
    pub record: PathBuf,
    /// Why it was recorded.
    pub reason: String,
    /// What this attach would do instead.
    pub what: String,
}

fn held_by(by: &Option<String>) -> String {
    by.as_ref()
        .map(|b| format!(", attached as {b}"))
        .unwrap_or_default()
}

impl Cause {
    /// True when the caller's input (spec, table, config, credentials) is at
    /// fault rather than the system: exit code 2.
    pub fn is_input(&self) -> bool {
        matches!(
            self,
            Cause::Config(_)
                | Cause::Labels(_)
                | Cause::UnknownLabel { .. }
                | Cause::BothMissing
                | Cause::LabelInUse { .. }
                | Cause::LunInUse { .. }
                | Cause::LocalIsNewer(_)
                | Cause::Volume(_)
                | Cause::Iscsi(IscsiError::AuthFailed { .. })
                | Cause::Iscsi(IscsiError::NotDisk { .. })
                | Cause::Iscsi(IscsiError::NoLun { .. })
                | Cause::Iscsi(IscsiError::TargetUnknown { .. })
        )
    }
}

/// A failed attach or detach: the spec, the step, the cause, and any undo
/// that failed too.
#[derive(Debug, thiserror::Error)]
#[error("{op} {spec}: {step}: {cause}{}", rollback_text(.rollback))]
pub struct DiskError {
    /// `attach` or `detach`.
    pub op: &'static str,
    /// The spec (canonical) or what detach was given.
    pub spec: String,
    /// The step that failed.
    pub step: Step,
    /// Why. Not exposed as `source()`: the message already carries the whole
    /// chain, and the edge prints `{:#}`.
    pub cause: Box<Cause>,
    /// Undo steps that failed as well (empty when the rollback was clean).
    pub rollback: Vec<String>,
}

impl DiskError {
    /// An error with nothing left to roll back.
    fn new(op: &'static str, spec: &str, step: Step, cause: Cause) -> DiskError {
        DiskError {
            op,
            spec: spec.to_string(),
            step,
            cause: Box::new(cause),
            rollback: vec![],
        }
    }
}

fn rollback_text(r: &[String]) -> String {
    if r.is_empty() {
        String::new()
    } else {
        format!(" (rollback incomplete: {})", r.join("; "))
    }
}

/// How to attach.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttachOptions {
    /// Build a mirror with its iSCSI leg only and let the local leg join
    /// later ([`Engine::join_local`]): on an incoming migration the source
    /// host still writes to the iSCSI disk, and a resync started now would
    /// copy blocks that are still changing.
    pub defer_local: bool,
}

/// One undo action, pushed by the step that made it necessary.
#[derive(Debug)]
enum Undo {
    RemoveState(String),
    DeleteNode {
        target: String,
        portal: String,
    },
    RestoreRecord {
        path: PathBuf,
        content: iscsi::RecordText,
    },
    Logout {
        /// The attachment whose rollback this is (other ones keep the session).
        key: String,
        target: String,
        sid: u32,
    },
    Disown(String),
    DeleteScsi(ScsiDev),
    StopArray {
        label: String,
        kname: Option<String>,
    },
    RestoreOpen(String, Option<OpenRecord>),
    RestoreNewer(String, Option<LocalNewer>),
}

/// An array `mdadm --stop` stopped, whose disk may still be going.
#[derive(Debug)]
struct Stopping {
    label: String,
    kname: String,
    /// Subscribed to udevd before the stop (None: no udev, or nothing stopped).
    udev: Option<Watcher>,
}

/// How long to wait for udevd to finish an array's removal before falling
/// back to `udevadm settle` (which waits for its whole queue).
const UDEV_WAIT: Duration = Duration::from_secs(10);

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
        }
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
        }
    }

    fn mdadm(&self) -> Mdadm<'_> {
        Mdadm {
            runner: self.runner,
            timeout: self.config.timeouts.command,
        }
    }

    fn lock(&self, name: &str, what: &str) -> Result<Lock, LockError> {
        Lock::take(
            &self.store.lock_dir(),
            &file_key(name),
            what,
            self.config.timeouts.lock,
        )
    }

    /// The lock around a target's login, scan, logout and session claim:
    /// every user of it must name it alike.
    fn target_lock(&self, target: &str) -> Result<Lock, LockError> {
        self.lock(&format!("target-{target}"), &format!("target {target}"))
    }

    /// The local leg of `spec` per the label table: None for MISSING or no label.
    fn local_leg(&self, spec: &Spec) -> Result<Option<PathBuf>, (Step, Cause)> {
        let Some(label) = &spec.label else {
            return Ok(None);
        };
        let table =
            LabelTable::load(&self.config.label_table).map_err(|e| (Step::LabelTable, e.into()))?;
        let entry = table.lookup(label).ok_or_else(|| {
            (
                Step::LabelTable,
                Cause::UnknownLabel {
                    label: label.to_string(),
                    table: self.config.label_table.clone(),
                },
            )
        })?;
        Ok(match &entry.device {
            LocalDevice::Missing => None,
            LocalDevice::Path(p) => Some(p.clone()),
        })
    }

    /// The ordered plan of `attach` (for `--dry-run`): one line per command
    /// or sysfs write it would do. Changes nothing.
    pub fn plan(&self, spec: &Spec) -> Result<Vec<String>, DiskError> {
        let fail = |(step, cause)| DiskError {
            op: "attach",
            spec: spec.to_string(),
            step,
            cause: Box::new(cause),
            rollback: vec![],
        };
        let local = self.local_leg(spec).map_err(fail)?;
        if spec.target.is_none() && local.is_none() && spec.label.is_some() {
            return Err(fail((Step::LocalVolume, Cause::BothMissing)));
        }
        let mut p = Vec::new();
        if let Some(l) = &local {
            p.push(format!(
                "check {} is an unused block device (exclusive open, sysfs holders)",
                l.display()
            ));
        }
        if let Some(t) = &spec.target {
            let t = t.as_str();
            match iscsi::session_of(&self.sys, t).filter(|s| s.state == "LOGGED_IN") {
                Some(s) => p.push(format!("reuse session {} to {t}", s.sid)),
                None => {
                    let portal = iscsi::node_portals(&self.sys, t).into_iter().next();
                    let portal = match portal {
                        Some(pt) => pt,
                        None => {
                            for d in &self.config.discovery.portals {
                                p.push(format!(
                                    "iscsiadm -m discovery -t sendtargets -p {d} -o nonpersistent"
                                ));
                            }
                            p.push(format!("iscsiadm -m node -T {t} -p PORTAL -o new"));
                            "PORTAL".to_string()
                        }
                    };
                    p.push(format!(
                        "set node.session.scan = manual, node.startup = manual and the session timeouts in the node record of {t} at {portal} (under open-iscsi's lock)"
                    ));
                    if self
                        .config
                        .chap_for(spec.target.as_ref().expect("checked"))
                        .ok()
                        .flatten()
                        .is_some()
                    {
                        p.push(format!("set node.session.auth.authmethod = CHAP and the usernames in the node record of {t} at {portal}"));
                        p.push(format!("write CHAP secrets into the node record of {t} at {portal} (never on a command line)"));
                    }
                    p.push(format!("iscsiadm -m node -T {t} -p {portal} --login"));
                }
            }
            p.push(format!(
                "echo '- - {}' > /sys/class/scsi_host/hostN/scan",
                spec.lun
            ));
            p.push(format!(
                "wait for the block device of LUN {} (uevents, {}s)",
                spec.lun,
                self.config.timeouts.device.as_secs()
            ));
        }
        if let Some(label) = &spec.label {
            let mut legs = vec!["missing".to_string()];
            match &spec.target {
                Some(_) => legs.push("--write-mostly ISCSI_DEV".into()),
                None => legs.push(
                    local
                        .as_ref()
                        .map(|l| l.display().to_string())
                        .unwrap_or_default(),
                ),
            }
            p.push(format!(
                "mdadm --build /dev/md/{label} --level=1 --raid-devices=2 {}",
                legs.join(" ")
            ));
            if let (Some(_), Some(l)) = (&spec.target, &local) {
                p.push(format!("mdadm /dev/md/{label} --add {}", l.display()));
            }
            p.push(format!("hand out /dev/md/{label}"));
        } else {
            p.push("hand out the LUN's block device".to_string());
        }
        Ok(p)
    }

    /// Attach `spec`; returns the device to hand to the hypervisor.
    pub fn attach(&self, spec: &Spec) -> Result<PathBuf, DiskError> {
        self.attach_with(spec, AttachOptions::default())
    }

    /// Attach with options (see [`AttachOptions`]).
    pub fn attach_with(&self, spec: &Spec, opts: AttachOptions) -> Result<PathBuf, DiskError> {
        let key = key_of(spec);
        let mut undo: Vec<Undo> = Vec::new();
        let r = self.attach_steps(spec, &key, opts, &mut undo);
        match r {
            Ok(dev) => Ok(dev),
            Err((step, cause)) => {
                tracing::warn!(spec = %spec, %step, error = %cause, "attach failed; rolling back");
                let rollback = self.run_undo(undo);
                Err(DiskError {
                    op: "attach",
                    spec: spec.to_string(),
                    step,
                    cause: Box::new(cause),
                    rollback,
                })
            }
        }
    }

    fn attach_steps(
        &self,
        spec: &Spec,
        key: &str,
        opts: AttachOptions,
        undo: &mut Vec<Undo>,
    ) -> Result<PathBuf, (Step, Cause)> {
        // Input first: nothing is touched until the table and volume check out.
        let local_path = self.local_leg(spec)?;
        if spec.target.is_none() && local_path.is_none() {
            return Err((Step::LocalVolume, Cause::BothMissing));
        }
        let local = match &local_path {
            Some(p) => {
                Some(volume::resolve(&self.sys, p).map_err(|e| (Step::LocalVolume, e.into()))?)
            }
            None => None,
        };

        let _key_lock = self
            .lock(&format!("attach-{key}"), &format!("attachment {key}"))
            .map_err(|e| (Step::Lock, e.into()))?;
        let _lun_lock = match &spec.target {
            Some(t) if spec.label.is_some() => Some(
                self.lock(
                    &format!("lun{}@{}", spec.lun, t.as_str()),
                    &format!("LUN {} of {}", spec.lun, t.as_str()),
                )
                .map_err(|e| (Step::Lock, e.into()))?,
            ),
            _ => None,
        };

        // Read before any cleanup below: it tells whether the last use of
        // the label ended cleanly.
        let open = match &spec.label {
            Some(l) => self
                .durable
                .open(l.as_str())
                .map_err(|e| (Step::State, e.into()))?,
            None => None,
        };
        // Already attached (a rerun): hand out the same device.
        if let Some(a) = self.store.load(key).map_err(|e| (Step::State, e.into()))? {
            if a.phase == Phase::Attached && a.spec == spec.to_string() {
                if let Some(dev) = a.device.clone().filter(|d| self.sys.path(d).exists()) {
                    tracing::info!(spec = %spec, device = %dev.display(), "already attached");
                    return Ok(dev);
                }
            }
            if a.spec != spec.to_string() && a.phase == Phase::Attached {
                let kname = a
                    .mirror
                    .as_ref()
                    .and_then(|m| m.kname.clone())
                    .unwrap_or_default();
                let label = spec
                    .label
                    .as_ref()
                    .map(|l| l.to_string())
                    .unwrap_or_default();
                return Err((
                    Step::Label,
                    Cause::LabelInUse {
                        label,
                        kname,
                        by: Some(a.spec),
                    },
                ));
            }
            // A previous attach died half-way (or its devices vanished): undo what it recorded.
            tracing::warn!(spec = %spec, phase = ?a.phase, "cleaning up an unfinished attachment first");
            let errors = self.detach_recorded(key, &a);
            if let Some(e) = errors.into_iter().next() {
                return Err(e);
            }
        }
        if let Some(label) = &spec.label {
            if let Some(arr) = md::by_label(&self.sys, label.as_str()) {
                return Err((
                    Step::Label,
                    Cause::LabelInUse {
                        label: label.to_string(),
                        kname: arr.kname,
                        by: None,
                    },
                ));
            }
        }
        if let Some(v) = &local {
            volume::check_unused(&self.sys, v).map_err(|e| (Step::LocalVolume, e.into()))?;
        }
        if let Some(t) = &spec.target {
            for (k, a) in self.store.all().map_err(|e| (Step::State, e.into()))? {
                if let Some(i) = &a.iscsi {
                    if k != file_key(key) && i.target == t.as_str() && i.lun == spec.lun {
                        return Err((
                            Step::Scan,
                            Cause::LunInUse {
                                target: t.to_string(),
                                lun: spec.lun,
                                by: a.spec,
                            },
                        ));
                    }
                }
            }
        }

        let trust_local = self.choose_source(spec, local.as_ref(), open.as_ref(), opts, undo)?;

        let mut att = Attachment {
            spec: spec.to_string(),
            phase: Phase::Attaching,
            device: None,
            iscsi: None,
            mirror: spec.label.as_ref().map(|l| Mirror {
                label: l.to_string(),
                kname: None,
                local: local_path.clone(),
                local_pending: false,
                bitmap: None,
            }),
        };
        self.store
            .save(key, &att)
            .map_err(|e| (Step::State, e.into()))?;
        undo.push(Undo::RemoveState(key.to_string()));

        // iSCSI leg.
        let iscsi_dev = match &spec.target {
            Some(t) => {
                let leg = self.iscsi_leg(key, t, spec.lun, undo)?;
                let dev = PathBuf::from(format!("/dev/{}", leg.kname));
                att.iscsi = Some(leg);
                self.store
                    .save(key, &att)
                    .map_err(|e| (Step::State, e.into()))?;
                Some(dev)
            }
            None => None,
        };
        if let (Some(v), Some(leg)) = (&local, &att.iscsi) {
            volume::check_size(v, leg.size).map_err(|e| (Step::Size, e.into()))?;
        }

        // The mirror.
        let device = match &spec.label {
            None => {
                // Let udev make its links (by-path, by-id) before a caller
                // such as libvirt looks for them.
                self.settle();
                iscsi_dev
                    .clone()
                    .expect("a spec without label has a target")
            }
            Some(label) => {
                let label = label.as_str();
                let mut legs = vec![Leg::Missing];
                match (&iscsi_dev, &local) {
                    // The local copy is the source: the iSCSI leg joins later.
                    (Some(_), Some(v)) if trust_local => legs.push(Leg::Normal(v.path.clone())),
                    (Some(d), _) => legs.push(Leg::WriteMostly(d.clone())),
                    (None, Some(v)) => legs.push(Leg::Normal(v.path.clone())),
                    (None, None) => unreachable!("checked above"),
                }
                self.durable
                    .set_open(&OpenRecord {
                        label: label.to_string(),
                        spec: spec.to_string(),
                        boot_id: state::boot_id(),
                        since: state::now(),
                    })
                    .map_err(|e| (Step::State, e.into()))?;
                undo.push(Undo::RestoreOpen(label.to_string(), open.clone()));
                if iscsi_dev.is_none() {
                    // Every write from now on reaches the local leg only.
                    self.ensure_newer(
                        label,
                        spec,
                        local.as_ref().map(|v| v.path.clone()),
                        "iSCSI leg MISSING",
                        undo,
                    )?;
                }
                let size = att.iscsi.as_ref().map(|i| i.size).unwrap_or(0);
                let bitmap = match (&iscsi_dev, &local) {
                    (Some(_), Some(_)) if !opts.defer_local => self.bitmap_for(spec, label, size),
                    _ => None,
                };
                if let Some(stale) = self.sys.link_name(md::label_path(label)) {
                    // A link left by an array stopped without udev would confuse mdadm.
                    md::remove_stale_nodes(&self.sys, label, &stale)
                        .map_err(|e| (Step::Build, e.into()))?;
                }
                {
                    // No lock of ours: mdadm --build picks the free minor and
                    // creates the array under its own map lock
                    // (/run/mdadm/map.lock); builds of different labels overlap.
                    undo.push(Undo::StopArray {
                        label: label.to_string(),
                        kname: None,
                    });
                    let built = self.mdadm().build(label, &legs, bitmap.as_ref());
                    match (built, &bitmap) {
                        (Ok(()), Some(b)) => {
                            if let Some(m) = att.mirror.as_mut() {
                                m.bitmap = Some(b.file.clone());
                            }
                        }
                        (Ok(()), None) => {}
                        (Err(e), Some(b)) => {
                            // Kernels built without bitmap file support refuse it here.
                            tracing::warn!(spec = %spec, error = %e, "mdadm --build with a write-intent bitmap failed; building without (a heal will resync fully)");
                            self.stop_array(label, self.find_array(label, &legs).as_deref())
                                .map_err(|e| (Step::Build, e.into()))?;
                            remove_file(&b.file).map_err(|e| (Step::Build, e.into()))?;
                            self.mdadm()
                                .build(label, &legs, None)
                                .map_err(|e| (Step::Build, e.into()))?;
                        }
                        (Err(e), None) => return Err((Step::Build, e.into())),
                    }
                }
                // mdadm names the array itself (see Mdadm::build); settle
                // only if the name is not there after all.
                if md::by_label(&self.sys, label).is_none() {
                    self.settle();
                }
                let kname = self.find_array(label, &legs).ok_or_else(|| {
                    (
                        Step::Build,
                        MdError::Vanished {
                            label: label.to_string(),
                        }
                        .into(),
                    )
                })?;
                if let Some(Undo::StopArray { kname: k, .. }) = undo.last_mut() {
                    *k = Some(kname.clone());
                }
                md::ensure_label_link(&self.sys, label, &kname)
                    .map_err(|e| (Step::Build, e.into()))?;
                md::set_speed_limits(
                    &self.sys,
                    &kname,
                    self.config.md.sync_speed_min,
                    self.config.md.sync_speed_max,
                )
                .map_err(|e| (Step::Build, e.into()))?;
                if let Some(m) = att.mirror.as_mut() {
                    m.kname = Some(kname.clone());
                }
                self.store
                    .save(key, &att)
                    .map_err(|e| (Step::State, e.into()))?;
                if let (Some(_), Some(v)) = (&iscsi_dev, &local) {
                    if opts.defer_local {
                        tracing::info!(spec = %spec, local = %v.path.display(), "local leg joins later (incoming migration)");
                        if let Some(m) = att.mirror.as_mut() {
                            m.local_pending = true;
                        }
                    } else if trust_local {
                        // The local copy is the source: the iSCSI leg joins write-mostly and is overwritten.
                        self.mdadm()
                            .add(label, iscsi_dev.as_ref().expect("matched"), true)
                            .map_err(|e| (Step::AddLocal, e.into()))?;
                    } else {
                        // The iSCSI copy is the source: the local leg joins and is overwritten.
                        self.mdadm()
                            .add(label, &v.path, false)
                            .map_err(|e| (Step::AddLocal, e.into()))?;
                    }
                }
                md::label_path(label)
            }
        };
        att.phase = Phase::Attached;
        att.device = Some(device.clone());
        self.store
            .save(key, &att)
            .map_err(|e| (Step::State, e.into()))?;
        tracing::info!(spec = %spec, device = %device.display(), "attached");
        Ok(device)
    }

    /// Which copy this attach builds from, per what this host recorded:
    /// true for the local leg (it holds writes the iSCSI disk lacks), false
    /// for the seed's rule (the iSCSI copy overwrites the local one). Tells
    /// the caller about an earlier use of the label that did not end cleanly.
    fn choose_source(
        &self,
        spec: &Spec,
        local: Option<&volume::Volume>,
        open: Option<&OpenRecord>,
        opts: AttachOptions,
        undo: &mut Vec<Undo>,
    ) -> Result<bool, (Step, Cause)> {
        let Some(label) = &spec.label else {
            return Ok(false);
        };
        let label = label.as_str();
        let shown = spec.to_string();
        let newer = self
            .durable
            .newer(label)
            .map_err(|e| (Step::State, e.into()))?;
        let mut trust_local = false;
        if let Some(n) = &newer {
            let same = local
                .map(|v| self.same_file(&v.path, &n.local))
                .unwrap_or(false);
            if opts.defer_local {
                // The migrating VM runs on the iSCSI disk elsewhere: that is its disk now.
                self.notice(
                    &shown,
                    format!(
                        "dropping the record that the local leg {} of {label} is newer ({}): an incoming migration brings the running VM's disk",
                        n.local.display(),
                        n.reason
                    ),
                );
                self.durable
                    .clear_newer(label)
                    .map_err(|e| (Step::State, e.into()))?;
                undo.push(Undo::RestoreNewer(label.to_string(), newer.clone()));
            } else if spec.target.is_some() {
                if !same {
                    return Err((
                        Step::LocalVolume,
                        Cause::LocalIsNewer(Box::new(NewerConflict {
                            label: label.to_string(),
                            local: n.local.clone(),
                            record: self.durable.path("newer", label),
                            reason: n.reason.clone(),
                            what: match local {
                                None => "the label table makes that leg MISSING".to_string(),
                                Some(v) => {
                                    format!("the label table now names {}", v.path.display())
                                }
                            },
                        })),
                    ));
                }
                trust_local = true;
            }
        }
        let why = match (&newer, trust_local) {
            (Some(n), true) => format!(
                "trusting the local leg {}: {} ({}); resyncing local -> iSCSI",
                n.local.display(),
                n.reason,
                when(n.since)
            ),
            _ if spec.target.is_none() => {
                "the iSCSI leg is MISSING: the local leg is used alone".to_string()
            }
            _ if local.is_none() => {
                "the local leg is MISSING: the iSCSI disk is used alone".to_string()
            }
            _ => "trusting the iSCSI disk (no record of its leg failing); the local leg is resynced from it".to_string(),
        };
        if let Some(o) = open {
            let what = if o.boot_id != state::boot_id() {
                format!(
                    "the last attach of {label} ({}, {}) was never detached: the host went down with it",
                    o.spec,
                    when(o.since)
                )
            } else {
                format!(
                    "an earlier attach or detach of {label} ({}) did not finish",
                    when(o.since)
                )
            };
            self.notice(&shown, format!("{what}; {why}"));
        } else if trust_local {
            self.notice(&shown, why);
        }
        Ok(trust_local)
    }

    /// Record that the local leg of `label` is newer, unless already recorded.
    fn ensure_newer(
        &self,
        label: &str,
        spec: &Spec,
        local: Option<PathBuf>,
        reason: &str,
        undo: &mut Vec<Undo>,
    ) -> Result<(), (Step, Cause)> {
        let Some(local) = local else { return Ok(()) };
        let prior = self
            .durable
            .newer(label)
            .map_err(|e| (Step::State, e.into()))?;
        if prior.is_none() {
            self.durable
                .set_newer(&LocalNewer {
                    label: label.to_string(),
                    spec: spec.to_string(),
                    local,
                    since: state::now(),
                    reason: reason.to_string(),
                })
                .map_err(|e| (Step::State, e.into()))?;
            undo.push(Undo::RestoreNewer(label.to_string(), None));
        }
        Ok(())
    }

    /// The write-intent bitmap for a new mirror, when configured and the
    /// platform supports it (a stale file from an earlier array is removed:
    /// md would trust its clean bits).
    fn bitmap_for(&self, spec: &Spec, label: &str, size: u64) -> Option<Bitmap> {
        if !self.config.md.bitmap {
            return None;
        }
        let file = self.durable.bitmap(label);
        if let Err(why) = md::bitmap_support(&self.mdadm(), &self.durable.bitmap_dir()) {
            tracing::info!(spec = %spec, why, "no write-intent bitmap: a heal resyncs the whole disk");
            return None;
        }
        if let Err(e) = remove_file(&file) {
            tracing::warn!(spec = %spec, error = %e, "cannot remove a stale bitmap file; no bitmap");
            return None;
        }
        Some(Bitmap::for_size(file, size))
    }

    fn same_file(&self, a: &Path, b: &Path) -> bool {
        let c = |p: &Path| std::fs::canonicalize(self.sys.path(p)).ok();
        a == b || (c(a).is_some() && c(a) == c(b))
    }

    /// What the legs of an attachment's mirror say now; None when it is not
    /// a two-legged mirror whose array exists.
    pub fn health(&self, a: &Attachment) -> Option<Health> {
        let m = a.mirror.as_ref()?;
        let local = m.local.as_ref()?;
        let array = md::read_array(&self.sys, m.kname.as_deref()?)?;
        let flags = |kname: &str| {
            array
                .members
                .iter()
                .find(|x| x.kname == kname)
                .map(|x| x.state.clone())
        };
        let ok = |f: &Option<Vec<String>>| {
            f.as_ref()
                .map(|f| f.iter().any(|x| x == "in_sync") && !f.iter().any(|x| x == "faulty"))
                .unwrap_or(false)
        };
        // By device number: without udev LVM's links end at /dev/mapper nodes.
        let local_kname = volume::resolve(&self.sys, local)
            .ok()
            .map(|v| v.kname)
            .or_else(|| {
                let p = std::fs::canonicalize(self.sys.path(local)).ok()?;
                Some(p.file_name()?.to_string_lossy().into_owned())
            });
        if m.local_pending {
            return Some(Health::Other("local leg joins later".to_string()));
        }
        let local_ok = ok(&local_kname.as_deref().and_then(flags));
        let Some(leg) = &a.iscsi else {
            return Some(if local_ok {
                Health::LocalNewer {
                    reason: "iSCSI leg MISSING".to_string(),
                    heal: false,
                }
            } else {
                Health::Other("local leg not in sync".to_string())
            });
        };
        let iscsi = flags(&leg.kname);
        let iscsi_ok = ok(&iscsi);
        Some(match (local_ok, iscsi_ok) {
            (true, true) if array.degraded == 0 && array.sync_action == "idle" => Health::InSync,
            (true, false) => {
                let faulty = iscsi
                    .as_ref()
                    .map(|f| f.iter().any(|x| x == "faulty"))
                    .unwrap_or(true);
                let recovering = !faulty && array.sync_action == "recover";
                Health::LocalNewer {
                    reason: if recovering {
                        "iSCSI leg resyncing from the local leg".to_string()
                    } else if iscsi.is_some() {
                        "iSCSI leg faulty".to_string()
                    } else {
                        "iSCSI leg removed".to_string()
                    },
                    heal: !recovering,
                }
            }
            (false, true) => Health::Other("local leg resyncing from the iSCSI disk".to_string()),
            _ => Health::Other(format!("array {} {}", array.kname, array.sync_action)),
        })
    }

    /// Keep the local-is-newer record in line with `health`: written
    /// (fsynced) as soon as the local leg holds writes the iSCSI leg lacks,
    /// removed once both are in sync. True when the record changed.
    fn record_health(&self, a: &Attachment, health: &Health) -> Result<bool, StateError> {
        let Some((m, local)) = a.mirror.as_ref().and_then(|m| Some((m, m.local.clone()?))) else {
            return Ok(false);
        };
        let had = self.durable.newer(&m.label)?;
        match (health, had) {
            (Health::LocalNewer { reason, .. }, None) => {
                self.durable.set_newer(&LocalNewer {
                    label: m.label.clone(),
                    spec: a.spec.clone(),
                    local,
                    since: state::now(),
                    reason: reason.clone(),
                })?;
                tracing::warn!(spec = %a.spec, reason, "the local leg now holds writes the iSCSI disk lacks: recorded");
                Ok(true)
            }
            (Health::InSync, Some(_)) => {
                self.durable.clear_newer(&m.label)?;
                tracing::info!(spec = %a.spec, "iSCSI leg back in sync: local-is-newer record cleared");
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Look at one attachment's mirror and keep its records in line (what
    /// `watch` does on every event). None when it is not attached or not a
    /// two-legged mirror.
    pub fn reconcile(&self, what: &str) -> Result<Option<Health>, DiskError> {
        let Some((_key, a, _lock)) = self.locked("watch", what)? else {
            return Ok(None);
        };
        if a.phase != Phase::Attached {
            return Ok(None);
        }
        let Some(h) = self.health(&a) else {
            return Ok(None);
        };
        self.record_health(&a, &h)
            .map_err(|e| DiskError::new("watch", &a.spec, Step::State, e.into()))?;
        Ok(Some(h))
    }

    /// Login (or reuse the session), scan the LUN, wait for its disk.
    fn iscsi_leg(
        &self,
        key: &str,
        t: &TargetName,
        lun: u32,
        undo: &mut Vec<Undo>,
    ) -> Result<IscsiLeg, (Step, Cause)> {
        let target = t.as_str();
        let target_lock = self
            .target_lock(target)
            .map_err(|e| (Step::Lock, e.into()))?;
        let session = match iscsi::session_of(&self.sys, target).filter(|s| s.state == "LOGGED_IN")
        {
            Some(s) => s,
            None => self.login(key, t, undo)?,
        };
        let portal = session.portal.clone().unwrap_or_default();
        // Our own sessions scan manually, so a LUN device found on one was
        // scanned by an earlier (perhaps interrupted) call of ours.
        let owned = self
            .store
            .owned_session(target)
            .map_err(|e| (Step::State, e.into()))?
            .is_some();
        let (dev, scanned) = match iscsi::lun_device(&self.sys, &session, lun) {
            Some(d) => (d, owned),
            None => {
                iscsi::scan_lun(&self.sys, &session, lun).map_err(|e| (Step::Scan, e.into()))?;
                let d = iscsi::lun_device(&self.sys, &session, lun).ok_or_else(|| {
                    (
                        Step::Scan,
                        IscsiError::NoLun {
                            target: target.to_string(),
                            lun,
                            disks: None,
                        }
                        .into(),
                    )
                })?;
                undo.push(Undo::DeleteScsi(d.clone()));
                (d, true)
            }
        };
        if dev.kind != 0 {
            let disks = self.disk_luns(&session);
            return Err((
                Step::Scan,
                IscsiError::NotDisk {
                    target: target.to_string(),
                    lun,
                    kind: dev.kind,
                    disks: Some(disks),
                }
                .into(),
            ));
        }
        // The disk keeps the session alive from here on (a detach of another
        // LUN sees it, and our record, and keeps the session): let the
        // other attaches of this target scan while the kernel probes it.
        drop(target_lock);
        let wait = self.config.timeouts.device;
        let watcher = Watcher::new();
        let kname = watcher
            .wait(wait, || {
                let d = iscsi::lun_device(&self.sys, &session, lun)?;
                let b = d.block?;
                self.sys.exists(format!("/dev/{b}")).then_some(b)
            })
            .ok_or_else(|| {
                (
                    Step::Device,
                    IscsiError::NoBlockDevice {
                        target: target.to_string(),
                        lun,
                        hctl: dev.hctl.clone(),
                        waited: wait,
                    }
                    .into(),
                )
            })?;
        if let Some(Undo::DeleteScsi(d)) = undo.last_mut() {
            d.block = Some(kname.clone());
        }
        let size = self.sys.block_size(&kname).unwrap_or(0);
        let wwid = self.sys.read(format!("/sys/block/{kname}/device/wwid"));
        tracing::info!(target, lun, device = %kname, size, "LUN ready");
        Ok(IscsiLeg {
            target: target.to_string(),
            lun,
            portal,
            hctl: dev.hctl,
            kname,
            scanned,
            size,
            wwid,
        })
    }

    /// Disk LUNs of a session, for error messages: a full scan, then the
    /// devices it brought in are deleted again.
    fn disk_luns(&self, session: &Session) -> Vec<u32> {
        let before: Vec<String> = iscsi::host_devices(&self.sys, session.host)
            .into_iter()
            .map(|d| d.hctl)
            .collect();
        let path = self
            .sys
            .path(format!("/sys/class/scsi_host/host{}/scan", session.host));
        let _ = std::fs::write(path, "- - -");
        let all = iscsi::host_devices(&self.sys, session.host);
        for d in all.iter().filter(|d| !before.contains(&d.hctl)) {
            let _ = iscsi::delete_device(&self.sys, d);
        }
        all.iter().filter(|d| d.kind == 0).map(|d| d.lun).collect()
    }

    /// Find the portal, prepare the node record, log in; returns the session.
    fn login(
        &self,
        key: &str,
        t: &TargetName,
        undo: &mut Vec<Undo>,
    ) -> Result<Session, (Step, Cause)> {
        let target = t.as_str();
        let adm = self.iscsiadm();
        let portal = match iscsi::node_portals(&self.sys, target).into_iter().next() {
            Some(p) => p,
            None => {
                let mut found = None;
                for d in &self.config.discovery.portals {
                    let d = d.to_string();
                    match adm.discover(&d) {
                        Ok(list) => {
                            if let Some((p, _)) = list.into_iter().find(|(_, n)| n == target) {
                                found = Some(p);
                                break;
                            }
                        }
                        Err(e) => tracing::warn!(portal = %d, error = %e, "discovery failed"),
                    }
                }
                let tried = if self.config.discovery.portals.is_empty() {
                    "none configured".to_string()
                } else {
                    self.config
                        .discovery
                        .portals
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let p = found.ok_or_else(|| {
                    (
                        Step::Portal,
                        IscsiError::TargetUnknown {
                            target: target.to_string(),
                            tried,
                        }
                        .into(),
                    )
                })?;
                adm.node_new(target, &p)
                    .map_err(|e| (Step::Node, e.into()))?;
                undo.push(Undo::DeleteNode {
                    target: target.to_string(),
                    portal: p.clone(),
                });
                p
            }
        };
        let record = iscsi::node_record_file(&self.sys, target, &portal);
        if let Some(path) = &record {
            if !undo.iter().any(|u| matches!(u, Undo::DeleteNode { .. })) {
                let content = std::fs::read_to_string(path).map_err(|source| {
                    (
                        Step::Node,
                        IscsiError::Io {
                            path: path.clone(),
                            source,
                        }
                        .into(),
                    )
                })?;
                undo.push(Undo::RestoreRecord {
                    path: path.clone(),
                    content: content.into(),
                });
            }
        }
        // The settings go into the record file in one locked write (as the
        // secrets always did), not one `iscsiadm -o update` process per
        // value: five to eight processes were a third of a cold attach.
        let path = record.ok_or_else(|| {
            (
                Step::Node,
                IscsiError::Io {
                    path: PathBuf::from(iscsi::NODE_DB).join(target),
                    source: std::io::ErrorKind::NotFound.into(),
                }
                .into(),
            )
        })?;
        let timeouts = &self.config.timeouts;
        let [replacement, interval, timeout] = [
            timeouts.replacement,
            timeouts.noop_interval,
            timeouts.noop_timeout,
        ]
        .map(|d| d.as_secs().to_string());
        let mut values: Vec<(&str, &str)> = vec![
            ("node.session.scan", "manual"),
            ("node.startup", "manual"),
            ("node.session.timeo.replacement_timeout", &replacement),
            ("node.conn[0].timeo.noop_out_interval", &interval),
            ("node.conn[0].timeo.noop_out_timeout", &timeout),
        ];
        let chap = self
            .config
            .chap_for(t)
            .map_err(|e| (Step::Node, e.into()))?;
        let mut secrets = Vec::new();
        if let Some(chap) = &chap {
            values.push(("node.session.auth.authmethod", "CHAP"));
            values.push(("node.session.auth.username", &chap.credentials.username));
            secrets.push(("node.session.auth.password", &chap.credentials.password));
            if let Some(m) = &chap.mutual {
                values.push(("node.session.auth.username_in", &m.username));
                secrets.push(("node.session.auth.password_in", &m.password));
            }
        }
        iscsi::set_record_values(&self.sys, &path, &values).map_err(|e| (Step::Node, e.into()))?;
        if !secrets.is_empty() {
            iscsi::set_record_secrets(&self.sys, &path, &secrets)
                .map_err(|e| (Step::Node, e.into()))?;
        }
        // Recorded before the login: a call killed right after it must still
        // know that this session is ours to log out.
        self.store
            .own_session(&OwnedSession {
                target: target.to_string(),
                portal: portal.clone(),
            })
            .map_err(|e| (Step::State, e.into()))?;
        undo.push(Undo::Disown(target.to_string()));
        adm.login(target, &portal)
            .map_err(|e| (Step::Login, e.into()))?;
        let wait = self.config.timeouts.device;
        let session = Watcher::new()
            .wait(wait, || {
                iscsi::session_of(&self.sys, target).filter(|s| s.state == "LOGGED_IN")
            })
            .ok_or_else(|| {
                (
                    Step::Login,
                    IscsiError::NoSession {
                        target: target.to_string(),
                        waited: wait,
                    }
                    .into(),
                )
            })?;
        undo.push(Undo::Logout {
            key: key.to_string(),
            target: target.to_string(),
            sid: session.sid,
        });
        tracing::info!(target, portal = %portal, sid = session.sid, "logged in");
        Ok(session)
    }

    /// The array mdadm just built for `label`: the link's target, or the
    /// array whose members are our legs.
    fn find_array(&self, label: &str, legs: &[Leg]) -> Option<String> {
        if let Some(a) = md::by_label(&self.sys, label) {
            return Some(a.kname);
        }
        let want: Vec<String> = legs
            .iter()
            .filter_map(|l| match l {
                Leg::WriteMostly(p) | Leg::Normal(p) => std::fs::canonicalize(self.sys.path(p))
                    .ok()?
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned()),
                Leg::Missing => None,
            })
            .collect();
        md::arrays(&self.sys)
            .into_iter()
            .find(|a| want.iter().all(|w| a.members.iter().any(|m| &m.kname == w)))
            .map(|a| a.kname)
    }

    /// Let udev finish (when it runs) so links exist before we hand them out.
    fn settle(&self) {
        if self.udev_running() {
            let cmd = Cmd::new(Program::Udevadm)
                .args(["settle", "--timeout=10"])
                .timeout(Duration::from_secs(15));
            if let Err(e) = self.runner.run(&cmd) {
                tracing::debug!(error = %e, "udevadm settle");
            }
        }
    }

    fn run_undo(&self, undo: Vec<Undo>) -> Vec<String> {
        let mut failed = Vec::new();
        for u in undo.into_iter().rev() {
            tracing::debug!(undo = ?u, "undo");
            let r: Result<(), String> = match &u {
                Undo::RemoveState(k) => self.store.remove(k).map_err(|e| e.to_string()),
                Undo::DeleteNode { target, portal } => self
                    .iscsiadm()
                    .node_delete(target, portal)
                    .map_err(|e| e.to_string()),
                Undo::RestoreRecord { path, content } => {
                    iscsi::restore_record(&self.sys, path, content).map_err(|e| e.to_string())
                }
                Undo::Logout { key, target, sid } => self
                    .undo_login(key, target, *sid)
                    .map_err(|(_, c)| c.to_string()),
                Undo::Disown(t) => self.undo_own(t).map_err(|(_, c)| c.to_string()),
                Undo::DeleteScsi(d) => {
                    iscsi::delete_device(&self.sys, d).map_err(|e| e.to_string())
                }
                Undo::StopArray { label, kname } => self
                    .stop_array(label, kname.as_deref())
                    .and_then(|()| remove_file(&self.durable.bitmap(label)))
                    .map_err(|e| e.to_string()),
                Undo::RestoreOpen(label, prior) => match prior {
                    Some(o) => self.durable.set_open(o),
                    None => self.durable.clear_open(label),
                }
                .map_err(|e| e.to_string()),
                Undo::RestoreNewer(label, prior) => match prior {
                    Some(n) => self.durable.set_newer(n),
                    None => self.durable.clear_newer(label),
                }
                .map_err(|e| e.to_string()),
            };
            if let Err(e) = r {
                tracing::error!(undo = ?u, error = %e, "undo failed");
                failed.push(e);
            }
        }
        failed
    }

    fn stop_array(&self, label: &str, kname: Option<&str>) -> Result<(), MdError> {
        match self.stop_begin(label, kname)? {
            Some(s) => self.stop_end(s),
            None => Ok(()),
        }
    }

    /// `mdadm --stop` the array. The kernel and udev then remove its disk
    /// and links in the background; [`Engine::stop_end`] waits for that, so
    /// a detach can release the SCSI disk and log out meanwhile.
    fn stop_begin(&self, label: &str, kname: Option<&str>) -> Result<Option<Stopping>, MdError> {
        let kname = match kname
            .map(str::to_string)
            .or_else(|| md::by_label(&self.sys, label).map(|a| a.kname))
        {
            Some(k) => k,
            None => return Ok(None),
        };
        let mut udev = None;
        if md::read_array(&self.sys, &kname).is_some() {
            // Subscribed before the stop, so its remove event cannot be missed.
            udev = self.udev_running().then(Watcher::udev);
            self.mdadm().stop(&kname)?;
        }
        Ok(Some(Stopping {
            label: label.to_string(),
            kname,
            udev,
        }))
    }

    /// Wait until the stopped array's disk is gone (and udev has removed
    /// its links), then remove what nobody removed (no udev).
    fn stop_end(&self, s: Stopping) -> Result<(), MdError> {
        let devpath = format!("DEVPATH=/devices/virtual/block/{}", s.kname);
        match s
            .udev
            .map(|w| w.wait_event(UDEV_WAIT, &["ACTION=remove", &devpath]))
        {
            Some(Event::Seen) => {}
            // udevd is stuck: settle would wait as long again (the hotplug
            // script has 40 s in all); the stale links go below.
            Some(Event::Timeout) => {
                tracing::warn!(array = %s.kname, waited = ?UDEV_WAIT, "udev did not finish removing the array")
            }
            // Stopped earlier by someone else, or udev's events were lost.
            Some(Event::Lost) | None => self.settle(),
        }
        // The kernel drops a stopped array's disk asynchronously; without
        // udev nothing else waits for it before the stale nodes go.
        let gone = format!("/sys/block/{}", s.kname);
        let _ = Watcher::new().wait(Duration::from_secs(5), || {
            (!self.sys.exists(&gone)).then_some(())
        });
        md::remove_stale_nodes(&self.sys, &s.label, &s.kname)
    }

    fn udev_running(&self) -> bool {
        self.sys.exists("/run/udev/control")
    }

    /// Find what `what` (a spec, a label, or a device) names among the attachments.
    pub fn find(&self, what: &str) -> Result<Option<(String, Attachment)>, StateError> {
        if let Ok(spec) = what.parse::<Spec>() {
            // A spec names its record: read that one, not every record
            // (watch looks up each attachment on every tick).
            let key = key_of(&spec);
            return Ok(self.store.load(&key)?.map(|a| (file_key(&key), a)));
        }
        let all = self.store.all()?;
        let dev = std::fs::canonicalize(what).ok();
        Ok(all.into_iter().find(|(_, a)| {
            a.mirror.as_ref().map(|m| m.label == what).unwrap_or(false)
                || a.device.as_deref() == Some(Path::new(what))
                || (dev.is_some()
                    && a.device
                        .as_ref()
                        .and_then(|d| std::fs::canonicalize(d).ok())
                        == dev)
        }))
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
    /// it meanwhile). None when it is not attached.
    fn locked(
        &self,
        op: &'static str,
        what: &str,
    ) -> Result<Option<(String, Attachment, Lock)>, DiskError> {
        let fail = |step, cause: Cause| DiskError::new(op, what, step, cause);
        let Some((key, _)) = self.find(what).map_err(|e| fail(Step::State, e.into()))? else {
            return Ok(None);
        };
        let lock = self
            .lock(&format!("attach-{key}"), &format!("attachment {key}"))
            .map_err(|e| fail(Step::Lock, e.into()))?;
        let a = self
            .store
            .load(&key)
            .map_err(|e| fail(Step::State, e.into()))?;
        Ok(a.map(|a| (key, a, lock)))
    }

    /// Bring a mirror's failed iSCSI leg back once its session is logged in
    /// again. With a write-intent bitmap and the same disk (same SCSI wwid):
    /// `--remove`, then `--re-add --write-mostly`, and md copies only the
    /// regions written during the outage. Otherwise: fail and remove the old
    /// member, then `--add --write-mostly`, a full resync local → iSCSI.
    /// Never `--re-add` without a bitmap: mdadm 4.2 accepts it, marks the
    /// leg in sync and skips the resync, leaving stale blocks on the iSCSI
    /// disk.
    pub fn heal(&self, what: &str) -> Result<Healed, DiskError> {
        let Some((key, mut a, _key_lock)) = self.locked("heal", what)? else {
            return Ok(Healed::Nothing);
        };
        let spec = a.spec.clone();
        let fail = |step, cause: Cause| DiskError::new("heal", &spec, step, cause);
        let (Some(m), Some(leg)) = (a.mirror.clone(), a.iscsi.clone()) else {
            return Ok(Healed::Nothing);
        };
        let Some(kname) = m.kname.clone() else {
            return Ok(Healed::Nothing);
        };
        let array = md::read_array(&self.sys, &kname).ok_or_else(|| {
            fail(
                Step::Build,
                MdError::Vanished {
                    label: m.label.clone(),
                }
                .into(),
            )
        })?;
        let health = self.health(&a);
        if let Some(h) = &health {
            self.record_health(&a, h)
                .map_err(|e| fail(Step::State, e.into()))?;
        }
        if !matches!(health, Some(Health::LocalNewer { heal: true, .. })) {
            return Ok(Healed::Nothing);
        }
        let member = array.members.iter().find(|x| x.kname == leg.kname);
        let _target_lock = self
            .target_lock(&leg.target)
            .map_err(|e| fail(Step::Lock, e.into()))?;
        let session = iscsi::session_of(&self.sys, &leg.target);
        let session = match session {
            Some(s) if s.state == "LOGGED_IN" => s,
            other => {
                let state = other
                    .map(|s| s.state)
                    .unwrap_or_else(|| "absent".to_string());
                return Err(fail(
                    Step::Login,
                    IscsiError::SessionDown {
                        target: leg.target.clone(),
                        state,
                    }
                    .into(),
                ));
            }
        };
        if iscsi::lun_device(&self.sys, &session, leg.lun).is_none() {
            iscsi::scan_lun(&self.sys, &session, leg.lun)
                .map_err(|e| fail(Step::Scan, e.into()))?;
        }
        let wait = self.config.timeouts.device;
        let dev = Watcher::new()
            .wait(wait, || {
                let d = iscsi::lun_device(&self.sys, &session, leg.lun)?;
                let b = d.block.clone()?;
                self.sys.exists(format!("/dev/{b}")).then_some(d)
            })
            .ok_or_else(|| {
                fail(
                    Step::Device,
                    IscsiError::NoBlockDevice {
                        target: leg.target.clone(),
                        lun: leg.lun,
                        hctl: leg.hctl.clone(),
                        waited: wait,
                    }
                    .into(),
                )
            })?;
        let new_kname = dev.block.clone().expect("checked above");
        let new_dev = PathBuf::from(format!("/dev/{new_kname}"));
        let wwid = self.sys.read(format!("/sys/block/{new_kname}/device/wwid"));
        let same_disk = leg.wwid.is_some() && wwid == leg.wwid;
        let bitmap_on = m.bitmap.is_some()
            && self
                .sys
                .read(format!("/sys/block/{kname}/md/bitmap/location"))
                .as_deref()
                == Some("file");
        let mdadm = self.mdadm();
        if member.is_some() {
            let old = PathBuf::from(format!("/dev/{}", leg.kname));
            if self.sys.exists(&old) {
                let _ = mdadm.fail(&m.label, &old); // already faulty: mdadm says so
            }
        }
        mdadm
            .remove_failed(&m.label)
            .map_err(|e| fail(Step::Stop, e.into()))?;
        let mut how = Healed::Full;
        if bitmap_on && same_disk {
            match mdadm.re_add_write_mostly(&m.label, &new_dev) {
                Ok(()) => how = Healed::Incremental,
                Err(e) => {
                    tracing::warn!(spec = %a.spec, error = %e, "--re-add refused; adding the leg anew (full resync)")
                }
            }
        } else {
            tracing::info!(spec = %a.spec, bitmap_on, same_disk, "full resync: no bitmap, or not the same disk");
        }
        if how == Healed::Full {
            mdadm
                .add(&m.label, &new_dev, true)
                .map_err(|e| fail(Step::AddLocal, e.into()))?;
        }
        if let Some(i) = a.iscsi.as_mut() {
            i.kname = new_kname.clone();
            i.hctl = dev.hctl.clone();
            if wwid.is_some() {
                i.wwid = wwid;
            }
        }
        self.store
            .save(&key, &a)
            .map_err(|e| fail(Step::State, e.into()))?;
        tracing::info!(spec = %a.spec, device = %new_kname, how = ?how, "iSCSI leg back; resync local -> iSCSI started");
        Ok(how)
    }

    /// Let a deferred local leg join its mirror (the resync then copies the
    /// iSCSI data onto it). Ok(false) when nothing was pending.
    pub fn join_local(&self, what: &str) -> Result<bool, DiskError> {
        let Some((key, mut a, _key_lock)) = self.locked("join", what)? else {
            return Ok(false);
        };
        let spec = a.spec.clone();
        let fail = |step, cause: Cause| DiskError::new("join", &spec, step, cause);
        let Some(m) = a.mirror.clone().filter(|m| m.local_pending) else {
            return Ok(false);
        };
        let Some(local) = &m.local else {
            return Ok(false);
        };
        let v = volume::resolve(&self.sys, local).map_err(|e| fail(Step::LocalVolume, e.into()))?;
        volume::check_unused(&self.sys, &v).map_err(|e| fail(Step::LocalVolume, e.into()))?;
        if let Some(i) = &a.iscsi {
            volume::check_size(&v, i.size).map_err(|e| fail(Step::Size, e.into()))?;
        }
        self.mdadm()
            .add(&m.label, &v.path, false)
            .map_err(|e| fail(Step::AddLocal, e.into()))?;
        if let Some(mm) = a.mirror.as_mut() {
            mm.local_pending = false;
        }
        self.store
            .save(&key, &a)
            .map_err(|e| fail(Step::State, e.into()))?;
        tracing::info!(spec = %a.spec, local = %v.path.display(), "local leg joined; resync from iSCSI started");
        Ok(true)
    }

    /// Detach what `what` names. Not attached: Ok(false).
    pub fn detach(&self, what: &str) -> Result<bool, DiskError> {
        let Some((key, a, _key_lock)) = self.locked("detach", what)? else {
            self.forget_partial(what)?;
            return Ok(false);
        };
        tracing::debug!(spec = %a.spec, "detaching");
        let mut errors = self.detach_recorded(&key, &a);
        if errors.is_empty() {
            tracing::info!(spec = %a.spec, "detached");
            return Ok(true);
        }
        let (step, cause) = errors.remove(0);
        Err(DiskError {
            op: "detach",
            spec: a.spec,
            step,
            cause: Box::new(cause),
            rollback: errors
                .into_iter()
                .map(|(s, c)| format!("{s}: {c}"))
                .collect(),
        })
    }

    /// Nothing recorded for `what`: if it is a spec, remove what an attach
    /// killed while writing its first record may have left (the temporary
    /// file of that write).
    fn forget_partial(&self, what: &str) -> Result<(), DiskError> {
        let Ok(spec) = what.parse::<Spec>() else {
            return Ok(());
        };
        let key = key_of(&spec);
        let fail = |step, cause: Cause| DiskError::new("detach", what, step, cause);
        let _lock = self
            .lock(&format!("attach-{key}"), &format!("attachment {key}"))
            .map_err(|e| fail(Step::Lock, e.into()))?;
        if self
            .store
            .load(&key)
            .map_err(|e| fail(Step::State, e.into()))?
            .is_none()
        {
            self.store
                .remove(&key)
                .map_err(|e| fail(Step::State, e.into()))?;
        }
        Ok(())
    }

    /// Undo a recorded attachment, best effort: every step is tried, every
    /// failure returned. The record is removed only when all succeeded.
    fn detach_recorded(&self, key: &str, a: &Attachment) -> Vec<(Step, Cause)> {
        let mut errors = Vec::new();
        let mut stopping = None;
        if let Some(m) = &a.mirror {
            // Before the array goes: does the local leg hold writes the
            // iSCSI disk lacks? Then the record must outlive the array.
            match self.health(a) {
                Some(h) => {
                    if let Err(e) = self.record_health(a, &h) {
                        errors.push((Step::State, e.into()));
                        return errors;
                    }
                    if let Health::LocalNewer { reason, .. } = &h {
                        self.notice(&a.spec, format!(
                            "detached while degraded ({reason}): the local leg {} holds writes the iSCSI disk lacks. Attach it again on this host to copy them over; attaching it on another host now would use the stale iSCSI copy and lose them",
                            m.local.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
                        ));
                    }
                }
                None if a.phase == Phase::Attached && a.iscsi.is_some() && m.local.is_some() => {
                    tracing::warn!(spec = %a.spec, "array not found at detach: cannot tell which leg is newer");
                }
                None => {}
            }
            let kname = m.kname.clone().or_else(|| self.array_of(a));
            match self.stop_begin(&m.label, kname.as_deref()) {
                Err(e) => errors.push((Step::Stop, e.into())),
                Ok(s) => {
                    stopping = s;
                    if let Some(b) = &m.bitmap {
                        if let Err(e) = remove_file(b) {
                            errors.push((Step::Stop, e.into()));
                        }
                    }
                }
            }
        }
        if let Some(target) = target_of(a) {
            let lun = a
                .iscsi
                .as_ref()
                .map(|i| i.lun)
                .or_else(|| a.spec.parse::<Spec>().ok().map(|sp| sp.lun))
                .unwrap_or(0);
            if errors.is_empty() {
                if let Err(e) = self.release_lun(key, &target, lun, a.iscsi.as_ref()) {
                    errors.push(e);
                }
            }
        }
        // The array's disk and links went while the LUN was released.
        if let Some(s) = stopping {
            if let Err(e) = self.stop_end(s) {
                errors.push((Step::Stop, e.into()));
            }
        }
        if errors.is_empty() {
            if let Some(m) = &a.mirror {
                if let Err(e) = self.durable.clear_open(&m.label) {
                    errors.push((Step::State, e.into()));
                }
            }
        }
        if errors.is_empty() {
            if let Err(e) = self.store.remove(key) {
                errors.push((Step::State, e.into()));
            }
        }
        errors
    }

    /// The array holding an attachment's legs, for a record written before
    /// the array's name was known (a crash right after `mdadm --build`).
    fn array_of(&self, a: &Attachment) -> Option<String> {
        let m = a.mirror.as_ref()?;
        if let Some(arr) = md::by_label(&self.sys, &m.label) {
            return Some(arr.kname);
        }
        let mut legs = Vec::new();
        if let Some(i) = &a.iscsi {
            legs.push(Leg::WriteMostly(PathBuf::from(format!("/dev/{}", i.kname))));
        }
        if let Some(l) = &m.local {
            legs.push(Leg::Normal(l.clone()));
        }
        if legs.is_empty() {
            return None;
        }
        // Any array holding one of our legs is ours (the legs were checked
        // unused before the build).
        legs.iter()
            .find_map(|l| self.find_array(&m.label, std::slice::from_ref(l)))
    }

    /// Roll back our login, unless another attachment of the target came
    /// to share the session meanwhile (it logs out at its detach).
    fn undo_login(&self, key: &str, target: &str, sid: u32) -> Result<(), (Step, Cause)> {
        let _target_lock = self
            .target_lock(target)
            .map_err(|e| (Step::Lock, e.into()))?;
        let others = self.others_of(key, target)?;
        let busy = iscsi::session_of(&self.sys, target)
            .map(|s| !iscsi::host_devices(&self.sys, s.host).is_empty())
            .unwrap_or(false);
        if others || busy {
            tracing::info!(
                target,
                sid,
                others,
                busy,
                "session kept (rollback): another attachment uses it"
            );
            return Ok(());
        }
        tracing::info!(target, sid, "logging out (rollback)");
        self.iscsiadm()
            .logout(sid)
            .map_err(|e| (Step::Logout, e.into()))
    }

    /// Roll back our claim on the target's session: kept while the session
    /// exists (a rollback that kept it, or another attach that logged in).
    fn undo_own(&self, target: &str) -> Result<(), (Step, Cause)> {
        let _target_lock = self
            .target_lock(target)
            .map_err(|e| (Step::Lock, e.into()))?;
        if iscsi::session_of(&self.sys, target).is_some() {
            return Ok(());
        }
        self.store
            .disown_session(target)
            .map_err(|e| (Step::State, e.into()))
    }

    /// Whether an attachment other than `key` uses `target`.
    fn others_of(&self, key: &str, target: &str) -> Result<bool, (Step, Cause)> {
        Ok(self
            .store
            .all()
            .map_err(|e| (Step::State, e.into()))?
            .into_iter()
            .any(|(k, o)| k != file_key(key) && target_of(&o).as_deref() == Some(target)))
    }

    /// Delete the LUN's SCSI device (if this tool scanned it) and log out
    /// when the session is ours and nothing else uses it. `known` is the leg
    /// as attach recorded it; None when attach was interrupted before that,
    /// and then a device of that LUN on a session of ours is ours (we scan
    /// manually).
    fn release_lun(
        &self,
        key: &str,
        target: &str,
        lun: u32,
        known: Option<&IscsiLeg>,
    ) -> Result<(), (Step, Cause)> {
        let _target_lock = self
            .target_lock(target)
            .map_err(|e| (Step::Lock, e.into()))?;
        let owned = self
            .store
            .owned_session(target)
            .map_err(|e| (Step::State, e.into()))?
            .is_some();
        let session = iscsi::session_of(&self.sys, target);
        if let Some(s) = &session {
            let dev = iscsi::host_devices(&self.sys, s.host)
                .into_iter()
                .find(|d| match known {
                    Some(i) => i.scanned && d.hctl == i.hctl,
                    None => owned && d.lun == lun,
                });
            if let Some(d) = dev {
                iscsi::delete_device(&self.sys, &d).map_err(|e| (Step::DeleteDevice, e.into()))?;
            }
        }
        let others = self.others_of(key, target)?;
        if let Some(s) = session {
            let busy = !iscsi::host_devices(&self.sys, s.host).is_empty();
            if owned && !others && !busy {
                self.iscsiadm()
                    .logout(s.sid)
                    .map_err(|e| (Step::Logout, e.into()))?;
                self.store
                    .disown_session(target)
                    .map_err(|e| (Step::State, e.into()))?;
                tracing::info!(target, sid = s.sid, "logged out");
            } else {
                tracing::info!(target, sid = s.sid, owned, others, busy, "session kept");
            }
        } else if !others {
            // Not logged in: forget our record, and the temporary file of a
            // record write that a kill cut short before it took effect
            // (no json, so `owned` is false). The target lock keeps any
            // other writer of that record out.
            self.store
                .disown_session(target)
                .map_err(|e| (Step::State, e.into()))?;
        }
        Ok(())
    }
}

/// Remove a file; gone already is fine.
fn remove_file(path: &Path) -> Result<(), MdError> {
    if !path.exists() {
        return Ok(());
    }
    crate::crash::point("remove file", path);
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(MdError::Io {
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

/// The target an attachment uses: from its recorded leg, else from its spec.
fn target_of(a: &Attachment) -> Option<String> {
    a.iscsi.as_ref().map(|i| i.target.clone()).or_else(|| {
        a.spec
            .parse::<Spec>()
            .ok()
            .and_then(|s| s.target.map(|t| t.to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::recording::RecordingRunner;
    use std::fs;

    /// A fake host: sysfs for one array md127 with members dm-0 (local) and
    /// sda (iSCSI) in the given states, /dev links, state dirs.
    fn host(local: &str, iscsi: Option<&str>, action: &str) -> (tempfile::TempDir, Config) {
        let d = tempfile::tempdir().expect("tempdir");
        let r = d.path();
        let md = r.join("sys/block/md127/md");
        fs::create_dir_all(&md).expect("mkdir");
        fs::write(md.join("array_state"), "clean\n").expect("w");
        fs::write(md.join("sync_action"), format!("{action}\n")).expect("w");
        let degraded = u8::from(iscsi.map(|s| !s.contains("in_sync")).unwrap_or(true));
        fs::write(md.join("degraded"), format!("{degraded}\n")).expect("w");
        fs::create_dir_all(md.join("dev-dm-0")).expect("mkdir");
        fs::write(md.join("dev-dm-0/state"), format!("{local}\n")).expect("w");
        if let Some(s) = iscsi {
            fs::create_dir_all(md.join("dev-sda")).expect("mkdir");
            fs::write(md.join("dev-sda/state"), format!("{s}\n")).expect("w");
        }
        fs::create_dir_all(r.join("dev/labvg")).expect("mkdir");
        fs::write(r.join("dev/dm-0"), "").expect("w");
        std::os::unix::fs::symlink("../dm-0", r.join("dev/labvg/vm1")).expect("link");
        let config = Config {
            state_dir: r.join("var/lib/iscsimple"),
            run_dir: r.join("run/iscsimple"),
            ..Config::default()
        };
        (d, config)
    }

    fn attachment() -> Attachment {
        Attachment {
            spec: "lun1@iqn.2024-01.lab:t+vm1".into(),
            phase: Phase::Attached,
            device: Some("/dev/md/vm1".into()),
            iscsi: Some(IscsiLeg {
                target: "iqn.2024-01.lab:t".into(),
                lun: 1,
                portal: "127.0.0.1:3260".into(),
                hctl: "0:0:0:1".into(),
                kname: "sda".into(),
                scanned: true,
                size: 1 << 24,
                wwid: None,
            }),
            mirror: Some(Mirror {
                label: "vm1".into(),
                kname: Some("md127".into()),
                local: Some("/dev/labvg/vm1".into()),
                local_pending: false,
                bitmap: None,
            }),
        }
    }

    fn engine<'a>(root: &Path, config: &'a Config, runner: &'a RecordingRunner) -> Engine<'a> {
        Engine {
            sys: Sys::new(root),
            ..Engine::new(config, runner)
        }
    }

    #[test]
    fn health_follows_the_legs_and_keeps_the_record() {
        let runner = RecordingRunner::new();
        let a = attachment();
        let newer = |c: &Config| c.state_dir.join("newer/vm1.json").exists();

        let (d, c) = host("in_sync", Some("faulty,write_mostly"), "idle");
        let e = engine(d.path(), &c, &runner);
        let h = e.health(&a).expect("health");
        assert_eq!(
            h,
            Health::LocalNewer {
                reason: "iSCSI leg faulty".into(),
                heal: true
            }
        );
        assert!(e.record_health(&a, &h).expect("record"));
        assert!(newer(&c), "recorded");

        let (d, c2) = host("in_sync", None, "idle");
        let e = engine(d.path(), &c2, &runner);
        assert!(matches!(
            e.health(&a),
            Some(Health::LocalNewer { heal: true, .. })
        ));

        let (d, c3) = host("in_sync", Some("write_mostly"), "recover");
        let e = engine(d.path(), &c3, &runner);
        assert!(matches!(
            e.health(&a),
            Some(Health::LocalNewer { heal: false, .. })
        ));

        let (d, c4) = host("spare", Some("in_sync,write_mostly"), "recover");
        let e = engine(d.path(), &c4, &runner);
        assert!(matches!(e.health(&a), Some(Health::Other(_))));

        // Back in sync: the record goes.
        let (d, mut c5) = host("in_sync", Some("in_sync,write_mostly"), "idle");
        c5.state_dir = c.state_dir.clone();
        let e = engine(d.path(), &c5, &runner);
        assert_eq!(e.health(&a), Some(Health::InSync));
        assert!(e.record_health(&a, &Health::InSync).expect("clear"));
        assert!(!newer(&c5), "cleared");
    }
}
