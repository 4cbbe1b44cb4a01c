//! The local copies' records ([`LocalCopy`]): for every local volume that
//! has been a mirror's leg, keyed by its identity (dm UUID, not the label
//! or path that named it), the LUN it mirrors (target, LUN, wwid), the
//! size of the disk the VM saw, and whether it holds writes that LUN
//! lacks. Attach reads them to choose the source copy and the array's
//! size, and refuses what would overwrite newer data or shrink a disk.
use std::path::{Path, PathBuf};

use super::undo::Undo;
use super::{when, BehindConflict, Cause, Engine, NewerConflict, ShrinkConflict, Step};
use crate::spec::Spec;
use crate::state::{Attachment, LocalCopy, LocalNewer, LunId, Newer, StateError};
use crate::volume::{self, Volume};

/// The reason recorded when the iSCSI leg is MISSING: earlier versions
/// built such an array from the local volume alone, at its full size.
const MISSING_REASON: &str = "iSCSI leg MISSING";

/// The reason recorded while the iSCSI disk is copied onto the volume.
const RESYNC_REASON: &str = "copy from the iSCSI disk not seen to end";

/// A local copy's record as read: its file, with any earlier version's
/// label-keyed records of the same volume merged in.
#[derive(Debug, Clone)]
pub(super) struct Known {
    /// The merged record.
    pub copy: LocalCopy,
    /// The file's own content (None: only earlier versions' records).
    pub stored: Option<LocalCopy>,
    /// Where it is kept.
    pub file: PathBuf,
    /// Earlier versions' records of this volume, with their files.
    pub legacy: Vec<(PathBuf, LocalNewer)>,
}

impl Known {
    /// The files that record its newer data, for messages.
    fn files(&self) -> String {
        let mut f: Vec<String> = self
            .legacy
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect();
        if self.stored.is_some() || f.is_empty() {
            f.insert(0, self.file.display().to_string());
        }
        f.join(" and ")
    }

    /// Whether this is the record of volume `id` at `path`.
    fn is(&self, id: &str, path: &Path) -> bool {
        is_volume(&self.copy, id, path)
    }
}

/// A device-number identity (`dev:MAJ:MIN`, a volume with neither dm UUID
/// nor wwid) names another device after a reboot: it counts only together
/// with the path recorded.
fn is_volume(c: &LocalCopy, id: &str, path: &Path) -> bool {
    c.local_id == id && (!id.starts_with("dev:") || c.local == path)
}

/// This attach, as the records see it.
#[derive(Debug)]
pub(super) struct Asked<'a> {
    /// The spec.
    pub spec: &'a Spec,
    /// The local leg, unless MISSING.
    pub local: Option<&'a Volume>,
    /// The spec's LUN; its wwid once scanned.
    pub lun: Option<LunId>,
    /// The LUN's size in bytes, once scanned.
    pub lun_size: Option<u64>,
    /// An incoming migration ([`super::AttachOptions::defer_local`]).
    pub defer_local: bool,
}

/// What the records decide for an attach.
#[derive(Debug, Clone)]
pub(super) struct Verdict {
    /// Build from the local leg: it holds writes this LUN lacks.
    pub trust_local: bool,
    /// The array's size in bytes (a whole number of KiB, as `mdadm
    /// --size` takes it); None before the LUN is scanned.
    pub size: Option<u64>,
    /// The local volume's record as it was.
    pub own: Option<Known>,
    /// Both legs are known equal: the array is built in sync (set by the
    /// disk's record, [`super::generations`]).
    pub in_sync: bool,
}

/// What this attach would do to another copy's newer data.
fn instead(asked: &Asked<'_>) -> String {
    match (&asked.spec.label, asked.local) {
        (None, _) => "this attach would hand the VM the iSCSI disk alone".to_string(),
        (Some(_), None) => "the label table makes that leg MISSING".to_string(),
        (Some(_), Some(v)) => format!("the label table now names {}", v.path.display()),
    }
}

fn newer_conflict(k: &Known, what: String, fix: String) -> Cause {
    let n = k.copy.newer.as_ref().expect("a newer record");
    Cause::LocalIsNewer(Box::new(NewerConflict {
        label: k.copy.label.clone(),
        local: k.copy.local.clone(),
        lun: k.copy.lun.as_ref().map(|l| l.to_string()),
        record: k.files(),
        reason: format!("{}, {}", n.reason, when(n.since)),
        what,
        fix,
    }))
}

