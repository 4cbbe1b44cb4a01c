//! Who holds an attachment, and whether they still do: the logic the Xen
//! hotplug script, the libvirt hook, `detach` and `watch` share.
//!
//! A hypervisor backend (a Xen vbd, a libvirt domain disk) records a
//! [`Holder`] before it attaches (a remove after a killed add must find
//! it) and drops it when it lets go; the attachment is detached when no
//! live holder uses it any more. A record outlives its domain when the
//! domain went without its remove or release running to the end (a killed
//! or failing script, a detach that failed): such a holder uses nothing.
//!
//! - Dead holders are dropped; a holder whose detach failed is kept,
//!   marked released, and the detach is retried by the next remove or
//!   release of that disk, by `watch` and by `detach`.
//! - An attachment that no live holder uses is never handed to a new
//!   domain as it is ([`reclaim`]): the VM may have run on another host
//!   since, writing the iSCSI disk, and the leaked array would serve the
//!   stale local leg. It is detached (the normal detach, which keeps a
//!   local-is-newer record when degraded) and attached afresh.
//!
//! Liveness ([`Liveness`]): a Xen domain lives while `/local/domain/DOMID`
//! exists in xenstore with the VM path (`/vm/UUID`) recorded at add (a
//! domain id is reused); a libvirt domain while libvirt's status file
//! shows it with the recorded UUID, or, before it has one, for
//! [`LIBVIRT_GRACE`] after the claim (libvirt writes it only after
//! `prepare`). What cannot be told is taken as alive: nothing is detached
//! on a guess.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::disk::{Cause, DetachOptions, DiskError, Engine};
use crate::spec::Spec;
use crate::state::{self, Holder, StateError, Store};
use crate::xen::xenstore::{Tx, Xenstore, XsError};

/// How long a libvirt holder without a status file counts as a domain
/// still starting (libvirt writes the file once `prepare` is over).
pub const LIBVIRT_GRACE: u64 = 600;

/// Why a holder operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HolderError {
    /// Holder or attachment records.
    #[error(transparent)]
    State(#[from] StateError),
    /// The detach failed (or was refused).
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// A running domain other than this one uses the disk.
    #[error("{spec} is attached to domain {other} ({backend}); refusing to give it to domain {domain} too")]
    Shared {
        /// The spec.
        spec: String,
        /// The other domain.
        other: String,
        /// Its backend or disk.
        backend: String,
        /// The domain asking.
        domain: String,
    },
}

impl HolderError {
    /// True when the caller's input is at fault (exit 2).
    pub fn is_input(&self) -> bool {
        match self {
            HolderError::State(_) => false,
            HolderError::Disk(e) => e.cause.is_input(),
            HolderError::Shared { .. } => true,
        }
    }
}

/// Whether a holder's domain still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Life {
    /// It runs (or is starting).
    Alive,
    /// It is gone, or its id or name now belongs to another domain.
    Dead,
    /// Cannot tell (no xenstore, an unreadable status file): taken as alive.
    Unknown,
}

/// Tells whether holders' domains run.
pub trait Liveness: std::fmt::Debug {
    /// The life of the domain of holder record `name`.
    fn life(&mut self, name: &str, h: &Holder) -> Life;
}

/// Which hypervisor a holder record belongs to, by its name
/// (`xen-vbd-DOMID-DEVID`, `libvirt-HEXNAME-TARGET`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A Xen vbd backend.
    Xen,
    /// A libvirt domain disk.
    Libvirt,
    /// Anything else.
    Other,
}

/// The kind of holder record `name`.
pub fn kind(name: &str) -> Kind {
    if name.starts_with("xen-vbd-") {
        Kind::Xen
    } else if name.starts_with("libvirt-") {
        Kind::Libvirt
    } else {
        Kind::Other
    }
}

/// Reads xenstore (the client, or a map in tests).
pub trait XsRead: std::fmt::Debug {
    /// The value at absolute `path`, None when it does not exist.
    fn read_path(&mut self, path: &str) -> Result<Option<String>, XsError>;
}

