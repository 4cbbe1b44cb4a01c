//! `iscsimple libvirt-hook NAME OP SUBOP EXTRA` with the domain XML on
//! stdin: run by /etc/libvirt/hooks/qemu.d/iscsimple. Never writes stdout
//! (libvirt reads it back as XML for some ops) and never calls libvirt.
use std::io::Read;
use std::path::Path;

use anyhow::{anyhow, Context};
use iscsimple::disk::Engine;
use iscsimple::libvirt::{self, Action};
use iscsimple::runner::RealRunner;
use iscsimple::state::{Holder, IncomingMark};

use super::{load_config, CmdResult, Failure};

/// Arguments libvirt passes to a qemu hook.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Domain name.
    pub name: String,
    /// Operation (prepare, start, started, stopped, release, migrate, restore, reconnect, ...).
    pub op: String,
    /// Sub-operation (begin, end, -).
    pub subop: String,
    /// Extra argument (unused).
    pub extra: Option<String>,
}

pub(crate) fn run(args: Args, config: Option<&Path>) -> CmdResult {
    // Every log line of this call carries the domain (and, per disk, the spec).
    let span =
        tracing::info_span!("libvirt", domain = %args.name, op = %args.op, subop = %args.subop);
    let _entered = span.enter();
    let action = libvirt::action(&args.op, &args.subop);
    let mut xml = String::new();
    // libvirt writes the whole XML and closes stdin; read it so it never blocks.
    let read = std::io::stdin().read_to_string(&mut xml);
    if action == Action::Nothing {
        return Ok(());
    }
    if action == Action::ClearIncoming {
        // Best effort: the domain is gone either way.
        match load_config(config) {
            Ok(c) => {
                let store = iscsimple::state::Store::new(&c.run_dir);
                if let Err(e) = store.clear_incoming(&libvirt::mark_name(&args.name)) {
                    tracing::warn!(domain = %args.name, error = %e, "cannot clear the incoming-migration mark");
                }
            }
            Err(e) => {
                tracing::warn!(domain = %args.name, error = %e.error, "config unusable at stopped")
            }
        }
        return Ok(());
    }
    let disks = match read
        .map_err(anyhow::Error::from)
        .and_then(|_| libvirt::disks(&args.name, &xml).map_err(Into::into))
    {
        Ok(d) => d,
        // Without usable XML, release still lets go of what we recorded.
        Err(e) if action == Action::Detach => {
            tracing::warn!(domain = %args.name, error = %e, "domain XML unusable; releasing recorded disks");
            Vec::new()
        }
        // migrate begin is an XML filter: it must never fail the migration.
        Err(e) if action == Action::MarkIncoming => {
            tracing::warn!(domain = %args.name, error = %e, "domain XML unusable at migrate begin");
            return Ok(());
        }
        Err(e) => {
            return Err(Failure::input(
                e.context(format!("libvirt hook {} {}", args.op, args.subop)),
            ))
        }
    };
    let config = load_config(config)?;
    let runner = RealRunner::new();
    let engine = Engine::new(&config, &runner);
    match action {
        Action::MarkIncoming if !disks.is_empty() => {
            // Best effort and quick: this op is an XML filter and must not fail.
            let mark = IncomingMark {
                domain: args.name.clone(),
                uuid: libvirt::domain_uuid(&xml),
                since: iscsimple::state::now(),
            };
            if let Err(e) = engine
                .store
                .mark_incoming(&libvirt::mark_name(&args.name), &mark)
            {
                tracing::error!(domain = %args.name, error = %e, "cannot record the incoming migration");
            }
            Ok(())
        }
        Action::Attach if !disks.is_empty() => {
            super::require_programs(&runner)?;
            let incoming = engine
                .store
                .take_incoming(
                    &libvirt::mark_name(&args.name),
                    libvirt::domain_uuid(&xml).as_deref(),
                    INCOMING_MAX_AGE,
                )
                .map_err(Failure::failed)?;
            attach_all(&engine, &args.name, &disks, incoming)
        }
        Action::Detach => {
            let _ = engine.store.clear_incoming(&libvirt::mark_name(&args.name));
            detach_all(&engine, &args.name)
        }
        _ => Ok(()),
    }
}

