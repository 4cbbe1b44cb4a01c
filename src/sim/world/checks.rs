//! Invariants over the whole simulated host, checked after every step.
use super::*;

fn private_tree(dir: &Path, v: &mut Vec<Violation>) {
    use std::os::unix::fs::PermissionsExt;
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(md) = fs::symlink_metadata(e.path()) else {
            continue;
        };
        let mode = md.permissions().mode() & 0o7777;
        if md.file_type().is_symlink() || mode & 0o022 != 0 {
            v.push(Violation {
                invariant: "the tool's files are private",
                detail: format!(
                    "{} has mode {mode:o}{}",
                    e.path().display(),
                    if md.file_type().is_symlink() {
                        " (a link)"
                    } else {
                        ""
                    }
                ),
            });
        }
        if md.is_dir() {
            private_tree(&e.path(), v);
        }
    }
}

pub(super) fn spec_is_missing_target(spec: &str) -> bool {
    crate::sim::model::spec_target(spec).is_none()
}

impl World {
    /// Whether spec's local volume holds writes of its disk the LUN lacks.
    pub(super) fn local_newer(&self, spec: &str) -> bool {
        let m = self.host.model();
        let Some(disk) = self.disk_of_locked(&m, spec) else {
            return false;
        };
        let Some(label) = spec.parse::<Spec>().ok().and_then(|s| s.label) else {
            return false;
        };
        let Some(local) = self
            .table_device(label.as_str())
            .and_then(|d| d.strip_prefix("/dev/vg/").map(str::to_string))
            .and_then(|n| m.locals.get(&n))
        else {
            return false;
        };
        local
            .data
            .iter()
            .any(|w| m.tags.get(w) == Some(&disk) && !m.luns[disk].data.contains(w))
    }

    /// Invariants over the whole host, after every step.
    pub(super) fn check(&mut self) {
        let mut m = self.host.model();
        let mut v = Vec::new();
        // One user per LUN: an array or a VM, never two.
        for (i, lun) in m.luns.iter().enumerate() {
            let disks: Vec<&str> = m
                .scsi
                .values()
                .filter(|s| s.lun == i)
                .map(|s| s.kname.as_str())
                .collect();
            let mut users = Vec::new();
            for k in &disks {
                for (mn, a) in &m.arrays {
                    if a.members
                        .iter()
                        .any(|x| x.kname == *k && x.state != MState::Faulty)
                    {
                        users.push(format!("md{mn}"));
                    }
                }
                if m.open_by_vm.contains(*k) {
                    users.push(format!("a VM on {k}"));
                }
            }
            if users.len() > 1 {
                v.push(Violation {
                    invariant: "one user per LUN",
                    detail: format!(
                        "LUN {} of {} used by {}",
                        lun.lun,
                        lun.target,
                        users.join(" and ")
                    ),
                });
            }
        }
        m.pair();
        // Files the tool makes are its own: no link, nothing others may write.
        for dir in [&self.config.state_dir, &self.config.run_dir] {
            private_tree(dir, &mut v);
        }
        m.violations.extend(v);
    }

    /// A VM handed a device reads every write of its disk that any copy
    /// here holds.
    pub(super) fn check_fresh(&self, m: &mut Model, spec: &str, k: &str) {
        let seen: Data = match m.dev(k) {
            Some(crate::sim::model::Dev::Md(n)) => {
                let a = &m.arrays[&n];
                let mut ins: Vec<_> = a
                    .members
                    .iter()
                    .filter(|x| x.state == MState::InSync)
                    .collect();
                ins.sort_by_key(|x| x.write_mostly);
                // No in-sync member: md fails every read, nothing stale is
                // read. A member whose LUN the filer swapped under a live
                // session reads another disk: the filer's fault, which heal
                // finds (wwid), not the attach's.
                if ins.first().is_some_and(|x| m.swapped(&x.kname)) {
                    return;
                }
                match ins.first().and_then(|x| m.data_of(&x.kname)) {
                    Some(d) => d.clone(),
                    None => return,
                }
            }
            _ => m.data_of(k).cloned().unwrap_or_default(),
        };
        // A MISSING target is the operator's word to run from the local
        // copy as it is (see the note on partial copies in README).
        if spec_is_missing_target(spec) {
            return;
        }
        let Some(disk) = self.disk_of_locked(m, spec) else {
            return;
        };
        let mut copies: Vec<(String, Data)> = vec![(
            format!("LUN {}", m.luns[disk].wwid),
            m.luns[disk].data.clone(),
        )];
        if let Some(label) = spec.parse::<Spec>().ok().and_then(|s| s.label) {
            if let Some(dev) = self.table_device(label.as_str()) {
                if let Some(l) = dev.strip_prefix("/dev/vg/").and_then(|n| m.locals.get(n)) {
                    copies.push((format!("local {}", l.name), l.data.clone()));
                }
            }
        }
        for (what, c) in copies {
            let missed: Vec<u64> = c
                .iter()
                .filter(|w| m.tags.get(w) == Some(&disk) && !seen.contains(w))
                .copied()
                .collect();
            if !missed.is_empty() {
                m.violations.push(Violation {
                    invariant: "a VM is handed the newest copy",
                    detail: format!(
                        "{spec} reads {} writes; {what} holds its writes {missed:?} too",
                        seen.len()
                    ),
                });
            }
        }
    }

    /// The disk (LUN index) a spec's VM writes belong to: its LUN, or with
    /// a MISSING target the LUN its local volume last mirrored.
    pub(super) fn disk_of(&self, spec: &str) -> Option<usize> {
        let m = self.host.model();
        self.disk_of_locked(&m, spec)
    }

