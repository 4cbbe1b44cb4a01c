use super::*;

const LUN: (&str, u32, &str) = ("iqn.2024-01.lab:t", 1, "naa.1");

fn detached(in_sync: bool) -> DiskRecord {
    end(&begin(None, LUN, ("a", None), Some("dm:A")), "a", in_sync)
}

#[test]
fn a_copy_detached_in_sync_rejoins_without_a_copy() {
    let r = detached(true);
    assert_eq!(r.generation, 1);
    assert_eq!(r.writer, None);
    assert_eq!(
        decide(Some(&r), "a", "dm:A", true),
        Rule::ZeroCopy { generation: 1 }
    );
}

#[test]
fn every_other_case_is_a_full_copy() {
    let full = |r: Option<&DiskRecord>, me: &str, id: &str, trusted: bool| match decide(
        r, me, id, trusted,
    ) {
        Rule::FullCopy(w) => w,
        z => panic!("{z}"),
    };
    let clean = detached(true);
    assert_eq!(full(Some(&clean), "a", "dm:A", false), Why::NotOnlyUser);
    assert_eq!(full(None, "a", "dm:A", true), Why::NoRecord);
    assert_eq!(full(Some(&clean), "b", "dm:A", true), Why::NoCopy);
    assert_eq!(full(Some(&clean), "a", "dm:B", true), Why::OtherVolume);
    assert_eq!(
        full(Some(&detached(false)), "a", "dm:A", true),
        Why::NotClean
    );
    // Attached again (a crash leaves it so): not clean, and a writer.
    let again = begin(Some(&clean), LUN, ("a", None), Some("dm:A"));
    assert_eq!(again.generation, 2);
    assert_eq!(
        full(Some(&again), "a", "dm:A", true),
        Why::Writer("a".into())
    );
    // Written without this copy (a plain attach, a MISSING local leg, or
    // another host): the copy is stale, and stays so after that detach.
    let plain = end(&begin(Some(&clean), LUN, ("a", None), None), "a", false);
    assert_eq!(
        full(Some(&plain), "a", "dm:A", true),
        Why::Stale { copy: 1, disk: 2 }
    );
    let other = end(
        &begin(Some(&clean), LUN, ("b", None), Some("dm:B")),
        "b",
        true,
    );
    assert_eq!(
        full(Some(&other), "a", "dm:A", true),
        Why::Stale { copy: 1, disk: 2 }
    );
    assert_eq!(
        decide(Some(&other), "b", "dm:B", true),
        Rule::ZeroCopy { generation: 2 }
    );
}

#[test]
fn a_swap_against_a_stale_revision_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let s = LocalRecords::new(d.path(), &run.join("locks"), Duration::from_secs(1));
    assert!(s.get("naa.1").unwrap().is_none());
    let r = begin(None, LUN, ("a", None), Some("dm:A"));
    s.swap("naa.1", 0, Some(&r)).unwrap();
    let (got, rev) = s.get("naa.1").unwrap().unwrap();
    assert_eq!((got, rev), (r.clone(), 1));
    // A second writer that read the absent record loses.
    assert!(matches!(
        s.swap("naa.1", 0, Some(&r)),
        Err(ClusterError::Changed {
            read: 0,
            found: 1,
            ..
        })
    ));
    s.swap("naa.1", 1, Some(&end(&r, "a", true))).unwrap();
    assert_eq!(s.get("naa.1").unwrap().unwrap().1, 2);
    assert_eq!(s.all().unwrap().len(), 1);
    s.swap("naa.1", 2, None).unwrap();
    assert!(s.get("naa.1").unwrap().is_none());
}

#[test]
fn another_live_writer_or_newer_copy_refuses_the_attach() {
    let a = begin(None, LUN, ("a", Some(7)), Some("dm:A"));
    assert_eq!(a.writer.as_ref().and_then(|w| w.lease), Some(7));
    // Its own record (a crash left it): no conflict.
    assert_eq!(check(Some(&a), "a", false, |_| true), Ok(Access::Write));
    match check(Some(&a), "b", false, |_| true) {
        Err(Conflict::Writer { host, .. }) => assert_eq!(host, "a"),
        r => panic!("{r:?}"),
    }
    // Its lease expired: the host is gone, the disk can be taken over.
    assert_eq!(check(Some(&a), "b", false, |_| false), Ok(Access::Write));
    // A's iSCSI leg failed under writes, then A detached: B must wait for
    // A to heal, whatever A's lease says; A itself may attach.
    let newer = mark_newer(&end(&a, "a", false), "a", true).expect("changed");
    assert!(mark_newer(&newer, "a", true).is_none(), "already so");
    match check(Some(&newer), "b", false, |_| false) {
        Err(Conflict::LocalNewer { host, .. }) => assert_eq!(host, "a"),
        r => panic!("{r:?}"),
    }
    let e = check(Some(&newer), "b", false, |_| false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("heal there first"), "{e}");
    assert_eq!(check(Some(&newer), "a", false, |_| true), Ok(Access::Write));
    assert_eq!(
        decide(Some(&newer), "a", "dm:A", true),
        Rule::FullCopy(Why::NotClean)
    );
    let healed = mark_newer(&newer, "a", false).expect("changed");
    assert_eq!(
        check(Some(&healed), "b", false, |_| false),
        Ok(Access::Write)
    );
}

