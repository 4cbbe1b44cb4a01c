//! What is attached, as the kernel shows it now: each recorded attachment
//! with its session, legs and the VMs holding it, plus sessions and arrays
//! the tool does not know.
//!
//! `status --json` prints [`Report`]; its schema is `doc/status.schema.json`
//! ([`SCHEMA_VERSION`] bumps on any incompatible change).
use serde::Serialize;

use crate::iscsi;
use crate::md;
use crate::state::{Durable, Phase, StateError, Store};
use crate::sysfs::Sys;

/// The state of one leg.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LegStatus {
    /// `iscsi` or `local`.
    pub role: &'static str,
    /// Device path or kernel name.
    pub device: String,
    /// `in_sync`, `recovering`, `faulty`, `missing`, `spare`, `absent`.
    pub state: String,
    /// Whether md flags it write-mostly.
    pub write_mostly: bool,
    /// Recovery progress in percent, while it recovers.
    pub recovery_percent: Option<f64>,
    /// Recovery speed in KiB/s, while it recovers.
    pub speed_kib: Option<u64>,
    /// Seconds until the recovery ends at the current speed.
    pub eta_seconds: Option<u64>,
    /// An iSCSI leg's paths whose SCSI disk runs on a logged-in session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paths_up: Option<u32>,
    /// An iSCSI leg's paths (1 without multipath).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paths_total: Option<u32>,
    /// A multipath leg's paths.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathStatus>,
}

/// One path of a multipath leg.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PathStatus {
    /// Portal of its session.
    pub portal: String,
    /// Its SCSI disk (`sdX`).
    pub device: String,
    /// Whether it carries I/O (disk running, session logged in).
    pub up: bool,
}

/// A VM (hypervisor backend) holding an attachment.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VmStatus {
    /// `xen`, `libvirt` or `other`.
    pub hypervisor: &'static str,
    /// Xen domain id, or libvirt domain name.
    pub domain: String,
    /// The VM's name, when known (libvirt: the domain; Xen: from xenstore).
    pub name: Option<String>,
    /// Backend path (Xen) or guest disk (libvirt).
    pub backend: String,
    /// Whether the VM writes to it.
    pub writable: bool,
}

/// One attachment.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AttachmentStatus {
    /// Canonical spec.
    pub spec: String,
    /// `attached`, or `attaching` for one that never finished.
    pub phase: &'static str,
    /// The device handed out.
    pub device: Option<String>,
    /// Its size in bytes, read from the kernel now (after `grow`, the new
    /// one); None when the device is gone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// md kernel name, for mirrors.
    pub array: Option<String>,
    /// iSCSI session id and state.
    pub session: Option<SessionStatus>,
    /// Legs.
    pub legs: Vec<LegStatus>,
    /// The VMs holding it (none when attached by hand).
    pub vms: Vec<VmStatus>,
}

/// An iSCSI session.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SessionStatus {
    /// Session id.
    pub sid: u32,
    /// Target name.
    pub target: String,
    /// `LOGGED_IN`, `FAILED`, ...
    pub state: String,
    /// Portal.
    pub portal: Option<String>,
}

/// Version of the `status --json` schema.
pub const SCHEMA_VERSION: u32 = 2;

/// Everything.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Recorded attachments.
    pub attachments: Vec<AttachmentStatus>,
    /// Sessions no attachment uses.
    pub unknown_sessions: Vec<SessionStatus>,
    /// md arrays no attachment made (kernel names).
    pub unknown_arrays: Vec<String>,
    /// iSCSI SCSI disks no attachment uses (`H:C:T:L sdX`), e.g. left by a
    /// killed call; `detach SPEC` removes them.
    pub unknown_disks: Vec<String>,
    /// Labels whose local leg holds writes the iSCSI disk lacks.
    pub local_newer: Vec<NewerStatus>,
    /// Labels, not attached now, whose local volume lacks data its LUN
    /// holds (a copy from the iSCSI disk that did not end).
    pub local_behind: Vec<NewerStatus>,
    /// Labels whose last attachment was never cleanly detached and that are
    /// not attached now.
    pub unclean: Vec<String>,
    /// The disks' store and whether it answers (absent: not asked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreStatus>,
    /// The disks' records in it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskStatus>,
}

