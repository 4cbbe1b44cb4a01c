//! `iscsimple watch`: keep every mirror's records true and heal failed
//! iSCSI legs. Woken by md events (polling `/proc/mdstat`, as `mdadm
//! --monitor` does: a leg marked faulty wakes it at once, so the
//! local-is-newer record is written before the next write can land only on
//! the local leg's side for long), and every `timeouts.watch` otherwise (an
//! iSCSI session coming back raises no md event). Each look also drops the
//! holders of domains that are gone and detaches what only they held
//! ([`crate::holders::sweep`]).
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek};
use std::os::fd::AsFd;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::disk::{Cause, Engine, Healed, Health};
use crate::holders::{self, HostLiveness};
use crate::iscsi::IscsiError;
use crate::state::Phase;

/// What was last logged per attachment, so each change is logged once.
#[derive(Debug, Default)]
pub struct Watch {
    state: HashMap<String, String>,
    heal_error: HashMap<String, String>,
    sweep_error: HashMap<String, String>,
}

fn describe(h: &Health) -> String {
    match h {
        Health::InSync => "in sync".to_string(),
        Health::LocalNewer { reason, .. } => format!("degraded: {reason}"),
        Health::Other(s) => s.clone(),
    }
}

impl Watch {
    /// Drop holders whose domain is gone and detach what only they held
    /// (retrying a detach that failed), logging each failure once.
    fn sweep(&mut self, engine: &Engine<'_>) {
        let swept = match holders::sweep(engine, &mut HostLiveness::new()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the holder records");
                return;
            }
        };
        for s in swept {
            match s.result {
                Ok(true) => {
                    self.sweep_error.remove(&s.spec);
                    tracing::info!(spec = %s.spec, "detached: no running domain held it any more");
                }
                Ok(false) => {
                    self.sweep_error.remove(&s.spec);
                }
                Err(e) => {
                    let msg = e.to_string();
                    if self.sweep_error.get(&s.spec) != Some(&msg) {
                        tracing::warn!(spec = %s.spec, error = %msg, "no running domain holds it, but the detach failed; will retry");
                        self.sweep_error.insert(s.spec.clone(), msg);
                    }
                }
            }
        }
    }

    /// One look: holders (see [`Watch::sweep`]), then every attached
    /// mirror: record, log changes, heal.
    pub fn tick(&mut self, engine: &Engine<'_>) {
        self.sweep(engine);
        let all = match engine.store.all() {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the attachments");
                return;
            }
        };
        let mut seen = Vec::new();
        for (key, a) in all {
            if a.mirror.is_none() || a.phase != Phase::Attached {
                continue;
            }
            seen.push(key.clone());
            let h = match engine.reconcile(&a.spec) {
                Ok(Some(h)) => h,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(spec = %a.spec, error = %e, "cannot look at the mirror");
                    continue;
                }
            };
            let text = describe(&h);
            if self.state.get(&key) != Some(&text) {
                match &h {
                    Health::LocalNewer { .. } => {
                        tracing::warn!(spec = %a.spec, state = %text, "mirror state changed")
                    }
                    _ => tracing::info!(spec = %a.spec, state = %text, "mirror state changed"),
                }
                self.state.insert(key.clone(), text);
            }
            if !matches!(h, Health::LocalNewer { heal: true, .. }) {
                self.heal_error.remove(&key);
                continue;
            }
            match engine.heal(&a.spec) {
                Ok(Healed::Nothing) => {}
                Ok(how) => {
                    self.heal_error.remove(&key);
                    tracing::info!(spec = %a.spec, how = ?how, "iSCSI leg re-added; resyncing from the local leg");
                }
                Err(e) => {
                    let waiting = matches!(*e.cause, Cause::Iscsi(IscsiError::SessionDown { .. }));
                    let msg = e.to_string();
                    if self.heal_error.get(&key) != Some(&msg) {
                        if waiting {
                            tracing::info!(spec = %a.spec, reason = %msg, "waiting for the iSCSI session to heal the leg");
                        } else {
                            tracing::warn!(spec = %a.spec, error = %msg, "heal failed; will retry");
                        }
                        self.heal_error.insert(key.clone(), msg);
                    }
                }
            }
            for n in engine.take_notices() {
                tracing::info!(spec = %a.spec, notice = %n, "notice");
            }
        }
        self.state.retain(|k, _| seen.contains(k));
        self.heal_error.retain(|k, _| seen.contains(k));
    }
}

/// Waits for md events on `/proc/mdstat`.
#[derive(Debug)]
pub struct MdEvents {
    mdstat: Option<File>,
}

impl MdEvents {
    /// Open `/proc/mdstat` (without md loaded: timer only).
    pub fn open() -> MdEvents {
        MdEvents {
            mdstat: File::open("/proc/mdstat").ok(),
        }
    }

    /// Mark the current events as seen: call before looking at the arrays,
    /// so an event during the look wakes the next [`MdEvents::wait`] at once.
    pub fn arm(&mut self) {
        if let Some(f) = self.mdstat.as_mut() {
            let mut sink = Vec::new();
            let _ = f.rewind();
            let _ = f.read_to_end(&mut sink);
        }
    }

    /// Sleep until an md event or `timeout`.
    pub fn wait(&self, timeout: Duration) {
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        match &self.mdstat {
            Some(f) => {
                let mut fds = [PollFd::new(
                    f.as_fd(),
                    PollFlags::POLLPRI | PollFlags::POLLERR,
                )];
                let _ = nix::poll::poll(&mut fds, PollTimeout::from(ms));
            }
            None => std::thread::sleep(timeout),
        }
    }
}