#[test]
fn endpoints_are_http_or_https_urls() {
    assert_eq!(
        endpoint("http://10.0.0.1:2379/").unwrap(),
        "http://10.0.0.1:2379"
    );
    assert_eq!(
        endpoint("http://etcd-1:2379").unwrap(),
        "http://etcd-1:2379"
    );
    assert_eq!(
        endpoint("https://10.0.0.1:2379/").unwrap(),
        "https://10.0.0.1:2379"
    );
    for bad in [
        "10.0.0.1:2379",
        "ftp://a:2379",
        "https://a",
        "http://a",
        "http://a:0",
        "http://a:2379/x",
        "http://:1",
    ] {
        assert!(endpoint(bad).is_err(), "{bad}");
    }
}

#[test]
fn pending_ends_are_written_once_the_store_answers() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let s = LocalRecords::new(d.path(), &run.join("locks"), Duration::from_secs(1));
    s.swap(
        "naa.1",
        0,
        Some(&begin(None, LUN, ("a", None), Some("dm:A"))),
    )
    .unwrap();
    let p = PendingEnd {
        wwid: "naa.1".into(),
        in_sync: true,
        since: 1,
    };
    pending(d.path()).put("naa.1", &p).unwrap();
    assert_eq!(flush_pending(&s, d.path(), "a").unwrap(), 1);
    assert_eq!(flush_pending(&s, d.path(), "a").unwrap(), 0);
    let (r, _) = s.get("naa.1").unwrap().unwrap();
    assert_eq!(r.writer, None);
    assert!(r.copies["a"].clean);
    assert!(renew_writer(&s, "naa.1", "a", 9).unwrap());
}

#[test]
fn a_migration_hands_the_disk_over_when_the_source_releases() {
    let a = begin(None, LUN, ("a", Some(7)), Some("dm:A"));
    // The destination asks while the source writes: one writer, A.
    assert_eq!(
        check(Some(&a), "b", true, |_| true),
        Ok(Access::Handover { from: "a".into() })
    );
    let asked = hand_over(&a, "b", Some(9));
    assert_eq!(asked.writer.as_ref().map(|w| w.host.as_str()), Some("a"));
    assert_eq!(asked.generation, 1);
    // A third host is refused, migrating or not.
    assert!(matches!(
        check(Some(&asked), "c", true, |_| true),
        Err(Conflict::Writer { .. })
    ));
    // The source releases in sync: B writes the next generation, A's
    // copy is clean at the one it holds (stale from B's first write).
    let moved = end(&asked, "a", true);
    let w = moved.writer.as_ref().expect("a writer");
    assert_eq!((w.host.as_str(), w.lease), ("b", Some(9)));
    assert_eq!(moved.generation, 2);
    assert_eq!(moved.handover, None);
    assert!(moved.copies["a"].clean);
    assert_eq!(
        decide(Some(&end(&moved, "b", true)), "a", "dm:A", true),
        Rule::FullCopy(Why::Stale { copy: 1, disk: 2 })
    );
    // A destination that gives up before the switch leaves A the writer.
    let gave_up = end(&asked, "b", false);
    assert_eq!(gave_up.handover, None);
    assert_eq!(gave_up.writer, a.writer);
}

#[test]
fn no_migration_from_a_host_whose_copy_is_newer() {
    let a = begin(None, LUN, ("a", Some(7)), Some("dm:A"));
    let newer = mark_newer(&a, "a", true).expect("changed");
    let e = check(Some(&newer), "b", true, |_| true).unwrap_err();
    assert!(matches!(e, Conflict::Migration { .. }), "{e:?}");
    assert!(e.to_string().contains("keeps running there"), "{e}");
}

#[test]
fn copies_written_apart_are_a_split_brain_until_a_person_resolves_it() {
    // A wrote generation 1; its lease expired and B took the disk over.
    let a = begin(None, LUN, ("a", Some(7)), Some("dm:A"));
    let b = begin(Some(&a), LUN, ("b", Some(9)), Some("dm:B"));
    // A's iSCSI leg then fails under writes: both copies moved on.
    let split = mark_newer(&b, "a", true).expect("changed");
    let x = split.split.clone().expect("split brain");
    assert_eq!((x.local.as_str(), x.other.as_str()), ("a", "b"));
    for host in ["a", "b", "c"] {
        let e = check(Some(&split), host, false, |_| false).unwrap_err();
        assert!(matches!(e, Conflict::SplitBrain { .. }), "{host}: {e:?}");
    }
    // A host's own failure while it writes is not a split brain.
    assert_eq!(mark_newer(&a, "a", true).expect("changed").split, None);
    // Kept: the iSCSI disk (no newer copy left), or A's copy (A newer).
    let iscsi = resolve(&split, Keep::Iscsi);
    assert_eq!(
        (iscsi.split.clone(), iscsi.local_newer.clone()),
        (None, None)
    );
    assert_eq!(
        check(Some(&iscsi), "b", false, |_| false),
        Ok(Access::Write)
    );
    let local = resolve(&split, Keep::Local);
    assert_eq!(local.split, None);
    assert_eq!(local.local_newer.map(|n| n.host), Some("a".to_string()));
}
