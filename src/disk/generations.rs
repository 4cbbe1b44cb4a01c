//! The disk's record ([`crate::cluster`]) at attach and detach: every
//! attach starts the disk's next generation, and a detach that saw both
//! legs in sync marks this host's copy clean at it, so that the next
//! attach here can build the mirror in sync instead of copying the disk.
use super::attach::Walk;
use super::copies::{Known, Verdict};
use super::undo::Undo;
use super::{Cause, DiskError, Engine, Step};
use crate::cluster::{self, Access, ClusterError, Records, Rule, Why};
use crate::config::OnUnreachable;
use crate::iscsi::reservation;
use crate::state::{Attachment, LunId};

/// An attach's part of the disk's record.
#[derive(Debug)]
pub(super) struct Begun {
    /// How the mirror is built (None: no local leg joins now).
    pub rule: Option<Rule>,
}

/// The records of one LUN (by target and LUN) as an attach read them
/// before login.
#[derive(Debug)]
pub(super) struct Seen {
    target: String,
    lun: u32,
    records: Vec<(cluster::DiskRecord, u64)>,
}

impl Seen {
    /// The record of `wwid` and its revision, as read (None: absent then).
    fn of(&self, wwid: &str) -> Option<(cluster::DiskRecord, u64)> {
        self.records.iter().find(|(r, _)| r.wwid == wwid).cloned()
    }
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
        w: &Walk<'_>,
        lun: &LunId,
        kname: &str,
        joins_now: bool,
        verdict: &Verdict,
        undo: &mut Vec<Undo>,
    ) -> Result<Begun, (Step, Cause)> {
        let memo = self
            .seen
            .take()
            .filter(|s| s.target == lun.target && s.lun == lun.lun);
        let Some(wwid) = lun.wwid.as_deref() else {
            return Ok(Begun { rule: None });
        };
        let (spec, local) = (w.spec, w.local);
        let state = |e: ClusterError| (Step::Record, Cause::from(e));
        let records = self.records();
        let me = self.host();
        // The pre-login read serves, unless a pending end was just written.
        let read = match cluster::flush_pending_of(&*records, &self.config.state_dir, wwid, &me) {
            Ok(false) if memo.is_some() => Ok(memo.as_ref().and_then(|s| s.of(wwid))),
            Ok(_) => records.get(wwid),
            Err(e) => Err(e),
        };
        let read = match read {
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
        let attempt = |read, undo: &mut Vec<Undo>| {
            self.begin_from(
                w,
                (lun, wwid, kname),
                joins_now,
                verdict,
                (&*records, &me, read),
                undo,
            )
        };
        match attempt(read, undo) {
            // The record changed since the pre-login read: decide again
            // from what it is now.
            Err((Step::Record, Cause::Cluster(ClusterError::Changed { .. }))) if memo.is_some() => {
                let read = records.get(wwid).map_err(state)?;
                attempt(read, undo)
            }
            r => r,
        }
    }

    /// [`Engine::begin_disk`] from the record `read` (and its revision).
    fn begin_from(
        &self,
        w: &Walk<'_>,
        (lun, wwid, kname): (&LunId, &str, &str),
        joins_now: bool,
        verdict: &Verdict,
        (records, me, read): (&dyn Records, &String, Option<(cluster::DiskRecord, u64)>),
        undo: &mut Vec<Undo>,
    ) -> Result<Begun, (Step, Cause)> {
        let (spec, local) = (w.spec, w.local);
        let me = me.clone();
        let state = |e: ClusterError| (Step::Record, Cause::from(e));
        let (prior, rev) = match &read {
            Some((r, rev)) => (Some(r), *rev),
            None => (None, 0),
        };
        let access = cluster::check_in(records, prior, &me, w.opts.incoming)
            .map_err(|c| (Step::Record, Cause::Conflict(c)))?;
        let lease = records.lease().map_err(state)?;
        // A writer other than this host that check let through is gone.
        let gone = match access {
            Access::Write => prior
                .and_then(|r| r.writer.as_ref())
                .filter(|w| w.host != me)
                .map(|w| w.host.clone()),
            Access::Handover { .. } => None,
        };
        if records.shared() {
            self.fence(&spec.to_string(), (kname, wwid), &me, gone.as_deref(), undo)?;
        }
        if let (Access::Handover { from }, Some(r)) = (&access, prior) {
            let next = cluster::hand_over(r, &me, lease);
            let written = records.swap(wwid, rev, Some(&next)).map_err(state)?;
            undo.push(Undo::RestoreDisk {
                wwid: wwid.to_string(),
                read: written,
                prior: prior.cloned(),
            });
            tracing::info!(spec = %spec, wwid, from, "disk record: migration handover asked");
            self.notice(
                &spec.to_string(),
                format!("migration: host {from} writes disk {wwid} until it releases it; this host does from then on"),
            );
            return Ok(Begun { rule: None });
        }
        if let Some(host) = &gone {
            tracing::warn!(spec = %spec, wwid, writer = host, "the disk's writer is gone (its lease expired): taking the disk over");
            self.notice(
                &spec.to_string(),
                format!("host {host} was writing disk {wwid} but its lease expired: taking the disk over"),
            );
        }
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
    /// Before anything changes: another host writes the LUN, or holds
    /// data it lacks, by the records of a shared store (found by target
    /// and LUN: the wwid is known only once logged in, where
    /// [`Engine::begin_disk`] checks again, by wwid, in its swap). A store
    /// that does not answer refuses the attach here, unless
    /// `on_unreachable = "local"`.
    pub(super) fn disk_conflicts(
        &self,
        target: &str,
        lun: u32,
        incoming: bool,
    ) -> Result<(), (Step, Cause)> {
        self.seen.take();
        let records = self.records();
        if !records.shared() {
            return Ok(());
        }
        let all = match records.read_all() {
            Ok(a) => a,
            Err(ClusterError::Unreachable { .. })
                if self.config.cluster.on_unreachable == OnUnreachable::Local =>
            {
                return Ok(())
            }
            Err(e) => return Err((Step::Record, e.into())),
        };
        let me = self.host();
        let mine: Vec<_> = all
            .into_iter()
            .filter(|(r, _)| r.target == target && r.lun == lun)
            .collect();
        for (r, _) in &mine {
            cluster::check_in(&*records, Some(r), &me, incoming)
                .map_err(|c| (Step::Record, Cause::Conflict(c)))?;
        }
        *self.seen.borrow_mut() = Some(Seen {
            target: target.to_string(),
            lun,
            records: mine,
        });
        Ok(())
    }

    /// Fence the disk for the hosts that may write it (a shared store and a
    /// target with persistent reservations): register this host's key on
    /// the LUN (disk `kname`) and reserve it Write Exclusive – Registrants
    /// Only if nobody holds it; first, when this host takes over from a
    /// writer whose lease expired (`gone`), preempt that host's key, so
    /// that a living but partitioned host can no longer write the disk.
    /// A target without them is used as it is (the store still decides).
    fn fence(
        &self,
        spec: &str,
        (kname, wwid): (&str, &str),
        me: &str,
        gone: Option<&str>,
        undo: &mut Vec<Undo>,
    ) -> Result<(), (Step, Cause)> {
        let disks = pr_disks(&self.sys, kname);
        let lun = reservation::Lun::of_disk(&disks[0]);
        let st = match lun.read() {
            Ok(st) => st,
            Err(e) => {
                tracing::info!(spec, kname, error = %e, "no persistent reservations on this LUN: not fenced");
                return Ok(());
            }
        };
        let fail = |e: reservation::ReservationError| (Step::Record, Cause::Reservation(e));
        let mine = reservation::key_of(me);
        // Each path is its own I_T nexus, registered on its own: a write
        // through an unregistered one would fail with a reservation
        // conflict, and md would fail the leg. Registering again with the
        // same key changes nothing.
        let new = !st.keys.contains(&mine);
        for d in &disks {
            reservation::Lun::of_disk(d).register(mine).map_err(fail)?;
        }
        if new {
            undo.push(Undo::Unregister {
                kname: kname.to_string(),
                wwid: wwid.to_string(),
            });
        }
        let victim = gone.map(reservation::key_of);
        if let (Some(host), Some(victim)) = (gone, victim) {
            if st.keys.contains(&victim) {
                lun.preempt(mine, victim).map_err(fail)?;
                tracing::warn!(
                    spec,
                    kname,
                    fenced = host,
                    "fenced: the gone writer's key preempted, its writes to the LUN now fail"
                );
                self.notice(
                    spec,
                    format!("host {host} fenced off the disk (its key preempted)"),
                );
            }
        }
        let holder = st.holder.map(|(k, _)| k);
        if holder.is_none() || (victim.is_some() && holder == victim) {
            match lun.reserve(mine) {
                Ok(()) => {}
                // Another registrant reserved it meanwhile: registered, this
                // host may write all the same.
                Err(e) => tracing::info!(spec, kname, error = %e, "not reserved by this host"),
            }
        }
        Ok(())
    }

    /// Drop this host's registration on the disk of `d` before its SCSI
    /// device goes (a shared store). Best effort: the device is deleted
    /// next either way.
    pub(super) fn unfence(&self, d: &crate::iscsi::ScsiDev, wwid: Option<&str>) {
        if let (Some(b), Some(w)) = (d.block.as_deref(), wwid) {
            if self.records().shared() {
                self.unregister(b, w);
            }
        }
    }

    /// Keep the disks this host writes reserved (a shared store): a
    /// migration's source that released the disk dropped the reservation
    /// with its registration. Only where this host's key is still
    /// registered: a host that was fenced stays fenced.
    pub fn keep_fenced(&self) {
        let records = self.records();
        if !records.shared() {
            return;
        }
        let me = self.host();
        let mine = reservation::key_of(&me);
        for (_, a) in self.store.all().unwrap_or_default() {
            let Some(leg) = a.iscsi.as_ref() else {
                continue;
            };
            let Some(wwid) = leg.wwid.as_deref() else {
                continue;
            };
            if crate::iscsi::wwid(&self.sys, &leg.kname).as_deref() != Some(wwid) {
                continue;
            }
            let writes = matches!(records.get(wwid), Ok(Some((r, _))) if r.writer.as_ref().is_some_and(|w| w.host == me));
            if !writes {
                continue;
            }
            let lun = reservation::Lun::of_disk(&pr_disks(&self.sys, &leg.kname)[0]);
            if let Ok(st) = lun.read() {
                if st.holder.is_none() && st.keys.contains(&mine) {
                    match lun.reserve(mine) {
                        Ok(()) => {
                            tracing::info!(spec = %a.spec, wwid, "disk reserved again (its previous holder released it)")
                        }
                        Err(e) => {
                            tracing::warn!(spec = %a.spec, wwid, error = %e, "disk not reserved")
                        }
                    }
                }
            }
        }
    }

    /// Drop this host's registration on disk `kname`, if it has one and
    /// the disk still carries `wwid` (another LUN may answer there now).
    pub(super) fn unregister(&self, kname: &str, wwid: &str) {
        if crate::iscsi::wwid(&self.sys, kname).as_deref() != Some(wwid) {
            return;
        }
        for d in pr_disks(&self.sys, kname) {
            let lun = reservation::Lun::of_disk(&d);
            match lun.read() {
                Ok(st) if st.keys.contains(&reservation::key_of(&self.host())) => {
                    if let Err(e) = lun.unregister() {
                        tracing::warn!(kname = d, error = %e, "registration not dropped");
                    }
                }
                _ => {}
            }
        }
    }

    /// Before a heal copies the local leg onto the iSCSI disk of `a`: by
    /// the records of a shared store, nobody else wrote it meanwhile (a
    /// split brain, or another live writer: this host was fenced). A store
    /// that does not answer lets the heal go on: the fence, not the store,
    /// keeps a host that lost the disk off it.
    pub(super) fn may_heal(&self, a: &Attachment) -> Result<(), (Step, Cause)> {
        let Some(wwid) = a.iscsi.as_ref().and_then(|i| i.wwid.as_deref()) else {
            return Ok(());
        };
        let records = self.records();
        if !records.shared() {
            return Ok(());
        }
        let Ok(Some((r, _))) = records.get(wwid) else {
            return Ok(());
        };
        // This host's own newer copy (what heal copies) is no conflict.
        cluster::check_in(&*records, Some(&r), &self.host(), false)
            .map(|_| ())
            .map_err(|c| (Step::Record, Cause::Conflict(c)))
    }

    /// Settle the split brain of disk `what` (its wwid, or the label of
    /// this host's copy), keeping `keep`, on the host whose local copy
    /// diverged: the record says which copy wins, and this host's copy
    /// record agrees (with `Keep::Iscsi` its newer mark goes, so its next
    /// attach copies the iSCSI disk over it). Refused while this host has
    /// the disk attached. Returns what was done, for people.
    pub fn resolve(&self, what: &str, keep: cluster::Keep, by: &str) -> Result<String, DiskError> {
        let fail = |step, cause: Cause| DiskError::new("resolve", what, step, cause);
        let copies = self
            .known_copies()
            .map_err(|e| fail(Step::State, e.into()))?;
        let copy = copies.iter().find(|k| {
            k.copy.label == what
                || k.copy.lun.as_ref().and_then(|l| l.wwid.as_deref()) == Some(what)
        });
        let wwid = copy
            .and_then(|k| k.copy.lun.as_ref()?.wwid.clone())
            .unwrap_or_else(|| what.to_string());
        let records = self.records();
        let (r, rev) = records
            .get(&wwid)
            .map_err(|e| fail(Step::Record, e.into()))?
            .ok_or_else(|| {
                fail(
                    Step::Record,
                    Cause::NoSplit {
                        wwid: wwid.clone(),
                        why: "no record of it".into(),
                    },
                )
            })?;
        let me = self.host();
        let Some(x) = r.split.clone() else {
            return Err(fail(
                Step::Record,
                Cause::NoSplit {
                    wwid,
                    why: "no split brain is recorded".into(),
                },
            ));
        };
        if x.local != me {
            return Err(fail(
                Step::Record,
                Cause::NoSplit {
                    wwid,
                    why: format!(
                        "the diverging copy is host {}'s: run resolve there",
                        x.local
                    ),
                },
            ));
        }
        let attached = self
            .store
            .all()
            .map_err(|e| fail(Step::State, e.into()))?
            .into_iter()
            .any(|(_, a)| a.iscsi.as_ref().and_then(|i| i.wwid.as_deref()) == Some(wwid.as_str()));
        if attached {
            return Err(fail(
                Step::InUse,
                Cause::NoSplit {
                    wwid,
                    why: "it is attached here: detach it first".into(),
                },
            ));
        }
        if let (cluster::Keep::Iscsi, Some(k)) = (keep, copy) {
            let mut c = k.copy.clone();
            c.newer = None;
            c.clean_at = None;
            self.durable
                .set_copy(&c)
                .map_err(|e| fail(Step::State, e.into()))?;
            for (_, n) in &k.legacy {
                self.durable
                    .clear_newer(&n.label)
                    .map_err(|e| fail(Step::State, e.into()))?;
            }
        }
        records
            .swap(&wwid, rev, Some(&cluster::resolve(&r, keep)))
            .map_err(|e| fail(Step::Record, e.into()))?;
        let done = match keep {
            cluster::Keep::Local => format!("split brain of disk {wwid} resolved by {by}: host {me}'s local copy wins; its next attach copies it onto the iSCSI disk (host {}'s writes there are lost)", x.other),
            cluster::Keep::Iscsi => format!("split brain of disk {wwid} resolved by {by}: the iSCSI disk (host {}'s writes) wins; host {me}'s next attach copies it over the local copy", x.other),
        };
        tracing::warn!(wwid, by, host = me, keep = ?keep, "{done}");
        Ok(done)
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

/// The SCSI disks persistent reservations go through for disk `kname`:
/// a multipath map's paths (each an I_T nexus of its own), else `kname`.
fn pr_disks(sys: &crate::sysfs::Sys, kname: &str) -> Vec<String> {
    let paths = crate::multipath::paths_of(sys, kname);
    if paths.is_empty() {
        vec![kname.to_string()]
    } else {
        paths
    }
}
