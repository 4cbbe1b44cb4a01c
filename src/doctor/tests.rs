//! Each check against a fake root: broken, then fixed as its fix says.
//! (The lab breaks and fixes a real host: tests/lab/scenarios/doctor.rs.)
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};

use super::*;
use crate::runner::recording::RecordingRunner;

struct Root {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Root {
    /// A healthy host: iscsid listening, a generated name, modules, AUTO -all.
    fn new() -> Root {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("iscsimple.toml");
        let r = Root { dir, config };
        fs::write(
            &r.config,
            format!(
                "label_table = \"{}\"\nrun_dir = \"{}\"\n",
                r.p("/labels").display(),
                r.p("/run/iscsimple").display()
            ),
        )
        .expect("config");
        r.put("/labels", "");
        r.put("/proc/net/unix", "Num RefCount Protocol Flags Type St Inode Path\n0000: 00000002 00000000 00010000 0001 01 1234 @ISCSIADM_ABSTRACT_NAMESPACE\n");
        r.put(
            INITIATOR,
            "## generated\nInitiatorName=iqn.1993-08.org.debian:01:abcdef123456\n",
        );
        r.put("/proc/sys/kernel/osrelease", "6.1.0-lab\n");
        r.put("/lib/modules/6.1.0-lab/modules.dep", "kernel/drivers/md/raid1.ko.xz: kernel/drivers/md/md-mod.ko.xz\nkernel/drivers/md/md-mod.ko.xz:\n");
        r.put("/lib/modules/6.1.0-lab/modules.builtin", "");
        fs::create_dir_all(r.p("/sys/module/iscsi_tcp")).expect("mkdir");
        r.put("/etc/mdadm/mdadm.conf", "MAILADDR root\nAUTO -all\n");
        r
    }
    fn p(&self, p: &str) -> PathBuf {
        self.dir.path().join(p.trim_start_matches('/'))
    }
    fn put(&self, p: &str, text: &str) {
        let path = self.p(p);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, text).expect("write");
    }
    fn run(&self, runner: &RecordingRunner, check: &str) -> Finding {
        let sys = Sys::new(self.dir.path());
        let d = Doctor {
            sys: &sys,
            runner,
            config_path: Some(&self.config),
        };
        let mut v = d.run(&[check.to_string()]);
        assert_eq!(v.len(), 1);
        let f = v.remove(0);
        println!("{}", text(std::slice::from_ref(&f)));
        f
    }
    fn check(&self, check: &str) -> Finding {
        self.run(&RecordingRunner::new(), check)
    }
}

const INITIATOR: &str = "/etc/iscsi/initiatorname.iscsi";

#[test]
fn healthy_host_passes_every_host_check() {
    let r = Root::new();
    for c in [
        "config",
        "label-table",
        "iscsid",
        "initiator-name",
        "kernel-modules",
        "mdadm-auto-assembly",
        "duplicate-uuids",
    ] {
        assert_eq!(r.check(c).status, Status::Ok, "{c}");
    }
    for c in ["xen-hook", "libvirt-hook"] {
        assert_eq!(r.check(c).status, Status::Skip, "{c}");
    }
}

#[test]
fn iscsid_not_listening() {
    let r = Root::new();
    r.put(
        "/proc/net/unix",
        "Num RefCount Protocol Flags Type St Inode Path\n",
    );
    r.put("/lib/systemd/system/iscsid.socket", "");
    let f = r.check("iscsid");
    assert_eq!(f.status, Status::Fail);
    assert_eq!(f.fix, vec!["systemctl enable --now iscsid.socket"]);
}

#[test]
fn initiator_name_problems() {
    let r = Root::new();
    for bad in [
        "GenerateName=yes\n",
        "InitiatorName=iqn.1993-08.org.debian:01:\n",
        "InitiatorName=not-a-name\n",
        "InitiatorName=iqn.2000-01.a:b\nInitiatorName=iqn.2000-01.a:c\n",
    ] {
        r.put(INITIATOR, bad);
        let f = r.check("initiator-name");
        assert_eq!(f.status, Status::Fail, "{bad}");
        assert!(f.fix[0]
            .starts_with("echo \"InitiatorName=$(iscsi-iname)\" > /etc/iscsi/initiatorname.iscsi"));
    }
    // iscsid still uses an older name
    r.put(INITIATOR, "InitiatorName=iqn.2000-01.a:new\n");
    r.put(
        "/sys/class/iscsi_session/session3/initiatorname",
        "iqn.2000-01.a:old\n",
    );
    let f = r.check("initiator-name");
    assert_eq!(f.status, Status::Fail);
    assert!(f.found[0].contains("iqn.2000-01.a:old"), "{f:?}");
}