impl XsRead for Xenstore {
    fn read_path(&mut self, path: &str) -> Result<Option<String>, XsError> {
        self.read(Tx::NONE, path)
    }
}

/// The VM path (`/vm/UUID`) of Xen domain `domid`.
pub fn xen_vm(xs: &mut dyn XsRead, domid: &str) -> Result<Option<String>, XsError> {
    xs.read_path(&format!("/local/domain/{domid}/vm"))
}

/// The life of a Xen holder: its domain exists with the VM path recorded.
pub fn xen_life(xs: &mut dyn XsRead, h: &Holder) -> Life {
    match xen_vm(xs, &h.domain) {
        Err(_) => Life::Unknown,
        Ok(Some(vm)) => match &h.vm {
            Some(recorded) if *recorded != vm => Life::Dead,
            _ => Life::Alive,
        },
        // No VM path: the domain is gone, unless it exists without one.
        Ok(None) => match xs.read_path(&format!("/local/domain/{}/domid", h.domain)) {
            Err(_) => Life::Unknown,
            Ok(Some(_)) if h.vm.is_none() => Life::Alive,
            Ok(_) => Life::Dead,
        },
    }
}

/// The life of a libvirt holder at time `now`: libvirt's status file of
/// its domain exists (with the recorded UUID, when both are known).
pub fn libvirt_life(status_dir: &Path, h: &Holder, now: u64) -> Life {
    match std::fs::read_to_string(status_dir.join(format!("{}.xml", h.domain))) {
        Ok(text) => match (&h.vm, crate::libvirt::domain_uuid(&text)) {
            (Some(recorded), Some(uuid)) if *recorded != uuid => Life::Dead,
            _ => Life::Alive,
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if now.saturating_sub(h.since) < LIBVIRT_GRACE {
                Life::Unknown
            } else {
                Life::Dead
            }
        }
        Err(_) => Life::Unknown,
    }
}

#[derive(Debug)]
enum XsConn<'x> {
    Borrowed(&'x mut dyn XsRead),
    /// Opened on first need; None inside once opening failed.
    Lazy(Option<Option<Xenstore>>),
}

/// Liveness on this host: xenstore for Xen holders, libvirt's status files
/// for libvirt holders.
#[derive(Debug)]
pub struct HostLiveness<'x> {
    xs: XsConn<'x>,
    status_dir: PathBuf,
    now: u64,
}

impl Default for HostLiveness<'_> {
    fn default() -> Self {
        HostLiveness::new()
    }
}

impl<'x> HostLiveness<'x> {
    /// Connects to xenstore only when a Xen holder is asked about.
    pub fn new() -> HostLiveness<'x> {
        HostLiveness {
            xs: XsConn::Lazy(None),
            status_dir: PathBuf::from(crate::libvirt::STATUS_DIR),
            now: state::now(),
        }
    }

    /// Through a xenstore connection the caller has.
    pub fn with_xenstore(xs: &'x mut dyn XsRead) -> HostLiveness<'x> {
        HostLiveness {
            xs: XsConn::Borrowed(xs),
            ..HostLiveness::new()
        }
    }

    /// Read libvirt's status files from `dir`, at time `now` (tests).
    pub fn with_status_dir(mut self, dir: &Path, now: u64) -> HostLiveness<'x> {
        self.status_dir = dir.to_path_buf();
        self.now = now;
        self
    }
}

impl Liveness for HostLiveness<'_> {
    fn life(&mut self, name: &str, h: &Holder) -> Life {
        match kind(name) {
            Kind::Xen => match &mut self.xs {
                XsConn::Borrowed(xs) => xen_life(*xs, h),
                XsConn::Lazy(conn) => match conn.get_or_insert_with(|| Xenstore::open().ok()) {
                    Some(xs) => xen_life(xs, h),
                    None => Life::Unknown,
                },
            },
            Kind::Libvirt => libvirt_life(&self.status_dir, h, self.now),
            Kind::Other => Life::Unknown,
        }
    }
}

