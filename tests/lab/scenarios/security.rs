//! Act only on what is ours, on a real host (one VM): a CHAP rollback at
//! trace level leaks its secret nowhere (terminal, syslog, any process's
//! command line); a stale open-iscsi lock left by a dead holder no longer
//! fails attach, a live holder's is waited for; a planted
//! `/run/lock/iscsi` and a state directory others can write in are refused
//! (exit 2, with the fix) and nothing is made where they point.
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fixture::system::Snapshot;
use crate::fixture::target::{Chap, Kind, Target, TargetSpec};
use crate::fixture::tool::{syslog, tree, Tool};
use crate::fixture::{Lab, Udev};

const IQN: &str = "iqn.2024-01.lab.iscsimple:security";
const WRONG: &str = "wrongsecret4242";
const LOCK_DIR: &str = "/run/lock/iscsi";

fn chap_toml(t: &Target, c: &Chap, password: &str) -> String {
    format!(
        "[discovery]\nportals = [\"{}\"]\n[[chap]]\ntarget = \"{IQN}\"\nusername = \"{}\"\npassword = \"{password}\"\n",
        t.portal(),
        c.user
    )
}

/// Every command line seen in /proc while it runs, as any user sees them.
struct Cmdlines {
    stop: Arc<AtomicBool>,
    seen: std::thread::JoinHandle<BTreeSet<String>>,
}

impl Cmdlines {
    fn start() -> Cmdlines {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let seen = std::thread::spawn(move || {
            let mut seen = BTreeSet::new();
            while !flag.load(Ordering::Relaxed) {
                for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
                    let pid = e.file_name();
                    if pid.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                        if let Ok(b) = fs::read(e.path().join("cmdline")) {
                            seen.insert(String::from_utf8_lossy(&b).replace('\0', " "));
                        }
                    }
                }
            }
            seen
        });
        Cmdlines { stop, seen }
    }

    fn stop(self) -> BTreeSet<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.seen.join().expect("sampler")
    }
}

fn mode(p: &str) -> u32 {
    fs::symlink_metadata(p).expect("stat").mode() & 0o7777
}

fn stale_lines() -> usize {
    syslog()
        .lines()
        .filter(|l| l.contains("removed a stale open-iscsi node DB lock"))
        .count()
}

