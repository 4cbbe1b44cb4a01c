//! `iscsimple libvirt-hook NAME OP SUBOP EXTRA` with the domain XML on
//! stdin: run by /etc/libvirt/hooks/qemu.d/iscsimple. Never writes stdout
//! (libvirt reads it back as XML for some ops) and never calls libvirt.
//! What each call does is [`iscsimple::libvirt::hook`]'s.
use std::io::Read;
use std::path::Path;

use iscsimple::libvirt::hook::{self, Call};
use iscsimple::libvirt::Action;

use super::{load_config, CmdResult, Failure, Setup};

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
    let what = format!("libvirt hook {} {}", args.op, args.subop);
    let mut xml = String::new();
    // libvirt writes the whole XML and closes stdin; read it so it never blocks.
    let read = std::io::stdin().read_to_string(&mut xml);
    let call = match Call::new(
        &args.name,
        &args.op,
        &args.subop,
        read.map(|_| xml.as_str()),
    ) {
        Ok(Some(call)) => call,
        Ok(None) => return Ok(()),
        Err(e) => return Err(Failure::input(anyhow::Error::from(e).context(what))),
    };
    if call.action == Action::ClearIncoming {
        // Best effort: the domain is gone either way.
        match load_config(config) {
            Ok(c) => hook::stopped(&iscsimple::state::Store::new(&c.run_dir), &call.domain),
            Err(e) => {
                tracing::warn!(domain = %call.domain, error = %e.error, "config unusable at stopped")
            }
        }
        return Ok(());
    }
    let setup = Setup::load(config)?;
    if call.attaches() {
        setup.ready(&what)?;
    } else if call.releases() {
        super::check_dirs(&setup.config, &what)?;
    }
    hook::run(&setup.engine(), &call).map_err(|e| {
        if e.is_input() {
            Failure::input(e)
        } else {
            Failure::failed(e)
        }
    })
}