    pub(super) fn disk_of_locked(&self, m: &Model, spec: &str) -> Option<usize> {
        let sp = spec.parse::<Spec>().ok()?;
        if let Some(t) = &sp.target {
            return m
                .luns
                .iter()
                .position(|l| l.target == t.as_str() && l.lun == sp.lun);
        }
        let dev = self.table_device(sp.label?.as_str())?;
        m.paired_lun.get(dev.strip_prefix("/dev/vg/")?).copied()
    }

    pub(super) fn table_device(&self, label: &str) -> Option<String> {
        let t = fs::read_to_string(self.root().join("etc/tab.conf")).ok()?;
        t.lines().find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == label).then(|| w.next().map(str::to_string))?
        })
    }

    /// The kernel's state, with names that only the kernel picks (md
    /// minors, sd letters, session ids) left out.
    pub(super) fn kernel_state(&self) -> BTreeSet<String> {
        let mut v = self.device_set();
        v.extend(
            node_db(self.root())
                .into_iter()
                .map(|n| format!("node {n}")),
        );
        // What the local volumes hold: a refused call must not have begun
        // overwriting one.
        let m = self.host.model();
        v.extend(
            m.locals
                .values()
                .map(|l| format!("data {} {:?}", l.name, l.data)),
        );
        v
    }

    pub(super) fn devices(&self) -> String {
        format!("{:?}", self.device_set())
    }

    pub(super) fn device_set(&self) -> BTreeSet<String> {
        let m = self.host.model();
        let name = |k: &str| match m.dev(k) {
            Some(crate::sim::model::Dev::Scsi(h)) => {
                let l = &m.luns[m.scsi[&h].lun];
                format!("lun{}@{}", l.lun, l.target)
            }
            Some(crate::sim::model::Dev::Local(n)) => format!("local {n}"),
            _ => format!("gone {k}"),
        };
        let arrays: Vec<String> = m
            .arrays
            .values()
            .map(|a| {
                let mut ms: Vec<String> = a
                    .members
                    .iter()
                    .map(|x| {
                        format!(
                            "{}:{:?}{}",
                            name(&x.kname),
                            x.state,
                            if x.write_mostly { ",wm" } else { "" }
                        )
                    })
                    .collect();
                ms.sort();
                format!("array {}({} B: {})", a.label, a.size, ms.join(" "))
            })
            .collect();
        let mut v: BTreeSet<String> = arrays.into_iter().collect();
        v.extend(m.sessions.values().map(|s| format!("session {}", s.target)));
        v.extend(m.scsi.values().map(|s| format!("disk {}", name(&s.kname))));
        v.extend(m.links.keys().map(|l| format!("link {l}")));
        v
    }

    /// The kernel state, the data of every copy and the tool's records.
    /// Not the node DB: a call killed after it made a target's node record
    /// leaves it (open-iscsi keeps discovered records anyway).
    pub(super) fn full_state(&self) -> String {
        let data: Vec<String> = {
            let m = self.host.model();
            let mut d: Vec<String> = m
                .luns
                .iter()
                .map(|l| format!("{}={:?}", l.wwid, l.data))
                .collect();
            // A copy torn by a stopped recovery is resynced in full
            // again: the tear is not a difference.
            let whole = |x: &Data| -> Vec<u64> {
                x.iter()
                    .copied()
                    .filter(|w| *w < crate::sim::model::TORN)
                    .collect()
            };
            d.extend(
                m.locals
                    .values()
                    .map(|l| format!("{}={:?}", l.name, whole(&l.data))),
            );
            d
        };
        let records: Vec<String> = crate::state::Store::new(&self.config.run_dir)
            .all()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, a)| format!("{k}:{:?}", a.phase))
            .collect();
        // The disks' records as far as a later attach reads them (not
        // their counters or dates: a killed attach may have started one
        // generation more; nor whether a copy is clean: a rerun that no
        // longer sees the legs marks it not clean, the safe side, see
        // `clean_copies`), and any temporary file a killed write left.
        let disks: Vec<String> = self
            .disk_records()
            .into_iter()
            .map(|r| {
                let copies: Vec<String> = r
                    .copies
                    .iter()
                    .map(|(h, c)| format!("{h}:current={}", c.generation == r.generation))
                    .collect();
                format!(
                    "{} writer={:?} newer={:?} {copies:?}",
                    r.wwid,
                    r.writer.map(|w| w.host),
                    r.local_newer.map(|w| w.host)
                )
            })
            .collect();
        let mut tmp = Vec::new();
        for dir in [&self.config.state_dir, &self.config.run_dir] {
            tmp_files(dir, &mut tmp);
        }
        format!(
            "{} data {data:?} records {records:?} disks {disks:?} tmp {tmp:?}",
            self.devices()
        )
    }
}

/// Temporary files (`*.tmp`) under `dir`, recursively.
fn tmp_files(dir: &std::path::Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            tmp_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "tmp") {
            out.push(p.display().to_string());
        }
    }
}

impl World {
    /// The disks' records (the local store's).
    fn disk_records(&self) -> Vec<crate::cluster::DiskRecord> {
        use crate::cluster::Records;
        crate::cluster::LocalRecords::new(
            &self.config.state_dir,
            &self.config.run_dir.join("locks"),
            std::time::Duration::from_secs(1),
        )
        .all()
        .unwrap_or_default()
    }

    /// The copies the disks' records call clean (`wwid host`).
    pub(super) fn clean_copies(&self) -> std::collections::BTreeSet<String> {
        self.disk_records()
            .into_iter()
            .flat_map(|r| {
                r.copies
                    .into_iter()
                    .filter(|(_, c)| c.clean)
                    .map(move |(h, _)| format!("{} {h}", r.wwid))
            })
            .collect()
    }
}