/// The disks' store.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StoreStatus {
    /// `local (DIR)` or `etcd (ENDPOINTS)`.
    pub store: String,
    /// This host's id in the records.
    pub host: String,
    /// Why it did not answer; None when it did.
    pub error: Option<String>,
}

/// One disk's record.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DiskStatus {
    /// The LUN's SCSI wwid.
    pub wwid: String,
    /// The target it was last attached from.
    pub target: String,
    /// Its LUN.
    pub lun: u32,
    /// The disk's generation.
    pub generation: u64,
    /// The host attaching it now.
    pub writer: Option<String>,
    /// The host whose local copy holds writes the iSCSI disk lacks.
    pub local_newer: Option<String>,
    /// A migration's destination, the writer once the writer releases it.
    pub handover: Option<String>,
    /// A split brain: the host whose local copy diverged from the iSCSI
    /// disk (`iscsimple resolve` there).
    pub split: Option<String>,
    /// Each host's local copy.
    pub copies: Vec<CopyStatus>,
}

/// A host's local copy of a disk.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CopyStatus {
    /// The host.
    pub host: String,
    /// The disk's generation it holds.
    pub generation: u64,
    /// Detached in sync.
    pub clean: bool,
}

impl From<&crate::cluster::DiskRecord> for DiskStatus {
    fn from(r: &crate::cluster::DiskRecord) -> DiskStatus {
        DiskStatus {
            wwid: r.wwid.clone(),
            target: r.target.clone(),
            lun: r.lun,
            generation: r.generation,
            writer: r.writer.as_ref().map(|w| w.host.clone()),
            local_newer: r.local_newer.as_ref().map(|w| w.host.clone()),
            handover: r.handover.as_ref().map(|h| h.to.clone()),
            split: r.split.as_ref().map(|x| x.local.clone()),
            copies: r
                .copies
                .iter()
                .map(|(h, c)| CopyStatus {
                    host: h.clone(),
                    generation: c.generation,
                    clean: c.clean,
                })
                .collect(),
        }
    }
}

/// A local-is-newer record.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NewerStatus {
    /// The label.
    pub label: String,
    /// The local volume with the newer data.
    pub local: String,
    /// Why.
    pub reason: String,
    /// Seconds since the epoch when recorded.
    pub since: u64,
}

fn session_status(s: &iscsi::Session) -> SessionStatus {
    SessionStatus {
        sid: s.sid,
        target: s.target.clone(),
        state: s.state.clone(),
        portal: s.portal.clone(),
    }
}

fn leg(
    role: &'static str,
    device: String,
    kname: Option<&str>,
    array: Option<&md::Array>,
) -> LegStatus {
    let member = array.and_then(|a| kname.and_then(|k| a.members.iter().find(|m| m.kname == k)));
    let (state, write_mostly) = match member {
        None if array.is_some() => ("absent".to_string(), false),
        None => ("attached".to_string(), false),
        Some(m) => {
            // md owns the reading of member flags; a member is found only
            // in a present array
            let word = array.map_or("attached", |a| m.condition().word(a));
            (word.to_string(), m.write_mostly())
        }
    };
    let recovering = state == "recovering";
    let speed_kib = array.filter(|_| recovering).and_then(|a| a.speed_kib);
    // sectors left / (KiB/s * 2 sectors per KiB)
    let eta_seconds = array
        .filter(|_| recovering)
        .and_then(|a| a.progress)
        .zip(speed_kib.filter(|s| *s > 0))
        .map(|((d, t), s)| t.saturating_sub(d) / (s * 2));
    #[allow(clippy::cast_precision_loss)] // a percentage
    let recovery_percent = array
        .filter(|_| recovering)
        .and_then(|a| a.progress)
        .map(|(d, t)| {
            if t == 0 {
                0.0
            } else {
                (d as f64 * 1000.0 / t as f64).round() / 10.0
            }
        });
    LegStatus {
        role,
        device,
        state,
        write_mostly,
        recovery_percent,
        speed_kib,
        eta_seconds,
        ..LegStatus::default()
    }
}

