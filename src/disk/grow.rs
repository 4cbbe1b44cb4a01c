//! Online grow: after the LUN grew on the target, read its size again,
//! make the local leg hold it (or refuse), grow the array, and say what the
//! hypervisor must do. Every step acts on things first verified to be the
//! attachment's own (the LUN's disk by address and wwid, the local volume
//! by its identity, the array by its members).
use std::path::PathBuf;

use super::{Cause, DiskError, Engine, Health, Step};
use crate::iscsi::{self, IscsiError};
use crate::md;
use crate::state::Phase;
use crate::volume;

/// How to grow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GrowOptions {
    /// Grow a local LVM volume smaller than the LUN (`lvextend`) instead
    /// of refusing.
    pub extend_local: bool,
}

/// What `grow` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grown {
    /// The device the hypervisor has (`/dev/md/LABEL`, `/dev/sdX`).
    pub device: PathBuf,
    /// Its size before, in bytes.
    pub old: u64,
    /// Its size now, in bytes (`old` when the LUN did not grow).
    pub new: u64,
    /// The array's bitmap file was dropped (md cannot resize one, and
    /// mdadm cannot give a non-persistent array a new one): the array
    /// runs without a write-intent bitmap until its next attach.
    pub bitmap_dropped: bool,
    /// The local volume was extended, to this many bytes.
    pub extended_local: Option<u64>,
    /// A mirror (md copies the new area onto its iSCSI leg), not a plain LUN.
    pub mirrored: bool,
}

impl Grown {
    /// Whether the device grew.
    pub fn grew(&self) -> bool {
        self.new > self.old
    }
}