/// Refuse making a volume that lacks its LUN's data the disk's copy.
fn behind_conflict(k: &Known, what: &str) -> (Step, Cause) {
    let b = k.copy.behind.as_ref().expect("a behind record");
    (
        Step::LocalVolume,
        Cause::LocalIsBehind(Box::new(BehindConflict {
            label: k.copy.label.clone(),
            local: k.copy.local.clone(),
            lun: k.copy.lun.as_ref().map(|l| l.to_string()),
            record: k.files(),
            reason: format!("{}, {}", b.reason, when(b.since)),
            what: what.to_string(),
        })),
    )
}

/// Decide an attach from the records `known`: which copy is the source,
/// how large the array is, or why it is refused. Refused: this local
/// volume holds newer data of another LUN; another local volume holds
/// newer data of this LUN (or, where a LUN is not known on both sides, of
/// this label); an incoming migration meets newer local data; the LUN (or
/// the local volume) is smaller than the disk the VM already used.
pub(super) fn judge(known: &[Known], asked: &Asked<'_>) -> Result<Verdict, (Step, Cause)> {
    let own = asked
        .local
        .and_then(|v| known.iter().find(|k| k.is(&v.id, &v.path)))
        .cloned();
    let mut trust_local = false;
    if let Some(k) = own.as_ref().filter(|k| k.copy.newer.is_some()) {
        if let Some(want) = &asked.lun {
            if let Some(has) = k.copy.lun.as_ref().filter(|has| !has.same(want)) {
                return Err((
                    Step::LocalVolume,
                    newer_conflict(
                        k,
                        format!("this attach names {want}, whose copy would overwrite it"),
                        format!("attach it with {has}, or delete that file to let {want} overwrite those writes"),
                    ),
                ));
            }
            if asked.defer_local {
                return Err((
                    Step::LocalVolume,
                    newer_conflict(
                        k,
                        "an incoming migration brings a VM that ran elsewhere on the iSCSI copy, which lacks these writes: starting it would be a split brain".to_string(),
                        "start the VM on this host instead (the newer data is here), or delete that file to accept the iSCSI copy".to_string(),
                    ),
                ));
            }
            trust_local = true;
        }
    }
    // A volume whose copy from the iSCSI disk never ended holds part of
    // the disk: neither the VM's only copy nor a source.
    if let Some(k) = own.as_ref().filter(|k| k.copy.behind.is_some()) {
        if asked.spec.target.is_none() {
            return Err(behind_conflict(
                k,
                "the MISSING target would make it the VM's only copy",
            ));
        }
        if trust_local {
            return Err(behind_conflict(
                k,
                "it also holds writes the iSCSI disk lacks: neither copy is whole",
            ));
        }
    }
    // The LUN this attach's data belongs to: the spec's or, with a MISSING
    // target, the one the local volume mirrors.
    let this_lun = asked
        .lun
        .as_ref()
        .or_else(|| own.as_ref().and_then(|k| k.copy.lun.as_ref()));
    let label = asked.spec.label.as_ref().map(|l| l.as_str());
    for k in known.iter().filter(|k| k.copy.newer.is_some()) {
        if asked.local.is_some_and(|v| k.is(&v.id, &v.path)) {
            continue;
        }
        let same_lun = match (this_lun, &k.copy.lun) {
            (Some(a), Some(b)) => Some(b.same(a)),
            _ => None,
        };
        let same_label =
            label.is_some_and(|l| k.copy.label == l || k.legacy.iter().any(|(_, n)| n.label == l));
        if same_lun == Some(true) || (same_lun.is_none() && same_label) {
            return Err((
                Step::LocalVolume,
                newer_conflict(
                    k,
                    instead(asked),
                    "put that volume back in the label table, or delete that file to accept the iSCSI copy".to_string(),
                ),
            ));
        }
    }
    let recorded = own.as_ref().and_then(|k| k.copy.size);
    let shrink = |device: String, size: u64, used: u64, fix: String| {
        (
            Step::Size,
            Cause::WouldShrink(Box::new(ShrinkConflict {
                device,
                size,
                used,
                record: own.as_ref().map(Known::files).unwrap_or_default(),
                fix,
            })),
        )
    };
    // The local volume must hold the disk the VM used.
    let local_holds = |used: u64| match asked.local.filter(|v| v.size < used) {
        Some(v) => Err(shrink(
            format!("local volume {}", v.path.display()),
            v.size,
            used,
            format!("grow it back to at least {used} bytes"),
        )),
        None => Ok(()),
    };
    let size = match (&asked.lun, asked.lun_size) {
        (Some(want), Some(lun_size)) if trust_local => {
            // The disk the VM saw; an earlier version's record did not
            // know it, and its array had the LUN's size.
            let used = recorded.unwrap_or(lun_size);
            if used > lun_size {
                return Err(shrink(
                    want.to_string(),
                    lun_size,
                    used,
                    format!("the local leg's writes past its end could never be copied onto it; grow the LUN to at least {used} bytes, or delete that file to accept the iSCSI copy"),
                ));
            }
            local_holds(used)?;
            Some(used)
        }
        (Some(want), Some(lun_size)) => {
            let mirrored = own
                .as_ref()
                .and_then(|k| k.copy.lun.as_ref())
                .is_some_and(|l| l.same(want));
            if let Some(used) = recorded.filter(|u| mirrored && *u > lun_size) {
                return Err(shrink(
                    want.to_string(),
                    lun_size,
                    used,
                    format!("grow it back to at least {used} bytes, or delete that file to accept the smaller disk"),
                ));
            }
            Some(lun_size)
        }
        (Some(_), None) => None,
        (None, _) => match asked.local {
            // The iSCSI leg MISSING: the disk the VM had, else (never
            // attached) the local volume's size, recorded so that a
            // smaller LUN is refused later.
            Some(v) => {
                let used = recorded.unwrap_or(v.size);
                local_holds(used)?;
                Some(used)
            }
            None => None,
        },
    };
    Ok(Verdict {
        trust_local,
        size: size.map(|s| s / 1024 * 1024),
        own,
        in_sync: false,
    })
}

