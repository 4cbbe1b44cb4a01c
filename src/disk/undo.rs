//! The one undo executor. Attach pushes an [`Undo`] for every step that
//! changed the host and, on failure, runs them backwards; detach and the
//! cleanup of an attach that died half-way derive the same steps from the
//! attachment's record ([`Engine::teardown`]) and run them forwards. Either
//! way each step checks what it acts on is still ours, the same logout
//! rule applies, and a failure is reported without hiding the rest.
use std::path::PathBuf;

use super::array::{Expected, Stopping};
use super::{lun_of, remove_file, Cause, Engine, Step};
use crate::iscsi;
use crate::md;
use crate::state::{Attachment, IscsiLeg, LocalCopy, LocalNewer, OpenRecord};

/// One step back.
#[derive(Debug)]
pub(super) enum Undo {
    /// Forget the attachment record (last: kept when anything failed, so
    /// that the next call finishes the job).
    RemoveState(String),
    /// Delete a node record this call created.
    DeleteNode { target: String, portal: String },
    /// Put back a node record's previous content.
    RestoreRecord {
        path: PathBuf,
        content: iscsi::RecordText,
    },
    /// The logout rule for this attachment's session at `portal`.
    ReleaseSession {
        key: String,
        target: String,
        portal: String,
    },
    /// Remove the multipath map this call made over `leg`'s paths (if
    /// still theirs), and the wwid this call added.
    ReleaseMap {
        name: String,
        leg: Box<IscsiLeg>,
        wwid_added: bool,
    },
    /// Delete the SCSI disk this call scanned in, if it still is that LUN.
    DeleteScsi {
        target: String,
        hctl: String,
        wwid: Option<String>,
    },
    /// Delete a recorded LUN's disk (if ours) and apply the logout rule.
    ReleaseLun {
        key: String,
        target: String,
        lun: u32,
        known: Option<IscsiLeg>,
    },
    /// Stop the array if it is still ours (found by its legs when its
    /// name is not known), then remove its bitmap file.
    StopArray {
        kname: Option<String>,
        expect: Expected,
        bitmap: Option<PathBuf>,
    },
    /// Put back the label's open record as it was.
    RestoreOpen(String, Option<OpenRecord>),
    /// A clean end: forget the label's open record.
    ClearOpen(String),
    /// Put back an earlier version's local-is-newer record of a label.
    RestoreNewer(String, Option<LocalNewer>),
    /// Put back a local volume's record as it was.
    RestoreCopy(String, Option<LocalCopy>),
    /// Put back the disk's record (of `wwid`, which this call wrote at
    /// revision `read`) as it was: no VM was handed the disk.
    RestoreDisk {
        wwid: String,
        read: u64,
        prior: Option<crate::cluster::DiskRecord>,
    },
    /// Drop the registration this call made on disk `kname` (if it still
    /// carries `wwid`).
    Unregister { kname: String, wwid: String },
    /// A clean end of the disk's generation here (see
    /// [`Engine::end_disk`]): before the attachment is forgotten, so that
    /// a detach killed while writing it is finished by the next call.
    EndDisk(Box<Attachment>, bool),
}

impl Undo {
    /// Steps that describe the end state: done only when every step
    /// before them succeeded.
    fn is_final(&self) -> bool {
        matches!(
            self,
            Undo::RemoveState(_) | Undo::ClearOpen(_) | Undo::EndDisk(..)
        )
    }

    /// Steps that would pull a leg from under a running array.
    fn needs_array_stopped(&self) -> bool {
        matches!(
            self,
            Undo::DeleteScsi { .. } | Undo::ReleaseLun { .. } | Undo::ReleaseMap { .. }
        )
    }
}

