//! Attach (and its dry-run plan): input checks first, then the iSCSI leg,
//! then the mirror; every step that changes the host pushes its undo.
use std::path::PathBuf;

use super::array::Expected;
use super::copies::{Asked, Verdict};
use super::undo::Undo;
use super::{key_of, lun_of, remove_file, when, AttachOptions, Cause, DiskError, Engine, Step};
use crate::iscsi;
use crate::labels::{LabelTable, LocalDevice};
use crate::lock::file_key;
use crate::md::{self, Bitmap, Leg, MdError};
use crate::spec::Spec;
use crate::state::{self, Attachment, LunId, Mirror, OpenRecord, Phase};
use crate::volume;

/// What a spec asks for, from the label table and the local volume.
struct Inputs {
    /// The local leg's path, unless MISSING.
    local_path: Option<PathBuf>,
    /// The local leg resolved.
    local: Option<volume::Volume>,
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
    /// array exists, the local volume is in use, another attachment
    /// (finished or still logging in) has the LUN.
    fn conflicts(
        &self,
        spec: &Spec,
        key: &str,
        local: Option<&volume::Volume>,
    ) -> Result<(), (Step, Cause)> {
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
        if let Some(v) = local {
            volume::check_unused(&self.sys, v).map_err(|e| (Step::LocalVolume, e.into()))?;
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
            Some(_) => {}
            None => self
                .conflicts(spec, &key, inputs.local.as_ref())
                .map_err(fail)?,
        }
        self.judge_copies(&Asked {
            spec,
            local: inputs.local.as_ref(),
            lun: spec_lun(spec),
            lun_size: None,
            defer_local: opts.defer_local,
        })
        .map(|_| ())
        .map_err(fail)
    }

    /// The ordered plan of `attach` (for `--dry-run`): one line per command
    /// or sysfs write it would do. Changes nothing.
    pub fn plan(&self, spec: &Spec) -> Result<Vec<String>, DiskError> {
        let shown = spec.to_string();
        let fail = |(step, cause)| DiskError::new("attach", &shown, step, cause);
        let local = self.local_leg(spec).map_err(fail)?;
        if spec.target.is_none() && local.is_none() && spec.label.is_some() {
            return Err(fail((Step::LocalVolume, Cause::BothMissing)));
        }
        let mut p = Vec::new();
        if let Some(l) = &local {
            p.push(format!(
                "check {} is an unused block device (exclusive open, sysfs holders)",
                l.display()
            ));
        }
        if let Some(t) = &spec.target {
            let t = t.as_str();
            match iscsi::session_of(&self.sys, t).filter(|s| s.state == "LOGGED_IN") {
                Some(s) => p.push(format!("reuse session {} to {t}", s.sid)),
                None => {
                    let portal = iscsi::node_portals(&self.sys, t).into_iter().next();
                    let portal = match portal {
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
                    };
                    p.push(format!(
                        "set node.session.scan = manual, node.startup = manual and the session timeouts in the node record of {t} at {portal} (under open-iscsi's lock)"
                    ));
                    if self
                        .config
                        .chap_for(spec.target.as_ref().expect("checked"))
                        .ok()
                        .flatten()
                        .is_some()
                    {
                        p.push(format!("set node.session.auth.authmethod = CHAP and the usernames in the node record of {t} at {portal}"));
                        p.push(format!("write CHAP secrets into the node record of {t} at {portal} (never on a command line)"));
                    }
                    p.push(format!("iscsiadm -m node -T {t} -p {portal} --login"));
                }
            }
            p.push(format!(
                "echo '- - {}' > /sys/class/scsi_host/hostN/scan",
                spec.lun
            ));
            p.push(format!(
                "wait for the block device of LUN {} (uevents, {}s)",
                spec.lun,
                self.config.timeouts.device.as_secs()
            ));
        }
        if let Some(label) = &spec.label {
            // Pinned: the LUN's size, or the one recorded for the local volume.
            let mut legs = vec![
                match &spec.target {
                    Some(_) => "--size=LUN_KIB",
                    None => "--size=RECORDED_KIB",
                }
                .to_string(),
                "missing".to_string(),
            ];
            match &spec.target {
                Some(_) => legs.push("--write-mostly ISCSI_DEV".into()),
                None => legs.push(
                    local
                        .as_ref()
                        .map(|l| l.display().to_string())
                        .unwrap_or_default(),
                ),
            }
            p.push(format!(
                "mdadm --build /dev/md/{label} --level=1 --raid-devices=2 {}",
                legs.join(" ")
            ));
            if let (Some(_), Some(l)) = (&spec.target, &local) {
                p.push(format!("mdadm /dev/md/{label} --add {}", l.display()));
            }
            p.push(format!("hand out /dev/md/{label}"));
        } else {
            p.push("hand out the LUN's block device".to_string());
        }
        Ok(p)
    }

