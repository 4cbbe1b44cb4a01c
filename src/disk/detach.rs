//! Detach: undo what attach recorded, through the same steps and checks as
//! a rollback ([`super::undo`]).
use super::{Cause, DiskError, Engine, Health, Step};
use crate::spec::Spec;
use crate::state::{Attachment, Phase};

/// How many more looks [`Engine::detach_with`] takes at a device in use,
/// 200 ms apart, before it refuses.
const BUSY_RETRIES: u32 = 5;

/// Asked under the attachment's locks, before anything changes: an error
/// refuses the detach (a live holder, see [`crate::holders`]).
pub type Guard<'g> = &'g mut dyn FnMut(&Attachment) -> Result<(), Cause>;

/// How to detach.
#[derive(Default)]
pub struct DetachOptions<'g> {
    /// Detach even while the device is open or a domain holds it.
    pub force: bool,
    /// Who else may still hold it; not asked with `force`.
    pub guard: Option<Guard<'g>>,
}

impl std::fmt::Debug for DetachOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DetachOptions")
            .field("force", &self.force)
            .field("guard", &self.guard.is_some())
            .finish()
    }
}

impl Engine<'_> {
    /// Detach what `what` names, unless the device is open. Not attached:
    /// Ok(false).
    pub fn detach(&self, what: &str) -> Result<bool, DiskError> {
        self.detach_with(what, DetachOptions::default())
    }

    /// Detach with options (see [`DetachOptions`]).
    pub fn detach_with(&self, what: &str, opts: DetachOptions<'_>) -> Result<bool, DiskError> {
        self.detach_inner(what, opts).map_err(|e| self.blame_err(e))
    }

    fn detach_inner(&self, what: &str, opts: DetachOptions<'_>) -> Result<bool, DiskError> {
        let Some((key, a, _key_lock)) = self.locked("detach", what)? else {
            self.forget_partial(what)?;
            return Ok(false);
        };
        // As attach does: one call at a time decides about a LUN.
        let _lun_lock = match super::lun_of(&a) {
            Some((t, lun)) => Some(
                self.lun_lock(&t, lun)
                    .map_err(|e| DiskError::new("detach", &a.spec, Step::Lock, e))?,
            ),
            None => None,
        };
        if !opts.force {
            let refuse = |c| DiskError::new("detach", &a.spec, Step::InUse, c);
            if let Some(guard) = opts.guard {
                guard(&a).map_err(refuse)?;
            }
            if let Some(c) = self.busy(&a) {
                return Err(refuse(c));
            }
        }
        tracing::debug!(spec = %a.spec, "detaching");
        let errors = self.detach_recorded(&key, &a);
        match DiskError::from_list("detach", &a.spec, errors) {
            None => {
                tracing::info!(spec = %a.spec, "detached");
                Ok(true)
            }
            Some(e) => Err(e),
        }
    }

    /// Who has the device handed out for `a` open (the array, or the SCSI
    /// disk of a plain LUN), if it is still the device recorded. md's
    /// `--stop` refuses an open array by itself; checking first names who.
    fn busy(&self, a: &Attachment) -> Option<Cause> {
        let (kname, devnum) = match (&a.mirror, &a.iscsi) {
            (Some(m), _) => (m.kname.clone()?, m.devnum.clone()),
            (None, Some(i)) => (i.kname.clone(), i.devnum.clone()),
            (None, None) => return None,
        };
        let now = self.sys.devnum(&kname)?;
        if devnum.is_some_and(|d| d != now) {
            return None;
        }
        // A short-lived opener (a probe) is gone a moment later: look a
        // few times, as `mdadm --stop` retries its exclusive open.
        let mut by = crate::volume::users(&self.sys, &kname);
        for _ in 0..BUSY_RETRIES {
            if by.is_empty() {
                break;
            }
            crate::clock::sleep(std::time::Duration::from_millis(200));
            by = crate::volume::users(&self.sys, &kname);
        }
        (!by.is_empty()).then(|| Cause::Busy {
            device: a
                .device
                .clone()
                .unwrap_or_else(|| format!("/dev/{kname}").into()),
            by,
        })
    }

    /// Nothing recorded for `what`: if it is a spec, remove what an attach
    /// killed while writing its first record may have left (the temporary
    /// file of that write).
    fn forget_partial(&self, what: &str) -> Result<(), DiskError> {
        let Ok(spec) = what.parse::<Spec>() else {
            return Ok(());
        };
        let key = super::key_of(&spec);
        let fail = |step, cause: Cause| DiskError::new("detach", what, step, cause);
        let _lock = self.key_lock(&key).map_err(|e| fail(Step::Lock, e))?;
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

    /// Undo a recorded attachment (detach, or the cleanup of an attach that
    /// died half-way), best effort: every failure is returned. The record
    /// is removed only when all succeeded.
    pub(super) fn detach_recorded(&self, key: &str, a: &Attachment) -> Vec<(Step, Cause)> {
        // Both legs in sync before the array stops: this host's copy is
        // the disk at its generation.
        let mut in_sync = false;
        if let Some(m) = &a.mirror {
            // Before the array goes: does the local leg hold writes the
            // iSCSI disk lacks? Then the record must outlive the array.
            match self.health(a) {
                Some(h) => {
                    in_sync = h == Health::InSync && a.iscsi.is_some() && m.local.is_some();
                    if let Err(e) = self.record_health(a, &h) {
                        return vec![(Step::State, e.into())];
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
            if let Err(e) = self.tidy_copy_of(a) {
                return vec![(Step::State, e.into())];
            }
        }
        self.run_undo(self.teardown(key, a, in_sync))
    }
}
