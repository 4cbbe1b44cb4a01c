//! Detach: undo what attach recorded, through the same steps and checks as
//! a rollback ([`super::undo`]).
use super::{Cause, DiskError, Engine, Health, Step};
use crate::spec::Spec;
use crate::state::{Attachment, Phase};

impl Engine<'_> {
    /// Detach what `what` names. Not attached: Ok(false).
    pub fn detach(&self, what: &str) -> Result<bool, DiskError> {
        let Some((key, a, _key_lock)) = self.locked("detach", what)? else {
            self.forget_partial(what)?;
            return Ok(false);
        };
        // As attach does: one call at a time decides about a LUN.
        let _lun_lock = match super::lun_of(&a) {
            Some((t, lun)) => Some(
                self.lun_lock(&t, lun)
                    .map_err(|e| DiskError::new("detach", &a.spec, Step::Lock, e.into()))?,
            ),
            None => None,
        };
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

    /// Nothing recorded for `what`: if it is a spec, remove what an attach
    /// killed while writing its first record may have left (the temporary
    /// file of that write).
    fn forget_partial(&self, what: &str) -> Result<(), DiskError> {
        let Ok(spec) = what.parse::<Spec>() else {
            return Ok(());
        };
        let key = super::key_of(&spec);
        let fail = |step, cause: Cause| DiskError::new("detach", what, step, cause);
        let _lock = self
            .key_lock(&key)
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

    /// Undo a recorded attachment (detach, or the cleanup of an attach that
    /// died half-way), best effort: every failure is returned. The record
    /// is removed only when all succeeded.
    pub(super) fn detach_recorded(&self, key: &str, a: &Attachment) -> Vec<(Step, Cause)> {
        if let Some(m) = &a.mirror {
            // Before the array goes: does the local leg hold writes the
            // iSCSI disk lacks? Then the record must outlive the array.
            match self.health(a) {
                Some(h) => {
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
            // A call killed while writing the local volume's record left
            // its temporary file; the record itself stays.
            if let Some(id) = &m.local_id {
                if let Err(e) = self.durable.tidy_copy(id) {
                    return vec![(Step::State, e.into())];
                }
            }
        }
        self.run_undo(self.teardown(key, a))
    }
}
