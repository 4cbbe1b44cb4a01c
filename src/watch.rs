//! `iscsimple watch`: keep every mirror's records true and heal failed
//! iSCSI legs. Woken by md events (polling `/proc/mdstat`, as `mdadm
//! --monitor` does: a leg marked faulty wakes it at once, so the
//! local-is-newer record is written before the next write can land only on
//! the local leg's side for long), and every `timeouts.watch` otherwise (an
//! iSCSI session coming back raises no md event). Each look also drops the
//! holders of domains that are gone and detaches what only they held
//! ([`crate::holders::sweep`]).
//!
//! One broken LUN must not hold up the other mirrors: each mirror's look
//! and heal draw their waits from one budget (`timeouts.heal`), and the
//! heal runs on a thread of its own, because a LUN that never answers
//! blocks a rescan or an mdadm in the kernel, where no timeout reaches.
//! A heal still running when its budget is spent is left to finish on
//! its own; its mirror is skipped until it does.
use std::collections::HashMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use crate::md::MdEvents;

use crate::cluster;
use crate::disk::{Budget, Cause, DiskError, Engine, HealOptions, Healed, Health};
use crate::holders::{self, HostLiveness};
use crate::iscsi::IscsiError;
use crate::metrics::Counters;
use crate::state::Phase;

/// How long past its budget a heal may take before `watch` goes on without
/// it: its commands are killed at the deadline and need a moment to end.
const GRACE: Duration = Duration::from_secs(2);

/// What a heal thread reports: its result and its notices.
type Outcome = (Result<Healed, DiskError>, Vec<String>);

/// A heal that outlived its budget.
#[derive(Debug)]
struct Stuck {
    since: Instant,
    done: mpsc::Receiver<Outcome>,
}

