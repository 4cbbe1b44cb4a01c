//! The steps of an attach ([`steps`]): one list, made once from the
//! checked inputs, that attach takes ([`Engine::take_steps`]) and the dry
//! run prints ([`Engine::plan`]), so that the plan cannot drift from what
//! attach does.
use std::path::{Path, PathBuf};

use super::spec_lun;
use crate::disk::copies::Asked;
use crate::disk::{AttachOptions, Cause, DiskError, Engine, Step};
use crate::iscsi;
use crate::spec::{Spec, TargetName};
use crate::volume;

impl Engine<'_> {
    /// The ordered plan of `attach` (for `--dry-run`): one line per command,
    /// sysfs write, check or wait, from the step list attach walks
    /// ([`steps`]). Changes nothing, and needs no local volume: where the
    /// table names one that resolves, its records choose the source copy
    /// (and refuse as attach would).
    pub fn plan(&self, spec: &Spec, opts: AttachOptions) -> Result<Vec<String>, DiskError> {
        let shown = spec.to_string();
        let fail = |(step, cause)| DiskError::new("attach", &shown, step, cause);
        let local = self.local_leg(spec).map_err(fail)?;
        if spec.target.is_none() && local.is_none() && spec.label.is_some() {
            return Err(fail((Step::LocalVolume, Cause::BothMissing)));
        }
        let volume = local
            .as_ref()
            .and_then(|p| volume::resolve(&self.sys, p).ok());
        let trust_local = match &volume {
            Some(v) => {
                self.judge_copies(&Asked {
                    spec,
                    local: Some(v),
                    lun: spec_lun(spec),
                    lun_size: None,
                    defer_local: opts.defer_local,
                })
                .map_err(fail)?
                .trust_local
            }
            None => false,
        };
        Ok(steps(spec, local.as_deref(), trust_local, opts)
            .iter()
            .flat_map(|a| self.lines(a))
            .collect())
    }

    /// What `--dry-run` prints for step `a`.
    pub(super) fn lines(&self, a: &Action) -> Vec<String> {
        match a {
            Action::CheckLocal(l) => vec![format!(
                "check {} is an unused block device (exclusive open, sysfs holders)",
                l.display()
            )],
            Action::IscsiLeg { target, lun } => self.leg_lines(target, *lun),
            Action::Build { label, leg, bitmap } => {
                // Pinned: the LUN's size, or the one recorded for the local volume.
                let (size, leg) = match leg {
                    Source::Iscsi => ("LUN_KIB", "--write-mostly ISCSI_DEV".to_string()),
                    Source::Local(l) => ("RECORDED_KIB", l.display().to_string()),
                };
                let mut p = vec![format!(
                    "mdadm --build /dev/md/{label} --level=1 --raid-devices=2 --size={size} missing {leg}{}",
                    if *bitmap && self.config.md.bitmap {
                        format!(
                            " (--bitmap={} --bitmap-chunk=KIB instead of --size where mdadm and the file system support bitmap files)",
                            self.durable.bitmap(label).display()
                        )
                    } else {
                        String::new()
                    }
                )];
                let md = &self.config.md;
                for (attr, v) in [
                    ("sync_speed_min", md.sync_speed_min),
                    ("sync_speed_max", md.sync_speed_max),
                ] {
                    if let Some(v) = v {
                        p.push(format!("echo {v} > /sys/block/mdN/md/{attr}"));
                    }
                }
                p
            }
            Action::Add { label, leg } => vec![match leg {
                Source::Iscsi => format!("mdadm /dev/md/{label} --add --write-mostly ISCSI_DEV"),
                // Decided from the disk's record once the LUN's wwid is known.
                Source::Local(l) if self.config.cluster.only_user => format!(
                    "mdadm /dev/md/{label} --add {}, unless the disk's record says this copy holds the disk's generation and was detached in sync: then the array above is built from both legs with --assume-clean (zero-copy) and nothing is added",
                    l.display()
                ),
                Source::Local(l) => format!("mdadm /dev/md/{label} --add {}", l.display()),
            }],
            Action::LocalLater { local, deferred } => vec![if *deferred {
                format!(
                    "leave {} out of the array: it joins with `iscsimple join`",
                    local.display()
                )
            } else {
                format!(
                    "leave {} out of the array until the caller's other disks are attached",
                    local.display()
                )
            }],
            Action::HandOut { label: Some(l) } => vec![format!("hand out /dev/md/{l}")],
            Action::HandOut { label: None } => {
                let mut p = Vec::new();
                if self.udev_running() {
                    p.push(format!(
                        "udevadm settle --timeout={}",
                        self.limit(crate::disk::SETTLE_WAIT).wait.as_secs()
                    ));
                }
                p.push("hand out the LUN's block device".to_string());
                p
            }
        }
    }

    /// What `--dry-run` prints for the iSCSI leg ([`Engine::iscsi_leg`]):
    /// the session it would share, wait for or log in, and the LUN's disk.
    fn leg_lines(&self, target: &TargetName, lun: u32) -> Vec<String> {
        let t = target.as_str();
        let mut p = Vec::new();
        let session = match iscsi::session_of(&self.sys, t) {
            Some(s) if s.logged_in() => {
                p.push(format!("reuse session {} to {t}", s.sid));
                Some(s)
            }
            Some(s) => {
                p.push(format!(
                    "wait for session {} to {t} to recover from {} ({}s)",
                    s.sid,
                    s.state,
                    self.config.timeouts.login.as_secs()
                ));
                Some(s)
            }
            None => {
                let known = iscsi::node_portals(&self.sys, t);
                let portal = match self.config.portals_for(target) {
                    Some(list) => {
                        let list: Vec<String> = list.iter().map(ToString::to_string).collect();
                        for pt in list.iter().filter(|pt| !known.contains(pt)) {
                            p.push(format!("iscsiadm -m node -T {t} -p {pt} -o new"));
                        }
                        if list.len() > 1 {
                            p.push(format!(
                                "with multipathd running: a session per portal ({}), and the LUN's multipath map as the leg",
                                list.join(", ")
                            ));
                        }
                        list[0].clone()
                    }
                    None => match known.into_iter().next() {
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
                    },
                };
                p.push(format!(
                    "set node.session.scan = manual, node.startup = manual and the session timeouts in the node record of {t} at {portal} (under open-iscsi's lock)"
                ));
                if self.config.chap_for(target).ok().flatten().is_some() {
                    p.push(format!("set node.session.auth.authmethod = CHAP and the usernames in the node record of {t} at {portal}"));
                    p.push(format!("write CHAP secrets into the node record of {t} at {portal} (never on a command line)"));
                }
                p.push(format!("iscsiadm -m node -T {t} -p {portal} --login"));
                None
            }
        };
        match session
            .as_ref()
            .and_then(|s| iscsi::lun_device(&self.sys, s, lun))
        {
            Some(d) => p.push(format!(
                "use the SCSI device {} of LUN {lun}, already there",
                d.hctl
            )),
            None => p.push(format!(
                "echo '- - {lun}' > /sys/class/scsi_host/{}/scan",
                session.map_or_else(|| "hostN".to_string(), |s| format!("host{}", s.host))
            )),
        }
        p.push(format!(
            "wait for the block device of LUN {lun} (uevents, {}s)",
            self.config.timeouts.device.as_secs()
        ));
        p
    }
}

