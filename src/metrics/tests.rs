use prometheus_parse::{Scrape, Value};

use super::*;
use crate::status::{AttachmentStatus, LegStatus, NewerStatus, SessionStatus};

fn leg(role: &'static str, state: &str, percent: Option<f64>) -> LegStatus {
    LegStatus {
        role,
        device: format!("/dev/{role}"),
        state: state.to_string(),
        write_mostly: role == "iscsi",
        recovery_percent: percent,
        speed_kib: percent.map(|_| 2048),
        eta_seconds: None,
        ..LegStatus::default()
    }
}

fn session(sid: u32, state: &str) -> SessionStatus {
    SessionStatus {
        sid,
        target: "iqn.2024-01.t:a".to_string(),
        state: state.to_string(),
        portal: None,
    }
}

fn mirror(spec: &str, legs: Vec<LegStatus>, s: SessionStatus) -> AttachmentStatus {
    AttachmentStatus {
        spec: spec.to_string(),
        phase: "attached",
        device: Some(format!("/dev/md/{spec}")),
        size_bytes: Some(1 << 30),
        array: Some("md127".to_string()),
        session: Some(s),
        legs,
        vms: Vec::new(),
    }
}

fn report() -> Report {
    Report {
        schema_version: crate::status::SCHEMA_VERSION,
        attachments: vec![
            mirror(
                "lun1@iqn.2024-01.t:a+vm1",
                vec![leg("iscsi", "in_sync", None), leg("local", "in_sync", None)],
                session(3, "LOGGED_IN"),
            ),
            mirror(
                "lun2@iqn.2024-01.t:a+vm2",
                vec![
                    leg("iscsi", "recovering", Some(42.5)),
                    leg("local", "in_sync", None),
                ],
                session(3, "LOGGED_IN"),
            ),
        ],
        unknown_sessions: vec![SessionStatus {
            sid: 9,
            target: "iqn.2024-01.t:b".to_string(),
            state: "FAILED".to_string(),
            portal: None,
        }],
        unknown_arrays: vec!["md9".to_string()],
        unknown_disks: Vec::new(),
        local_newer: vec![NewerStatus {
            label: "vm3".to_string(),
            local: "/dev/vg/vm3".to_string(),
            reason: "iSCSI leg failed".to_string(),
            since: 1_700_000_000,
        }],
        local_behind: Vec::new(),
        unclean: Vec::new(),
        store: None,
        disks: Vec::new(),
    }
}

fn scrape(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text format")
}

/// The value of `metric` whose labels include `want`.
fn value(s: &Scrape, metric: &str, want: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == metric && want.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

#[test]
fn a_report_renders_as_metrics_a_scraper_reads() {
    let mut c = Counters::default();
    let spec2 = "lun2@iqn.2024-01.t:a+vm2";
    assert!(c.leg(spec2, true, 1_700_000_100));
    assert!(!c.leg(spec2, true, 1_700_000_200), "a failure counts once");
    assert!(c.leg(spec2, false, 1_700_000_300));
    c.healed(spec2);
    let text = render(&report(), &c);
    let s = scrape(&text);
    let one = [("spec", "lun1@iqn.2024-01.t:a+vm1")];
    let two = [("spec", spec2)];
    assert_eq!(value(&s, "iscsimple_legs", &one), Some(2.0));
    assert_eq!(value(&s, "iscsimple_legs_in_sync", &one), Some(2.0));
    assert_eq!(value(&s, "iscsimple_degraded", &one), Some(0.0));
    assert_eq!(value(&s, "iscsimple_degraded", &two), Some(1.0));
    assert_eq!(value(&s, "iscsimple_legs_in_sync", &two), Some(1.0));
    assert_eq!(
        value(
            &s,
            "iscsimple_resync_progress_ratio",
            &[two[0], ("leg", "iscsi")]
        ),
        Some(0.425)
    );
    assert_eq!(
        value(&s, "iscsimple_resync_speed_bytes", &two),
        Some(2048.0 * 1024.0)
    );
    assert_eq!(value(&s, "iscsimple_paths_up", &one), Some(1.0));
    assert_eq!(
        value(&s, "iscsimple_device_size_bytes", &one),
        Some(f64::from(1u32 << 30))
    );
    // Two attachments on one session: one session.
    assert_eq!(
        value(
            &s,
            "iscsimple_sessions",
            &[("target", "iqn.2024-01.t:a"), ("state", "LOGGED_IN")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&s, "iscsimple_sessions", &[("state", "FAILED")]),
        Some(1.0)
    );
    assert_eq!(
        value(&s, "iscsimple_local_newer", &[("label", "vm3")]),
        Some(1.0)
    );
    assert_eq!(
        value(&s, "iscsimple_unknown", &[("what", "arrays")]),
        Some(1.0)
    );
    assert_eq!(value(&s, "iscsimple_leg_failures_total", &two), Some(1.0));
    assert_eq!(value(&s, "iscsimple_heals_total", &two), Some(1.0));
    assert_eq!(value(&s, "iscsimple_leg_failures_total", &one), Some(0.0));
    assert_eq!(
        value(&s, "iscsimple_last_error_timestamp_seconds", &two),
        Some(1_700_000_100.0)
    );
    assert!(s.docs.contains_key("iscsimple_heals_total"), "{text}");
    // No store asked: no store metrics.
    assert!(!text.contains("iscsimple_store_up"), "{text}");
}

#[test]
fn label_values_are_escaped() {
    assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
}

#[test]
fn counters_survive_a_restart_and_the_file_is_replaced_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Counters::default();
    c.leg("s", true, 5);
    c.save(dir.path()).unwrap();
    let back = Counters::load(dir.path());
    assert_eq!(back, c);
    let mut again = back;
    assert!(
        !again.leg("s", true, 6),
        "still failed after a restart: not counted again"
    );
    let out = dir.path().join("iscsimple.prom");
    // A stale temporary file a killed writer left is replaced.
    std::fs::write(dir.path().join("iscsimple.prom.tmp"), "junk").unwrap();
    write_file(&out, "a 1\n").unwrap();
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "a 1\n");
    assert!(!dir.path().join("iscsimple.prom.tmp").exists());
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&out).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o644);
}
