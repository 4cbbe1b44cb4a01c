//! Tests of sessions and LUNs in a fake sysfs, iscsiadm calls, node records and the idbm lock.

use super::record::*;
use super::*;
use crate::config::Secret;
use crate::runner::recording::RecordingRunner;
use std::fs;
use std::os::unix::fs::MetadataExt;

const WAIT: Duration = Duration::from_secs(1);

/// iscsiadm through `r`, commands capped at 1 s, no deadline.
fn adm(r: &RecordingRunner, login_timeout: Duration) -> Iscsiadm<'_> {
    Iscsiadm {
        runner: r,
        timeout: Duration::from_secs(1),
        login_timeout,
        deadline: None,
    }
}

#[test]
fn discovery_output_is_parsed_into_portal_and_target() {
    let r = RecordingRunner::new();
    r.ok(
        "iscsiadm -m discovery",
        "127.0.0.1:3260,1 iqn.2024-01.lab:a\n[::1]:3260,1 iqn.2024-01.lab:b\n",
    );
    let a = adm(&r, Duration::from_secs(1));
    let v = a.discover("127.0.0.1").expect("discover");
    assert_eq!(
        v,
        vec![
            ("127.0.0.1:3260".into(), "iqn.2024-01.lab:a".into()),
            ("[::1]:3260".into(), "iqn.2024-01.lab:b".into())
        ]
    );
    assert_eq!(
        r.calls(),
        vec!["iscsiadm -m discovery -t sendtargets -p 127.0.0.1 -o nonpersistent"]
    );
}

#[test]
fn login_exit_24_is_an_auth_failure() {
    let r = RecordingRunner::new();
    r.fail("iscsiadm -m node", 24, "iscsiadm: Login failed");
    let a = adm(&r, Duration::from_secs(1));
    let e = a
        .login("iqn.2024-01.lab:a", "127.0.0.1:3260", false)
        .expect_err("auth");
    assert!(matches!(e, IscsiError::AuthFailed { .. }), "{e}");
}

#[test]
fn a_target_failing_mutual_chap_is_an_auth_failure() {
    // iscsiadm 2.1.8 when the target's CHAP response is wrong (lab, LIO).
    let r = RecordingRunner::new();
    for _ in 0..2 {
        r.fail(
                "iscsiadm -m node",
                19,
                "iscsiadm: initiator reported error (19 - encountered non-retryable iSCSI login failure)\niscsiadm: Could not log into all portals",
            );
    }
    let a = adm(&r, Duration::from_secs(1));
    let e = a
        .login("iqn.2024-01.lab:a", "127.0.0.1:3260", true)
        .expect_err("auth");
    assert!(matches!(e, IscsiError::AuthFailed { .. }), "{e}");
    // Without mutual CHAP the target has nothing to prove: not CHAP's doing.
    let e = a
        .login("iqn.2024-01.lab:a", "127.0.0.1:3260", false)
        .expect_err("fatal");
    assert!(matches!(e, IscsiError::Run(_)), "{e:?}");
}

#[test]
fn record_secrets_replace_lines_and_restore() {
    let d = tempfile::tempdir().expect("tempdir");
    let sys = Sys::new(d.path());
    let rec = d.path().join("rec");
    fs::write(&rec, "node.name = x\nnode.session.auth.password = old\n").expect("write");
    let s = Secret::from("n3wsecret".to_string());
    let old =
        set_record_secrets(&sys, &rec, &[("node.session.auth.password", &s)], WAIT).expect("set");
    let now = fs::read_to_string(&rec).expect("read");
    assert_eq!(
        now,
        "node.name = x\nnode.session.auth.password = n3wsecret\n"
    );
    assert!(
        !d.path().join("run/lock/iscsi/lock.write").exists(),
        "lock released"
    );
    assert!(!format!("{old:?} {old}").contains("old"), "{old:?} {old}");
    restore_record(&sys, &rec, &old, WAIT).expect("restore");
    assert_eq!(fs::read_to_string(&rec).expect("read"), old.expose());
}

