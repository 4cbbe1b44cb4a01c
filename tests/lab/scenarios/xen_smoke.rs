//! The Xen lab itself works (LAB_FLAVOR=xen): a PV guest sees a dom0 disk
//! with the right data and writes to it, block-attach/detach and destroy
//! clean up, and a custom hotplug script gets the contract libxl documents.
use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::fixture::cmd::{must, run};
use crate::fixture::data;
use crate::fixture::xen::{self, Dom0, Guest, GuestOpts};
use crate::fixture::Udev;

const MIN: Duration = Duration::from_secs(60);

/// A loop device over a new file whose MiB [from, to) hold the pattern for
/// `seed` (zeros before `from`).
fn loop_disk(img: &str, from: u64, to: u64, seed: u64) -> String {
    assert!(!Path::new(img).exists(), "{img} is new in this VM");
    data::fill(Path::new(img), from, to - from, seed);
    must("/usr/sbin/losetup", &["-f", "--show", img])
        .trim()
        .to_string()
}

/// No vbd backend left in xenstore for `domid`.
fn assert_no_backend(domid: u32) {
    let ls = xen::xenstore_ls(&format!("/local/domain/0/backend/vbd/{domid}"));
    assert!(ls.trim().is_empty(), "backend nodes left:\n{ls}");
}

#[test]
fn xen_smoke_guest_sees_loop_disk() {
    let _dom0 = Dom0::start(Udev::Off);
    let seed = 0x5eed_0001;
    let disk = loop_disk("/var/tmp/xen-smoke-b.img", 0, 16, seed);

    let g = Guest::start(
        "smoke",
        &[&format!("phy:{disk},xvdb,w")],
        &GuestOpts {
            writer_mib: 4,
            ..GuestOpts::default()
        }
        .writer("xvdc"),
    );
    let domid = g.domid().expect("domid");
    let seen = g.wait_disk("xvdb", 2 * MIN);
    assert_eq!(seen.sectors, 16 * 2048, "size of xvdb in the guest");
    xen::assert_reads_whole(&seen, Path::new(&disk));
    assert_eq!(
        xen::xenstore_read(&format!("{}/state", xen::backend_path(domid, "xvdb"))).as_deref(),
        Some("4"),
        "backend connected"
    );

    // A disk attached later, which the guest writes to (MiB 0-3) until it
    // goes away.
    let wdisk = loop_disk("/var/tmp/xen-smoke-c.img", 4, 8, seed + 1);
    let out = g.block_attach(&format!("phy:{wdisk},xvdc,w"));
    assert!(out.ok(), "block-attach xvdc: {out:?}");
    g.wait_disk("xvdc", 2 * MIN);
    g.wait_writes("xvdc", 10, 2 * MIN);
    let out = g.block_detach("xvdc");
    assert!(out.ok(), "block-detach xvdc: {out:?}");
    g.wait_disk_gone("xvdc", MIN);
    let acked = g.writes("xvdc");
    println!("guest acknowledged {} writes to xvdc", acked.len());
    xen::check_writer(Path::new(&wdisk), "xvdc", 4, &acked).unwrap_or_else(|e| panic!("{e}"));
    // the guest never wrote beyond its area
    data::verify(Path::new(&wdisk), 4, 4, seed + 1);

    let out = g.block_detach("xvdb");
    assert!(out.ok(), "block-detach xvdb: {out:?}");
    g.wait_disk_gone("xvdb", MIN);
    assert_no_backend(domid);
    let out = g.destroy();
    assert!(out.ok(), "destroy: {out:?}");
    assert_eq!(g.domid(), None, "domain gone");
    assert_no_backend(domid);
    // the guest only read xvdb
    data::verify(Path::new(&disk), 0, 16, seed);
    for d in [&disk, &wdisk] {
        must("/usr/sbin/losetup", &["-d", d]);
    }
    let list = xen::xl_must(&["list"]);
    assert_eq!(list.lines().count(), 2, "only Domain-0 left:\n{list}");
}

