//! What a failed attach, detach or heal says: the step, the cause, and
//! whether the caller's input was at fault (exit 2) or the system (exit 1).
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::ConfigError;
use crate::iscsi::IscsiError;
use crate::labels::LabelTableError;
use crate::lock::LockError;
use crate::md::MdError;
use crate::runner::RunError;
use crate::state::StateError;
use crate::volume::VolumeError;

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
    /// Finding what the caller named among the attachments.
    Find,
    /// Checking that nothing uses what is to be detached.
    InUse,
    /// The disk's record (generation, writer).
    Record,
    /// Growing the array.
    Grow,
    /// The multipath map over the LUN's paths.
    Multipath,
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
            Step::Find => "attachment",
            Step::InUse => "in use",
            Step::Record => "disk record",
            Step::Grow => "mdadm --grow",
            Step::Multipath => "multipath map",
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
    /// dm-multipath.
    #[error(transparent)]
    Multipath(#[from] crate::multipath::MultipathError),
    /// Locks.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// State files.
    #[error(transparent)]
    State(#[from] StateError),
    /// The disks' records ([`crate::cluster`]).
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
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
    /// `resolve` has nothing to settle here.
    #[error("disk {wwid}: {why}")]
    NoSplit {
        /// The disk.
        wwid: String,
        /// Why not.
        why: String,
    },
    /// A persistent reservation command failed.
    #[error(transparent)]
    Reservation(#[from] crate::iscsi::reservation::ReservationError),
    /// Another host writes the disk, or holds data it lacks.
    #[error(transparent)]
    Conflict(#[from] crate::cluster::Conflict),
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
    /// The local volume lacks data its LUN holds (a copy from the iSCSI
    /// disk did not end), but this attach would make it the disk's copy.
    #[error(transparent)]
    LocalIsBehind(Box<BehindConflict>),
    /// The LUN (or the local volume) is smaller than the disk the VM
    /// already used.
    #[error(transparent)]
    WouldShrink(Box<ShrinkConflict>),
    /// The LUN is already attached (or being attached) under another spec.
    #[error("LUN {lun} of {target} is already attached as {by}")]
    LunInUse {
        /// Target.
        target: String,
        /// LUN.
        lun: u32,
        /// The other attachment's spec.
        by: String,
    },
    /// The call's time budget ([`super::Budget`]) limited the wait of this
    /// step, which then timed out: the budget ran out, or (a login, whose
    /// attempts are set to end within their wait) left it too little.
    #[error("{}: {cause}", budget_text(*.budget, *.left))]
    Budget {
        /// The whole budget.
        budget: Duration,
        /// What it left for the wait, when the wait ended before it.
        left: Option<Duration>,
        /// The wait that it ended.
        cause: Box<Cause>,
    },
    /// heal: the LUN now answers with another disk than the mirror's iSCSI
    /// leg was (another SCSI identity, or one that cannot be compared).
    #[error("LUN {lun} of {target} is now disk {found}, but the mirror's iSCSI leg was disk {recorded}: not copying the local leg onto another disk; `heal --accept-new-disk` copies it in full onto this one")]
    OtherDisk {
        /// Target.
        target: String,
        /// LUN.
        lun: u32,
        /// The wwid recorded at attach ("unknown" when none was).
        recorded: String,
        /// The wwid the LUN shows now ("unknown" when it has none).
        found: String,
    },
    /// heal: the disk at the LUN is smaller than the array it would join.
    #[error("LUN {lun} of {target} (disk {found}) has {size} bytes, smaller than the array's {need}: md cannot take it back")]
    DiskTooSmall {
        /// Target.
        target: String,
        /// LUN.
        lun: u32,
        /// Its wwid ("unknown" when it has none).
        found: String,
        /// Its size in bytes.
        size: u64,
        /// The array's size in bytes.
        need: u64,
    },
    /// heal: the local leg is not a whole copy (it is being resynced from
    /// the iSCSI disk, or is not in the array): it cannot be the source.
    #[error("the local leg of {label} is not in sync ({state}): it cannot be copied onto the iSCSI disk")]
    LocalNotInSync {
        /// The label.
        label: String,
        /// What the mirror says.
        state: String,
    },
    /// A spec names an attachment only if it is that attachment's spec:
    /// the label (or LUN) it shares is held by another spec.
    #[error("{asked} is not attached: its {what} is attached as {attached}; name that spec (or the device) to act on it")]
    OtherSpec {
        /// The spec the caller gave.
        asked: String,
        /// What the two share ("label vm1", "LUN 1 of iqn...").
        what: String,
        /// The attached spec.
        attached: String,
    },
    /// `grow` of something not attached.
    #[error("{what} is not attached")]
    NotAttached {
        /// What the caller named.
        what: String,
    },
    /// `grow` of a mirror whose iSCSI leg is MISSING.
    #[error("the iSCSI leg is MISSING: grow follows the LUN's size; grow the local volume and attach again")]
    NoLunToGrow,
    /// `grow` of a mirror that is degraded or resyncing.
    #[error("{label} is not in sync ({state}): grow it once both legs are in sync")]
    NotInSync {
        /// The label.
        label: String,
        /// What the legs say.
        state: String,
    },
    /// The LUN is smaller than the disk the VM has.
    #[error("LUN {lun} of {target} now has {size} bytes, fewer than the {was} bytes the VM has: a shrink is refused (grow the LUN back)")]
    LunShrank {
        /// Target.
        target: String,
        /// LUN.
        lun: u32,
        /// Its size now.
        size: u64,
        /// The device's size.
        was: u64,
    },
    /// The local leg cannot hold the grown LUN.
    #[error("local volume {} has {size} bytes, fewer than the LUN's new {need}: grow it (lvextend), or run grow with --extend-local", local.display())]
    LocalTooSmallToGrow {
        /// The local volume.
        local: PathBuf,
        /// Its size.
        size: u64,
        /// The LUN's new size.
        need: u64,
    },
    /// The leg's disk is not where attach left it.
    #[error("LUN {lun} of {target} is no longer the disk {kname} at {hctl} the leg was: heal the mirror first")]
    LegMoved {
        /// Target.
        target: String,
        /// LUN.
        lun: u32,
        /// The address recorded.
        hctl: String,
        /// The kernel name recorded.
        kname: String,
    },
    /// A multipath LUN's paths do not all show its new size.
    #[error("LUN {lun} of {target}: its paths disagree on its size ({found}); grow again once the target serves the new size on every portal")]
    PathSizes {
        /// Target.
        target: String,
        /// LUN.
        lun: u32,
        /// `portal=bytes` per path.
        found: String,
    },
    /// The device is open: by processes (`/proc/*/fd`), exclusively (a
    /// mount), or by md or dm (sysfs `holders/`).
    #[error("{} is in use by {}; refusing to detach it (`iscsimple detach --force` detaches it anyway)", device.display(), by.join(", "))]
    Busy {
        /// The device handed out.
        device: PathBuf,
        /// Who: `pid 42 (qemu-system-x86)`, `md127`, `an exclusive opener (a mount?)`.
        by: Vec<String>,
    },
    /// A running domain holds the attachment (a live holder record).
    #[error("{spec} is held by {}; refusing to detach it (`iscsimple detach --force` detaches it anyway)", by.join(", "))]
    Held {
        /// The attachment's spec.
        spec: String,
        /// The holders: `domain vm1 (libvirt disk vda)`.
        by: Vec<String>,
    },
}

/// An attach that would lose a local leg's newer data.
#[derive(Debug, thiserror::Error)]
#[error("the local leg {} of {label} holds writes the iSCSI disk lacks ({}recorded in {record}: {reason}); {what}; {fix}", local.display(), lun_text(lun))]
pub struct NewerConflict {
    /// The label it was last attached under.
    pub label: String,
    /// The local volume with the newer data.
    pub local: PathBuf,
    /// The LUN it mirrors, when known.
    pub lun: Option<String>,
    /// The record file(s).
    pub record: String,
    /// Why it was recorded, and since when.
    pub reason: String,
    /// What this attach would do instead.
    pub what: String,
    /// What the person can do.
    pub fix: String,
}

/// An attach that would give a VM, or copy onto its LUN, a local copy
/// that lacks data.
#[derive(Debug, thiserror::Error)]
#[error("the local leg {} of {label} lacks data the iSCSI disk holds ({}recorded in {record}: {reason}); {what}; attach it with its iSCSI leg to finish the copy, or delete that file to use it as it is", local.display(), lun_text(lun))]
pub struct BehindConflict {
    /// The label it was last attached under.
    pub label: String,
    /// The local volume.
    pub local: PathBuf,
    /// The LUN it mirrors, when known.
    pub lun: Option<String>,
    /// The record file.
    pub record: String,
    /// Why it was recorded, and since when.
    pub reason: String,
    /// What this attach would do with it.
    pub what: String,
}

fn lun_text(lun: &Option<String>) -> String {
    lun.as_ref().map(|l| format!("{l}; ")).unwrap_or_default()
}

/// An attach that would give a VM a smaller disk than it already used.
#[derive(Debug, thiserror::Error)]
#[error("{device} has {size} bytes, fewer than the {used} bytes of the disk the VM already used (recorded in {record}); {fix}")]
pub struct ShrinkConflict {
    /// The LUN or local volume.
    pub device: String,
    /// Its size in bytes.
    pub size: u64,
    /// The disk's size as the VM saw it.
    pub used: u64,
    /// The record file(s).
    pub record: String,
    /// What the person can do.
    pub fix: String,
}

fn budget_text(budget: Duration, left: Option<Duration>) -> String {
    match left {
        None => format!("the {}s budget ran out", budget.as_secs()),
        Some(l) => format!(
            "only {}s of the {}s budget were left for it",
            l.as_secs(),
            budget.as_secs()
        ),
    }
}

fn held_by(by: &Option<String>) -> String {
    by.as_ref()
        .map(|b| format!(", attached as {b}"))
        .unwrap_or_default()
}

/// A wwid as an error shows it: "unknown" for a disk that has none.
pub(crate) fn wwid_text(w: Option<&str>) -> String {
    w.unwrap_or("unknown").to_string()
}

impl Cause {
    /// The leg's LUN now answers with disk `found`, not the one recorded.
    pub(crate) fn other_disk(leg: &crate::state::IscsiLeg, found: Option<&str>) -> Cause {
        Cause::OtherDisk {
            target: leg.target.clone(),
            lun: leg.lun,
            recorded: wwid_text(leg.wwid.as_deref()),
            found: wwid_text(found),
        }
    }

    /// True when the caller's input (spec, table, config, credentials) is at
    /// fault rather than the system: exit code 2.
    pub fn is_input(&self) -> bool {
        matches!(
            self,
            Cause::Config(_)
                | Cause::Labels(_)
                | Cause::UnknownLabel { .. }
                | Cause::BothMissing
                | Cause::Conflict(_)
                | Cause::NoSplit { .. }
                | Cause::LabelInUse { .. }
                | Cause::LunInUse { .. }
                | Cause::OtherSpec { .. }
                | Cause::LocalIsNewer(_)
                | Cause::LocalIsBehind(_)
                | Cause::OtherDisk { .. }
                | Cause::DiskTooSmall { .. }
                | Cause::LocalNotInSync { .. }
                | Cause::Busy { .. }
                | Cause::Held { .. }
                | Cause::WouldShrink(_)
                | Cause::NotAttached { .. }
                | Cause::NoLunToGrow
                | Cause::NotInSync { .. }
                | Cause::LunShrank { .. }
                | Cause::LocalTooSmallToGrow { .. }
                | Cause::LegMoved { .. }
                | Cause::PathSizes { .. }
                | Cause::Volume(_)
                | Cause::Iscsi(IscsiError::AuthFailed { .. })
                | Cause::Iscsi(IscsiError::NotDisk { .. })
                | Cause::Iscsi(IscsiError::NoLun { .. })
                | Cause::Iscsi(IscsiError::TargetUnknown { .. })
                | Cause::Iscsi(IscsiError::PathsDiffer { .. })
        )
    }

    /// True when the cause is a wait that ran out (a lock, a device, a
    /// session, a login, a command killed at its timeout).
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            Cause::Budget { .. }
                | Cause::Lock(LockError::Busy { .. })
                | Cause::Run(RunError::Timeout { .. })
                | Cause::Md(MdError::Run(RunError::Timeout { .. }))
                | Cause::Iscsi(
                    IscsiError::Run(RunError::Timeout { .. })
                        | IscsiError::LoginTimeout { .. }
                        | IscsiError::NoSession { .. }
                        | IscsiError::SessionDown { .. }
                        | IscsiError::NoBlockDevice { .. }
                )
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
    pub(crate) fn new(op: &'static str, spec: &str, step: Step, cause: Cause) -> DiskError {
        DiskError {
            op,
            spec: spec.to_string(),
            step,
            cause: Box::new(cause),
            rollback: vec![],
        }
    }

    /// The first of `errors` with the others as its incomplete rollback.
    pub(crate) fn from_list(
        op: &'static str,
        spec: &str,
        mut errors: Vec<(Step, Cause)>,
    ) -> Option<DiskError> {
        if errors.is_empty() {
            return None;
        }
        let (step, cause) = errors.remove(0);
        Some(DiskError {
            op,
            spec: spec.to_string(),
            step,
            cause: Box::new(cause),
            rollback: errors
                .into_iter()
                .map(|(s, c)| format!("{s}: {c}"))
                .collect(),
        })
    }
}

fn rollback_text(r: &[String]) -> String {
    if r.is_empty() {
        String::new()
    } else {
        format!(" (rollback incomplete: {})", r.join("; "))
    }
}