/// Liveness while libvirt prepares domain `domain`: libvirt prepares only
/// a domain that does not run, so a holder record of that domain is left
/// from an earlier run (its release never ran) whatever its status file
/// says or does not say yet.
#[derive(Debug)]
pub struct Preparing<'a, L: Liveness> {
    /// The domain being prepared.
    pub domain: &'a str,
    /// Liveness of every other holder.
    pub inner: L,
}

impl<L: Liveness> Liveness for Preparing<'_, L> {
    fn life(&mut self, name: &str, h: &Holder) -> Life {
        if kind(name) == Kind::Libvirt && h.domain == self.domain {
            return Life::Dead;
        }
        self.inner.life(name, h)
    }
}

/// The holders of one spec, sorted out.
#[derive(Debug, Default)]
struct Census {
    /// Holders that use it: not released, domain alive or unknown.
    users: Vec<(String, Holder)>,
    /// Records that use nothing: dead domains, released backends.
    gone: Vec<(String, Holder)>,
}

fn census(
    store: &Store,
    live: &mut dyn Liveness,
    spec: &str,
    except: Option<&str>,
) -> Result<Census, StateError> {
    let mut c = Census::default();
    for (name, h) in store.holders()? {
        if h.spec != spec || Some(name.as_str()) == except {
            continue;
        }
        if h.released || live.life(&name, &h) == Life::Dead {
            c.gone.push((name, h));
        } else {
            c.users.push((name, h));
        }
    }
    Ok(c)
}

/// The holders that use `spec`: not released, domain alive or unknown.
pub fn users(
    store: &Store,
    live: &mut dyn Liveness,
    spec: &str,
) -> Result<Vec<(String, Holder)>, StateError> {
    Ok(census(store, live, spec, None)?.users)
}

/// How a holder is named in messages.
fn describe(name: &str, h: &Holder) -> String {
    match kind(name) {
        Kind::Xen => format!("domain {} (xen {})", h.domain, h.backend),
        Kind::Libvirt => format!("domain {} (libvirt disk {})", h.domain, h.backend),
        Kind::Other => format!("domain {} ({})", h.domain, h.backend),
    }
}

/// Forget records, unless they changed since they were read (a backend
/// claimed the same name again meanwhile).
fn forget(store: &Store, records: &[(String, Holder)]) -> Result<(), StateError> {
    for (name, h) in records {
        if store.holder(name)?.as_ref() == Some(h) {
            tracing::info!(holder = %name, spec = %h.spec, domain = %h.domain, released = h.released, "holder record dropped: its domain is gone or let go");
            store.remove_holder(name)?;
        }
    }
    Ok(())
}

/// Record that backend `name` holds `h.spec`: before attaching, so that a
/// remove after a killed add finds what to undo.
pub fn claim(store: &Store, name: &str, mut h: Holder) -> Result<(), StateError> {
    h.since = state::now();
    h.released = false;
    store.save_holder(name, &h)
}

/// A detach's guard: [`Cause::Held`] while a live holder (other than
/// `except`) uses attachment `a`.
fn unheld(
    store: &Store,
    live: &mut dyn Liveness,
    a: &state::Attachment,
    except: Option<&str>,
) -> Result<(), Cause> {
    let c = census(store, live, &a.spec, except)?;
    if c.users.is_empty() {
        return Ok(());
    }
    Err(Cause::Held {
        spec: a.spec.clone(),
        by: c.users.iter().map(|(n, h)| describe(n, h)).collect(),
    })
}

/// Detach `spec` unless, asked under the attachment's lock, a live holder
/// (other than `except`) uses it: then [`Cause::Held`].
fn detach_unused(
    engine: &Engine<'_>,
    live: &mut dyn Liveness,
    spec: &str,
    except: Option<&str>,
) -> Result<bool, DiskError> {
    let mut guard = |a: &state::Attachment| unheld(&engine.store, live, a, except);
    engine.detach_with(
        spec,
        DetachOptions {
            force: false,
            guard: Some(&mut guard),
        },
    )
}

fn is_held(e: &DiskError) -> bool {
    matches!(*e.cause, Cause::Held { .. })
}

