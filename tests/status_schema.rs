//! `status --json` against its documented schema (doc/status.schema.json):
//! a report with every optional field set and one with none, and the
//! checker itself catching a field the schema does not document.
#[path = "support/schema.rs"]
mod schema;

#[cfg(test)]
mod tests {
    use super::schema::validate;
    use iscsimple::status::*;
    use serde_json::Value;

    fn schema() -> Value {
        serde_json::from_str(include_str!("../doc/status.schema.json")).expect("schema is JSON")
    }

    fn full() -> Report {
        let session = SessionStatus {
            sid: 3,
            target: "iqn.2024-01.lab:t".into(),
            state: "LOGGED_IN".into(),
            portal: Some("127.0.0.1:3260".into()),
        };
        Report {
            schema_version: SCHEMA_VERSION,
            attachments: vec![
                AttachmentStatus {
                    spec: "lun1@iqn.2024-01.lab:t+disk".into(),
                    phase: "attached",
                    device: Some("/dev/md/disk".into()),
                    size_bytes: Some(1 << 30),
                    array: Some("md127".into()),
                    session: Some(session.clone()),
                    legs: vec![
                        LegStatus {
                            role: "iscsi",
                            device: "/dev/mapper/36001405aa".into(),
                            state: "in_sync".into(),
                            write_mostly: true,
                            recovery_percent: None,
                            speed_kib: None,
                            eta_seconds: None,
                            paths_up: Some(1),
                            paths_total: Some(2),
                            paths: vec![
                                PathStatus {
                                    portal: "192.0.2.1:3260".into(),
                                    device: "sda".into(),
                                    up: true,
                                },
                                PathStatus {
                                    portal: "198.51.100.1:3260".into(),
                                    device: "sdb".into(),
                                    up: false,
                                },
                            ],
                        },
                        LegStatus {
                            role: "local",
                            device: "/dev/vg0/disk".into(),
                            state: "recovering".into(),
                            write_mostly: false,
                            recovery_percent: Some(20.4),
                            speed_kib: Some(19543),
                            eta_seconds: Some(42),
                            ..LegStatus::default()
                        },
                    ],
                    vms: vec![
                        VmStatus {
                            hypervisor: "libvirt",
                            domain: "vm1".into(),
                            name: Some("vm1".into()),
                            backend: "vda".into(),
                            writable: true,
                        },
                        VmStatus {
                            hypervisor: "xen",
                            domain: "7".into(),
                            name: None,
                            backend: "backend/vbd/7/51712".into(),
                            writable: false,
                        },
                    ],
                },
                AttachmentStatus {
                    spec: "MISSING+x".into(),
                    phase: "attaching",
                    device: None,
                    size_bytes: None,
                    array: None,
                    session: None,
                    legs: Vec::new(),
                    vms: Vec::new(),
                },
            ],
            unknown_sessions: vec![session],
            unknown_arrays: vec!["md126".into()],
            unknown_disks: vec!["3:0:0:1 sdb".into()],
            local_newer: vec![NewerStatus {
                label: "disk".into(),
                local: "/dev/vg0/disk".into(),
                reason: "iSCSI leg faulty".into(),
                since: 1_700_000_000,
            }],
            local_behind: vec![NewerStatus {
                label: "other".into(),
                local: "/dev/vg0/other".into(),
                reason: "copy from the iSCSI disk not seen to end".into(),
                since: 1_700_000_000,
            }],
            unclean: vec!["old".into()],
            store: Some(StoreStatus {
                store: "etcd (http://10.0.0.1:2379)".into(),
                host: "host-a".into(),
                error: None,
            }),
            disks: vec![DiskStatus {
                wwid: "naa.1".into(),
                target: "iqn.2024-01.lab:t".into(),
                lun: 1,
                generation: 3,
                writer: Some("host-a".into()),
                local_newer: None,
                handover: Some("host-b".into()),
                split: Some("host-a".into()),
                copies: vec![CopyStatus {
                    host: "host-a".into(),
                    generation: 3,
                    clean: false,
                }],
            }],
        }
    }

    #[test]
    fn full_and_empty_reports_conform() {
        let s = schema();
        let v = serde_json::to_value(full()).expect("serialize");
        assert_eq!(validate(&s, &v), Vec::<String>::new());
        let empty = Report {
            attachments: Vec::new(),
            unknown_sessions: Vec::new(),
            unknown_arrays: Vec::new(),
            unknown_disks: Vec::new(),
            local_newer: Vec::new(),
            local_behind: Vec::new(),
            unclean: Vec::new(),
            store: None,
            disks: Vec::new(),
            ..full()
        };
        let v = serde_json::to_value(empty).expect("serialize");
        assert_eq!(validate(&s, &v), Vec::<String>::new());
    }

    #[test]
    fn undocumented_or_wrong_fields_are_caught() {
        let s = schema();
        let mut v = serde_json::to_value(full()).expect("serialize");
        v["attachments"][0]["legs"][0]["extra"] = Value::Bool(true);
        v["attachments"][1]["phase"] = Value::String("gone".into());
        v["schema_version"] = Value::from(3);
        let errs = validate(&s, &v);
        assert_eq!(errs.len(), 3, "{errs:#?}");
        assert!(
            errs.iter().any(|e| e.contains("schema_version")),
            "{errs:#?}"
        );
    }

    #[test]
    fn table_has_every_column_and_a_row_per_leg() {
        let t = full().text();
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("SPEC"), "{t}");
        for col in [
            "DEVICE", "VM", "SESSION", "LEG", "PATH", "STATE", "RESYNC", "SPEED", "LEFT",
        ] {
            assert!(lines[0].contains(col), "{col} in {t}");
        }
        assert!(
            lines[1].contains("/dev/md/disk (md127)") && lines[1].contains("vm1,xen:7(ro)"),
            "{t}"
        );
        assert!(lines[1].contains("in_sync,write-mostly"), "{t}");
        assert!(
            lines[2].contains("recovering")
                && lines[2].contains("20.4%")
                && lines[2].contains("19.1 MiB/s")
                && lines[2].contains("0:42"),
            "{t}"
        );
        assert!(lines[3].contains("- (attaching)"), "{t}");
        assert!(t.contains("unknown array md126"), "{t}");
        let p = full().progress(10);
        assert_eq!(p, "lun1@iqn.2024-01.lab:t+disk local /dev/vg0/disk [##--------]  20.4%  19.1 MiB/s  0:42 left\n");
        assert_eq!(bar(100.0, 4), "[####]");
        assert_eq!(bar(0.0, 4), "[----]");
    }
}
