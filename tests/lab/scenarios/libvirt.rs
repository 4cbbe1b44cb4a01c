//! The libvirt qemu hook under a real libvirtd (Debian 12, libvirt 9.0):
//! domains whose metadata lists iscsimple disks get them attached on
//! `prepare begin`, before QEMU opens them, and detached on `release end`.
//!
//! lab.sh runs these scenarios (`lab_libvirt_*`) with the Debian root image
//! of tests/lab/build-libvirt.sh attached, 2 GiB of memory and a longer
//! timeout; see [`crate::fixture::libvirt`] for how the root is entered.
//! The target (LIO) and the local volumes (LVM on a loop device) are made
//! on the lab side; libvirtd, the hook, iscsid, udevd and mdadm run in the
//! root. [`Libvirt::start`] takes the place of `Lab::start` (same lab
//! check; it starts the root's iscsid instead of the lab's, since one kernel
//! takes one iscsid). Domains run SeaBIOS without an OS (idle, after reading the disks'
//! boot sectors); QEMU's open block devices prove what it uses.
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::fixture::data;
use crate::fixture::initiator;
use crate::fixture::libvirt::{by_path, domain_xml, DiskDef, Libvirt, HOOK_PATH, LABELS};
use crate::fixture::lvm::{kname, Vg};
use crate::fixture::md::Md;
use crate::fixture::system::Snapshot;
use crate::fixture::target::{Kind, Target, TargetSpec};
use crate::fixture::tool::syslog;
use crate::fixture::wait_for;

const IQN: &str = "iqn.2024-01.lab.iscsimple:libvirt";
/// LUN 0's size.
const LUN0_MIB: u64 = 32;
/// LUN 1's size.
const LUN1_MIB: u64 = 16;
const SLOW: Duration = Duration::from_secs(180);

const START: [(&str, &str); 3] = [
    ("prepare", "begin"),
    ("start", "begin"),
    ("started", "begin"),
];
const STOP: [(&str, &str); 2] = [("stopped", "end"), ("release", "end")];

struct Setup {
    lv: Libvirt,
    target: Target,
    vg: Vg,
    /// Local legs by label: `vm1-disk` (for LUN 0) and `vm1-b` (for LUN 1),
    /// each filled with other data than its LUN.
    locals: Vec<(String, PathBuf)>,
}

/// A LIO target with LUN 0 (32 MiB) and LUN 1 (16 MiB), two local LVs and
/// libvirtd with iscsimple installed; the label table names both LVs.
fn setup() -> Setup {
    // Libvirt::start first: it refuses to run outside the lab VM.
    let spec = TargetSpec::new(Kind::Lio, IQN, &[LUN0_MIB, LUN1_MIB]);
    let t = Instant::now();
    let lv = Libvirt::start(&format!(
        "[discovery]\nportals = [\"{}:{}\"]\n",
        spec.addr, spec.port
    ));
    println!("libvirt root up in {} ms", t.elapsed().as_millis());
    let target = Target::start(spec);
    let vg = Vg::create("labvg", LUN0_MIB + LUN1_MIB + 24);
    let a = vg.lv("vm1", LUN0_MIB + 4); // larger than the LUN is fine
    let b = vg.lv("vm1b", LUN1_MIB);
    data::fill(&a, 0, LUN0_MIB, 0xdead);
    data::fill(&b, 0, LUN1_MIB, 0xbeef);
    let s = Setup {
        lv,
        target,
        vg,
        locals: vec![("vm1-disk".into(), a), ("vm1-b".into(), b)],
    };
    s.table(&[]);
    s
}

/// The LUN number and label of a spec `lunN@IQN[+LABEL]`.
fn parse_spec(spec: &str) -> (u32, Option<&str>) {
    let (lun, rest) = spec
        .strip_prefix("lun")
        .and_then(|s| s.split_once('@'))
        .expect("lunN@...");
    (
        lun.parse().expect("LUN number"),
        rest.split_once('+').map(|(_, l)| l),
    )
}

