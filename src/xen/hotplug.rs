//! xl's block hotplug contract (libxl 4.17, observed in the lab):
//!
//! - argv is `add` or `remove`; `XENBUS_PATH=backend/vbd/<domid>/<devid>`,
//!   relative to dom0's home in xenstore.
//! - `add` runs once the backend waits (state 2); it reads `params` (the
//!   spec after `target=`) and `mode`, and must write `physical-device`
//!   (`%x:%x`) and `physical-device-path`; `hotplug-status` and
//!   `hotplug-error` are what `xl` shows. libxl only checks the exit code,
//!   and kills the script after 40 s.
//! - `remove` runs after the backend closed (state 6); the node still holds
//!   what add wrote, but we rely on our own holder record, since a failed
//!   add or a killed script may have written nothing.
//!
//! Holders are counted per backend ([`crate::holders`]): during a migration
//! to the same host the source's and the destination's backends share one
//! attachment, and only the last live one's `remove` detaches it. A holder
//! whose domain is gone (destroyed without its remove, or its domain id
//! reused by another VM) uses nothing, and an attachment no live holder
//! uses is attached afresh rather than handed over as it is.
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use crate::disk::{AttachOptions, DiskError, Engine};
use crate::holders::{self, HolderError, HostLiveness};
use crate::spec::{Spec, SpecError};
use crate::state::{Holder, StateError};
use crate::xen::xenstore::{Tx, Xenstore, XsError};

/// xl names the receiving domain NAME--incoming until the migration is done.
pub const INCOMING_SUFFIX: &str = "--incoming";

