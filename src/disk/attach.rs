//! Attach (and its dry-run plan): input checks first, then the iSCSI leg,
//! then the mirror; every step that changes the host pushes its undo.
//! Attach and the plan walk one list of [`Action`]s ([`steps`]), made once
//! from the checked inputs: attach takes each, the dry run prints each.
use std::path::{Path, PathBuf};

use super::array::Expected;
use super::copies::{Asked, Verdict};
use super::undo::Undo;
use super::{key_of, lun_of, remove_file, when, AttachOptions, Cause, DiskError, Engine, Step};
use crate::cluster::Rule;
use crate::iscsi;
use crate::labels::{LabelTable, LocalDevice};
use crate::lock::{file_key, Lock};
use crate::md::{self, Bitmap, Leg, MdError};
use crate::spec::Spec;
use crate::state::{self, Attachment, LunId, Mirror, OpenRecord, Phase};
use crate::volume;
use plan::{steps, Action, Source};

/// What a spec asks for, from the label table and the local volume.
struct Inputs {
    /// The local leg's path, unless MISSING.
    local_path: Option<PathBuf>,
    /// The local leg resolved.
    local: Option<volume::Volume>,
}

/// What attach's walk of its steps works with, besides the steps.
pub(super) struct Walk<'w> {
    /// The spec.
    pub spec: &'w Spec,
    /// The attachment's key.
    pub key: &'w str,
    /// How to attach.
    pub opts: AttachOptions,
    /// The local leg resolved, unless MISSING.
    pub local: Option<&'w volume::Volume>,
    /// The label's open record as it was before this attach.
    pub open: Option<&'w OpenRecord>,
}

