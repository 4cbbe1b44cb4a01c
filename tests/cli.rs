//! The `parse` and `check` subcommands, run as the built binary. No root
//! needed: every file is a temporary one.
// Inside a test module: the crate lints tests_outside_test_module.
#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::process::{Command, Output};

    /// Runs iscsimple with `args`, isolated from the caller's environment.
    fn run(args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_iscsimple"))
            .args(args)
            .env_remove("ISCSIMPLE_CONFIG")
            .env_remove("RUST_LOG")
            .output()
            .expect("run iscsimple")
    }

    fn stdout(o: &Output) -> String {
        String::from_utf8(o.stdout.clone()).expect("utf-8 stdout")
    }

    fn stderr(o: &Output) -> String {
        String::from_utf8(o.stderr.clone()).expect("utf-8 stderr")
    }

    fn write(path: &Path, text: &str, mode: u32) {
        fs::write(path, text).expect("write");
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn parse_valid_prints_json() {
        let cases = [
            (
                "lun5@iqn.2014-06.fr.example:my-vm-sn-1+my-vm-disk",
                r#"{"target":"iqn.2014-06.fr.example:my-vm-sn-1","lun":5,"label":"my-vm-disk"}"#,
            ),
            (
                "iscsimple:EUI.02004567A425678D",
                r#"{"target":"eui.02004567a425678d","lun":0,"label":null}"#,
            ),
            ("MISSING+lab", r#"{"target":null,"lun":0,"label":"lab"}"#),
        ];
        for (spec, json) in cases {
            let o = run(&["parse", spec]);
            assert_eq!(o.status.code(), Some(0), "{spec}: {}", stderr(&o));
            assert_eq!(stdout(&o), format!("{json}\n"));
            assert_eq!(stderr(&o), "");
        }
    }

    #[test]
    fn parse_invalid_exits_2_with_one_line() {
        let cases = [
            (
                "lun5@iqn.x+",
                "iscsimple: invalid spec \"lun5@iqn.x+\": at byte 11: empty label (expected 1+ of A-Za-z0-9_-)\n",
            ),
            (
                "MISSING",
                "iscsimple: invalid spec \"MISSING\": at byte 7: MISSING target needs a label (expected MISSING+LABEL)\n",
            ),
            (
                "-x",
                "iscsimple: invalid spec \"-x\": at byte 0: unknown name type (expected iqn., eui., naa. or MISSING)\n",
            ),
            (
                "a\nb",
                "iscsimple: invalid spec \"a\\nb\": at byte 1: whitespace is not allowed (expected [iscsimple:][lunN@]TARGET[+LABEL])\n",
            ),
        ];
        for (spec, err) in cases {
            let o = run(&["parse", spec]);
            assert_eq!(o.status.code(), Some(2), "{spec:?}");
            assert_eq!(stdout(&o), "");
            assert_eq!(stderr(&o), err);
        }
    }

    #[test]
    fn check_good_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let table = dir.path().join("tab.conf");
        write(
            &table,
            "# LABEL DEVICE\nmy-vm-disk /dev/vg0/my-vm-disk\nmy-vm-swap MISSING\n",
            0o644,
        );
        let secret = dir.path().join("secret");
        write(&secret, "s3cret-s3cret\n", 0o600);
        let config = dir.path().join("c.toml");
        write(
            &config,
            &format!(
                "label_table = {:?}\n[[chap]]\ntarget = \"*\"\nusername = \"u\"\npassword_file = {:?}\n",
                table.display().to_string(),
                secret.display().to_string()
            ),
            0o644,
        );
        let o = run(&["check", "--config", config.to_str().expect("utf-8")]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert_eq!(
            stdout(&o),
            format!(
                "config {}: ok\nchap *: ok\nlabel table {}: 2 labels\n",
                config.display(),
                table.display()
            )
        );
        assert_eq!(stderr(&o), "");

        // --labels overrides the table; the config may come from the environment.
        let other = dir.path().join("other.conf");
        write(&other, "", 0o644);
        let o = Command::new(env!("CARGO_BIN_EXE_iscsimple"))
            .args(["check", "--labels", other.to_str().expect("utf-8")])
            .env("ISCSIMPLE_CONFIG", &config)
            .output()
            .expect("run");
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(stdout(&o).ends_with(&format!("label table {}: 0 labels\n", other.display())));
    }

    #[test]
    fn check_reports_every_bad_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let table = dir.path().join("tab.conf");
        write(
            &table,
            "ok /dev/a\nlonely\nbad.label /dev/x\nrel dev/x\nok /dev/b\n",
            0o644,
        );
        let config = dir.path().join("c.toml");
        write(&config, "", 0o644);
        let t = table.display();
        let o = run(&[
            "check",
            "--config",
            config.to_str().expect("utf-8"),
            "--labels",
            table.to_str().expect("utf-8"),
        ]);
        assert_eq!(o.status.code(), Some(2));
        assert_eq!(stdout(&o), format!("config {}: ok\n", config.display()));
        assert_eq!(
            stderr(&o),
            format!(
                "iscsimple: {t}:2: label \"lonely\" has no device (expected LABEL DEVICE)\n\
                 iscsimple: {t}:3: invalid label \"bad.label\": at byte 3: invalid character '.' in label (expected 1+ of A-Za-z0-9_-)\n\
                 iscsimple: {t}:4: device \"dev/x\" is not an absolute path (expected /dev/... or MISSING)\n\
                 iscsimple: {t}:5: duplicate label \"ok\" (first defined on line 1)\n"
            )
        );
    }

    #[test]
    fn check_reports_config_errors_with_line_numbers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("c.toml");
        write(&config, "[timeouts]\nlogin = 0\nlock = 0\n", 0o644);
        let c = config.display();
        let o = run(&["check", "--config", config.to_str().expect("utf-8")]);
        assert_eq!(o.status.code(), Some(2));
        assert_eq!(stdout(&o), "");
        assert_eq!(
            stderr(&o),
            format!(
                "iscsimple: {c}:2:9: timeouts.login = 0 (expected seconds, 1..=86400)\n\
                 iscsimple: {c}:3:8: timeouts.lock = 0 (expected seconds, 1..=86400)\n"
            )
        );

        write(&config, "[timeouts]\nlogn = 3\n", 0o644);
        let o = run(&["check", "--config", config.to_str().expect("utf-8")]);
        assert_eq!(o.status.code(), Some(2));
        let err = stderr(&o);
        assert!(
            err.starts_with(&format!("iscsimple: {c}:2:1: unknown field `logn`")),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1);

        let missing = dir.path().join("missing.toml");
        let o = run(&["check", "--config", missing.to_str().expect("utf-8")]);
        assert_eq!(o.status.code(), Some(2));
        assert_eq!(
            stderr(&o),
            format!("iscsimple: config {}: not found\n", missing.display())
        );

        // A missing table named in the config is an error.
        write(&config, "label_table = \"/nonexistent/tab.conf\"\n", 0o644);
        let o = run(&["check", "--config", config.to_str().expect("utf-8")]);
        assert_eq!(o.status.code(), Some(2));
        assert_eq!(
            stderr(&o),
            "iscsimple: label table /nonexistent/tab.conf: not found\n"
        );
    }

    #[test]
    fn check_reports_unsafe_password_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("secret");
        write(&secret, "s3cret\n", 0o644);
        let config = dir.path().join("c.toml");
        write(
            &config,
            &format!(
                "label_table = \"/nonexistent/x\"\n[[chap]]\ntarget = \"*\"\nusername = \"u\"\npassword_file = {:?}\n",
                secret.display().to_string()
            ),
            0o644,
        );
        let o = run(&[
            "check",
            "--config",
            config.to_str().expect("utf-8"),
            "--labels",
            "/dev/null",
        ]);
        assert_eq!(o.status.code(), Some(2));
        assert_eq!(
            stderr(&o),
            format!(
                "iscsimple: password file {0}: mode 0644 gives group/other access (expected 0600 or stricter); run chmod 600 {0}\n",
                secret.display()
            )
        );
    }

    #[test]
    fn attach_dry_run_prints_the_plan_and_unknown_labels_exit_2() {
        let dir = tempfile::tempdir().expect("tempdir");
        let table = dir.path().join("labels.conf");
        let config = dir.path().join("iscsimple.toml");
        write(&table, "vm1 /dev/vg0/vm1\nnolocal MISSING\n", 0o644);
        write(
            &config,
            &format!(
                "label_table = \"{}\"\nrun_dir = \"{}\"\n[discovery]\nportals = [\"192.0.2.10\"]\n",
                table.display(),
                dir.path().join("run").display()
            ),
            0o600,
        );
        let c = config.to_str().expect("utf-8");
        let o = run(&[
            "--config",
            c,
            "attach",
            "--dry-run",
            "lun3@iqn.2024-01.lab:t+vm1",
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let plan = stdout(&o);
        let lines: Vec<&str> = plan.lines().collect();
        assert!(lines[0].contains("/dev/vg0/vm1"), "{plan}");
        assert!(
            plan.contains(
                "iscsiadm -m discovery -t sendtargets -p 192.0.2.10:3260 -o nonpersistent"
            ),
            "{plan}"
        );
        assert!(
            plan.contains("echo '- - 3' > /sys/class/scsi_host/hostN/scan"),
            "{plan}"
        );
        assert!(plan.contains("mdadm --build /dev/md/vm1 --level=1 --raid-devices=2 --size=LUN_KIB missing --write-mostly ISCSI_DEV"), "{plan}");
        assert!(
            lines.last().expect("lines").ends_with("/dev/md/vm1"),
            "{plan}"
        );
        assert!(
            !dir.path().join("run").exists(),
            "a dry run writes no state"
        );

        let o = run(&["--config", c, "attach", "lun3@iqn.2024-01.lab:t+nosuch"]);
        assert_eq!(o.status.code(), Some(2));
        assert_eq!(stdout(&o), "");
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("iscsimple: attach lun3@iqn.2024-01.lab:t+nosuch: label table: label nosuch is not in the label table"), "{err}");

        let o = run(&["--config", c, "attach", "MISSING+nolocal"]);
        assert_eq!(o.status.code(), Some(2));
        assert!(
            stderr(&o).contains("both legs are MISSING"),
            "{}",
            stderr(&o)
        );
    }

    #[test]
    fn an_unsafe_state_dir_is_refused_with_exit_2_the_fix_and_nothing_changed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (run_dir, state_dir) = (dir.path().join("run"), dir.path().join("state"));
        fs::create_dir(&state_dir).expect("mkdir");
        fs::set_permissions(&state_dir, fs::Permissions::from_mode(0o777)).expect("chmod");
        let table = dir.path().join("labels.conf");
        write(&table, "vm1 /dev/vg0/vm1\n", 0o644);
        let config = dir.path().join("iscsimple.toml");
        write(
            &config,
            &format!(
                "label_table = \"{}\"\nrun_dir = \"{}\"\nstate_dir = \"{}\"\n",
                table.display(),
                run_dir.display(),
                state_dir.display()
            ),
            0o600,
        );
        let c = config.to_str().expect("utf-8");
        let spec = "lun1@iqn.2024-01.lab:t+vm1";
        let o = run(&["--config", c, "attach", spec]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert_eq!(
            stderr(&o),
            format!(
                "iscsimple: attach {spec}: {0}: has mode 0777: others can write in it; not using it (fix: chmod 0700 {0})\n",
                state_dir.display()
            )
        );
        assert!(stdout(&o).is_empty());
        assert!(!run_dir.exists(), "nothing made");
        // A run directory that is a symlink: refused, nothing made at its target.
        fs::set_permissions(&state_dir, fs::Permissions::from_mode(0o700)).expect("chmod");
        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir(&elsewhere).expect("mkdir");
        std::os::unix::fs::symlink(&elsewhere, &run_dir).expect("plant");
        let o = run(&["--config", c, "detach", spec]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("fix: rm {}", run_dir.display())),
            "{}",
            stderr(&o)
        );
        assert_eq!(fs::read_dir(&elsewhere).expect("ls").count(), 0);
    }
}
