//! CHAP secrets never reach a log line, an error or a command line, even
//! when a login fails and the rollback puts the old node record back (the
//! record holds the secrets in clear). The engine runs against a fake host
//! in a temporary directory with a recording runner; every tracing event at
//! TRACE, the error (Display and Debug) and the real argv of every command
//! are searched for each secret.
// Inside a test module: the crate lints tests_outside_test_module.
#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex};

    use iscsimple::config::{ChapEntry, ChapTarget, ChapUser, Config, Secret, SecretSource};
    use iscsimple::disk::Engine;
    use iscsimple::runner::recording::RecordingRunner;
    use iscsimple::spec::Spec;
    use iscsimple::sysfs::Sys;

    const TARGET: &str = "iqn.2024-01.lab.iscsimple:secrets";
    const NEW_OUT: &str = "n3wOutS3cret-aa";
    const NEW_IN: &str = "n3wInS3cret-bb";
    const OLD_OUT: &str = "0ldOutS3cret-cc";
    const OLD_IN: &str = "0ldInS3cret-dd";

    /// Every formatted tracing line, shared with the subscriber.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
        }
    }

    /// A node record as open-iscsi 2.1.8 writes it, after an earlier attach
    /// with secrets `out` and `inn`.
    fn record(out: &str, inn: &str) -> String {
        format!(
            "# BEGIN RECORD 2.1.8\nnode.name = {TARGET}\nnode.tpgt = 1\nnode.startup = manual\n\
             node.session.scan = manual\nnode.session.auth.authmethod = CHAP\n\
             node.session.auth.username = initiator\nnode.session.auth.password = {out}\n\
             node.session.auth.username_in = target\nnode.session.auth.password_in = {inn}\n\
             node.session.timeo.replacement_timeout = 15\n\
             node.conn[0].timeo.noop_out_interval = 5\nnode.conn[0].timeo.noop_out_timeout = 5\n\
             node.conn[0].timeo.login_timeout = 4\nnode.session.initial_login_retry_max = 2\n\
             node.conn[0].address = 127.0.0.1\nnode.conn[0].port = 3260\n# END RECORD\n"
        )
    }

    fn user(name: &str, secret: &str) -> ChapUser {
        ChapUser {
            username: name.to_string(),
            password: SecretSource::Inline(Secret::from(secret.to_string())),
        }
    }

    /// A fake host whose node DB holds `prior` for TARGET; the config
    /// carries mutual CHAP with the NEW secrets.
    fn host(prior: &str) -> (tempfile::TempDir, Config, PathBuf) {
        let d = tempfile::tempdir().expect("tempdir");
        let dir = d
            .path()
            .join(format!("etc/iscsi/nodes/{TARGET}/127.0.0.1,3260,1"));
        fs::create_dir_all(&dir).expect("mkdir node db");
        let rec = dir.join("default");
        fs::write(&rec, prior).expect("write record");
        let config = Config {
            run_dir: d.path().join("run/iscsimple"),
            state_dir: d.path().join("var/lib/iscsimple"),
            chap: vec![ChapEntry {
                target: ChapTarget::Any,
                user: user("initiator", NEW_OUT),
                mutual: Some(user("target", NEW_IN)),
                line: 1,
            }],
            ..Config::default()
        };
        (d, config, rec)
    }

    /// Attach with a login the target refuses; everything the attach said,
    /// at every level, and every argv it ran.
    fn failed_chap_attach(root: &Path, config: &Config) -> (String, Vec<Vec<String>>) {
        let runner = RecordingRunner::new();
        runner.fail(
            "iscsiadm -m node",
            24,
            "iscsiadm: Login failed: authorization failure",
        );
        let engine = Engine::new(config, &runner).with_sys(Sys::new(root));
        let spec: Spec = format!("lun1@{TARGET}").parse().expect("spec");
        let logs = Captured::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let err = tracing::subscriber::with_default(subscriber, || engine.attach(&spec))
            .expect_err("the login fails");
        assert!(err.cause.is_input(), "an auth failure is exit 2: {err}");
        let mut all = logs.text();
        all.push_str(&format!("\n{err}\n{err:?}\n{err:#}\n"));
        assert!(all.contains("undo"), "the rollback ran and logged: {all}");
        let argvs = runner.argvs();
        assert!(
            argvs.iter().any(|a| a.iter().any(|s| s == "--login")),
            "the login ran: {argvs:?}"
        );
        (all, argvs)
    }

    fn assert_nowhere(secrets: &[&str], all: &str, argvs: &[Vec<String>]) {
        for s in secrets {
            for line in all.lines() {
                assert!(!line.contains(s), "secret {s} logged: {line}");
            }
            for a in argvs {
                assert!(!a.iter().any(|x| x.contains(s)), "secret {s} on argv {a:?}");
            }
        }
    }

    #[test]
    fn a_chap_rollback_logs_no_secret_and_restores_the_record() {
        // The secrets were rotated: the record holds the old ones, the
        // attach writes the new ones, the failed login puts the old back.
        let prior = record(OLD_OUT, OLD_IN);
        let (d, config, rec) = host(&prior);
        let (all, argvs) = failed_chap_attach(d.path(), &config);
        assert_nowhere(&[OLD_OUT, OLD_IN, NEW_OUT, NEW_IN], &all, &argvs);
        assert_eq!(fs::read_to_string(&rec).expect("read"), prior, "restored");
    }

    #[test]
    fn a_failed_restore_logs_no_secret_at_error() {
        // The record already holds every value (nothing to write), so the
        // only write is the rollback's, and a directory where its temporary
        // file goes makes it fail: the ERROR line names the undo.
        let prior = record(NEW_OUT, NEW_IN);
        let (d, config, rec) = host(&prior);
        fs::create_dir(rec.with_extension("iscsimple-tmp")).expect("obstacle");
        let (all, argvs) = failed_chap_attach(d.path(), &config);
        assert!(all.contains("undo failed"), "the restore failed: {all}");
        assert_nowhere(&[NEW_OUT, NEW_IN], &all, &argvs);
        assert_eq!(fs::read_to_string(&rec).expect("read"), prior, "unchanged");
    }
}
