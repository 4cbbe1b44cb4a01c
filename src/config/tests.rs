//! Tests of the configuration file: parsing, validation, CHAP secrets.

use super::chap::*;
use super::validate::*;
use super::*;
use std::io::Write;

fn p() -> &'static Path {
    Path::new("/etc/i.toml")
}

fn parse_err(text: &str) -> String {
    Config::parse(text, p())
        .expect_err("should fail")
        .to_string()
}

fn target(s: &str) -> TargetName {
    TargetName::parse(s).expect("valid target")
}

const FULL: &str = r#"
label_table = "/etc/iscsimple/labels.conf"
state_dir = "/var/lib/x"
run_dir = "/run/x"

[discovery]
portals = ["192.0.2.10", "192.0.2.11:3261", "[2001:db8::1]:3262", "[2001:db8::2]", "san.example.com"]

[timeouts]
login = 5
device = 6
command = 7
lock = 8

[md]
sync_speed_min = 1000
sync_speed_max = 200000

[[chap]]
target = "IQN.2014-06.fr.example:my-vm-sn-1"
username = "u"
password = "secret-secret"
username_in = "t"
password_in_file = "/etc/iscsimple/secret-in"

[[chap]]
target = "*"
username = "any"
password_file = "/etc/iscsimple/secret"
"#;

#[test]
fn empty_text_gives_defaults() {
    let c = Config::parse("", p()).expect("valid");
    assert_eq!(
        c,
        Config {
            path: Some(p().to_owned()),
            ..Config::default()
        }
    );
    assert_eq!(c.timeouts.login, Duration::from_secs(15));
    assert_eq!(c.timeouts.device, Duration::from_secs(10));
    assert_eq!(c.label_table, Path::new(DEFAULT_LABEL_TABLE));
    assert_eq!(c.md, MdTuning::default());
}

#[test]
fn full_example_parses() {
    let c = Config::parse(FULL, p()).expect("valid");
    assert_eq!(c.label_table, Path::new("/etc/iscsimple/labels.conf"));
    assert_eq!(c.run_dir, Path::new("/run/x"));
    let shown: Vec<String> = c
        .discovery
        .portals
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        shown,
        [
            "192.0.2.10:3260",
            "192.0.2.11:3261",
            "[2001:db8::1]:3262",
            "[2001:db8::2]:3260",
            "san.example.com:3260"
        ]
    );
    assert_eq!(c.timeouts.lock, Duration::from_secs(8));
    assert_eq!(c.md.sync_speed_max, Some(200_000));
    assert_eq!(c.chap.len(), 2);
    assert_eq!(
        c.chap[0].target,
        ChapTarget::Name(target("iqn.2014-06.fr.example:my-vm-sn-1"))
    );
    assert_eq!(c.chap[0].line, 20);
    assert_eq!(
        c.chap[0].mutual,
        Some(ChapUser {
            username: "t".into(),
            password: SecretSource::File("/etc/iscsimple/secret-in".into())
        })
    );
    assert_eq!(c.chap[1].target, ChapTarget::Any);
}

#[test]
fn shipped_example_parses_commented_and_uncommented() {
    let text = include_str!("../../etc/iscsimple.toml");
    assert_eq!(
        Config::parse(text, p()).expect("as shipped"),
        Config {
            path: Some(p().to_owned()),
            ..Config::default()
        }
    );
    // Settings are commented out as "#key" (prose uses "# "): enabling
    // them all must still give a valid file.
    let enabled: String = text
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if !rest.is_empty() && !rest.starts_with([' ', '#']) => rest,
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let c = Config::parse(&enabled, p()).expect("uncommented");
    assert!(!c.chap.is_empty());
    assert!(!c.discovery.portals.is_empty());
    assert_eq!(c.targets.len(), 1);
}