/// The identity of an attachment's local leg: recorded, else its path's
/// now (an attachment of an earlier version), else the path itself (an
/// identity no volume has: only its label and LUN still match).
fn local_id_of(engine: &Engine<'_>, recorded: Option<&String>, path: &Path) -> String {
    recorded
        .cloned()
        .or_else(|| volume::resolve(&engine.sys, path).ok().map(|v| v.id))
        .unwrap_or_else(|| format!("path:{}", path.display()))
}

impl Engine<'_> {
    /// Every local copy's record, earlier versions' label-keyed ones
    /// merged in by the identity their path resolves to now.
    pub(super) fn known_copies(&self) -> Result<Vec<Known>, StateError> {
        let mut out: Vec<Known> = self
            .durable
            .all_copies()?
            .into_iter()
            .map(|(file, c)| Known {
                copy: c.clone(),
                stored: Some(c),
                file,
                legacy: Vec::new(),
            })
            .collect();
        for (file, n) in self.durable.all_newer()? {
            let v = volume::resolve(&self.sys, &n.local).ok();
            let id = local_id_of(self, v.as_ref().map(|v| &v.id), &n.local);
            let newer = Newer {
                since: n.since,
                reason: n.reason.clone(),
                spec: n.spec.clone(),
            };
            let lun = n.spec.parse::<Spec>().ok().and_then(|s| {
                s.target.map(|t| LunId {
                    target: t.to_string(),
                    lun: s.lun,
                    wwid: None,
                })
            });
            match out.iter_mut().find(|k| k.is(&id, &n.local)) {
                Some(k) => {
                    k.copy.newer.get_or_insert(newer);
                    if k.copy.lun.is_none() {
                        k.copy.lun = lun;
                    }
                    k.legacy.push((file, n));
                }
                None => out.push(Known {
                    copy: LocalCopy {
                        local_id: id.clone(),
                        local: n.local.clone(),
                        label: n.label.clone(),
                        spec: n.spec.clone(),
                        lun,
                        // Earlier versions built from the local leg alone
                        // only with a MISSING target, at its full size;
                        // their other arrays had the LUN's size.
                        size: v.filter(|_| n.reason == MISSING_REASON).map(|v| v.size),
                        newer: Some(newer),
                        behind: None,
                        clean_at: None,
                    },
                    stored: None,
                    file: self.durable.copy_path(&id),
                    legacy: vec![(file, n)],
                }),
            }
        }
        Ok(out)
    }

    /// [`judge`] on the records as they are now.
    pub(super) fn judge_copies(&self, asked: &Asked<'_>) -> Result<Verdict, (Step, Cause)> {
        let known = self.known_copies().map_err(|e| (Step::State, e.into()))?;
        judge(&known, asked)
    }

    /// Write the record of this attach's local volume before its array is
    /// built: the LUN it now mirrors, the array's size, and whether it is
    /// newer (kept until seen in sync; set when the iSCSI leg is MISSING).
    /// Earlier versions' records of the volume are folded into it.
    pub(super) fn record_copy(
        &self,
        spec: &Spec,
        local: &Volume,
        verdict: &Verdict,
        lun: Option<&LunId>,
        undo: &mut Vec<Undo>,
    ) -> Result<(), (Step, Cause)> {
        let state = |e: StateError| (Step::State, Cause::from(e));
        let prior = verdict.own.as_ref();
        let newer = match prior.and_then(|k| k.copy.newer.clone()) {
            Some(n) => Some(n),
            None if spec.target.is_none() => Some(Newer::now(MISSING_REASON, &spec.to_string())),
            None => None,
        };
        // The iSCSI disk overwrites this volume: until seen in sync, it
        // holds only part of it.
        let behind = match prior.and_then(|k| k.copy.behind.clone()) {
            Some(b) => Some(b),
            None if spec.target.is_some() && !verdict.trust_local && !verdict.in_sync => {
                Some(Newer::now(RESYNC_REASON, &spec.to_string()))
            }
            None => None,
        };
        let copy = LocalCopy {
            local_id: local.id.clone(),
            local: local.path.clone(),
            label: spec
                .label
                .as_ref()
                .map(|l| l.to_string())
                .unwrap_or_default(),
            spec: spec.to_string(),
            lun: lun
                .cloned()
                .or_else(|| prior.and_then(|k| k.copy.lun.clone())),
            size: verdict.size,
            newer,
            behind,
            clean_at: None,
        };
        self.durable.set_copy(&copy).map_err(state)?;
        undo.push(Undo::RestoreCopy(
            local.id.clone(),
            prior.and_then(|k| k.stored.clone()),
        ));
        for (_, n) in prior.map(|k| k.legacy.as_slice()).unwrap_or_default() {
            self.durable.clear_newer(&n.label).map_err(state)?;
            undo.push(Undo::RestoreNewer(n.label.clone(), Some(n.clone())));
        }
        Ok(())
    }

    /// Remove the temporary file a call killed while writing the record of
    /// `a`'s local volume left (the record itself stays).
    pub(super) fn tidy_copy_of(&self, a: &Attachment) -> Result<(), StateError> {
        match a.mirror.as_ref().and_then(|m| m.local_id.as_ref()) {
            Some(id) => self.durable.tidy_copy(id),
            None => Ok(()),
        }
    }

    /// Record `size` as the size of the disk the VM has, in the record of
    /// an attachment's local copy (after `grow`: a later attach must never
    /// build the array smaller). Nothing without a local leg or a record.
    pub(super) fn record_size(&self, a: &Attachment, size: u64) -> Result<(), StateError> {
        let Some((m, local)) = a.mirror.as_ref().and_then(|m| Some((m, m.local.clone()?))) else {
            return Ok(());
        };
        let id = local_id_of(self, m.local_id.as_ref(), &local);
        let Some(own) = self.known_copies()?.into_iter().find(|k| k.is(&id, &local)) else {
            return Ok(());
        };
        let mut copy = own.copy;
        copy.size = Some(size);
        self.durable.set_copy(&copy)
    }

    /// Keep the record of an attachment's local copy in line with what its
    /// legs say (`seen`). True when the record changed.
    pub(super) fn record_legs(&self, a: &Attachment, seen: Seen<'_>) -> Result<bool, StateError> {
        let Some((m, local)) = a.mirror.as_ref().and_then(|m| Some((m, m.local.clone()?))) else {
            return Ok(false);
        };
        let id = local_id_of(self, m.local_id.as_ref(), &local);
        let own = self.known_copies()?.into_iter().find(|k| k.is(&id, &local));
        let lun = a.iscsi.as_ref().map(|i| LunId {
            target: i.target.clone(),
            lun: i.lun,
            wwid: i.wwid.clone(),
        });
        let had = own.as_ref().map(|k| &k.copy);
        // A mark already set keeps its date and reason.
        let mark = |was: Option<&Newer>, reason: &str| {
            was.cloned().unwrap_or_else(|| Newer::now(reason, &a.spec))
        };
        let was_newer = had.and_then(|c| c.newer.as_ref());
        let was_behind = had.and_then(|c| c.behind.as_ref());
        let (newer, behind) = match seen {
            Seen::InSync => (None, None),
            Seen::Newer(r) => (Some(mark(was_newer, r)), None),
            Seen::Behind(r) => (was_newer.cloned(), Some(mark(was_behind, r))),
        };
        if newer.is_some() == was_newer.is_some() && behind.is_some() == was_behind.is_some() {
            return Ok(false);
        }
        let mut copy = match &own {
            Some(k) => k.copy.clone(),
            None => LocalCopy {
                local_id: id,
                local: local.clone(),
                label: m.label.clone(),
                spec: a.spec.clone(),
                lun: None,
                // An attachment of an earlier version: its array had the
                // LUN's size, or the local volume's without a LUN.
                size: m
                    .size
                    .or_else(|| a.iscsi.as_ref().map(|i| i.size))
                    .or_else(|| volume::resolve(&self.sys, &local).ok().map(|v| v.size)),
                newer: None,
                behind: None,
                clean_at: None,
            },
        };
        copy.lun = lun.or(copy.lun);
        copy.label = m.label.clone();
        copy.local = local;
        copy.spec = a.spec.clone();
        let cleared = newer.is_none();
        copy.newer = newer;
        copy.behind = behind;
        self.durable.set_copy(&copy)?;
        if cleared {
            for (_, n) in own.map(|k| k.legacy).unwrap_or_default() {
                self.durable.clear_newer(&n.label)?;
            }
        }
        Ok(true)
    }
}