/// A `migrate begin` older than this is not taken as the start of this
/// `prepare`: libvirt runs both hooks of one incoming migration within
/// its Prepare phase, seconds apart. A mark left by a migration that
/// failed before its start (no `stopped`, no `release`) must not make a
/// later normal start look incoming.
const INCOMING_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(120);

/// Attach every disk. On an incoming migration a mirror that is not
/// already here comes up with its iSCSI leg only: the source still writes to
/// the iSCSI disk until libvirt switches over, so a resync started now would
/// copy blocks that are still changing. A detached watcher joins the local
/// leg once libvirt records the domain as running here.
fn attach_all(
    engine: &Engine<'_>,
    domain: &str,
    disks: &[libvirt::DomainDisk],
    incoming: bool,
) -> CmdResult {
    let mut done: Vec<String> = Vec::new();
    for d in disks {
        let name = libvirt::holder_name(domain, &d.target);
        let span = tracing::info_span!("disk", spec = %d.spec, target = %d.target);
        let _entered = span.enter();
        let r = (|| -> anyhow::Result<()> {
            let spec: iscsimple::spec::Spec = d.spec.parse()?;
            engine.store.save_holder(
                &name,
                &Holder {
                    spec: spec.to_string(),
                    domain: domain.to_string(),
                    backend: d.target.clone(),
                    writable: true,
                },
            )?;
            let defer_local =
                incoming && spec.label.is_some() && engine.find(&spec.to_string())?.is_none();
            let dev = engine.attach_with(&spec, iscsimple::disk::AttachOptions { defer_local })?;
            if defer_local {
                engine.spawn_join_watcher(&["--after-libvirt-domain", domain], &spec)?;
            }
            let want = std::fs::canonicalize(&dev).with_context(|| format!("{}", dev.display()))?;
            match &d.source {
                Some(src) if std::fs::canonicalize(src).ok().as_ref() == Some(&want) => Ok(()),
                Some(src) => Err(anyhow!("disk {}: <source dev='{}'> is not the attached device {}", d.target, src.display(), dev.display())),
                None => Err(anyhow!("disk {} is listed in the iscsimple metadata but the domain has no disk with that target", d.target)),
            }
        })();
        match r {
            Ok(()) => done.push(name),
            Err(e) => {
                // Roll back this domain's disks: the current one too (its holder was saved).
                done.push(name);
                for n in done.iter().rev() {
                    if let Err(re) = release(engine, n) {
                        tracing::error!(holder = %n, error = %re, "rollback of a libvirt disk failed");
                    }
                }
                return Err(Failure::failed(e.context(format!("domain {domain}"))));
            }
        }
    }
    Ok(())
}

/// Let go of one holder; detach when it was the last.
fn release(engine: &Engine<'_>, name: &str) -> anyhow::Result<()> {
    let Some(h) = engine.store.holder(name)? else {
        return Ok(());
    };
    let span = tracing::info_span!("disk", spec = %h.spec, target = %h.backend);
    let _entered = span.enter();
    let others = engine
        .store
        .holders()?
        .into_iter()
        .any(|(n, o)| n != name && o.spec == h.spec);
    if !others {
        engine.detach(&h.spec)?;
    }
    engine.store.remove_holder(name)?;
    Ok(())
}

fn detach_all(engine: &Engine<'_>, domain: &str) -> CmdResult {
    let mut first_err = None;
    // By the recorded domain: a name prefix would also match `web-2` for `web`.
    for (name, h) in engine.store.holders().map_err(Failure::failed)? {
        if name.starts_with("libvirt-") && h.domain == domain {
            if let Err(e) = release(engine, &name) {
                tracing::error!(holder = %name, error = %e, "release failed");
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(Failure::failed(
            e.context(format!("domain {domain}: release")),
        )),
        None => Ok(()),
    }
}