#[test]
fn record_values_replace_in_place_append_missing_and_skip_unchanged() {
    let d = tempfile::tempdir().expect("tempdir");
    let sys = Sys::new(d.path());
    let rec = d.path().join("rec");
    let body = "# BEGIN RECORD 2.1.8\nnode.session.scan = auto\nnode.startup = manual\nnode.session.scan = auto\n# END RECORD\n";
    fs::write(&rec, body).expect("write");
    let old = set_record_values(
        &sys,
        &rec,
        &[
            ("node.session.scan", "manual"),
            ("node.startup", "manual"),
            ("node.conn[0].timeo.noop_out_interval", "5"),
        ],
        WAIT,
    )
    .expect("set");
    assert_eq!(old.expose(), body);
    assert_eq!(
            fs::read_to_string(&rec).expect("read"),
            "# BEGIN RECORD 2.1.8\nnode.session.scan = manual\nnode.startup = manual\n# END RECORD\nnode.conn[0].timeo.noop_out_interval = 5\n"
        );
    let before = fs::metadata(&rec).expect("stat").modified().expect("mtime");
    crate::clock::sleep(std::time::Duration::from_millis(20));
    set_record_values(&sys, &rec, &[("node.startup", "manual")], WAIT).expect("set");
    let after = fs::metadata(&rec).expect("stat").modified().expect("mtime");
    assert_eq!(before, after, "nothing to change: not rewritten");
}

#[test]
fn iscsids_login_attempts_end_within_the_wait() {
    // iscsid gives up at the first failure after retries × attempt
    // seconds; the last attempt may start just before, after its 3 s
    // reconnect delay. Everything must end within the wait.
    for w in 1..=120u64 {
        let (attempt, retries) = login_attempts(Duration::from_secs(w));
        assert!(attempt >= 1, "{w}s: an attempt lasts at least a second");
        let worst = if retries == 0 {
            attempt
        } else {
            retries * attempt + 3 + attempt
        };
        assert!(
            worst <= w.max(2),
            "{w}s: attempts of {attempt}s, {retries} retries end at {worst}s"
        );
    }
    assert_eq!(login_attempts(Duration::from_secs(15)), (4, 2));
    assert_eq!(login_attempts(Duration::from_secs(60)), (15, 2));
}

#[test]
fn a_login_that_gets_no_answer_in_time_says_so() {
    let r = RecordingRunner::new();
    r.fail(
            "iscsiadm -m node",
            11,
            "iscsiadm: Could not login to [iface: default, target: iqn.2024-01.lab:a, portal: 127.0.0.1,3261].",
        );
    let a = adm(&r, Duration::from_secs(15));
    let e = a
        .login("iqn.2024-01.lab:a", "127.0.0.1:3261", false)
        .expect_err("no answer");
    assert!(matches!(e, IscsiError::LoginTimeout { .. }), "{e}");
    assert!(
            e.to_string().starts_with(
                "no answer to the login to iqn.2024-01.lab:a at 127.0.0.1:3261 after 0s (iscsid's attempts set to end within 15s)"
            ),
            "{e}"
        );
}

#[test]
fn a_lun_that_is_not_a_disk_is_named_alone() {
    let e = IscsiError::NotDisk {
        target: "iqn.x:y".into(),
        lun: 0,
        kind: 12,
    };
    assert_eq!(
        e.to_string(),
        "LUN 0 of iqn.x:y is not a disk (SCSI type 12)"
    );
}

/// A fake host with a node record and open-iscsi's lock directory.
fn idbm_host() -> (tempfile::TempDir, Sys, PathBuf) {
    let d = tempfile::tempdir().expect("tempdir");
    let sys = Sys::new(d.path());
    let rec = d.path().join("rec");
    fs::write(&rec, "node.startup = automatic\n").expect("write");
    (d, sys, rec)
}

#[test]
fn a_stale_idbm_lock_does_not_block_the_record_write() {
    // lock.write is not a link of lock: no idbm_lock() taker made it.
    let (d, sys, rec) = idbm_host();
    let lockdir = d.path().join("run/lock/iscsi");
    fs::create_dir_all(&lockdir).expect("mkdir");
    fs::write(lockdir.join("lock"), "").expect("lock");
    fs::write(lockdir.join("lock.write"), "").expect("stale lock.write");
    let start = crate::clock::now();
    set_record_values(&sys, &rec, &[("node.startup", "manual")], WAIT).expect("set");
    assert!(
        crate::clock::since(start) < Duration::from_secs(2),
        "{:?}",
        crate::clock::since(start)
    );
    assert_eq!(
        fs::read_to_string(&rec).expect("read"),
        "node.startup = manual\n"
    );
    assert!(!lockdir.join("lock.write").exists(), "released");
}

