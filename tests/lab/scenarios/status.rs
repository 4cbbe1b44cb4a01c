//! `status`: the table with the VM that holds a disk, `--json` against its
//! documented schema on a real resyncing mirror, `--watch` with progress
//! bars; and the hook's log lines carrying the domain and the spec.
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::fixture::libvirt::{domain_xml, DiskDef};
use crate::fixture::lvm::Vg;
use crate::fixture::system::Snapshot;
use crate::fixture::target::{Kind, Target, TargetSpec};
use crate::fixture::tool::{bin, syslog, Tool};
use crate::fixture::{Lab, Udev};

const IQN: &str = "iqn.2024-01.lab.iscsimple:status";

#[test]
fn lab_status_table_json_watch_and_hook_log_fields() {
    let _lab = Lab::start(Udev::On);
    let tg = Target::start(TargetSpec::new(Kind::Tgt, IQN, &[32]));
    let vg = Vg::create("labvg", 40);
    let local = vg.lv("vm1-disk", 32);
    // A slow resync (32 MiB at 1 MiB/s) to watch.
    let t = Tool::new(&format!(
        "[discovery]\nportals = [\"{}\"]\n[md]\nsync_speed_min = 1000\nsync_speed_max = 1000\n",
        tg.portal()
    ));
    t.labels(&[("vm1-disk", local.to_str().expect("utf8"))]);
    let spec = format!("lun1@{IQN}+vm1-disk");
    let xml = domain_xml("vm1", &[DiskDef::ours("vda", &spec, "/dev/md/vm1-disk")]);
    // libvirt runs its hook with no terminal: the tool logs to syslog here.
    let out = t.hook("vm1", "prepare", "begin", &xml);
    assert!(out.ok(), "{out:?}");

    let st = t.run(&["status"]);
    let lines: Vec<&str> = st.stdout.lines().collect();
    assert!(
        lines[0].starts_with("SPEC") && lines[0].contains("VM") && lines[0].contains("RESYNC"),
        "{}",
        st.stdout
    );
    let row = lines
        .iter()
        .find(|l| l.starts_with(&spec))
        .expect("a row for the spec");
    assert!(
        row.contains("/dev/md/vm1-disk (md") && row.contains(" vm1 ") && row.contains("LOGGED_IN"),
        "{row}"
    );
    assert!(st.stdout.contains("recovering"), "{}", st.stdout);

    let js = t.run(&["status", "--json"]);
    let v: Value = serde_json::from_str(&js.stdout).expect("JSON");
    let schema: Value =
        serde_json::from_str(include_str!("../../../doc/status.schema.json")).expect("schema");
    assert_eq!(
        crate::schema::validate(&schema, &v),
        Vec::<String>::new(),
        "{v:#}"
    );
    let a = &v["attachments"][0];
    assert_eq!(a["vms"][0]["name"], "vm1");
    assert_eq!(a["vms"][0]["backend"], "vda");
    let local_leg = &a["legs"][1];
    assert_eq!(local_leg["state"], "recovering", "{a:#}");
    assert!(
        local_leg["eta_seconds"].as_u64().is_some() && local_leg["speed_kib"].as_u64().is_some(),
        "{a:#}"
    );

    // --watch on a pipe: one block per interval, each with a progress bar.
    // md moves sync_completed in steps of 1/16 of the disk (2 MiB, 2 s at
    // this speed): read the redraws until the bar has moved, or give up.
    let mut w = Command::new(bin())
        .args([
            "--config",
            t.config.to_str().expect("utf8"),
            "status",
            "--watch",
            "--interval",
            "0.5",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("status --watch");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = w.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let bar = |l: &str| -> Option<f64> {
        if !(l.starts_with(&spec) && l.contains(" [") && l.ends_with(" left")) {
            return None;
        }
        l.split_whitespace()
            .find(|w| w.ends_with('%'))?
            .trim_end_matches('%')
            .parse()
            .ok()
    };
    let (mut text, mut bars) = (String::new(), Vec::<f64>::new());
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) else {
            continue;
        };
        if let Some(b) = bar(&line) {
            bars.push(b);
        }
        text.push_str(&line);
        text.push('\n');
        if bars.len() >= 3 && bars[0] < bars[bars.len() - 1] {
            break;
        }
    }
    // It redraws until stopped: still running after all those redraws.
    assert!(
        w.try_wait().expect("status --watch state").is_none(),
        "status --watch ended on its own"
    );
    w.kill().expect("stop status --watch");
    w.wait().expect("reap status --watch");
    println!("$ iscsimple status --watch --interval 0.5\n{text}");
    assert!(bars.len() >= 3, "a bar per redraw: {bars:?}");
    assert!(
        bars.windows(2).all(|p| p[0] <= p[1]) && bars[0] < bars[bars.len() - 1],
        "progress moves: {bars:?}"
    );

    // Every line the hook logged names the domain, those about the disk the spec.
    let log = syslog();
    let hook_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("iscsimple") && l.contains("libvirt{"))
        .collect();
    println!("hook log lines:\n{}", hook_lines.join("\n"));
    assert!(!hook_lines.is_empty(), "the hook logged: {log}");
    assert!(
        hook_lines.iter().all(|l| l.contains("domain=vm1")),
        "domain on every line"
    );
    assert!(
        hook_lines
            .iter()
            .any(|l| l.contains(&format!("spec={spec}")) && l.contains("attached")),
        "spec on the attach line"
    );

    let out = t.hook("vm1", "release", "end", &xml);
    assert!(out.ok(), "{out:?}");
    Snapshot::take().assert_clean();
    vg.remove();
}