impl Engine<'_> {
    /// The local leg of `spec` per the label table: None for MISSING or no label.
    fn local_leg(&self, spec: &Spec) -> Result<Option<PathBuf>, (Step, Cause)> {
        let Some(label) = &spec.label else {
            return Ok(None);
        };
        let table =
            LabelTable::load(&self.config.label_table).map_err(|e| (Step::LabelTable, e.into()))?;
        let entry = table.lookup(label).ok_or_else(|| {
            (
                Step::LabelTable,
                Cause::UnknownLabel {
                    label: label.to_string(),
                    table: self.config.label_table.clone(),
                },
            )
        })?;
        Ok(match &entry.device {
            LocalDevice::Missing => None,
            LocalDevice::Path(p) => Some(p.clone()),
        })
    }

    /// What the spec asks for, read from the label table and the local
    /// volume: no host state is changed or locked.
    fn inputs(&self, spec: &Spec) -> Result<Inputs, (Step, Cause)> {
        let local_path = self.local_leg(spec)?;
        if spec.target.is_none() && local_path.is_none() {
            return Err((Step::LocalVolume, Cause::BothMissing));
        }
        let local = match &local_path {
            Some(p) => {
                Some(volume::resolve(&self.sys, p).map_err(|e| (Step::LocalVolume, e.into()))?)
            }
            None => None,
        };
        Ok(Inputs { local_path, local })
    }

    /// What else on the host would make this attach wrong: the label's
    /// array exists, another attachment (finished or still logging in) has
    /// the LUN. (The local volume in use: a step, [`Action::CheckLocal`].)
    fn conflicts(&self, spec: &Spec, key: &str, incoming: bool) -> Result<(), (Step, Cause)> {
        if let Some(label) = &spec.label {
            if let Some(arr) = md::by_label(&self.sys, label.as_str()) {
                return Err((
                    Step::Label,
                    Cause::LabelInUse {
                        label: label.to_string(),
                        kname: arr.kname,
                        by: None,
                    },
                ));
            }
        }
        if let Some(t) = &spec.target {
            // Attachments still logging in count: their leg is not
            // recorded yet, their spec names the LUN.
            let want = (t.to_string(), spec.lun);
            for (k, a) in self.store.all().map_err(|e| (Step::State, e.into()))? {
                if k != file_key(key) && lun_of(&a).as_ref() == Some(&want) {
                    return Err((
                        Step::Scan,
                        Cause::LunInUse {
                            target: t.to_string(),
                            lun: spec.lun,
                            by: a.spec,
                        },
                    ));
                }
            }
            self.disk_conflicts(&want.0, spec.lun, incoming)?;
        }
        Ok(())
    }

    /// Check `spec` as attach would before it changes anything (label
    /// table, local volume, label and LUN free, the local copies' records:
    /// newer data elsewhere, an incoming migration meeting newer data),
    /// without locking or changing anything: for a caller about to attach
    /// several disks, so that a bad one is refused before any is touched.
    /// An attachment of this very spec passes (attach hands it out again).
    pub fn check(&self, spec: &Spec, opts: AttachOptions) -> Result<(), DiskError> {
        let key = key_of(spec);
        let shown = spec.to_string();
        let fail = |(step, cause)| DiskError::new("attach", &shown, step, cause);
        let inputs = self.inputs(spec).map_err(fail)?;
        match self
            .store
            .load(&key)
            .map_err(|e| fail((Step::State, e.into())))?
        {
            Some(a) if a.phase == Phase::Attached && a.spec == spec.to_string() => return Ok(()),
            Some(a) if a.phase == Phase::Attached => {
                return Err(fail((
                    Step::Label,
                    Cause::LabelInUse {
                        label: spec
                            .label
                            .as_ref()
                            .map(|l| l.to_string())
                            .unwrap_or_default(),
                        kname: a.mirror.and_then(|m| m.kname).unwrap_or_default(),
                        by: Some(a.spec),
                    },
                )))
            }
            // A record of a call that died: attach cleans it up first.
            Some(_) => return self.judge(spec, &inputs, opts).map(|_| ()),
            None => self.conflicts(spec, &key, opts.incoming).map_err(fail)?,
        }
        let verdict = self.judge(spec, &inputs, opts)?;
        let steps = steps(
            spec,
            inputs.local_path.as_deref(),
            verdict.trust_local,
            opts,
        );
        self.take_checks(&steps, inputs.local.as_ref())
            .map_err(fail)
    }

    /// The records' verdict on `spec` before login, as an error of attach.
    fn judge(
        &self,
        spec: &Spec,
        inputs: &Inputs,
        opts: AttachOptions,
    ) -> Result<Verdict, DiskError> {
        self.judge_copies(&Asked {
            spec,
            local: inputs.local.as_ref(),
            lun: spec_lun(spec),
            lun_size: None,
            defer_local: opts.defer_local,
        })
        .map_err(|(step, cause)| DiskError::new("attach", &spec.to_string(), step, cause))
    }

    /// Take the checks of `steps`: they change nothing, and come first.
    fn take_checks(
        &self,
        steps: &[Action],
        local: Option<&volume::Volume>,
    ) -> Result<(), (Step, Cause)> {
        for step in steps {
            if let (Action::CheckLocal(_), Some(v)) = (step, local) {
                volume::check_unused(&self.sys, v).map_err(|e| (Step::LocalVolume, e.into()))?;
            }
        }
        Ok(())
    }

    /// Attach `spec`; returns the device to hand to the hypervisor.
    pub fn attach(&self, spec: &Spec) -> Result<PathBuf, DiskError> {
        self.attach_with(spec, AttachOptions::default())
    }

    /// Attach with options (see [`AttachOptions`]).
    pub fn attach_with(&self, spec: &Spec, opts: AttachOptions) -> Result<PathBuf, DiskError> {
        let key = key_of(spec);
        let mut undo: Vec<Undo> = Vec::new();
        // The locks outlive the steps: the rollback runs under them too, or
        // another attach of this record or LUN could run in between and
        // have its record removed by ours (found by the simulator).
        let mut held: Vec<Lock> = Vec::new();
        let r = self.attach_steps(spec, &key, opts, &mut undo, &mut held);
        match r {
            Ok(dev) => Ok(dev),
            Err((step, cause)) => {
                let cause = self.blame(cause);
                tracing::warn!(spec = %spec, %step, error = %cause, "attach failed; rolling back");
                let rollback = self
                    .run_undo(undo.into_iter().rev().collect())
                    .into_iter()
                    .map(|(s, c)| format!("{s}: {c}"))
                    .collect();
                Err(DiskError {
                    op: "attach",
                    spec: spec.to_string(),
                    step,
                    cause: Box::new(cause),
                    rollback,
                })
            }
        }
    }

    fn attach_steps(
        &self,
        spec: &Spec,
        key: &str,
        opts: AttachOptions,
        undo: &mut Vec<Undo>,
        held: &mut Vec<Lock>,
    ) -> Result<PathBuf, (Step, Cause)> {
        // Input first: nothing is touched until the table and volume check out.
        let Inputs { local_path, local } = self.inputs(spec)?;

        held.push(self.key_lock(key).map_err(|e| (Step::Lock, e))?);
        // Every spec naming a target takes its LUN's lock, mirrored or not:
        // `lun1@T+L` and `lun1@T` must not both get the disk.
        if let Some(t) = &spec.target {
            held.push(
                self.lun_lock(t.as_str(), spec.lun)
                    .map_err(|e| (Step::Lock, e))?,
            );
        }

        // Read before any cleanup below: it tells whether the last use of
        // the label ended cleanly.
        let open = match &spec.label {
            Some(l) => self
                .durable
                .open(l.as_str())
                .map_err(|e| (Step::State, e.into()))?,
            None => None,
        };
        // Already attached (a rerun): hand out the same device.
        if let Some(a) = self.store.load(key).map_err(|e| (Step::State, e.into()))? {
            if a.phase == Phase::Attached && a.spec == spec.to_string() {
                if let Some(dev) = a
                    .device
                    .clone()
                    .filter(|d| self.sys.exists(d) && self.still_ours(&a))
                {
                    self.tidy_copy_of(&a).map_err(|e| (Step::State, e.into()))?;
                    tracing::info!(spec = %spec, device = %dev.display(), "already attached");
                    return Ok(dev);
                }
            }
            if a.spec != spec.to_string() && a.phase == Phase::Attached {
                let kname = a
                    .mirror
                    .as_ref()
                    .and_then(|m| m.kname.clone())
                    .unwrap_or_default();
                let label = spec
                    .label
                    .as_ref()
                    .map(|l| l.to_string())
                    .unwrap_or_default();
                return Err((
                    Step::Label,
                    Cause::LabelInUse {
                        label,
                        kname,
                        by: Some(a.spec),
                    },
                ));
            }
            // A previous attach died half-way (or its devices vanished): undo what it recorded.
            tracing::warn!(spec = %spec, phase = ?a.phase, "cleaning up an unfinished attachment first");
            let errors = self.detach_recorded(key, &a);
            if let Some(e) = errors.into_iter().next() {
                return Err(e);
            }
        }
        self.conflicts(spec, key, opts.incoming)?;
        // What the records refuse already, before anything is touched.
        let verdict = self.judge_copies(&Asked {
            spec,
            local: local.as_ref(),
            lun: spec_lun(spec),
            lun_size: None,
            defer_local: opts.defer_local,
        })?;
        // The one list the dry run prints: its checks first, then the rest
        // in its order.
        let steps = steps(spec, local_path.as_deref(), verdict.trust_local, opts);
        self.take_checks(&steps, local.as_ref())?;

        let mut att = attaching(spec, local_path, local.as_ref());
        self.store
            .save(key, &att)
            .map_err(|e| (Step::State, e.into()))?;
        undo.push(Undo::RemoveState(key.to_string()));

        let walk = Walk {
            spec,
            key,
            opts,
            local: local.as_ref(),
            open: open.as_ref(),
        };
        let device = self.take_steps(&walk, &steps, &mut att, verdict, undo)?;
        att.phase = Phase::Attached;
        att.device = Some(device.clone());
        self.store
            .save(key, &att)
            .map_err(|e| (Step::State, e.into()))?;
        tracing::info!(spec = %spec, device = %device.display(), "attached");
        Ok(device)
    }

    /// Whether the devices an attachment recorded are still its own: the
    /// array its legs make, or the plain LUN's disk (device number and
    /// wwid). A name is not an identity: found by the simulator, a detach
    /// killed after deleting the LUN's disk let another LUN take its name
    /// (`sda`), and the rerun of the attach handed that disk out.
    fn still_ours(&self, a: &Attachment) -> bool {
        if let Some(m) = &a.mirror {
            let Some(arr) = md::by_label(&self.sys, &m.label) else {
                return false;
            };
            return Expected::of(&self.sys, a)
                .is_some_and(|e| e.mismatch(&self.sys, &arr).is_none());
        }
        let Some(leg) = &a.iscsi else {
            return true;
        };
        let devnum = self.sys.devnum(&leg.kname);
        let wwid = iscsi::wwid(&self.sys, &leg.kname);
        leg.devnum
            .as_ref()
            .map_or(true, |d| devnum.as_ref() == Some(d))
            && leg.wwid.as_ref().map_or(true, |w| wwid.as_ref() == Some(w))
    }

    /// Take the changes of `steps` in order (the checks were taken before
    /// the attachment was recorded); returns the device handed out.
    fn take_steps(
        &self,
        w: &Walk<'_>,
        steps: &[Action],
        att: &mut Attachment,
        mut verdict: Verdict,
        undo: &mut Vec<Undo>,
    ) -> Result<PathBuf, (Step, Cause)> {
        let mut iscsi_dev = None;
        let mut lun = None;
        let mut device = None;
        for step in steps {
            match step {
                // Taken before anything changed (take_checks).
                Action::CheckLocal(_) => {}
                Action::IscsiLeg { target, lun: n } => {
                    let leg = self.iscsi_leg(w.key, target, *n, undo)?;
                    iscsi_dev = Some(leg.device());
                    att.iscsi = Some(leg);
                    self.store
                        .save(w.key, att)
                        .map_err(|e| (Step::State, e.into()))?;
                    // The records again, with the LUN's wwid and size: which
                    // copy is the source, and the array's size.
                    lun = att.iscsi.as_ref().map(|i| LunId {
                        target: i.target.clone(),
                        lun: i.lun,
                        wwid: i.wwid.clone(),
                    });
                    verdict = self.judge_copies(&Asked {
                        spec: w.spec,
                        local: w.local,
                        lun: lun.clone(),
                        lun_size: att.iscsi.as_ref().map(|i| i.size),
                        defer_local: w.opts.defer_local,
                    })?;
                    if let (Some(v), Some(leg)) = (w.local, &att.iscsi) {
                        // The local leg joins an array of the LUN's size (a source
                        // local leg was checked against the disk the VM used).
                        if !verdict.trust_local {
                            volume::check_size(v, leg.size).map_err(|e| (Step::Size, e.into()))?;
                        }
                    }
                    // The disk's next generation; whether the local copy
                    // joins in sync.
                    if let (Some(l), Some(leg)) = (&lun, &att.iscsi) {
                        let joins_now = local_joining(steps).is_some();
                        let begun = self.begin_disk(w, l, &leg.kname, joins_now, &verdict, undo)?;
                        verdict.in_sync = matches!(begun.rule, Some(Rule::ZeroCopy { .. }));
                    }
                }
                Action::Build {
                    label,
                    leg,
                    bitmap: with_bitmap,
                } => {
                    self.tell_source(w.spec, w.local, w.open, &verdict);
                    let label = label.as_str();
                    let legs = vec![
                        // Zero-copy: the local leg is known equal.
                        match local_joining(steps).filter(|_| verdict.in_sync) {
                            Some(p) => Leg::Normal(p.to_path_buf()),
                            None => Leg::Missing,
                        },
                        match leg {
                            Source::Local(p) => Leg::Normal(p.clone()),
                            Source::Iscsi => {
                                Leg::WriteMostly(iscsi_dev.clone().expect("the iSCSI leg first"))
                            }
                        },
                    ];
                    self.durable
                        .set_open(&OpenRecord {
                            label: label.to_string(),
                            spec: w.spec.to_string(),
                            boot_id: self.sys.boot_id(),
                            since: state::now(),
                        })
                        .map_err(|e| (Step::State, e.into()))?;
                    undo.push(Undo::RestoreOpen(label.to_string(), w.open.cloned()));
                    let size = verdict
                        .size
                        .expect("known after the scan, or without an iSCSI leg");
                    if let Some(m) = att.mirror.as_mut() {
                        m.size = Some(size);
                    }
                    if let Some(v) = w.local {
                        // Before the array exists: its size, its LUN, and (the
                        // iSCSI leg MISSING) that every write from now on
                        // reaches the local leg only.
                        self.record_copy(w.spec, v, &verdict, lun.as_ref(), undo)?;
                    }
                    // Only for an array built from the LUN alone, which has
                    // the LUN's size without `--size` (see Mdadm::build). Built
                    // from the local leg it has none: its first resync is full
                    // anyway, and so is a heal while it lasts.
                    let bitmap = if *with_bitmap {
                        self.bitmap_for(w.spec, label, size)
                    } else {
                        None
                    };
                    let pin = |bitmap: Option<&Bitmap>| bitmap.is_none().then_some(size / 1024);
                    if let Some(stale) = self.sys.link_name(md::label_path(label)) {
                        // A link left by an array stopped without udev would confuse mdadm.
                        md::remove_stale_nodes(&self.sys, label, &stale)
                            .map_err(|e| (Step::Build, e.into()))?;
                    }
                    // What the array must be made of: found and stopped by
                    // that, never by its name alone.
                    let expect = Expected::of(&self.sys, att).expect("a mirror");
                    {
                        // No lock of ours: mdadm --build picks the free minor and
                        // creates the array under its own map lock
                        // (/run/mdadm/map.lock); builds of different labels overlap.
                        undo.push(Undo::StopArray {
                            kname: None,
                            expect: expect.clone(),
                            bitmap: Some(self.durable.bitmap(label)),
                        });
                        let built = self.mdadm().build(
                            label,
                            &legs,
                            bitmap.as_ref(),
                            pin(bitmap.as_ref()),
                            verdict.in_sync,
                        );
                        match (built, &bitmap) {
                            (Ok(()), Some(b)) => {
                                if let Some(m) = att.mirror.as_mut() {
                                    m.bitmap = Some(b.file.clone());
                                }
                            }
                            (Ok(()), None) => {}
                            (Err(e), Some(b)) => {
                                // Kernels built without bitmap file support refuse it here.
                                tracing::warn!(spec = %w.spec, error = %e, "mdadm --build with a write-intent bitmap failed; building without (a heal will resync fully)");
                                if let Some(half) = self.array_of_legs(label, &legs) {
                                    self.stop_array(&half.kname, &expect)
                                        .map_err(|e| (Step::Build, e.into()))?;
                                }
                                remove_file(&b.file).map_err(|e| (Step::Build, e.into()))?;
                                self.mdadm()
                                    .build(label, &legs, None, pin(None), verdict.in_sync)
                                    .map_err(|e| (Step::Build, e.into()))?;
                            }
                            (Err(e), None) => return Err((Step::Build, e.into())),
                        }
                    }
                    // mdadm names the array itself (see Mdadm::build); settle
                    // only if the name is not there after all.
                    if md::by_label(&self.sys, label).is_none() {
                        self.settle();
                    }
                    let array = self.array_of_legs(label, &legs).ok_or_else(|| {
                        (
                            Step::Build,
                            MdError::Vanished {
                                label: label.to_string(),
                            }
                            .into(),
                        )
                    })?;
                    let kname = array.kname.clone();
                    if let Some(Undo::StopArray {
                        kname: k, expect, ..
                    }) = undo.last_mut()
                    {
                        *k = Some(kname.clone());
                        expect.devnum = array.devnum.clone();
                    }
                    md::ensure_label_link(&self.sys, label, &kname)
                        .map_err(|e| (Step::Build, e.into()))?;
                    md::set_speed_limits(
                        &self.sys,
                        &kname,
                        self.config.md.sync_speed_min,
                        self.config.md.sync_speed_max,
                    )
                    .map_err(|e| (Step::Build, e.into()))?;
                    if let Some(m) = att.mirror.as_mut() {
                        m.kname = Some(kname.clone());
                        m.devnum = array.devnum.clone();
                    }
                    self.store
                        .save(w.key, att)
                        .map_err(|e| (Step::State, e.into()))?;
                }
                // The iSCSI copy is the source: the local leg joins and is
                // overwritten; or the local copy is: the iSCSI leg joins
                // write-mostly and is overwritten.
                // Built in sync with the array (zero-copy).
                Action::Add {
                    leg: Source::Local(_),
                    ..
                } if verdict.in_sync => {}
                Action::Add { label, leg } => {
                    let (dev, write_mostly) = match leg {
                        Source::Local(p) => (p, false),
                        Source::Iscsi => (iscsi_dev.as_ref().expect("the iSCSI leg first"), true),
                    };
                    self.mdadm()
                        .add(label, dev, write_mostly)
                        .map_err(|e| (Step::AddLocal, e.into()))?;
                }
                Action::LocalLater { local, deferred } => {
                    if *deferred {
                        tracing::info!(spec = %w.spec, local = %local.display(), "local leg joins later (incoming migration)");
                    } else {
                        tracing::info!(spec = %w.spec, local = %local.display(), "local leg held back until the caller's other disks are attached");
                    }
                    if let Some(m) = att.mirror.as_mut() {
                        m.local_pending = true;
                    }
                }
                Action::HandOut { label: Some(label) } => {
                    device = Some(md::label_path(label));
                }
                Action::HandOut { label: None } => {
                    // Let udev make its links (by-path, by-id) before a caller
                    // such as libvirt looks for them.
                    self.settle();
                    device = iscsi_dev.clone();
                }
            }
        }
        Ok(device.expect("every list ends with the hand-out"))
    }

    /// Tell the caller which copy this attach builds from (the local leg
    /// when its record says it holds writes the iSCSI disk lacks, else the
    /// seed's rule: the iSCSI copy overwrites the local one), and about an
    /// earlier use of the label that did not end cleanly.
    fn tell_source(
        &self,
        spec: &Spec,
        local: Option<&volume::Volume>,
        open: Option<&OpenRecord>,
        verdict: &Verdict,
    ) {
        let Some(label) = &spec.label else {
            return;
        };
        let label = label.as_str();
        let newer = verdict
            .own
            .as_ref()
            .and_then(|k| Some((&k.copy, k.copy.newer.as_ref()?)));
        let why = match newer {
            Some((c, n)) if verdict.trust_local => format!(
                "trusting the local leg {}: {} ({}); resyncing local -> iSCSI",
                local.map_or(&c.local, |v| &v.path).display(),
                n.reason,
                when(n.since)
            ),
            _ if spec.target.is_none() => {
                "the iSCSI leg is MISSING: the local leg is used alone".to_string()
            }
            _ if local.is_none() => {
                "the local leg is MISSING: the iSCSI disk is used alone".to_string()
            }
            _ => "trusting the iSCSI disk (no record of its leg failing); the local leg is resynced from it".to_string(),
        };
        let shown = spec.to_string();
        if let Some(o) = open {
            let what = if o.boot_id != self.sys.boot_id() {
                format!(
                    "the last attach of {label} ({}, {}) was never detached: the host went down with it",
                    o.spec,
                    when(o.since)
                )
            } else {
                format!(
                    "an earlier attach or detach of {label} ({}) did not finish",
                    when(o.since)
                )
            };
            self.notice(&shown, format!("{what}; {why}"));
        } else if verdict.trust_local {
            self.notice(&shown, why);
        }
    }

    /// The write-intent bitmap for a new mirror, when configured and the
    /// platform supports it (a stale file from an earlier array is removed:
    /// md would trust its clean bits).
    fn bitmap_for(&self, spec: &Spec, label: &str, size: u64) -> Option<Bitmap> {
        if !self.config.md.bitmap {
            return None;
        }
        let file = self.durable.bitmap(label);
        if let Err(why) = md::bitmap_support(&self.mdadm(), &self.durable.bitmap_dir()) {
            tracing::info!(spec = %spec, why, "no write-intent bitmap: a heal resyncs the whole disk");
            return None;
        }
        if let Err(e) = remove_file(&file) {
            tracing::warn!(spec = %spec, error = %e, "cannot remove a stale bitmap file; no bitmap");
            return None;
        }
        Some(Bitmap::for_size(file, size))
    }
}