/// What was last logged per attachment, so each change is logged once,
/// and the heals still running past their budget.
#[derive(Debug, Default)]
pub struct Watch {
    state: HashMap<String, String>,
    heal_error: HashMap<String, String>,
    stuck: HashMap<String, Stuck>,
    sweep_error: HashMap<String, String>,
    store_error: Option<String>,
    /// What the metrics count, kept in `run_dir` (see [`crate::metrics`]).
    counters: Option<Counters>,
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
    /// mirror: record, log changes, heal. Each mirror takes at most its
    /// budget (`timeouts.heal`) and a grace.
    pub fn tick(&mut self, engine: &Engine<'static>) {
        self.sweep(engine);
        let all = match engine.store.all() {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the attachments");
                return;
            }
        };
        let run_dir = &engine.config.run_dir;
        let mut counters = self
            .counters
            .take()
            .unwrap_or_else(|| Counters::load(run_dir));
        let before = counters.clone();
        let mut seen = Vec::new();
        for (key, a) in all {
            if a.mirror.is_none() || a.phase != Phase::Attached {
                continue;
            }
            seen.push(key.clone());
            if !self.unstuck(&key, &a.spec, &mut counters) {
                continue;
            }
            let budget = Budget::new(engine.config.timeouts.heal, Duration::ZERO);
            let mirror = engine.fork().with_budget(budget);
            let h = match mirror.reconcile(&a.spec) {
                Ok(Some(h)) => h,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(spec = %a.spec, error = %e, "cannot look at the mirror");
                    continue;
                }
            };
            counters.leg(
                &a.spec,
                matches!(h, Health::LocalNewer { .. }),
                crate::state::now(),
            );
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
            let (tx, rx) = mpsc::channel();
            let job = engine.fork().with_budget(budget);
            let spec = a.spec.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("heal {key}"))
                .spawn(move || {
                    let r = job.heal(&spec, HealOptions::default());
                    let _ = tx.send((r, job.take_notices()));
                });
            if let Err(e) = spawned {
                tracing::error!(spec = %a.spec, error = %e, "cannot start the heal");
                continue;
            }
            let wait = budget.end().saturating_duration_since(crate::clock::now()) + GRACE;
            match rx.recv_timeout(wait) {
                Ok(outcome) => self.healed(&key, &a.spec, outcome, &mut counters),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    tracing::warn!(spec = %a.spec, budget = ?budget.total(), "the heal outlived its budget (the LUN does not answer); the other mirrors go on, this one waits until it ends");
                    self.stuck.insert(
                        key.clone(),
                        Stuck {
                            since: crate::clock::now(),
                            done: rx,
                        },
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    tracing::error!(spec = %a.spec, "the heal ended without a result");
                }
            }
        }
        if counters != before {
            if let Err(e) = counters.save(run_dir) {
                tracing::warn!(error = %e, "cannot keep the metrics' counters");
            }
        }
        self.counters = Some(counters);
        self.state.retain(|k, _| seen.contains(k));
        self.heal_error.retain(|k, _| seen.contains(k));
        self.stuck.retain(|k, _| seen.contains(k));
        // After the mirrors: a store that does not answer holds a look up
        // for seconds, and the local records come first.
        self.store(engine);
    }

    /// Keep this host's lease in the disks' store alive (it names this
    /// host the writer of its disks) and write the detaches' ends the
    /// store missed. Each change of the store's health is logged once.
    fn store(&mut self, engine: &Engine<'_>) {
        let records = engine.records();
        let me = engine.host();
        let r = records.keepalive().and_then(|alive| {
            if !alive {
                self.renew(engine, &*records, &me)?;
            }
            cluster::flush_pending(&*records, &engine.config.state_dir, &me)
        });
        if r.is_ok() {
            engine.keep_fenced();
        }
        match r {
            Ok(_) => {
                if self.store_error.take().is_some() {
                    tracing::info!(store = records.describe(), "the disks' store answers again");
                }
            }
            Err(e) => {
                let text = e.to_string();
                if self.store_error.as_ref() != Some(&text) {
                    tracing::error!(store = records.describe(), error = %e, "the disks' store");
                    self.store_error = Some(text);
                }
            }
        }
    }

    /// This host's lease expired (watch stopped, or the store was out of
    /// reach): take a new one and name it in the records of the disks
    /// this host still writes. A disk another host took over meanwhile is
    /// reported, not taken back.
    fn renew(
        &self,
        engine: &Engine<'_>,
        records: &dyn cluster::Records,
        me: &str,
    ) -> Result<(), cluster::ClusterError> {
        let Some(lease) = records.lease()? else {
            return Ok(());
        };
        tracing::warn!(
            lease,
            "this host's lease in the disks' store had expired: renewed"
        );
        let all = engine.store.all().unwrap_or_default();
        for (_, a) in all {
            let Some(wwid) = a.iscsi.as_ref().and_then(|i| i.wwid.as_deref()) else {
                continue;
            };
            if !cluster::renew_writer(records, wwid, me, lease)? {
                tracing::error!(spec = %a.spec, wwid, "another host took this disk over while this host's lease was expired: both may have written it (split brain)");
            }
        }
        Ok(())
    }

    /// Whether mirror `key` may be looked at: no heal of it is still
    /// running past its budget (one that ended is reported now).
    fn unstuck(&mut self, key: &str, spec: &str, counters: &mut Counters) -> bool {
        let Some(s) = self.stuck.get(key) else {
            return true;
        };
        match s.done.try_recv() {
            Err(mpsc::TryRecvError::Empty) => false,
            Ok(outcome) => {
                let took = crate::clock::since(s.since);
                self.stuck.remove(key);
                tracing::info!(spec, after = ?took, "a heal that outlived its budget ended");
                self.healed(key, spec, outcome, counters);
                true
            }
            Err(mpsc::TryRecvError::Disconnected) => {
                self.stuck.remove(key);
                true
            }
        }
    }

    /// Log what a heal of `key` did, each error once.
    fn healed(
        &mut self,
        key: &str,
        spec: &str,
        (result, notices): Outcome,
        counters: &mut Counters,
    ) {
        match result {
            Ok(Healed::Nothing) => {}
            Ok(how) => {
                counters.healed(spec);
                self.heal_error.remove(key);
                tracing::info!(spec, how = ?how, "iSCSI leg re-added; resyncing from the local leg");
            }
            Err(e) => {
                let waiting = matches!(*e.cause, Cause::Iscsi(IscsiError::SessionDown { .. }));
                if !waiting {
                    counters.heal_failed(spec, crate::state::now());
                }
                let msg = e.to_string();
                if self.heal_error.get(key) != Some(&msg) {
                    if waiting {
                        tracing::info!(spec, reason = %msg, "waiting for the iSCSI session to heal the leg");
                    } else if e.cause.is_input() {
                        tracing::warn!(spec, error = %msg, "heal refused: run `iscsimple heal` as it says");
                    } else {
                        tracing::warn!(spec, error = %msg, "heal failed; will retry");
                    }
                    self.heal_error.insert(key.to_string(), msg);
                }
            }
        }
        for n in notices {
            tracing::info!(spec, notice = %n, "notice");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_interval_of_minutes_is_not_cut_to_65_seconds() {
        let ms = |d| i32::from(crate::md::poll_timeout(d));
        assert_eq!(ms(Duration::from_secs(600)), 600_000);
        assert_eq!(ms(Duration::from_secs(2)), 2_000);
        assert_eq!(ms(Duration::from_secs(86_400)), 86_400_000);
    }
}
