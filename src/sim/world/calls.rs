//! The tool's calls on the simulated host: engine, holders and Xen's
//! steps, with kills, holds and log capture at the crash points.
use super::*;

/// What a crash point does on a call's thread.
pub(super) enum AtPoint {
    Run,
    Kill(u32),
    Hold(u32, mpsc::Sender<()>, mpsc::Receiver<()>),
}

/// Every field of every event and span a call logs, at the most verbose
/// level, looked at for the secret (cheaper than formatting lines).
#[derive(Debug, Clone, Default)]
struct Leaks(Arc<std::sync::Mutex<Vec<String>>>);

/// Finds the secret in one event's or span's fields.
struct Find<'a>(&'a mut Option<String>);

impl tracing::field::Visit for Find<'_> {
    fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
        let s = format!("{v:?}");
        if s.contains(SECRET) {
            *self.0 = Some(format!("{}={s}", f.name()));
        }
    }

    fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
        if v.contains(SECRET) {
            *self.0 = Some(format!("{}={v}", f.name()));
        }
    }
}

impl Leaks {
    fn note(&self, what: &str, hit: Option<String>) {
        if let Some(h) = hit {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!("{what}: {h}"));
        }
    }

    fn first(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .first()
            .cloned()
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Leaks {
    fn on_event(&self, e: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut hit = None;
        e.record(&mut Find(&mut hit));
        self.note(e.metadata().target(), hit);
    }

    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut hit = None;
        attrs.record(&mut Find(&mut hit));
        self.note(attrs.metadata().name(), hit);
    }

    fn on_record(
        &self,
        _: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut hit = None;
        values.record(&mut Find(&mut hit));
        self.note("span", hit);
    }
}

/// libvirt domain `d`'s XML with `specs` as its disks (vda, vdb), each
/// with the device attach hands out as its source.
fn domain_xml(d: usize, specs: &[String]) -> String {
    let mut meta = String::new();
    let mut devices = String::new();
    for (n, spec) in specs.iter().enumerate() {
        let target = format!("vd{}", char::from(b'a' + u8::try_from(n).unwrap_or(0)));
        let label = spec.rsplit_once('+').map(|(_, l)| l).unwrap_or("none");
        meta.push_str(&format!("<i:disk target='{target}' spec='{spec}'/>"));
        devices.push_str(&format!(
            "<disk type='block' device='disk'><source dev='/dev/md/{label}'/><target dev='{target}'/></disk>"
        ));
    }
    format!(
        "<domain type='kvm'><name>vm{d}</name><uuid>00000000-0000-4000-8000-00000000000{d}</uuid>\
         <metadata><i:disks xmlns:i='{}'>{meta}</i:disks></metadata><devices>{devices}</devices></domain>",
        crate::libvirt::NAMESPACE
    )
}

/// One call of the libvirt hook for domain `d`.
fn hook(
    engine: &Engine<'_>,
    d: usize,
    op: &str,
    subop: &str,
    specs: &[String],
) -> Result<(), (String, bool)> {
    let xml = domain_xml(d, specs);
    let call = crate::libvirt::hook::Call::new(&format!("vm{d}"), op, subop, Ok(&xml))
        .map_err(|e| (e.to_string(), true))?;
    match call {
        Some(c) => crate::libvirt::hook::run(engine, &c).map_err(|e| {
            let input = e.is_input();
            (e.to_string(), input)
        }),
        None => Ok(()),
    }
}

/// The holder record name of domain `d`'s one disk.
fn xen_name(d: usize) -> String {
    format!("xen-vbd-{d}-51712")
}

/// `xen add`'s steps without xenstore: the sharing check, the holder
/// (reclaim, record), the attach.
fn dom_add(
    engine: &Engine<'_>,
    live: &mut SimLive,
    d: usize,
    spec: &Spec,
) -> Result<PathBuf, HolderError> {
    let vm = format!("/vm/sim-{d}");
    holders::check_sharing(
        &engine.store,
        live,
        &spec.to_string(),
        &d.to_string(),
        true,
        &mut |h| h.vm.as_deref() == Some(vm.as_str()),
    )?;
    let holder = Holder {
        spec: spec.to_string(),
        domain: d.to_string(),
        backend: format!("backend/vbd/{d}/51712"),
        writable: true,
        vm: Some(vm.clone()),
        since: 0,
        released: false,
    };
    holders::hold(engine, live, &xen_name(d), spec, holder)?;
    holders::attach_or_forget(engine, &xen_name(d), spec, AttachOptions::default())
}

