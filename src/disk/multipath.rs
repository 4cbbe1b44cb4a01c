//! The iSCSI leg over several portals: a session per portal (the logins
//! run at once), the LUN scanned on each, its disks checked to be one LUN
//! (one wwid), and the dm-multipath map over them, which is the leg md
//! (or the hypervisor) gets; never a path device.
use std::path::PathBuf;
use std::time::Duration;

use super::undo::Undo;
use super::{Cause, Engine, Step};
use crate::iscsi::{self, IscsiError, Session};
use crate::lock::Lock;
use crate::multipath::{self, MultipathError};
use crate::spec::TargetName;
use crate::state::{IscsiLeg, MapLeg, PathLeg};
use crate::uevent::Watcher;

/// How often multipathd is asked again for the paths while the map lacks
/// one (it leaves out a path udev has not finished with).
const ASK_AGAIN: Duration = Duration::from_secs(1);

impl Engine<'_> {
    /// `multipath`/`multipathd` under this call's budget.
    pub(super) fn multipath(&self) -> multipath::Multipath<'_> {
        multipath::Multipath {
            runner: self.runner,
            timeout: self.config.timeouts.command,
            deadline: self.deadline(),
        }
    }

    /// The multipath leg of LUN `lun`: sessions at every portal of
    /// `portals` (shared, or logged in, all logins at once), the LUN on
    /// each, and the map. A portal that does not answer is left out with
    /// a warning while another does: a host must still reach its disk
    /// when one of its networks is down.
    pub(super) fn multipath_leg(
        &self,
        key: &str,
        t: &TargetName,
        lun: u32,
        portals: &[String],
        target_lock: Lock,
        undo: &mut Vec<Undo>,
    ) -> Result<IscsiLeg, (Step, Cause)> {
        let target = t.as_str();
        let mut sessions: Vec<(String, Session)> = Vec::new();
        let mut to_login = Vec::new();
        for p in portals {
            match iscsi::session_at(&self.sys, target, p) {
                Some(s) if s.logged_in() => sessions.push((p.clone(), s)),
                Some(s) => {
                    tracing::warn!(target, portal = %p, sid = s.sid, state = %s.state, "session recovering: path left out");
                }
                None => to_login.push(p.clone()),
            }
        }
        let mut prepared = Vec::new();
        for p in &to_login {
            prepared.push((p.clone(), self.prepare_login(key, t, p, undo)?));
        }
        let limit = self.limit(self.config.timeouts.login);
        let adm = self.login_adm(limit);
        let started = crate::clock::now();
        let answers: Vec<_> = std::thread::scope(|sc| {
            let running: Vec<_> = prepared
                .iter()
                .map(|(p, mutual)| {
                    let adm = &adm;
                    (p, sc.spawn(move || adm.login(target, p, *mutual)))
                })
                .collect();
            running
                .into_iter()
                .map(|(p, h)| (p.clone(), h.join().expect("a login thread panicked")))
                .collect()
        });
        let mut first_error = None;
        for (p, r) in answers {
            match self.end_login(target, &p, (started, limit), r) {
                Ok(s) => sessions.push((p, s)),
                Err(e) => {
                    tracing::warn!(target, portal = %p, error = %e.1, "login failed: path left out");
                    first_error.get_or_insert(e);
                }
            }
        }
        if sessions.is_empty() {
            return Err(first_error.unwrap_or_else(|| {
                let e = IscsiError::SessionDown {
                    target: target.to_string(),
                    state: "recovering on every portal".to_string(),
                };
                (Step::Login, e.into())
            }));
        }
        sessions.sort_by(|a, b| a.0.cmp(&b.0));
        let mut found = Vec::new();
        for (p, s) in &sessions {
            let (dev, scanned) = self.lun_disk(target, p, s, lun, undo)?;
            found.push((p.clone(), s.clone(), dev, scanned));
        }
        drop(target_lock);
        let limit = self.limit(self.config.timeouts.device);
        let watcher = Watcher::new();
        let mut paths = Vec::new();
        for (portal, s, dev, scanned) in &found {
            let kname = self.wait_block(&watcher, limit, target, (s, lun), &dev.hctl, true)?;
            paths.push(PathLeg {
                portal: portal.clone(),
                hctl: dev.hctl.clone(),
                devnum: self.sys.devnum(&kname),
                kname,
                scanned: *scanned,
            });
        }
        let wwids: Vec<Option<String>> = paths
            .iter()
            .map(|p| iscsi::wwid(&self.sys, &p.kname))
            .collect();
        for u in undo.iter_mut() {
            if let Undo::DeleteScsi { hctl, wwid, .. } = u {
                if let Some(i) = paths.iter().position(|p| &p.hctl == hctl) {
                    wwid.clone_from(&wwids[i]);
                }
            }
        }
        if wwids.iter().any(|w| w != &wwids[0]) {
            let found = paths
                .iter()
                .zip(&wwids)
                .map(|(p, w)| format!("{}={}", p.portal, w.as_deref().unwrap_or("none")))
                .collect::<Vec<_>>()
                .join(", ");
            let e = IscsiError::PathsDiffer {
                target: target.to_string(),
                lun,
                found,
            };
            return Err((Step::Device, e.into()));
        }
        let wwid = wwids[0].clone();
        let (name, wwid_added) = self.assemble(&paths, undo)?;
        let kname = multipath::by_name(&self.sys, &name)
            .map(|m| m.kname)
            .unwrap_or_default();
        let size = self.sys.block_size(&kname).unwrap_or(0);
        tracing::info!(target, lun, map = %name, device = %kname, paths = paths.len(), size, wwid = ?wwid, "LUN ready over multipath");
        let first = &paths[0];
        Ok(IscsiLeg {
            target: target.to_string(),
            lun,
            portal: first.portal.clone(),
            hctl: first.hctl.clone(),
            scanned: first.scanned,
            devnum: self.sys.devnum(&kname),
            kname,
            size,
            wwid,
            map: Some(MapLeg { name, wwid_added }),
            paths,
        })
    }

    /// Let multipath claim the LUN (its wwid added when new) and wait for
    /// the map over exactly `paths`; returns its name and whether this
    /// call added the wwid.
    fn assemble(
        &self,
        paths: &[PathLeg],
        undo: &mut Vec<Undo>,
    ) -> Result<(String, bool), (Step, Cause)> {
        let mp = self.multipath();
        let first = paths[0].kname.as_str();
        let before = multipath::known_wwids(&self.sys);
        mp.add_wwid(first)
            .map_err(|e| (Step::Multipath, e.into()))?;
        let wwid_added = multipath::known_wwids(&self.sys)
            .iter()
            .any(|w| !before.contains(w));
        let mut want: Vec<String> = paths.iter().map(|p| p.kname.clone()).collect();
        want.sort();
        let limit = self.limit(self.config.timeouts.device);
        let mut asked: Option<std::time::Instant> = None;
        let mut foreign = None;
        // multipath takes a path only once udev has recorded it: with udev,
        // ask when its database has every path (its events wake the wait).
        let udev = self.udev_running();
        let watcher = if udev {
            Watcher::udev()
        } else {
            Watcher::new()
        };
        let map = watcher.wait(limit.wait, || {
            let ready = !udev
                || paths
                    .iter()
                    .all(|p| p.devnum.as_deref().is_some_and(|d| self.udev_knows(d)));
            if ready && asked.map_or(true, |t| crate::clock::since(t) >= ASK_AGAIN) {
                for p in paths {
                    if let Err(e) = mp.add_path(&p.kname) {
                        tracing::debug!(device = p.kname, error = %e, "multipathd made no map yet");
                    }
                }
                asked = Some(crate::clock::now());
            }
            let m = multipath::holding(&self.sys, first)?;
            if m.slaves.iter().any(|s| !want.contains(s)) {
                foreign = Some(m);
                return None;
            }
            (m.slaves == want && self.sys.opens(format!("/dev/{}", m.kname))).then_some(m)
        });
        let leg = IscsiLeg {
            paths: paths.to_vec(),
            wwid: iscsi::wwid(&self.sys, first),
            ..IscsiLeg::default()
        };
        match map {
            Some(m) => {
                undo.push(Undo::ReleaseMap {
                    name: m.name.clone(),
                    leg: Box::new(leg),
                    wwid_added,
                });
                Ok((m.name, wwid_added))
            }
            None => {
                // Whatever came up is ours to remove with the wwid.
                let made = multipath::holding(&self.sys, first).filter(|_| foreign.is_none());
                if let Some(m) = &made {
                    undo.push(Undo::ReleaseMap {
                        name: m.name.clone(),
                        leg: Box::new(leg),
                        wwid_added,
                    });
                } else if wwid_added {
                    self.forget_wwid_of(first);
                }
                let e = match foreign {
                    Some(m) => MultipathError::Foreign {
                        name: m.name,
                        found: m.slaves.join(","),
                        paths: want.join(","),
                    },
                    None => MultipathError::NoMap {
                        paths: want.join(","),
                        waited: limit.wait,
                    },
                };
                Err((Step::Multipath, self.over(limit, e.into())))
            }
        }
    }

    /// A multipath leg back for `heal`: its map still there, a path of it
    /// up (multipathd reinstates the paths by itself once their sessions
    /// are back). The device md re-adds, its kernel name and the first
    /// path's address; the caller checks the map's wwid and size against
    /// the record, as for a single path.
    pub(super) fn map_back(
        &self,
        leg: &IscsiLeg,
        name: &str,
    ) -> Result<(PathBuf, String, String), Cause> {
        let m = multipath::by_name(&self.sys, name).ok_or_else(|| MultipathError::Gone {
            name: name.to_string(),
        })?;
        if !leg.paths.iter().any(|p| iscsi::path_up(&self.sys, &p.hctl)) {
            return Err(IscsiError::SessionDown {
                target: leg.target.clone(),
                state: "down on every path".to_string(),
            }
            .into());
        }
        Ok((multipath::node(name), m.kname, leg.hctl.clone()))
    }

    /// `grow` of a multipath leg: every recorded path still the LUN's
    /// (address, name, wwid) and up, rescanned; all of one size; then the
    /// map takes it. Returns the map's new size.
    pub(super) fn grow_paths(&self, leg: &IscsiLeg, name: &str) -> Result<u64, (Step, Cause)> {
        let mut sizes = Vec::new();
        for p in &leg.paths {
            let dev = iscsi::device_at(&self.sys, &p.hctl)
                .filter(|d| d.block.as_deref() == Some(p.kname.as_str()))
                .ok_or_else(|| {
                    let e = Cause::LegMoved {
                        target: leg.target.clone(),
                        lun: leg.lun,
                        hctl: p.hctl.clone(),
                        kname: p.kname.clone(),
                    };
                    (Step::Device, e)
                })?;
            let wwid = iscsi::wwid(&self.sys, &p.kname);
            if leg.wwid.is_none() || wwid != leg.wwid {
                return Err((Step::Device, Cause::other_disk(leg, wwid.as_deref())));
            }
            if !iscsi::path_up(&self.sys, &p.hctl) {
                let e = IscsiError::SessionDown {
                    target: leg.target.clone(),
                    state: format!("down at {}", p.portal),
                };
                return Err((Step::Login, e.into()));
            }
            iscsi::rescan_device(&self.sys, &dev).map_err(|e| (Step::Scan, e.into()))?;
            sizes.push((
                p.portal.as_str(),
                self.sys.block_size(&p.kname).unwrap_or(0),
            ));
        }
        if sizes.iter().any(|(_, s)| *s != sizes[0].1) {
            let found = sizes
                .iter()
                .map(|(p, s)| format!("{p}={s}"))
                .collect::<Vec<_>>()
                .join(", ");
            let e = Cause::PathSizes {
                target: leg.target.clone(),
                lun: leg.lun,
                found,
            };
            return Err((Step::Size, e));
        }
        let want = sizes.first().map_or(0, |(_, s)| *s);
        self.multipath()
            .resize(name)
            .map_err(|e| (Step::Multipath, e.into()))?;
        let limit = self.limit(self.config.timeouts.device);
        Watcher::new()
            .wait(limit.wait, || {
                let k = multipath::by_name(&self.sys, name)?.kname;
                (self.sys.block_size(&k)? == want).then_some(want)
            })
            .ok_or_else(|| {
                let e = MultipathError::Gone {
                    name: name.to_string(),
                };
                (Step::Multipath, e.into())
            })
    }

    /// `multipath -w /dev/PATH`: multipath forgets that LUN's wwid (a
    /// failure is logged: the map is flushed all the same).
    pub(super) fn forget_wwid_of(&self, path: &str) {
        if let Err(e) = self.multipath().forget_wwid(path) {
            tracing::warn!(device = path, error = %e, "multipath kept the LUN's wwid");
        }
    }
}
