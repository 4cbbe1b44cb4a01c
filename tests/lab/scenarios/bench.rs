//! Benchmarks (`make bench`, tests/bench.sh): not tests, named bench_, so
//! `make test` never runs them. Each prints `@@BENCH {json}` lines (see
//! fixture/bench.rs): ratios against baselines measured in the same VM.
//! Timings are never asserted; a bench fails only when what it measures
//! fails.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::fixture::bench::{self, secs, Figure, Goal};
use crate::fixture::cmd::{must, run};
use crate::fixture::lvm::Vg;
use crate::fixture::md::Md;
use crate::fixture::system::Snapshot;
use crate::fixture::target::{Kind, Target, TargetSpec};
use crate::fixture::tool::{bin, Tool};
use crate::fixture::{Lab, Udev};

const IQN: &str = "iqn.2024-01.lab.iscsimple:bench";

/// Time `iscsimple ARGS` (no output shown: printing is not timed either).
fn tool_timed(tool: &Tool, args: &[&str]) -> (f64, String) {
    let mut v = vec!["--config", tool.config.to_str().expect("utf8")];
    v.extend_from_slice(args);
    let (t, out) = secs(|| run(&bin(), &v));
    assert!(
        out.ok(),
        "iscsimple {}: exit {}: {}",
        args.join(" "),
        out.code,
        out.stderr
    );
    (t, out.stdout.trim().to_string())
}