#[test]
fn module_disabled_by_install_line() {
    let r = Root::new();
    r.put(
        "/etc/modprobe.d/harden.conf",
        "# CIS\ninstall raid1 /bin/false\nblacklist floppy\n",
    );
    let f = r.check("kernel-modules");
    assert_eq!(f.status, Status::Fail);
    assert!(
        f.found[0].starts_with("/etc/modprobe.d/harden.conf:2: `install raid1 /bin/false`"),
        "{f:?}"
    );
    assert_eq!(f.fix, vec!["sed -i '2d' /etc/modprobe.d/harden.conf"]);
    r.put("/etc/modprobe.d/harden.conf", "# CIS\nblacklist floppy\n");
    assert_eq!(r.check("kernel-modules").status, Status::Ok);
    // absent from the kernel's module list
    r.put("/lib/modules/6.1.0-lab/modules.dep", "");
    let f = r.check("kernel-modules");
    assert_eq!(f.status, Status::Fail);
    assert!(f.fix[0].starts_with("apt-get install --reinstall linux-image-6.1.0-lab"));
}

#[test]
fn mdadm_auto_lines() {
    let r = Root::new();
    r.put("/etc/mdadm/mdadm.conf", "MAILADDR root\n");
    let f = r.check("mdadm-auto-assembly");
    assert_eq!(f.status, Status::Fail);
    assert_eq!(f.fix[0], "echo 'AUTO -all' >> /etc/mdadm/mdadm.conf");
    r.put(
        "/etc/mdadm/mdadm.conf",
        "MAILADDR root\nAUTO +1.x\n  -all\n",
    );
    let f = r.check("mdadm-auto-assembly");
    assert_eq!(f.status, Status::Fail);
    assert_eq!(f.fix[0], "sed -i '2s/.*/AUTO -all/' /etc/mdadm/mdadm.conf");
    // the first AUTO line wins, the main file before the .d directory
    r.put("/etc/mdadm/mdadm.conf", "AUTO -all\n");
    r.put("/etc/mdadm/mdadm.conf.d/x.conf", "AUTO +all\n");
    assert_eq!(r.check("mdadm-auto-assembly").status, Status::Ok);
    // the host's own arrays are listed first
    r.put("/etc/mdadm/mdadm.conf", "");
    r.put("/sys/block/md0/md/metadata_version", "1.2\n");
    let f = r.check("mdadm-auto-assembly");
    assert!(
        f.fix[0].starts_with("mdadm --detail --scan >> /etc/mdadm/mdadm.conf"),
        "{f:?}"
    );
}

