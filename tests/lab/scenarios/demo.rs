//! `make demo`: the main job shown to a person. Not a test (named demo_),
//! run by tests/lab/demo.sh with its console shown.
use std::time::{Duration, Instant};

use crate::fixture::lvm::Vg;
use crate::fixture::md::{mdstat, Md};
use crate::fixture::target::{Chap, Kind, Target, TargetSpec};
use crate::fixture::tool::Tool;
use crate::fixture::{Lab, Udev};

#[test]
fn demo_mirror() {
    let say = |s: &str| println!("\n=== {s}");
    let _lab = Lab::start(Udev::On);
    let mib = 256;
    say(&format!("a tgt target with one {mib} MiB LUN (mutual CHAP) on 127.0.0.1, and an LVM volume for the local leg"));
    let iqn = "iqn.2024-01.lab.iscsimple:demo-vm";
    let t = Target::start(TargetSpec::new(Kind::Tgt, iqn, &[mib]).chap(Chap::mutual()));
    let vg = Vg::create("vg0", mib + 16);
    let lv = vg.lv("demo-vm-disk", mib);
    let c = Chap::mutual();
    let (tu, tp) = c.mutual.clone().expect("mutual");
    let tool = Tool::new(&format!(
        "[discovery]\nportals = [\"{}\"]\n[md]\nsync_speed_max = 40000\n[[chap]]\ntarget = \"{iqn}\"\nusername = \"{}\"\npassword = \"{}\"\nusername_in = \"{tu}\"\npassword_in = \"{tp}\"\n",
        t.portal(),
        c.user,
        c.password
    ));
    tool.labels(&[("demo-vm-disk", lv.to_str().expect("utf8"))]);
    println!(
        "{}",
        std::fs::read_to_string(&tool.table).unwrap_or_default()
    );
    let spec = format!("lun1@{iqn}+demo-vm-disk");
    say(&format!("iscsimple attach {spec}"));
    let dev = tool.attach(&spec);
    say(&format!("the VM would now get {}; the local leg resyncs from iSCSI (speed capped at 40 MB/s for the demo)", dev.display()));
    let m = Md::by_label("demo-vm-disk");
    let start = Instant::now();
    let mut shown_status = false;
    while m.attr("sync_action") != "idle" && start.elapsed() < Duration::from_secs(120) {
        print!("{}", mdstat());
        if !shown_status && start.elapsed() > Duration::from_secs(2) {
            say("iscsimple status, while the local leg recovers");
            tool.run(&["status"]);
            shown_status = true;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    print!("{}", mdstat());
    say("iscsimple status");
    tool.run(&["status"]);
    say(&format!("iscsimple detach {spec}"));
    tool.detach(&spec);
    say("iscsimple status (nothing left)");
    tool.run(&["status"]);
    print!("{}", mdstat());
    vg.remove();
}
