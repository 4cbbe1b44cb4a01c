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
    assert_eq!(check(Some(&a), "a", |_| true), Ok(()));
    match check(Some(&a), "b", |_| true) {
        Err(Conflict::Writer { host, .. }) => assert_eq!(host, "a"),
        r => panic!("{r:?}"),
    }
    // Its lease expired: the host is gone, the disk can be taken over.
    assert_eq!(check(Some(&a), "b", |_| false), Ok(()));
    // A's iSCSI leg failed under writes, then A detached: B must wait for
    // A to heal, whatever A's lease says; A itself may attach.
    let newer = mark_newer(&end(&a, "a", false), "a", true).expect("changed");
    assert!(mark_newer(&newer, "a", true).is_none(), "already so");
    match check(Some(&newer), "b", |_| false) {
        Err(Conflict::LocalNewer { host, .. }) => assert_eq!(host, "a"),
        r => panic!("{r:?}"),
    }
    let e = check(Some(&newer), "b", |_| false).unwrap_err().to_string();
    assert!(e.contains("heal there first"), "{e}");
    assert_eq!(check(Some(&newer), "a", |_| true), Ok(()));
    assert_eq!(
        decide(Some(&newer), "a", "dm:A", true),
        Rule::FullCopy(Why::NotClean)
    );
    let healed = mark_newer(&newer, "a", false).expect("changed");
    assert_eq!(check(Some(&healed), "b", |_| false), Ok(()));
}

#[test]
fn endpoints_are_plain_http_urls() {
    assert_eq!(
        endpoint("http://10.0.0.1:2379/").unwrap(),
        "http://10.0.0.1:2379"
    );
    assert_eq!(
        endpoint("http://etcd-1:2379").unwrap(),
        "http://etcd-1:2379"
    );
    for bad in [
        "10.0.0.1:2379",
        "https://a:2379",
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