impl Engine<'_> {
    /// What undoes a recorded attachment, in order: stop the array (if
    /// ours), release the LUN (its disk if ours, the session by the logout
    /// rule), end the disk's generation here (`in_sync`: both legs were in
    /// sync before the array stopped), then forget the label's open record
    /// and the attachment.
    pub(super) fn teardown(&self, key: &str, a: &Attachment, in_sync: bool) -> Vec<Undo> {
        let mut steps = Vec::new();
        if let Some(m) = &a.mirror {
            if let Some(expect) = Expected::of(&self.sys, a) {
                steps.push(Undo::StopArray {
                    kname: m.kname.clone(),
                    expect,
                    // A call killed between `mdadm --build` and recording
                    // the array left the label's bitmap file unrecorded.
                    bitmap: m
                        .bitmap
                        .clone()
                        .or_else(|| Some(self.durable.bitmap(&m.label))),
                });
            }
        }
        if let Some((target, lun)) = lun_of(a) {
            steps.push(Undo::ReleaseLun {
                key: key.to_string(),
                target,
                lun,
                known: a.iscsi.clone(),
            });
        }
        steps.push(Undo::EndDisk(Box::new(a.clone()), in_sync));
        if let Some(m) = &a.mirror {
            steps.push(Undo::ClearOpen(m.label.clone()));
        }
        steps.push(Undo::RemoveState(key.to_string()));
        steps
    }

    /// Run `steps` in the order given; every failure is returned, the
    /// first being the one to report.
    pub(super) fn run_undo(&self, steps: Vec<Undo>) -> Vec<(Step, Cause)> {
        // Undo steps may use the rollback's share of the budget.
        let was = self.undoing.replace(true);
        let failed = self.run_undo_steps(steps);
        self.undoing.set(was);
        failed
    }

    fn run_undo_steps(&self, steps: Vec<Undo>) -> Vec<(Step, Cause)> {
        let mut failed: Vec<(Step, Cause)> = Vec::new();
        let mut stopping: Vec<Stopping> = Vec::new();
        // An array we could not stop still holds its legs.
        let mut array_up = false;
        for u in steps {
            if (u.is_final() && !failed.is_empty()) || (array_up && u.needs_array_stopped()) {
                tracing::warn!(undo = ?u, "not done: an earlier step failed");
                continue;
            }
            if u.is_final() {
                // The array's disk and links are gone before we say so.
                for s in stopping.drain(..) {
                    if let Err(e) = self.stop_end(s) {
                        failed.push((Step::Stop, e.into()));
                    }
                }
                if !failed.is_empty() {
                    continue;
                }
            }
            tracing::debug!(undo = ?u, "undo");
            let r: Result<(), (Step, Cause)> = match &u {
                Undo::RemoveState(k) => self.store.remove(k).map_err(|e| (Step::State, e.into())),
                // A session kept for another attachment still uses it.
                Undo::DeleteNode { target, portal }
                    if iscsi::session_at(&self.sys, target, portal).is_some() =>
                {
                    tracing::info!(target, "node record kept: a session to the target remains");
                    Ok(())
                }
                Undo::DeleteNode { target, portal } => self
                    .iscsiadm()
                    .node_delete(target, portal)
                    .map_err(|e| (Step::Node, e.into())),
                Undo::RestoreRecord { path, content } => {
                    iscsi::restore_record(&self.sys, path, content, self.idbm_wait())
                        .map_err(|e| (Step::Node, e.into()))
                }
                Undo::ReleaseSession {
                    key,
                    target,
                    portal,
                } => self.release_session(key, target, portal),
                Undo::ReleaseMap {
                    name,
                    leg,
                    wwid_added,
                } => self.release_map(name, leg, *wwid_added),
                Undo::DeleteScsi { target, hctl, wwid } => {
                    match iscsi::device_at(&self.sys, hctl) {
                        Some(d) => self.delete_ours(target, &d, wwid.as_deref()),
                        None => Ok(()),
                    }
                }
                Undo::ReleaseLun {
                    key,
                    target,
                    lun,
                    known,
                } => self.release_lun(key, target, *lun, known.as_ref()),
                Undo::StopArray {
                    kname,
                    expect,
                    bitmap,
                } => {
                    let kname = kname.clone().or_else(|| self.find_expected(expect));
                    match kname.map(|k| self.stop_begin(&k, expect)) {
                        // Its array is gone; a call that died after
                        // stopping it may have left its link (no udev).
                        None => md::remove_dangling_label(&self.sys, &expect.label)
                            .map_err(|e| (Step::Stop, e.into())),
                        Some(Ok(None)) => Ok(()),
                        Some(Ok(Some(s))) => {
                            stopping.push(s);
                            bitmap
                                .as_deref()
                                .map_or(Ok(()), remove_file)
                                .map_err(|e| (Step::Stop, e.into()))
                        }
                        Some(Err(e)) => {
                            array_up = true;
                            Err((Step::Stop, e.into()))
                        }
                    }
                }
                Undo::RestoreOpen(label, prior) => match prior {
                    Some(o) => self.durable.set_open(o),
                    None => self.durable.clear_open(label),
                }
                .map_err(|e| (Step::State, e.into())),
                Undo::ClearOpen(label) => self
                    .durable
                    .clear_open(label)
                    .map_err(|e| (Step::State, e.into())),
                Undo::RestoreNewer(label, prior) => match prior {
                    Some(n) => self.durable.set_newer(n),
                    None => self.durable.clear_newer(label),
                }
                .map_err(|e| (Step::State, e.into())),
                Undo::RestoreCopy(id, prior) => match prior {
                    Some(c) => self.durable.set_copy(c),
                    None => self.durable.clear_copy(id),
                }
                .map_err(|e| (Step::State, e.into())),
                Undo::Unregister { kname, wwid } => {
                    self.unregister(kname, wwid);
                    Ok(())
                }
                Undo::EndDisk(a, in_sync) => {
                    self.end_disk(a, *in_sync);
                    Ok(())
                }
                Undo::RestoreDisk { wwid, read, prior } => self
                    .records()
                    .swap(wwid, *read, prior.as_ref())
                    .map(|_| ())
                    .map_err(|e| (Step::Record, e.into())),
            };
            if let Err((step, cause)) = r {
                tracing::error!(undo = ?u, %step, error = %cause, "undo failed");
                failed.push((step, cause));
            }
        }
        for s in stopping {
            if let Err(e) = self.stop_end(s) {
                failed.push((Step::Stop, e.into()));
            }
        }
        failed
    }
}