impl Engine<'_> {
    /// Grow attachment `what` to its LUN's new size.
    pub fn grow(&self, what: &str, opts: GrowOptions) -> Result<Grown, DiskError> {
        self.grow_inner(what, opts).map_err(|e| self.blame_err(e))
    }

    fn grow_inner(&self, what: &str, opts: GrowOptions) -> Result<Grown, DiskError> {
        let not_attached = || {
            DiskError::new(
                "grow",
                what,
                Step::Find,
                Cause::NotAttached {
                    what: what.to_string(),
                },
            )
        };
        let Some((key, mut a, _key_lock)) = self.locked("grow", what)? else {
            return Err(not_attached());
        };
        if a.phase != Phase::Attached {
            return Err(not_attached());
        }
        let spec = a.spec.clone();
        let fail = |step, cause: Cause| DiskError::new("grow", &spec, step, cause);
        let Some(leg) = a.iscsi.clone() else {
            return Err(fail(Step::Size, Cause::NoLunToGrow));
        };
        // A mirror is grown only with both legs in sync (or its local leg
        // MISSING and no resync running): md resyncs the new area, and a
        // leg being copied or failed would leave it half-done.
        let array = match &a.mirror {
            Some(m) => {
                let (array, expect) = self
                    .our_array(&a)
                    .map_err(|e| fail(Step::Build, e.into()))?;
                let state = if m.local.is_some() {
                    match self.health_of(&a, &array, &expect) {
                        Some(Health::InSync) => None,
                        Some(Health::LocalNewer { reason, .. }) => Some(reason),
                        Some(Health::Other(s)) => Some(s),
                        None => Some("no array".to_string()),
                    }
                } else {
                    (array.sync_action != "idle").then(|| array.sync_action.clone())
                };
                if let Some(state) = state {
                    return Err(fail(
                        Step::Size,
                        Cause::NotInSync {
                            label: m.label.clone(),
                            state,
                        },
                    ));
                }
                Some(array)
            }
            None => None,
        };
        let lun_size = if let Some(map) = &leg.map {
            self.grow_paths(&leg, &map.name)
                .map_err(|(s, c)| fail(s, c))?
        } else {
            // The LUN's disk: the one attach recorded, at the same address and
            // with the same wwid.
            let session = iscsi::leg_session(&self.sys, &leg.target, &leg.portal);
            let session = match session {
                Some(s) if s.logged_in() => s,
                other => {
                    let e = IscsiError::SessionDown {
                        target: leg.target.clone(),
                        state: other.map_or_else(|| "absent".to_string(), |s| s.state),
                    };
                    return Err(fail(Step::Login, e.into()));
                }
            };
            let dev = iscsi::lun_device(&self.sys, &session, leg.lun)
                .filter(|d| d.hctl == leg.hctl && d.block.as_deref() == Some(leg.kname.as_str()))
                .ok_or_else(|| {
                    fail(
                        Step::Device,
                        Cause::LegMoved {
                            target: leg.target.clone(),
                            lun: leg.lun,
                            hctl: leg.hctl.clone(),
                            kname: leg.kname.clone(),
                        },
                    )
                })?;
            let wwid = iscsi::wwid(&self.sys, &leg.kname);
            if leg.wwid.is_none() || wwid != leg.wwid {
                return Err(fail(Step::Device, Cause::other_disk(&leg, wwid.as_deref())));
            }
            iscsi::rescan_device(&self.sys, &dev).map_err(|e| fail(Step::Scan, e.into()))?;
            self.sys.block_size(&leg.kname).unwrap_or(0)
        };
        let old = array.as_ref().map_or(leg.size, |arr| arr.size);
        let device = a
            .device
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/dev/{}", leg.kname)));
        let mut grown = Grown {
            device,
            old,
            new: old,
            bitmap_dropped: false,
            extended_local: None,
            mirrored: array.is_some(),
        };
        // md sizes a mirror in whole KiB; a LUN that grew by less is the same.
        let want = match &array {
            Some(_) => lun_size / 1024 * 1024,
            None => lun_size,
        };
        if want < old {
            return Err(fail(
                Step::Size,
                Cause::LunShrank {
                    target: leg.target.clone(),
                    lun: leg.lun,
                    size: lun_size,
                    was: old,
                },
            ));
        }
        if want == old {
            tracing::info!(spec = %a.spec, size = old, "the LUN did not grow: nothing to do");
            return Ok(grown);
        }
        let (Some(m), Some(array)) = (a.mirror.clone(), array) else {
            // A plain LUN: the hypervisor has the disk itself.
            if let Some(i) = a.iscsi.as_mut() {
                i.size = lun_size;
            }
            self.store
                .save(&key, &a)
                .map_err(|e| fail(Step::State, e.into()))?;
            grown.new = lun_size;
            tracing::info!(spec = %a.spec, old, new = lun_size, "LUN grown");
            return Ok(grown);
        };
        if let Some(path) = &m.local {
            let mut v = volume::resolve_recorded(&self.sys, path, m.local_id.as_ref())
                .map_err(|e| fail(Step::LocalVolume, e.into()))?;
            if v.size < want {
                if !opts.extend_local {
                    return Err(fail(
                        Step::Size,
                        Cause::LocalTooSmallToGrow {
                            local: v.path.clone(),
                            size: v.size,
                            need: want,
                        },
                    ));
                }
                volume::extend(self.runner, &v, want)
                    .map_err(|e| fail(Step::LocalVolume, e.into()))?;
                v = volume::resolve(&self.sys, path)
                    .map_err(|e| fail(Step::LocalVolume, e.into()))?;
                volume::check_size(&v, want).map_err(|e| fail(Step::Size, e.into()))?;
                grown.extended_local = Some(v.size);
                tracing::info!(spec = %a.spec, local = %v.path.display(), size = v.size, "local volume extended");
            }
        }
        // The disk the VM may use from now on, recorded before md grows: a
        // crash after the grow must never let a later attach build it
        // smaller than what the VM wrote to.
        self.record_size(&a, want)
            .map_err(|e| fail(Step::State, e.into()))?;
        let mdadm = self.mdadm();
        if md::bitmap_in_file(&self.sys, &array.kname) {
            mdadm
                .remove_bitmap(&m.label)
                .map_err(|e| fail(Step::Grow, e.into()))?;
            grown.bitmap_dropped = true;
            if let Some(file) = &m.bitmap {
                let _ = std::fs::remove_file(file);
            }
            if let Some(mm) = a.mirror.as_mut() {
                mm.bitmap = None;
            }
            self.store
                .save(&key, &a)
                .map_err(|e| fail(Step::State, e.into()))?;
            tracing::warn!(spec = %a.spec, "write-intent bitmap dropped: md cannot resize a bitmap file; the next attach makes a new one");
        }
        let grew = md::fit_members(&self.sys, &array.kname)
            .map_err(Cause::from)
            .and_then(|()| mdadm.grow_max(&m.label).map_err(Cause::from));
        if let Err(cause) = grew {
            // The array kept its size: so does the record (an extended
            // volume and a dropped bitmap are harmless and stay).
            let mut err = fail(Step::Grow, cause);
            match self.record_size(&a, old) {
                Ok(()) => err
                    .rollback
                    .push("the local copy's recorded size put back".into()),
                Err(e) => err
                    .rollback
                    .push(format!("the local copy's recorded size NOT put back: {e}")),
            }
            return Err(err);
        }
        let new = self.sys.block_size(&array.kname).unwrap_or(0);
        if let Some(mm) = a.mirror.as_mut() {
            mm.size = Some(new);
        }
        if let Some(i) = a.iscsi.as_mut() {
            i.size = lun_size;
        }
        self.store
            .save(&key, &a)
            .map_err(|e| fail(Step::State, e.into()))?;
        grown.new = new;
        tracing::info!(spec = %a.spec, old, new, "array grown; md resyncs the new area");
        Ok(grown)
    }
}