/// One step of attach. Attach takes them and `--dry-run` prints them from
/// the one list [`steps`] makes of the checked inputs, so that the plan
/// cannot drift from what attach does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Action {
    /// The local leg must be an unused block device (a check: taken before
    /// anything changes).
    CheckLocal(PathBuf),
    /// The iSCSI leg ([`Engine::iscsi_leg`]): the target's session, shared
    /// or logged in, then the LUN's disk.
    IscsiLeg {
        /// The target.
        target: TargetName,
        /// The LUN.
        lun: u32,
    },
    /// `mdadm --build` of the mirror from `leg` and `missing` (with a
    /// write-intent bitmap when `bitmap` and the platform allow), then md's
    /// resync speed limits.
    Build {
        /// The label.
        label: String,
        /// The leg the array is built from: the source copy.
        leg: Source,
        /// Ask for a bitmap file (see [`Engine::bitmap_for`]).
        bitmap: bool,
    },
    /// `mdadm --add` of the other leg (the iSCSI one write-mostly).
    Add {
        /// The label.
        label: String,
        /// The leg added: overwritten by the resync.
        leg: Source,
    },
    /// The local leg joins later: through `join` (`deferred`, an incoming
    /// migration) or once the caller's other disks are attached.
    LocalLater {
        /// The local leg.
        local: PathBuf,
        /// [`AttachOptions::defer_local`] rather than `hold_local`.
        deferred: bool,
    },
    /// Hand out the mirror (with a label), else the LUN's disk.
    HandOut {
        /// The label.
        label: Option<String>,
    },
}

/// A leg of a mirror in [`Action`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Source {
    /// The LUN's disk, once the iSCSI leg is taken.
    Iscsi,
    /// The local volume.
    Local(PathBuf),
}

/// The steps of attaching `spec` with local leg `local` (None: MISSING),
/// in order; `trust_local`: the records make the local copy the source.
pub(super) fn steps(
    spec: &Spec,
    local: Option<&Path>,
    trust_local: bool,
    opts: AttachOptions,
) -> Vec<Action> {
    let mut s = Vec::new();
    if let Some(l) = local {
        s.push(Action::CheckLocal(l.to_path_buf()));
    }
    if let Some(t) = &spec.target {
        s.push(Action::IscsiLeg {
            target: t.clone(),
            lun: spec.lun,
        });
    }
    let label = spec.label.as_ref().map(|l| l.to_string());
    if let Some(label) = &label {
        let local = local.map(|l| Source::Local(l.to_path_buf()));
        let (leg, other) = match (&spec.target, local) {
            // The local copy is the source: the iSCSI leg joins it.
            (Some(_), Some(l)) if trust_local => (l, Some(Source::Iscsi)),
            (Some(_), l) => (Source::Iscsi, l),
            (None, Some(l)) => (l, None),
            (None, None) => unreachable!("both legs MISSING is refused first"),
        };
        // Only for an array built from the LUN that a local leg joins
        // (see Engine::bitmap_for).
        let bitmap = leg == Source::Iscsi && other.is_some() && !opts.defer_local;
        s.push(Action::Build {
            label: label.clone(),
            leg,
            bitmap,
        });
        match other {
            Some(Source::Local(l)) if opts.defer_local || opts.hold_local => {
                s.push(Action::LocalLater {
                    local: l,
                    deferred: opts.defer_local,
                })
            }
            Some(leg) => s.push(Action::Add {
                label: label.clone(),
                leg,
            }),
            None => {}
        }
    }
    s.push(Action::HandOut { label });
    s
}
