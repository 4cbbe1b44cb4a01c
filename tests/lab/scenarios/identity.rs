//! Names are not identities (issue 14): an md minor, a label, a LUN
//! number, a session. Each scenario makes the name point at something
//! else, or two callers race for it, and checks the tool acts only on what
//! it verified is its own.
use std::path::Path;
use std::time::Duration;

use crate::fixture::data;
use crate::fixture::initiator;
use crate::fixture::lvm::{kname, Vg};
use crate::fixture::md::Md;
use crate::fixture::points::{self, Held};
use crate::fixture::system::Snapshot;
use crate::fixture::target::{Kind, Target, TargetSpec};
use crate::fixture::tool::Tool;
use crate::fixture::{wait_for, Lab, Udev};

const IQN: &str = "iqn.2024-01.lab.iscsimple:identity";
const MIB: u64 = 16;

/// Item 4: a detach killed after `mdadm --stop` leaves a record naming
/// md127; the next array takes md127; the retried detach must not stop it.
/// Item 6: `lun3@T+L` and `lun3@T` racing: one LUN, one user.
/// Item 5: a spec names only its own attachment.
#[test]
fn lab_identity_reused_minor_and_one_user_per_lun() {
    let lab = Lab::start(Udev::On);
    let t = Target::start(TargetSpec::new(Kind::Tgt, IQN, &[MIB, MIB, MIB]));
    let vg = Vg::create("labvg", 2 * MIB + 16);
    let (a, b) = (vg.lv("a", MIB), vg.lv("b", MIB));
    let tool = Tool::new(&format!("[discovery]\nportals = [\"{}\"]\n", t.portal()));
    tool.labels(&[
        ("disk-a", a.to_str().unwrap()),
        ("disk-b", b.to_str().unwrap()),
    ]);
    let clean = Snapshot::take().devices();
    let spec_a = format!("lun1@{IQN}+disk-a");
    let spec_b = format!("lun2@{IQN}+disk-b");

    // The kill points of an uninterrupted detach.
    tool.attach(&spec_a);
    let (out, points) = points::run(&tool, &["detach", &spec_a], None);
    assert!(out.ok(), "{}", out.stderr);
    let after_stop = points::index_of(&points, "mdadm --stop") + 1;
    println!("detach points:\n{}", points.join("\n"));

    // Killed right after the stop: the record still names md127.
    tool.attach(&spec_a);
    let a_md = Md::by_label("disk-a");
    let a_kname = a_md
        .dev()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let (out, p) = points::run(&tool, &["detach", &spec_a], Some(after_stop));
    assert!(
        out.code == -1 && p.last().is_some_and(|l| l.ends_with("KILLED")),
        "killed after the stop: {p:#?}"
    );
    assert!(!a_md.exists(), "disk-a's array was stopped");
    lab.settle();
    wait_for(
        "the stopped array to leave sysfs",
        Duration::from_secs(30),
        || !Path::new(&format!("/sys/block/{a_kname}")).exists(),
    );
    // The next array gets the minor back.
    let dev_b = tool.attach(&spec_b);
    let b_md = Md::by_label("disk-b");
    let b_kname = b_md
        .dev()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(
        b_kname, a_kname,
        "mdadm reused the minor (else this proves nothing)"
    );
    data::fill(&dev_b, 0, 4, 0xb0b);
    // Retried detach of disk-a: disk-b's array is not its array.
    let out = tool.run(&["detach", &spec_a]);
    assert!(out.ok(), "retried detach: {}", out.stderr);
    assert!(
        b_md.exists(),
        "disk-b's array {b_kname} survives disk-a's detach"
    );
    let mut members = b_md.members();
    members.sort();
    let mut want = vec![kname(&b), initiator::disk(IQN, 2).expect("LUN 2's disk")];
    want.sort();
    assert_eq!(members, want, "disk-b keeps its two legs");
    assert!(initiator::disk(IQN, 1).is_none(), "disk-a's LUN released");
    data::verify(&dev_b, 0, 4, 0xb0b);

    // A spec names only its own attachment: disk-b's LUN under another spec.
    let out = tool.run(&["detach", &format!("lun2@{IQN}")]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains(&spec_b),
        "names the attached spec: {}",
        out.stderr
    );
    let out = tool.run(&["detach", &format!("lun7@{IQN}+disk-b")]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(b_md.exists(), "still attached");

    // One user per LUN: a mirrored attach of LUN 3 held after it recorded
    // itself, before its scan; a plain attach of LUN 3 comes meanwhile.
    let spec_m = format!("lun3@{IQN}+disk-a");
    let spec_p = format!("lun3@{IQN}");
    let (out, points) = points::run(&tool, &["attach", &spec_m], None);
    assert!(out.ok(), "{}", out.stderr);
    tool.detach(&spec_m);
    let hold = points::index_of(&points, "scan");
    let held = Held::start(&tool, &["attach", &spec_m], hold);
    let plain = {
        let spec_p = spec_p.clone();
        std::thread::spawn(move || Tool::new_shared().run(&["attach", &spec_p]))
    };
    std::thread::sleep(Duration::from_secs(3));
    let m = held.go();
    let p = plain.join().expect("plain attach");
    assert!(m.ok(), "the mirrored attach: {}", m.stderr);
    assert_eq!(
        p.code, 2,
        "the plain attach of the same LUN is refused: {}",
        p.stderr
    );
    assert!(p.stderr.contains("already attached as"), "{}", p.stderr);
    let dev = Md::by_label("disk-a");
    assert_eq!(dev.members().len(), 2, "the mirror has its legs");
    let st = tool.run(&["status", "--json"]);
    assert!(
        !st.stdout.contains(&format!("\"{spec_p}\"")),
        "{}",
        st.stdout
    );

    tool.detach(&spec_m);
    tool.detach(&spec_b);
    assert_eq!(Snapshot::take().devices(), clean);
    vg.remove();
    Snapshot::take().assert_clean();
}

/// Item 10: a session that exists but is not logged in (its target is
/// away) is someone else's: attach waits for it to recover and uses it,
/// and detach leaves it logged in.
#[test]
fn lab_identity_recovering_session_is_not_claimed() {
    let _lab = Lab::start(Udev::On);
    let t = Target::start(TargetSpec::new(Kind::Tgt, IQN, &[MIB]));
    let tool = Tool::new(&format!("[discovery]\nportals = [\"{}\"]\n", t.portal()));
    // An administrator's session, with no LUN scanned in.
    initiator::discover(&t.portal());
    initiator::node_set(IQN, &t.portal(), "node.session.scan", "manual");
    assert!(initiator::login(IQN, &t.portal()).ok());
    let session = initiator::sessions(IQN).pop().expect("session");
    let state = || crate::fixture::read(session.join("state")).unwrap_or_default();
    t.kill();
    wait_for(
        "the session to leave LOGGED_IN",
        Duration::from_secs(60),
        || state() != "LOGGED_IN",
    );
    println!("session state: {}", state());
    let spec = format!("lun1@{IQN}");
    let attach = {
        let spec = spec.clone();
        std::thread::spawn(move || Tool::new_shared().run(&["attach", &spec]))
    };
    std::thread::sleep(Duration::from_secs(2));
    t.up();
    let out = attach.join().expect("attach");
    assert!(
        out.ok(),
        "attach waits for the session to recover: {}",
        out.stderr
    );
    assert_eq!(initiator::sessions(IQN).len(), 1, "no second session");
    let dev = std::path::PathBuf::from(out.stdout.trim());
    data::verify(&dev, 0, 4, t.lun(1).seed);
    tool.detach(&spec);
    assert!(
        initiator::disk(IQN, 1).is_none(),
        "the LUN it scanned is deleted"
    );
    assert_eq!(
        initiator::sessions(IQN),
        vec![session.clone()],
        "the administrator's session is not ours to log out"
    );
    assert_eq!(state(), "LOGGED_IN");
    initiator::logout(IQN, &t.portal());
    Snapshot::take().assert_clean();
}
