//! What the qemu hook does with a domain's disks (`iscsimple libvirt-hook`):
//! attach them all at `prepare begin`, let go of them at `release end`, and
//! remember an incoming migration between its `migrate begin` and its
//! `prepare begin`. The CLI only reads stdin, sets up and maps the result
//! to an exit code; the hook never prints (see [`crate::libvirt`]).
//!
//! Every disk is claimed through [`crate::holders`] before it is attached
//! and let go through it, as Xen's backends are: a domain's disk is one
//! holder record, named by [`holder_name`].
use std::path::PathBuf;
use std::time::Duration;

use crate::disk::{AttachOptions, DiskError, Engine};
use crate::holders::{self, HolderError, HostLiveness, Kind, Preparing};
use crate::runner::RunError;
use crate::spec::{Spec, SpecError};
use crate::state::{self, Holder, IncomingMark, StateError, Store};

use super::{disks, domain_uuid, holder_name, mark_name, Action, DomainDisk, HookError};

/// A `migrate begin` older than this is not taken as the start of this
/// `prepare`: libvirt runs both hooks of one incoming migration within
/// its Prepare phase, seconds apart. A mark left by a migration that
/// failed before its start (no `stopped`, no `release`) must not make a
/// later normal start look incoming.
pub const INCOMING_MAX_AGE: Duration = Duration::from_secs(120);

/// Why a hook call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Records could not be read.
    #[error(transparent)]
    State(#[from] StateError),
    /// A disk of the domain was refused, or attaching the domain's disks
    /// failed (and was rolled back).
    #[error("domain {domain}")]
    Prepare {
        /// The domain.
        domain: String,
        /// What went wrong.
        #[source]
        source: DiskFailure,
    },
    /// Letting go of a disk of the domain failed (the record is kept for a
    /// retry, see [`holders::release`]).
    #[error("domain {domain}: release")]
    Release {
        /// The domain.
        domain: String,
        /// The first failure.
        #[source]
        source: HolderError,
    },
}

impl CallError {
    /// True when the domain's XML or the host's setup for it is at fault
    /// and nothing was changed (exit 2). A failed release is never that.
    pub fn is_input(&self) -> bool {
        match self {
            CallError::Prepare { source, .. } => source.is_input(),
            CallError::State(_) | CallError::Release { .. } => false,
        }
    }
}