#[test]
fn target_portals() {
    let c = Config::parse(
        r#"
[[target]]
name = "IQN.2014-06.fr.example:A"
portals = ["192.0.2.10", "[2001:db8::1]:3261"]
"#,
        p(),
    )
    .expect("valid");
    let a = target("iqn.2014-06.fr.example:a");
    let shown: Vec<String> = c
        .portals_for(&a)
        .expect("listed")
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(shown, ["192.0.2.10:3260", "[2001:db8::1]:3261"]);
    assert!(c.portals_for(&target("iqn.2014-06.fr.example:b")).is_none());

    let e = Config::parse(
        r#"
[[target]]
name = "iqn.2014-06.fr.example:a"
portals = ["filer.example", "192.0.2.10", "192.0.2.10:3260"]
[[target]]
name = "iqn.2014-06.fr.example:a"
portals = ["192.0.2.11"]
[[target]]
name = "iqn.2014-06.fr.example:b"
portals = []
[[target]]
name = "bad"
portals = ["192.0.2.12"]
"#,
        p(),
    )
    .expect_err("invalid");
    let shown: Vec<String> = e.problems().iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "/etc/i.toml:4:12: portal \"filer.example\": an IP address is needed here (sessions are matched by address)",
            "/etc/i.toml:4:43: portal \"192.0.2.10:3260\" listed twice",
            "/etc/i.toml:6:8: duplicate [[target]] entry for iqn.2014-06.fr.example:a (first on line 3)",
            "/etc/i.toml:10:11: [[target]] iqn.2014-06.fr.example:b: portals is empty",
            "/etc/i.toml:12:8: target name: invalid target name \"bad\": at byte 0: unknown name type (expected iqn., eui., naa. or MISSING)",
        ][..],
        "{shown:#?}"
    );
}

#[test]
fn cluster_section() {
    let c = Config::parse(
        "[cluster]\nstore = \"local\"\nhost_id = \"host-a\"\nonly_user = true\n",
        p(),
    )
    .expect("valid");
    assert_eq!(
        c.cluster,
        Cluster {
            store: ClusterStore::Local,
            host_id: Some("host-a".into()),
            only_user: true,
            ..Cluster::default()
        }
    );
    let c = Config::parse(
        "[cluster]\nstore = \"etcd\"\nendpoints = [\"http://10.0.0.1:2379/\", \"http://10.0.0.2:2379\"]\nlease_ttl = 9\non_unreachable = \"local\"\n",
        p(),
    )
    .expect("valid");
    assert_eq!(c.cluster.store, ClusterStore::Etcd);
    assert_eq!(
        c.cluster.endpoints,
        ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
    );
    assert_eq!(c.cluster.lease_ttl, Duration::from_secs(9));
    assert_eq!(c.cluster.on_unreachable, OnUnreachable::Local);
    let e = parse_err("[cluster]\nstore = \"etcd\"\n");
    assert!(
        e.contains("2:9: cluster.store = \"etcd\" needs cluster.endpoints"),
        "{e}"
    );
    let e = parse_err("[cluster]\nstore = \"etcd\"\nendpoints = [\"10.0.0.1:2379\"]\n");
    assert!(
        e.contains("3:14: cluster.endpoints: \"10.0.0.1:2379\" is not an http://HOST:PORT"),
        "{e}"
    );
    // TLS: a CA for https://, a client certificate with its key.
    let tls = "[cluster]\nstore = \"etcd\"\nendpoints = [\"https://10.0.0.1:2379\"]\n";
    let c = Config::parse(
        &format!("{tls}ca_file = \"/etc/etcd/ca.pem\"\ncert_file = \"/etc/etcd/h.pem\"\nkey_file = \"/etc/etcd/h.key\"\n"),
        p(),
    )
    .expect("valid");
    assert_eq!(
        c.cluster.tls,
        Some(EtcdTls {
            ca: "/etc/etcd/ca.pem".into(),
            client: Some(("/etc/etcd/h.pem".into(), "/etc/etcd/h.key".into())),
        })
    );
    let e = parse_err(tls);
    assert!(
        e.contains("2:9: cluster.endpoints: https:// needs cluster.ca_file"),
        "{e}"
    );
    let e = parse_err(&format!("{tls}ca_file = \"/ca\"\ncert_file = \"/c\"\n"));
    assert!(
        e.contains("5:13: cluster.cert_file and cluster.key_file go together"),
        "{e}"
    );
    let e = parse_err(&format!("{tls}ca_file = \"ca.pem\"\n"));
    assert!(
        e.contains("4:11: cluster.ca_file \"ca.pem\" is not an absolute path"),
        "{e}"
    );
    let e = parse_err("[cluster]\nstore = \"etcd\"\nendpoints = [\"https://a:1\", \"http://b:1\"]\nca_file = \"/ca\"\n");
    assert!(e.contains("all https:// or all http://"), "{e}");
    let e =
        parse_err("[cluster]\nstore = \"etcd\"\nendpoints = [\"http://a:1\"]\nca_file = \"/ca\"\n");
    assert!(
        e.contains("4:11: cluster.ca_file, cert_file and key_file are for https://"),
        "{e}"
    );
    let e = parse_err("[cluster]\nlease_ttl = 1\n");
    assert!(e.contains("2:13: cluster.lease_ttl = 1"), "{e}");
    let e = parse_err("[cluster]\non_unreachable = \"go\"\n");
    assert!(e.contains("2:18: cluster.on_unreachable"), "{e}");
    assert!(!Config::default().cluster.only_user);
    let e = parse_err("[cluster]\nstore = \"etcd3\"\n");
    assert!(e.contains("2:9: cluster.store = \"etcd3\""), "{e}");
    let e = parse_err("[cluster]\nhost_id = \"a b\"\n");
    assert!(e.contains("2:11: cluster.host_id"), "{e}");
}