/// Why a hotplug call failed.
#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    /// XENBUS_PATH is missing or not `backend/vbd/<domid>/<devid>`.
    #[error("XENBUS_PATH {0:?} is not backend/vbd/DOMID/DEVID (is this run by xl?)")]
    BadPath(String),
    /// The backend has no `params`.
    #[error("{0}/params is missing: no disk spec")]
    NoParams(String),
    /// xenstore failed.
    #[error(transparent)]
    Xenstore(#[from] XsError),
    /// The spec does not parse.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// State files.
    #[error(transparent)]
    State(#[from] StateError),
    /// Attach or detach failed.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// Letting go of a holder, or reclaiming a leaked attachment, failed.
    #[error(transparent)]
    Holder(#[from] HolderError),
    /// The device is already given writable to another running domain.
    #[error("{spec} is already attached to domain {other} ({backend}); refusing to give it {how} to domain {domid} too")]
    Shared {
        /// The spec.
        spec: String,
        /// The other domain.
        other: String,
        /// Its backend.
        backend: String,
        /// This domain.
        domid: u32,
        /// "writable" or "read-only".
        how: &'static str,
    },
    /// The device handed out cannot be examined.
    #[error("{}: {source}", path.display())]
    Device {
        /// The device.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// A vbd backend, from XENBUS_PATH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// `backend/vbd/<domid>/<devid>`.
    pub path: String,
    /// Guest domain id.
    pub domid: u32,
    /// Virtual device id.
    pub devid: u32,
}

impl Backend {
    /// Parse XENBUS_PATH (relative, as libxl passes it, or absolute).
    pub fn parse(p: &str) -> Result<Backend, HotplugError> {
        let bad = || HotplugError::BadPath(p.to_string());
        let rel = p.strip_prefix("/local/domain/0/").unwrap_or(p);
        let parts: Vec<&str> = rel.split('/').collect();
        match parts.as_slice() {
            ["backend", "vbd", d, v] => Ok(Backend {
                path: rel.to_string(),
                domid: d.parse().map_err(|_| bad())?,
                devid: v.parse().map_err(|_| bad())?,
            }),
            _ => Err(bad()),
        }
    }

    /// The holder record name of this backend.
    pub fn holder_name(&self) -> String {
        format!("xen-vbd-{}-{}", self.domid, self.devid)
    }
}

/// Refuse a second writer, as Xen's block-common.sh does: a device given
/// writable may go to no other running domain, except the same VM (a
/// migration to this host: the VM path `/vm/<uuid>` of the domain's two
/// halves is the same). Holders of dead domains and released backends use
/// nothing.
fn check_sharing(
    engine: &Engine<'_>,
    xs: &mut Xenstore,
    be: &Backend,
    spec: &Spec,
    writable: bool,
) -> Result<(), HotplugError> {
    let me = be.domid.to_string();
    let my_vm = holders::xen_vm(xs, &me)?;
    let live = &mut HostLiveness::with_xenstore(&mut *xs);
    for (name, h) in holders::rivals(&engine.store, live, &spec.to_string(), &me, writable)? {
        if name == be.holder_name() {
            continue;
        }
        let other_vm = match &h.vm {
            Some(v) => Some(v.clone()),
            None => holders::xen_vm(xs, &h.domain)?,
        };
        if my_vm.is_some() && other_vm == my_vm {
            continue;
        }
        return Err(HotplugError::Shared {
            spec: spec.to_string(),
            other: h.domain.clone(),
            backend: h.backend.clone(),
            domid: be.domid,
            how: if writable { "writable" } else { "read-only" },
        });
    }
    Ok(())
}

/// `add`: attach the backend's spec and publish the device.
pub fn add(engine: &Engine<'_>, xs: &mut Xenstore, be: &Backend) -> Result<PathBuf, HotplugError> {
    // Every log line of this call carries the domain and, once read, the spec.
    let span = tracing::info_span!(
        "xen",
        domain = be.domid,
        vm = tracing::field::Empty,
        spec = tracing::field::Empty,
        backend = %be.path
    );
    let _entered = span.enter();
    let result = add_inner(engine, xs, be);
    if let Err(e) = &result {
        let line = e.to_string();
        // Best effort: the backend may already be gone.
        let _ = xs.transaction(|xs, tx| {
            xs.write(tx, &format!("{}/hotplug-error", be.path), &line)?;
            xs.write(tx, &format!("{}/hotplug-status", be.path), "error")
        });
    }
    result
}

fn add_inner(
    engine: &Engine<'_>,
    xs: &mut Xenstore,
    be: &Backend,
) -> Result<PathBuf, HotplugError> {
    let params = xs
        .read(Tx::NONE, &format!("{}/params", be.path))?
        .ok_or_else(|| HotplugError::NoParams(be.path.clone()))?;
    let spec: Spec = params.trim().parse()?;
    tracing::Span::current().record("spec", tracing::field::display(&spec));
    if let Ok(Some(name)) = xs.read(Tx::NONE, &format!("/local/domain/{}/name", be.domid)) {
        tracing::Span::current().record("vm", tracing::field::display(&name));
    }
    let writable = xs
        .read(Tx::NONE, &format!("{}/mode", be.path))?
        .map(|m| m.contains('w'))
        .unwrap_or(true);
    check_sharing(engine, xs, be, &spec, writable)?;
    let holder = Holder {
        spec: spec.to_string(),
        domain: be.domid.to_string(),
        backend: be.path.clone(),
        writable,
        vm: holders::xen_vm(xs, &be.domid.to_string())?,
        since: 0,
        released: false,
    };
    holders::hold(
        engine,
        &mut HostLiveness::with_xenstore(&mut *xs),
        &be.holder_name(),
        &spec,
        holder,
    )?;
    // An incoming migration from another host: the source still writes to
    // the iSCSI disk until it is suspended, so the local leg may join only
    // once this domain takes over (xl renames it from NAME--incoming then).
    // From this same host the array already exists and is simply shared.
    let incoming = xs
        .read(Tx::NONE, &format!("/local/domain/{}/name", be.domid))?
        .map(|n| n.ends_with(INCOMING_SUFFIX))
        .unwrap_or(false);
    let defer_local = incoming && spec.label.is_some() && engine.find(&spec.to_string())?.is_none();
    let opts = AttachOptions {
        defer_local,
        incoming,
        ..Default::default()
    };
    let dev = holders::attach_or_forget(engine, &be.holder_name(), &spec, opts)?;
    if defer_local {
        let domid = be.domid.to_string();
        if let Err(e) = engine.spawn_join_watcher(&["--after-xen-domain", &domid], &spec) {
            // The disk works without its local leg; say so and let `iscsimple join` finish it.
            tracing::error!(spec = %spec, error = %e, "cannot start the local-leg watcher; run `iscsimple join` by hand");
        }
    }
    let meta = std::fs::metadata(&dev).map_err(|source| HotplugError::Device {
        path: dev.clone(),
        source,
    })?;
    let (maj, min) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
    xs.transaction(|xs, tx| {
        xs.write(
            tx,
            &format!("{}/physical-device", be.path),
            &format!("{maj:x}:{min:x}"),
        )?;
        xs.write(
            tx,
            &format!("{}/physical-device-path", be.path),
            &dev.to_string_lossy(),
        )?;
        xs.rm(tx, &format!("{}/hotplug-error", be.path))?;
        xs.write(tx, &format!("{}/hotplug-status", be.path), "connected")
    })?;
    tracing::info!(spec = %spec, domid = be.domid, devid = be.devid, device = %dev.display(), "xen add done");
    Ok(dev)
}

/// Wait until domain `domid` has taken over from a migration source: its
/// name lost the `--incoming` suffix (xl renames it once the source is
/// suspended for good). Ok(false) when the domain went away or `timeout`
/// passed.
pub fn wait_taken_over(xs: &mut Xenstore, domid: u32, timeout: Duration) -> Result<bool, XsError> {
    let path = format!("/local/domain/{domid}/name");
    xs.watch(&path, "name")?;
    let start = crate::clock::now();
    loop {
        match xs.read(Tx::NONE, &path)? {
            None => return Ok(false),
            Some(n) if !n.ends_with(INCOMING_SUFFIX) => return Ok(true),
            Some(_) => {}
        }
        let left = timeout.saturating_sub(crate::clock::since(start));
        if left.is_zero() {
            return Ok(false);
        }
        xs.next_event(left)?;
    }
}

/// `remove`: let go of the backend's attachment; detach it when no other
/// backend holds it. Idempotent.
pub fn remove(engine: &Engine<'_>, be: &Backend) -> Result<(), HotplugError> {
    let span = tracing::info_span!(
        "xen",
        domain = be.domid,
        spec = tracing::field::Empty,
        backend = %be.path
    );
    let _entered = span.enter();
    if let Some(h) = engine.store.holder(&be.holder_name())? {
        span.record("spec", tracing::field::display(&h.spec));
    }
    // Other holders' domains are looked up in xenstore only if there are any.
    holders::release(engine, &mut HostLiveness::new(), &be.holder_name())?;
    tracing::info!(domid = be.domid, devid = be.devid, "xen remove done");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xenbus_paths() {
        assert_eq!(
            Backend::parse("backend/vbd/3/51728").unwrap(),
            Backend {
                path: "backend/vbd/3/51728".into(),
                domid: 3,
                devid: 51728
            }
        );
        assert_eq!(
            Backend::parse("/local/domain/0/backend/vbd/3/51728")
                .unwrap()
                .domid,
            3
        );
        assert!(Backend::parse("backend/vif/3/0").is_err());
        assert!(Backend::parse("").is_err());
        assert_eq!(
            Backend::parse("backend/vbd/3/51728").unwrap().holder_name(),
            "xen-vbd-3-51728"
        );
    }
}
