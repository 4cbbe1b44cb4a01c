//! The etcd store: each disk's record at `iscsimple/disks/WWID`, through
//! etcd's v3 JSON gateway (`POST /v3/kv/range`, `/v3/kv/txn`,
//! `/v3/lease/*`), one short blocking request each. An attach makes three
//! or four; etcd's gRPC client would bring an async runtime for that
//! (measured: 49 s more to build against 13 s, the same start-up).
//!
//! Every write is one transaction that compares the record's
//! `mod_revision` with the one read: a compare-and-swap, never a
//! read-then-write. This host's liveness is its lease: granted at the
//! first attach, kept alive by `watch`, named in the records it writes.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ClusterError, DiskRecord, Records, Writer};

/// Where the records live in etcd's key space.
const PREFIX: &str = "iscsimple/disks/";

/// Longest wait for one member's answer. A member without quorum holds a
/// linearizable read until its own timeout (seconds): the next member
/// is asked instead.
const REQUEST: Duration = Duration::from_secs(3);

/// Longest wait for the store as a whole, every member tried, again
/// every [`RETRY`].
const TOTAL: Duration = Duration::from_secs(8);

/// Pause between rounds over the members.
const RETRY: Duration = Duration::from_millis(500);

/// After the store did not answer, how long this process takes it as
/// down without asking again: a detach asks it twice, within the 40 s
/// Xen gives a hotplug script.
const DOWN_FOR: Duration = Duration::from_secs(10);

/// Until when the store is taken as down, and why.
static DOWN: std::sync::Mutex<Option<(Instant, String)>> = std::sync::Mutex::new(None);

/// The etcd store.
#[derive(Debug, Clone)]
pub struct EtcdRecords {
    endpoints: Vec<String>,
    agent: ureq::Agent,
    ttl: Duration,
    /// This host's lease id, kept across calls (`run_dir/lease`): gone
    /// with a reboot, as the lease is.
    lease_file: PathBuf,
}

/// etcd's JSON renders 64-bit numbers as strings.
fn num<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        S(String),
        I(i64),
    }
    Ok(match N::deserialize(d)? {
        N::S(s) => s
            .parse::<i64>()
            .map_err(serde::de::Error::custom)?
            .max(0)
            .unsigned_abs(),
        N::I(i) => i.max(0).unsigned_abs(),
    })
}

#[derive(Debug, Default, Deserialize)]
struct Header {
    #[serde(default, deserialize_with = "num")]
    revision: u64,
}

#[derive(Debug, Deserialize)]
struct Kv {
    #[serde(default)]
    value: String,
    #[serde(default, deserialize_with = "num")]
    mod_revision: u64,
}

#[derive(Debug, Deserialize)]
struct Range {
    #[serde(default)]
    kvs: Vec<Kv>,
}

#[derive(Debug, Deserialize)]
struct Txn {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    succeeded: bool,
}

#[derive(Debug, Deserialize)]
struct Lease {
    #[serde(rename = "ID", default, deserialize_with = "num")]
    id: u64,
    /// Seconds left; absent or -1 (read as 0) once expired.
    #[serde(rename = "TTL", default, deserialize_with = "num")]
    ttl: u64,
}

#[derive(Debug, Deserialize)]
struct KeepAlive {
    result: Option<Lease>,
}

fn key(wwid: &str) -> String {
    B64.encode(format!("{PREFIX}{wwid}"))
}

