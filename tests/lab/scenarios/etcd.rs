//! The etcd fixture (tests/lab/fixture/etcd.rs) runs a real 3-member
//! cluster in network namespaces: a write through one member is read back
//! through another, the cluster elects a new leader and keeps writing when
//! its leader is killed and stops with two members dead, killed members
//! rejoin with their data, and a cut leader is replaced and left out until
//! healed. Also checks the v3 JSON gateway paths of etcd 3.4 that a client
//! of the disks' records uses, and prints how long each step took.
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fixture::etcd::{b64, http, unb64, Etcd, REQUEST_TIMEOUT};
use crate::fixture::{Lab, Udev};

/// Writes may wait for a new leader (election timeout 5 s, so up to ~10 s).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// POST `body` to `path` on `url`; must answer 200 with JSON.
fn post(url: &str, path: &str, body: &Value) -> Value {
    let t = Instant::now();
    let (code, resp) = http(
        "POST",
        &format!("{url}{path}"),
        Some(&body.to_string()),
        REQUEST_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    println!(
        "etcd: POST {path} -> {code} in {:?}: {}",
        t.elapsed(),
        resp.trim()
    );
    assert_eq!(code, 200, "POST {path}: {resp}");
    // a streaming call (keepalive) answers one JSON object per line
    let first = resp.lines().next().unwrap_or("");
    serde_json::from_str(first).unwrap_or_else(|e| panic!("POST {path}: {e}: {resp}"))
}

/// Put through member `i`, retrying until `WRITE_TIMEOUT` (a leader
/// election may be under way); returns how long it took.
fn put_eventually(etcd: &Etcd, i: usize, key: &str, value: &str) -> Duration {
    let t = Instant::now();
    loop {
        match etcd.put(i, key, value, REQUEST_TIMEOUT) {
            Ok(()) => return t.elapsed(),
            Err(e) => {
                assert!(
                    t.elapsed() < WRITE_TIMEOUT,
                    "put {key} through member {i} for {WRITE_TIMEOUT:?}: {e}"
                );
                println!("etcd: put {key} through member {i}: {e}; again");
            }
        }
    }
}

#[test]
fn lab_etcd_fixture_three_members() {
    let t0 = Instant::now();
    let _lab = Lab::start(Udev::Off);
    let mut etcd = Etcd::start(3);
    println!(
        "etcd: 3 members healthy after {:?}: {:?}, leader member {:?}",
        etcd.healthy_after,
        etcd.endpoints(),
        etcd.leader()
    );
    assert_eq!(etcd.endpoints().len(), 3);

    // the JSON gateway paths of 3.4 (all under /v3/)
    let url = etcd.endpoint(0);
    let put = post(
        &url,
        "/v3/kv/put",
        &json!({"key": b64(b"lab/a"), "value": b64(b"one")}),
    );
    assert!(put["header"]["revision"].is_string(), "put answer: {put}");
    let lease = post(&url, "/v3/lease/grant", &json!({"TTL": 60}));
    let id = lease["ID"]
        .as_str()
        .expect("lease ID (an int64, as a string)")
        .to_string();
    let ka = post(&url, "/v3/lease/keepalive", &json!({"ID": id}));
    assert_eq!(ka["result"]["ID"], id.as_str(), "keepalive answer: {ka}");
    let ttl = post(&url, "/v3/lease/timetolive", &json!({"ID": id}));
    assert_eq!(ttl["grantedTTL"], "60", "timetolive answer: {ttl}");
    let txn = |value: &[u8]| {
        post(
            &url,
            "/v3/kv/txn",
            &json!({
                "compare": [{"key": b64(b"lab/txn"), "target": "CREATE", "result": "EQUAL",
                             "create_revision": "0"}],
                "success": [{"request_put": {"key": b64(b"lab/txn"), "value": b64(value),
                                             "lease": id}}],
                "failure": [{"request_range": {"key": b64(b"lab/txn")}}],
            }),
        )
    };
    assert_eq!(
        txn(b"first")["succeeded"],
        true,
        "create-if-absent on an absent key"
    );
    let lost = txn(b"second");
    // false is a default value: the gateway leaves it out
    assert_ne!(
        lost["succeeded"], true,
        "create-if-absent on a present key: {lost}"
    );
    let kv = &lost["responses"][0]["response_range"]["kvs"][0];
    assert_eq!(
        unb64(kv["value"].as_str().unwrap_or("")).as_deref(),
        Some(&b"first"[..])
    );
    assert_eq!(kv["lease"], id.as_str(), "the key is attached to the lease");
    let range = post(
        &etcd.endpoint(1),
        "/v3/kv/range",
        &json!({"key": b64(b"lab/a")}),
    );
    assert_eq!(range["count"], "1", "range answer: {range}");

    // written through member 0, read through member 1
    let t = Instant::now();
    etcd.put(0, "lab/k1", "v1", REQUEST_TIMEOUT)
        .expect("put k1");
    println!("etcd: put k1 through member 0 in {:?}", t.elapsed());
    assert_eq!(
        etcd.get(1, "lab/k1", REQUEST_TIMEOUT).unwrap().as_deref(),
        Some("v1")
    );
    assert_eq!(etcd.get(2, "lab/none", REQUEST_TIMEOUT).unwrap(), None);

    // the leader dead: the other two elect a new one and write again
    let old = etcd.leader().expect("a leader");
    let (a, b) = ((old + 1) % 3, (old + 2) % 3);
    etcd.kill(old);
    let took = put_eventually(&etcd, a, "lab/k2", "v2");
    println!(
        "etcd: leader (member {old}) killed; put k2 through member {a} in {took:?}, new leader {:?}",
        etcd.leader()
    );
    assert_eq!(
        etcd.get(b, "lab/k2", REQUEST_TIMEOUT).unwrap().as_deref(),
        Some("v2")
    );

    // two dead: no quorum, the write does not go through
    etcd.kill(b);
    let t = Instant::now();
    let r = etcd.put(a, "lab/k3", "v3", REQUEST_TIMEOUT);
    println!(
        "etcd: members {old} and {b} killed; put k3 through member {a}: {r:?} after {:?}",
        t.elapsed()
    );
    assert!(r.is_err(), "a write without quorum succeeded");
    assert!(!etcd.healthy(a), "member {a} healthy without quorum");

    // both back with their data dirs: the old leader catches up on k2
    let t = Instant::now();
    etcd.start_member(old);
    etcd.start_member(b);
    etcd.wait_healthy(&[0, 1, 2], Duration::from_secs(120));
    println!(
        "etcd: members {old} and {b} restarted, all healthy after {:?}",
        t.elapsed()
    );
    assert_eq!(
        etcd.get(old, "lab/k2", REQUEST_TIMEOUT).unwrap().as_deref(),
        Some("v2")
    );
    // k3's put timed out: its outcome is unknown, not a failure (had its
    // member been the leader, k3 would be in its log, committed if it leads
    // again with a quorum)
    println!(
        "etcd: k3 (its put timed out) after the restart: {:?}",
        etcd.get(old, "lab/k3", REQUEST_TIMEOUT)
    );

    // the leader cut off: the other two write, the cut one answers nothing
    let cut = etcd.leader().expect("a leader");
    let other = (cut + 1) % 3;
    etcd.cut(cut);
    let took = put_eventually(&etcd, other, "lab/k4", "v4");
    println!("etcd: leader (member {cut}) cut; put k4 through member {other} in {took:?}");
    let r = etcd.get(cut, "lab/k4", Duration::from_secs(3));
    assert!(r.is_err(), "a cut member answered: {r:?}");
    etcd.heal(cut);
    let took = etcd.wait_healthy(&[0, 1, 2], Duration::from_secs(120));
    println!("etcd: member {cut} healed, all healthy after {took:?}");
    assert_eq!(
        etcd.get(cut, "lab/k4", REQUEST_TIMEOUT).unwrap().as_deref(),
        Some("v4")
    );

    drop(etcd);
    println!("etcd: scenario done in {:?}", t0.elapsed());
}