/// Whether `spec` names an attachment of its own (not one that only shares
/// its label or LUN).
fn attached(engine: &Engine<'_>, spec: &str) -> Result<bool, StateError> {
    Ok(engine.find(spec)?.is_some_and(|(_, a)| a.spec == spec))
}

/// Backend `name` lets go (Xen `remove`, libvirt `release`): its
/// attachment is detached unless another live holder uses it; dead and
/// released holders of it are dropped with it. A holder whose spec never
/// got attached is simply forgotten (a refused or rolled back attach; the
/// label or LUN may be another spec's, which is not touched). A detach
/// that fails keeps the record, marked released, for a retry.
pub fn release(
    engine: &Engine<'_>,
    live: &mut dyn Liveness,
    name: &str,
) -> Result<(), HolderError> {
    let store = &engine.store;
    let Some(h) = store.holder(name)? else {
        tracing::info!(holder = %name, "nothing recorded for this backend; nothing to release");
        return Ok(());
    };
    if !attached(engine, &h.spec)? {
        store.remove_holder(name)?;
        tracing::info!(holder = %name, spec = %h.spec, "not attached under this spec; holder forgotten");
        return Ok(());
    }
    let c = census(store, live, &h.spec, Some(name))?;
    if !c.users.is_empty() {
        forget(store, &c.gone)?;
        store.remove_holder(name)?;
        tracing::info!(spec = %h.spec, holder = %name, users = ?c.users.iter().map(|(n, _)| n).collect::<Vec<_>>(), "another holder still uses it; kept");
        return Ok(());
    }
    match detach_unused(engine, live, &h.spec, Some(name)) {
        Ok(_) => {
            forget(store, &c.gone)?;
            store.remove_holder(name)?;
            Ok(())
        }
        // A backend claimed it meanwhile: it is that one's now.
        Err(e) if is_held(&e) => {
            store.remove_holder(name)?;
            Ok(())
        }
        Err(e) => {
            store.save_holder(
                name,
                &Holder {
                    released: true,
                    ..h
                },
            )?;
            tracing::warn!(holder = %name, error = %e, "detach failed; the holder is kept as released and the detach is retried by the next remove or release of this disk, by watch and by detach");
            Err(e.into())
        }
    }
}