/// Test hotplug script: logs argv and environment, serves `params` (a file)
/// through a loop device on add, releases it on remove.
const BLOCK_LABTEST: &str = r#"#!/bin/bash
LOG=/run/labtest.log
{
    echo "=== $0 $*"
    echo "argc=$#"
    env | sort
    echo "=== end"
} >> "$LOG"
xs_read() { xenstore-read "$XENBUS_PATH/$1"; }
case "$1" in
add)
    params=$(xs_read params) || exit 1
    dev=$(losetup -f --show "$params") || {
        xenstore-write "$XENBUS_PATH/hotplug-error" "losetup $params failed"
        exit 1
    }
    mm=$(printf '%x:%x' "0x$(stat -L -c %t "$dev")" "0x$(stat -L -c %T "$dev")")
    xenstore-write "$XENBUS_PATH/physical-device" "$mm" \
                   "$XENBUS_PATH/physical-device-path" "$dev" \
                   "$XENBUS_PATH/hotplug-status" connected
    echo "added $dev $mm" >> "$LOG"
    ;;
remove)
    dev=$(xs_read physical-device-path) || exit 1
    losetup -d "$dev" || exit 1
    echo "removed $dev" >> "$LOG"
    ;;
*)
    exit 1
    ;;
esac
"#;

#[test]
fn xen_smoke_script_contract() {
    let _dom0 = Dom0::start(Udev::Off);
    let img = "/var/tmp/x.img";
    let seed = 0x5eed_0002;
    data::fill(Path::new(img), 0, 16, seed);
    xen::install_script("block-labtest", BLOCK_LABTEST);

    let g = Guest::start("contract", &[], &GuestOpts::default());
    let domid = g.domid().expect("domid");
    let out = g.block_attach(&format!(
        "script=block-labtest,vdev=xvdc,access=w,target={img}"
    ));
    assert!(out.ok(), "block-attach with block-labtest: {out:?}");
    let seen = g.wait_disk("xvdc", 2 * MIN);
    assert_eq!(seen.sectors, 16 * 2048);
    xen::assert_reads_whole(&seen, Path::new(img));

    let log = fs::read_to_string("/run/labtest.log").expect("the script ran");
    println!("---- /run/labtest.log\n{log}");
    let xb = format!("backend/vbd/{domid}/{}", xen::vbd_devid("xvdc"));
    for want in [
        "=== /etc/xen/scripts/block-labtest add".to_string(),
        "argc=1".to_string(),
        format!("XENBUS_PATH={xb}"),
        "XENBUS_TYPE=vbd".to_string(),
        "XENBUS_BASE_PATH=backend".to_string(),
        "script=/etc/xen/scripts/block-labtest".to_string(),
    ] {
        assert!(
            log.lines().any(|l| l == want),
            "{want:?} not in the script's log"
        );
    }
    let be = xen::backend_path(domid, "xvdc");
    assert_eq!(
        xen::xenstore_read(&format!("{be}/params")).as_deref(),
        Some(img)
    );
    assert_eq!(
        xen::xenstore_read(&format!("{be}/state")).as_deref(),
        Some("4")
    );
    let loops = must("/usr/sbin/losetup", &["-j", img]);
    assert_eq!(loops.lines().count(), 1, "one loop device: {loops}");

    let out = g.block_detach("xvdc");
    assert!(out.ok(), "block-detach: {out:?}");
    g.wait_disk_gone("xvdc", MIN);
    let log = fs::read_to_string("/run/labtest.log").expect("log");
    assert!(
        log.contains("=== /etc/xen/scripts/block-labtest remove")
            && log.contains("removed /dev/loop"),
        "remove ran:\n{log}"
    );
    let loops = run("/usr/sbin/losetup", &["-j", img]);
    assert!(
        loops.stdout.trim().is_empty(),
        "loop released: {}",
        loops.stdout
    );
    assert_no_backend(domid);
    let out = g.destroy();
    assert!(out.ok(), "destroy: {out:?}");
    assert_eq!(g.domid(), None);
    data::verify(Path::new(img), 0, 16, seed);
}
