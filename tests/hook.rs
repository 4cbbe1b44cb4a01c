//! The libvirt hook's stdout contract, byte for byte: whatever the op and
//! the domain, the hook writes nothing on stdout (libvirt reads stdout of
//! `migrate` and `restore` back as the domain XML). Runs the built binary
//! with real libvirt domain XML; no root, no libvirt needed.
#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::process::{Command, Output, Stdio};

    const OURS: &str = include_str!("data/domain-ours.xml");
    const PLAIN: &str = include_str!("data/domain-plain.xml");

    fn hook(config: &std::path::Path, args: &[&str], xml: &str) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_iscsimple"))
            .arg("--config")
            .arg(config)
            .arg("libvirt-hook")
            .args(args)
            .env_clear()
            .env("LC_ALL", "C")
            .env("PATH", "/nonexistent") // like libvirtd's minimal env; the tool must not need PATH
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        c.stdin
            .take()
            .expect("stdin")
            .write_all(xml.as_bytes())
            .expect("write xml");
        c.wait_with_output().expect("wait")
    }

    fn config(dir: &std::path::Path) -> std::path::PathBuf {
        let p = dir.join("iscsimple.toml");
        std::fs::write(
            &p,
            format!(
                "label_table = \"{0}/labels\"\nrun_dir = \"{0}/run\"\n",
                dir.display()
            ),
        )
        .expect("config");
        std::fs::write(dir.join("labels"), "vm1-disk /dev/vg0/vm1-disk\n").expect("labels");
        p
    }

    #[test]
    fn non_acting_ops_print_nothing_and_succeed() {
        let d = tempfile::tempdir().expect("tempdir");
        let c = config(d.path());
        for xml in [OURS, PLAIN, "not xml at all"] {
            for (op, sub) in [
                ("restore", "begin"),
                ("reconnect", "begin"),
                ("start", "begin"),
                ("started", "begin"),
                ("stopped", "end"),
                ("attach", "begin"),
            ] {
                let o = hook(&c, &["vm1", op, sub, "-"], xml);
                assert_eq!(o.stdout, b"", "{op} {sub}: stdout must stay empty");
                assert_eq!(
                    o.status.code(),
                    Some(0),
                    "{op} {sub}: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
            }
        }
        assert!(
            !d.path().join("run").exists(),
            "nothing recorded by ops that do nothing"
        );
    }

    #[test]
    fn migrate_begin_prints_nothing_and_only_marks_our_domains() {
        let d = tempfile::tempdir().expect("tempdir");
        let c = config(d.path());
        for (name, xml) in [("other", PLAIN), ("vm1", "not xml"), ("vm1", OURS)] {
            let o = hook(&c, &[name, "migrate", "begin", "-"], xml);
            assert_eq!(
                (o.status.code(), o.stdout.as_slice()),
                (Some(0), &b""[..]),
                "{name}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let marks: Vec<_> = std::fs::read_dir(d.path().join("run/incoming"))
            .expect("marks")
            .collect();
        assert_eq!(
            marks.len(),
            1,
            "only the domain with our metadata is marked"
        );
    }

    #[test]
    fn stopped_and_release_end_an_incoming_migration() {
        let d = tempfile::tempdir().expect("tempdir");
        let c = config(d.path());
        let marks = || {
            std::fs::read_dir(d.path().join("run/incoming"))
                .map(|r| r.count())
                .unwrap_or(0)
        };
        for (op, sub) in [("stopped", "end"), ("release", "end")] {
            let o = hook(&c, &["vm1", "migrate", "begin", "-"], OURS);
            assert_eq!(o.status.code(), Some(0));
            assert_eq!(marks(), 1, "marked");
            let o = hook(&c, &["vm1", op, sub, "-"], OURS);
            assert_eq!(
                (o.status.code(), o.stdout.as_slice()),
                (Some(0), &b""[..]),
                "{op}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert_eq!(marks(), 0, "{op} {sub} ends the attempt");
        }
    }

    #[test]
    fn domains_without_our_metadata_are_ignored_silently() {
        let d = tempfile::tempdir().expect("tempdir");
        let c = config(d.path());
        for (op, sub) in [("prepare", "begin"), ("release", "end")] {
            let o = hook(&c, &["other", op, sub, "-"], PLAIN);
            assert_eq!(
                (o.status.code(), o.stdout.as_slice(), o.stderr.as_slice()),
                (Some(0), &b""[..], &b""[..]),
                "{op}"
            );
        }
    }

    #[test]
    fn a_failing_prepare_exits_non_zero_with_one_line_and_no_stdout() {
        let d = tempfile::tempdir().expect("tempdir");
        let c = config(d.path());
        // /dev/vg0/vm1-disk does not exist here: attach refuses it.
        let o = hook(&c, &["vm1", "prepare", "begin", "-"], OURS);
        assert_eq!(o.stdout, b"");
        assert_ne!(o.status.code(), Some(0));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("domain vm1") && err.contains("lun1@iqn.2024-01.lab:vm1+vm1-disk"),
            "{err}"
        );
        // libvirt then calls release: it copes with the attach that never happened.
        let o = hook(&c, &["vm1", "release", "end", "-"], OURS);
        assert_eq!(
            (o.status.code(), o.stdout.as_slice()),
            (Some(0), &b""[..]),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        // Broken XML at prepare is refused; at release it still succeeds.
        let o = hook(&c, &["vm1", "prepare", "begin", "-"], "<domain>");
        assert_eq!(o.stdout, b"");
        assert_eq!(o.status.code(), Some(2));
        let o = hook(&c, &["vm1", "release", "end", "-"], "<domain>");
        assert_eq!((o.status.code(), o.stdout.as_slice()), (Some(0), &b""[..]));
    }
}
