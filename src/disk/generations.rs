//! The disk's record ([`crate::cluster`]) at attach and detach: every
//! attach starts the disk's next generation, and a detach that saw both
//! legs in sync marks this host's copy clean at it, so that the next
//! attach here can build the mirror in sync instead of copying the disk.
use super::copies::{Known, Verdict};
use super::undo::Undo;
use super::{Cause, Engine, Step};
use crate::cluster::{self, ClusterError, Records, Rule, Why};
use crate::config::OnUnreachable;
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
    pub fn records(&self) -> Box<dyn Records> {
        cluster::open(
            self.config,
            &self.store.lock_dir(),
            self.limit(self.config.timeouts.lock).wait,
        )
    }

    /// This host's name in the records.
    pub fn host(&self) -> String {
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
        let state = |e: ClusterError| (Step::Record, Cause::from(e));
        let records = self.records();
        let me = self.host();
        let read = match self
            .flush_pending_of(&*records, wwid)
            .and_then(|()| records.get(wwid))
        {
            Ok(r) => r,
            Err(e @ ClusterError::Unreachable { .. })
                if self.config.cluster.on_unreachable == OnUnreachable::Local =>
            {
                tracing::warn!(spec = %spec, wwid, error = %e, "disk record not read: attaching on this host's knowledge alone (on_unreachable = \"local\")");
                self.notice(
                    &spec.to_string(),
                    format!("{e}: attaching on this host's knowledge alone (on_unreachable = \"local\"): a full copy from the iSCSI disk"),
                );
                let rule = (local.is_some() && joins_now && !verdict.trust_local)
                    .then_some(Rule::FullCopy(Why::Unreachable));
                return Ok(Begun { rule });
            }
            Err(e) => return Err(state(e)),
        };
        let (prior, rev) = match &read {
            Some((r, rev)) => (Some(r), *rev),
            None => (None, 0),
        };
        // A lease that cannot be read is taken as alive: the safe side.
        cluster::check(prior, &me, |w| records.alive(w).unwrap_or(true))
            .map_err(|c| (Step::Record, Cause::Conflict(c)))?;
        if let Some(w) = prior
            .and_then(|r| r.writer.as_ref())
            .filter(|w| w.host != me)
        {
            tracing::warn!(spec = %spec, wwid, writer = w.host, since = w.since, "the disk's writer is gone (its lease expired): taking the disk over");
            self.notice(
                &spec.to_string(),
                format!(
                    "host {} was writing disk {wwid} but its lease expired: taking the disk over",
                    w.host
                ),
            );
        }
        let lease = records.lease().map_err(state)?;
        let trusted = records.shared() || self.config.cluster.only_user;
        let rule = match local {
            Some(v) if joins_now && !verdict.trust_local => {
                Some(match cluster::decide(prior, &me, &v.id, trusted) {
                    Rule::ZeroCopy { generation } if !copy_holds(verdict, lun, generation) => {
                        Rule::FullCopy(Why::NotClean)
                    }
                    r => r,
                })
            }
            _ => None,
        };
        let next = cluster::begin(
            prior,
            (&lun.target, lun.lun, wwid),
            (&me, lease),
            local.map(|v| v.id.as_str()),
        );
        let written = records.swap(wwid, rev, Some(&next)).map_err(state)?;
        undo.push(Undo::RestoreDisk {
            wwid: wwid.to_string(),
            read: written,
            prior: prior.cloned(),
        });
        if let Some(r) = &rule {
            tracing::info!(spec = %spec, wwid, generation = next.generation, rule = %r, "disk record");
            if trusted {
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
        let clean_at = match cluster::end_in(&*records, wwid, &me, in_sync) {
            Ok(g) => g,
            Err(e @ ClusterError::Unreachable { .. }) => {
                tracing::warn!(spec = %a.spec, wwid, error = %e, "disk record not updated at detach: written when the store answers again");
                let p = cluster::PendingEnd {
                    wwid: wwid.to_string(),
                    in_sync,
                    since: crate::state::now(),
                };
                if let Err(e) = cluster::pending(&self.config.state_dir).put(wwid, &p) {
                    tracing::warn!(spec = %a.spec, wwid, error = %e, "pending disk record not kept");
                }
                return;
            }
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

impl Engine<'_> {
    /// Write this host's pending end of `wwid`, if any, before reading
    /// its record.
    fn flush_pending_of(&self, records: &dyn Records, wwid: &str) -> Result<(), ClusterError> {
        let table = cluster::pending(&self.config.state_dir);
        if let Some(p) = table.get(wwid)? {
            cluster::end_in(records, wwid, &self.host(), p.in_sync)?;
            table.remove(wwid)?;
        }
        Ok(())
    }

    /// Before anything changes: another host writes the LUN, or holds
    /// data it lacks, by the records of a shared store (found by target
    /// and LUN: the wwid is known only once logged in, where
    /// [`Engine::begin_disk`] checks again, by wwid, in its swap). A store
    /// that does not answer refuses the attach here, unless
    /// `on_unreachable = "local"`.
    pub(super) fn disk_conflicts(&self, target: &str, lun: u32) -> Result<(), (Step, Cause)> {
        let records = self.records();
        if !records.shared() {
            return Ok(());
        }
        let all = match records.all() {
            Ok(a) => a,
            Err(ClusterError::Unreachable { .. })
                if self.config.cluster.on_unreachable == OnUnreachable::Local =>
            {
                return Ok(())
            }
            Err(e) => return Err((Step::Record, e.into())),
        };
        let me = self.host();
        for r in all.iter().filter(|r| r.target == target && r.lun == lun) {
            cluster::check(Some(r), &me, |w| records.alive(w).unwrap_or(true))
                .map_err(|c| (Step::Record, Cause::Conflict(c)))?;
        }
        Ok(())
    }

    /// Keep the disk's record in line with this host's copy: newer than
    /// the iSCSI disk or not. Written only on a change; a store that does
    /// not answer is tried again at the next look.
    pub(super) fn record_disk_newer(&self, a: &Attachment, newer: bool) {
        let Some(wwid) = a.iscsi.as_ref().and_then(|i| i.wwid.as_deref()) else {
            return;
        };
        let records = self.records();
        let me = self.host();
        let r = records.get(wwid).and_then(|got| match got {
            Some((r, rev)) => match cluster::mark_newer(&r, &me, newer) {
                Some(next) => records.swap(wwid, rev, Some(&next)).map(|_| true),
                None => Ok(false),
            },
            None => Ok(false),
        });
        match r {
            Ok(true) => {
                tracing::info!(spec = %a.spec, wwid, newer, "disk record: this host's copy newer than the iSCSI disk")
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(spec = %a.spec, wwid, error = %e, "disk record not updated"),
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