/// An iSCSI leg's state with its paths.
fn iscsi_leg(sys: &Sys, i: &crate::state::IscsiLeg, array: Option<&md::Array>) -> LegStatus {
    let mut l = leg(
        "iscsi",
        i.device().display().to_string(),
        Some(&i.kname),
        array,
    );
    l.paths = i
        .paths
        .iter()
        .map(|p| PathStatus {
            portal: p.portal.clone(),
            device: p.kname.clone(),
            up: iscsi::path_up(sys, &p.hctl),
        })
        .collect();
    let (up, total) = if l.paths.is_empty() {
        (u32::from(iscsi::path_up(sys, &i.hctl)), 1)
    } else {
        let up = l.paths.iter().filter(|p| p.up).count();
        (
            u32::try_from(up).unwrap_or(u32::MAX),
            u32::try_from(l.paths.len()).unwrap_or(u32::MAX),
        )
    };
    l.paths_up = Some(up);
    l.paths_total = Some(total);
    l
}

fn vm_status(name: &str, h: &crate::state::Holder) -> VmStatus {
    let hypervisor = if name.starts_with("xen-") {
        "xen"
    } else if name.starts_with("libvirt-") {
        "libvirt"
    } else {
        "other"
    };
    VmStatus {
        hypervisor,
        domain: h.domain.clone(),
        name: (hypervisor == "libvirt").then(|| h.domain.clone()),
        backend: h.backend.clone(),
        writable: h.writable,
    }
}

/// Build the report.
pub fn report(sys: &Sys, store: &Store, durable: &Durable) -> Result<Report, StateError> {
    let sessions = iscsi::sessions(sys);
    let mut used_disks = Vec::new();
    let mut labels = Vec::new();
    let arrays = md::arrays(sys);
    let mut used_targets = Vec::new();
    let mut used_arrays = Vec::new();
    let mut attachments = Vec::new();
    let holders = store.holders()?;
    for (_, a) in store.all()? {
        let array = a
            .mirror
            .as_ref()
            .and_then(|m| m.kname.as_deref())
            .and_then(|k| arrays.iter().find(|x| x.kname == k));
        if let Some(x) = array {
            used_arrays.push(x.kname.clone());
        }
        let mut legs = Vec::new();
        if let Some(m) = &a.mirror {
            labels.push(m.label.clone());
        }
        let session = a.iscsi.as_ref().and_then(|i| {
            used_targets.push(i.target.clone());
            used_disks.extend(i.path_list().into_iter().map(|(_, hctl, _)| hctl));
            legs.push(iscsi_leg(sys, i, array));
            sessions
                .iter()
                .find(|s| s.target == i.target)
                .map(session_status)
        });
        if let Some(m) = &a.mirror {
            match &m.local {
                Some(p) if m.local_pending => legs.push(LegStatus {
                    role: "local",
                    device: p.display().to_string(),
                    state: "pending".into(),
                    write_mostly: false,
                    recovery_percent: None,
                    speed_kib: None,
                    eta_seconds: None,
                    ..LegStatus::default()
                }),
                Some(p) => {
                    let k = crate::volume::resolve(sys, p).ok().map(|v| v.kname);
                    legs.push(leg("local", p.display().to_string(), k.as_deref(), array));
                }
                None => legs.push(LegStatus {
                    role: "local",
                    device: "MISSING".into(),
                    state: "missing".into(),
                    write_mostly: false,
                    recovery_percent: None,
                    speed_kib: None,
                    eta_seconds: None,
                    ..LegStatus::default()
                }),
            }
        }
        attachments.push(AttachmentStatus {
            spec: a.spec.clone(),
            phase: match a.phase {
                Phase::Attached => "attached",
                Phase::Attaching => "attaching",
            },
            device: a.device.as_ref().map(|d| d.display().to_string()),
            size_bytes: match (array, &a.mirror, &a.iscsi) {
                (Some(x), _, _) => Some(x.size),
                (None, None, Some(i)) => sys.block_size(&i.kname),
                _ => None,
            },
            array: array.map(|x| x.kname.clone()),
            session,
            legs,
            vms: holders
                .iter()
                .filter(|(_, h)| h.spec == a.spec)
                .map(|(n, h)| vm_status(n, h))
                .collect(),
        });
    }
    let unknown_sessions = sessions
        .iter()
        .filter(|s| !used_targets.contains(&s.target))
        .map(session_status)
        .collect();
    let unknown_arrays = arrays
        .into_iter()
        .map(|a| a.kname)
        .filter(|k| !used_arrays.contains(k))
        .collect();
    let unknown_disks = sessions
        .iter()
        .flat_map(|s| iscsi::host_devices(sys, s.host))
        .filter(|d| !used_disks.contains(&d.hctl))
        .map(|d| format!("{} {}", d.hctl, d.block.as_deref().unwrap_or("-")))
        .collect();
    let copies = durable.all_copies()?;
    let mark = |c: &crate::state::LocalCopy, m: &crate::state::Newer| NewerStatus {
        label: c.label.clone(),
        local: c.local.display().to_string(),
        reason: m.reason.clone(),
        since: m.since,
    };
    // Per local volume, then earlier versions' label-keyed records (honoured
    // until the volume's next attach folds them in).
    let mut local_newer: Vec<NewerStatus> = copies
        .iter()
        .filter_map(|(_, c)| Some(mark(c, c.newer.as_ref()?)))
        .collect();
    local_newer.extend(durable.all_newer()?.into_iter().map(|(_, n)| NewerStatus {
        label: n.label,
        local: n.local.display().to_string(),
        reason: n.reason,
        since: n.since,
    }));
    let local_behind = copies
        .iter()
        .filter(|(_, c)| !labels.contains(&c.label))
        .filter_map(|(_, c)| Some(mark(c, c.behind.as_ref()?)))
        .collect();
    let unclean = durable
        .all_open()?
        .into_iter()
        .map(|(_, o)| o.label)
        .filter(|l| !labels.contains(l))
        .collect();
    Ok(Report {
        schema_version: SCHEMA_VERSION,
        attachments,
        unknown_sessions,
        unknown_arrays,
        unknown_disks,
        local_newer,
        local_behind,
        unclean,
        store: None,
        disks: Vec::new(),
    })
}

