//! `iscsimple doctor`: is this host set up the way the tool needs it? Each
//! check reports what it found and, when it fails, the exact change that
//! fixes it (a command to run or a line to write, never "check your setup").
//!
//! Checks read files under a [`Sys`] root (`/` on a host, a temporary tree
//! in unit tests) and run only read-only programs (`lvm config`, `lvm pvs`).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{Config, DEFAULT_CONFIG_PATH, DEFAULT_LABEL_TABLE};
use crate::iscsi;
use crate::labels::{LabelTable, LabelTableError, LocalDevice};
use crate::runner::{Cmd, Program, Runner};
use crate::state::Store;
use crate::sysfs::Sys;

mod host;
pub mod lvm;
mod multipath;
pub mod probe;

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// All is well.
    Ok,
    /// Something must change; see the fix.
    Fail,
    /// Does not apply to this host (e.g. no Xen).
    Skip,
}

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The check's name (one of [`CHECKS`]).
    pub check: &'static str,
    /// How it ended.
    pub status: Status,
    /// What was found, one line each.
    pub found: Vec<String>,
    /// The changes that fix it, in order, one line each: a shell command,
    /// or `in FILE: ...` for an edit.
    pub fix: Vec<String>,
}

impl Finding {
    fn ok(check: &'static str, found: impl Into<String>) -> Finding {
        Finding {
            check,
            status: Status::Ok,
            found: vec![found.into()],
            fix: Vec::new(),
        }
    }
    fn skip(check: &'static str, found: impl Into<String>) -> Finding {
        Finding {
            status: Status::Skip,
            ..Finding::ok(check, found)
        }
    }
    fn fail(check: &'static str, found: Vec<String>, fix: Vec<String>) -> Finding {
        Finding {
            check,
            status: Status::Fail,
            found,
            fix,
        }
    }
}

/// Every check, in the order they run.
pub const CHECKS: [&str; 12] = [
    "config",
    "label-table",
    "iscsid",
    "initiator-name",
    "kernel-modules",
    "mdadm-auto-assembly",
    "lvm-filter",
    "duplicate-uuids",
    "multipath",
    "xen-hook",
    "libvirt-hook",
    "disks-store",
];

/// What the checks look at.
#[derive(Debug)]
pub struct Doctor<'a> {
    /// Where `/etc`, `/proc`, `/sys`, `/dev` and `/lib/modules` are read.
    pub sys: &'a Sys,
    /// Runs `lvm`; its `verify` tells which programs are installed.
    pub runner: &'a dyn Runner,
    /// `--config`, or None for the default file.
    pub config_path: Option<&'a Path>,
}

