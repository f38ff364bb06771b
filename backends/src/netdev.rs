//! The `-netdev` specification: QEMU's option names and rules, parsed into typed specs.
//!
//! One parser serves the command line (`-netdev`, keyval text) and QMP `netdev_add` (JSON
//! arguments, nested addresses flattened to the same dotted keys), so an operator's existing
//! `-netdev tap,id=n0,ifname=tap0` works unchanged in both. Nothing stringly-typed leaves this
//! module: every option is checked here against its kind's schema, and every error names the
//! offender and what would have been accepted. This module owns the spec types and the two
//! entry points; the syntax is `keyval`'s, the tables are `schema`'s, and each kind's options
//! are built by `tapopts` or `crate::kinds`.

mod keyval;
mod schema;
mod tapopts;

pub use keyval::split_keyval;
pub use schema::SUPPORTED_KINDS;
pub use tapopts::{Script, TapOptions};

pub(crate) use keyval::{Opts, Source};

use crate::kinds::{self, L2tpv3Options, SocketMode};
use keyval::{flatten, split_keyval_with, typed, Raw, Ty, Typed};
use ringswitch_switch::{MacAddr, RxFilter};
use schema::{Schema, COMMON_OPTIONS};
use serde_json::{Map, Value};
use std::fmt;

/// A netdev's id (QEMU's identifier rules: a letter, then letters, digits, '-', '.', '_').
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetdevId(String);