impl EtcdRecords {
    /// The store at `endpoints`; this host's lease of `ttl` is kept in
    /// `lease_file`.
    pub fn new(endpoints: &[String], ttl: Duration, lease_file: PathBuf) -> EtcdRecords {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(2))
            .timeout(REQUEST)
            .build();
        EtcdRecords {
            endpoints: endpoints.to_vec(),
            agent,
            ttl,
            lease_file,
        }
    }

    /// POST `body` to `path` on the first member that answers.
    fn post<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T, ClusterError> {
        let mut down = DOWN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((until, cause)) = down.as_ref() {
            if Instant::now() < *until {
                return Err(ClusterError::Unreachable {
                    endpoints: self.endpoints.join(","),
                    cause: cause.clone(),
                });
            }
        }
        let r = self.post_now(path, body);
        *down = match &r {
            Err(ClusterError::Unreachable { cause, .. }) => {
                Some((Instant::now() + DOWN_FOR, cause.clone()))
            }
            _ => None,
        };
        r
    }

    fn post_now<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T, ClusterError> {
        let start = Instant::now();
        let mut last = String::from("no endpoint");
        // Every member in turn, again after a pause while the time lasts:
        // a cluster electing a leader answers 503 for a few seconds.
        while start.elapsed() < TOTAL {
            for ep in &self.endpoints {
                if start.elapsed() >= TOTAL {
                    break;
                }
                let url = format!("{ep}{path}");
                match self.agent.post(&url).send_json(body) {
                    Ok(r) => {
                        return r.into_json().map_err(|e| ClusterError::Store {
                            endpoint: ep.clone(),
                            cause: e.to_string(),
                        })
                    }
                    // 503 and timeouts: this member has no quorum, or no
                    // leader yet; another may.
                    Err(ureq::Error::Status(code, r)) => {
                        let text = r.into_string().unwrap_or_default();
                        last = format!("{ep}: HTTP {code} {}", text.trim());
                        if code < 500 {
                            return Err(ClusterError::Store {
                                endpoint: ep.clone(),
                                cause: format!("HTTP {code} {}", text.trim()),
                            });
                        }
                    }
                    Err(ureq::Error::Transport(t)) => last = format!("{ep}: {t}"),
                }
            }
            std::thread::sleep(RETRY.min(TOTAL.saturating_sub(start.elapsed())));
        }
        Err(ClusterError::Unreachable {
            endpoints: self.endpoints.join(","),
            cause: last,
        })
    }

    /// Seconds left on lease `id` (0: expired or unknown).
    pub fn lease_left(&self, id: u64) -> Result<u64, ClusterError> {
        let l: Lease = self.post("/v3/lease/timetolive", &json!({ "ID": id.to_string() }))?;
        Ok(l.ttl)
    }

    /// This host's lease, granted anew when the one recorded expired.
    pub fn host_lease(&self) -> Result<u64, ClusterError> {
        let known = std::fs::read_to_string(&self.lease_file)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        if let Some(id) = known {
            if self.lease_left(id)? > 0 {
                return Ok(id);
            }
        }
        crate::crash::point("etcd lease grant", &self.lease_file);
        let l: Lease = self.post(
            "/v3/lease/grant",
            &json!({ "TTL": self.ttl.as_secs().to_string() }),
        )?;
        if l.id == 0 {
            return Err(ClusterError::Store {
                endpoint: self.endpoints.join(","),
                cause: "lease grant returned no id".to_string(),
            });
        }
        crate::crash::point("lease file", &self.lease_file);
        let tmp = self.lease_file.with_extension("tmp");
        std::fs::write(&tmp, format!("{}\n", l.id))
            .and_then(|()| std::fs::rename(&tmp, &self.lease_file))
            .map_err(|e| ClusterError::Store {
                endpoint: self.lease_file.display().to_string(),
                cause: e.to_string(),
            })?;
        tracing::info!(lease = l.id, ttl = l.ttl, "etcd lease granted");
        Ok(l.id)
    }

    /// Renew this host's lease, if it has one; false when it had expired
    /// (its records then name a writer others take as gone).
    pub fn keepalive(&self) -> Result<bool, ClusterError> {
        let Some(id) = std::fs::read_to_string(&self.lease_file)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
        else {
            return Ok(true);
        };
        let k: KeepAlive = self.post("/v3/lease/keepalive", &json!({ "ID": id.to_string() }))?;
        Ok(k.result.is_some_and(|l| l.ttl > 0))
    }

    fn decode(&self, kv: &Kv, wwid: &str) -> Result<DiskRecord, ClusterError> {
        let bytes = B64.decode(&kv.value).map_err(|e| ClusterError::Store {
            endpoint: self.endpoints.join(","),
            cause: format!("record {wwid}: {e}"),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| ClusterError::Store {
            endpoint: self.endpoints.join(","),
            cause: format!("record {wwid}: {e}"),
        })
    }
}

impl Records for EtcdRecords {
    fn get(&self, wwid: &str) -> Result<Option<(DiskRecord, u64)>, ClusterError> {
        let r: Range = self.post("/v3/kv/range", &json!({ "key": key(wwid) }))?;
        match r.kvs.first() {
            None => Ok(None),
            Some(kv) => Ok(Some((self.decode(kv, wwid)?, kv.mod_revision))),
        }
    }

    fn swap(&self, wwid: &str, read: u64, new: Option<&DiskRecord>) -> Result<u64, ClusterError> {
        let k = key(wwid);
        let op = match new {
            Some(r) => {
                let v = serde_json::to_vec(r).map_err(|e| ClusterError::Store {
                    endpoint: self.endpoints.join(","),
                    cause: e.to_string(),
                })?;
                json!({ "request_put": { "key": k, "value": B64.encode(v) } })
            }
            None => json!({ "request_delete_range": { "key": k } }),
        };
        crate::crash::point("etcd txn", wwid);
        // A key never written has mod_revision 0: `read` 0 means absent.
        let t: Txn = self.post(
            "/v3/kv/txn",
            &json!({
                "compare": [{ "key": k, "target": "MOD", "result": "EQUAL", "mod_revision": read.to_string() }],
                "success": [op],
            }),
        )?;
        if !t.succeeded {
            let found = self.get(wwid)?.map_or(0, |(_, rev)| rev);
            return Err(ClusterError::Changed {
                wwid: wwid.to_string(),
                read,
                found,
            });
        }
        Ok(if new.is_some() { t.header.revision } else { 0 })
    }

    fn alive(&self, w: &Writer) -> Result<bool, ClusterError> {
        match w.lease {
            Some(id) => Ok(self.lease_left(id)? > 0),
            // Written without a lease (by the local store's rules): only
            // its host can end it.
            None => Ok(true),
        }
    }

    fn lease(&self) -> Result<Option<u64>, ClusterError> {
        self.host_lease().map(Some)
    }

    fn shared(&self) -> bool {
        true
    }

    fn keepalive(&self) -> Result<bool, ClusterError> {
        EtcdRecords::keepalive(self)
    }

    fn describe(&self) -> String {
        format!("etcd ({})", self.endpoints.join(","))
    }

    fn all(&self) -> Result<Vec<DiskRecord>, ClusterError> {
        let start = B64.encode(PREFIX);
        // The range [PREFIX, PREFIX+1): every key under the prefix.
        let mut end = PREFIX.as_bytes().to_vec();
        if let Some(b) = end.last_mut() {
            *b += 1;
        }
        let r: Range = self.post(
            "/v3/kv/range",
            &json!({ "key": start, "range_end": B64.encode(end) }),
        )?;
        r.kvs.iter().map(|kv| self.decode(kv, "")).collect()
    }
}