#[test]
fn lab_security_secrets_stale_idbm_lock_and_unsafe_dirs() {
    let _lab = Lab::start(Udev::On);
    let c = Chap::one_way();
    let t = Target::start(TargetSpec::new(Kind::Tgt, IQN, &[16]).chap(c.clone()));
    let spec = format!("lun{}@{IQN}", t.luns[0].number);
    let good = chap_toml(&t, &c, &c.password);

    // A first attach leaves a node record holding the secret, as open-iscsi
    // keeps it.
    // README: a secret never appears on any command line. Every
    // /proc/*/cmdline is sampled while the tool logs in with CHAP (the
    // target's own setup, which names the secrets, ran before).
    let tool = Tool::new(&good);
    let sampler = Cmdlines::start();
    tool.attach(&spec);
    tool.detach(&spec);
    no_secret_on_a_command_line(sampler.stop(), &[c.password.as_str()]);
    let (record, _) = tree(Path::new(&format!("/etc/iscsi/nodes/{IQN}")))
        .into_iter()
        .next()
        .expect("a node record");
    let kept = fs::read_to_string(&record).expect("record");
    assert!(kept.contains(&c.password), "the record holds the secret");

    // A wrong secret at -vvv on a terminal: the login fails and the
    // rollback puts the record (with the right secret in it) back.
    let before = Snapshot::take();
    let tool = Tool::new(&chap_toml(&t, &c, WRONG));
    let sampler = Cmdlines::start();
    let out = tool.run_tty(&["-vvv", "attach", &spec]);
    let cmdlines = sampler.stop();
    assert_eq!(out.code, 2, "an auth failure: {}", out.stderr);
    assert!(
        out.stderr.contains("RestoreRecord") && out.stderr.contains("TRACE"),
        "the trace shows the rollback: {}",
        out.stderr
    );
    assert!(
        cmdlines
            .iter()
            .any(|l| l.contains("iscsimple") && l.contains("attach")),
        "the sampler saw the tool: {cmdlines:?}"
    );
    // The same without a terminal, every event at trace into syslog.
    let o = std::process::Command::new(crate::fixture::tool::bin())
        .args(["--config", "/etc/iscsimple/iscsimple.toml", "attach", &spec])
        .env("ISCSIMPLE_LOG", "iscsimple=trace")
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(2));
    let log = syslog();
    assert!(log.contains("undo"), "trace lines reach syslog");
    for secret in [c.password.as_str(), WRONG] {
        for line in out.stderr.lines() {
            assert!(!line.contains(secret), "secret on the terminal: {line}");
        }
        for line in log.lines() {
            assert!(!line.contains(secret), "secret in syslog: {line}");
        }
        for l in &cmdlines {
            assert!(!l.contains(secret), "secret on a command line: {l}");
        }
    }
    assert_eq!(Snapshot::take(), before, "nothing left");
    assert_eq!(
        fs::read_to_string(&record).expect("record"),
        kept,
        "restored"
    );

    // A stale lock.write, as a holder killed between link() and unlink()
    // leaves it: attach goes on once it is 5 s old, instead of failing
    // after 10 s.
    let tool = Tool::new(&good);
    let (lock, write) = (format!("{LOCK_DIR}/lock"), format!("{LOCK_DIR}/lock.write"));
    fs::hard_link(&lock, &write).expect("plant");
    let start = Instant::now();
    tool.attach(&spec);
    let took = start.elapsed();
    println!("attach with a stale lock.write took {took:?}");
    assert!(took < Duration::from_secs(10), "attach took {took:?}");
    assert_eq!(stale_lines(), 1, "the removal is logged");
    tool.detach(&spec);

    // A live holder (3 s) is waited for and its lock left alone.
    let holder = std::thread::spawn({
        let (lock, write) = (lock.clone(), write.clone());
        move || {
            fs::hard_link(&lock, &write).expect("hold");
            let taken = fs::metadata(&write).expect("held");
            std::thread::sleep(Duration::from_secs(3));
            let now = fs::metadata(&write).expect("still held: not removed");
            assert_eq!(
                (now.ino(), now.ctime(), now.ctime_nsec()),
                (taken.ino(), taken.ctime(), taken.ctime_nsec()),
                "still the holder's own link"
            );
            fs::remove_file(&write).expect("release");
            Instant::now()
        }
    });
    crate::fixture::wait_for("the holder's lock", Duration::from_secs(5), || {
        Path::new(&write).exists()
    });
    tool.attach(&spec);
    let done = Instant::now();
    let released = holder.join().expect("the holder's lock was left alone");
    println!(
        "attach ended {:?} after the live holder let go",
        done - released
    );
    assert!(done >= released, "attach finished before the holder let go");
    assert_eq!(stale_lines(), 1, "nothing judged stale");
    // What the tool made: 0700 directories, 0600 files.
    assert_eq!(mode("/run/iscsimple"), 0o700);
    assert_eq!(mode("/run/iscsimple/attachments"), 0o700);
    for e in fs::read_dir("/run/iscsimple/attachments")
        .expect("ls")
        .flatten()
    {
        assert_eq!(e.metadata().expect("stat").mode() & 0o7777, 0o600);
    }
    tool.detach(&spec);

    // /run/lock/iscsi replaced by a symlink to a directory anyone can write
    // in: refused before anything changes, nothing made at its target.
    let before = Snapshot::take();
    fs::rename(LOCK_DIR, "/run/lock/iscsi.real").expect("mv");
    fs::create_dir("/tmp/planted").expect("mkdir");
    fs::set_permissions("/tmp/planted", fs::Permissions::from_mode(0o777)).expect("chmod");
    std::os::unix::fs::symlink("/tmp/planted", LOCK_DIR).expect("plant");
    let err = tool.attach_fails(&spec, 2);
    assert!(
        err.contains(&format!("{LOCK_DIR}: is a symbolic link"))
            && err.contains(&format!("fix: rm {LOCK_DIR}")),
        "{err}"
    );
    assert_eq!(fs::read_dir("/tmp/planted").expect("ls").count(), 0);
    assert_eq!(Snapshot::take(), before);
    // Someone else's directory there: refused too.
    fs::remove_file(LOCK_DIR).expect("rm");
    fs::create_dir(LOCK_DIR).expect("mkdir");
    std::os::unix::fs::chown(LOCK_DIR, Some(65534), Some(65534)).expect("chown");
    let err = tool.attach_fails(&spec, 2);
    assert!(
        err.contains("owned by uid 65534") && err.contains("rm -rf"),
        "{err}"
    );
    assert_eq!(Snapshot::take(), before);
    // The fix; the tool makes it again, root's and 0700, before iscsiadm runs.
    for d in [LOCK_DIR, "/run/lock/iscsi.real", "/tmp/planted"] {
        fs::remove_dir_all(d).expect("rm -rf");
    }
    tool.attach(&spec);
    let m = fs::symlink_metadata(LOCK_DIR).expect("made");
    assert!(m.is_dir() && m.uid() == 0, "{m:?}");
    assert_eq!(m.mode() & 0o7777, 0o700);
    tool.detach(&spec);

    // A state directory others can write in: refused with the fix, which works.
    fs::create_dir_all("/var/lib/iscsimple").expect("mkdir");
    fs::set_permissions("/var/lib/iscsimple", fs::Permissions::from_mode(0o777)).expect("chmod");
    let err = tool.attach_fails(&spec, 2);
    assert_eq!(
        err,
        format!("iscsimple: attach {spec}: /var/lib/iscsimple: has mode 0777: others can write in it; not using it (fix: chmod 0700 /var/lib/iscsimple)")
    );
    assert_eq!(Snapshot::take(), before);
    fs::set_permissions("/var/lib/iscsimple", fs::Permissions::from_mode(0o700)).expect("fix");
    tool.attach(&spec);
    tool.detach(&spec);

    // Mutual CHAP: neither secret on a command line either.
    t.stop();
    let m = Chap::mutual();
    let (target_user, target_secret) = m.mutual.clone().expect("mutual");
    let t = Target::start(TargetSpec::new(Kind::Tgt, IQN, &[16]).chap(m.clone()));
    let tool = Tool::new(&format!(
        "{}username_in = \"{target_user}\"\npassword_in = \"{target_secret}\"\n",
        chap_toml(&t, &m, &m.password)
    ));
    let sampler = Cmdlines::start();
    tool.attach(&spec);
    tool.detach(&spec);
    no_secret_on_a_command_line(
        sampler.stop(),
        &[m.password.as_str(), target_secret.as_str()],
    );
    Snapshot::take().assert_clean();
}

/// Panic if a sampled command line holds one of `secrets`, or if the
/// sampler did not see the tool and its iscsiadm children (it proved
/// nothing then).
fn no_secret_on_a_command_line(cmdlines: BTreeSet<String>, secrets: &[&str]) {
    println!("{} distinct command lines sampled", cmdlines.len());
    assert!(
        cmdlines
            .iter()
            .any(|l| l.contains("iscsimple") && l.contains("attach"))
            && cmdlines.iter().any(|l| l.contains("iscsiadm")),
        "the sampler saw the tool and iscsiadm: {cmdlines:#?}"
    );
    for l in &cmdlines {
        for secret in secrets {
            assert!(!l.contains(secret), "secret on a command line: {l}");
        }
    }
}