impl NetdevId {
    pub fn new(s: &str) -> Result<NetdevId, NetdevError> {
        let mut chars = s.chars();
        let ok = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
            && s.len() <= 128;
        if ok {
            Ok(NetdevId(s.to_string()))
        } else {
            Err(NetdevError::BadId(s.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NetdevId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The kind of a netdev and its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetdevKind {
    Tap(TapOptions),
    Socket(SocketMode),
    Stream(SocketMode),
    Dgram(SocketMode),
    L2tpv3(L2tpv3Options),
    /// A tap that ringswitch attaches to the Linux bridge `br` (and sets up).
    Bridge {
        br: String,
        vnet_hdr: bool,
    },
    /// Places the netdev `netdev` in bridge domain `hubid` (without one there is nothing to
    /// place, which the controller refuses).
    HubPort {
        hubid: u16,
        netdev: Option<NetdevId>,
    },
    /// A QEMU guest's virtio-net device served over shared memory (ringswitch is the
    /// vhost-user backend), through the socket of chardev `chardev`.
    VhostUser {
        chardev: String,
        queues: u16,
    },
    /// A port of a running vde_switch (ringswitch plugs in as libvdeplug does).
    Vde(crate::vde::VdeOptions),
    /// A vde client plugged into ringswitch's own vde service (`--vde-serve DIR`) as port
    /// `port` of `dir`. Made by the service, never parsed from a spec.
    VdeServed {
        dir: std::path::PathBuf,
        port: u32,
    },
    /// A virtual router with DHCP, DNS forwarding and NAT to the host (libslirp).
    User(Box<crate::user::UserOptions>),
}

impl NetdevKind {
    pub fn name(&self) -> &'static str {
        match self {
            NetdevKind::Tap(_) => "tap",
            NetdevKind::Socket(_) => "socket",
            NetdevKind::Stream(_) => "stream",
            NetdevKind::Dgram(_) => "dgram",
            NetdevKind::L2tpv3(_) => "l2tpv3",
            NetdevKind::Bridge { .. } => "bridge",
            NetdevKind::HubPort { .. } => "hubport",
            NetdevKind::VhostUser { .. } => "vhost-user",
            NetdevKind::Vde(_) => "vde",
            NetdevKind::VdeServed { .. } => "vde-served",
            NetdevKind::User(_) => "user",
        }
    }
}

/// Where a port's rx-filter comes from when it follows a QEMU NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowSpec {
    /// QEMU's QMP socket (a unix socket path, `-qmp unix:PATH,server=on`).
    pub qmp: std::path::PathBuf,
    /// The NIC's id in that QEMU (`-device virtio-net-pci,id=ID`).
    pub nic: String,
}

/// A parsed `-netdev` (or `netdev_add`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetdevSpec {
    pub id: NetdevId,
    pub kind: NetdevKind,
    /// The station behind the port, if the operator named one.
    pub macaddr: Option<MacAddr>,
    /// The worker to serve the port (`worker=N`, a ringswitch extension), if the operator
    /// named one; whether it exists is the controller's to check.
    pub worker: Option<u8>,
    /// What the station behind the port accepts from the start (`rx-filter=`, a ringswitch
    /// extension: an RxFilterInfo object, from a file or inline in JSON), as given; None:
    /// promiscuous. QEMU's table capacity is applied when the port is added.
    pub rx_filter: Option<RxFilter>,
    /// A QEMU NIC whose rx-filter the port follows (`rx-filter-qmp=PATH,rx-filter-nic=ID`,
    /// a ringswitch extension): that QEMU's QMP socket and the NIC's id there.
    pub follow: Option<FollowSpec>,
    /// The options as given (without `type` and `id`), for listings.
    pub options: Vec<(String, String)>,
}

impl NetdevSpec {
    /// Whether this spec asks for a script to run (which needs the operator's opt-in).
    pub fn wants_scripts(&self) -> bool {
        match &self.kind {
            NetdevKind::Tap(t) => t.script != Script::None || t.downscript != Script::None,
            _ => false,
        }
    }

    /// The descriptor number this spec takes over from the parent process — tap `fd=N`,
    /// socket `fd=N`, or a stream/dgram address `type=fd,str=N` — or None for a port that
    /// opens its own kernel object. Opening the port takes ownership of that descriptor, so
    /// two ports naming the same number cannot both be served.
    pub fn inherited_fd(&self) -> Option<i32> {
        match &self.kind {
            NetdevKind::Tap(t) => t.fd,
            NetdevKind::Socket(m) | NetdevKind::Stream(m) | NetdevKind::Dgram(m) => match m {
                SocketMode::Fd(fd) => Some(*fd),
                SocketMode::Listen(_)
                | SocketMode::Connect { .. }
                | SocketMode::Udp { .. }
                | SocketMode::UnixDgram { .. }
                | SocketMode::Mcast { .. } => None,
            },
            NetdevKind::L2tpv3(_)
            | NetdevKind::Bridge { .. }
            | NetdevKind::HubPort { .. }
            | NetdevKind::VhostUser { .. }
            | NetdevKind::Vde(_)
            | NetdevKind::VdeServed { .. } => None,
            NetdevKind::User(_) => None,
        }
    }
}

/// Why a `-netdev` string or `netdev_add` was refused. The texts follow QEMU's where QEMU has
/// one, and name the offender and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetdevError {
    #[error("empty netdev specification; expected e.g. tap,id=n0,ifname=tap0")]
    Empty,
    #[error("Parameter 'type' is missing; valid types: {valid}", valid = SUPPORTED_KINDS.join(", "))]
    MissingType,
    #[error("Parameter 'type' does not accept value '{0}'; valid types: {valid}", valid = SUPPORTED_KINDS.join(", "))]
    UnknownType(String),
    #[error("netdev type '{0}' is not supported by this ringswitch yet; supported: {valid}", valid = SUPPORTED_KINDS.join(", "))]
    UnsupportedType(String),
    #[error("Parameter 'id' is missing")]
    MissingId,
    #[error("Parameter 'id' expects an identifier (a letter, then letters, digits, '-', '.', '_'), got '{0}'")]
    BadId(String),
    #[error("Expected '=' after parameter '{0}'")]
    ExpectedEquals(String),
    #[error("Parameter '{0}' is given twice")]
    Duplicate(String),
    #[error("Parameter '{option}' is unexpected; valid for netdev type '{kind}': {valid}")]
    UnknownOption {
        kind: &'static str,
        option: String,
        valid: String,
    },
    #[error("Parameter '{option}' of netdev type '{kind}' is not supported: {why}")]
    Unsupported {
        kind: &'static str,
        option: String,
        why: &'static str,
    },
    #[error("Invalid parameter type for '{option}', expected: {expected}")]
    WrongType {
        option: String,
        expected: &'static str,
    },
    #[error("Parameter '{option}' expects {expected}, got '{value}'")]
    BadValue {
        option: String,
        expected: &'static str,
        value: String,
    },
    #[error("ifname= and fd= cannot be combined: fd= is already attached to its tap")]
    IfnameWithFd,
    #[error("Parameter '{option}' is only accepted on the command line (descriptor passing over QMP is not supported)")]
    FdOverQmp { option: String },
    #[error("{0}")]
    Ifname(String),
    #[error("Parameter '{0}' is missing")]
    Missing(String),
    #[error("{0}")]
    Invalid(String),
    #[error("Parameter '{option}': {why}")]
    Address { option: String, why: String },
}

/// Checks every option against the kind's schema and builds the spec.
fn build(
    ty: &str,
    id: NetdevId,
    opts: Vec<(String, Raw)>,
    source: Source,
    mut rx_filter: Option<RxFilter>,
) -> Result<NetdevSpec, NetdevError> {
    let schema = Schema::of(ty)?;
    let mut kind_opts = Vec::new();
    let mut shown = Vec::new();
    let mut macaddr = None;
    let mut worker = None;
    let (mut follow_qmp, mut follow_nic) = (None, None);
    if rx_filter.is_some() {
        shown.push(("rx-filter".into(), "inline".into()));
    }
    for (k, raw) in opts {
        if let Some((_, t)) = COMMON_OPTIONS.iter().find(|(n, _)| *n == k) {
            let v = typed(&k, *t, raw)?.into_string();
            if k == "rx-filter" {
                let info = crate::rxfilter::rx_filter_from_file(std::path::Path::new(&v)).map_err(
                    |e| NetdevError::Address {
                        option: k.clone(),
                        why: e.to_string(),
                    },
                )?;
                rx_filter = Some(info.filter);
                shown.push((k, v));
                continue;
            }
            if k == "rx-filter-qmp" || k == "rx-filter-nic" {
                if v.is_empty() {
                    return Err(NetdevError::BadValue {
                        option: k.clone(),
                        expected: if k == "rx-filter-qmp" {
                            "the path of a QEMU's QMP unix socket"
                        } else {
                            "the id of a NIC in that QEMU"
                        },
                        value: v,
                    });
                }
                if k == "rx-filter-qmp" {
                    follow_qmp = Some(v.clone());
                } else {
                    follow_nic = Some(v.clone());
                }
                shown.push((k, v));
                continue;
            }
            if k == "worker" {
                worker = Some(v.parse::<u8>().ok().filter(|w| *w < 64).ok_or_else(|| {
                    NetdevError::BadValue {
                        option: k.clone(),
                        expected: "a worker number, 0 to 63 (query-workers lists them)",
                        value: v.clone(),
                    }
                })?);
                shown.push((k, v));
                continue;
            }
            macaddr = Some(
                v.parse::<MacAddr>()
                    .ok()
                    .filter(|m| m.is_unicast())
                    .ok_or_else(|| NetdevError::BadValue {
                        option: k.clone(),
                        expected: "a unicast MAC address such as 52:54:00:12:34:56",
                        value: v.clone(),
                    })?,
            );
            shown.push((k, v));
            continue;
        }
        let Some(t) = schema.ty(&k) else {
            if let Some(why) = schema.refusal(&k) {
                return Err(NetdevError::Unsupported {
                    kind: schema.kind,
                    option: k,
                    why,
                });
            }
            return Err(NetdevError::UnknownOption {
                kind: schema.kind,
                option: k,
                valid: schema.valid(),
            });
        };
        let v = typed(&k, t, raw)?;
        // A list option: shown once per element (as the command line repeats it), and one
        // list, in order, however often it was given.
        if let Typed::List(more) = &v {
            shown.extend(more.iter().map(|e| (k.clone(), e.clone())));
            if let Some((_, Typed::List(l))) = kind_opts.iter_mut().find(|(n, _)| *n == k) {
                l.extend(more.iter().cloned());
                continue;
            }
            kind_opts.push((k, v));
            continue;
        }
        shown.push((k.clone(), v.clone().into_string()));
        kind_opts.push((k, v));
    }
    let mut o = Opts::new(kind_opts);
    let kind = match schema.kind {
        "tap" => NetdevKind::Tap(tapopts::tap(&mut o, source)?),
        "socket" => NetdevKind::Socket(kinds::socket(&mut o, source)?),
        "stream" => NetdevKind::Stream(kinds::stream(&mut o, source)?),
        "dgram" => NetdevKind::Dgram(kinds::dgram(&mut o, source)?),
        "l2tpv3" => NetdevKind::L2tpv3(kinds::l2tpv3(&mut o)?),
        "bridge" => NetdevKind::Bridge {
            br: kinds::bridge(&mut o)?,
            vnet_hdr: o.bool("vnet_hdr").unwrap_or(false),
        },
        "hubport" => {
            let (hubid, netdev) = kinds::hubport(&mut o)?;
            NetdevKind::HubPort { hubid, netdev }
        }
        "vhost-user" => {
            let (chardev, queues) = kinds::vhost_user(&mut o)?;
            NetdevKind::VhostUser { chardev, queues }
        }
        "vde" => NetdevKind::Vde(kinds::vde(&mut o)?),
        "user" => NetdevKind::User(Box::new(crate::user::UserOptions::build(&mut o)?)),
        other => unreachable!("kind {other} has a schema but no builder"),
    };
    let follow = match (follow_qmp, follow_nic) {
        (Some(qmp), Some(nic)) => Some(FollowSpec {
            qmp: qmp.into(),
            nic,
        }),
        (None, None) => None,
        (Some(_), None) => return Err(NetdevError::Missing("rx-filter-nic".into())),
        (None, Some(_)) => return Err(NetdevError::Missing("rx-filter-qmp".into())),
    };
    Ok(NetdevSpec {
        id,
        kind,
        macaddr,
        worker,
        rx_filter,
        follow,
        options: shown,
    })
}

/// Parses one `-netdev` argument such as `tap,id=n0,ifname=tap0`.
pub fn parse_netdev(s: &str) -> Result<NetdevSpec, NetdevError> {
    if s.trim().is_empty() {
        return Err(NetdevError::Empty);
    }
    // List options (`hostfwd=` of a user port) may repeat; any other key may not.
    let mut opts = split_keyval_with(s, "type", |_| true)?;
    let kind = opts
        .iter()
        .find(|(k, _)| k == "type")
        .and_then(|(_, t)| Schema::of(t).ok());
    for (i, (k, _)) in opts.iter().enumerate() {
        let list = kind
            .as_ref()
            .is_some_and(|sc| sc.ty(k) == Some(Ty::StrList));
        if !list && opts[..i].iter().any(|(o, _)| o == k) {
            return Err(NetdevError::Duplicate(k.clone()));
        }
    }
    let ty = match opts.iter().position(|(k, _)| k == "type") {
        Some(i) => opts.remove(i).1,
        None => return Err(NetdevError::MissingType),
    };
    if ty.is_empty() {
        return Err(NetdevError::MissingType);
    }
    let id = match opts.iter().position(|(k, _)| k == "id") {
        Some(i) => NetdevId::new(&opts.remove(i).1)?,
        None => return Err(NetdevError::MissingId),
    };
    let raw = opts.into_iter().map(|(k, v)| (k, Raw::Text(v))).collect();
    build(&ty, id, raw, Source::CommandLine, None)
}

/// Parses `netdev_add`'s flat arguments (`{"type": "tap", "id": "n0", "ifname": "t0"}`), with
/// QMP's typing: a value of the wrong JSON type is refused, naming the parameter.
pub fn netdev_from_qmp(args: &Map<String, Value>) -> Result<NetdevSpec, NetdevError> {
    let str_arg = |name: &str| -> Result<Option<String>, NetdevError> {
        match args.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(NetdevError::WrongType {
                option: name.into(),
                expected: "string",
            }),
        }
    };
    let ty = str_arg("type")?.ok_or(NetdevError::MissingType)?;
    let id = NetdevId::new(&str_arg("id")?.ok_or(NetdevError::MissingId)?)?;
    let mut raw = Vec::new();
    let mut rx_filter = None;
    for (k, v) in args.iter().filter(|(k, _)| *k != "type" && *k != "id") {
        if let ("rx-filter", Value::Object(m)) = (k.as_str(), v) {
            // Inline: the object itself, its `name` optional.
            let info = crate::rxfilter::rx_filter_from_json(m, crate::rxfilter::Name::Optional)
                .map_err(|e| NetdevError::Address {
                    option: k.clone(),
                    why: e.to_string(),
                })?;
            rx_filter = Some(info.filter);
            continue;
        }
        flatten(k, v, &mut raw, 0)?;
    }
    build(&ty, id, raw, Source::Qmp, rx_filter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_error_names_the_offender() {
        let cases: &[(&str, NetdevError)] = &[
            ("", NetdevError::Empty),
            ("id=a", NetdevError::MissingType),
            ("type=,id=a", NetdevError::MissingType),
            ("bogus,id=a", NetdevError::UnknownType("bogus".into())),
            ("netmap,id=a", NetdevError::UnsupportedType("netmap".into())),
            ("tap", NetdevError::MissingId),
            ("tap,id=1a", NetdevError::BadId("1a".into())),
            ("tap,id=a b", NetdevError::BadId("a b".into())),
            (
                "tap,id=a,ifname",
                NetdevError::ExpectedEquals("ifname".into()),
            ),
            ("tap,id=a,id=b", NetdevError::Duplicate("id".into())),
            (
                "tap,id=a,ifname=x,ifname=y",
                NetdevError::Duplicate("ifname".into()),
            ),
            (
                "tap,id=a,fd=x",
                NetdevError::BadValue {
                    option: "fd".into(),
                    expected: "a file descriptor number",
                    value: "x".into(),
                },
            ),
            (
                "tap,id=a,fd=-1",
                NetdevError::BadValue {
                    option: "fd".into(),
                    expected: "a file descriptor number",
                    value: "-1".into(),
                },
            ),
            ("tap,id=a,ifname=t,fd=3", NetdevError::IfnameWithFd),
        ];
        for (input, want) in cases {
            assert_eq!(&parse_netdev(input).unwrap_err(), want, "{input}");
        }
        let e = parse_netdev("tap,id=a,colour=blue").unwrap_err();
        assert!(matches!(&e, NetdevError::UnknownOption { option, .. } if option == "colour"));
        let msg = e.to_string();
        assert!(
            msg.contains("'colour'") && msg.contains("ifname, fd"),
            "{msg}"
        );
        assert!(
            matches!(parse_netdev("tap,id=a,vhost=on").unwrap_err(), NetdevError::Unsupported { option, .. } if option == "vhost")
        );
        assert!(
            matches!(parse_netdev("tap,id=a,ifname=waytoolonginterface").unwrap_err(), NetdevError::Ifname(m) if m.contains("longer than 15"))
        );
        assert!(matches!(
            parse_netdev("tap,id=a,ifname=a/b").unwrap_err(),
            NetdevError::Ifname(_)
        ));
        assert!(parse_netdev("bogus,id=a")
            .unwrap_err()
            .to_string()
            .contains("valid types: tap"));
    }

    #[test]
    fn qmp_arguments_use_the_same_schema_with_json_types() {
        use serde_json::json;
        let m = |v: serde_json::Value| v.as_object().unwrap().clone();
        let spec = netdev_from_qmp(&m(
            json!({"type": "tap", "id": "n1", "ifname": "t1", "macaddr": "52:54:00:00:00:01"}),
        ))
        .unwrap();
        assert_eq!(spec.id.as_str(), "n1");
        assert_eq!(spec.macaddr, Some("52:54:00:00:00:01".parse().unwrap()));
        let cases: Vec<(serde_json::Value, NetdevError)> = vec![
            (json!({"id": "a"}), NetdevError::MissingType),
            (json!({"type": "tap"}), NetdevError::MissingId),
            (
                json!({"type": 1, "id": "a"}),
                NetdevError::WrongType {
                    option: "type".into(),
                    expected: "string",
                },
            ),
            (
                json!({"type": "tap", "id": 7}),
                NetdevError::WrongType {
                    option: "id".into(),
                    expected: "string",
                },
            ),
            (
                json!({"type": "bogus", "id": "a"}),
                NetdevError::UnknownType("bogus".into()),
            ),
            (
                json!({"type": "tap", "id": "a", "ifname": true}),
                NetdevError::WrongType {
                    option: "ifname".into(),
                    expected: "string",
                },
            ),
            (
                json!({"type": "tap", "id": "a", "fd": "3"}),
                NetdevError::FdOverQmp {
                    option: "fd".into(),
                },
            ),
            (
                json!({"type": "tap", "id": "a", "macaddr": "01:00:00:00:00:01"}),
                NetdevError::BadValue {
                    option: "macaddr".into(),
                    expected: "a unicast MAC address such as 52:54:00:12:34:56",
                    value: "01:00:00:00:00:01".into(),
                },
            ),
        ];
        for (args, want) in cases {
            assert_eq!(
                netdev_from_qmp(&m(args.clone())).unwrap_err(),
                want,
                "{args}"
            );
        }
        let e =
            netdev_from_qmp(&m(json!({"type": "tap", "id": "a", "frobnicate": 1}))).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("Parameter 'frobnicate' is unexpected"),
            "{e}"
        );
    }