impl Doctor<'_> {
    /// Run the checks named in `only` (all when empty), in [`CHECKS`] order.
    pub fn run(&self, only: &[String]) -> Vec<Finding> {
        let wanted = |c: &str| only.is_empty() || only.iter().any(|o| o == c);
        let (config_finding, config) = self.config();
        let config = config.unwrap_or_default();
        let mut out = Vec::new();
        for check in CHECKS.into_iter().filter(|c| wanted(c)) {
            out.push(match check {
                "config" => config_finding.clone(),
                "label-table" => self.label_table(&config),
                "iscsid" => host::iscsid(self),
                "initiator-name" => host::initiator_name(self),
                "kernel-modules" => host::kernel_modules(self),
                "mdadm-auto-assembly" => host::mdadm_auto(self),
                "lvm-filter" => self.lvm_filter(&config),
                "duplicate-uuids" => self.duplicate_uuids(&config),
                "multipath" => multipath::check(self, &config),
                "xen-hook" => host::xen_hook(self),
                "libvirt-hook" => host::libvirt_hook(self),
                "disks-store" => disks_store(&config),
                _ => unreachable!("CHECKS lists only these"),
            });
        }
        out
    }

    /// Read a file under the root, untrimmed.
    fn text(&self, p: impl AsRef<Path>) -> Option<String> {
        std::fs::read_to_string(self.sys.path(p)).ok()
    }

    fn config(&self) -> (Finding, Option<Config>) {
        const C: &str = "config";
        let shown = self
            .config_path
            .unwrap_or_else(|| Path::new(DEFAULT_CONFIG_PATH))
            .display()
            .to_string();
        match Config::load(self.config_path) {
            Ok(config) => {
                let mut problems = Vec::new();
                let mut fix = Vec::new();
                for entry in &config.chap {
                    if let Err(e) = entry.resolve() {
                        fix.push(fix_for(&e.to_string(), &shown));
                        problems.push(e.to_string());
                    }
                }
                let f = if problems.is_empty() {
                    Finding::ok(
                        C,
                        match config.path {
                            Some(_) => format!("{shown}: valid"),
                            None => format!("{shown}: absent, defaults apply"),
                        },
                    )
                } else {
                    Finding::fail(C, problems, fix)
                };
                (f, Some(config))
            }
            Err(e) => {
                let problems: Vec<String> = e.problems().iter().map(ToString::to_string).collect();
                let fix = problems.iter().map(|p| fix_for(p, &shown)).collect();
                (Finding::fail(C, problems, fix), None)
            }
        }
    }

    fn label_table(&self, config: &Config) -> Finding {
        const C: &str = "label-table";
        let path = &config.label_table;
        let table = match LabelTable::load(path) {
            Ok(t) => t,
            // Hosts without mirrors need no table at the default path.
            Err(LabelTableError::NotFound { .. }) if path == Path::new(DEFAULT_LABEL_TABLE) => {
                return Finding::ok(C, format!("{}: absent (no mirrors)", path.display()))
            }
            Err(e) => {
                let problems: Vec<String> = e.problems().iter().map(ToString::to_string).collect();
                let fix = problems
                    .iter()
                    .map(|p| match p.find(": not found") {
                        Some(_) => format!(
                            "create {} with one \"LABEL DEVICE\" line per mirror, or set label_table in the config",
                            path.display()
                        ),
                        None => format!("in {}: correct the line as said (LABEL DEVICE, '#' comments)", path.display()),
                    })
                    .collect();
                return Finding::fail(C, problems, fix);
            }
        };
        let mut found = Vec::new();
        let mut fix = Vec::new();
        for e in &table.entries {
            let LocalDevice::Path(p) = &e.device else {
                continue;
            };
            if let Err(err) = crate::volume::resolve(self.sys, p) {
                found.push(format!(
                    "{}:{}: label {}: {err}",
                    path.display(),
                    e.line,
                    e.label.as_str()
                ));
                fix.push(match lv_of(p) {
                    Some((vg, lv)) => format!(
                        "lvcreate -L SIZE -n {lv} {vg}  # SIZE at least the LUN's; or write MISSING as its device on line {} of {}",
                        e.line,
                        path.display()
                    ),
                    None => format!(
                        "create {} (a block device at least as large as the LUN), or write MISSING as its device on line {} of {}",
                        p.display(),
                        e.line,
                        path.display()
                    ),
                });
            }
        }
        if found.is_empty() {
            let n = table.entries.len();
            Finding::ok(
                C,
                format!(
                    "{}: {n} label{}, every local volume present",
                    path.display(),
                    if n == 1 { "" } else { "s" }
                ),
            )
        } else {
            Finding::fail(C, found, fix)
        }
    }

    /// The devices LVM must not scan: iscsimple's md arrays and iSCSI
    /// disks present now, plus the names the next ones would get.
    fn hidden_devices(&self, config: &Config) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        let blocks = self.sys.list("/sys/block");
        for k in blocks.iter().filter(|k| k.starts_with("md")) {
            // Arrays built without metadata (mdadm --build) are the tool's.
            if self
                .sys
                .read(format!("/sys/block/{k}/md/metadata_version"))
                .as_deref()
                == Some("none")
            {
                out.push((format!("md array {k}"), aliases(self.sys, k)));
            }
        }
        for s in iscsi::sessions(self.sys) {
            for d in iscsi::host_devices(self.sys, s.host) {
                if let Some(b) = d.block {
                    for k in std::iter::once(b.clone()).chain(partitions(self.sys, &b)) {
                        out.push((
                            format!("iSCSI disk {k} ({} LUN {})", s.target, d.lun),
                            aliases(self.sys, &k),
                        ));
                    }
                }
            }
        }
        // A multipath map over iSCSI disks is the LUN too.
        let iscsi_disks: Vec<String> = iscsi::sessions(self.sys)
            .iter()
            .flat_map(|s| iscsi::host_devices(self.sys, s.host))
            .filter_map(|d| d.block)
            .collect();
        for k in blocks.iter().filter(|k| k.starts_with("dm-")) {
            let paths = crate::multipath::paths_of(self.sys, k);
            if paths.iter().any(|p| iscsi_disks.contains(p)) {
                for k in std::iter::once(k.clone()).chain(partitions(self.sys, k)) {
                    out.push((
                        format!("multipath map {k} over iSCSI disks"),
                        aliases(self.sys, &k),
                    ));
                }
            }
        }
        let free_md = (0..=127u32)
            .rev()
            .map(|n| format!("md{n}"))
            .find(|k| !blocks.contains(k))
            .unwrap_or_else(|| "md127".into());
        let labels: Vec<String> = LabelTable::load(&config.label_table)
            .map(|t| {
                t.entries
                    .iter()
                    .map(|e| e.label.as_str().to_string())
                    .collect()
            })
            .unwrap_or_default();
        let labels = if labels.is_empty() {
            vec!["LABEL".to_string()]
        } else {
            labels
        };
        for l in &labels {
            out.push((
                format!("the next mirror /dev/md/{l}"),
                vec![format!("/dev/{free_md}"), format!("/dev/md/{l}")],
            ));
        }
        let free_sd = (b'b'..=b'z')
            .map(|c| format!("sd{}", c as char))
            .find(|k| !blocks.contains(k))
            .unwrap_or_else(|| "sdzz".into());
        out.push((
            "the next iSCSI LUN".into(),
            vec![
                format!("/dev/{free_sd}"),
                "/dev/disk/by-path/ip-192.0.2.1:3260-iscsi-iqn.2000-01.com.example:probe-lun-0"
                    .into(),
            ],
        ));
        out
    }

    fn lvm_filter(&self, config: &Config) -> Finding {
        const C: &str = "lvm-filter";
        if self.runner.verify(&[Program::Lvm]).is_err() {
            return Finding::skip(C, "lvm2 is not installed: nothing scans devices for PVs");
        }
        let keys = [
            "devices/global_filter",
            "devices/filter",
            "devices/scan_lvs",
            "devices/use_devicesfile",
            "devices/devicesfile",
        ];
        let out = match self.runner.run(
            &Cmd::new(Program::Lvm)
                .args(["config", "--typeconfig", "full"])
                .args(keys),
        ) {
            Ok(o) => o.stdout,
            Err(e) => {
                return Finding::fail(
                    C,
                    vec![format!("cannot read the LVM configuration: {e}")],
                    vec![
                        "lvm config --validate  # then correct /etc/lvm/lvm.conf as it says".into(),
                    ],
                )
            }
        };
        let filter = |key: &str| {
            lvm::config_value(&out, key)
                .map(lvm::Filter::parse)
                .unwrap_or_else(|| Ok(lvm::Filter::default()))
        };
        let (global, plain) = match (filter("global_filter"), filter("filter")) {
            (Ok(g), Ok(f)) => (g, f),
            (Err(e), _) | (_, Err(e)) => {
                return Finding::fail(
                    C,
                    vec![format!("/etc/lvm/lvm.conf: {e}")],
                    vec!["in /etc/lvm/lvm.conf: write each filter pattern as \"a|REGEX|\" or \"r|REGEX|\"".into()],
                )
            }
        };
        let mut found = Vec::new();
        let mut fix = Vec::new();
        let devicesfile = lvm::config_value(&out, "use_devicesfile") == Some("1")
            && lvm::config_value(&out, "devicesfile")
                .map(|f| {
                    self.sys
                        .exists(Path::new("/etc/lvm/devices").join(f.trim_matches('"')))
                })
                .unwrap_or(false);
        let hidden = self.hidden_devices(config);
        if !devicesfile {
            for (what, names) in &hidden {
                if global.accepts(names) && plain.accepts(names) {
                    found.push(format!("LVM scans {what}: {}", names.join(" ")));
                }
            }
            if !found.is_empty() {
                found.push(format!(
                    "(global_filter {}, filter {}): the host sees the PVs and VGs inside VM disks, twice for a mirror, and may activate them (the seed's \"mpath major 9 is not dm major 254\")",
                    global.text(),
                    plain.text()
                ));
                let allow = self.host_pvs(&hidden);
                let mut items: Vec<String> = allow
                    .iter()
                    .map(|p| format!("\"a|{}|\"", lvm::exact(p)))
                    .collect();
                items.push("\"r|.*|\"".into());
                fix.push(format!(
                    "in /etc/lvm/lvm.conf, section devices {{ }}: global_filter = [ {} ]",
                    items.join(", ")
                ));
                fix.push("update-initramfs -u  # the initramfs keeps a copy of lvm.conf".into());
            }
        }
        if lvm::config_value(&out, "scan_lvs") == Some("1") {
            found.push("scan_lvs = 1: LVM looks for PVs inside LVs, so a VM's PV inside a local leg shows on the host".into());
            fix.push("in /etc/lvm/lvm.conf, section devices { }: scan_lvs = 0".into());
        }
        if found.is_empty() {
            Finding::ok(
                C,
                if devicesfile {
                    "LVM scans only the devices in its devices file (use_devicesfile = 1)"
                        .to_string()
                } else {
                    format!("md arrays and iSCSI disks are hidden from LVM (global_filter {}, filter {})", global.text(), plain.text())
                },
            )
        } else {
            Finding::fail(C, found, fix)
        }
    }

    /// The host's own PVs (what `lvm pvs` lists minus the devices to hide),
    /// each by its most stable name.
    fn host_pvs(&self, hidden: &[(String, Vec<String>)]) -> Vec<String> {
        let out = self
            .runner
            .run(&Cmd::new(Program::Lvm).args(["pvs", "--noheadings", "-o", "pv_name"]))
            .map(|o| o.stdout)
            .unwrap_or_default();
        let mut v: Vec<String> = Vec::new();
        for pv in out.lines().map(str::trim).filter(|l| l.starts_with('/')) {
            let k = self
                .sys
                .link_name(pv)
                .unwrap_or_else(|| pv.trim_start_matches("/dev/").to_string());
            let names = aliases(self.sys, &k);
            let ours = hidden
                .iter()
                .any(|(_, h)| h.iter().any(|n| names.contains(n)));
            if ours {
                continue;
            }
            let stable = [
                "wwn-",
                "nvme-eui.",
                "nvme-",
                "ata-",
                "scsi-",
                "md-uuid-",
                "dm-uuid-",
                "dm-name-",
            ]
            .iter()
            .find_map(|p| {
                names
                    .iter()
                    .find(|n| n.starts_with(&format!("/dev/disk/by-id/{p}")))
            })
            .cloned()
            .unwrap_or_else(|| pv.to_string());
            if !v.contains(&stable) {
                v.push(stable);
            }
        }
        v
    }

    fn duplicate_uuids(&self, config: &Config) -> Finding {
        const C: &str = "duplicate-uuids";
        let attachments = match Store::new(&config.run_dir).all() {
            Ok(a) => a,
            Err(e) => {
                return Finding::fail(
                    C,
                    vec![e.to_string()],
                    vec![format!(
                        "remove or repair the file named above (under {})",
                        config.run_dir.display()
                    )],
                )
            }
        };
        // (namespace, uuid) -> [(spec, device, kind)]
        let mut seen: BTreeMap<(&'static str, String), Vec<Holding>> = BTreeMap::new();
        let mut devices = 0;
        for (_, a) in &attachments {
            // The device handed out: the array of a mirror, else the disk.
            let Some(kname) = a
                .mirror
                .as_ref()
                .and_then(|m| m.kname.clone())
                .or_else(|| a.iscsi.as_ref().map(|i| i.kname.clone()))
            else {
                continue;
            };
            for k in std::iter::once(kname.clone()).chain(partitions(self.sys, &kname)) {
                devices += 1;
                let Ok(ids) = probe::identify(&self.sys.path(format!("/dev/{k}"))) else {
                    continue;
                };
                for id in ids {
                    let e = seen.entry((id.namespace(), id.uuid.clone())).or_default();
                    if !e.iter().any(|(s, _, _)| s == &a.spec) {
                        e.push((a.spec.clone(), format!("/dev/{k}"), id.kind));
                    }
                }
            }
        }
        let mut found = Vec::new();
        let mut fix = Vec::new();
        for ((_, uuid), users) in seen.iter().filter(|(_, u)| u.len() > 1) {
            let list: Vec<String> = users
                .iter()
                .map(|(s, d, k)| format!("{d} ({k}, {s})"))
                .collect();
            found.push(format!(
                "UUID {uuid} is on {}: clones of one image; the host masks all but one (by-uuid links, LVM duplicate PVs)",
                list.join(" and ")
            ));
            for (spec, dev, kind) in &users[1..] {
                fix.push(format!(
                    "{}  # with the VM of {spec} stopped, or do not attach both on one host",
                    probe::new_uuid_command(kind, dev)
                ));
            }
        }
        if found.is_empty() {
            Finding::ok(
                C,
                format!(
                    "{} attachment{}, {devices} device{} probed: no UUID is shared",
                    attachments.len(),
                    if attachments.len() == 1 { "" } else { "s" },
                    if devices == 1 { "" } else { "s" }
                ),
            )
        } else {
            Finding::fail(C, found, fix)
        }
    }
}