/// What a mirror's legs say about its local copy, for its record.
#[derive(Debug, Clone, Copy)]
pub(super) enum Seen<'a> {
    /// Both legs in sync: the volume is a whole, current copy.
    InSync,
    /// The local leg holds writes the iSCSI leg lacks (why).
    Newer(&'a str),
    /// The local leg lacks data the iSCSI leg holds (what md says).
    Behind(&'a str),
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "iqn.2024-01.lab:t";

    fn vol(id: &str, path: &str, mib: u64) -> Volume {
        Volume {
            path: path.into(),
            kname: "dm-0".into(),
            size: mib << 20,
            devnum: "253:0".into(),
            id: id.into(),
        }
    }

    fn lun(n: u32, wwid: Option<&str>) -> LunId {
        LunId {
            target: T.into(),
            lun: n,
            wwid: wwid.map(str::to_string),
        }
    }

    fn known(id: &str, label: &str, lun: Option<LunId>, mib: u64, newer: bool) -> Known {
        let c = LocalCopy {
            local_id: id.into(),
            local: format!("/dev/vg/{label}").into(),
            label: label.into(),
            spec: format!("lun1@{T}+{label}"),
            lun,
            size: Some(mib << 20),
            newer: newer.then(|| Newer {
                since: 0,
                reason: "iSCSI leg faulty".into(),
                spec: format!("lun1@{T}+{label}"),
            }),
            behind: None,
            clean_at: None,
        };
        Known {
            copy: c.clone(),
            stored: Some(c),
            file: format!("/var/lib/iscsimple/copies/{id}.json").into(),
            legacy: Vec::new(),
        }
    }

    fn asked<'a>(
        spec: &'a Spec,
        local: Option<&'a Volume>,
        wwid: Option<&str>,
        lun_mib: Option<u64>,
        defer_local: bool,
    ) -> Asked<'a> {
        Asked {
            spec,
            local,
            lun: spec.target.as_ref().map(|t| LunId {
                target: t.to_string(),
                lun: spec.lun,
                wwid: wwid.map(str::to_string),
            }),
            lun_size: lun_mib.map(|m| m << 20),
            defer_local,
        }
    }

    fn spec(s: &str) -> Spec {
        s.parse().expect("spec")
    }

    fn refusal(r: Result<Verdict, (Step, Cause)>) -> String {
        r.expect_err("refused").1.to_string()
    }

    #[test]
    fn the_array_is_the_luns_size_not_the_local_volumes() {
        let a = vol("dm:LVM-a", "/dev/vg/a", 36);
        let s = spec(&format!("lun1@{T}+a"));
        let v = judge(&[], &asked(&s, Some(&a), Some("w1"), Some(32), false)).expect("ok");
        assert_eq!((v.trust_local, v.size), (false, Some(32 << 20)));
        // Newer local data: the disk the VM saw, the LUN's size.
        let k = known("dm:LVM-a", "a", Some(lun(1, Some("w1"))), 32, true);
        let v = judge(&[k], &asked(&s, Some(&a), Some("w1"), Some(32), false)).expect("ok");
        assert_eq!((v.trust_local, v.size), (true, Some(32 << 20)));
    }

    #[test]
    fn a_missing_target_keeps_the_recorded_size() {
        let a = vol("dm:LVM-a", "/dev/vg/a", 36);
        let s = spec("MISSING+a");
        let k = known("dm:LVM-a", "a", Some(lun(1, Some("w1"))), 32, false);
        let v = judge(&[k], &asked(&s, Some(&a), None, None, false)).expect("ok");
        assert_eq!(v.size, Some(32 << 20));
        // Never attached: the local volume's size, and a smaller LUN is
        // refused later.
        let v = judge(&[], &asked(&s, Some(&a), None, None, false)).expect("ok");
        assert_eq!(v.size, Some(36 << 20));
        let mut k = known("dm:LVM-a", "a", None, 36, true);
        k.copy.newer.as_mut().expect("newer").reason = MISSING_REASON.into();
        let s = spec(&format!("lun1@{T}+a"));
        let e = refusal(judge(
            &[k],
            &asked(&s, Some(&a), Some("w1"), Some(32), false),
        ));
        assert!(
            e.contains("has 33554432 bytes, fewer than the 37748736")
                && e.contains("could never be copied"),
            "{e}"
        );
    }

    #[test]
    fn a_lun_smaller_than_the_disk_the_vm_used_is_refused() {
        let a = vol("dm:LVM-a", "/dev/vg/a", 36);
        let s = spec(&format!("lun1@{T}+a"));
        let k = known("dm:LVM-a", "a", Some(lun(1, Some("w1"))), 32, false);
        let e = refusal(judge(
            std::slice::from_ref(&k),
            &asked(&s, Some(&a), Some("w1"), Some(16), false),
        ));
        assert!(e.contains("grow it back to at least 33554432 bytes"), "{e}");
        // Another disk at that address is another LUN: the seed's rule.
        let v = judge(&[k], &asked(&s, Some(&a), Some("w2"), Some(16), false)).expect("ok");
        assert_eq!((v.trust_local, v.size), (false, Some(16 << 20)));
    }

    #[test]
    fn the_record_follows_the_volume_not_the_label() {
        let a = vol("dm:LVM-a", "/dev/vg/renamed", 32);
        let k = known("dm:LVM-a", "old", Some(lun(1, Some("w1"))), 32, true);
        let s = spec(&format!("lun1@{T}+new"));
        let v = judge(
            std::slice::from_ref(&k),
            &asked(&s, Some(&a), None, None, false),
        )
        .expect("ok");
        assert!(v.trust_local, "renamed label and path, same volume");
        // Another volume named by the same label: refused.
        let b = vol("dm:LVM-b", "/dev/vg/old", 32);
        let s = spec(&format!("lun1@{T}+old"));
        let e = refusal(judge(
            std::slice::from_ref(&k),
            &asked(&s, Some(&b), None, None, false),
        ));
        assert!(e.contains("now names /dev/vg/old"), "{e}");
        // Another volume for the same LUN under any label, or MISSING, or
        // the LUN attached plain: refused.
        for (s, local) in [
            (spec(&format!("lun1@{T}+other")), Some(&b)),
            (spec(&format!("lun1@{T}+other")), None),
            (spec(&format!("lun1@{T}")), None),
        ] {
            let e = refusal(judge(
                std::slice::from_ref(&k),
                &asked(&s, local, None, None, false),
            ));
            assert!(e.contains("holds writes the iSCSI disk lacks"), "{s}: {e}");
        }
        // A MISSING target with a volume that mirrors that LUN: refused.
        let kb = known("dm:LVM-b", "other", Some(lun(1, Some("w1"))), 32, false);
        let s = spec("MISSING+other");
        let e = refusal(judge(
            &[k.clone(), kb],
            &asked(&s, Some(&b), None, None, false),
        ));
        assert!(e.contains("the local leg /dev/vg/old of old holds"), "{e}");
        // The newer volume attached with another LUN: refused.
        let s = spec(&format!("lun2@{T}+new"));
        let e = refusal(judge(
            std::slice::from_ref(&k),
            &asked(&s, Some(&a), None, None, false),
        ));
        assert!(e.contains("attach it with LUN 1 of"), "{e}");
        // Same address, another disk (wwid), once scanned: refused.
        let s = spec(&format!("lun1@{T}+new"));
        let e = refusal(judge(
            &[k],
            &asked(&s, Some(&a), Some("w9"), Some(32), false),
        ));
        assert!(e.contains("attach it with LUN 1 of"), "{e}");
    }

    #[test]
    fn a_copy_that_lacks_the_luns_data_is_never_the_only_one() {
        let a = vol("dm:LVM-a", "/dev/vg/a", 32);
        let mut k = known("dm:LVM-a", "a", Some(lun(1, Some("w1"))), 32, false);
        k.copy.behind = Some(Newer {
            since: 0,
            reason: RESYNC_REASON.into(),
            spec: format!("lun1@{T}+a"),
        });
        // MISSING would hand the VM part of its disk.
        let s = spec("MISSING+a");
        let e = refusal(judge(
            std::slice::from_ref(&k),
            &asked(&s, Some(&a), None, None, false),
        ));
        assert!(
            e.contains("lacks data the iSCSI disk holds") && e.contains("only copy"),
            "{e}"
        );
        // With its iSCSI leg: the copy goes on, from the LUN.
        let s = spec(&format!("lun1@{T}+a"));
        let v = judge(
            std::slice::from_ref(&k),
            &asked(&s, Some(&a), Some("w1"), Some(32), false),
        )
        .expect("ok");
        assert!(!v.trust_local);
        // Newer too (both copies lack something): never a source.
        k.copy.newer = known("dm:LVM-a", "a", None, 32, true).copy.newer;
        let e = refusal(judge(
            &[k],
            &asked(&s, Some(&a), Some("w1"), Some(32), false),
        ));
        assert!(e.contains("neither copy is whole"), "{e}");
    }

    #[test]
    fn an_incoming_migration_never_drops_newer_data() {
        let a = vol("dm:LVM-a", "/dev/vg/a", 32);
        let k = known("dm:LVM-a", "a", Some(lun(1, None)), 32, true);
        let s = spec(&format!("lun1@{T}+a"));
        let e = refusal(judge(
            std::slice::from_ref(&k),
            &asked(&s, Some(&a), None, None, true),
        ));
        assert!(
            e.contains("split brain") && e.contains("/var/lib/iscsimple/copies/dm:LVM-a.json"),
            "{e}"
        );
        let b = vol("dm:LVM-b", "/dev/vg/b", 32);
        let s = spec(&format!("lun1@{T}+b"));
        assert!(judge(&[k], &asked(&s, Some(&b), None, None, true)).is_err());
        let v = judge(&[], &asked(&s, Some(&b), None, None, true)).expect("no record");
        assert!(!v.trust_local);
    }

    #[test]
    fn a_device_number_identity_needs_its_path() {
        let k = known("dev:8:17", "a", Some(lun(1, None)), 32, true);
        let s = spec(&format!("lun1@{T}+a"));
        let same = vol("dev:8:17", "/dev/vg/a", 32);
        let other = vol("dev:8:17", "/dev/sdb1", 32);
        assert!(
            judge(
                std::slice::from_ref(&k),
                &asked(&s, Some(&same), None, None, false)
            )
            .expect("ok")
            .trust_local
        );
        assert!(judge(&[k], &asked(&s, Some(&other), None, None, false)).is_err());
    }
}
