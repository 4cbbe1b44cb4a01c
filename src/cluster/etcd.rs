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
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ClusterError, DiskRecord, Records, Writer};
use crate::config::EtcdTls;

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
    /// The client, or why it could not be made (TLS files unreadable).
    agent: Agent,
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

/// TLS to the members: their certificates checked against the CA of
/// `t` alone (not the system's), this host's certificate shown when it
/// has one. Errors name the file, never its content.
fn tls_config(t: &EtcdTls) -> Result<rustls::ClientConfig, (PathBuf, String)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |path: &Path, cause: String| (path.to_path_buf(), cause);
    let certs = |path: &Path| -> Result<Vec<CertificateDer<'static>>, (PathBuf, String)> {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| bad(path, e.to_string()))?;
        if certs.is_empty() {
            return Err(bad(path, "no certificate in it".to_string()));
        }
        Ok(certs)
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&t.ca)? {
        roots.add(c).map_err(|e| bad(&t.ca, e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&t.ca, e.to_string()))?
        .with_root_certificates(roots);
    match &t.client {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = certs(cert)?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.to_string()))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| bad(key, e.to_string()))
        }
    }
}

/// The client for `tls` (None: plain http), or why it cannot be made.
type Agent = Result<ureq::Agent, (PathBuf, String)>;

/// The files of `tls` and when each last changed: a client is made
/// anew once one is replaced (a certificate renewed while `watch` runs).
type TlsKey = Option<(EtcdTls, Vec<Option<std::time::SystemTime>>)>;

/// The clients this process made, by TLS files: the store is opened
/// several times per call, and each client keeps its connections (with
/// TLS, a handshake each).
static AGENTS: std::sync::Mutex<Vec<(TlsKey, ureq::Agent)>> = std::sync::Mutex::new(Vec::new());

fn agent(tls: Option<&EtcdTls>) -> Agent {
    let key: TlsKey = tls.map(|t| {
        let files = std::iter::once(&t.ca).chain(t.client.iter().flat_map(|(c, k)| [c, k]));
        let changed = files
            .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
            .collect();
        (t.clone(), changed)
    });
    let mut agents = AGENTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, a)) = agents.iter().find(|(k, _)| *k == key) {
        return Ok(a.clone());
    }
    let builder = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(2))
        .timeout(REQUEST);
    let a = match tls {
        None => builder.build(),
        Some(t) => builder.tls_config(Arc::new(tls_config(t)?)).build(),
    };
    // A failure is not kept: files fixed while `watch` runs are read again.
    agents.retain(|(k, _)| k.as_ref().map(|(t, _)| t) != tls);
    agents.push((key, a.clone()));
    Ok(a)
}

fn key(wwid: &str) -> String {
    B64.encode(format!("{PREFIX}{wwid}"))
}

impl EtcdRecords {
    /// The store at `endpoints` (TLS with `tls`'s files for https://
    /// ones); this host's lease of `ttl` is kept in `lease_file`.
    pub fn new(
        endpoints: &[String],
        tls: Option<&EtcdTls>,
        ttl: Duration,
        lease_file: PathBuf,
    ) -> EtcdRecords {
        EtcdRecords {
            endpoints: endpoints.to_vec(),
            agent: agent(tls),
            ttl,
            lease_file,
        }
    }

    /// POST `body` to `path` on the first member that answers.
    fn post<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T, ClusterError> {
        let agent = self
            .agent
            .as_ref()
            .map_err(|(path, cause)| ClusterError::Tls {
                path: path.clone(),
                cause: cause.clone(),
            })?;
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
        let r = self.post_now(agent, path, body);
        *down = match &r {
            Err(ClusterError::Unreachable { cause, .. }) => {
                Some((Instant::now() + DOWN_FOR, cause.clone()))
            }
            _ => None,
        };
        r
    }

    fn post_now<T: DeserializeOwned>(
        &self,
        agent: &ureq::Agent,
        path: &str,
        body: &Value,
    ) -> Result<T, ClusterError> {
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
                let sent = Instant::now();
                let r = agent.post(&url).send_json(body);
                tracing::debug!(endpoint = %ep, path, secs = sent.elapsed().as_secs_f64(), ok = r.is_ok(), "etcd request");
                match r {
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
                    // ureq's text starts with the URL: name the member once.
                    Err(ureq::Error::Transport(t)) => {
                        let t = t.to_string();
                        let t = t.strip_prefix(&format!("{url}: ")).unwrap_or(&t);
                        last = format!("{ep}: {t}");
                    }
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

    /// The lease id this host keeps, and how long ago it was last
    /// granted or renewed (None: the clock went back).
    fn known_lease(&self) -> Option<(u64, Option<Duration>)> {
        let id = std::fs::read_to_string(&self.lease_file)
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()?;
        let age = std::fs::metadata(&self.lease_file)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok());
        Some((id, age))
    }

    /// Keep lease `id` in `lease_file`; its mtime says when the lease was
    /// last known to run its full ttl.
    fn keep_lease(&self, id: u64) -> Result<(), ClusterError> {
        crate::crash::point("lease file", &self.lease_file);
        let tmp = self.lease_file.with_extension("tmp");
        std::fs::write(&tmp, format!("{id}\n"))
            .and_then(|()| std::fs::rename(&tmp, &self.lease_file))
            .map_err(|e| ClusterError::Store {
                endpoint: self.lease_file.display().to_string(),
                cause: e.to_string(),
            })
    }

    /// Renew lease `id`: true if it still ran (it runs its full ttl again).
    fn renew(&self, id: u64) -> Result<bool, ClusterError> {
        let k: KeepAlive = self.post("/v3/lease/keepalive", &json!({ "ID": id.to_string() }))?;
        let alive = k.result.is_some_and(|l| l.ttl > 0);
        if alive {
            self.keep_lease(id)?;
        }
        Ok(alive)
    }

    /// This host's lease, granted anew when the one recorded expired. A
    /// lease granted or renewed less than half its ttl ago is taken as
    /// running without asking (`watch` renews it every tick): an attach
    /// spares a request.
    pub fn host_lease(&self) -> Result<u64, ClusterError> {
        if let Some((id, age)) = self.known_lease() {
            if age.is_some_and(|a| a < self.ttl / 2) || self.renew(id)? {
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
        self.keep_lease(l.id)?;
        tracing::info!(lease = l.id, ttl = l.ttl, "etcd lease granted");
        Ok(l.id)
    }

    /// Renew this host's lease, if it has one; false when it had expired
    /// (its records then name a writer others take as gone).
    pub fn keepalive(&self) -> Result<bool, ClusterError> {
        match self.known_lease() {
            Some((id, _)) => self.renew(id),
            None => Ok(true),
        }
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

    fn read_all(&self) -> Result<Vec<(DiskRecord, u64)>, ClusterError> {
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
        r.kvs
            .iter()
            .map(|kv| Ok((self.decode(kv, "")?, kv.mod_revision)))
            .collect()
    }
}
