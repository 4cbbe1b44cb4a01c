//! The persistent disk of `_reboot` scenarios (fixture/persist.rs) behaves as
//! a host's disk across a power loss: each run starts with a fresh one, and
//! what was fsynced before the power cut is there after the reboot.
use std::fs;

use crate::fixture::persist::{self, boot, power_loss};
use crate::fixture::{Lab, Udev};

/// The tool's persistent state directory.
const STATE: &str = "/var/lib/iscsimple";

/// 256 KiB that differ from page to page, headed by a line naming them.
fn content() -> Vec<u8> {
    let mut v = b"lab_reboot: written and fsynced in boot 1\n".to_vec();
    v.extend((0..256u32 * 1024).map(|i| (i.wrapping_mul(7) ^ (i >> 12)).to_le_bytes()[0]));
    v
}

/// Boot 1 gets a blank disk, makes the filesystem, writes a file with fsync
/// of the file and its directory, and a second one without any sync, then
/// cuts the power. Boot 2 mounts a filesystem whose journal had to be
/// replayed and finds the synced file whole (the unsynced one may or may not
/// be there: reported, not asserted).
#[test]
fn lab_reboot_fixture_power_loss_keeps_synced_files() {
    let _lab = Lab::start(Udev::Off);
    match boot() {
        1 => {
            let dev = persist::device();
            assert!(
                persist::blank(&dev),
                "boot 1 gets a fresh disk: nothing from another scenario or an earlier run"
            );
            let dir = persist::mount(STATE);
            assert_eq!(
                crate::fixture::names(&dir),
                ["lost+found"],
                "boot 1: the filesystem was made just now"
            );
            persist::write_synced(&dir.join("synced"), &content());
            fs::write(dir.join("unsynced"), b"never synced\n").expect("write unsynced");
            println!(
                "boot 1: {} formatted and mounted at {STATE}, synced file written; power loss",
                dev.display()
            );
            power_loss();
        }
        2 => {
            let dev = persist::device();
            assert!(!persist::blank(&dev), "boot 2 gets boot 1's disk");
            let dir = persist::mount(STATE);
            assert!(
                persist::replayed(&dev),
                "boot 2: ext4 replayed its journal (boot 1 ended without unmount or sync)"
            );
            let got = fs::read(dir.join("synced"))
                .expect("boot 2: the synced file survives the power loss");
            let want = content();
            assert!(
                got == want,
                "boot 2: the synced file has {} bytes (written: {}), first difference at byte {:?}",
                got.len(),
                want.len(),
                got.iter().zip(&want).position(|(a, b)| a != b)
            );
            let unsynced = fs::read(dir.join("unsynced"));
            println!(
                "boot 2: synced file intact; unsynced file {}; {STATE} holds {:?}",
                match &unsynced {
                    Ok(b) => format!("present ({} bytes)", b.len()),
                    Err(e) => format!("lost ({e})"),
                },
                crate::fixture::names(&dir)
            );
        }
        n => panic!("boot {n}: a _reboot scenario is booted twice (LAB_BOOT 1, 2)"),
    }
}
