//! `iscsimple libvirt-hook NAME OP SUBOP EXTRA` with the domain XML on
//! stdin: run by /etc/libvirt/hooks/qemu.d/iscsimple. Never writes stdout
//! (libvirt reads it back as XML for some ops) and never calls libvirt.
use std::io::Read;
use std::path::Path;

use anyhow::{anyhow, Context};
use iscsimple::disk::{AttachOptions, DiskError, Engine};
use iscsimple::holders::{self, HolderError, HostLiveness, Preparing};
use iscsimple::libvirt::{self, Action};
use iscsimple::runner::RealRunner;
use iscsimple::spec::Spec;
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
            super::check_dirs(&config, &format!("libvirt hook {} {}", args.op, args.subop))?;
            super::require_programs(&runner)?;
            let incoming = engine
                .store
                .take_incoming(
                    &libvirt::mark_name(&args.name),
                    libvirt::domain_uuid(&xml).as_deref(),
                    INCOMING_MAX_AGE,
                )
                .map_err(Failure::failed)?;
            let uuid = libvirt::domain_uuid(&xml);
            attach_all(&engine, &args.name, uuid, &disks, incoming)
        }
        Action::Detach => {
            super::check_dirs(&config, &format!("libvirt hook {} {}", args.op, args.subop))?;
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

/// Attach every disk, each checked before any is touched (spec, label
/// table, local volume, label and LUN free, recorded newer data, no other
/// running domain using it): a refused disk costs no other disk anything.
/// Local volumes are overwritten only once every disk is attached (the
/// LUNs' sizes are known only after their scans). On an incoming migration
/// a mirror that is not already here comes up with its iSCSI leg only: the
/// source still writes to the iSCSI disk until libvirt switches over, so a
/// resync started now would copy blocks that are still changing. A
/// detached watcher joins the local leg once libvirt records the domain as
/// running here.
fn attach_all(
    engine: &Engine<'_>,
    domain: &str,
    uuid: Option<String>,
    disks: &[libvirt::DomainDisk],
    incoming: bool,
) -> CmdResult {
    let mut live = Preparing {
        domain,
        inner: HostLiveness::new(),
    };
    let refuse = |e: anyhow::Error| Failure::input(e.context(format!("domain {domain}")));
    let mut plan = Vec::new();
    for d in disks {
        let spec: Spec = d
            .spec
            .parse()
            .map_err(|e| refuse(anyhow::Error::from(e).context(format!("disk {}", d.target))))?;
        if d.source.is_none() {
            return Err(refuse(anyhow!(
                "disk {} is listed in the iscsimple metadata but the domain has no disk with that target",
                d.target
            )));
        }
        let defer_local = incoming
            && spec.label.is_some()
            && engine
                .find(&spec.to_string())
                .map_err(Failure::failed)?
                .is_none();
        let opts = AttachOptions {
            defer_local,
            hold_local: true,
        };
        engine
            .check(&spec, opts)
            .map_err(|e| failure(e.into(), domain))?;
        holders::check_sharing(
            &engine.store,
            &mut live,
            &spec.to_string(),
            domain,
            true,
            &mut |_| false,
        )
        .map_err(|e| failure(e.into(), domain))?;
        plan.push((d, spec, opts));
    }
    for (_, spec, opts) in &mut plan {
        holders::reclaim(engine, &mut live, spec).map_err(|e| failure(e.into(), domain))?;
        // A leaked attachment just detached no longer counts as "here".
        opts.defer_local = incoming
            && spec.label.is_some()
            && engine
                .find(&spec.to_string())
                .map_err(Failure::failed)?
                .is_none();
    }
    let mut done: Vec<String> = Vec::new();
    let r = (|| -> anyhow::Result<()> {
        for (d, spec, opts) in &plan {
            let name = libvirt::holder_name(domain, &d.target);
            let span = tracing::info_span!("disk", spec = %spec, target = %d.target);
            let _entered = span.enter();
            holders::claim(
                &engine.store,
                &name,
                Holder {
                    spec: spec.to_string(),
                    domain: domain.to_string(),
                    backend: d.target.clone(),
                    writable: true,
                    vm: uuid.clone(),
                    since: 0,
                    released: false,
                },
            )?;
            done.push(name);
            let dev = engine.attach_with(spec, *opts)?;
            if opts.defer_local {
                engine.spawn_join_watcher(&["--after-libvirt-domain", domain], spec)?;
            }
            let want = std::fs::canonicalize(&dev).with_context(|| format!("{}", dev.display()))?;
            match &d.source {
                Some(src) if std::fs::canonicalize(src).ok().as_ref() == Some(&want) => {}
                Some(src) => {
                    return Err(anyhow!(
                        "disk {}: <source dev='{}'> is not the attached device {}",
                        d.target,
                        src.display(),
                        dev.display()
                    ))
                }
                None => unreachable!("checked above"),
            }
        }
        // Every disk is attached: now the local legs join (resync from iSCSI).
        for (d, spec, opts) in &plan {
            if !opts.defer_local {
                let span = tracing::info_span!("disk", spec = %spec, target = %d.target);
                let _entered = span.enter();
                engine.join_local(&spec.to_string())?;
            }
        }
        Ok(())
    })();
    if let Err(e) = r {
        // Roll back this domain's disks (the failing one's holder was saved too).
        let mut live = HostLiveness::new();
        for n in done.iter().rev() {
            if let Err(re) = holders::release(engine, &mut live, n) {
                tracing::error!(holder = %n, error = %re, "rollback of a libvirt disk failed");
            }
        }
        return Err(failure(e, domain));
    }
    Ok(())
}

/// An attach error: exit 2 when the input was at fault, else 1.
fn failure(e: anyhow::Error, domain: &str) -> Failure {
    let input = e
        .downcast_ref::<DiskError>()
        .map(|d| d.cause.is_input())
        .or_else(|| e.downcast_ref::<HolderError>().map(HolderError::is_input))
        .unwrap_or(false);
    let e = e.context(format!("domain {domain}"));
    if input {
        Failure::input(e)
    } else {
        Failure::failed(e)
    }
}

fn detach_all(engine: &Engine<'_>, domain: &str) -> CmdResult {
    let mut first_err = None;
    let mut live = HostLiveness::new();
    // By the recorded domain: a name prefix would also match `web-2` for `web`.
    for (name, h) in engine.store.holders().map_err(Failure::failed)? {
        if name.starts_with("libvirt-") && h.domain == domain {
            let span = tracing::info_span!("disk", spec = %h.spec, target = %h.backend);
            let _entered = span.enter();
            if let Err(e) = holders::release(engine, &mut live, &name) {
                tracing::error!(holder = %name, error = %e, "release failed");
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(Failure::failed(
            anyhow::Error::from(e).context(format!("domain {domain}: release")),
        )),
        None => Ok(()),
    }
}
