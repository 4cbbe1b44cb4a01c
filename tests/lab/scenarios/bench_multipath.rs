//! Multipath benchmarks (issue 18): a LIO target on two portals in two
//! network namespaces, multipathd running with the expected config.
use crate::fixture::bench::{self, secs, Figure, Goal};
use crate::fixture::cmd::must;
use crate::fixture::lvm::Vg;
use crate::fixture::md::Md;
use crate::fixture::multipath::{slaves, Multipathd, MULTIPATH_CONF};
use crate::fixture::net::Netns;
use crate::fixture::target::{Kind, Target, TargetSpec};
use crate::fixture::tool::Tool;
use crate::fixture::{Lab, Udev};

const IQN: &str = "iqn.2024-01.lab.iscsimple:benchmp";

/// Runs per figure: LAB_BENCH_RUNS or `default`.
fn runs(default: usize) -> usize {
    std::env::var("LAB_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Node records for `portals` only (untimed): the tool logs in through
/// each portal the target has a record for.
fn nodes(portals: &[&str]) {
    let _ = crate::fixture::cmd::run("/usr/sbin/iscsiadm", &["-m", "node", "-o", "delete"]);
    for p in portals {
        must(
            "/usr/sbin/iscsiadm",
            &["-m", "node", "-T", IQN, "-p", p, "-o", "new"],
        );
    }
}

/// Attach latency of a plain LUN over two paths (two logins, at once,
/// then the map) against one path (one login, the SCSI disk), the node
/// DB holding the target's records for both portals or for one, rounds
/// alternating; and sequential reads through the mirror whose iSCSI leg
/// is the map against the raw local volume (md reads the local leg: the
/// map must cost reads nothing).
#[test]
fn bench_multipath() {
    let lab = Lab::start(Udev::On);
    let (a, b) = (Netns::create("labmpa", 21), Netns::create("labmpb", 22));
    let t = Target::start_in(TargetSpec::new(Kind::Lio, IQN, &[64, 16]), Some(a.clone()));
    let portals = [t.portal(), t.add_portal_in(&b)];
    let _mp = Multipathd::start(MULTIPATH_CONF);
    let vg = Vg::create("labvg", 80);
    let lv = vg.lv("vm1", 64);
    let tool = Tool::new("[timeouts]\nreplacement = 5\nnoop_interval = 2\nnoop_timeout = 2\n");
    tool.labels(&[("vm1-disk", lv.to_str().unwrap())]);
    let plain = format!("lun{}@{IQN}", t.luns[1].number);
    let n = runs(5);
    let (mut two, mut one) = (Vec::new(), Vec::new());
    for round in 0..n {
        for both in if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        } {
            let k = if both { 2 } else { 1 };
            nodes(
                &portals
                    .iter()
                    .take(k)
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
            );
            // From a quiet host: udev done with the last detach.
            lab.settle();
            // On a terminal: the debug log says where the time went.
            let (s, out) = secs(|| tool.run_tty(&["-vv", "attach", &plain]));
            assert!(out.ok(), "attach: {}", out.stderr);
            println!("attach over {k} portal(s): {s:.2} s\n{}", out.stderr);
            let dev = out.stdout.trim().to_string();
            assert_eq!(
                dev.starts_with("/dev/mapper/"),
                both,
                "two portals: the map; one: the disk ({dev})"
            );
            tool.detach(&plain);
            if both { &mut two } else { &mut one }.push(s);
        }
    }
    Figure::new(
        "multipath_attach",
        "Attach latency, plain LUN, two paths vs one",
        ("two portals (two logins at once, the map)", two),
        ("one portal (one login, the disk)", one),
        "s",
        Goal::AtMost(1.3),
    )
    .note("cold sessions each run (node records present), udev settled before each; LIO on two portals in two network namespaces; multipathd 0.9.4 running in both")
    .paired()
    .emit();

    nodes(&[&portals[0], &portals[1]]);
    let dev = tool.attach(&format!("lun{}@{IQN}+vm1-disk", t.luns[0].number));
    let m = Md::by_label("vm1-disk");
    m.wait_synced(std::time::Duration::from_secs(300));
    assert!(
        m.members()
            .iter()
            .any(|k| k.starts_with("dm-") && slaves(k).len() == 2),
        "the iSCSI leg is the map: {:?}",
        m.members()
    );
    let (mut md, mut raw) = (Vec::new(), Vec::new());
    for round in 0..runs(5) {
        for through_md in if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        } {
            let p = if through_md {
                dev.as_path()
            } else {
                lv.as_path()
            };
            let r = bench::seq_read(p, 64, 1 << 20);
            if through_md { &mut md } else { &mut raw }.push(r);
        }
    }
    Figure::new(
        "multipath_md_read",
        "Sequential read, 64 MiB O_DIRECT 1 MiB blocks, mirror over the map vs raw local volume",
        ("/dev/md/LABEL (iSCSI leg = map, write-mostly)", md),
        ("the local LV", raw),
        "MiB/s",
        Goal::AtLeast(0.95),
    )
    .note("md serves reads from the local leg; the map is the write-mostly leg")
    .paired()
    .emit();
    tool.detach("vm1-disk");
    vg.remove();
}
