//! What a mirror's legs say, keeping the local-is-newer record in line
//! with it, healing a failed iSCSI leg, and letting a deferred local leg
//! join. Every mdadm call here acts on an array first verified to be the
//! attachment's own.
use std::path::PathBuf;

use super::array::Expected;
use super::copies::Seen;
use super::{Cause, DiskError, Engine, HealOptions, Healed, Health, Step};
use crate::iscsi::{self, IscsiError};
use crate::md::{Array, MemberCondition};
use crate::state::{Attachment, Phase, StateError};
use crate::uevent::Watcher;
use crate::volume;

/// The condition of the member of `arr` that is `leg`, if it has one.
fn leg_condition(
    arr: &Array,
    leg: Option<&super::array::LegId>,
) -> Option<(MemberCondition, String)> {
    let leg = leg?;
    arr.members
        .iter()
        .find(|m| match (&m.devnum, &leg.devnum) {
            (Some(a), Some(b)) => a == b,
            _ => m.kname == leg.kname,
        })
        .map(|m| (m.condition(), m.kname.clone()))
}

impl Engine<'_> {
    /// What the legs of an attachment's mirror say now; None when it is
    /// not a two-legged mirror whose array exists and is its own.
    pub fn health(&self, a: &Attachment) -> Option<Health> {
        let m = a.mirror.as_ref()?;
        m.local.as_ref()?;
        let (array, expect) = match self.our_array(a) {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(spec = %a.spec, error = %e, "no array to look at");
                return None;
            }
        };
        self.health_of(a, &array, &expect)
    }

    pub(super) fn health_of(
        &self,
        a: &Attachment,
        array: &Array,
        expect: &Expected,
    ) -> Option<Health> {
        let m = a.mirror.as_ref()?;
        if m.local_pending {
            return Some(Health::Other("local leg joins later".to_string()));
        }
        let local = leg_condition(array, expect.local.as_ref()).map(|(c, _)| c);
        let local_ok = local == Some(MemberCondition::InSync);
        if a.iscsi.is_none() {
            return Some(if local_ok {
                Health::LocalNewer {
                    reason: "iSCSI leg MISSING".to_string(),
                    heal: false,
                }
            } else {
                Health::Other("local leg not in sync".to_string())
            });
        }
        let iscsi = leg_condition(array, expect.iscsi.as_ref()).map(|(c, _)| c);
        let iscsi_ok = iscsi == Some(MemberCondition::InSync);
        Some(match (local_ok, iscsi_ok) {
            (true, true) if array.degraded == 0 && array.sync_action == "idle" => Health::InSync,
            (true, false) => {
                let faulty = iscsi.map_or(true, |c| c == MemberCondition::Faulty);
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

    /// Keep the local copy's record in line with `health`: newer (fsynced)
    /// as soon as the local leg holds writes the iSCSI leg lacks, not
    /// newer once both are in sync. True when the record changed.
    pub(super) fn record_health(
        &self,
        a: &Attachment,
        health: &Health,
    ) -> Result<bool, StateError> {
        match health {
            Health::LocalNewer { reason, .. } => {
                let changed = self.record_legs(a, Seen::Newer(reason))?;
                self.record_disk_newer(a, true);
                if changed {
                    tracing::warn!(spec = %a.spec, reason, "the local leg now holds writes the iSCSI disk lacks: recorded");
                }
                Ok(changed)
            }
            Health::InSync => {
                let changed = self.record_legs(a, Seen::InSync)?;
                self.record_disk_newer(a, false);
                if changed {
                    tracing::info!(spec = %a.spec, "legs back in sync: the local copy's record cleared");
                }
                Ok(changed)
            }
            // Without an iSCSI leg there is nothing the local one lacks.
            Health::Other(_) if a.iscsi.is_none() => Ok(false),
            Health::Other(state) => self.record_legs(a, Seen::Behind(state)),
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

    /// Bring a mirror's failed iSCSI leg back once its session is logged in
    /// again, onto the disk the leg was: the LUN's disk is read again
    /// (rescanned) and must carry the recorded SCSI wwid, unless
    /// `accept_new_disk`, and be at least as large as the array.
    ///
    /// With a write-intent bitmap, the same disk at the same size, and not
    /// `full`: `--remove`, then `--re-add --write-mostly`, and md copies
    /// only the regions written during the outage. Otherwise: fail and
    /// remove the old member, then `--add --write-mostly`, a full resync
    /// local → iSCSI. Never `--re-add` without a bitmap: mdadm 4.2 accepts
    /// it, marks the leg in sync and skips the resync, leaving stale blocks
    /// on the iSCSI disk. No check seen from here tells a target that kept
    /// its data from one that came back from an older copy under the same
    /// identity (an asynchronous replica, a restored snapshot): `full`
    /// resyncs the whole disk, even a leg md sees in sync.
    pub fn heal(&self, what: &str, opts: HealOptions) -> Result<Healed, DiskError> {
        self.heal_inner(what, opts).map_err(|e| self.blame_err(e))
    }

    fn heal_inner(&self, what: &str, opts: HealOptions) -> Result<Healed, DiskError> {
        let Some((key, mut a, _key_lock)) = self.locked("heal", what)? else {
            return Ok(Healed::Nothing);
        };
        let spec = a.spec.clone();
        let fail = |step, cause: Cause| DiskError::new("heal", &spec, step, cause);
        self.may_heal(&a)
            .map_err(|(step, cause)| fail(step, cause))?;
        let (Some(m), Some(leg)) = (a.mirror.clone(), a.iscsi.clone()) else {
            return Ok(Healed::Nothing);
        };
        if m.kname.is_none() {
            return Ok(Healed::Nothing);
        }
        let (array, expect) = self
            .our_array(&a)
            .map_err(|e| fail(Step::Build, e.into()))?;
        let health = self.health_of(&a, &array, &expect);
        if let Some(h) = &health {
            self.record_health(&a, h)
                .map_err(|e| fail(Step::State, e.into()))?;
        }
        match (&health, opts.full) {
            (Some(Health::LocalNewer { heal: true, .. }), _) => {}
            // Copy it all again: the leg may be in sync by md's account only.
            (Some(Health::InSync | Health::LocalNewer { .. }), true) => {}
            (Some(Health::Other(state)), true) => {
                return Err(fail(
                    Step::AddLocal,
                    Cause::LocalNotInSync {
                        label: m.label.clone(),
                        state: state.clone(),
                    },
                ))
            }
            _ => return Ok(Healed::Nothing),
        }
        let member = leg_condition(&array, expect.iscsi.as_ref());
        let (new_dev, new_kname, new_hctl) = if let Some(map) = &leg.map {
            self.map_back(&leg, &map.name)
                .map_err(|e| fail(Step::Multipath, e))?
        } else {
            let target_lock = self
                .target_lock(&leg.target)
                .map_err(|e| fail(Step::Lock, e))?;
            let session = iscsi::leg_session(&self.sys, &leg.target, &leg.portal);
            let session = match session {
                Some(s) if s.logged_in() => s,
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
            // What answers at the LUN now: the kernel keeps a disk's identity
            // and size from when it scanned it, and a target back from an
            // outage may serve another disk at the same address.
            match iscsi::lun_device(&self.sys, &session, leg.lun) {
                Some(d) => iscsi::rescan_device(&self.sys, &d),
                None => iscsi::scan_lun(&self.sys, &session, leg.lun),
            }
            .map_err(|e| fail(Step::Scan, e.into()))?;
            let limit = self.limit(self.config.timeouts.device);
            let dev = Watcher::new()
                .wait(limit.wait, || {
                    let d = iscsi::lun_device(&self.sys, &session, leg.lun)?;
                    let b = d.block.clone()?;
                    self.sys.exists(format!("/dev/{b}")).then_some(d)
                })
                .ok_or_else(|| {
                    let e = IscsiError::NoBlockDevice {
                        target: leg.target.clone(),
                        lun: leg.lun,
                        hctl: leg.hctl.clone(),
                        waited: limit.wait,
                    };
                    fail(Step::Device, self.over(limit, e.into()))
                })?;
            // The disk keeps the session from being logged out from here on.
            drop(target_lock);
            let new_kname = dev.block.clone().expect("checked above");
            (
                PathBuf::from(format!("/dev/{new_kname}")),
                new_kname,
                dev.hctl,
            )
        };
        let wwid = iscsi::wwid(&self.sys, &new_kname);
        let size = self.sys.block_size(&new_kname).unwrap_or(0);
        let same_disk = leg.wwid.is_some() && wwid == leg.wwid;
        if !same_disk && !opts.accept_new_disk {
            return Err(fail(Step::Device, Cause::other_disk(&leg, wwid.as_deref())));
        }
        let need = if array.size > 0 { array.size } else { leg.size };
        if size < need {
            return Err(fail(
                Step::Size,
                Cause::DiskTooSmall {
                    target: leg.target.clone(),
                    lun: leg.lun,
                    found: super::errors::wwid_text(wwid.as_deref()),
                    size,
                    need,
                },
            ));
        }
        if !same_disk {
            tracing::warn!(spec = %a.spec, recorded = ?leg.wwid, found = ?wwid, "another disk at the LUN, accepted: the local leg is copied onto it in full");
        }
        if !matches!(health, Some(Health::LocalNewer { .. })) {
            // About to take an in-sync leg out: the local one is newer
            // from the first write on, and must be recorded before it.
            self.record_health(
                &a,
                &Health::LocalNewer {
                    reason: "iSCSI leg resynced in full (heal --full)".to_string(),
                    heal: false,
                },
            )
            .map_err(|e| fail(Step::State, e.into()))?;
        }
        let kname = array.kname.clone();
        let bitmap_on = m.bitmap.is_some() && crate::md::bitmap_in_file(&self.sys, &kname);
        let mdadm = self.mdadm();
        if let Some((_, member_kname)) = &member {
            let old = PathBuf::from(format!("/dev/{member_kname}"));
            if self.sys.exists(&old) {
                let _ = mdadm.fail(&m.label, &old); // already faulty: mdadm says so
            }
        }
        mdadm
            .remove_failed(&m.label)
            .map_err(|e| fail(Step::Stop, e.into()))?;
        let mut how = Healed::Full;
        let same_size = size == leg.size;
        if bitmap_on && same_disk && same_size && !opts.full {
            match mdadm.re_add_write_mostly(&m.label, &new_dev) {
                Ok(()) => how = Healed::Incremental,
                Err(e) => {
                    tracing::warn!(spec = %a.spec, error = %e, "--re-add refused; adding the leg anew (full resync)")
                }
            }
        } else {
            tracing::info!(spec = %a.spec, bitmap_on, same_disk, same_size, full = opts.full, "full resync");
        }
        if how == Healed::Full {
            mdadm
                .add(&m.label, &new_dev, true)
                .map_err(|e| fail(Step::AddLocal, e.into()))?;
        }
        if let Some(i) = a.iscsi.as_mut() {
            i.devnum = self.sys.devnum(&new_kname);
            i.kname = new_kname.clone();
            i.hctl = new_hctl;
            i.size = size;
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
        self.join_inner(what).map_err(|e| self.blame_err(e))
    }

    fn join_inner(&self, what: &str) -> Result<bool, DiskError> {
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
        self.our_array(&a)
            .map_err(|e| fail(Step::Build, e.into()))?;
        let v = volume::resolve_recorded(&self.sys, local, m.local_id.as_ref())
            .map_err(|e| fail(Step::LocalVolume, e.into()))?;
        volume::check_unused(&self.sys, &v).map_err(|e| fail(Step::LocalVolume, e.into()))?;
        if let Some(i) = &a.iscsi {
            volume::check_size(&v, i.size).map_err(|e| fail(Step::Size, e.into()))?;
        }
        self.mdadm()
            .add(&m.label, &v.path, false)
            .map_err(|e| fail(Step::AddLocal, e.into()))?;
        if let Some(mm) = a.mirror.as_mut() {
            mm.local_pending = false;
            mm.local_devnum = Some(v.devnum.clone());
            mm.local_id = Some(v.id.clone());
        }
        self.store
            .save(&key, &a)
            .map_err(|e| fail(Step::State, e.into()))?;
        tracing::info!(spec = %a.spec, local = %v.path.display(), "local leg joined; resync from iSCSI started");
        Ok(true)
    }
}