/// Which simulated domains run.
#[derive(Debug)]
struct SimLive(BTreeSet<String>);

impl holders::Liveness for SimLive {
    fn life(&mut self, _name: &str, h: &Holder) -> holders::Life {
        if self.0.contains(&h.domain) {
            holders::Life::Alive
        } else {
            holders::Life::Dead
        }
    }
}

impl World {
    pub(super) fn run_call(&self, op: &Op, at: AtPoint) -> Outcome {
        crate::clock::install(Some(self.clock.clone()));
        let mut count = 0u32;
        let (hold, kill_at) = match at {
            AtPoint::Hold(n, tx, rx) => (Some((n, tx, rx)), None),
            AtPoint::Kill(n) => (None, Some(n)),
            AtPoint::Run => (None, None),
        };
        let held = std::sync::Mutex::new(hold);
        crate::crash::hook::install(Some(Box::new(move |_step| {
            count += 1;
            if kill_at == Some(count) {
                std::panic::panic_any(Killed);
            }
            let mut h = held.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((n, _, _)) = h.as_ref() {
                if *n == count {
                    let (_, tx, rx) = h.take().expect("checked");
                    let _ = tx.send(());
                    let _ = rx.recv();
                }
            }
        })));
        let spec = match op {
            Op::Attach(i)
            | Op::Detach(i)
            | Op::DetachRunning(i)
            | Op::Heal(i)
            | Op::DomAdd(_, i) => Some(canon(&self.spec(*i))),
            Op::DomRemove(d) => self.domains.get(d).map(|(s, _)| s.clone()),
            Op::VirtMigrateIn(_, i) => Some(canon(&self.spec(*i))),
            _ => None,
        };
        let specs: Vec<String> = match op {
            Op::VirtStart(_, i, j) => vec![canon(&self.spec(*i)), canon(&self.spec(*j))],
            Op::VirtStop(d) => self.virts.get(d).cloned().unwrap_or_default(),
            _ => Vec::new(),
        };
        let name = match op {
            Op::Attach(_) | Op::DomAdd(..) | Op::VirtStart(..) | Op::VirtMigrateIn(..) => "attach",
            Op::Detach(_) | Op::DetachRunning(_) | Op::DomRemove(_) | Op::VirtStop(_) => "detach",
            Op::Heal(_) => "heal",
            Op::Sweep => "sweep",
            _ => "watch",
        };
        set_caller(Caller {
            spec: spec.clone(),
            op: name,
            specs: specs.clone(),
        });
        // A libvirt domain's VM stops before its release.
        if let Op::VirtStop(_) = op {
            let mut m = self.host.model();
            for s in &specs {
                if let Some(k) = self.vms.get(s) {
                    m.open_by_vm.remove(k);
                }
            }
        }
        // A VM stops before its disk is detached (not for DetachRunning).
        if let (Op::Detach(_) | Op::DomRemove(_), Some(s)) = (op, &spec) {
            let mut m = self.host.model();
            if let Some(k) = self.vms.get(s) {
                m.open_by_vm.remove(k);
            }
        }
        let leaks = Leaks::default();
        let run = || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.engine_call(op, name)))
        };
        let out = if self.check_logs {
            use tracing_subscriber::layer::SubscriberExt;
            let sub = tracing_subscriber::registry().with(leaks.clone());
            tracing::subscriber::with_default(sub, run)
        } else {
            run()
        };
        if let Some(line) = leaks.first() {
            self.host.model().violations.push(Violation {
                invariant: "no secret in logs",
                detail: format!("{op} logged {line}"),
            });
        }
        crate::crash::hook::install(None);
        crate::clock::install(None);
        let kind = match &out {
            Ok(o) => o.kind(),
            Err(_) => "killed",
        };
        *STATS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((name, kind))
            .or_default() += 1;
        set_caller(Caller::default());
        // The held call ends without reaching its point: let B not wait.
        match out {
            Ok(o) => o,
            Err(p) if p.is::<Killed>() => Outcome::Killed,
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    pub(super) fn engine_call(&self, op: &Op, name: &'static str) -> Outcome {
        let sys = Sys::modelled(self.root(), Arc::new(self.host.clone()));
        let engine = Engine::new(&self.config, &self.host).with_sys(sys);
        let disk = |e: crate::disk::DiskError| {
            let input = e.cause.is_input();
            (e.to_string(), input)
        };
        let held = |e: HolderError| {
            let input = e.is_input();
            (e.to_string(), input)
        };
        // Running Xen domains by id, running libvirt domains by name.
        let mut live = SimLive(
            self.domains
                .iter()
                .filter(|(_, (_, alive))| *alive)
                .map(|(d, _)| d.to_string())
                .chain(self.virts.keys().map(|d| format!("vm{d}")))
                .collect(),
        );
        let res: Result<Option<PathBuf>, (String, bool)> = match op {
            Op::Attach(i) => match self.spec(*i).parse::<Spec>() {
                Ok(s) => engine.attach(&s).map(Some).map_err(disk),
                Err(e) => return Outcome::Refused(e.to_string()),
            },
            Op::Detach(i) | Op::DetachRunning(i) => engine
                .detach(&canon(&self.spec(*i)))
                .map(|_| None)
                .map_err(disk),
            Op::Heal(i) => engine
                .heal(&canon(&self.spec(*i)), HealOptions::default())
                .map(|_| None)
                .map_err(disk),
            Op::DomAdd(d, i) => {
                // `xen add` under its budget, a third kept for the undo.
                let total = self.config.timeouts.hotplug;
                let engine = engine.fork().with_budget(Budget::new(total, total / 3));
                match self.spec(*i).parse::<Spec>() {
                    Ok(spec) => dom_add(&engine, &mut live, *d, &spec)
                        .map(Some)
                        .map_err(held),
                    Err(e) => return Outcome::Refused(e.to_string()),
                }
            }
            Op::DomRemove(d) => {
                live.0.remove(&d.to_string());
                holders::release(&engine, &mut live, &xen_name(*d))
                    .map(|()| None)
                    .map_err(held)
            }
            Op::VirtStart(d, i, j) => {
                let mut disks = vec![self.spec(*i)];
                if j != i {
                    disks.push(self.spec(*j));
                }
                hook(&engine, *d, "prepare", "begin", &disks).map(|()| None)
            }
            Op::VirtMigrateIn(d, i) => {
                let disks = vec![self.spec(*i)];
                hook(&engine, *d, "migrate", "begin", &disks)
                    .and_then(|()| hook(&engine, *d, "prepare", "begin", &disks))
                    .and_then(|()| {
                        // Once the domain runs here its watcher joins the
                        // local leg (what `join --after-libvirt-domain` does).
                        engine
                            .join_local(&canon(&self.spec(*i)))
                            .map(|_| ())
                            .map_err(disk)
                    })
                    .map(|()| None)
            }
            Op::VirtStop(d) => {
                let disks = self.virts.get(d).cloned().unwrap_or_default();
                hook(&engine, *d, "release", "end", &disks)
                    .and_then(|()| hook(&engine, *d, "stopped", "end", &disks))
                    .map(|()| None)
            }
            Op::Sweep => holders::sweep(&engine, &mut live)
                .map(|_| None)
                .map_err(|e| (e.to_string(), false)),
            _ => {
                let all = engine.store.all().unwrap_or_default();
                for (_, a) in all {
                    if a.mirror.is_none() {
                        continue;
                    }
                    set_caller(Caller {
                        spec: Some(canon(&a.spec)),
                        op: name,
                        specs: Vec::new(),
                    });
                    let _ = engine.fork().reconcile(&a.spec);
                }
                Ok(None)
            }
        };
        let out = match res {
            Ok(p) => Outcome::Ok(p),
            Err((text, true)) => Outcome::Refused(text),
            Err((text, false)) => Outcome::Failed(text),
        };
        if let Outcome::Refused(t) | Outcome::Failed(t) = &out {
            if t.contains(SECRET) {
                self.host.model().violations.push(Violation {
                    invariant: "no secret in errors",
                    detail: format!("{op}: {t}"),
                });
            }
        }
        for n in engine.notices.borrow().iter() {
            if n.contains(SECRET) {
                self.host.model().violations.push(Violation {
                    invariant: "no secret in errors",
                    detail: format!("{op}: notice {n}"),
                });
            }
        }
        out
    }
}
