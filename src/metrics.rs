//! Prometheus metrics: [`render`] turns a [`Report`] and `watch`'s
//! [`Counters`] into the text exposition format (version 0.0.4), for
//! `status --prometheus` and for node_exporter's textfile collector
//! (`watch --metrics-file`, written whole and renamed into place: the
//! collector never reads half a file).
//!
//! Gauges come from the kernel at the time of the look, through the
//! report; counters (leg failures, heals, last error) are what `watch`
//! saw, kept in `run_dir/metrics/counters.json` so a `status` in between and a
//! restarted `watch` show them (gone with a reboot, as Prometheus expects
//! of a counter reset).
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::state::{write_atomic, StateError};
use crate::status::{AttachmentStatus, Report};

/// What `watch` counted for one attachment (by spec).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Count {
    /// Times md failed its iSCSI leg.
    pub leg_failures: u64,
    /// Heals that re-added the iSCSI leg.
    pub heals: u64,
    /// When a leg failed or a heal failed last, seconds since the epoch.
    pub last_error: Option<u64>,
    /// Whether the iSCSI leg is failed now (a failure counts once, across
    /// restarts of `watch`).
    #[serde(default)]
    pub failed: bool,
}

/// `watch`'s counters, per spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Per spec.
    pub specs: BTreeMap<String, Count>,
}

/// Where the counters live under `run_dir` (a subdirectory, as every
/// state file: [`write_atomic`] checks it is ours).
pub fn counters_path(run_dir: &Path) -> PathBuf {
    run_dir.join("metrics").join("counters.json")
}

impl Counters {
    /// The counters kept in `run_dir` (none yet: all zero; unreadable:
    /// all zero too, a metric must not fail a look).
    pub fn load(run_dir: &Path) -> Counters {
        std::fs::read(counters_path(run_dir))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Keep them in `run_dir`.
    pub fn save(&self, run_dir: &Path) -> Result<(), StateError> {
        write_atomic(&counters_path(run_dir), self)
    }

    /// Whether the iSCSI leg of `spec` is failed, seen at `now` (seconds
    /// since the epoch): a leg newly failed counts. True if they changed.
    pub fn leg(&mut self, spec: &str, failed: bool, now: u64) -> bool {
        let c = self.specs.entry(spec.to_string()).or_default();
        if c.failed == failed {
            return false;
        }
        c.failed = failed;
        if failed {
            c.leg_failures += 1;
            c.last_error = Some(now);
        }
        true
    }

    /// Count a heal of `spec` that re-added its iSCSI leg.
    pub fn healed(&mut self, spec: &str) {
        self.specs.entry(spec.to_string()).or_default().heals += 1;
    }

    /// Note a failed heal of `spec` at `now`.
    pub fn heal_failed(&mut self, spec: &str, now: u64) {
        self.specs.entry(spec.to_string()).or_default().last_error = Some(now);
    }
}

/// A label value as the format wants it: `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One metric family being written: its HELP and TYPE once, then samples.
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl Family<'_> {
    fn sample(&mut self, labels: &[(&str, &str)], value: f64) {
        let _ = write!(self.out, "{}", self.name);
        if !labels.is_empty() {
            let l: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = write!(self.out, "{{{}}}", l.join(","));
        }
        let _ = writeln!(self.out, " {value}");
    }
}

fn family<'a>(out: &'a mut String, name: &'static str, kind: &str, help: &str) -> Family<'a> {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    Family { out, name }
}

