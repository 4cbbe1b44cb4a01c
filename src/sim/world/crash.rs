//! Kills and interleavings: a call killed at a crash point and run again,
//! compared with the same call uninterrupted from the same state; a call
//! held at a crash point while another runs whole.
use std::fs;
use std::sync::mpsc;

use super::calls::AtPoint;
use super::{copy_tree, Dir, Saved, World};
use crate::sim::model::Violation;
use crate::sim::sched::{describe, Op, Outcome};

impl World {
    pub(super) fn kill_rerun(&mut self, op: &Op, call: &Op, n: u32) {
        // The reference: the same call, uninterrupted, from the same state.
        let saved = self.save();
        let want = self.call(call, AtPoint::Run);
        let want_state = self.full_state();
        let want_clean = self.clean_copies();
        self.restore(saved);
        let first = self.call(call, AtPoint::Kill(n));
        let again = if first == Outcome::Killed {
            self.call(call, AtPoint::Run)
        } else {
            first.clone()
        };
        let got_state = self.full_state();
        let got_clean = self.clean_copies();
        if !got_clean.is_subset(&want_clean) {
            self.host.model().violations.push(Violation {
                invariant: "a killed call never leaves a copy clean that the whole call would not",
                detail: format!(
                    "{call}: uninterrupted {want_clean:?}, killed at {n} and rerun {got_clean:?}"
                ),
            });
        }
        self.trace.push(format!(
            "{op}: {} then {}",
            describe(&first),
            describe(&again)
        ));
        // A rerun that still reports success or failure as the reference
        // did, and leaves the same host.
        if want.kind() != again.kind() || want_state != got_state {
            self.host.model().violations.push(Violation {
                invariant: "a rerun after a kill converges",
                detail: format!(
                    "{call}: uninterrupted {} → {want_state}\n  killed at {n} and rerun {} → {got_state}",
                    describe(&want),
                    describe(&again)
                ),
            });
        }
    }

    pub(super) fn interleave(&mut self, op: &Op, a: &Op, n: u32, b: &Op) {
        let (to_a, a_rx) = mpsc::channel();
        let (a_tx, from_a) = mpsc::channel();
        let (oa, ob) = std::thread::scope(|s| {
            let w: &World = self;
            let ha = s.spawn(move || w.run_call(a, AtPoint::Hold(n, a_tx, a_rx)));
            // A reaches its point (or ends) before B starts.
            let held = from_a.recv().is_ok();
            let ob = held.then(|| {
                // What A has let go of by its point is attached no more.
                w.sync_attached();
                let hb = s.spawn(move || w.run_call(b, AtPoint::Run));
                let ob = hb
                    .join()
                    .unwrap_or_else(|_| Outcome::Failed("panicked".into()));
                // What B detached is attached no more when A goes on.
                w.sync_attached();
                ob
            });
            let _ = to_a.send(());
            let oa = ha
                .join()
                .unwrap_or_else(|_| Outcome::Failed("panicked".into()));
            (oa, ob)
        });
        self.after(a, &oa);
        if let Some(ob) = &ob {
            self.after(b, ob);
        }
        self.trace.push(format!(
            "{op}: A {}, B {}",
            describe(&oa),
            ob.as_ref()
                .map_or_else(|| "not run (A ended first)".into(), describe)
        ));
    }

    fn save(&self) -> Saved {
        let copy = Dir::new();
        copy_tree(self.root(), &copy.0);
        Saved {
            model: self.host.model().clone(),
            files: copy,
            vms: self.vms.clone(),
            domains: self.domains.clone(),
            held_ever: self.held_ever.clone(),
            virts: self.virts.clone(),
        }
    }

    fn restore(&mut self, s: Saved) {
        let _ = fs::remove_dir_all(self.root());
        copy_tree(&s.files.0, self.root());
        *self.host.model() = s.model;
        self.vms = s.vms;
        self.domains = s.domains;
        self.held_ever = s.held_ever;
        self.virts = s.virts;
    }
}