#[test]
fn a_live_idbm_holder_is_waited_for_not_broken() {
    let (d, sys, rec) = idbm_host();
    let lockdir = d.path().join("run/lock/iscsi");
    fs::create_dir_all(&lockdir).expect("mkdir");
    let (lock, write) = (lockdir.join("lock"), lockdir.join("lock.write"));
    fs::write(&lock, "").expect("lock");
    fs::hard_link(&lock, &write).expect("held");
    let holder = std::thread::spawn(move || {
        crate::clock::sleep(Duration::from_millis(400));
        // Still the holder's own link: nobody broke it meanwhile.
        let m = fs::metadata(&write).expect("still held");
        assert_eq!(m.ino(), fs::metadata(&lock).expect("lock").ino());
        fs::remove_file(&write).expect("release");
        crate::clock::now()
    });
    set_record_values(&sys, &rec, &[("node.startup", "manual")], WAIT).expect("set");
    let done = crate::clock::now();
    let released = holder.join().expect("holder");
    assert!(done >= released, "wrote only after the holder let go");
}

#[test]
fn a_symlinked_idbm_lock_dir_is_refused_and_nothing_lands_at_its_target() {
    let (d, sys, rec) = idbm_host();
    let planted = d.path().join("planted");
    fs::create_dir(&planted).expect("mkdir");
    fs::create_dir_all(d.path().join("run/lock")).expect("mkdir");
    std::os::unix::fs::symlink(&planted, d.path().join("run/lock/iscsi")).expect("plant");
    let e =
        set_record_values(&sys, &rec, &[("node.startup", "manual")], WAIT).expect_err("refused");
    assert!(e.to_string().contains("symbolic link"), "{e}");
    assert_eq!(
        fs::read_dir(&planted).expect("ls").count(),
        0,
        "nothing there"
    );
    assert_eq!(
        fs::read_to_string(&rec).expect("read"),
        "node.startup = automatic\n"
    );
}

#[test]
fn a_foreign_idbm_lock_dir_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        return; // only root can give a directory away
    }
    let (d, sys, rec) = idbm_host();
    let lockdir = d.path().join("run/lock/iscsi");
    fs::create_dir_all(&lockdir).expect("mkdir");
    std::os::unix::fs::chown(&lockdir, Some(65534), Some(65534)).expect("chown");
    let e =
        set_record_values(&sys, &rec, &[("node.startup", "manual")], WAIT).expect_err("refused");
    assert!(e.to_string().contains("owned by uid 65534"), "{e}");
    assert_eq!(
        fs::read_dir(&lockdir).expect("ls").count(),
        0,
        "nothing made in it"
    );
}

#[test]
fn a_missing_idbm_lock_dir_is_made_not_writable_by_others() {
    let (d, sys, rec) = idbm_host();
    set_record_values(&sys, &rec, &[("node.startup", "manual")], WAIT).expect("set");
    let m = fs::symlink_metadata(d.path().join("run/lock/iscsi")).expect("made");
    assert!(m.is_dir());
    assert_eq!(m.uid(), nix::unistd::geteuid().as_raw());
    assert_eq!(m.mode() & 0o022, 0, "{:o}", m.mode());
}

#[test]
fn a_planted_record_temporary_symlink_is_not_followed() {
    let (d, sys, rec) = idbm_host();
    let victim = d.path().join("victim");
    fs::write(&victim, "precious").expect("write");
    std::os::unix::fs::symlink(&victim, rec.with_extension("iscsimple-tmp")).expect("plant");
    set_record_values(&sys, &rec, &[("node.startup", "manual")], WAIT).expect("set");
    assert_eq!(fs::read_to_string(&victim).expect("read"), "precious");
    assert_eq!(
        fs::read_to_string(&rec).expect("read"),
        "node.startup = manual\n"
    );
}