/// The record of an attach of `spec` before it changes anything.
fn attaching(
    spec: &Spec,
    local_path: Option<PathBuf>,
    local: Option<&volume::Volume>,
) -> Attachment {
    Attachment {
        spec: spec.to_string(),
        phase: Phase::Attaching,
        device: None,
        iscsi: None,
        mirror: spec.label.as_ref().map(|l| Mirror {
            label: l.to_string(),
            kname: None,
            local: local_path,
            local_pending: false,
            bitmap: None,
            devnum: None,
            local_devnum: local.as_ref().map(|v| v.devnum.clone()),
            local_id: local.as_ref().map(|v| v.id.clone()),
            size: None,
        }),
    }
}

/// The local leg that joins the array right after it is built, if any.
fn local_joining(steps: &[Action]) -> Option<&Path> {
    steps.iter().find_map(|s| match s {
        Action::Add {
            leg: Source::Local(p),
            ..
        } => Some(p.as_path()),
        _ => None,
    })
}

/// The spec's LUN as known before login: its address.
fn spec_lun(spec: &Spec) -> Option<LunId> {
    spec.target.as_ref().map(|t| LunId {
        target: t.to_string(),
        lun: spec.lun,
        wwid: None,
    })
}

mod plan;
#[cfg(test)]
mod tests;