/// Time a script; it must succeed; its stdout.
fn script_timed(prog: &str, args: &[&str], env: &[(&str, &str)]) -> (f64, String) {
    let (t, out) = secs(|| {
        Command::new(prog)
            .args(args)
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("spawn {prog}: {e}"))
    });
    assert!(
        out.status.success(),
        "{prog} {}: {:?}\nstdout: {}\nstderr: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (t, String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Forget every node record (untimed): each approach starts cold, with
/// discovery needed, as on a host that never used the target.
fn forget_nodes() {
    run("/usr/sbin/iscsiadm", &["-m", "node", "-o", "delete"]);
}

/// `udevadm settle`; a failure is shown (with whether udevd still runs)
/// and retried once, never fatal by itself.
fn settle() {
    for attempt in 0..2 {
        let out = run("/usr/bin/udevadm", &["settle", "-t", "30"]);
        if out.ok() {
            return;
        }
        let udevd = crate::fixture::target::pids_of("systemd-udevd");
        println!(
            "WARNING: udevadm settle (attempt {attempt}): exit {} {}; systemd-udevd pids {udevd:?}",
            out.code,
            out.stderr.trim()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Runs per figure: LAB_BENCH_RUNS (from the host) or `default`.
fn runs(default: usize) -> usize {
    std::env::var("LAB_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One `iscsimple` call with its debug log on a terminal (a pty: the tool
/// then logs to stderr with timestamps): the total time, and each log
/// event at its offset from the start. The `cmd` span of
/// src/runner/real.rs logs each command with `elapsed_ms`.
fn profile(tool: &Tool, args: &[&str]) -> (f64, Vec<(f64, String)>) {
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two fds into the integers we pass; the other
    // arguments may be null.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just opened by openpty and are owned by us alone.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let reader = std::thread::spawn(move || {
        let mut f = std::fs::File::from(master);
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        // EIO once the child (the last holder of the slave) exits
        while let Ok(n) = f.read(&mut chunk) {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8_lossy(&buf).into_owned()
    });
    let mut v = vec!["--config", tool.config.to_str().expect("utf8")];
    v.extend_from_slice(args);
    let wall0 = std::time::SystemTime::now();
    let (t, out) = secs(|| {
        Command::new(bin())
            .args(&v)
            .env("ISCSIMPLE_LOG", "iscsimple=debug")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::from(slave))
            .output()
            .expect("spawn iscsimple")
    });
    assert!(
        out.status.success(),
        "iscsimple {}: {:?}",
        args.join(" "),
        out.status
    );
    let log = reader.join().expect("pty reader");
    let t0 = wall0
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let mut events = Vec::new();
    for l in log.lines() {
        let l = strip_ansi(l.trim_end_matches('\r'));
        // 2024-01-01T12:00:00.123456Z  INFO message...
        let Some((ts, rest)) = l.split_once(' ') else {
            continue;
        };
        let Some(at) = rfc3339_secs(ts) else { continue };
        events.push((at - t0, rest.trim().to_string()));
    }
    (t, events)
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Seconds since the epoch of `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC).
fn rfc3339_secs(ts: &str) -> Option<f64> {
    let ts = ts.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let d: Vec<i64> = date
        .split('-')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if d.len() != 3 || t.len() != 3 {
        return None;
    }
    // days from civil (Howard Hinnant's algorithm)
    let (y, m, dd) = (d[0] - i64::from(d[1] <= 2), d[1], d[2]);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + dd - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let frac: f64 = format!("0.{frac}").parse().ok()?;
    Some((days * 86400 + t[0] * 3600 + t[1] * 60 + t[2]) as f64 + frac)
}

/// Print a profile and turn it into JSON: each command with its time, and
/// the events of the log at their offsets.
fn show_profile(what: &str, t: f64, events: &[(f64, String)]) -> serde_json::Value {
    println!("profile: {what}: {t:.3}s");
    let mut cmds = Vec::new();
    let mut prev = 0.0;
    for (at, e) in events {
        println!("  {at:7.3}s (+{:.3})  {e}", at - prev);
        prev = *at;
        if let (Some(c), Some(ms)) = (e.find("command="), e.find("elapsed_ms=")) {
            let cmd = e[c + 8..].split("}:").next().unwrap_or("").to_string();
            let ms: f64 = e[ms + 11..]
                .split_whitespace()
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0.0);
            cmds.push((cmd, ms / 1000.0));
        }
    }
    let sum: f64 = cmds.iter().map(|c| c.1).sum();
    println!(
        "  {sum:.3}s in {} commands, {:.3}s elsewhere",
        cmds.len(),
        t - sum
    );
    serde_json::json!({
        "total_s": t,
        "commands_s": sum,
        "commands": cmds.iter().map(|(c, s)| serde_json::json!({"command": c, "s": s})).collect::<Vec<_>>(),
        "events": events.iter().map(|(at, e)| serde_json::json!({"at_s": (at * 1000.0).round() / 1000.0, "event": e})).collect::<Vec<_>>(),
    })
}

/// How the node DB looks before a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nodes {
    /// A record for the target, as discovery leaves it: the steady state
    /// of a host that used the target before (iscsimple keeps its records
    /// at detach; the seed's and block-iscsi's discovery make them).
    Warm,
    /// No record at all: discovery needed (a host's first attach).
    Cold,
}

/// Set the node DB up (untimed) for the next run.
fn prepare_nodes(nodes: Nodes, portal: &str) {
    forget_nodes();
    if nodes == Nodes::Warm {
        must(
            "/usr/sbin/iscsiadm",
            &["-m", "discovery", "-t", "sendtargets", "-p", portal],
        );
    }
}

/// Attach and detach latency: iscsimple against the seed's raw commands
/// (mirrored spec; warm and cold node DB) and against Xen's block-iscsi
/// (plain LUN 0, the only LUN it can attach; warm), all on the same LIO LUN
/// in turn, the order rotated every round.
#[test]
fn bench_attach_detach() {
    let _lab = Lab::start(Udev::On);
    const MIB: u64 = 8;
    let n = runs(5);
    let t = Target::start(TargetSpec::new(Kind::Lio, IQN, &[MIB]));
    let portal = t.portal();
    let vg = Vg::create("benchvg", MIB + 16);
    let lv = vg.lv("bench", MIB);
    let tool = Tool::new(&format!("[discovery]\nportals = [\"{portal}\"]\n"));
    tool.labels(&[("bench-disk", lv.to_str().expect("utf8"))]);
    bench::script("/run/bench/seed-attach", bench::SEED_ATTACH);
    bench::script("/run/bench/seed-detach", bench::SEED_DETACH);
    let xen = bench::install_xen_hotplug();
    let mirror = format!("lun0@{IQN}+bench-disk");
    let plain = format!("lun0@{IQN}");
    let xb = "backend/vbd/7/51712";
    if xen {
        must(
            "/usr/bin/xenstore-write",
            &[
                &format!("{xb}/params"),
                &format!("iqn={IQN},portal={portal}"),
            ],
        );
    }
    let lvs = lv.to_str().expect("utf8");
    let wait_synced = || {
        Md::by_label("bench-disk").wait_synced(Duration::from_secs(60));
    };
    // (what, node DB) of each approach
    const TOOL_M: usize = 0;
    const SEED_M: usize = 1;
    const TOOL_P: usize = 2;
    const XEN_P: usize = 3;
    let approaches = [
        (TOOL_M, Nodes::Warm),
        (SEED_M, Nodes::Warm),
        (TOOL_P, Nodes::Warm),
        (XEN_P, Nodes::Warm),
        (TOOL_M, Nodes::Cold),
        (SEED_M, Nodes::Cold),
    ];
    let k = approaches.len();
    // [attach, detach] samples per approach
    let mut samples: Vec<[Vec<f64>; 2]> = vec![Default::default(); k];
    for round in 0..n {
        for j in 0..k {
            let i = (j + round) % k; // rotate the order
            let (what, nodes) = approaches[i];
            if what == XEN_P && !xen {
                continue;
            }
            prepare_nodes(nodes, &portal);
            settle();
            let (a, d) = match what {
                TOOL_M => {
                    let (a, dev) = tool_timed(&tool, &["attach", &mirror]);
                    assert_eq!(dev, "/dev/md/bench-disk");
                    wait_synced();
                    settle();
                    let (d, _) = tool_timed(&tool, &["detach", &mirror]);
                    (a, d)
                }
                SEED_M => {
                    let (a, dev) = script_timed(
                        "/run/bench/seed-attach",
                        &[IQN, &portal, "0", "bench-disk", lvs],
                        &[],
                    );
                    assert_eq!(dev, "/dev/md/bench-disk");
                    wait_synced();
                    settle();
                    let (d, _) =
                        script_timed("/run/bench/seed-detach", &[IQN, &portal, "bench-disk"], &[]);
                    (a, d)
                }
                TOOL_P => {
                    let (a, dev) = tool_timed(&tool, &["attach", &plain]);
                    assert!(Path::new(&dev).exists());
                    settle();
                    let (d, _) = tool_timed(&tool, &["detach", &plain]);
                    (a, d)
                }
                _ => {
                    let env = [("XENBUS_PATH", xb)];
                    let (a, _) = script_timed("/etc/xen/scripts/block-iscsi", &["add"], &env);
                    let dev = std::fs::read_to_string(format!(
                        "{}/{xb}/physical-device-path",
                        bench::FAKE_XS
                    ))
                    .expect("block-iscsi wrote physical-device-path");
                    assert!(Path::new(&dev).exists(), "{dev}");
                    settle();
                    let (d, _) = script_timed("/etc/xen/scripts/block-iscsi", &["remove"], &env);
                    (a, d)
                }
            };
            settle();
            crate::fixture::wait_for("clean after detach", Duration::from_secs(30), || {
                crate::fixture::initiator::all_sessions().is_empty()
                    && crate::fixture::initiator::scsi_disks().is_empty()
                    && crate::fixture::md::arrays().is_empty()
            });
            println!("round {round} approach {what} {nodes:?}: attach {a:.3}s detach {d:.3}s");
            samples[i][0].push(a);
            samples[i][1].push(d);
        }
    }
    let [tm, sm, tp, xp, tmc, smc] = [0, 1, 2, 3, 4, 5].map(|i| samples[i].clone());

    // Where the tool's time goes (debug log): warm and cold attach, detach.
    prepare_nodes(Nodes::Warm, &portal);
    let (ta, ev) = profile(&tool, &["attach", &mirror]);
    let pa = show_profile(&format!("attach {mirror} (warm)"), ta, &ev);
    wait_synced();
    settle();
    let (td, ev) = profile(&tool, &["detach", &mirror]);
    let pd = show_profile(&format!("detach {mirror}"), td, &ev);
    settle();
    prepare_nodes(Nodes::Cold, &portal);
    let (ta, ev) = profile(&tool, &["attach", &mirror]);
    let pc = show_profile(&format!("attach {mirror} (cold)"), ta, &ev);
    wait_synced();
    settle();
    tool_timed(&tool, &["detach", &mirror]);
    settle();
    prepare_nodes(Nodes::Warm, &portal);
    let (ta, ev) = profile(&tool, &["attach", &plain]);
    let pp = show_profile(&format!("attach {plain} (warm)"), ta, &ev);
    settle();
    tool_timed(&tool, &["detach", &plain]);

    let lab = "LIO target, 8 MiB LUN 0, udev running; the approaches interleaved, order rotated each round";
    let warm = format!("warm: a node record as discovery leaves it before every run (no discovery needed, except block-iscsi which always discovers); {lab}");
    let cold = format!("cold: no node record before every run (discovery needed); {lab}");
    Figure::new(
        "attach_vs_seed",
        "Attach latency, mirrored spec (until the device is returned), warm",
        ("iscsimple attach", tm[0].clone()),
        ("seed's commands (bash)", sm[0].clone()),
        "s",
        Goal::AtMost(1.10),
    )
    .note(warm.clone())
    .extra(serde_json::json!({"profile": pa}))
    .paired()
    .emit();
    Figure::new(
        "attach_vs_seed_cold",
        "Attach latency, mirrored spec (until the device is returned), cold",
        ("iscsimple attach", tmc[0].clone()),
        ("seed's commands (bash)", smc[0].clone()),
        "s",
        Goal::AtMost(1.10),
    )
    .note(cold)
    .extra(serde_json::json!({"profile": pc}))
    .paired()
    .emit();
    // detach does not depend on the node DB: warm and cold runs pooled
    Figure::new(
        "detach_vs_seed",
        "Detach latency, mirrored spec",
        ("iscsimple detach", [tm[1].clone(), tmc[1].clone()].concat()),
        (
            "seed's commands (bash)",
            [sm[1].clone(), smc[1].clone()].concat(),
        ),
        "s",
        Goal::AtMost(1.10),
    )
    .note(format!("warm and cold runs pooled; {lab}"))
    .extra(serde_json::json!({"profile": pd}))
    .paired()
    .emit();
    if xen {
        let xnote = format!("{warm}; block-iscsi from Debian's xen-utils-common 4.17 with a file-backed xenstore-read/xenstore-write stand-in (plain lab, no xenstored); block-iscsi attaches LUN 0 only and does not mirror");
        for (id, fig, sub, s, b, p) in [
            (
                "attach_mirror_vs_block_iscsi",
                "Attach latency, iscsimple mirrored vs block-iscsi (plain LUN), warm",
                "iscsimple attach (mirrored)",
                &tm[0],
                &xp[0],
                serde_json::Value::Null,
            ),
            (
                "attach_plain_vs_block_iscsi",
                "Attach latency, plain LUN 0, warm",
                "iscsimple attach (plain)",
                &tp[0],
                &xp[0],
                pp.clone(),
            ),
            (
                "detach_mirror_vs_block_iscsi",
                "Detach latency, iscsimple mirrored vs block-iscsi (plain LUN)",
                "iscsimple detach (mirrored)",
                &tm[1],
                &xp[1],
                serde_json::Value::Null,
            ),
            (
                "detach_plain_vs_block_iscsi",
                "Detach latency, plain LUN 0",
                "iscsimple detach (plain)",
                &tp[1],
                &xp[1],
                serde_json::Value::Null,
            ),
        ] {
            let base = if id.starts_with("attach") {
                "block-iscsi add"
            } else {
                "block-iscsi remove"
            };
            Figure::new(
                id,
                fig,
                (sub, s.clone()),
                (base, b.clone()),
                "s",
                Goal::AtMost(0.5),
            )
            .note(xnote.clone())
            .extra(serde_json::json!({"profile": p}))
            .paired()
            .emit();
        }
    }
    vg.remove();
}

/// Poll (every 20 ms) until `m` is idle with no leg missing; seconds waited.
fn wait_idle(m: &Md, timeout: Duration) -> f64 {
    let start = std::time::Instant::now();
    while m.attr("sync_action") != "idle" || m.attr("degraded") != "0" {
        let faulty: Vec<String> = m
            .members()
            .into_iter()
            .filter(|d| m.member_state(d).contains("faulty"))
            .collect();
        assert!(faulty.is_empty(), "{}: leg(s) {faulty:?} failed", m.kname);
        assert!(
            start.elapsed() < timeout,
            "{} not in sync after {timeout:?}",
            m.kname
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed().as_secs_f64()
}

/// The system-wide md resync speed limits (KiB/s), as `min/max`.
fn raid_speed_limits() -> String {
    let r = |f: &str| crate::fixture::read(format!("/proc/sys/dev/raid/{f}")).unwrap_or_default();
    format!("{}/{}", r("speed_limit_min"), r("speed_limit_max"))
}

/// Time to full redundancy: md's recovery of the new local leg (from the
/// iSCSI leg, once `iscsimple attach` has returned) against `dd` copying
/// the iSCSI LUN to the local volume with direct I/O and md's resync block
/// size (64 KiB), with the kernel's default resync speed limits and with
/// `sync_speed_min` raised in the tool's config.
#[test]
fn bench_resync() {
    let _lab = Lab::start(Udev::On);
    const MIB: u64 = 64;
    let n = runs(5);
    let t = Target::start(TargetSpec::new(Kind::Tgt, IQN, &[MIB]));
    let portal = t.portal();
    let vg = Vg::create("benchvg", MIB + 16);
    let lv = vg.lv("bench", MIB);
    let lvs = lv.to_str().expect("utf8").to_string();
    let mirror = format!("lun1@{IQN}+bench-disk");
    let plain = format!("lun1@{IQN}");
    let configs = [
        format!("[discovery]\nportals = [\"{portal}\"]\n"),
        format!("[discovery]\nportals = [\"{portal}\"]\n[md]\nsync_speed_min = 200000\nsync_speed_max = 400000\n"),
    ];
    let mut md_times = [Vec::new(), Vec::new()];
    let mut dd_times = Vec::new();
    let mut dd1m_times = Vec::new();
    let mut speeds = [String::new(), String::new()];
    for round in 0..n {
        // md with each config, then dd: the order rotated every round
        for j in 0..3 {
            let i = (j + round) % 3;
            if i < 2 {
                let tool = Tool::new(&configs[i]);
                tool.labels(&[("bench-disk", &lvs)]);
                // from the attach call (login, build, add) to in sync
                let (rec, ()) = secs(|| {
                    let (_, dev) = tool_timed(&tool, &["attach", &mirror]);
                    assert_eq!(dev, "/dev/md/bench-disk");
                    wait_idle(&Md::by_label("bench-disk"), Duration::from_secs(300));
                });
                let m = Md::by_label("bench-disk");
                speeds[i] = format!(
                    "array sync_speed_min/max {}/{} (system {})",
                    m.attr("sync_speed_min"),
                    m.attr("sync_speed_max"),
                    raid_speed_limits()
                );
                println!(
                    "round {round} md recovery ({}) {MIB} MiB: {rec:.2}s",
                    speeds[i]
                );
                md_times[i].push(rec);
                settle();
                tool_timed(&tool, &["detach", &mirror]);
                settle();
                continue;
            }
            let tool = Tool::new(&configs[0]);
            let (_, sd) = tool_timed(&tool, &["attach", &plain]);
            let count = (MIB * 16).to_string();
            let (d, out) = secs(|| {
                run(
                    "/usr/bin/dd",
                    &[
                        &format!("if={sd}"),
                        &format!("of={lvs}"),
                        "bs=64K",
                        &format!("count={count}"),
                        "iflag=direct",
                        "oflag=direct",
                    ],
                )
            });
            assert!(out.ok(), "dd: {}", out.stderr);
            let (d1, out) = secs(|| {
                run(
                    "/usr/bin/dd",
                    &[
                        &format!("if={sd}"),
                        &format!("of={lvs}"),
                        "bs=1M",
                        &format!("count={MIB}"),
                        "iflag=direct",
                        "oflag=direct",
                    ],
                )
            });
            assert!(out.ok(), "dd: {}", out.stderr);
            println!("round {round} dd {MIB} MiB: bs=64K {d:.2}s, bs=1M {d1:.2}s");
            dd_times.push(d);
            dd1m_times.push(d1);
            settle();
            tool_timed(&tool, &["detach", &plain]);
            settle();
        }
    }
    let note = |s: &str, dd: &str| {
        format!("{MIB} MiB tgt LUN -> LVM volume (loop on tmpfs); md: from the attach call (login, build, add) to in sync; dd {dd} iflag=direct oflag=direct, on the LUN already attached; md, md tuned and dd rotated each round; {s}")
    };
    Figure::new(
        "resync_vs_dd_1m",
        "Time to full redundancy from the attach call, default resync speed limits",
        ("iscsimple attach + md recovery", md_times[0].clone()),
        ("dd, direct I/O, 1 MiB", dd1m_times.clone()),
        "s",
        Goal::AtMost(1.10),
    )
    .note(note(&speeds[0], "bs=1M (one 1 MiB request at a time)"))
    .extra(serde_json::json!({"speed": speeds[0], "mib": MIB}))
    .paired()
    .emit();
    Figure::new(
        "resync_tuned_vs_dd_1m",
        "Time to full redundancy from the attach call, [md] sync_speed_min = 200000",
        ("iscsimple attach + md recovery", md_times[1].clone()),
        ("dd, direct I/O, 1 MiB", dd1m_times),
        "s",
        Goal::AtMost(1.10),
    )
    .note(note(&speeds[1], "bs=1M"))
    .extra(serde_json::json!({"speed": speeds[1], "mib": MIB}))
    .paired()
    .emit();
    Figure::new(
        "resync_vs_dd",
        "Time to full redundancy from the attach call, against dd bs=64K",
        ("iscsimple attach + md recovery", md_times[0].clone()),
        ("dd, direct I/O, 64 KiB", dd_times),
        "s",
        Goal::None,
    )
    .note(note(
        &speeds[0],
        "bs=64K (md raid1's own resync block): the weaker baseline",
    ))
    .paired()
    .emit();
    vg.remove();
}

fn session_logged_in(iqn: &str) -> bool {
    crate::fixture::initiator::sessions(iqn)
        .first()
        .and_then(|s| crate::fixture::read(s.join("state")))
        .as_deref()
        == Some("LOGGED_IN")
}

/// One short outage of the target under a mirror: the target dies, the VM
/// writes `mib` MiB (at MiB `at`) while md fails the iSCSI leg, the target
/// comes back and its session logs in again. Returns the failed leg.
fn outage(t: &Target, m: &Md, at: u64, mib: u64) -> String {
    let sd = m.iscsi_member().expect("iSCSI member");
    t.kill();
    crate::fixture::data::fill(&m.dev(), at, mib, 0xbe00 + at);
    crate::fixture::wait_for("md to fail the iSCSI leg", Duration::from_secs(60), || {
        m.member_state(&sd).contains("faulty")
    });
    t.up();
    crate::fixture::wait_for("the session to come back", Duration::from_secs(90), || {
        session_logged_in(t.iqn())
    });
    sd
}

/// Time `f` (which brings the iSCSI leg `sd` back) until `m` is in sync;
/// the KiB written to the iSCSI leg meanwhile.
fn timed_resync(m: &Md, sd: &str, f: impl FnOnce()) -> (f64, u64) {
    let before = crate::fixture::md::sectors_written(sd);
    let (t, ()) = secs(|| {
        f();
        wait_idle(m, Duration::from_secs(600));
    });
    let now = m.iscsi_member().expect("iSCSI member back");
    let written = crate::fixture::md::sectors_written(&now) - if now == sd { before } else { 0 };
    (t, written / 2)
}

/// Time to redundancy after a short target outage (4 MiB written while
/// degraded): `iscsimple heal` against a full resync of the same array
/// done by hand right after the same kind of outage (`mdadm --remove
/// failed`, `--add --write-mostly`), rounds alternating. With the
/// write-intent bitmap (state_dir on ext4) the heal copies the dirty
/// regions only; without it (state_dir on tmpfs) it is a full resync too.
fn heal_bench(bitmap: bool, iqn: &str, mib: u64, heals: usize, fulls: usize) {
    let state = bitmap.then(|| crate::fixture::system::Ext4::mount("/var/lib/iscsimple", 64));
    let t = Target::start(TargetSpec::new(Kind::Tgt, iqn, &[mib]));
    let vg = Vg::create("benchvg", mib + 16);
    let lv = vg.lv("bench", mib);
    let tool = Tool::new(&format!(
        "[discovery]\nportals = [\"{}\"]\n[timeouts]\nreplacement = 2\nnoop_interval = 1\nnoop_timeout = 1\n[md]\nsync_speed_min = 200000\nsync_speed_max = 400000\n",
        t.portal()
    ));
    tool.labels(&[("bench-disk", lv.to_str().expect("utf8"))]);
    let (_, dev) = tool_timed(&tool, &["attach", &format!("lun1@{iqn}+bench-disk")]);
    let m = Md::by_label("bench-disk");
    let first = wait_idle(&m, Duration::from_secs(600));
    println!("initial recovery of {mib} MiB: {first:.2}s; {dev}");
    let loc = m.attr("bitmap/location");
    assert_eq!(loc == "file", bitmap, "bitmap/location {loc}");
    let mdp = m.dev().to_str().expect("utf8").to_string();
    let (mut hs, mut fs, mut hw, mut fw) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..heals + fulls {
        // pairs alternate which goes first (heal, full, full, heal, ...)
        let heal = if hs.len() >= heals {
            false
        } else if fs.len() >= fulls {
            true
        } else {
            (round % 2 == 0) == ((round / 2) % 2 == 0)
        };
        // 4 MiB written at a new place each round, within the array
        let sd = outage(&t, &m, 8 + 8 * (round as u64 % ((mib - 8) / 8)), 4);
        if heal {
            let (h, w) = timed_resync(&m, &sd, || {
                tool_timed(&tool, &["heal", "bench-disk"]);
            });
            println!("round {round}: iscsimple heal {h:.2}s, {w} KiB written to the iSCSI leg");
            hs.push(h);
            hw.push(w);
        } else {
            let (f, w) = timed_resync(&m, &sd, || {
                must("/usr/sbin/mdadm", &[&mdp, "--remove", "failed"]);
                must(
                    "/usr/sbin/mdadm",
                    &[&mdp, "--add", "--write-mostly", &format!("/dev/{sd}")],
                );
            });
            println!(
                "round {round}: full resync by hand {f:.2}s, {w} KiB written to the iSCSI leg"
            );
            fs.push(f);
            fw.push(w);
        }
    }
    if mib <= 256 {
        crate::fixture::data::equal(&lv, &t.luns[0].backing, mib).expect("legs equal");
    }
    tool_timed(&tool, &["detach", "bench-disk"]);
    let (id, fig, goal, how) = if bitmap {
        (
            "heal_bitmap_vs_full",
            "Time to redundancy after a short outage, write-intent bitmap",
            Goal::AtMost(0.1),
            "state_dir on ext4: bitmap file, heal = --re-add (dirty regions only)",
        )
    } else {
        (
            "heal_nobitmap_vs_full",
            "Time to redundancy after a short outage, no bitmap",
            Goal::None,
            "state_dir on tmpfs: no bitmap, heal = --add (full resync)",
        )
    };
    let paired = hs.len() == fs.len();
    let fig = Figure::new(
        id,
        fig,
        ("iscsimple heal", hs),
        ("full resync (mdadm --add)", fs),
        "s",
        goal,
    );
    let fig = if paired { fig.paired() } else { fig };
    fig
    .note(format!(
        "{mib} MiB array, 4 MiB written while degraded (target killed, replacement_timeout 2 s), timed from the session's return to in sync; {how}; KiB written to the iSCSI leg: heal {hw:?}, full {fw:?}; sync_speed_min/max 200000/400000; initial recovery {first:.1} s"
    ))
    .extra(serde_json::json!({"mib": mib, "heal_kib_written": hw, "full_kib_written": fw}))
    .emit();
    // give the memory back (backing files live in the guest's RAM)
    vg.remove();
    let _ = std::fs::remove_file("/var/tmp/benchvg.img");
    t.stop();
    let _ = std::fs::remove_file(&t.luns[0].backing);
    if let Some(s) = state {
        s.remove();
    }
}

/// Both heal figures in one VM: without the bitmap on a 64 MiB array
/// (there the heal is a full resync whatever the size), then with it on a
/// 1 GiB array.
#[test]
fn bench_heal() {
    let _lab = Lab::start(Udev::On);
    // backing files live in the guest's RAM (rootfs, a tmpfs limited to
    // half of it by default): a 1 GiB LUN and a 1 GiB volume need more
    must("/usr/bin/mount", &["-o", "remount,size=95%", "/"]);
    heal_bench(false, IQN, 64, runs(5), runs(5));
    heal_bench(
        true,
        "iqn.2024-01.lab.iscsimple:bench-1g",
        1024,
        runs(5),
        runs(5),
    );
}

/// Run this thread, and the kernel's unbound workqueues (the loop devices'
/// workers), on CPU 0 only. Under TCG on a busy host, waking the other
/// vCPU for each request's completion costs a host scheduling delay that
/// swamps a single request's time (samples varied 40-fold); on one vCPU
/// md and the raw volume are measured alike. Says what it did.
fn pin_to_cpu0() -> String {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes
    // within it; sched_setaffinity reads `size_of` bytes of it.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    let wq = std::fs::write("/sys/devices/virtual/workqueue/cpumask", "1");
    format!(
        "reader and unbound workqueues pinned to CPU 0 ({})",
        if r == 0 && wq.is_ok() { "ok" } else { "failed" }
    )
}

/// Steady-state throughput through the md device against the raw legs:
/// sequential (1 MiB) and random (4 KiB, one at a time) reads against the
/// raw local volume (write-mostly routes every read there), sequential
/// writes against the slower raw leg. Samples are short and interleaved
/// (md, raw, raw, md, ...) so that the host's drift hits both alike.
#[test]
fn bench_throughput() {
    let _lab = Lab::start(Udev::On);
    const MIB: u64 = 256;
    let n = runs(4) * 2;
    let t = Target::start(TargetSpec::new(Kind::Tgt, IQN, &[MIB]));
    let vg = Vg::create("benchvg", MIB + 16);
    let lv = vg.lv("bench", MIB);
    let tool = Tool::new(&format!(
        "[discovery]\nportals = [\"{}\"]\n[md]\nsync_speed_min = 200000\n",
        t.portal()
    ));
    tool.labels(&[("bench-disk", lv.to_str().expect("utf8"))]);
    let (_, dev) = tool_timed(&tool, &["attach", &format!("lun1@{IQN}+bench-disk")]);
    let m = Md::by_label("bench-disk");
    wait_idle(&m, Duration::from_secs(300));
    let sd = m.iscsi_member().expect("iSCSI member");
    let sdp = PathBuf::from(format!("/dev/{sd}"));
    let md = PathBuf::from(&dev);
    let pinned = pin_to_cpu0();
    // [md, raw] per kind of read
    let mut seq: [Vec<f64>; 2] = Default::default();
    let mut rnd: [Vec<f64>; 2] = Default::default();
    let iscsi_reads0 = Md::sectors_read(&sd);
    for round in 0..n {
        for k in 0..2 {
            let i = (k + round) % 2; // alternate which goes first
            let path = if i == 0 { &md } else { &lv };
            seq[i].push(bench::seq_read(path, 32, 1 << 20));
            rnd[i].push(bench::rand_read(
                path,
                MIB,
                4096,
                500,
                0x1234_5678 + round as u64,
            ));
        }
    }
    println!("seq read md {:.1?}\n          local {:.1?}", seq[0], seq[1]);
    println!(
        "random read md {:.2?}\n             local {:.2?}",
        rnd[0], rnd[1]
    );
    let iscsi_reads = Md::sectors_read(&sd) - iscsi_reads0;
    // Writes: through md to both legs, and straight to each leg (a bench
    // array: the legs differ afterwards; it is discarded).
    let mut w: [Vec<f64>; 3] = Default::default();
    for round in 0..n {
        for k in 0..3 {
            let i = (k + round) % 3;
            let path = [&md, &sdp, &lv][i];
            w[i].push(bench::seq_write(path, 16 * (round as u64 % 8), 16, 1 << 20));
        }
    }
    println!(
        "seq write md {:.1?}\n          iSCSI {:.1?}\n          local {:.1?}",
        w[0], w[1], w[2]
    );
    tool_timed(&tool, &["detach", "bench-disk"]);
    let note = format!("{MIB} MiB mirror (tgt LUN + LVM volume on a loop device on tmpfs), O_DIRECT, one request at a time, {n} interleaved samples each, {pinned}; sectors read from the iSCSI leg during the md reads: {iscsi_reads}");
    let [seq_md, seq_l] = seq;
    Figure::new(
        "seq_read_vs_local",
        "Sequential read throughput (1 MiB blocks, 32 MiB a sample)",
        ("md device", seq_md),
        ("raw local volume", seq_l),
        "MiB/s",
        Goal::AtLeast(0.95),
    )
    .note(note.clone())
    .extra(serde_json::json!({"iscsi_leg_sectors_read": iscsi_reads}))
    .paired()
    .emit();
    let [rnd_md, rnd_l] = rnd;
    Figure::new(
        "rand_read_vs_local",
        "Random read throughput (4 KiB blocks, 500 reads a sample)",
        ("md device", rnd_md),
        ("raw local volume", rnd_l),
        "MiB/s",
        Goal::AtLeast(0.95),
    )
    .note(note.clone())
    .paired()
    .emit();
    let [w_md, w_sd, w_l] = w;
    let (ms, ml) = (bench::median(&w_sd), bench::median(&w_l));
    let (slow_name, slow) = if ms <= ml {
        ("raw iSCSI leg (the slower)", w_sd)
    } else {
        ("raw local leg (the slower)", w_l)
    };
    Figure::new(
        "write_vs_slower_leg",
        "Sequential write throughput (1 MiB blocks, 16 MiB + fdatasync a sample)",
        ("md device", w_md),
        (slow_name, slow),
        "MiB/s",
        Goal::None,
    )
    .note(format!(
        "{note}; raw legs: iSCSI {ms:.1} MiB/s, local {ml:.1} MiB/s (medians)"
    ))
    .paired()
    .emit();
    vg.remove();
}

/// (busy, all) jiffies of every CPU, from /proc/stat.
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let all: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (all - idle, all)
}

/// `f`'s time and how busy the CPUs were meanwhile (0..1).
fn secs_busy<T>(f: impl FnOnce() -> T) -> (f64, f64, T) {
    let (b0, a0) = cpu_jiffies();
    let (t, r) = secs(f);
    let (b1, a1) = cpu_jiffies();
    (t, (b1 - b0) as f64 / ((a1 - a0).max(1)) as f64, r)
}

/// Wait until every array is in sync.
fn all_synced() {
    for a in crate::fixture::md::arrays() {
        wait_idle(&Md { kname: a }, Duration::from_secs(300));
    }
}

/// 8 concurrent attaches of mirrored specs on one target (8 LUNs, one
/// session) against the same 8 attached one after another (cold: the
/// first logs in, the others share its session), the order alternating.
#[test]
fn bench_concurrent_attach() {
    let _lab = Lab::start(Udev::On);
    let n = runs(5);
    let t = Target::start(TargetSpec::new(Kind::Tgt, IQN, &[8; 8]));
    let vg = Vg::create("benchvg", 8 * 8 + 16);
    let mut labels = Vec::new();
    for i in 1..=8 {
        let lv = vg.lv(&format!("b{i}"), 8);
        labels.push((format!("bench-{i}"), lv.to_str().expect("utf8").to_string()));
    }
    let tool = Tool::new(&format!("[discovery]\nportals = [\"{}\"]\n", t.portal()));
    let table: Vec<(&str, &str)> = labels
        .iter()
        .map(|(l, d)| (l.as_str(), d.as_str()))
        .collect();
    tool.labels(&table);
    let specs: Vec<String> = (1..=8).map(|i| format!("lun{i}@{IQN}+bench-{i}")).collect();
    let at_once = |args: &[&str]| {
        let hs: Vec<_> = specs
            .iter()
            .map(|s| {
                let (s, a) = (s.clone(), args[0].to_string());
                std::thread::spawn(move || tool_timed(&Tool::new_shared(), &[&a, &s]))
            })
            .collect();
        for h in hs {
            let (_, dev) = h.join().expect("tool thread");
            assert!(args[0] != "attach" || dev.starts_with("/dev/md/"), "{dev}");
        }
    };
    let one_by_one = || {
        for s in &specs {
            let (_, dev) = tool_timed(&tool, &["attach", s]);
            assert!(dev.starts_with("/dev/md/"), "{dev}");
        }
    };
    let detach_all = || {
        all_synced();
        settle();
        at_once(&["detach"]);
        settle();
    };
    let (mut conc, mut seq, mut busy) = (Vec::new(), Vec::new(), [Vec::new(), Vec::new()]);
    for round in 0..n {
        for k in 0..2 {
            forget_nodes();
            settle();
            if (k + round) % 2 == 0 {
                let (o, b, ()) = secs_busy(one_by_one);
                seq.push(o);
                busy[0].push(b);
                println!(
                    "round {round}: 8 one after another {o:.2}s (CPUs {:.0}% busy)",
                    b * 100.0
                );
            } else {
                let (c, b, ()) = secs_busy(|| at_once(&["attach"]));
                conc.push(c);
                busy[1].push(b);
                println!(
                    "round {round}: 8 at once {c:.2}s (CPUs {:.0}% busy)",
                    b * 100.0
                );
            }
            detach_all();
        }
    }
    let busy_note = format!(
        "the guest's 2 vCPUs were {:.0}% busy during the 8 one after another, {:.0}% during the 8 at once (medians)",
        bench::median(&busy[0]) * 100.0,
        bench::median(&busy[1]) * 100.0
    );
    // Where the time goes: the 8 attaches once more, each with its debug
    // log (one timeline, offsets from the common start).
    forget_nodes();
    let start = std::time::Instant::now();
    let hs: Vec<_> = specs
        .iter()
        .map(|s| {
            let s = s.clone();
            std::thread::spawn(move || {
                let at = start.elapsed().as_secs_f64();
                let (t, ev) = profile(&Tool::new_shared(), &["attach", &s]);
                (s, at, t, ev)
            })
        })
        .collect();
    let mut timeline = Vec::new();
    for h in hs {
        let (s, at, t, ev) = h.join().expect("profile thread");
        println!("profile: {s}: started at {at:.3}s, took {t:.3}s");
        for (o, e) in ev {
            timeline.push((at + o, s.split('@').next().unwrap_or("").to_string(), e));
        }
    }
    timeline.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (o, who, e) in &timeline {
        println!("  {o:7.3}s {who:5} {e}");
    }
    let wall = start.elapsed().as_secs_f64();
    detach_all();
    Figure::new(
        "concurrent8_vs_8x_one",
        "8 concurrent attaches on one target (total)",
        ("8 attaches at once", conc),
        ("8 attaches one after another", seq),
        "s",
        Goal::AtMost(0.5),
    )
    .note(format!("tgt target with 8 LUNs of 8 MiB, 8 LVM volumes, mirrored specs, cold (node records deleted before each batch): the first attach of a batch logs in, the others share its session, in both orders; the two batches alternate which goes first; {busy_note}"))
    .paired()
    .extra(serde_json::json!({"cpu_busy_sequential": busy[0], "cpu_busy_8": busy[1], "profile_wall_s": wall, "timeline": timeline.iter().map(|(o, w, e)| serde_json::json!({"at_s": (o * 1000.0).round() / 1000.0, "spec": w, "event": e})).collect::<Vec<_>>()}))
    .emit();
    vg.remove();
}

/// Attach latency of one mirrored spec with 0, 1, 8 and 32 other LUNs
/// (mirrored too, on 4 other targets) already attached.
#[test]
fn bench_scaling() {
    let _lab = Lab::start(Udev::On);
    let n = runs(5);
    let t = Target::start(TargetSpec::new(Kind::Lio, IQN, &[16]));
    let others: Vec<Target> = (0..4)
        .map(|i| {
            Target::start(TargetSpec::new(
                Kind::Lio,
                &format!("iqn.2024-01.lab.iscsimple:other{i}"),
                &[4; 8],
            ))
        })
        .collect();
    let vg = Vg::create("benchvg", 16 + 16);
    let lv = vg.lv("bench", 16);
    let mut table = vec![(
        "bench-disk".to_string(),
        lv.to_str().expect("utf8").to_string(),
    )];
    let mut other_specs = Vec::new();
    let mut loops = Vec::new();
    for (i, o) in others.iter().enumerate() {
        for l in &o.luns {
            // the others' local legs: loop devices (32 lvcreate cost ~15 s here)
            let label = format!("o{i}-{}", l.number);
            let img = format!("/var/tmp/bench-{label}.img");
            must("/usr/bin/truncate", &["-s", "4M", &img]);
            let dev = must("/usr/sbin/losetup", &["-f", "--show", &img])
                .trim()
                .to_string();
            table.push((label.clone(), dev.clone()));
            loops.push(dev);
            other_specs.push(format!("lun{}@{}+{label}", l.number, o.iqn()));
        }
    }
    let tool = Tool::new(&format!("[discovery]\nportals = [\"{}\"]\n", t.portal()));
    let tb: Vec<(&str, &str)> = table
        .iter()
        .map(|(l, d)| (l.as_str(), d.as_str()))
        .collect();
    tool.labels(&tb);
    let spec = format!("lun0@{IQN}+bench-disk");
    let mut levels: Vec<(usize, Vec<f64>)> = Vec::new();
    let mut profiles = serde_json::Map::new();
    let mut attached = 0;
    // warm-up (first runs of each program in the VM), not counted
    tool_timed(&tool, &["attach", &spec]);
    wait_idle(&Md::by_label("bench-disk"), Duration::from_secs(120));
    settle();
    tool_timed(&tool, &["detach", &spec]);
    settle();
    // Levels cannot be interleaved (the others stay attached): they are
    // visited up then down (0 1 8 32 8 1 0), so the host's drift over the
    // run weighs on every level alike; 32 is visited once with all runs.
    let visits = [0usize, 1, 8, 32, 8, 1, 0];
    let up = n.div_ceil(2);
    for (vi, &level) in visits.iter().enumerate() {
        // bring the others up (or down) to `level`, 8 at a time
        while attached != level {
            let (lo, hi) = if attached < level {
                (attached, level.min(attached + 8))
            } else {
                (level.max(attached.saturating_sub(8)), attached)
            };
            let verb = if attached < level { "attach" } else { "detach" };
            let hs: Vec<_> = other_specs[lo..hi]
                .iter()
                .map(|s| {
                    let s = s.clone();
                    std::thread::spawn(move || tool_timed(&Tool::new_shared(), &[verb, &s]))
                })
                .collect();
            for h in hs {
                h.join().expect("attach thread");
            }
            attached = if verb == "attach" { hi } else { lo };
        }
        all_synced();
        settle();
        let runs_here = match (level, vi < 3) {
            (32, _) => n,
            (_, true) => up,
            _ => n - up,
        };
        let mut v = Vec::new();
        for _ in 0..runs_here {
            run(
                "/usr/sbin/iscsiadm",
                &["-m", "node", "-T", IQN, "-o", "delete"],
            );
            let (a, _) = tool_timed(&tool, &["attach", &spec]);
            wait_idle(&Md::by_label("bench-disk"), Duration::from_secs(120));
            settle();
            tool_timed(&tool, &["detach", &spec]);
            settle();
            v.push(a);
        }
        if vi <= 3 && (level == 0 || level == 32) {
            run(
                "/usr/sbin/iscsiadm",
                &["-m", "node", "-T", IQN, "-o", "delete"],
            );
            let (pt, ev) = profile(&tool, &["attach", &spec]);
            profiles.insert(
                level.to_string(),
                show_profile(&format!("attach with {level} attached"), pt, &ev),
            );
            wait_idle(&Md::by_label("bench-disk"), Duration::from_secs(120));
            settle();
            tool_timed(&tool, &["detach", &spec]);
            settle();
        }
        let st = Snapshot::take();
        println!(
            "{level} others attached ({} sessions, {} arrays): attach {:.3}s {v:.3?}",
            st.sessions.len(),
            st.arrays.len(),
            bench::median(&v)
        );
        match levels.iter_mut().find(|(l, _)| *l == level) {
            Some((_, all)) => all.extend(v),
            None => levels.push((level, v)),
        }
    }
    let base = levels[0].1.clone();
    for (level, v) in levels.iter().skip(1) {
        Figure::new(
            &format!("scaling_{level}"),
            &format!("Attach latency with {level} LUNs already attached"),
            (&format!("with {level} attached"), v.clone()),
            ("with none attached", base.clone()),
            "s",
            Goal::AtMost(1.10),
        )
        .note("mirrored spec on its own LIO target (cold: its node record deleted before each run); the others: mirrored 4 MiB LUNs on 4 LIO targets (8 each, local legs on loop devices), all in sync; levels visited up then down (0 1 8 32 8 1 0: they cannot be interleaved), runs split between the two visits; flat = within 10 %")
        .extra(serde_json::json!({"profile": profiles.get(&level.to_string()), "profile_none": profiles.get("0")}))
        .emit();
    }
    assert_eq!(attached, 0, "the last visit detached the others");
    for d in &loops {
        run("/usr/sbin/losetup", &["-d", d]);
    }
    vg.remove();
}

/// `subject` and `baseline` samples, `n` each, taken in pairs that
/// alternate which goes first (s b, b s, s b, ...): `sample(true)` takes
/// one of the subject, `sample(false)` one of the baseline.
fn alternate(n: usize, mut sample: impl FnMut(bool) -> f64) -> (Vec<f64>, Vec<f64>) {
    let (mut s, mut b) = (Vec::new(), Vec::new());
    for round in 0..n {
        for k in 0..2 {
            if (k + round) % 2 == 0 {
                s.push(sample(true));
            } else {
                b.push(sample(false));
            }
        }
    }
    (s, b)
}

/// Time to redundancy of an attach: the call, then until md has every leg
/// in sync. The rule the attach applied is checked against `zero`.
fn attach_to_redundancy(tool: &Tool, spec: &str, label: &str, zero: bool) -> f64 {
    let mut v = vec!["--config", tool.config.to_str().expect("utf8")];
    v.extend_from_slice(&["attach", spec]);
    let (t, out) = secs(|| run(&bin(), &v));
    assert!(out.ok(), "attach {spec}: {}", out.stderr);
    assert_eq!(
        out.stderr.contains("zero-copy"),
        zero,
        "{spec}: {}",
        out.stderr
    );
    t + wait_idle(&Md::by_label(label), Duration::from_secs(1800))
}

const IQN_GEN: &str = "iqn.2024-01.lab.iscsimple:bench-gen";

/// Generations (README, "Generations" and "Several hosts"): a clean copy
/// rejoining without a copy against the seed's full copy, for one 1 GiB
/// disk and for a host's 8 disks re-attached at once (a reboot); then the
/// attach latency with the disks' records in a real three-member etcd
/// against the local store.
#[test]
fn bench_generations_etcd() {
    let _lab = Lab::start(Udev::On);
    must("/usr/bin/mount", &["-o", "remount,size=95%", "/"]);
    let n = runs(5);

    // One 1 GiB disk.
    let t = Target::start(TargetSpec::new(Kind::Tgt, IQN_GEN, &[1024]));
    let vg = Vg::create("benchvg", 1024 + 16);
    let lv = vg.lv("gen", 1024);
    let portal = format!("[discovery]\nportals = [\"{}\"]\n", t.portal());
    let zero_cfg = format!("{portal}[cluster]\nonly_user = true\n");
    Tool::new(&portal).labels(&[("gen-disk", lv.to_str().expect("utf8"))]);
    let spec = format!("lun1@{IQN_GEN}+gen-disk");
    let first = attach_to_redundancy(&Tool::new(&portal), &spec, "gen-disk", false);
    tool_timed(&Tool::new(&portal), &["detach", "gen-disk"]);
    let (zs, fs) = alternate(n, |zero| {
        let tool = Tool::new(if zero { &zero_cfg } else { &portal });
        settle();
        let s = attach_to_redundancy(&tool, &spec, "gen-disk", zero);
        println!(
            "1 GiB: {} {s:.2}s",
            if zero { "zero-copy" } else { "full copy" }
        );
        tool_timed(&tool, &["detach", "gen-disk"]);
        s
    });
    Figure::new(
        "zero_copy_vs_full_1g",
        "Time to redundancy of a re-attach after a clean detach, 1 GiB disk",
        ("zero-copy (--assume-clean)", zs),
        ("the seed's full copy", fs),
        "s",
        Goal::AtMost(0.01),
    )
    .note(format!("tgt LUN of 1 GiB, LVM volume of 1 GiB, mirrored spec, local store; subject: [cluster] only_user = true after a clean detach; baseline: the default config (a full copy from the iSCSI disk); timed from the attach call until md has both legs in sync; default md resync speed limits ({}); the first attach's full copy took {first:.1} s", raid_speed_limits()))
    .paired()
    .emit();
    vg.remove();
    let _ = std::fs::remove_file("/var/tmp/benchvg.img");
    t.stop();
    let _ = std::fs::remove_file(&t.luns[0].backing);

    // A host's 8 disks re-attached at once.
    let iqn8 = "iqn.2024-01.lab.iscsimple:bench-gen8";
    let t = Target::start(TargetSpec::new(Kind::Tgt, iqn8, &[64; 8]));
    let vg = Vg::create("benchvg", 8 * 64 + 16);
    let lvs: Vec<PathBuf> = (1..=8).map(|i| vg.lv(&format!("g{i}"), 64)).collect();
    let portal = format!("[discovery]\nportals = [\"{}\"]\n", t.portal());
    let zero_cfg = format!("{portal}[cluster]\nonly_user = true\n");
    let table: Vec<(String, &str)> = lvs
        .iter()
        .enumerate()
        .map(|(i, lv)| (format!("gen-{}", i + 1), lv.to_str().expect("utf8")))
        .collect();
    let table: Vec<(&str, &str)> = table.iter().map(|(l, d)| (l.as_str(), *d)).collect();
    Tool::new(&portal).labels(&table);
    let all = |verb: &str, zero: bool| -> f64 {
        let start = std::time::Instant::now();
        let hs: Vec<_> = (1..=8)
            .map(|i| {
                let verb = verb.to_string();
                std::thread::spawn(move || {
                    let tool = Tool::new_shared();
                    if verb == "attach" {
                        let spec = format!("lun{i}@{iqn8}+gen-{i}");
                        attach_to_redundancy(&tool, &spec, &format!("gen-{i}"), zero);
                    } else {
                        tool_timed(&tool, &["detach", &format!("gen-{i}")]);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().expect("thread");
        }
        start.elapsed().as_secs_f64()
    };
    Tool::new(&portal);
    all("attach", false);
    all("detach", false);
    let (zs, fs) = alternate(n, |zero| {
        Tool::new(if zero { &zero_cfg } else { &portal });
        settle();
        let s = all("attach", zero);
        println!(
            "8 disks: {} {s:.2}s",
            if zero { "zero-copy" } else { "full copies" }
        );
        all("detach", zero);
        s
    });
    Figure::new(
        "zero_copy_vs_full_8_disks",
        "Time to redundancy of a host's 8 mirrored disks re-attached at once after clean detaches (a reboot)",
        ("8 zero-copy attaches", zs),
        ("8 full copies (the seed's rule)", fs),
        "s",
        Goal::AtMost(0.02),
    )
    .note("tgt target with 8 LUNs of 64 MiB, 8 LVM volumes, mirrored specs attached at once (8 threads), local store; subject: only_user = true after clean detaches; baseline: the default config; timed from the first attach call until the last array is in sync")
    .paired()
    .emit();

    // Attach latency: the disks' records in etcd against the local store.
    let mut etcd = crate::fixture::etcd::Etcd::start(3);
    let eps: Vec<String> = etcd.endpoints().iter().map(|e| format!("{e:?}")).collect();
    let etcd_cfg = format!(
        "{portal}[cluster]\nstore = \"etcd\"\nendpoints = [{}]\nlease_ttl = 600\n",
        eps.join(", ")
    );
    let plain = format!("lun1@{iqn8}");
    let (es, ls) = alternate(n.max(10), |etcd| {
        let tool = Tool::new(if etcd { &etcd_cfg } else { &portal });
        settle();
        let (s, _) = tool_timed(&tool, &["attach", &plain]);
        tool_timed(&tool, &["detach", &plain]);
        s
    });
    // The requests one warm attach and its detach make, as the members
    // count them.
    let tool = Tool::new(&etcd_cfg);
    let c0 = etcd.grpc_calls();
    tool_timed(&tool, &["attach", &plain]);
    let c1 = etcd.grpc_calls();
    tool_timed(&tool, &["detach", &plain]);
    let c2 = etcd.grpc_calls();
    Figure::new(
        "etcd_vs_local_attach",
        "Attach latency of a plain LUN (until the device is returned), disks' records in etcd",
        ("store = \"etcd\"", es),
        ("store = \"local\"", ls),
        "s",
        Goal::AtMost(1.15),
    )
    .note(format!("a real three-member etcd 3.4.23 (one member per network namespace, healthy after {:.1} s), warm (node record kept, the session logged in again at each attach); etcd's members counted {} requests for an attach (the records of the target and LUN before login, the generation's swap; the lease is trusted for half its ttl after a grant or renewal) and {} for its detach", etcd.healthy_after.as_secs_f64(), c1 - c0, c2 - c1))
    .paired()
    .emit();
    vg.remove();
}