/// Why one disk of a domain could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum DiskFailure {
    /// The disk's spec does not parse.
    #[error("disk {target}")]
    Spec {
        /// The guest device name.
        target: String,
        /// The cause.
        #[source]
        source: SpecError,
    },
    /// Our metadata names a target the domain has no disk for.
    #[error("disk {target} is listed in the iscsimple metadata but the domain has no disk with that target")]
    NoSource {
        /// The guest device name.
        target: String,
    },
    /// The domain's disk is not the device attach returned.
    #[error("disk {target}: <source dev='{}'> is not the attached device {}", source_dev.display(), device.display())]
    WrongSource {
        /// The guest device name.
        target: String,
        /// The domain disk's `<source dev>`.
        source_dev: PathBuf,
        /// What attach returned.
        device: PathBuf,
    },
    /// The attached device cannot be resolved.
    #[error("{}", path.display())]
    Device {
        /// The device attach returned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The check, the attach or the join failed.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// Sharing refused, or reclaiming a leaked attachment failed.
    #[error(transparent)]
    Holder(#[from] HolderError),
    /// Holder records.
    #[error(transparent)]
    State(#[from] StateError),
    /// The local-leg watcher could not be started.
    #[error(transparent)]
    Spawn(#[from] RunError),
}

impl DiskFailure {
    /// True when the input (the XML, the spec, the label table, a disk
    /// another domain uses) is at fault.
    pub fn is_input(&self) -> bool {
        match self {
            DiskFailure::Spec { .. } | DiskFailure::NoSource { .. } => true,
            DiskFailure::Disk(e) => e.cause.is_input(),
            DiskFailure::Holder(e) => e.is_input(),
            DiskFailure::WrongSource { .. }
            | DiskFailure::Device { .. }
            | DiskFailure::State(_)
            | DiskFailure::Spawn(_) => false,
        }
    }
}

/// One hook call: the domain, what libvirt asks for, and our disks in its
/// XML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The domain name.
    pub domain: String,
    /// What to do.
    pub action: Action,
    /// Our disks in the domain XML (none when the XML was not needed, or
    /// was unusable at `release`).
    pub disks: Vec<DomainDisk>,
    /// The domain's UUID, from its XML.
    pub uuid: Option<String>,
}

impl Call {
    /// What `NAME OP SUBOP` with `xml` read from stdin asks for. None: do
    /// nothing, not even read the configuration (every op but four, and a
    /// `migrate begin` whose XML is unusable: that op is an XML filter and
    /// must never fail the migration). At `release end` an unusable XML
    /// still lets go of what is recorded for the domain. Otherwise an
    /// unusable XML is the caller's error.
    pub fn new(
        domain: &str,
        op: &str,
        subop: &str,
        xml: Result<&str, std::io::Error>,
    ) -> Result<Option<Call>, HookError> {
        let action = super::action(op, subop);
        let mut call = Call {
            domain: domain.to_string(),
            action,
            disks: Vec::new(),
            uuid: None,
        };
        match action {
            Action::Nothing => return Ok(None),
            Action::ClearIncoming => return Ok(Some(call)),
            _ => {}
        }
        match xml
            .map_err(HookError::from)
            .and_then(|x| Ok((disks(domain, x)?, x)))
        {
            Ok((d, x)) => {
                call.disks = d;
                call.uuid = domain_uuid(x);
            }
            Err(e) if action == Action::Detach => {
                tracing::warn!(domain = %domain, error = %e, "domain XML unusable; releasing recorded disks");
            }
            Err(e) if action == Action::MarkIncoming => {
                tracing::warn!(domain = %domain, error = %e, "domain XML unusable at migrate begin");
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
        Ok(Some(call))
    }

    /// Whether the call attaches disks (the host must be ready for it:
    /// directories safe, programs found).
    pub fn attaches(&self) -> bool {
        self.action == Action::Attach && !self.disks.is_empty()
    }

    /// Whether the call lets go of the domain's disks.
    pub fn releases(&self) -> bool {
        self.action == Action::Detach
    }
}

/// Do what `call` asks, on this host.
pub fn run(engine: &Engine<'_>, call: &Call) -> Result<(), CallError> {
    match call.action {
        Action::MarkIncoming if !call.disks.is_empty() => {
            migrate_begin(&engine.store, call);
            Ok(())
        }
        Action::Attach if !call.disks.is_empty() => {
            let incoming = engine.store.take_incoming(
                &mark_name(&call.domain),
                call.uuid.as_deref(),
                INCOMING_MAX_AGE,
            )?;
            prepare(engine, call, incoming)
        }
        Action::Detach => {
            let _ = engine.store.clear_incoming(&mark_name(&call.domain));
            release(engine, &call.domain)
        }
        Action::ClearIncoming => {
            stopped(&engine.store, &call.domain);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// `migrate begin` of a domain with our disks: remember that it migrates
/// in. Best effort and quick: this op is an XML filter and must not fail.
fn migrate_begin(store: &Store, call: &Call) {
    let mark = IncomingMark {
        domain: call.domain.clone(),
        uuid: call.uuid.clone(),
        since: state::now(),
    };
    if let Err(e) = store.mark_incoming(&mark_name(&call.domain), &mark) {
        tracing::error!(domain = %call.domain, error = %e, "cannot record the incoming migration");
    }
}

/// `stopped end`: forget the incoming-migration mark. Best effort: the
/// domain is gone either way.
pub fn stopped(store: &Store, domain: &str) {
    if let Err(e) = store.clear_incoming(&mark_name(domain)) {
        tracing::warn!(domain = %domain, error = %e, "cannot clear the incoming-migration mark");
    }
}

/// `prepare begin`: attach every disk, each checked before any is touched
/// (spec, label table, local volume, label and LUN free, recorded newer
/// data, no other running domain using it): a refused disk costs no other
/// disk anything. Local volumes are overwritten only once every disk is
/// attached (the LUNs' sizes are known only after their scans). On an
/// incoming migration a mirror that is not already here comes up with its
/// iSCSI leg only: the source still writes to the iSCSI disk until libvirt
/// switches over, so a resync started now would copy blocks that are still
/// changing. A detached watcher joins the local leg once libvirt records
/// the domain as running here.
pub fn prepare(engine: &Engine<'_>, call: &Call, incoming: bool) -> Result<(), CallError> {
    let domain = call.domain.as_str();
    let fail = |source: DiskFailure| CallError::Prepare {
        domain: domain.to_string(),
        source,
    };
    // Deferred only when not already here: a mirror shared with this
    // host's other half of the migration is simply handed over.
    let defer = |spec: &Spec| -> Result<bool, StateError> {
        Ok(incoming && spec.label.is_some() && engine.find(&spec.to_string())?.is_none())
    };
    let mut live = Preparing {
        domain,
        inner: HostLiveness::new(),
    };
    let mut plan = Vec::new();
    for d in &call.disks {
        let spec: Spec = d.spec.parse().map_err(|source| {
            fail(DiskFailure::Spec {
                target: d.target.clone(),
                source,
            })
        })?;
        if d.source.is_none() {
            return Err(fail(DiskFailure::NoSource {
                target: d.target.clone(),
            }));
        }
        let opts = AttachOptions {
            defer_local: defer(&spec)?,
            hold_local: true,
            incoming,
        };
        engine
            .check(&spec, opts)
            .map_err(|e| fail(DiskFailure::Disk(e)))?;
        holders::check_sharing(
            &engine.store,
            &mut live,
            &spec.to_string(),
            domain,
            true,
            &mut |_| false,
        )
        .map_err(|e| fail(DiskFailure::Holder(e)))?;
        plan.push((d, spec, opts));
    }
    for (_, spec, opts) in &mut plan {
        holders::reclaim(engine, &mut live, spec).map_err(|e| fail(DiskFailure::Holder(e)))?;
        // A leaked attachment just detached no longer counts as "here".
        opts.defer_local = defer(spec)?;
    }
    let mut done: Vec<String> = Vec::new();
    let r = (|| -> Result<(), DiskFailure> {
        for (d, spec, opts) in &plan {
            let name = holder_name(domain, &d.target);
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
                    vm: call.uuid.clone(),
                    since: 0,
                    released: false,
                },
            )?;
            done.push(name);
            let dev = engine.attach_with(spec, *opts)?;
            if opts.defer_local {
                engine.spawn_join_watcher(&["--after-libvirt-domain", domain], spec)?;
            }
            let want = engine
                .sys
                .canonical(&dev)
                .ok_or_else(|| DiskFailure::Device {
                    path: dev.clone(),
                    source: std::io::ErrorKind::NotFound.into(),
                })?;
            let src = d.source.as_ref().expect("checked above");
            if engine.sys.canonical(src).as_ref() != Some(&want) {
                return Err(DiskFailure::WrongSource {
                    target: d.target.clone(),
                    source_dev: src.clone(),
                    device: dev,
                });
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
        return Err(fail(e));
    }
    Ok(())
}

/// `release end`: let go of every disk recorded for `domain` (by the
/// recorded domain: a name prefix would also match `web-2` for `web`).
/// Every disk is tried; the first failure is returned.
pub fn release(engine: &Engine<'_>, domain: &str) -> Result<(), CallError> {
    let mut first_err = None;
    let mut live = HostLiveness::new();
    for (name, h) in holders::held_by(&engine.store, Kind::Libvirt, domain)? {
        let span = tracing::info_span!("disk", spec = %h.spec, target = %h.backend);
        let _entered = span.enter();
        if let Err(e) = holders::release(engine, &mut live, &name) {
            tracing::error!(holder = %name, error = %e, "release failed");
            first_err.get_or_insert(e);
        }
    }
    match first_err {
        Some(source) => Err(CallError::Release {
            domain: domain.to_string(),
            source,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = include_str!("../../tests/data/domain-ours.xml");

    fn call(op: &str, subop: &str, xml: &str) -> Result<Option<Call>, HookError> {
        Call::new("vm1", op, subop, Ok(xml))
    }

    #[test]
    fn ops_that_do_nothing_read_nothing() {
        for (op, sub) in [
            ("start", "begin"),
            ("restore", "begin"),
            ("attach", "begin"),
        ] {
            assert_eq!(call(op, sub, "not xml").expect("ok"), None, "{op} {sub}");
        }
        let c = call("stopped", "end", "not xml")
            .expect("ok")
            .expect("acts");
        assert_eq!(c.action, Action::ClearIncoming);
        assert!(!c.attaches() && !c.releases());
    }

    #[test]
    fn unusable_xml_fails_only_prepare() {
        assert!(call("prepare", "begin", "not xml").is_err());
        let e = Call::new(
            "vm1",
            "prepare",
            "begin",
            Err(std::io::Error::other("stdin closed")),
        )
        .expect_err("unreadable");
        assert_eq!(e.to_string(), "stdin closed");
        // migrate begin is an XML filter: never fails, does nothing.
        assert_eq!(call("migrate", "begin", "not xml").expect("ok"), None);
        // release still lets go of what is recorded.
        let c = call("release", "end", "not xml")
            .expect("ok")
            .expect("acts");
        assert!(c.releases() && c.disks.is_empty());
    }

    #[test]
    fn prepare_of_our_domain_attaches_its_disks() {
        let c = call("prepare", "begin", OURS).expect("ok").expect("acts");
        assert!(c.attaches());
        assert!(!c.disks.is_empty());
        assert!(c.uuid.is_some());
        let plain = include_str!("../../tests/data/domain-plain.xml");
        assert!(!call("prepare", "begin", plain)
            .expect("ok")
            .expect("acts")
            .attaches());
    }

    #[test]
    fn refusals_are_input_errors_and_failed_releases_are_not() {
        let refused = CallError::Prepare {
            domain: "vm1".into(),
            source: DiskFailure::NoSource {
                target: "vda".into(),
            },
        };
        assert!(refused.is_input());
        let chain: Vec<String> = {
            let mut v = vec![refused.to_string()];
            let mut s = std::error::Error::source(&refused);
            while let Some(e) = s {
                v.push(e.to_string());
                s = e.source();
            }
            v
        };
        assert_eq!(
            chain,
            [
                "domain vm1",
                "disk vda is listed in the iscsimple metadata but the domain has no disk with that target"
            ]
        );
        let spawn = DiskFailure::Device {
            path: "/dev/md/x".into(),
            source: std::io::Error::other("gone"),
        };
        assert!(!spawn.is_input());
    }
}