#[test]
fn unknown_key_is_rejected_with_line() {
    assert_eq!(
            parse_err("[timeouts]\nlogin = 5\nlogn = 3\n"),
            "/etc/i.toml:3:1: unknown field `logn`, expected one of `login`, `device`, `command`, `lock`, `replacement`, `noop_interval`, `noop_timeout`, `watch`, `hotplug`, `heal`"
        );
    let e = parse_err("label_tabel = \"/x\"\n");
    assert!(
        e.starts_with("/etc/i.toml:1:1: unknown field `label_tabel`"),
        "{e}"
    );
    let e = parse_err("[timeouts]\nlogin = \"5\"\n");
    assert!(e.starts_with("/etc/i.toml:2:9: invalid type"), "{e}");
    let e = parse_err("[timeouts]\nlogin = -1\n");
    assert!(e.starts_with("/etc/i.toml:2:9: "), "{e}");
    let e = parse_err("a = [\n");
    assert!(e.starts_with("/etc/i.toml:"), "{e}");
    assert!(!e.contains('\n'));
}

#[test]
fn bad_values_are_rejected_with_position() {
    let cases = [
            (
                "[discovery]\nportals = [\"192.0.2.1:0\"]\n",
                r#"/etc/i.toml:2:12: portal "192.0.2.1:0": bad port "0" (expected 1-65535)"#,
            ),
            (
                "[discovery]\nportals = [\"a\", \"2001:db8::1\"]\n",
                r#"/etc/i.toml:2:17: portal "2001:db8::1": IPv6 addresses need brackets (expected [addr]:port)"#,
            ),
            (
                "[discovery]\nportals = [\"[2001:db8::1\"]\n",
                r#"/etc/i.toml:2:12: portal "[2001:db8::1": missing ']' after IPv6 address (expected [addr]:port)"#,
            ),
            (
                "[discovery]\nportals = [\"300.1.1.1\"]\n",
                r#"/etc/i.toml:2:12: portal "300.1.1.1": bad IPv4 address"#,
            ),
            (
                "[discovery]\nportals = [\"bad_host:3260\"]\n",
                r#"/etc/i.toml:2:12: portal "bad_host:3260": bad host name (expected host[:port], a.b.c.d[:port] or [v6]:port)"#,
            ),
            (
                "[discovery]\nportals = [\"h:99999\"]\n",
                r#"/etc/i.toml:2:12: portal "h:99999": bad port "99999" (expected 1-65535)"#,
            ),
            (
                "[timeouts]\ndevice = 0\n",
                "/etc/i.toml:2:10: timeouts.device = 0 (expected seconds, 1..=86400)",
            ),
            (
                "run_dir = \"run\"\n",
                r#"/etc/i.toml:1:11: run_dir "run" is not an absolute path"#,
            ),
            (
                "[md]\nsync_speed_min = 10\nsync_speed_max = 5\n",
                "/etc/i.toml:2:18: md.sync_speed_min = 10 is above md.sync_speed_max = 5",
            ),
            (
                "[[chap]]\ntarget = \"iqn.x\"\nusername = \"u\"\npassword = \"p\"\n",
                r#"/etc/i.toml:2:10: chap target: invalid target name "iqn.x": at byte 4: bad date in iqn. name (expected iqn.YYYY-MM. with month 01-12) (or "*")"#,
            ),
            (
                "[[chap]]\ntarget = \"*\"\nusername = \"u\"\npassword = \"p\"\npassword_file = \"/s\"\n",
                "/etc/i.toml:5:17: password and password_file are both set (expected one)",
            ),
            (
                "[[chap]]\ntarget = \"*\"\nusername = \"u\"\n",
                "/etc/i.toml:3:12: username has no password or password_file (expected one)",
            ),
            (
                "[[chap]]\ntarget = \"*\"\nusername = \"u\"\npassword = \"\"\n",
                "/etc/i.toml:4:12: password is empty",
            ),
            (
                "[[chap]]\ntarget = \"*\"\nusername = \"u\"\npassword = \"a\\nb\"\n",
                "/etc/i.toml:4:12: password contains a newline",
            ),
            (
                "[[chap]]\ntarget = \"*\"\nusername = \"u\"\npassword_file = \"s\"\n",
                r#"/etc/i.toml:4:17: password_file "s" is not an absolute path"#,
            ),
            (
                "[[chap]]\ntarget = \"*\"\nusername = \"u\"\npassword = \"p\"\npassword_in = \"q\"\n",
                "/etc/i.toml:2:10: [[chap]] has password_in but no username_in (expected both or neither)",
            ),
            (
                "[[chap]]\ntarget = \"*\"\nusername = \"u\"\npassword = \"p\"\nusername_in = \"t\"\n",
                "/etc/i.toml:5:15: username_in has no password_in or password_in_file (expected one)",
            ),
            (
                "[[chap]]\ntarget = \"*\"\npassword = \"p\"\n",
                "/etc/i.toml:1:1: missing field `username`",
            ),
        ];
    for (text, expected) in cases {
        assert_eq!(parse_err(text), expected, "{text}");
    }
    let long = format!(
        "[[chap]]\ntarget = \"*\"\nusername = \"u\"\npassword = \"{}\"\n",
        "x".repeat(256)
    );
    assert_eq!(
        parse_err(&long),
        "/etc/i.toml:4:12: password is longer than 255 bytes"
    );
}