impl Setup {
    /// The label table: both LVs plus `extra` (label, LV label) aliases.
    fn table(&self, extra: &[(&str, &str)]) {
        let mut lines: Vec<(&str, &str)> = self
            .locals
            .iter()
            .map(|(l, p)| (l.as_str(), p.to_str().expect("utf8")))
            .collect();
        for (alias, of) in extra {
            let (_, p) = self
                .locals
                .iter()
                .find(|(l, _)| l == of)
                .unwrap_or_else(|| panic!("no LV {of}"));
            lines.push((alias, p.to_str().expect("utf8")));
        }
        self.lv.labels(&lines);
    }

    /// The local volume the label table (in the root) gives `label`.
    fn local(&self, label: &str) -> PathBuf {
        let table = fs::read_to_string(self.lv.path(LABELS)).expect("label table");
        table
            .lines()
            .filter_map(|l| l.split_once(' '))
            .find(|(l, _)| *l == label)
            .map(|(_, p)| PathBuf::from(p.trim()))
            .unwrap_or_else(|| panic!("label {label} is not in the table:\n{table}"))
    }

    /// A mirrored disk: LUN `lun` + `label`, source /dev/md/LABEL.
    fn mirrored(target: &str, lun: u32, label: &str) -> DiskDef {
        DiskDef::ours(
            target,
            &format!("lun{lun}@{IQN}+{label}"),
            &format!("/dev/md/{label}"),
        )
    }

    /// A plain disk: LUN `lun`, source its udev by-path link (as a host
    /// would write it: sdX names are not stable).
    fn plain(&self, target: &str, lun: u32) -> DiskDef {
        DiskDef::ours(
            target,
            &format!("lun{lun}@{IQN}"),
            &by_path(&self.target.portal(), IQN, lun),
        )
    }

    /// Every disk is attached and open in QEMU `pid` through its source;
    /// mirrors are in sync, the iSCSI leg write-mostly, and the local leg
    /// now holds the LUN's data; plain disks hold the LUN's data; one holder
    /// record per disk.
    fn assert_disks_up(&self, domain: &str, pid: i32, disks: &[DiskDef]) {
        let open = Libvirt::open_block_devices(pid);
        for d in disks {
            let spec = d.spec.as_deref().expect("our disk");
            let (lun, label) = parse_spec(spec);
            let src = Path::new(&d.source);
            assert!(
                open.contains(&rdev(src)),
                "{domain}: QEMU {pid} has {} ({spec}) open: {open:?}",
                d.source
            );
            let l = self.target.lun(lun);
            match label {
                Some(label) => {
                    let m = Md::by_label(label);
                    assert_eq!(rdev(src), rdev(&m.dev()));
                    m.wait_synced(SLOW);
                    let sd = initiator::disk(IQN, lun).expect("LUN is a SCSI disk");
                    let local = self.local(label);
                    assert_eq!(m.members(), sorted(vec![sd.clone(), kname(&local)]));
                    assert!(m.member_state(&sd).contains("write_mostly"));
                    data::verify(&local, 0, l.mib, l.seed);
                    data::equal(&local, Path::new(&format!("/dev/{sd}")), l.mib).unwrap();
                }
                None => data::verify(src, 0, l.mib, l.seed),
            }
        }
        let mut want: Vec<String> = disks
            .iter()
            .map(|d| {
                format!(
                    "{}.json",
                    iscsimple::libvirt::holder_name(domain, &d.target)
                )
            })
            .collect();
        want.sort();
        assert_eq!(
            self.lv.holders_of(domain),
            want,
            "one holder record per disk of {domain}"
        );
    }

