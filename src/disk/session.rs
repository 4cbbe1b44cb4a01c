//! The iSCSI leg: find the portal, prepare the node record, log in (or
//! share the target's session), scan the one LUN asked, wait for its disk;
//! and the way back: delete that disk, and the one logout rule that
//! rollback, detach and crash recovery share.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::undo::Undo;
use super::{Cause, Engine, Step};
use crate::iscsi::{self, IscsiError, Iscsiadm, Login, Session};
use crate::lock::Lock;
use crate::multipath;
use crate::runner::RunError;
use crate::spec::TargetName;
use crate::state::{IscsiLeg, OwnedSession, Phase, StateError};
use crate::uevent::Watcher;

/// After iscsid's last login attempt: time for it to destroy the half-made
/// session and answer.
const LOGIN_END_SLACK: Duration = Duration::from_secs(2);

/// How long after its block device a disk's wwid may take to show.
const WWID_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether session `s` is the one this tool's login made: the claim names
/// its id, or is pending (written before a login whose call died before it
/// could record the id; no session existed then, under the target lock, so
/// the one there now came from that login).
fn claimed(claim: Option<&OwnedSession>, s: &Session) -> bool {
    claim
        .map(|c| c.sid.map_or(true, |sid| sid == s.sid))
        .unwrap_or(false)
}