#[allow(clippy::cast_precision_loss)] // counts and sizes far below 2^52
fn f(n: u64) -> f64 {
    n as f64
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// The metrics of `r`, with `counters` for the attachments it lists.
pub fn render(r: &Report, counters: &Counters) -> String {
    let mut out = String::new();
    let o = &mut out;
    let mut fam = family(
        o,
        "iscsimple_attachment",
        "gauge",
        "An attachment this host recorded (1), with the device it handed out.",
    );
    for a in &r.attachments {
        let device = a.device.as_deref().unwrap_or("");
        fam.sample(
            &[("spec", &a.spec), ("phase", a.phase), ("device", device)],
            1.0,
        );
    }
    let mut fam = family(
        o,
        "iscsimple_device_size_bytes",
        "gauge",
        "Size of the device handed out, bytes (grows with `iscsimple grow`).",
    );
    for a in &r.attachments {
        if let Some(size) = a.size_bytes {
            fam.sample(&[("spec", &a.spec)], f(size));
        }
    }
    let mirrors: Vec<_> = r.attachments.iter().filter(|a| a.array.is_some()).collect();
    let mut fam = family(o, "iscsimple_legs", "gauge", "Legs of a mirror.");
    for a in &mirrors {
        fam.sample(&[("spec", &a.spec)], f(a.legs.len() as u64));
    }
    let mut fam = family(
        o,
        "iscsimple_legs_in_sync",
        "gauge",
        "Legs of a mirror md has in sync.",
    );
    let in_sync = |a: &crate::status::AttachmentStatus| {
        a.legs.iter().filter(|l| l.state == "in_sync").count() as u64
    };
    for a in &mirrors {
        fam.sample(&[("spec", &a.spec)], f(in_sync(a)));
    }
    let mut fam = family(
        o,
        "iscsimple_degraded",
        "gauge",
        "1 when a mirror has a leg that is not in sync (failed, missing, resyncing).",
    );
    for a in &mirrors {
        fam.sample(&[("spec", &a.spec)], flag(in_sync(a) < a.legs.len() as u64));
    }
    let recovering: Vec<_> = mirrors
        .iter()
        .flat_map(|a| a.legs.iter().map(move |l| (a, l)))
        .filter(|(_, l)| l.state == "recovering")
        .collect();
    let mut fam = family(
        o,
        "iscsimple_resync_progress_ratio",
        "gauge",
        "How much of a resyncing leg md has copied (0 to 1).",
    );
    for (a, l) in &recovering {
        if let Some(p) = l.recovery_percent {
            fam.sample(&[("spec", &a.spec), ("leg", l.role)], p / 100.0);
        }
    }
    let mut fam = family(
        o,
        "iscsimple_resync_speed_bytes",
        "gauge",
        "How fast md copies a resyncing leg, bytes per second.",
    );
    for (a, l) in &recovering {
        if let Some(s) = l.speed_kib {
            fam.sample(&[("spec", &a.spec), ("leg", l.role)], f(s * 1024));
        }
    }
    let iscsi: Vec<_> = r
        .attachments
        .iter()
        .filter(|a| a.legs.iter().any(|l| l.role == "iscsi"))
        .collect();
    let mut fam = family(
        o,
        "iscsimple_paths",
        "gauge",
        "Paths to the iSCSI disk of an attachment.",
    );
    let leg_of = |a: &AttachmentStatus| a.legs.iter().find(|l| l.role == "iscsi").cloned();
    for a in &iscsi {
        let total = leg_of(a).and_then(|l| l.paths_total).unwrap_or(1);
        fam.sample(&[("spec", &a.spec)], f64::from(total));
    }
    let mut fam = family(
        o,
        "iscsimple_paths_up",
        "gauge",
        "Paths to the iSCSI disk of an attachment that carry I/O (disk running, session logged in).",
    );
    for a in &iscsi {
        let up = leg_of(a).and_then(|l| l.paths_up).unwrap_or_else(|| {
            u32::from(a.session.as_ref().is_some_and(|s| s.state == "LOGGED_IN"))
        });
        fam.sample(&[("spec", &a.spec)], f64::from(up));
    }
    // Attachments of one target's LUNs share its session: count each once.
    let by_sid: BTreeMap<u32, &crate::status::SessionStatus> = r
        .attachments
        .iter()
        .filter_map(|a| a.session.as_ref())
        .chain(&r.unknown_sessions)
        .map(|s| (s.sid, s))
        .collect();
    let mut sessions: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for s in by_sid.values() {
        *sessions.entry((&s.target, &s.state)).or_default() += 1;
    }
    let mut fam = family(
        o,
        "iscsimple_sessions",
        "gauge",
        "iSCSI sessions by target and state.",
    );
    for ((target, state), n) in &sessions {
        fam.sample(&[("target", target), ("state", state)], f(*n));
    }
    let mut fam = family(
        o,
        "iscsimple_local_newer",
        "gauge",
        "A local volume holding writes its iSCSI disk lacks (1 per label): heal it before another host attaches the disk.",
    );
    for n in &r.local_newer {
        fam.sample(&[("label", &n.label), ("local", &n.local)], 1.0);
    }
    let mut fam = family(
        o,
        "iscsimple_unknown",
        "gauge",
        "Sessions, arrays and SCSI disks no attachment uses (leftovers of a killed call).",
    );
    for (what, n) in [
        ("sessions", r.unknown_sessions.len()),
        ("arrays", r.unknown_arrays.len()),
        ("disks", r.unknown_disks.len()),
    ] {
        fam.sample(&[("what", what)], f(n as u64));
    }
    if let Some(s) = &r.store {
        let mut fam = family(
            o,
            "iscsimple_store_up",
            "gauge",
            "1 when the disks' store answers.",
        );
        fam.sample(
            &[("store", &s.store), ("host", &s.host)],
            flag(s.error.is_none()),
        );
        let mut fam = family(
            o,
            "iscsimple_disk_local_newer",
            "gauge",
            "A disk whose record names a host's local copy newer than the iSCSI disk.",
        );
        for d in r.disks.iter().filter(|d| d.local_newer.is_some()) {
            let host = d.local_newer.as_deref().unwrap_or("");
            fam.sample(&[("wwid", &d.wwid), ("host", host)], 1.0);
        }
    }
    // Counters of the attachments listed (a detached spec's stay in the
    // file, unshown, until a reboot).
    let counted: Vec<(&str, Count)> = r
        .attachments
        .iter()
        .map(|a| {
            let c = counters.specs.get(&a.spec).cloned().unwrap_or_default();
            (a.spec.as_str(), c)
        })
        .collect();
    let mut fam = family(
        o,
        "iscsimple_leg_failures_total",
        "counter",
        "Times md failed the iSCSI leg of a mirror, as watch saw it.",
    );
    for (spec, c) in &counted {
        fam.sample(&[("spec", spec)], f(c.leg_failures));
    }
    let mut fam = family(
        o,
        "iscsimple_heals_total",
        "counter",
        "Heals by watch that re-added the iSCSI leg of a mirror.",
    );
    for (spec, c) in &counted {
        fam.sample(&[("spec", spec)], f(c.heals));
    }
    let mut fam = family(
        o,
        "iscsimple_last_error_timestamp_seconds",
        "gauge",
        "When a leg or a heal of the attachment last failed (seconds since the epoch).",
    );
    for (spec, c) in &counted {
        if let Some(t) = c.last_error {
            fam.sample(&[("spec", spec)], f(t));
        }
    }
    out
}

/// Write `text` to `path` for node_exporter: a temporary file beside it
/// (not `*.prom`, which the collector skips), mode 0644 (the collector
/// runs as its own user), renamed over the old one.
pub fn write_file(path: &Path, text: &str) -> Result<(), fsutil::FsError> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let io = |source| fsutil::FsError::Io {
        path: tmp.clone(),
        source,
    };
    fsutil::remove_stale(&tmp)?;
    let mut f = fsutil::create_new(&tmp, 0o644)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    // create_new's mode goes through the umask.
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|source| fsutil::FsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests;