#[test]
fn a_dead_holders_link_is_removed_once_held_too_long() {
    // What a holder killed between link() and unlink() leaves.
    let (d, sys, _rec) = idbm_host();
    let lockdir = d.path().join("run/lock/iscsi");
    fs::create_dir_all(&lockdir).expect("mkdir");
    let (lock, write) = (lockdir.join("lock"), lockdir.join("lock.write"));
    fs::write(&lock, "").expect("lock");
    fs::hard_link(&lock, &write).expect("left behind");
    let start = crate::clock::now();
    let held = IdbmLock::take_with(&sys, Duration::from_secs(5), Duration::from_millis(300))
        .expect("taken");
    let waited = crate::clock::since(start);
    assert!(
        waited >= Duration::from_millis(250),
        "{waited:?}: judged by age"
    );
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    assert!(write.exists(), "ours now");
    drop(held);
    assert!(!write.exists(), "released");
    // And before it is old enough, it is waited for, not removed.
    fs::hard_link(&lock, &write).expect("held");
    let e = IdbmLock::take_with(&sys, Duration::from_millis(100), Duration::from_secs(5))
        .expect_err("busy");
    assert!(matches!(e, IscsiError::IdbmBusy { .. }), "{e}");
    assert!(write.exists(), "a live holder's lock stays");
}

#[test]
fn a_lock_that_is_no_longer_ours_is_left_on_release() {
    let (d, sys, _rec) = idbm_host();
    let held = IdbmLock::take(&sys, WAIT).expect("taken");
    let (lock, write) = (
        d.path().join("run/lock/iscsi/lock"),
        d.path().join("run/lock/iscsi/lock.write"),
    );
    // Someone judged ours stale and took it: a new link, a new ctime.
    fs::remove_file(&write).expect("broken");
    crate::clock::sleep(Duration::from_millis(20));
    fs::hard_link(&lock, &write).expect("theirs");
    drop(held);
    assert!(write.exists(), "their lock stays");
}

/// A fake session `sid` to `target` (SCSI host `sid`), at `portal` when
/// sysfs tells one.
fn fake_session(root: &std::path::Path, target: &str, sid: u32, portal: Option<&str>) {
    let dev = root.join(format!("sys/devices/platform/host{sid}/session{sid}"));
    fs::create_dir_all(&dev).expect("mkdir");
    let class = root.join(format!("sys/class/iscsi_session/session{sid}"));
    fs::create_dir_all(&class).expect("mkdir");
    fs::write(class.join("targetname"), format!("{target}\n")).expect("w");
    fs::write(class.join("state"), "LOGGED_IN\n").expect("w");
    std::os::unix::fs::symlink(&dev, class.join("device")).expect("link");
    if let Some((addr, port)) = portal.and_then(|p| p.split_once(':')) {
        fs::create_dir_all(dev.join(format!("connection{sid}:0"))).expect("mkdir");
        let conn = root.join(format!("sys/class/iscsi_connection/connection{sid}:0"));
        fs::create_dir_all(&conn).expect("mkdir");
        fs::write(conn.join("persistent_address"), format!("{addr}\n")).expect("w");
        fs::write(conn.join("persistent_port"), format!("{port}\n")).expect("w");
    }
}

/// With a session per portal, a single-path leg's session is the one at
/// its recorded portal, not the target's first (heal and grow scan and
/// rescan the LUN on it).
#[test]
fn a_legs_session_is_the_one_at_its_portal() {
    let d = tempfile::tempdir().expect("tempdir");
    let sys = Sys::new(d.path());
    let t = "iqn.2024-01.lab:two";
    fake_session(d.path(), t, 2, Some("192.0.2.2:3260"));
    fake_session(d.path(), t, 3, Some("192.0.2.1:3260"));
    assert_eq!(session_of(&sys, t).map(|s| s.sid), Some(2));
    let at = |p: &str| leg_session(&sys, t, p).map(|s| s.sid);
    assert_eq!(at("192.0.2.1:3260"), Some(3));
    assert_eq!(at("192.0.2.9:3260"), None, "no session at that portal");
    assert_eq!(at(""), Some(2), "a record without a portal");
    let other = "iqn.2024-01.lab:one";
    fake_session(d.path(), other, 4, None);
    assert_eq!(
        leg_session(&sys, other, "192.0.2.1:3260").map(|s| s.sid),
        Some(4),
        "a session whose portal sysfs does not tell"
    );
}