impl Engine<'_> {
    /// Login (or share the target's session), scan the LUN, wait for its
    /// disk. A target on several portals, with multipathd running, gets a
    /// session per portal and the map over the LUN's paths
    /// ([`Engine::multipath_leg`]).
    pub(super) fn iscsi_leg(
        &self,
        key: &str,
        t: &TargetName,
        lun: u32,
        undo: &mut Vec<Undo>,
    ) -> Result<IscsiLeg, (Step, Cause)> {
        let target = t.as_str();
        let target_lock = self.target_lock(target).map_err(|e| (Step::Lock, e))?;
        let shared = iscsi::session_of(&self.sys, target);
        let portals = match (&shared, self.config.portals_for(t)) {
            // Logged in already: the portals it was given (the config's,
            // else its node records); no node record is made here.
            (Some(_), Some(list)) => list.iter().map(ToString::to_string).collect(),
            (Some(_), None) => iscsi::node_portals(&self.sys, target),
            (None, _) => self.portals(t, undo)?,
        };
        if portals.len() > 1 && self.multipath().running() {
            return self.multipath_leg(key, t, lun, &portals, target_lock, undo);
        }
        let session = match shared {
            Some(s) if s.logged_in() => s,
            // A session that is recovering (the target was away) is not
            // ours to log in again, nor to claim: wait for it to recover.
            Some(s) => self.await_recovery(target, s)?,
            None => self.login(key, t, &portals[0], undo)?,
        };
        let portal = session.portal.clone().unwrap_or_default();
        let (dev, scanned) = self.lun_disk(target, &portal, &session, lun, undo)?;
        // The disk keeps the session alive from here on (a detach of another
        // LUN sees it, and our record, and keeps the session): let the
        // other attaches of this target scan while the kernel probes it.
        drop(target_lock);
        let limit = self.limit(self.config.timeouts.device);
        let watcher = Watcher::new();
        let kname = self.wait_block(&watcher, limit, target, (&session, lun), &dev.hctl, false)?;
        let size = self.sys.block_size(&kname).unwrap_or(0);
        // The disk's SCSI identity is what every later check compares
        // (heal, delete, the local copy's record). It can read as absent
        // for a moment after /dev/sdX appears (seen in the lab on a quiet
        // host); a disk without VPD page 0x83 never has one.
        let wwid = watcher.wait(limit.wait.min(WWID_WAIT), || iscsi::wwid(&self.sys, &kname));
        if wwid.is_none() {
            tracing::warn!(target, lun, device = %kname, "the disk shows no SCSI wwid: heal will not re-add it without --accept-new-disk");
        }
        if let Some(Undo::DeleteScsi { wwid: w, .. }) = undo.last_mut() {
            *w = wwid.clone();
        }
        tracing::info!(target, lun, device = %kname, size, wwid = ?wwid, "LUN ready");
        Ok(IscsiLeg {
            target: target.to_string(),
            lun,
            portal,
            hctl: dev.hctl,
            devnum: self.sys.devnum(&kname),
            kname,
            scanned,
            size,
            wwid,
            ..IscsiLeg::default()
        })
    }

    /// Wait (the login timeout) for someone else's recovering session to
    /// be logged in again.
    fn await_recovery(&self, target: &str, s: Session) -> Result<Session, (Step, Cause)> {
        let limit = self.limit(self.config.timeouts.login);
        tracing::info!(target, sid = s.sid, state = %s.state, "waiting for the target's session to recover");
        Watcher::new()
            .wait(limit.wait, || {
                iscsi::session_of(&self.sys, target).filter(|x| x.logged_in())
            })
            .ok_or_else(|| {
                let state = iscsi::session_of(&self.sys, target)
                    .map(|x| x.state)
                    .unwrap_or_else(|| "absent".to_string());
                let e = IscsiError::SessionDown {
                    target: target.to_string(),
                    state,
                };
                (Step::Login, self.over(limit, e.into()))
            })
    }

    /// The SCSI disk of LUN `lun` on `session` (at `portal`), and whether
    /// a call of ours scanned it: there already (our own sessions scan
    /// manually, so a LUN device found on one was scanned by an earlier,
    /// perhaps interrupted, call of ours), or scanned now, undone with the
    /// attach. Anything but a disk is refused; the other LUNs are never
    /// scanned to list them: they are other VMs' disks, and udev, LVM and
    /// md would see them appear.
    pub(super) fn lun_disk(
        &self,
        target: &str,
        portal: &str,
        session: &Session,
        lun: u32,
        undo: &mut Vec<Undo>,
    ) -> Result<(iscsi::ScsiDev, bool), (Step, Cause)> {
        let claim = self
            .store
            .owned_session(target, portal)
            .map_err(|e| (Step::State, e.into()))?;
        let owned = claimed(claim.as_ref(), session);
        let (dev, scanned) = match iscsi::lun_device(&self.sys, session, lun) {
            Some(d) => (d, owned),
            None => {
                iscsi::scan_lun(&self.sys, session, lun).map_err(|e| (Step::Scan, e.into()))?;
                let d = iscsi::lun_device(&self.sys, session, lun).ok_or_else(|| {
                    let e = IscsiError::NoLun {
                        target: target.to_string(),
                        lun,
                    };
                    (Step::Scan, e.into())
                })?;
                undo.push(Undo::DeleteScsi {
                    target: target.to_string(),
                    hctl: d.hctl.clone(),
                    wwid: None,
                });
                (d, true)
            }
        };
        if dev.kind != 0 {
            let e = IscsiError::NotDisk {
                target: target.to_string(),
                lun,
                kind: dev.kind,
            };
            return Err((Step::Scan, e.into()));
        }
        Ok((dev, scanned))
    }

    /// Wait (up to `limit`) until LUN `lun`'s disk on `session` (at
    /// `hctl`) has a block device that opens and, with `wwid`, a SCSI wwid
    /// (multipath makes a map by it); its kernel name.
    pub(super) fn wait_block(
        &self,
        watcher: &Watcher,
        limit: super::budget::Limit,
        target: &str,
        (session, lun): (&Session, u32),
        hctl: &str,
        wwid: bool,
    ) -> Result<String, (Step, Cause)> {
        watcher
            .wait(limit.wait, || {
                let b = iscsi::lun_device(&self.sys, session, lun)?.block?;
                (self.sys.opens(format!("/dev/{b}"))
                    && (!wwid || iscsi::wwid(&self.sys, &b).is_some()))
                .then_some(b)
            })
            .ok_or_else(|| {
                let e = IscsiError::NoBlockDevice {
                    target: target.to_string(),
                    lun,
                    hctl: hctl.to_string(),
                    waited: limit.wait,
                };
                (Step::Device, self.over(limit, e.into()))
            })
    }

    /// The target's portals: the config's `[[target]]` list, else its node
    /// records, else the portals the first discovery portal that lists it
    /// gives. A node record is made for each portal without one, undone
    /// with the attach.
    pub(super) fn portals(
        &self,
        t: &TargetName,
        undo: &mut Vec<Undo>,
    ) -> Result<Vec<String>, (Step, Cause)> {
        let target = t.as_str();
        let known = iscsi::node_portals(&self.sys, target);
        if let Some(list) = self.config.portals_for(t) {
            let list: Vec<String> = list.iter().map(ToString::to_string).collect();
            let new: Vec<String> = list
                .iter()
                .filter(|p| !known.contains(p))
                .cloned()
                .collect();
            self.new_nodes(target, &new, undo)?;
            return Ok(list);
        }
        if !known.is_empty() {
            return Ok(known);
        }
        let adm = self.iscsiadm();
        let mut found = Vec::new();
        for d in &self.config.discovery.portals {
            let d = d.to_string();
            match adm.discover(&d) {
                Ok(list) => {
                    found = list
                        .into_iter()
                        .filter(|(_, n)| n == target)
                        .map(|(p, _)| p)
                        .collect();
                    if !found.is_empty() {
                        break;
                    }
                }
                Err(e) => tracing::warn!(portal = %d, error = %e, "discovery failed"),
            }
        }
        if found.is_empty() {
            let tried = if self.config.discovery.portals.is_empty() {
                "none configured".to_string()
            } else {
                self.config
                    .discovery
                    .portals
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err((
                Step::Portal,
                IscsiError::TargetUnknown {
                    target: target.to_string(),
                    tried,
                }
                .into(),
            ));
        }
        found.dedup();
        self.new_nodes(target, &found, undo)?;
        Ok(found)
    }

    /// A node record for `target` at each of `portals`, each undone with
    /// the attach.
    fn new_nodes(
        &self,
        target: &str,
        portals: &[String],
        undo: &mut Vec<Undo>,
    ) -> Result<(), (Step, Cause)> {
        let adm = self.iscsiadm();
        for p in portals {
            adm.node_new(target, p)
                .map_err(|e| (Step::Node, e.into()))?;
            undo.push(Undo::DeleteNode {
                target: target.to_string(),
                portal: p.clone(),
            });
        }
        Ok(())
    }

    /// Log in at `portal`; returns the session. Called with the target
    /// lock held and no session to the target there.
    fn login(
        &self,
        key: &str,
        t: &TargetName,
        portal: &str,
        undo: &mut Vec<Undo>,
    ) -> Result<Session, (Step, Cause)> {
        let mutual = self.prepare_login(key, t, portal, undo)?;
        let limit = self.limit(self.config.timeouts.login);
        let started = crate::clock::now();
        let r = self.login_adm(limit).login(t.as_str(), portal, mutual);
        self.end_login(t.as_str(), portal, (started, limit), r)
    }

    /// iscsiadm for a login: its wait fits iscsid's attempts.
    pub(super) fn login_adm(&self, limit: super::budget::Limit) -> Iscsiadm<'_> {
        Iscsiadm {
            login_timeout: limit.wait,
            ..self.iscsiadm()
        }
    }

    /// Prepare the node record of `target` at `portal` for our login and
    /// claim the session to come; returns whether CHAP is mutual.
    pub(super) fn prepare_login(
        &self,
        key: &str,
        t: &TargetName,
        portal: &str,
        undo: &mut Vec<Undo>,
    ) -> Result<bool, (Step, Cause)> {
        let target = t.as_str();
        let record = iscsi::node_record_file(&self.sys, target, portal);
        if let Some(path) = &record {
            let made_here = undo.iter().any(
                |u| matches!(u, Undo::DeleteNode { target: x, portal: p } if x == target && p == portal),
            );
            if !made_here {
                let content = std::fs::read_to_string(path).map_err(|source| {
                    (
                        Step::Node,
                        IscsiError::Io {
                            path: path.clone(),
                            source,
                        }
                        .into(),
                    )
                })?;
                undo.push(Undo::RestoreRecord {
                    path: path.clone(),
                    content: content.into(),
                });
            }
        }
        // The settings go into the record file in one locked write (as the
        // secrets always did), not one `iscsiadm -o update` process per
        // value: five to eight processes were a third of a cold attach.
        let path = record.ok_or_else(|| {
            (
                Step::Node,
                IscsiError::Io {
                    path: PathBuf::from(iscsi::NODE_DB).join(target),
                    source: std::io::ErrorKind::NotFound.into(),
                }
                .into(),
            )
        })?;
        let timeouts = &self.config.timeouts;
        let [replacement, interval, timeout] = [
            timeouts.replacement,
            timeouts.noop_interval,
            timeouts.noop_timeout,
        ]
        .map(|d| d.as_secs().to_string());
        // iscsid's own attempts must end within the login's wait: it keeps
        // retrying after iscsiadm is killed, and cannot be told to stop.
        let login_limit = self.limit(timeouts.login);
        let (attempt, retries) = iscsi::login_attempts(login_limit.wait);
        let [attempt, retries] = [attempt, retries].map(|n| n.to_string());
        let mut values: Vec<(&str, &str)> = vec![
            ("node.session.scan", "manual"),
            ("node.startup", "manual"),
            ("node.session.timeo.replacement_timeout", &replacement),
            ("node.conn[0].timeo.noop_out_interval", &interval),
            ("node.conn[0].timeo.noop_out_timeout", &timeout),
            ("node.conn[0].timeo.login_timeout", &attempt),
            ("node.session.initial_login_retry_max", &retries),
        ];
        let chap = self
            .config
            .chap_for(t)
            .map_err(|e| (Step::Node, e.into()))?;
        let mut secrets = Vec::new();
        if let Some(chap) = &chap {
            values.push(("node.session.auth.authmethod", "CHAP"));
            values.push(("node.session.auth.username", &chap.credentials.username));
            secrets.push(("node.session.auth.password", &chap.credentials.password));
            if let Some(m) = &chap.mutual {
                values.push(("node.session.auth.username_in", &m.username));
                secrets.push(("node.session.auth.password_in", &m.password));
            }
        }
        iscsi::set_record_values(&self.sys, &path, &values, self.idbm_wait())
            .map_err(|e| (Step::Node, e.into()))?;
        if !secrets.is_empty() {
            iscsi::set_record_secrets(&self.sys, &path, &secrets, self.idbm_wait())
                .map_err(|e| (Step::Node, e.into()))?;
        }
        // Claimed before the login: a call killed right after it must still
        // know that the session is ours to log out. Pending until the
        // session's id is known.
        self.store
            .own_session(&OwnedSession {
                target: target.to_string(),
                portal: portal.to_string(),
                sid: None,
            })
            .map_err(|e| (Step::State, e.into()))?;
        undo.push(Undo::ReleaseSession {
            key: key.to_string(),
            target: target.to_string(),
            portal: portal.to_string(),
        });
        Ok(chap.as_ref().is_some_and(|c| c.mutual.is_some()))
    }

    /// After iscsiadm's login at `portal` (begun at `started`) answered
    /// `r`: the session, claimed when our login made it.
    pub(super) fn end_login(
        &self,
        target: &str,
        portal: &str,
        (started, login_limit): (Instant, super::budget::Limit),
        r: Result<Login, IscsiError>,
    ) -> Result<Session, (Step, Cause)> {
        // `login_limit` is what the login was given when it started: the
        // error tells that, not what is left after it.
        let login = match r {
            Ok(l) => l,
            Err(e) => {
                if matches!(&e, IscsiError::LoginTimeout { run, .. } if matches!(**run, RunError::Timeout { .. }))
                {
                    // iscsiadm was killed before iscsid answered: its
                    // attempts end by `login_attempts`' bound anyway.
                    self.await_login_end(target, portal, started + login_limit.wait);
                }
                return Err((Step::Login, self.over(login_limit, e.into())));
            }
        };
        let limit = self.limit(self.config.timeouts.device);
        let session = Watcher::new()
            .wait(limit.wait, || {
                iscsi::session_at(&self.sys, target, portal).filter(|s| s.logged_in())
            })
            .ok_or_else(|| {
                let e = IscsiError::NoSession {
                    target: target.to_string(),
                    waited: limit.wait,
                };
                (Step::Login, self.over(limit, e.into()))
            })?;
        let claim = match login {
            Login::LoggedIn => Some(session.sid),
            // Someone outside our lock logged in first: that session is theirs.
            Login::Existed => None,
        };
        match claim {
            Some(sid) => self.store.own_session(&OwnedSession {
                target: target.to_string(),
                portal: portal.to_string(),
                sid: Some(sid),
            }),
            None => self.store.disown_session(target, portal),
        }
        .map_err(|e| (Step::State, e.into()))?;
        tracing::info!(target, portal = %portal, sid = session.sid, ours = claim.is_some(), "logged in");
        Ok(session)
    }

    /// After a login whose iscsiadm was killed: wait (within what the
    /// budget leaves the rollback) until iscsid's attempts are over, i.e.
    /// past `until` and with no half-made session to `target` in sysfs,
    /// so that the rollback sees what the login left (a session that came
    /// up late is then ours to log out).
    fn await_login_end(&self, target: &str, portal: &str, until: Instant) {
        let was = self.undoing.replace(true);
        let limit =
            self.limit(until.saturating_duration_since(crate::clock::now()) + LOGIN_END_SLACK);
        self.undoing.set(was);
        let ended = Watcher::new().wait(limit.wait, || {
            let half = iscsi::session_at(&self.sys, target, portal).is_some_and(|s| !s.logged_in());
            (crate::clock::now() >= until && !half).then_some(())
        });
        if ended.is_none() {
            tracing::warn!(target, "iscsid's login attempts did not end in time");
        }
    }

    /// Whether an attachment other than `key` uses the session to `target`
    /// at `portal`, including one still logging in (its leg not recorded
    /// yet: it may use any of the target's sessions).
    fn others_of(&self, key: &str, target: &str, portal: &str) -> Result<bool, StateError> {
        Ok(self.store.all()?.into_iter().any(|(k, o)| {
            // A recorded disk that is gone no longer needs the session: its
            // detach released it and has yet to remove the record. Counting
            // it let two detaches racing each leave the session to the other.
            let uses = match &o.iscsi {
                Some(i) => {
                    i.target == target
                        && i.path_list().into_iter().any(|(p, hctl, _)| {
                            p == portal && iscsi::device_at(&self.sys, &hctl).is_some()
                        })
                }
                None => super::target_of(&o).as_deref() == Some(target),
            };
            k != crate::lock::file_key(key)
                && uses
                && (o.phase != Phase::Attaching || self.in_progress(&k))
        }))
    }

    /// Whether the call that is attaching record `k` (a file key) still
    /// runs: it holds the record's lock until it ends. A killed call's
    /// record uses nothing; its leftovers are the next call's of that
    /// record to clean (found by the simulator: a refused attach kept the
    /// session it had just made because a dead attach's record named the
    /// target).
    fn in_progress(&self, k: &str) -> bool {
        let name = crate::lock::file_key(&format!("attach-{k}"));
        Lock::take(&self.store.lock_dir(), &name, "attachment", Duration::ZERO).is_err()
    }

    /// The one logout rule, for rollback, detach and crash recovery: log
    /// out the session to `target` at `portal` only when this tool's login
    /// made it, no other attachment uses it, and no SCSI disk is left on
    /// it. A claim whose session is gone is forgotten.
    pub(super) fn release_session(
        &self,
        key: &str,
        target: &str,
        portal: &str,
    ) -> Result<(), (Step, Cause)> {
        let _target_lock = self.target_lock(target).map_err(|e| (Step::Lock, e))?;
        self.release_session_locked(key, target, portal)
    }

    fn release_session_locked(
        &self,
        key: &str,
        target: &str,
        portal: &str,
    ) -> Result<(), (Step, Cause)> {
        let state = |e: StateError| (Step::State, Cause::from(e));
        let claim = self.store.owned_session(target, portal).map_err(state)?;
        let others = self.others_of(key, target, portal).map_err(state)?;
        let Some(s) = iscsi::session_at(&self.sys, target, portal) else {
            if !others {
                // Not logged in: forget our claim, and the temporary file
                // of a claim write that a kill cut short (no json, so no
                // claim was read). The target lock keeps other writers out.
                self.store.disown_session(target, portal).map_err(state)?;
            }
            return Ok(());
        };
        let ours = claimed(claim.as_ref(), &s);
        let busy = !iscsi::host_devices(&self.sys, s.host).is_empty();
        if ours && !others && !busy {
            self.iscsiadm()
                .logout(s.sid)
                .map_err(|e| (Step::Logout, e.into()))?;
            self.store.disown_session(target, portal).map_err(state)?;
            tracing::info!(target, portal, sid = s.sid, "logged out");
        } else {
            if claim.is_some() && !ours {
                // Our session went away and another took its place.
                self.store.disown_session(target, portal).map_err(state)?;
            }
            tracing::info!(
                target,
                portal,
                sid = s.sid,
                ours,
                others,
                busy,
                "session kept"
            );
        }
        Ok(())
    }

    /// Delete the SCSI disks of an attachment's LUN when they are the ones
    /// the record names (this tool scanned them, same address, same wwid),
    /// the multipath map over them first, then apply the logout rule to
    /// each session. `known` is the leg as attach recorded it; None when
    /// attach was interrupted before that, and then a disk of that LUN on
    /// a session of ours is ours (we scan manually, and the LUN lock keeps
    /// other specs of the LUN out).
    pub(super) fn release_lun(
        &self,
        key: &str,
        target: &str,
        lun: u32,
        known: Option<&IscsiLeg>,
    ) -> Result<(), (Step, Cause)> {
        let _target_lock = self.target_lock(target).map_err(|e| (Step::Lock, e))?;
        let wwid = known.and_then(|i| i.wwid.as_deref());
        let mut portals: Vec<String> = Vec::new();
        match known {
            Some(i) => {
                if let Some(m) = &i.map {
                    self.release_map(&m.name, i, m.wwid_added)?;
                }
                for (portal, hctl, scanned) in i.path_list() {
                    if let Some(d) = iscsi::device_at(&self.sys, &hctl).filter(|_| scanned) {
                        self.unfence(&d, wwid);
                        self.delete_ours(target, &d, wwid)?;
                    }
                    portals.push(portal);
                }
            }
            None => {
                portals = self
                    .store
                    .owned_portals(target)
                    .map_err(|e| (Step::State, e.into()))?;
                // Every portal an attach could have logged in at: a kill
                // during a claim's write left only its temporary file, which
                // the logout rule clears where nothing is logged in.
                portals.extend(iscsi::node_portals(&self.sys, target));
                if let Ok(t) = TargetName::parse(target) {
                    if let Some(list) = self.config.portals_for(&t) {
                        portals.extend(list.iter().map(ToString::to_string));
                    }
                }
                for s in iscsi::sessions(&self.sys)
                    .into_iter()
                    .filter(|s| s.target == target)
                {
                    let Some(portal) = s.portal.clone() else {
                        continue;
                    };
                    let claim = self
                        .store
                        .owned_session(target, &portal)
                        .map_err(|e| (Step::State, e.into()))?;
                    if !claimed(claim.as_ref(), &s) {
                        continue;
                    }
                    if let Some(d) = iscsi::lun_device(&self.sys, &s, lun) {
                        if let Some(m) = d
                            .block
                            .as_deref()
                            .and_then(|b| multipath::holding(&self.sys, b))
                        {
                            // A map our interrupted attach asked for: the
                            // wwid it may have added stays in multipath's
                            // file (not known to be ours).
                            self.flush_map(&m.name)?;
                        }
                        self.unfence(&d, None);
                        self.delete_ours(target, &d, None)?;
                    }
                    portals.push(portal);
                }
            }
        }
        portals.sort();
        portals.dedup();
        for p in &portals {
            self.release_session_locked(key, target, p)?;
        }
        Ok(())
    }

    /// Remove multipath map `name` when it is still the one over this
    /// leg's LUN (its paths carry the recorded wwid): its wwid first (when
    /// this attach added it), so that multipathd makes no map of the paths
    /// again, then the map. Its paths stay.
    pub(super) fn release_map(
        &self,
        name: &str,
        leg: &IscsiLeg,
        wwid_added: bool,
    ) -> Result<(), (Step, Cause)> {
        let Some(map) = multipath::by_name(&self.sys, name) else {
            if wwid_added {
                self.forget_wwid(leg);
            }
            return Ok(());
        };
        let now = iscsi::wwid(&self.sys, &map.kname);
        if let (Some(want), Some(now)) = (leg.wwid.as_deref(), now.as_deref()) {
            if want != now {
                tracing::warn!(
                    map = name,
                    recorded = want,
                    found = now,
                    "the map is another LUN's now: left alone"
                );
                return Ok(());
            }
        }
        if wwid_added {
            self.forget_wwid(leg);
        }
        self.flush_map(name)
    }

    /// `multipath -w` through one of the leg's paths still there.
    fn forget_wwid(&self, leg: &IscsiLeg) {
        let path = leg
            .paths
            .iter()
            .map(|p| p.kname.as_str())
            .find(|k| leg.wwid.is_some() && iscsi::wwid(&self.sys, k) == leg.wwid);
        match path {
            Some(k) => self.forget_wwid_of(k),
            None => {
                tracing::warn!(wwid = ?leg.wwid, "no path left to tell multipath to forget the LUN's wwid")
            }
        }
    }

    /// `multipath -f NAME`, again while udev still holds the map (seen
    /// in the lab right after its paths changed), within the device wait.
    fn flush_map(&self, name: &str) -> Result<(), (Step, Cause)> {
        let limit = self.limit(self.config.timeouts.device);
        let mut last = None;
        let done = Watcher::new().wait(limit.wait, || {
            if multipath::by_name(&self.sys, name).is_none() {
                return Some(());
            }
            match self.multipath().flush(name) {
                Ok(()) => Some(()),
                Err(e) => {
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(500));
                    None
                }
            }
        });
        match (done, last) {
            (Some(()), _) => {
                tracing::info!(map = name, "multipath map flushed");
                Ok(())
            }
            (None, Some(e)) => Err((Step::Multipath, self.over(limit, e.into()))),
            (None, None) => Ok(()),
        }
    }

    /// Delete SCSI device `d` if its disk still carries `wwid` (when one is
    /// known): another LUN may answer at that address by now.
    pub(super) fn delete_ours(
        &self,
        target: &str,
        d: &iscsi::ScsiDev,
        wwid: Option<&str>,
    ) -> Result<(), (Step, Cause)> {
        let now = d.block.as_deref().and_then(|b| iscsi::wwid(&self.sys, b));
        if let (Some(want), Some(now)) = (wwid, now.as_deref()) {
            if want != now {
                tracing::warn!(target, hctl = %d.hctl, recorded = want, found = now, "the SCSI disk at the recorded address is another LUN now: left alone");
                return Ok(());
            }
        }
        iscsi::delete_device(&self.sys, d).map_err(|e| (Step::DeleteDevice, e.into()))
    }
}