impl Report {
    /// Human-readable text, one block per attachment.
    pub fn text(&self) -> String {
        let mut s = String::new();
        if self.attachments.is_empty() {
            s.push_str("no attachments\n");
        } else {
            s.push_str(&self.table());
        }
        for u in &self.unknown_sessions {
            s.push_str(&format!(
                "unknown session {} to {} ({})\n",
                u.sid, u.target, u.state
            ));
        }
        for u in &self.unknown_arrays {
            s.push_str(&format!("unknown array {u}\n"));
        }
        for u in &self.unknown_disks {
            s.push_str(&format!("unknown SCSI disk {u}\n"));
        }
        for n in &self.local_newer {
            s.push_str(&format!(
                "local leg newer: {} on {} ({}): its next attach resyncs local -> iSCSI\n",
                n.label, n.local, n.reason
            ));
        }
        for n in &self.local_behind {
            s.push_str(&format!(
                "local leg behind: {} on {} ({}): a MISSING target is refused until an attach with its iSCSI leg ends in sync\n",
                n.label, n.local, n.reason
            ));
        }
        for l in &self.unclean {
            s.push_str(&format!(
                "not detached cleanly: {l} (host crash or killed call)\n"
            ));
        }
        if let Some(st) = &self.store {
            match &st.error {
                None => s.push_str(&format!(
                    "disks' store: {} answers (host {})\n",
                    st.store, st.host
                )),
                Some(e) => s.push_str(&format!(
                    "disks' store: {} DOES NOT ANSWER: {e}\n",
                    st.store
                )),
            }
        }
        for d in &self.disks {
            let copies: Vec<String> = d
                .copies
                .iter()
                .map(|c| {
                    format!(
                        "{}@{}{}",
                        c.host,
                        c.generation,
                        if c.clean { " clean" } else { "" }
                    )
                })
                .collect();
            s.push_str(&format!(
                "disk {} (lun{}@{}): generation {}, writer {}{}, copies: {}\n",
                d.wwid,
                d.lun,
                d.target,
                d.generation,
                d.writer.as_deref().unwrap_or("none"),
                d.local_newer
                    .as_ref()
                    .map(|h| format!(", local copy newer on {h}"))
                    .unwrap_or_default()
                    + &d.handover
                        .as_ref()
                        .map(|h| format!(", handed over to {h} at its release"))
                        .unwrap_or_default()
                    + &d.split
                        .as_ref()
                        .map(|h| format!(
                            ", SPLIT BRAIN: {h}'s local copy diverged (iscsimple resolve there)"
                        ))
                        .unwrap_or_default(),
                if copies.is_empty() {
                    "none".to_string()
                } else {
                    copies.join(", ")
                }
            ));
        }
        s
    }