/// Before `spec` is given to a new domain: an attachment of it that no
/// live holder uses was leaked (its domains died without letting go, or it
/// was attached by hand) and may be stale, so it is detached to be
/// attached afresh. Dead and released holders of it are dropped. An error
/// (the detach failed) must refuse the new domain.
pub fn reclaim(
    engine: &Engine<'_>,
    live: &mut dyn Liveness,
    spec: &Spec,
) -> Result<(), HolderError> {
    let spec = spec.to_string();
    let c = census(&engine.store, live, &spec, None)?;
    if c.users.is_empty() && attached(engine, &spec)? {
        tracing::warn!(spec = %spec, holders = ?c.gone.iter().map(|(n, _)| n).collect::<Vec<_>>(), "attached, but no running domain holds it: detaching it to attach it afresh (its local leg may be stale)");
        match detach_unused(engine, live, &spec, None) {
            Ok(_) => {}
            // A backend claimed it meanwhile (a migration's other half).
            Err(e) if is_held(&e) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    forget(&engine.store, &c.gone)?;
    Ok(())
}

/// Take `spec` for holder `name` before attaching: a leaked attachment
/// (no live holder) is detached first, never handed over as it is
/// ([`reclaim`]); then the holder is recorded, so that a remove after a
/// killed add finds what to undo. Xen's add and the simulator use it.
pub fn hold(
    engine: &Engine<'_>,
    live: &mut dyn Liveness,
    name: &str,
    spec: &Spec,
    h: Holder,
) -> Result<(), HolderError> {
    reclaim(engine, live, spec)?;
    claim(&engine.store, name, h)?;
    Ok(())
}

/// Attach `spec` for holder `name` (taken by [`hold`]); when the attach
/// fails it rolled itself back, and the holder holds nothing then.
pub fn attach_or_forget(
    engine: &Engine<'_>,
    name: &str,
    spec: &Spec,
    opts: crate::disk::AttachOptions,
) -> Result<std::path::PathBuf, HolderError> {
    engine.attach_with(spec, opts).map_err(|e| {
        let _ = engine.store.remove_holder(name);
        e.into()
    })
}

/// Refuse `spec` to `domain` while a live holder of another domain uses
/// it, writable by either (a disk goes to one VM), unless `same_vm` says
/// that holder is this VM's other half (a migration to this host).
pub fn check_sharing(
    store: &Store,
    live: &mut dyn Liveness,
    spec: &str,
    domain: &str,
    writable: bool,
    same_vm: &mut dyn FnMut(&Holder) -> bool,
) -> Result<(), HolderError> {
    for (name, h) in rivals(store, live, spec, domain, writable)? {
        if same_vm(&h) {
            continue;
        }
        return Err(HolderError::Shared {
            spec: spec.to_string(),
            other: h.domain.clone(),
            backend: describe(&name, &h),
            domain: domain.to_string(),
        });
    }
    Ok(())
}

/// The live holders of `spec` that would share it with `domain`: of
/// another domain, and one of the two writes. A caller that knows which
/// of them are this VM's other half (a migration to this host) lets those
/// share; [`check_sharing`] refuses the rest.
pub fn rivals(
    store: &Store,
    live: &mut dyn Liveness,
    spec: &str,
    domain: &str,
    writable: bool,
) -> Result<Vec<(String, Holder)>, StateError> {
    let mut v = users(store, live, spec)?;
    v.retain(|(_, h)| h.domain != domain && (writable || h.writable));
    Ok(v)
}

/// The holder records of `kind` whose domain is `domain`, live or not
/// (what a domain's release lets go of).
pub fn held_by(store: &Store, of: Kind, domain: &str) -> Result<Vec<(String, Holder)>, StateError> {
    let mut v = store.holders()?;
    v.retain(|(n, h)| kind(n) == of && h.domain == domain);
    Ok(v)
}

/// `iscsimple detach WHAT`: refused while a live holder uses it or its
/// device is open, unless `force`. Once detached, every holder record of
/// it is dropped (with `force`, live ones too: there is nothing left to
/// hold).
pub fn detach(
    engine: &Engine<'_>,
    live: &mut dyn Liveness,
    what: &str,
    force: bool,
) -> Result<bool, DiskError> {
    let spec = engine
        .find(what)
        .map_err(|e| DiskError::new("detach", what, crate::disk::Step::State, e.into()))?
        .map(|(_, a)| a.spec);
    let mut guard = |a: &state::Attachment| unheld(&engine.store, live, a, None);
    let detached = engine.detach_with(
        what,
        DetachOptions {
            force,
            guard: Some(&mut guard),
        },
    )?;
    if let (true, Some(spec)) = (detached, spec) {
        let held: Vec<(String, Holder)> = engine
            .store
            .holders()
            .map_err(|e| DiskError::new("detach", what, crate::disk::Step::State, e.into()))?
            .into_iter()
            .filter(|(_, h)| h.spec == spec)
            .collect();
        forget(&engine.store, &held)
            .map_err(|e| DiskError::new("detach", what, crate::disk::Step::State, e.into()))?;
    }
    Ok(detached)
}

/// What [`sweep`] did for one disk.
#[derive(Debug)]
pub struct Swept {
    /// The spec.
    pub spec: String,
    /// Ok(true): its leaked attachment was detached; Ok(false): only
    /// records were dropped (or nothing to do); Err: the detach failed and
    /// is retried at the next sweep.
    pub result: Result<bool, HolderError>,
}

/// One pass over every holder record (`watch`): records of dead domains
/// and released backends are dropped, and an attachment none of whose
/// holders is alive is detached (a failed detach is retried here).
/// Attachments that no holder ever recorded (attached by hand) are left
/// alone.
pub fn sweep(engine: &Engine<'_>, live: &mut dyn Liveness) -> Result<Vec<Swept>, StateError> {
    let specs: BTreeSet<String> = engine
        .store
        .holders()?
        .into_iter()
        .map(|(_, h)| h.spec)
        .collect();
    let mut out = Vec::new();
    for spec in specs {
        let c = census(&engine.store, live, &spec, None)?;
        if c.gone.is_empty() {
            continue;
        }
        let result = (|| -> Result<bool, HolderError> {
            let mut detached = false;
            if c.users.is_empty() && attached(engine, &spec)? {
                match detach_unused(engine, live, &spec, None) {
                    Ok(d) => detached = d,
                    Err(e) if is_held(&e) => return Ok(false),
                    Err(e) => return Err(e.into()),
                }
            }
            forget(&engine.store, &c.gone)?;
            Ok(detached)
        })();
        out.push(Swept { spec, result });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};

    impl XsRead for BTreeMap<String, String> {
        fn read_path(&mut self, path: &str) -> Result<Option<String>, XsError> {
            Ok(self.get(path).cloned())
        }
    }

    fn holder(spec: &str, domain: &str, vm: Option<&str>) -> Holder {
        Holder {
            spec: spec.into(),
            domain: domain.into(),
            backend: format!("backend/vbd/{domain}/51728"),
            writable: true,
            vm: vm.map(str::to_string),
            since: 1000,
            released: false,
        }
    }

    fn xenstore(domains: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        for (d, vm) in domains {
            m.insert(format!("/local/domain/{d}/domid"), (*d).to_string());
            m.insert(format!("/local/domain/{d}/vm"), (*vm).to_string());
        }
        m
    }

    #[test]
    fn xen_domains_live_while_their_vm_path_is_the_recorded_one() {
        let mut xs = xenstore(&[("5", "/vm/aaa"), ("7", "/vm/bbb")]);
        let h = holder("s", "5", Some("/vm/aaa"));
        assert_eq!(xen_life(&mut xs, &h), Life::Alive);
        // Domain 7 reused an id: another VM.
        assert_eq!(
            xen_life(&mut xs, &holder("s", "7", Some("/vm/aaa"))),
            Life::Dead
        );
        // Destroyed.
        assert_eq!(
            xen_life(&mut xs, &holder("s", "9", Some("/vm/ccc"))),
            Life::Dead
        );
        // A record from before VM paths were recorded: the domain id decides.
        assert_eq!(xen_life(&mut xs, &holder("s", "7", None)), Life::Alive);
        assert_eq!(xen_life(&mut xs, &holder("s", "9", None)), Life::Dead);
        let mut live = HostLiveness::with_xenstore(&mut xs);
        assert_eq!(live.life("xen-vbd-5-51728", &h), Life::Alive);
        assert_eq!(live.life("other", &h), Life::Unknown);
    }

    #[test]
    fn libvirt_domains_live_while_libvirt_has_their_status() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut h = holder("s", "vm1", Some("6f3a1c2e-1111-2222-3333-444455556666"));
        h.since = 10_000;
        // Starting: no status file yet.
        assert_eq!(libvirt_life(d.path(), &h, 10_001), Life::Unknown);
        assert_eq!(
            libvirt_life(d.path(), &h, 10_000 + LIBVIRT_GRACE),
            Life::Dead
        );
        let status = |uuid: &str| {
            format!("<domstatus state='running' pid='42'><domain type='kvm'><name>vm1</name><uuid>{uuid}</uuid></domain></domstatus>")
        };
        std::fs::write(
            d.path().join("vm1.xml"),
            status("6f3a1c2e-1111-2222-3333-444455556666"),
        )
        .expect("w");
        assert_eq!(libvirt_life(d.path(), &h, 99_999), Life::Alive);
        // Another domain of the same name.
        std::fs::write(
            d.path().join("vm1.xml"),
            status("00000000-1111-2222-3333-444455556666"),
        )
        .expect("w");
        assert_eq!(libvirt_life(d.path(), &h, 99_999), Life::Dead);
    }

    /// Lives by holder name, for the decisions that need no engine.
    #[derive(Debug, Default)]
    struct Fake(HashMap<String, Life>);

    impl Liveness for Fake {
        fn life(&mut self, name: &str, _h: &Holder) -> Life {
            self.0.get(name).copied().unwrap_or(Life::Unknown)
        }
    }

    #[test]
    fn census_counts_live_and_unknown_holders_as_users_only() {
        let d = tempfile::tempdir().expect("tempdir");
        let store = Store::new(d.path());
        let spec = "lun0@iqn.2024-01.lab:t+l";
        store
            .save_holder("xen-vbd-1-1", &holder(spec, "1", None))
            .expect("save");
        store
            .save_holder("xen-vbd-2-1", &holder(spec, "2", None))
            .expect("save");
        store
            .save_holder(
                "xen-vbd-3-1",
                &Holder {
                    released: true,
                    ..holder(spec, "3", None)
                },
            )
            .expect("save");
        store
            .save_holder("xen-vbd-4-1", &holder("lun1@iqn.2024-01.lab:t", "4", None))
            .expect("save");
        let mut live = Fake(
            [
                ("xen-vbd-1-1".to_string(), Life::Dead),
                ("xen-vbd-3-1".to_string(), Life::Alive),
            ]
            .into(),
        );
        let c = census(&store, &mut live, spec, None).expect("census");
        let names = |v: &[(String, Holder)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(&c.users),
            vec!["xen-vbd-2-1"],
            "unknown counts as a user"
        );
        assert_eq!(names(&c.gone), vec!["xen-vbd-1-1", "xen-vbd-3-1"]);
        let c = census(&store, &mut live, spec, Some("xen-vbd-2-1")).expect("census");
        assert!(c.users.is_empty());

        // A second writer of another VM is refused; the same VM shares.
        let mut other_vm = |_: &Holder| false;
        let e = check_sharing(&store, &mut live, spec, "9", true, &mut other_vm)
            .expect_err("second writer");
        assert!(e.is_input());
        assert_eq!(
            e.to_string(),
            format!("{spec} is attached to domain 2 (domain 2 (xen backend/vbd/2/51728)); refusing to give it to domain 9 too")
        );
        check_sharing(&store, &mut live, spec, "9", true, &mut |_| true).expect("same VM");
        check_sharing(&store, &mut live, spec, "2", true, &mut other_vm).expect("same domain");
    }

    #[test]
    fn forget_keeps_a_record_claimed_again_meanwhile() {
        let d = tempfile::tempdir().expect("tempdir");
        let store = Store::new(d.path());
        let old = holder("s", "5", Some("/vm/aaa"));
        store.save_holder("xen-vbd-5-1", &old).expect("save");
        claim(&store, "xen-vbd-5-1", holder("s", "5", Some("/vm/bbb"))).expect("claim");
        forget(&store, &[("xen-vbd-5-1".to_string(), old.clone())]).expect("forget");
        assert!(store.holder("xen-vbd-5-1").expect("read").is_some());
        let now = store.holder("xen-vbd-5-1").expect("read").expect("kept");
        forget(&store, &[("xen-vbd-5-1".to_string(), now)]).expect("forget");
        assert!(store.holders().expect("list").is_empty());
    }

    #[test]
    fn a_domain_holds_its_own_libvirt_records_only() {
        let d = tempfile::tempdir().expect("tempdir");
        let store = Store::new(d.path());
        let name = crate::libvirt::holder_name;
        for (n, dom) in [
            (name("web", "vda"), "web"),
            (name("web", "vdb"), "web"),
            (name("web-2", "vda"), "web-2"),
            ("xen-vbd-7-1".to_string(), "web"),
        ] {
            store
                .save_holder(&n, &holder("s", dom, None))
                .expect("save");
        }
        let held: Vec<String> = held_by(&store, Kind::Libvirt, "web")
            .expect("list")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(held, vec![name("web", "vda"), name("web", "vdb")]);
    }

    #[test]
    fn kinds_by_name() {
        assert_eq!(kind("xen-vbd-3-51728"), Kind::Xen);
        assert_eq!(
            kind(&crate::libvirt::holder_name("web", "vda")),
            Kind::Libvirt
        );
        assert_eq!(kind("x"), Kind::Other);
    }
}
