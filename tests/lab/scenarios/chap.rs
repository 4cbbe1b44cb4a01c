//! CHAP, one-way and mutual, configured in iscsimple.toml; a wrong secret
//! fails cleanly, leaves the node DB as it was, and no secret is ever logged.
use std::path::Path;

use crate::fixture::data;
use crate::fixture::system::Snapshot;
use crate::fixture::target::{Chap, Kind, Target, TargetSpec};
use crate::fixture::tool::{syslog, tree, Tool};
use crate::fixture::{Lab, Udev};

const IQN: &str = "iqn.2024-01.lab.iscsimple:chap";

fn chap_toml(t: &Target, c: &Chap, password: &str, target_password: &str) -> String {
    let mut s = format!(
        "[discovery]\nportals = [\"{}\"]\n[[chap]]\ntarget = \"{IQN}\"\nusername = \"{}\"\npassword = \"{password}\"\n",
        t.portal(),
        c.user
    );
    if let Some((u, _)) = &c.mutual {
        s.push_str(&format!(
            "username_in = \"{u}\"\npassword_in = \"{target_password}\"\n"
        ));
    }
    s
}

fn chap(kind: Kind, c: Chap) {
    let _lab = Lab::start(Udev::On);
    let t = Target::start(TargetSpec::new(kind, IQN, &[16]).chap(c.clone()));
    let lun = t.luns[0].clone();
    let spec = format!("lun{}@{IQN}", lun.number);
    let tpw = c.mutual.as_ref().map(|m| m.1.clone()).unwrap_or_default();

    // Wrong initiator secret: auth error, exit 2, nothing left, node DB unchanged.
    let before = Snapshot::take();
    let nodes_before = tree(Path::new("/etc/iscsi/nodes"));
    let tool = Tool::new(&chap_toml(&t, &c, "wrongsecret99999", &tpw));
    let err = tool.attach_fails(&spec, 2);
    assert!(
        err.contains("CHAP authentication failed") && err.contains(&spec),
        "{err}"
    );
    assert_eq!(
        Snapshot::take(),
        before,
        "nothing left after an auth failure"
    );
    assert_eq!(
        tree(Path::new("/etc/iscsi/nodes")),
        nodes_before,
        "node DB unchanged"
    );

    if c.mutual.is_some() {
        // Wrong target secret (the target fails to prove itself): a CHAP
        // failure like the other, exit 2 (README), one line, nothing left.
        let tool = Tool::new(&chap_toml(&t, &c, &c.password, "wrongtarget99999"));
        let err = tool.attach_fails(&spec, 2);
        assert!(
            err.contains("CHAP authentication failed") && err.contains(&spec),
            "{err}"
        );
        assert_eq!(
            Snapshot::take(),
            before,
            "nothing left after a mutual auth failure"
        );
        assert_eq!(
            tree(Path::new("/etc/iscsi/nodes")),
            nodes_before,
            "node DB unchanged after a mutual auth failure"
        );
    }

    // The right secrets.
    let tool = Tool::new(&chap_toml(&t, &c, &c.password, &tpw));
    let dev = tool.attach(&spec);
    data::verify(&dev, 0, 16, lun.seed);
    tool.detach(&spec);
    Snapshot::take().assert_clean();

    // No secret in the logs, and none on any command line (checked by the
    // tool's design: secrets go to the node record file, 0600).
    let log = syslog();
    for secret in [
        c.password.as_str(),
        tpw.as_str(),
        "wrongsecret99999",
        "wrongtarget99999",
    ] {
        if !secret.is_empty() {
            assert!(!log.contains(secret), "secret found in syslog");
        }
    }
}

#[test]
fn lab_chap_one_way_tgt() {
    chap(Kind::Tgt, Chap::one_way());
}

#[test]
fn lab_chap_mutual_lio() {
    chap(Kind::Lio, Chap::mutual());
}