    /// Attach `spec`; returns the device to hand to the hypervisor.
    pub fn attach(&self, spec: &Spec) -> Result<PathBuf, DiskError> {
        self.attach_with(spec, AttachOptions::default())
    }

    /// Attach with options (see [`AttachOptions`]).
    pub fn attach_with(&self, spec: &Spec, opts: AttachOptions) -> Result<PathBuf, DiskError> {
        let key = key_of(spec);
        let mut undo: Vec<Undo> = Vec::new();
        let r = self.attach_steps(spec, &key, opts, &mut undo);
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
    ) -> Result<PathBuf, (Step, Cause)> {
        // Input first: nothing is touched until the table and volume check out.
        let Inputs { local_path, local } = self.inputs(spec)?;

        let _key_lock = self.key_lock(key).map_err(|e| (Step::Lock, e))?;
        // Every spec naming a target takes its LUN's lock, mirrored or not:
        // `lun1@T+L` and `lun1@T` must not both get the disk.
        let _lun_lock = match &spec.target {
            Some(t) => Some(
                self.lun_lock(t.as_str(), spec.lun)
                    .map_err(|e| (Step::Lock, e))?,
            ),
            None => None,
        };

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
                if let Some(dev) = a.device.clone().filter(|d| self.sys.exists(d)) {
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
        self.conflicts(spec, key, local.as_ref())?;
        // What the records refuse already, before anything is touched.
        self.judge_copies(&Asked {
            spec,
            local: local.as_ref(),
            lun: spec_lun(spec),
            lun_size: None,
            defer_local: opts.defer_local,
        })?;

        let mut att = Attachment {
            spec: spec.to_string(),
            phase: Phase::Attaching,
            device: None,
            iscsi: None,
            mirror: spec.label.as_ref().map(|l| Mirror {
                label: l.to_string(),
                kname: None,
                local: local_path.clone(),
                local_pending: false,
                bitmap: None,
                devnum: None,
                local_devnum: local.as_ref().map(|v| v.devnum.clone()),
                local_id: local.as_ref().map(|v| v.id.clone()),
                size: None,
            }),
        };
        self.store
            .save(key, &att)
            .map_err(|e| (Step::State, e.into()))?;
        undo.push(Undo::RemoveState(key.to_string()));

        // iSCSI leg.
        let iscsi_dev = match &spec.target {
            Some(t) => {
                let leg = self.iscsi_leg(key, t, spec.lun, undo)?;
                let dev = PathBuf::from(format!("/dev/{}", leg.kname));
                att.iscsi = Some(leg);
                self.store
                    .save(key, &att)
                    .map_err(|e| (Step::State, e.into()))?;
                Some(dev)
            }
            None => None,
        };
        // The records again, with the LUN's wwid and size: which copy is
        // the source, and the array's size.
        let lun = att.iscsi.as_ref().map(|i| LunId {
            target: i.target.clone(),
            lun: i.lun,
            wwid: i.wwid.clone(),
        });
        let verdict = self.judge_copies(&Asked {
            spec,
            local: local.as_ref(),
            lun: lun.clone(),
            lun_size: att.iscsi.as_ref().map(|i| i.size),
            defer_local: opts.defer_local,
        })?;
        let trust_local = verdict.trust_local;
        if let (Some(v), Some(leg)) = (&local, &att.iscsi) {
            // The local leg joins an array of the LUN's size (a source
            // local leg was checked against the disk the VM used).
            if !trust_local {
                volume::check_size(v, leg.size).map_err(|e| (Step::Size, e.into()))?;
            }
        }
        self.tell_source(spec, local.as_ref(), open.as_ref(), &verdict);

        // The mirror.
        let device = match &spec.label {
            None => {
                // Let udev make its links (by-path, by-id) before a caller
                // such as libvirt looks for them.
                self.settle();
                iscsi_dev
                    .clone()
                    .expect("a spec without label has a target")
            }
            Some(label) => {
                let label = label.as_str();
                let mut legs = vec![Leg::Missing];
                match (&iscsi_dev, &local) {
                    // The local copy is the source: the iSCSI leg joins later.
                    (Some(_), Some(v)) if trust_local => legs.push(Leg::Normal(v.path.clone())),
                    (Some(d), _) => legs.push(Leg::WriteMostly(d.clone())),
                    (None, Some(v)) => legs.push(Leg::Normal(v.path.clone())),
                    (None, None) => unreachable!("checked above"),
                }
                self.durable
                    .set_open(&OpenRecord {
                        label: label.to_string(),
                        spec: spec.to_string(),
                        boot_id: self.sys.boot_id(),
                        since: state::now(),
                    })
                    .map_err(|e| (Step::State, e.into()))?;
                undo.push(Undo::RestoreOpen(label.to_string(), open.clone()));
                let size = verdict
                    .size
                    .expect("known after the scan, or without an iSCSI leg");
                if let Some(m) = att.mirror.as_mut() {
                    m.size = Some(size);
                }
                if let Some(v) = &local {
                    // Before the array exists: its size, its LUN, and (the
                    // iSCSI leg MISSING) that every write from now on
                    // reaches the local leg only.
                    self.record_copy(spec, v, &verdict, lun.as_ref(), undo)?;
                }
                // Only for an array built from the LUN alone, which has
                // the LUN's size without `--size` (see Mdadm::build). Built
                // from the local leg it has none: its first resync is full
                // anyway, and so is a heal while it lasts.
                let bitmap = match (&iscsi_dev, &local) {
                    (Some(_), Some(_)) if !opts.defer_local && !trust_local => {
                        self.bitmap_for(spec, label, size)
                    }
                    _ => None,
                };
                let pin = |bitmap: Option<&Bitmap>| bitmap.is_none().then_some(size / 1024);
                if let Some(stale) = self.sys.link_name(md::label_path(label)) {
                    // A link left by an array stopped without udev would confuse mdadm.
                    md::remove_stale_nodes(&self.sys, label, &stale)
                        .map_err(|e| (Step::Build, e.into()))?;
                }
                // What the array must be made of: found and stopped by
                // that, never by its name alone.
                let expect = Expected::of(&self.sys, &att).expect("a mirror");
                {
                    // No lock of ours: mdadm --build picks the free minor and
                    // creates the array under its own map lock
                    // (/run/mdadm/map.lock); builds of different labels overlap.
                    undo.push(Undo::StopArray {
                        kname: None,
                        expect: expect.clone(),
                        bitmap: Some(self.durable.bitmap(label)),
                    });
                    let built =
                        self.mdadm()
                            .build(label, &legs, bitmap.as_ref(), pin(bitmap.as_ref()));
                    match (built, &bitmap) {
                        (Ok(()), Some(b)) => {
                            if let Some(m) = att.mirror.as_mut() {
                                m.bitmap = Some(b.file.clone());
                            }
                        }
                        (Ok(()), None) => {}
                        (Err(e), Some(b)) => {
                            // Kernels built without bitmap file support refuse it here.
                            tracing::warn!(spec = %spec, error = %e, "mdadm --build with a write-intent bitmap failed; building without (a heal will resync fully)");
                            if let Some(half) = self.array_of_legs(label, &legs) {
                                self.stop_array(&half.kname, &expect)
                                    .map_err(|e| (Step::Build, e.into()))?;
                            }
                            remove_file(&b.file).map_err(|e| (Step::Build, e.into()))?;
                            self.mdadm()
                                .build(label, &legs, None, pin(None))
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
                    .save(key, &att)
                    .map_err(|e| (Step::State, e.into()))?;
                if let (Some(_), Some(v)) = (&iscsi_dev, &local) {
                    if opts.defer_local {
                        tracing::info!(spec = %spec, local = %v.path.display(), "local leg joins later (incoming migration)");
                        if let Some(m) = att.mirror.as_mut() {
                            m.local_pending = true;
                        }
                    } else if trust_local {
                        // The local copy is the source: the iSCSI leg joins write-mostly and is overwritten.
                        self.mdadm()
                            .add(label, iscsi_dev.as_ref().expect("matched"), true)
                            .map_err(|e| (Step::AddLocal, e.into()))?;
                    } else if opts.hold_local {
                        tracing::info!(spec = %spec, local = %v.path.display(), "local leg held back until the caller's other disks are attached");
                        if let Some(m) = att.mirror.as_mut() {
                            m.local_pending = true;
                        }
                    } else {
                        // The iSCSI copy is the source: the local leg joins and is overwritten.
                        self.mdadm()
                            .add(label, &v.path, false)
                            .map_err(|e| (Step::AddLocal, e.into()))?;
                    }
                }
                md::label_path(label)
            }
        };
        att.phase = Phase::Attached;
        att.device = Some(device.clone());
        self.store
            .save(key, &att)
            .map_err(|e| (Step::State, e.into()))?;
        tracing::info!(spec = %spec, device = %device.display(), "attached");
        Ok(device)
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

/// The spec's LUN as known before login: its address.
fn spec_lun(spec: &Spec) -> Option<LunId> {
    spec.target.as_ref().map(|t| LunId {
        target: t.to_string(),
        lun: spec.lun,
        wwid: None,
    })
}