    /// Nothing is left: no session, SCSI disk, array, md link, holder or
    /// attachment record, and nothing holds the local LVs.
    fn assert_all_detached(&self) {
        Snapshot::take().assert_clean();
        assert!(
            self.lv.holders().is_empty(),
            "holders: {:?}",
            self.lv.holders()
        );
        assert!(
            self.lv.attachments().is_empty(),
            "attachments: {:?}",
            self.lv.attachments()
        );
        for (_, p) in &self.locals {
            let k = kname(p);
            let held: Vec<_> = fs::read_dir(format!("/sys/block/{k}/holders"))
                .expect("holders dir")
                .flatten()
                .map(|e| e.file_name())
                .collect();
            assert!(held.is_empty(), "{k} still held by {held:?}");
        }
    }

    /// libvirtd logged no failure of our hook.
    fn assert_no_hook_errors(&self) {
        let errs: Vec<String> = self
            .lv
            .log_errors()
            .into_iter()
            .filter(|l| l.contains(HOOK_PATH) || l.contains("Hook script"))
            .collect();
        assert!(errs.is_empty(), "hook errors in libvirtd's log: {errs:#?}");
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn rdev(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .rdev()
}

fn ops(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(o, s)| ((*o).to_string(), (*s).to_string()))
        .collect()
}

/// Start a domain with a mirrored and a plain disk (the plain one named by
/// its by-path link): both are attached before QEMU runs and QEMU uses
/// them; destroy detaches both.
#[test]
fn lab_libvirt_start_destroy() {
    let s = setup();
    let lv = &s.lv;
    let disks = vec![Setup::mirrored("vda", 0, "vm1-disk"), s.plain("vdb", 1)];
    Snapshot::take().assert_clean();
    lv.define("vm1", &domain_xml("vm1", &disks));
    assert!(lv.our_hook_ops("vm1").is_empty(), "define calls no hook");
    assert!(
        Snapshot::take().sessions.is_empty(),
        "define attaches nothing"
    );

    let t = Instant::now();
    lv.virsh_ok(&["start", "vm1"]);
    println!("virsh start: {} ms", t.elapsed().as_millis());
    assert_eq!(lv.domstate("vm1"), "running");
    // prepare (the attach) comes first; libvirt calls start right before
    // it executes QEMU, and QEMU opened the attached devices.
    assert_eq!(lv.our_hook_ops("vm1"), ops(&START));
    let c = lv.our_hook_calls("vm1");
    println!(
        "hook calls: prepare -> start {} ms (the attach), start -> started {} ms (QEMU)",
        c[1].ms.saturating_sub(c[0].ms),
        c[2].ms.saturating_sub(c[1].ms)
    );
    let pid = lv.qemu_pid("vm1").expect("QEMU runs");
    s.assert_disks_up("vm1", pid, &disks);
    let st = lv.must("/usr/sbin/iscsimple", &["status"]);
    println!("$ iscsimple status (in the root)\n{st}");

    let t = Instant::now();
    lv.virsh_ok(&["destroy", "vm1"]);
    println!("virsh destroy: {} ms", t.elapsed().as_millis());
    assert_eq!(lv.domstate("vm1"), "shut off");
    assert!(lv.qemu_pid("vm1").is_none(), "QEMU gone");
    let mut all = ops(&START);
    all.extend(ops(&STOP));
    assert_eq!(lv.our_hook_ops("vm1"), all);
    let c = lv.our_hook_calls("vm1");
    println!(
        "hook calls: stopped -> release {} ms (stopped is a no-op call)",
        c[4].ms.saturating_sub(c[3].ms)
    );
    s.assert_all_detached();
    s.assert_no_hook_errors();
    lv.virsh_ok(&["undefine", "vm1"]);
    s.vg.remove();
}

/// A spec naming a label the table lacks: every disk is checked before
/// any is attached, so the first disk (mirrored) is never touched; the
/// hook exits 2 (input); libvirt refuses to start the domain, shows the
/// tool's one error line, and still calls stopped and release, which must
/// not fail. Once the label exists, the same domain starts.
#[test]
fn lab_libvirt_unknown_label() {
    let s = setup();
    let lv = &s.lv;
    let disks = vec![
        Setup::mirrored("vda", 0, "vm1-disk"),
        Setup::mirrored("vdb", 1, "nosuch"),
    ];
    lv.define("vm2", &domain_xml("vm2", &disks));
    let before = Snapshot::take();
    before.assert_clean();

    let out = lv.virsh(&["start", "vm2"]);
    assert!(!out.ok(), "start must fail");
    let err = out.stderr.replace('\n', " ");
    assert!(
        err.contains("label nosuch is not in the label table /etc/iscsimple/labels.conf"),
        "virsh shows the tool's error: {err}"
    );
    // libvirt quotes the hook's stderr after the exit status: one line, ours.
    let hook_err = out
        .stderr
        .split_once("unexpected exit status 2: ")
        .map(|(_, e)| e.trim_end())
        .expect("libvirt names the hook's exit status 2");
    assert!(
        hook_err.starts_with("iscsimple: ") && !hook_err.contains('\n'),
        "one error line from the tool: {hook_err:?}"
    );
    assert_eq!(lv.domstate("vm2"), "shut off");
    assert!(lv.qemu_pid("vm2").is_none());
    let mut want = ops(&[("prepare", "begin")]);
    want.extend(ops(&STOP));
    assert_eq!(
        lv.our_hook_ops("vm2"),
        want,
        "after a failed prepare libvirt still calls stopped and release"
    );
    // vda was never attached (issue 14 item 16): its local volume kept
    // its own data and nothing was logged in.
    let spec = format!("lun0@{IQN}+vm1-disk");
    let log = syslog();
    assert!(
        !log.lines().any(|l| l.contains("iscsimple[")
            && l.contains(" attached spec=")
            && l.contains(&spec)),
        "vda must not be attached (syslog):\n{log}"
    );
    assert_eq!(Snapshot::take(), before, "not even a node record");
    data::verify(&s.locals[0].1, 0, LUN0_MIB, 0xdead);
    s.assert_all_detached();
    // Only prepare failed: stopped and release exited 0.
    let errs = lv.log_errors();
    assert!(
        errs.iter()
            .filter(|l| l.contains(HOOK_PATH))
            .all(|l| l.contains(" vm2 prepare begin ")),
        "only prepare failed: {errs:#?}"
    );

    // Nothing stale blocks a retry once the table is fixed.
    s.table(&[("nosuch", "vm1-b")]);
    lv.virsh_ok(&["start", "vm2"]);
    assert_eq!(lv.domstate("vm2"), "running");
    let pid = lv.qemu_pid("vm2").expect("QEMU runs");
    s.assert_disks_up("vm2", pid, &disks);
    lv.virsh_ok(&["destroy", "vm2"]);
    s.assert_all_detached();
    s.vg.remove();
}

/// The hook attached its disk but QEMU cannot start (another disk of the
/// domain does not exist): libvirt calls stopped and release, and the
/// attached disk is detached again.
#[test]
fn lab_libvirt_qemu_fails() {
    let s = setup();
    let lv = &s.lv;
    let disks = vec![
        Setup::mirrored("vda", 0, "vm1-disk"),
        DiskDef::other("vdb", "/dev/lab-no-such-disk"),
    ];
    lv.define("vm3", &domain_xml("vm3", &disks));
    let out = lv.virsh(&["start", "vm3"]);
    assert!(!out.ok(), "start must fail");
    assert!(
        !out.stderr.contains(HOOK_PATH),
        "the failure is not the hook's: {}",
        out.stderr
    );
    let calls = lv.our_hook_ops("vm3");
    println!("hook calls: {calls:?}");
    assert_eq!(calls.first(), ops(&[("prepare", "begin")]).first());
    assert!(
        calls.ends_with(&ops(&STOP)),
        "stopped and release: {calls:?}"
    );
    let spec = format!("lun0@{IQN}+vm1-disk");
    assert!(
        syslog()
            .lines()
            .any(|l| l.contains(" attached spec=") && l.contains(&spec)),
        "prepare attached vda"
    );
    assert_eq!(lv.domstate("vm3"), "shut off");
    s.assert_all_detached();
    s.assert_no_hook_errors();
    s.vg.remove();
}

/// libvirtd restarted while a domain runs: the new daemon calls `reconnect
/// begin`, which must succeed (libvirt kills the domain when a reconnect
/// hook fails); the disks stay attached, and destroy still detaches them.
#[test]
fn lab_libvirt_restart_reconnect() {
    let s = setup();
    let lv = &s.lv;
    let disks = vec![
        Setup::mirrored("vda", 0, "vm1-disk"),
        Setup::mirrored("vdb", 1, "vm1-b"),
    ];
    lv.define("vm1", &domain_xml("vm1", &disks));
    lv.virsh_ok(&["start", "vm1"]);
    let pid = lv.qemu_pid("vm1").expect("QEMU runs");
    s.assert_disks_up("vm1", pid, &disks);
    let holders = lv.holders();
    let attachments = lv.attachments();
    let devices = Snapshot::take().devices();

    let t = Instant::now();
    lv.stop_libvirtd();
    assert_eq!(
        lv.our_hook_ops("vm1"),
        ops(&START),
        "no hook at daemon stop"
    );
    assert_eq!(lv.qemu_pid("vm1"), Some(pid), "QEMU outlives libvirtd");
    lv.start_libvirtd();
    wait_for("the reconnect hook call", SLOW, || {
        lv.our_hook_ops("vm1").len() > START.len()
    });
    println!("libvirtd restart: {} ms", t.elapsed().as_millis());
    let mut want = ops(&START);
    want.extend(ops(&[("reconnect", "begin")]));
    assert_eq!(lv.our_hook_ops("vm1"), want);
    assert_eq!(lv.domstate("vm1"), "running");
    assert_eq!(lv.qemu_pid("vm1"), Some(pid), "the same QEMU");
    s.assert_no_hook_errors();
    assert_eq!(Snapshot::take().devices(), devices, "disks untouched");
    assert_eq!(lv.holders(), holders);
    assert_eq!(lv.attachments(), attachments);
    s.assert_disks_up("vm1", pid, &disks);

    lv.virsh_ok(&["destroy", "vm1"]);
    want.extend(ops(&STOP));
    assert_eq!(lv.our_hook_ops("vm1"), want);
    s.assert_all_detached();
    s.assert_no_hook_errors();
    s.vg.remove();
}

/// Two running domains where one's name is the other's plus `-2`
/// (`web`, `web-2`): destroying `web` releases `web`'s disks only.
/// `web-2` keeps its disks and its QEMU keeps using them.
#[test]
fn lab_libvirt_prefix_names() {
    let s = setup();
    let lv = &s.lv;
    let web = vec![Setup::mirrored("vda", 0, "vm1-disk")];
    let web2 = vec![s.plain("vda", 1)];
    lv.define("web", &domain_xml("web", &web));
    lv.define("web-2", &domain_xml("web-2", &web2));
    lv.virsh_ok(&["start", "web"]);
    lv.virsh_ok(&["start", "web-2"]);
    let pid2 = lv.qemu_pid("web-2").expect("web-2 runs");
    s.assert_disks_up("web-2", pid2, &web2);
    let sd = initiator::disk(IQN, 1).expect("web-2's LUN");

    lv.virsh_ok(&["destroy", "web"]);
    assert!(
        !Path::new("/dev/md/vm1-disk").exists(),
        "web's disk detached"
    );
    assert_eq!(
        lv.holders(),
        [format!(
            "{}.json",
            iscsimple::libvirt::holder_name("web-2", "vda")
        )],
        "web-2's holder record stays"
    );
    assert_eq!(
        initiator::disk(IQN, 1).as_deref(),
        Some(sd.as_str()),
        "web-2's LUN stays"
    );
    assert_eq!(lv.domstate("web-2"), "running");
    s.assert_disks_up("web-2", pid2, &web2);
    s.assert_no_hook_errors();

    lv.virsh_ok(&["destroy", "web-2"]);
    s.assert_all_detached();
    s.assert_no_hook_errors();
    s.vg.remove();
}