#[test]
fn duplicate_chap_entries_are_rejected() {
    let text = r#"
[[chap]]
target = "iqn.2014-06.fr.example:a"
username = "u"
password = "p"
[[chap]]
target = "IQN.2014-06.FR.EXAMPLE:A"
username = "u"
password = "p"
[[chap]]
target = "*"
username = "u"
password = "p"
[[chap]]
target = "*"
username = "u"
password = "p"
"#;
    let e = Config::parse(text, p()).expect_err("duplicates");
    let shown: Vec<String> = e.problems().iter().map(ToString::to_string).collect();
    assert_eq!(
            shown,
            [
                "/etc/i.toml:7:10: duplicate [[chap]] entry for target iqn.2014-06.fr.example:a (first on line 3)",
                "/etc/i.toml:15:10: duplicate [[chap]] entry for target * (first on line 11)",
            ]
        );
    assert!(e
        .to_string()
        .starts_with("/etc/i.toml: 2 problems; first: /etc/i.toml:7:10: "));
}

#[test]
fn exact_chap_entry_wins_over_wildcard() {
    let text = r#"
[[chap]]
target = "*"
username = "any"
password = "p-any"
[[chap]]
target = "eui.02004567A425678D"
username = "exact"
password = "p-exact"
username_in = "tgt"
password_in = "p-in"
"#;
    let c = Config::parse(text, p()).expect("valid");
    let exact = c
        .chap_for(&target("eui.02004567a425678d"))
        .expect("inline")
        .expect("entry");
    assert_eq!(exact.credentials.username, "exact");
    assert_eq!(exact.credentials.password.expose(), "p-exact");
    let mutual = exact.mutual.expect("mutual");
    assert_eq!(
        (mutual.username.as_str(), mutual.password.expose()),
        ("tgt", "p-in")
    );
    let any = c
        .chap_for(&target("naa.52004567ba64678d"))
        .expect("inline")
        .expect("entry");
    assert_eq!(any.credentials.username, "any");
    assert!(any.mutual.is_none());

    let none = Config::parse("", p()).expect("valid");
    assert!(none
        .chap_for(&target("naa.52004567ba64678d"))
        .expect("ok")
        .is_none());
}

fn secret_file(dir: &Path, name: &str, body: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    let mut f = File::create(&path).expect("create");
    f.write_all(body.as_bytes()).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path
}

fn entry(path: &Path) -> ChapEntry {
    ChapEntry {
        target: ChapTarget::Any,
        user: ChapUser {
            username: "u".into(),
            password: SecretSource::File(path.to_owned()),
        },
        mutual: None,
        line: 1,
    }
}