/// An identity's (spec, device, kind).
type Holding = (String, String, &'static str);

/// The command in a config message's "; run CMD" tail, else an edit.
/// The disks' store answers (etcd: every attach of a writable disk needs
/// it, unless `on_unreachable = "local"`).
fn disks_store(config: &Config) -> Finding {
    const C: &str = "disks-store";
    if config.cluster.store == crate::config::ClusterStore::Local {
        return Finding::ok(
            C,
            "local store: only this host's attaches are recorded (zero-copy re-attach needs [cluster] only_user = true)",
        );
    }
    let records = crate::cluster::open(
        config,
        &config.run_dir.join("locks"),
        std::time::Duration::from_secs(2),
    );
    match records.all() {
        Ok(d) => Finding::ok(
            C,
            format!(
                "{} answers: {} disk record(s), this host is {}",
                records.describe(),
                d.len(),
                crate::cluster::host_id(config.cluster.host_id.as_deref())
            ),
        ),
        Err(e) => {
            let file = config.path.as_ref().map_or_else(
                || crate::config::DEFAULT_CONFIG_PATH.to_string(),
                |p| p.display().to_string(),
            );
            let then = match config.cluster.on_unreachable {
                crate::config::OnUnreachable::Refuse => "until it answers, attaches of writable disks are refused",
                crate::config::OnUnreachable::Local => "until it answers, attaches go on with this host's knowledge alone (on_unreachable = \"local\")",
            };
            Finding::fail(
                C,
                vec![e.to_string(), then.to_string()],
                vec![
                    "start etcd on a quorum of its members (systemctl start etcd on each)"
                        .to_string(),
                    format!("in {file}: [cluster] endpoints = the members' client URLs"),
                ],
            )
        }
    }
}

fn fix_for(problem: &str, file: &str) -> String {
    match problem.split_once("; run ") {
        Some((_, cmd)) => cmd.split(" or ").next().unwrap_or(cmd).to_string(),
        None => format!("in {file}: correct what the message names at its line:column (iscsimple check rechecks)"),
    }
}

/// `/dev/VG/LV` → (VG, LV).
fn lv_of(p: &Path) -> Option<(String, String)> {
    let s = p.to_str()?.strip_prefix("/dev/")?;
    let (vg, lv) = s.split_once('/')?;
    (!lv.contains('/') && vg != "md" && vg != "disk" && vg != "mapper")
        .then(|| (vg.to_string(), lv.to_string()))
}

/// Every name of block device `kname` under /dev: its node and the
/// symlinks udev and mdadm make for it.
pub fn aliases(sys: &Sys, kname: &str) -> Vec<String> {
    let mut v = vec![format!("/dev/{kname}")];
    let mut dirs: Vec<PathBuf> = vec!["/dev/md".into(), "/dev/mapper".into()];
    dirs.extend(
        sys.list("/dev/disk")
            .into_iter()
            .map(|d| PathBuf::from("/dev/disk").join(d)),
    );
    for d in dirs {
        for e in sys.list(&d) {
            let p = d.join(&e);
            if sys.link_name(&p).as_deref() == Some(kname) {
                v.push(p.display().to_string());
            }
        }
    }
    v
}

/// Partitions of block device `kname` (`sdb1`, `md127p1`).
pub fn partitions(sys: &Sys, kname: &str) -> Vec<String> {
    sys.list(format!("/sys/class/block/{kname}"))
        .into_iter()
        .filter(|e| {
            e.starts_with(kname) && sys.exists(format!("/sys/class/block/{kname}/{e}/partition"))
        })
        .collect()
}

/// The report as text: one line per check, then what was found and the fix.
pub fn text(findings: &[Finding]) -> String {
    let mut s = String::new();
    let width = findings.iter().map(|f| f.check.len()).max().unwrap_or(0);
    for f in findings {
        let tag = match f.status {
            Status::Ok => "ok  ",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        };
        let mut lines = f.found.iter();
        s.push_str(&format!(
            "{tag}  {:<width$}  {}\n",
            f.check,
            lines.next().map(String::as_str).unwrap_or("")
        ));
        for l in lines {
            s.push_str(&format!("      {:<width$}  {l}\n", ""));
        }
        for l in &f.fix {
            s.push_str(&format!("      {:<width$}  fix: {l}\n", ""));
        }
    }
    s
}

#[cfg(test)]
mod tests;