    /// One row per leg (one for an attachment without legs); the
    /// attachment's columns only on its first row.
    pub fn table(&self) -> String {
        let head = [
            "SPEC", "DEVICE", "VM", "SESSION", "LEG", "PATH", "STATE", "RESYNC", "SPEED", "LEFT",
        ];
        let mut rows: Vec<Vec<String>> = vec![head.iter().map(ToString::to_string).collect()];
        for a in &self.attachments {
            let mut device = a.device.clone().unwrap_or_else(|| "-".into());
            if let Some(k) = &a.array {
                device.push_str(&format!(" ({k})"));
            }
            if a.phase != "attached" {
                device.push_str(&format!(" ({})", a.phase));
            }
            let vms: Vec<String> = a
                .vms
                .iter()
                .map(|v| {
                    let n = v
                        .name
                        .clone()
                        .unwrap_or_else(|| format!("{}:{}", v.hypervisor, v.domain));
                    if v.writable {
                        n
                    } else {
                        format!("{n}(ro)")
                    }
                })
                .collect();
            let session = a.session.as_ref().map_or_else(
                || "-".to_string(),
                |se| {
                    format!(
                        "{} {} {}",
                        se.sid,
                        se.state,
                        se.portal.as_deref().unwrap_or("")
                    )
                },
            );
            let first = [
                a.spec.clone(),
                device,
                if vms.is_empty() {
                    "-".into()
                } else {
                    vms.join(",")
                },
                session.trim_end().to_string(),
            ];
            let legs: Vec<[String; 6]> = a
                .legs
                .iter()
                .map(|l| {
                    let mut state = l.state.clone();
                    if l.write_mostly {
                        state.push_str(",write-mostly");
                    }
                    if let (Some(up), Some(total @ 2..)) = (l.paths_up, l.paths_total) {
                        state.push_str(&format!(",paths {up}/{total}"));
                    }
                    [
                        l.role.to_string(),
                        l.device.clone(),
                        state,
                        l.recovery_percent
                            .map_or_else(|| "-".into(), |p| format!("{p:.1}%")),
                        l.speed_kib.map_or_else(|| "-".into(), speed),
                        l.eta_seconds.map_or_else(|| "-".into(), duration),
                    ]
                })
                .collect();
            if legs.is_empty() {
                let mut r = first.to_vec();
                r.extend(std::iter::repeat("-".to_string()).take(6));
                rows.push(r);
            }
            for (i, l) in legs.into_iter().enumerate() {
                let mut r = if i == 0 {
                    first.to_vec()
                } else {
                    vec![String::new(); 4]
                };
                r.extend(l);
                rows.push(r);
            }
        }
        let widths: Vec<usize> = (0..head.len())
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        let mut s = String::new();
        for r in rows {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(v, w)| format!("{v:<w$}"))
                .collect();
            s.push_str(line.join("  ").trim_end());
            s.push('\n');
        }
        s
    }

    /// A progress bar per leg that is resyncing, for `status --watch`.
    pub fn progress(&self, width: usize) -> String {
        let mut s = String::new();
        for a in &self.attachments {
            for l in a.legs.iter().filter(|l| l.state == "recovering") {
                let p = l.recovery_percent.unwrap_or(0.0);
                s.push_str(&format!(
                    "{} {} {} {} {p:5.1}%  {}  {} left\n",
                    a.spec,
                    l.role,
                    l.device,
                    bar(p, width),
                    l.speed_kib.map_or_else(|| "-".into(), speed),
                    l.eta_seconds.map_or_else(|| "-".into(), duration),
                ));
            }
        }
        s
    }
}

/// `[#####-----]`, `width` cells inside the brackets.
pub fn bar(percent: f64, width: usize) -> String {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let done = ((percent.clamp(0.0, 100.0) / 100.0) * width as f64).round() as usize;
    format!(
        "[{}{}]",
        "#".repeat(done),
        "-".repeat(width - done.min(width))
    )
}

fn speed(kib: u64) -> String {
    if kib >= 1024 {
        #[allow(clippy::cast_precision_loss)] // a display value
        let m = kib as f64 / 1024.0;
        format!("{m:.1} MiB/s")
    } else {
        format!("{kib} KiB/s")
    }
}

fn duration(secs: u64) -> String {
    if secs >= 3600 {
        format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
    } else {
        format!("{}:{:02}", secs / 60, secs % 60)
    }
}