#[test]
fn password_files_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let me = nix::unistd::geteuid().as_raw();

    let good = secret_file(dir.path(), "good", "s3cret\r\nignored\n", 0o600);
    let chap = entry(&good).resolve_as(me).expect("good file");
    assert_eq!(chap.credentials.password.expose(), "s3cret");
    assert_eq!(entry(&good).resolve().expect("geteuid"), chap);

    let e = entry(&good).resolve_as(me + 1).expect_err("owner");
    assert_eq!(
        e.to_string(),
        format!(
            "password file {0}: owned by uid {me} (expected uid {1}); run chown {1} {0}",
            good.display(),
            me + 1
        )
    );

    let open = secret_file(dir.path(), "open", "s3cret\n", 0o640);
    let e = entry(&open).resolve_as(me).expect_err("mode");
    assert_eq!(
            e.to_string(),
            format!(
                "password file {0}: mode 0640 gives group/other access (expected 0600 or stricter); run chmod 600 {0}",
                open.display()
            )
        );

    let empty = secret_file(dir.path(), "empty", "\nsecond\n", 0o400);
    let e = entry(&empty).resolve_as(me).expect_err("empty");
    assert_eq!(
        e.to_string(),
        format!("password file {}: first line is empty", empty.display())
    );

    let e = entry(dir.path()).resolve_as(me).expect_err("dir");
    assert!(matches!(e, ConfigError::SecretNotRegular { .. }), "{e}");

    // A FIFO is refused without blocking on open.
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let e = entry(&fifo).resolve_as(me).expect_err("fifo");
    assert!(matches!(e, ConfigError::SecretNotRegular { .. }), "{e}");

    let missing = dir.path().join("missing");
    let e = entry(&missing).resolve_as(me).expect_err("missing");
    assert!(
        e.to_string().starts_with(&format!(
            "password file {}: cannot read: ",
            missing.display()
        )),
        "{e}"
    );
}

#[test]
fn load_handles_missing_and_insecure_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("none.toml");
    let e = Config::load(Some(&missing)).expect_err("explicit missing");
    assert_eq!(
        e.to_string(),
        format!("config {}: not found", missing.display())
    );
    assert_eq!(
        Config::load_from(&missing, false).expect("default missing"),
        Config::default()
    );

    let inline = "[[chap]]\ntarget = \"*\"\nusername = \"u\"\npassword = \"p\"\n";
    let cfg = secret_file(dir.path(), "c.toml", inline, 0o644);
    let e = Config::load(Some(&cfg)).expect_err("insecure");
    assert_eq!(
            e.to_string(),
            format!(
                "config {0}: holds an inline CHAP password but mode is 0644 (group/other access); run chmod 600 {0} or use password_file",
                cfg.display()
            )
        );
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let c = Config::load(Some(&cfg)).expect("secure");
    assert_eq!(c.path.as_deref(), Some(cfg.as_path()));

    // Without inline secrets a world-readable config is fine.
    let plain = secret_file(dir.path(), "p.toml", "[timeouts]\nlock = 3\n", 0o644);
    assert_eq!(
        Config::load(Some(&plain)).expect("plain").timeouts.lock,
        Duration::from_secs(3)
    );
}

#[test]
fn secrets_never_print() {
    let c = Config::parse(FULL, p()).expect("valid");
    let debug = format!("{c:?}");
    assert!(!debug.contains("secret-secret"), "{debug}");
    assert!(debug.contains("<redacted>"));
    let chap = c.chap[0].resolve_as(0).ok();
    assert!(chap.is_none(), "password_in_file does not exist here");
    let s = Secret::from("hunter2".to_owned());
    assert_eq!(format!("{s}"), "<redacted>");
    assert_eq!(format!("{s:?}"), "<redacted>");
    assert_eq!(
        format!("{:?}", SecretSource::Inline(s.clone())),
        "Inline(<redacted>)"
    );
    assert_eq!(s.expose(), "hunter2");
}

#[test]
fn a_password_of_the_wrong_type_is_not_echoed() {
    // serde quotes the value of an invalid type: an unquoted numeric
    // password would land in the error line, stderr and the journal.
    for value in ["12345678901", "3.14159265", "true", "1979-05-27"] {
        for key in ["password", "password_in"] {
            let text = format!(
                    "[[chap]]\ntarget = \"*\"\nusername = \"u\"\nusername_in = \"t\"\n{key} = {value}\n"
                );
            let e = parse_err(&text);
            assert!(!e.contains(value), "{e}");
            assert!(e.contains(&format!("{key} must be a quoted string")), "{e}");
            assert!(e.starts_with("/etc/i.toml:5:"), "{e}");
        }
    }
    let e = parse_err("chap = [{ target = \"*\", username = \"u\", password = 12345678901 }]\n");
    assert!(!e.contains("12345678901"), "{e}");
    // Other keys keep serde's message, value included.
    let e = parse_err("[timeouts]\nlogin = true\n");
    assert!(e.contains("invalid type: boolean `true`"), "{e}");
}

#[test]
fn line_col_counts_characters() {
    assert_eq!(line_col("", 0), (1, 1));
    assert_eq!(line_col("ab\ncd", 4), (2, 2));
    assert_eq!(line_col("é = 1", 2), (1, 2));
    assert_eq!(line_col("ab", 99), (1, 3));
}
