//! The disk's record ([`crate::cluster`]) at attach and detach: every
//! attach starts the disk's next generation, and a detach that saw both
//! legs in sync marks this host's copy clean at it, so that the next
//! attach here can build the mirror in sync instead of copying the disk.
use super::copies::{Known, Verdict};
use super::undo::Undo;
use super::{Cause, Engine, Step};
use crate::cluster::{self, LocalRecords, Records, Rule, Why};
use crate::spec::Spec;
use crate::state::{Attachment, LunId};
use crate::volume::Volume;

/// An attach's part of the disk's record.
#[derive(Debug)]
pub(super) struct Begun {
    /// How the mirror is built (None: no local leg joins now).
    pub rule: Option<Rule>,
}

impl Engine<'_> {
    /// The disks' records.
    pub(super) fn records(&self) -> LocalRecords {
        LocalRecords::new(
            &self.config.state_dir,
            &self.store.lock_dir(),
            self.limit(self.config.timeouts.lock).wait,
        )
    }

    /// This host's name in the records.
    fn host(&self) -> String {
        cluster::host_id(self.config.cluster.host_id.as_deref())
    }

    /// Start the next generation of the disk `lun` (its wwid known): this
    /// host writes it, with its copy on `local` (if a local leg). When the
    /// local leg joins now (`joins_now`) and the iSCSI copy is the source,
    /// say whether it can join in sync ([`Rule::ZeroCopy`]): the disk's
    /// record and the volume's own must both say it holds the disk's
    /// current generation, detached in sync, at the array's size.
    pub(super) fn begin_disk(
        &self,
        spec: &Spec,
        lun: &LunId,
        local: Option<&Volume>,
        joins_now: bool,
        verdict: &Verdict,
        undo: &mut Vec<Undo>,
    ) -> Result<Begun, (Step, Cause)> {
        let Some(wwid) = lun.wwid.as_deref() else {
            return Ok(Begun { rule: None });
        };
        let state = |e: cluster::ClusterError| (Step::State, Cause::from(e));
        let records = self.records();
        let me = self.host();
        let read = records.get(wwid).map_err(state)?;
        let (prior, rev) = match &read {
            Some((r, rev)) => (Some(r), *rev),
            None => (None, 0),
        };
        let rule = match local {
            Some(v) if joins_now && !verdict.trust_local => Some(
                match cluster::decide(prior, &me, &v.id, self.config.cluster.only_user) {
                    Rule::ZeroCopy { generation } if !copy_holds(verdict, lun, generation) => {
                        Rule::FullCopy(Why::NotClean)
                    }
                    r => r,
                },
            ),
            _ => None,
        };
        let next = cluster::begin(
            prior,
            (&lun.target, lun.lun, wwid),
            &me,
            local.map(|v| v.id.as_str()),
        );
        records.swap(wwid, rev, Some(&next)).map_err(state)?;
        undo.push(Undo::RestoreDisk {
            wwid: wwid.to_string(),
            read: rev + 1,
            prior: prior.cloned(),
        });
        if let Some(r) = &rule {
            tracing::info!(spec = %spec, wwid, generation = next.generation, rule = %r, "disk record");
            if self.config.cluster.only_user {
                self.notice(&spec.to_string(), r.to_string());
            }
        }
        Ok(Begun { rule })
    }

    /// At the end of a detach: the disk has no writer, and this host's
    /// copy is clean at the disk's generation if `in_sync` (both legs in
    /// sync before the array stopped). A record that cannot be written
    /// is left as the attach wrote it: not clean, the safe side.
    pub(super) fn end_disk(&self, a: &Attachment, in_sync: bool) {
        let Some(wwid) = a.iscsi.as_ref().and_then(|i| i.wwid.as_deref()) else {
            return;
        };
        let records = self.records();
        let me = self.host();
        let r = records.get(wwid).and_then(|got| {
            let Some((r, rev)) = got else {
                return Ok(None);
            };
            let next = cluster::end(&r, &me, in_sync);
            records.swap(wwid, rev, Some(&next))?;
            Ok(next
                .copies
                .get(&me)
                .filter(|c| c.clean)
                .map(|c| c.generation))
        });
        let clean_at = match r {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(spec = %a.spec, wwid, error = %e, "disk record not updated at detach: the next attach copies the disk");
                return;
            }
        };
        // The volume's own record says the same, so that any later use of
        // the volume (which clears it) voids the clean copy.
        let Some(id) = a.mirror.as_ref().and_then(|m| m.local_id.as_ref()) else {
            return;
        };
        let done = self.durable.copy(id).and_then(|c| match c {
            Some(mut c) if c.newer.is_none() && c.behind.is_none() => {
                c.clean_at = clean_at;
                self.durable.set_copy(&c)
            }
            _ => Ok(()),
        });
        if let Err(e) = done {
            tracing::warn!(spec = %a.spec, error = %e, "local copy record not updated at detach");
        }
    }
}

/// The volume's own record agrees: a copy of this LUN (same wwid) with no
/// newer or partial data, clean at `generation`, at the array's size.
fn copy_holds(verdict: &Verdict, lun: &LunId, generation: u64) -> bool {
    verdict.own.as_ref().is_some_and(|k: &Known| {
        let c = &k.copy;
        c.newer.is_none()
            && c.behind.is_none()
            && c.clean_at == Some(generation)
            && c.lun
                .as_ref()
                .is_some_and(|l| l.same(lun) && l.wwid.is_some())
            && c.size.is_some()
            && c.size == verdict.size
    })
}