    #[test]
    fn qmp_nested_addresses_flatten_to_the_same_schema() {
        use serde_json::json;
        let m = json!({"type": "stream", "id": "n4", "server": true, "addr": {"type": "inet", "host": "127.0.0.1", "port": "40243"}});
        let s = netdev_from_qmp(m.as_object().unwrap()).unwrap();
        assert!(matches!(s.kind, NetdevKind::Stream(SocketMode::Listen(_))));
        let bad =
            json!({"type": "stream", "id": "n4", "addr": {"type": "inet", "host": "h", "port": 1}});
        assert!(netdev_from_qmp(bad.as_object().unwrap())
            .unwrap_err()
            .to_string()
            .contains("'addr.port'"));
        let l = json!({"type": "l2tpv3", "id": "l", "src": "1.2.3.4", "dst": "1.2.3.5", "txsession": 7, "txcookie": 18446744073709551615u64, "rxcookie": 1, "cookie64": true});
        assert!(netdev_from_qmp(l.as_object().unwrap()).is_ok());
        let l = json!({"type": "l2tpv3", "id": "l", "src": "1.2.3.4", "dst": "1.2.3.5", "txsession": "7"});
        assert!(netdev_from_qmp(l.as_object().unwrap())
            .unwrap_err()
            .to_string()
            .contains("Invalid parameter type for 'txsession'"));
    }