#[test]
fn hooks() {
    let r = Root::new();
    fs::create_dir_all(r.p("/etc/xen")).expect("mkdir");
    let f = r.check("xen-hook");
    assert_eq!(f.status, Status::Fail);
    assert_eq!(f.fix, vec!["mkdir -p /etc/xen/scripts && printf '%s\\n' '#!/bin/sh' 'exec /usr/sbin/iscsimple xen \"$@\"' > /etc/xen/scripts/block-iscsimple && chmod 755 /etc/xen/scripts/block-iscsimple"]);
    // what that command writes
    r.put(
        "/etc/xen/scripts/block-iscsimple",
        "#!/bin/sh\nexec /usr/sbin/iscsimple xen \"$@\"\n",
    );
    let f = r.check("xen-hook");
    assert_eq!(f.fix, vec!["chmod 755 /etc/xen/scripts/block-iscsimple"]);
    fs::set_permissions(
        r.p("/etc/xen/scripts/block-iscsimple"),
        fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    // /bin/sh and /usr/sbin/iscsimple must exist too
    let f = r.check("xen-hook");
    assert!(
        f.found[0].contains("runs /bin/sh, which is missing"),
        "{f:?}"
    );
    for exe in ["/bin/sh", "/usr/sbin/iscsimple"] {
        r.put(exe, "");
        fs::set_permissions(r.p(exe), fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    assert_eq!(r.check("xen-hook").status, Status::Ok);
    fs::create_dir_all(r.p("/etc/libvirt")).expect("mkdir");
    let f = r.check("libvirt-hook");
    assert_eq!(f.status, Status::Fail);
    assert_eq!(
        f.fix.last().map(String::as_str),
        Some("systemctl reload libvirtd  # libvirtd looks for hooks when it starts or reloads")
    );
}

#[test]
fn config_and_label_table() {
    let r = Root::new();
    fs::write(&r.config, "timeouts.logn = 3\n").expect("write");
    let f = r.check("config");
    assert_eq!(f.status, Status::Fail);
    assert!(f.found[0].contains("logn"), "{f:?}");
    let r = Root::new();
    r.put("/labels", "a /dev/vg0/a\nb MISSING\n");
    let f = r.check("label-table");
    assert_eq!(f.status, Status::Fail);
    assert!(f.fix[0].starts_with("lvcreate -L SIZE -n a vg0"), "{f:?}");
}

const LVM_DEFAULT: &str = "global_filter=[\"a|.*|\"]\nfilter=[\"a|.*|\"]\nscan_lvs=0\nuse_devicesfile=0\ndevicesfile=\"system.devices\"\n";

#[test]
fn lvm_filter_default_accepts_md_and_iscsi() {
    let r = Root::new();
    r.put("/sys/block/md127/md/metadata_version", "none\n");
    r.put("/sys/block/sda/size", "1\n");
    r.put("/sys/block/sdb/size", "1\n");
    fs::create_dir_all(r.p("/dev/disk/by-id")).expect("mkdir");
    r.put("/dev/sda2", "");
    r.put("/sys/class/block/sda2/size", "1\n");
    symlink("../../sda2", r.p("/dev/disk/by-id/ata-DISK_1-part2")).expect("symlink");
    let runner = RecordingRunner::new();
    runner.ok("lvm config", LVM_DEFAULT);
    runner.ok("lvm pvs", "  /dev/sda2\n  /dev/md127\n");
    let f = r.run(&runner, "lvm-filter");
    assert_eq!(f.status, Status::Fail);
    assert!(
        f.found.iter().any(|l| l.contains("md array md127")),
        "{f:?}"
    );
    assert!(
        f.found
            .iter()
            .any(|l| l.contains("the next iSCSI LUN: /dev/sdc ")),
        "{f:?}"
    );
    assert_eq!(
        f.fix[0],
        "in /etc/lvm/lvm.conf, section devices { }: global_filter = [ \"a|^/dev/disk/by-id/ata-DISK_1-part2$|\", \"r|.*|\" ]"
    );
    // the fix as lvm config then prints it
    let runner = RecordingRunner::new();
    runner.ok(
        "lvm config",
        &LVM_DEFAULT.replace(
            "global_filter=[\"a|.*|\"]",
            "global_filter=[\"a|^/dev/disk/by-id/ata-DISK_1-part2$|\",\"r|.*|\"]",
        ),
    );
    assert_eq!(r.run(&runner, "lvm-filter").status, Status::Ok);
    // a reject list without a trailing accept-all works as well
    let runner = RecordingRunner::new();
    runner.ok("lvm config", &LVM_DEFAULT.replace("filter=[\"a|.*|\"]\nscan", "filter=[\"r|^/dev/md|\",\"r|/dev/disk/by-path/.*-iscsi-|\",\"r|^/dev/sd[b-z]|\"]\nscan"));
    assert_eq!(r.run(&runner, "lvm-filter").status, Status::Ok);
    // scan_lvs
    let runner = RecordingRunner::new();
    runner.ok(
        "lvm config",
        &LVM_DEFAULT
            .replace("global_filter=[\"a|.*|\"]", "global_filter=[\"r|.*|\"]")
            .replace("scan_lvs=0", "scan_lvs=1"),
    );
    let f = r.run(&runner, "lvm-filter");
    assert_eq!(
        f.fix,
        vec!["in /etc/lvm/lvm.conf, section devices { }: scan_lvs = 0"]
    );
}

#[test]
fn duplicate_uuids_between_attachments() {
    let r = Root::new();
    let store = Store::new(&r.p("/run/iscsimple"));
    fs::create_dir_all(r.p("/dev")).expect("mkdir /dev");
    let ext4 = |uuid_byte: u8| {
        let mut b = vec![0u8; 8192];
        b[1024 + 56] = 0x53;
        b[1024 + 57] = 0xef;
        b[1024 + 104] = uuid_byte;
        b
    };
    for (i, (spec, k)) in [
        ("lun1@iqn.2000-01.a:golden", "sdb"),
        ("lun2@iqn.2000-01.a:golden", "sdc"),
        ("lun3@iqn.2000-01.a:golden", "sdd"),
    ]
    .into_iter()
    .enumerate()
    {
        // sdb and sdc are clones (same UUID), sdd holds another filesystem
        fs::write(r.p(&format!("/dev/{k}")), ext4(if i < 2 { 7 } else { 8 })).expect("dev");
        store
            .save(
                spec,
                &crate::state::Attachment {
                    spec: spec.into(),
                    phase: crate::state::Phase::Attached,
                    device: Some(PathBuf::from(format!("/dev/{k}"))),
                    iscsi: Some(crate::state::IscsiLeg {
                        target: "iqn.2000-01.a:golden".into(),
                        lun: 1,
                        portal: "127.0.0.1:3260".into(),
                        hctl: "2:0:0:1".into(),
                        kname: k.into(),
                        scanned: true,
                        size: 8192,
                        wwid: None,
                        devnum: None,
                        ..Default::default()
                    }),
                    mirror: None,
                },
            )
            .expect("save");
    }
    let f = r.check("duplicate-uuids");
    assert_eq!(f.status, Status::Fail);
    assert_eq!(f.found.len(), 1, "{f:?}");
    assert!(f.found[0].starts_with("UUID 07000000-0000-0000-0000-000000000000 is on /dev/sdb (ext4, lun1@iqn.2000-01.a:golden) and /dev/sdc (ext4, lun2@iqn.2000-01.a:golden)"), "{f:?}");
    assert!(
        f.fix[0].starts_with(
            "e2fsck -f -p /dev/sdc && tune2fs -U random /dev/sdc  # with the VM of lun2@"
        ),
        "{f:?}"
    );
    fs::write(r.p("/dev/sdc"), ext4(9)).expect("dev");
    assert_eq!(r.check("duplicate-uuids").status, Status::Ok);
}