    #[test]
    fn refused_options_name_their_kind() {
        for (spec, kind, option) in [
            ("tap,id=a,vhost=on", "tap", "vhost"),
            (
                "stream,id=a,addr.type=inet,addr.host=h,addr.port=1,addr.to=9",
                "stream",
                "addr.to",
            ),
            (
                "dgram,id=a,local.type=unix,local.path=/l,local.abstract=on",
                "dgram",
                "local.abstract",
            ),
            ("bridge,id=a,br=br0,helper=/x", "bridge", "helper"),
        ] {
            let e = parse_netdev(spec).unwrap_err();
            assert!(
                matches!(&e, NetdevError::Unsupported { kind: k, option: o, .. } if *k == kind && o == option),
                "{spec}: {e:?}"
            );
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("'{option}' of netdev type '{kind}'")),
                "{spec}: {msg}"
            );
        }
    }

    #[test]
    fn descriptors_over_qmp_are_refused_naming_the_parameter() {
        use serde_json::json;
        for (args, option) in [
            (json!({"type": "socket", "id": "a", "fd": "3"}), "fd"),
            (
                json!({"type": "stream", "id": "a", "addr": {"type": "fd", "str": "3"}}),
                "addr.str",
            ),
            (
                json!({"type": "dgram", "id": "a", "local": {"type": "fd", "str": "3"}}),
                "local.str",
            ),
        ] {
            assert_eq!(
                netdev_from_qmp(args.as_object().unwrap()).unwrap_err(),
                NetdevError::FdOverQmp {
                    option: option.into()
                },
                "{args}"
            );
        }
    }

    fn fd_of(s: &str) -> Option<i32> {
        parse_netdev(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .inherited_fd()
    }

    #[test]
    fn inherited_fd_is_the_descriptor_a_spec_takes_over() {
        assert_eq!(fd_of("tap,id=a,fd=7"), Some(7));
        assert_eq!(fd_of("socket,id=a,fd=5"), Some(5));
        assert_eq!(fd_of("stream,id=a,addr.type=fd,addr.str=6"), Some(6));
        assert_eq!(
            fd_of("stream,id=a,server=on,addr.type=fd,addr.str=9"),
            Some(9)
        );
        assert_eq!(fd_of("dgram,id=a,local.type=fd,local.str=8"), Some(8));
    }

    #[test]
    fn inherited_fd_is_none_for_ports_that_open_their_own() {
        for s in [
            "tap,id=a",
            "tap,id=a,ifname=tap0",
            "socket,id=a,listen=:4000",
            "socket,id=a,connect=127.0.0.1:4000",
            "socket,id=a,udp=127.0.0.1:5001,localaddr=127.0.0.1:5000",
            "socket,id=a,mcast=239.1.2.3:5000",
            "stream,id=a,server=on,addr.type=unix,addr.path=/tmp/s",
            "stream,id=a,addr.type=inet,addr.host=127.0.0.1,addr.port=4000",
            "dgram,id=a,local.type=unix,local.path=/tmp/l,remote.type=unix,remote.path=/tmp/r",
            "dgram,id=a,remote.type=inet,remote.host=239.0.0.9,remote.port=6000",
            "l2tpv3,id=a,src=127.0.0.2,dst=127.0.0.3,txsession=1",
            "bridge,id=a,br=br0",
            "hubport,id=a,hubid=1,netdev=b",
        ] {
            assert_eq!(fd_of(s), None, "{s}");
        }
    }

    #[test]
    fn the_same_descriptor_reads_the_same_across_kinds() {
        let n: Vec<Option<i32>> = [
            "tap,id=a,fd=3",
            "socket,id=b,fd=3",
            "stream,id=c,addr.type=fd,addr.str=3",
            "dgram,id=d,local.type=fd,local.str=3",
        ]
        .into_iter()
        .map(fd_of)
        .collect();
        assert!(n.iter().all(|&f| f == Some(3)), "{n:?}");
    }

    #[test]
    fn worker_is_a_common_option() {
        use serde_json::json;
        let s = parse_netdev("dgram,id=a,local.type=fd,local.str=3,worker=1").unwrap();
        assert_eq!(s.worker, Some(1));
        assert!(s.options.contains(&("worker".into(), "1".into())));
        assert_eq!(parse_netdev("tap,id=a").unwrap().worker, None);
        for bad in ["64", "-1", "x"] {
            assert!(
                matches!(parse_netdev(&format!("tap,id=a,worker={bad}")).unwrap_err(), NetdevError::BadValue { option, .. } if option == "worker"),
                "{bad}"
            );
        }
        let m = |v: serde_json::Value| v.as_object().unwrap().clone();
        let spec = netdev_from_qmp(&m(json!({"type": "tap", "id": "a", "worker": 2}))).unwrap();
        assert_eq!(spec.worker, Some(2));
        assert!(matches!(
            netdev_from_qmp(&m(json!({"type": "tap", "id": "a", "worker": "2"}))).unwrap_err(),
            NetdevError::WrongType { .. }
        ));
    }

    #[test]
    fn rx_filter_is_a_common_option_from_a_file_or_inline() {
        use serde_json::json;
        let info = json!({
            "promiscuous": false, "multicast": "none", "unicast": "normal", "vlan": "all",
            "broadcast-allowed": true, "multicast-overflow": false, "unicast-overflow": false,
            "main-mac": "52:54:00:00:00:01", "vlan-table": [], "unicast-table": [],
            "multicast-table": [],
        });
        let path = std::env::temp_dir().join(format!("rs-netdev-rxf-{}.json", std::process::id()));
        std::fs::write(&path, info.to_string()).unwrap();
        let from_cli = parse_netdev(&format!("tap,id=a,rx-filter={}", path.display()));
        let m = |v: serde_json::Value| v.as_object().unwrap().clone();
        let by_path = netdev_from_qmp(&m(
            json!({"type": "tap", "id": "a", "rx-filter": path.display().to_string()}),
        ));
        let _ = std::fs::remove_file(&path);
        let from_cli = from_cli.unwrap();
        let f = from_cli.rx_filter.clone().unwrap();
        assert!(!f.promiscuous && f.main_mac.to_string() == "52:54:00:00:00:01");
        assert!(from_cli
            .options
            .contains(&("rx-filter".into(), path.display().to_string())));
        assert_eq!(by_path.unwrap().rx_filter, Some(f.clone()));
        let inline =
            netdev_from_qmp(&m(json!({"type": "tap", "id": "a", "rx-filter": info}))).unwrap();
        assert_eq!(inline.rx_filter, Some(f));
        assert!(inline
            .options
            .contains(&("rx-filter".into(), "inline".into())));
        assert_eq!(parse_netdev("tap,id=a").unwrap().rx_filter, None);
        let mut bad = info.clone();
        bad["unicast"] = json!("some");
        let e = netdev_from_qmp(&m(json!({"type": "tap", "id": "a", "rx-filter": bad})))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "Parameter 'rx-filter': Parameter 'unicast' does not accept value 'some'; valid: normal, none, all"
        );
        let e = parse_netdev("tap,id=a,rx-filter=/nonexistent/f.json").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("Parameter 'rx-filter': /nonexistent/f.json: "),
            "{e}"
        );
    }

    #[test]
    fn macaddr_is_a_common_option() {
        let s = parse_netdev("tap,id=a,macaddr=52:54:00:aa:bb:cc").unwrap();
        assert_eq!(s.macaddr.unwrap().to_string(), "52:54:00:aa:bb:cc");
        assert!(
            matches!(parse_netdev("tap,id=a,macaddr=zz").unwrap_err(), NetdevError::BadValue { option, .. } if option == "macaddr")
        );
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(s in ".{0,80}") {
            let _ = parse_netdev(&s);
        }

        #[test]
        fn well_formed_specs_round_trip(id in "[a-z][a-z0-9_.-]{0,20}", ifname in "[a-z][a-z0-9]{0,14}") {
            let spec = parse_netdev(&format!("tap,id={id},ifname={ifname}")).unwrap();
            prop_assert_eq!(spec.id.as_str(), id.as_str());
            prop_assert_eq!(spec.kind, NetdevKind::Tap(TapOptions { ifname: Some(ifname.clone()), fd: None, script: Script::None, downscript: Script::None, vnet_hdr: false, queues: 1 }));
            prop_assert_eq!(spec.options, vec![("ifname".to_string(), ifname)]);
        }
    }
}
