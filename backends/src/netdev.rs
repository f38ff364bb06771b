//! The `-netdev` specification: QEMU's keyval syntax and option names, parsed into typed specs.
//!
//! One parser serves the command line (and, later, QMP `netdev_add` and config files), so an
//! operator's existing `-netdev tap,id=n0,ifname=tap0` works unchanged. Nothing stringly-typed
//! leaves this module: every option is checked here, and every error names the offender and
//! what would have been accepted.

use crate::kinds::{self, L2tpv3Options, SocketMode};
use crate::tap::{validate_ifname, TapError};
use ringswitch_switch::MacAddr;
use serde_json::{Map, Value};
use std::fmt;
use std::os::fd::RawFd;

/// Netdev kinds this build of ringswitch can open.
pub const SUPPORTED_KINDS: &[&str] = &[
    "tap", "socket", "stream", "dgram", "l2tpv3", "bridge", "hubport",
];

/// Kinds QEMU's schema has that this build does not (yet) serve.
const QEMU_ONLY_KINDS: &[&str] = &[
    "user",
    "vde",
    "netmap",
    "af-xdp",
    "vhost-user",
    "vhost-vdpa",
    "vmnet-host",
    "vmnet-shared",
    "vmnet-bridged",
];

/// The type of an option's value, as net.json declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ty {
    Str,
    Bool,
    Int,
    /// uint64 (cookies).
    UInt,
}

impl Ty {
    fn qapi_name(self) -> &'static str {
        match self {
            Ty::Str => "string",
            Ty::Bool => "boolean",
            Ty::Int | Ty::UInt => "integer",
        }
    }
}

const SOCKET_OPTIONS: &[(&str, Ty)] = &[
    ("fd", Ty::Str),
    ("listen", Ty::Str),
    ("connect", Ty::Str),
    ("mcast", Ty::Str),
    ("localaddr", Ty::Str),
    ("udp", Ty::Str),
    ("reconnect", Ty::Int),
];

/// A QAPI SocketAddress under a prefix, as dotted keys.
macro_rules! socket_address_options {
    ($p:literal) => {
        [
            (concat!($p, ".type"), Ty::Str),
            (concat!($p, ".host"), Ty::Str),
            (concat!($p, ".port"), Ty::Str),
            (concat!($p, ".path"), Ty::Str),
            (concat!($p, ".str"), Ty::Str),
        ]
    };
}

const STREAM_OPTIONS: &[(&str, Ty)] = &{
    let a = socket_address_options!("addr");
    [
        ("server", Ty::Bool),
        ("reconnect", Ty::Int),
        a[0],
        a[1],
        a[2],
        a[3],
        a[4],
    ]
};

const DGRAM_OPTIONS: &[(&str, Ty)] = &{
    let l = socket_address_options!("local");
    let r = socket_address_options!("remote");
    [l[0], l[1], l[2], l[3], l[4], r[0], r[1], r[2], r[3], r[4]]
};

/// Options of QEMU's SocketAddress that ringswitch refuses, with why.
const ADDRESS_UNSUPPORTED: &[(&str, &str)] = &[
    ("addr.numeric", "host names are always resolved"),
    ("addr.to", "port ranges are not supported"),
    ("addr.ipv4", "the address family follows the host address"),
    ("addr.ipv6", "the address family follows the host address"),
    ("addr.keep-alive", "TCP keep-alive is not supported"),
    ("addr.abstract", "abstract unix sockets are not supported"),
    ("addr.tight", "abstract unix sockets are not supported"),
    ("local.abstract", "abstract unix sockets are not supported"),
    ("remote.abstract", "abstract unix sockets are not supported"),
];

const L2TPV3_OPTIONS: &[(&str, Ty)] = &[
    ("src", Ty::Str),
    ("dst", Ty::Str),
    ("srcport", Ty::Str),
    ("dstport", Ty::Str),
    ("ipv6", Ty::Bool),
    ("udp", Ty::Bool),
    ("cookie64", Ty::Bool),
    ("counter", Ty::Bool),
    ("pincounter", Ty::Bool),
    ("txcookie", Ty::UInt),
    ("rxcookie", Ty::UInt),
    ("txsession", Ty::UInt),
    ("rxsession", Ty::UInt),
    ("offset", Ty::UInt),
];

const BRIDGE_OPTIONS: &[(&str, Ty)] = &[("br", Ty::Str)];
const BRIDGE_UNSUPPORTED: &[(&str, &str)] = &[(
    "helper",
    "ringswitch attaches the tap to the bridge itself, without a helper",
)];

const HUBPORT_OPTIONS: &[(&str, Ty)] = &[("hubid", Ty::Int), ("netdev", Ty::Str)];

/// Options every kind takes besides `type` and `id`: `macaddr` is a ringswitch extension
/// naming the station behind the port (reported by query-rx-filter, announced by
/// announce-self).
const COMMON_OPTIONS: &[(&str, Ty)] = &[("macaddr", Ty::Str)];

/// Options of QEMU's tap that ringswitch accepts.
const TAP_OPTIONS: &[(&str, Ty)] = &[
    ("ifname", Ty::Str),
    ("fd", Ty::Str),
    ("script", Ty::Str),
    ("downscript", Ty::Str),
];

/// Options of QEMU's tap (net.json `NetdevTapOptions`) that ringswitch refuses, with why.
const TAP_UNSUPPORTED: &[(&str, &str)] = &[
    ("fds", "multiqueue taps are not supported yet; use one fd="),
    ("queues", "multiqueue taps are not supported yet"),
    (
        "vnet_hdr",
        "ports carry plain Ethernet frames; offloads are not supported yet",
    ),
    (
        "vhost",
        "vhost-net accelerates a guest's virtio NIC, which a switch port does not have",
    ),
    ("vhostfd", "vhost-net is not applicable to a switch port"),
    ("vhostfds", "vhost-net is not applicable to a switch port"),
    ("vhostforce", "vhost-net is not applicable to a switch port"),
    ("helper", "ringswitch does not run qemu-bridge-helper"),
    ("br", "the bridge helper is not supported"),
    ("sndbuf", "a tap's send buffer limit is not supported yet"),
    ("poll-us", "busy polling is not supported yet"),
];

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

/// A script option (`script=`/`downscript=`): none, or a program to run with the ifname.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Script {
    None,
    Path(String),
}

/// Options of a tap port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapOptions {
    /// Interface to create or attach to (kernel template `tap%d` when absent).
    pub ifname: Option<String>,
    /// Descriptor of an already attached tap, inherited from the parent.
    pub fd: Option<RawFd>,
    pub script: Script,
    pub downscript: Script,
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
    },
    /// Places the netdev `netdev` in bridge domain `hubid`.
    HubPort {
        hubid: u16,
        netdev: Option<NetdevId>,
    },
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
        }
    }
}

/// A parsed `-netdev` (or `netdev_add`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetdevSpec {
    pub id: NetdevId,
    pub kind: NetdevKind,
    /// The station behind the port, if the operator named one.
    pub macaddr: Option<MacAddr>,
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
    #[error("tap option '{option}' is not supported: {why}")]
    Unsupported { option: String, why: &'static str },
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
    #[error("Parameter 'fd' is only accepted on the command line (descriptor passing over QMP is not supported)")]
    FdOverQmp,
    #[error("{0}")]
    Ifname(String),
    #[error("Parameter '{0}' is missing")]
    Missing(String),
    #[error("{0}")]
    Invalid(String),
    #[error("Parameter '{option}': {why}")]
    Address { option: String, why: String },
}

/// Splits QEMU keyval text into (key, value) pairs; `,,` stands for a literal comma. The first
/// element may be a bare value, which is the implied key `implied`.
pub fn split_keyval(s: &str, implied: &str) -> Result<Vec<(String, String)>, NetdevError> {
    let mut elems: Vec<String> = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                elems.last_mut().expect("non-empty").push(',');
            } else {
                elems.push(String::new());
            }
        } else {
            elems.last_mut().expect("non-empty").push(c);
        }
    }
    let mut out: Vec<(String, String)> = Vec::with_capacity(elems.len());
    for (i, e) in elems.into_iter().enumerate() {
        let (k, v) = match e.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None if i == 0 => (implied.to_string(), e),
            None => return Err(NetdevError::ExpectedEquals(e)),
        };
        if out.iter().any(|(ok, _)| *ok == k) {
            return Err(NetdevError::Duplicate(k));
        }
        out.push((k, v));
    }
    Ok(out)
}

/// An option's value before its type is checked: text from the command line, or a JSON value
/// from QMP.
enum Raw {
    Text(String),
    Json(Value),
}

/// A value of the declared type.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Typed {
    Str(String),
    Bool(bool),
    Int(i64),
    UInt(u64),
}

impl Typed {
    fn into_string(self) -> String {
        match self {
            Typed::Str(s) => s,
            Typed::Bool(b) => if b { "on" } else { "off" }.into(),
            Typed::Int(i) => i.to_string(),
            Typed::UInt(i) => i.to_string(),
        }
    }
}

/// A kind's options after type checking, taken one by one by the kind's builder.
pub(crate) struct Opts {
    items: Vec<(String, Typed)>,
}

impl Opts {
    fn take(&mut self, k: &str) -> Option<Typed> {
        let i = self.items.iter().position(|(n, _)| n == k)?;
        Some(self.items.remove(i).1)
    }

    pub(crate) fn str(&mut self, k: &str) -> Option<String> {
        self.take(k).map(Typed::into_string)
    }

    pub(crate) fn bool(&mut self, k: &str) -> Option<bool> {
        match self.take(k)? {
            Typed::Bool(b) => Some(b),
            other => unreachable!("{k} declared boolean, got {other:?}"),
        }
    }

    pub(crate) fn int(&mut self, k: &str) -> Option<i64> {
        match self.take(k)? {
            Typed::Int(i) => Some(i),
            other => unreachable!("{k} declared integer, got {other:?}"),
        }
    }

    pub(crate) fn uint(&mut self, k: &str) -> Option<u64> {
        match self.take(k)? {
            Typed::UInt(i) => Some(i),
            other => unreachable!("{k} declared uint64, got {other:?}"),
        }
    }
}

fn typed(option: &str, ty: Ty, raw: Raw) -> Result<Typed, NetdevError> {
    let wrong = || NetdevError::WrongType {
        option: option.to_string(),
        expected: ty.qapi_name(),
    };
    match (ty, raw) {
        (Ty::Str, Raw::Text(s)) => Ok(Typed::Str(s)),
        (Ty::Bool, Raw::Text(s)) => match s.as_str() {
            "on" | "yes" | "true" => Ok(Typed::Bool(true)),
            "off" | "no" | "false" => Ok(Typed::Bool(false)),
            _ => Err(NetdevError::BadValue {
                option: option.into(),
                expected: "'on' or 'off'",
                value: s,
            }),
        },
        (Ty::Int, Raw::Text(s)) => s
            .parse()
            .map(Typed::Int)
            .map_err(|_| NetdevError::BadValue {
                option: option.into(),
                expected: "an integer",
                value: s,
            }),
        (Ty::UInt, Raw::Text(s)) => {
            parse_uint(&s)
                .map(Typed::UInt)
                .ok_or_else(|| NetdevError::BadValue {
                    option: option.into(),
                    expected: "an unsigned integer",
                    value: s,
                })
        }
        (Ty::Str, Raw::Json(Value::String(s))) => Ok(Typed::Str(s)),
        (Ty::Bool, Raw::Json(Value::Bool(b))) => Ok(Typed::Bool(b)),
        (Ty::Int, Raw::Json(Value::Number(n))) => n.as_i64().map(Typed::Int).ok_or_else(wrong),
        (Ty::UInt, Raw::Json(Value::Number(n))) => n.as_u64().map(Typed::UInt).ok_or_else(wrong),
        (_, Raw::Json(_)) => Err(wrong()),
    }
}

/// Decimal or 0x-prefixed hexadecimal, as QEMU's option parser takes numbers.
fn parse_uint(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

fn parse_script(option: &str, v: &str) -> Result<Script, NetdevError> {
    match v {
        "" | "no" => Ok(Script::None),
        p => {
            if p.contains('\0') {
                return Err(NetdevError::BadValue {
                    option: option.into(),
                    expected: "a program path or 'no'",
                    value: p.into(),
                });
            }
            Ok(Script::Path(p.to_string()))
        }
    }
}

/// Where the options came from: QMP refuses what only makes sense on a command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    CommandLine,
    Qmp,
}

fn build_tap(opts: Opts, source: Source) -> Result<TapOptions, NetdevError> {
    let opts = opts.items;
    let mut t = TapOptions {
        ifname: None,
        fd: None,
        script: Script::None,
        downscript: Script::None,
    };
    for (k, v) in opts {
        let v = v.into_string();
        match k.as_str() {
            "ifname" => {
                validate_ifname(&v).map_err(|e: TapError| {
                    NetdevError::Ifname(format!("Parameter 'ifname': {e}"))
                })?;
                t.ifname = Some(v);
            }
            "fd" => {
                if source == Source::Qmp {
                    return Err(NetdevError::FdOverQmp);
                }
                let fd = v
                    .parse::<RawFd>()
                    .ok()
                    .filter(|&fd| fd >= 0)
                    .ok_or_else(|| NetdevError::BadValue {
                        option: k.clone(),
                        expected: "a file descriptor number",
                        value: v.clone(),
                    })?;
                t.fd = Some(fd);
            }
            "script" => t.script = parse_script(&k, &v)?,
            "downscript" => t.downscript = parse_script(&k, &v)?,
            other => unreachable!("option {other} passed the schema"),
        }
    }
    if t.ifname.is_some() && t.fd.is_some() {
        return Err(NetdevError::IfnameWithFd);
    }
    Ok(t)
}

/// Checks every option against the kind's schema and builds the spec.
fn build(
    ty: &str,
    id: NetdevId,
    opts: Vec<(String, Raw)>,
    source: Source,
) -> Result<NetdevSpec, NetdevError> {
    type Schema = &'static [(&'static str, Ty)];
    type Refused = &'static [(&'static str, &'static str)];
    let (kind, schema, unsupported): (&'static str, Schema, Refused) = match ty {
        "tap" => ("tap", TAP_OPTIONS, TAP_UNSUPPORTED),
        "socket" => ("socket", SOCKET_OPTIONS, &[]),
        "stream" => ("stream", STREAM_OPTIONS, ADDRESS_UNSUPPORTED),
        "dgram" => ("dgram", DGRAM_OPTIONS, ADDRESS_UNSUPPORTED),
        "l2tpv3" => ("l2tpv3", L2TPV3_OPTIONS, &[]),
        "bridge" => ("bridge", BRIDGE_OPTIONS, BRIDGE_UNSUPPORTED),
        "hubport" => ("hubport", HUBPORT_OPTIONS, &[]),
        other if QEMU_ONLY_KINDS.contains(&other) => {
            return Err(NetdevError::UnsupportedType(other.to_string()))
        }
        other => return Err(NetdevError::UnknownType(other.to_string())),
    };
    let mut kind_opts = Vec::new();
    let mut shown = Vec::new();
    let mut macaddr = None;
    for (k, raw) in opts {
        if let Some((_, t)) = COMMON_OPTIONS.iter().find(|(n, _)| *n == k) {
            let v = typed(&k, *t, raw)?.into_string();
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
        let Some((_, t)) = schema.iter().find(|(n, _)| *n == k) else {
            if let Some((_, why)) = unsupported.iter().find(|(o, _)| *o == k) {
                return Err(NetdevError::Unsupported { option: k, why });
            }
            let valid: Vec<&str> = ["id"]
                .into_iter()
                .chain(schema.iter().map(|(n, _)| *n))
                .chain(COMMON_OPTIONS.iter().map(|(n, _)| *n))
                .collect();
            return Err(NetdevError::UnknownOption {
                kind,
                option: k,
                valid: valid.join(", "),
            });
        };
        let v = typed(&k, *t, raw)?;
        shown.push((k.clone(), v.clone().into_string()));
        kind_opts.push((k, v));
    }
    let mut o = Opts { items: kind_opts };
    let kind = match kind {
        "tap" => NetdevKind::Tap(build_tap(o, source)?),
        "socket" => NetdevKind::Socket(kinds::socket(&mut o, source)?),
        "stream" => NetdevKind::Stream(kinds::stream(&mut o, source)?),
        "dgram" => NetdevKind::Dgram(kinds::dgram(&mut o, source)?),
        "l2tpv3" => NetdevKind::L2tpv3(kinds::l2tpv3(&mut o)?),
        "bridge" => {
            let br = o.str("br").ok_or(NetdevError::Missing("br".into()))?;
            validate_ifname(&br)
                .map_err(|e| NetdevError::Ifname(format!("Parameter 'br': {e}")))?;
            NetdevKind::Bridge { br }
        }
        "hubport" => {
            let (hubid, netdev) = kinds::hubport(&mut o)?;
            NetdevKind::HubPort { hubid, netdev }
        }
        _ => unreachable!("kind matched above"),
    };
    Ok(NetdevSpec {
        id,
        kind,
        macaddr,
        options: shown,
    })
}

/// Parses one `-netdev` argument such as `tap,id=n0,ifname=tap0`.
pub fn parse_netdev(s: &str) -> Result<NetdevSpec, NetdevError> {
    if s.trim().is_empty() {
        return Err(NetdevError::Empty);
    }
    let mut opts = split_keyval(s, "type")?;
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
    build(&ty, id, raw, Source::CommandLine)
}

/// Turns QMP's nested objects (`"addr": {"type": "inet", …}`) into the dotted keys of the
/// keyval syntax (`addr.type`), so both take one schema.
fn flatten(
    key: &str,
    v: &Value,
    out: &mut Vec<(String, Raw)>,
    depth: usize,
) -> Result<(), NetdevError> {
    match v {
        Value::Object(m) if depth < 2 => {
            for (k, inner) in m {
                flatten(&format!("{key}.{k}"), inner, out, depth + 1)?;
            }
            Ok(())
        }
        Value::Object(_) => Err(NetdevError::WrongType {
            option: key.into(),
            expected: "a scalar",
        }),
        other => {
            out.push((key.to_string(), Raw::Json(other.clone())));
            Ok(())
        }
    }
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
    for (k, v) in args.iter().filter(|(k, _)| *k != "type" && *k != "id") {
        flatten(k, v, &mut raw, 0)?;
    }
    build(&ty, id, raw, Source::Qmp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tap(s: &str) -> TapOptions {
        match parse_netdev(s).unwrap().kind {
            NetdevKind::Tap(t) => t,
            other => panic!("not a tap: {other:?}"),
        }
    }

    #[test]
    fn parses_qemu_tap_specs() {
        let s = parse_netdev("tap,id=n0,ifname=tap0").unwrap();
        assert_eq!(s.id.as_str(), "n0");
        assert_eq!(tap("tap,id=n0,ifname=tap0").ifname.as_deref(), Some("tap0"));
        assert_eq!(tap("type=tap,id=n0").ifname, None);
        assert_eq!(tap("tap,id=n0,fd=7").fd, Some(7));
        let t = tap("tap,id=n0,ifname=t,script=no,downscript=no");
        assert!(t.script == Script::None && t.downscript == Script::None);
        assert_eq!(
            tap("tap,id=n0,script=/etc/up").script,
            Script::Path("/etc/up".into())
        );
        assert!(parse_netdev("tap,id=n0,script=/x").unwrap().wants_scripts());
        assert!(!parse_netdev("tap,id=n0").unwrap().wants_scripts());
    }

    #[test]
    fn double_comma_escapes_a_comma() {
        let kv = split_keyval("tap,id=a,script=/p,,q", "type").unwrap();
        assert_eq!(kv[2], ("script".to_string(), "/p,q".to_string()));
    }

    #[test]
    fn every_error_names_the_offender() {
        let cases: &[(&str, NetdevError)] = &[
            ("", NetdevError::Empty),
            ("id=a", NetdevError::MissingType),
            ("type=,id=a", NetdevError::MissingType),
            ("bogus,id=a", NetdevError::UnknownType("bogus".into())),
            ("vde,id=a", NetdevError::UnsupportedType("vde".into())),
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
                NetdevError::FdOverQmp,
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

    fn kind(s: &str) -> NetdevKind {
        parse_netdev(s).unwrap_or_else(|e| panic!("{s}: {e}")).kind
    }

    fn err(s: &str) -> String {
        parse_netdev(s).unwrap_err().to_string()
    }

    #[test]
    fn socket_kinds_in_qemu_syntax() {
        use crate::addr::SockAddr;
        use std::time::Duration;
        assert_eq!(
            kind("socket,id=a,listen=:4000"),
            NetdevKind::Socket(SocketMode::Listen(SockAddr::Inet(
                "0.0.0.0:4000".parse().unwrap()
            )))
        );
        assert_eq!(
            kind("socket,id=a,connect=127.0.0.1:4000"),
            NetdevKind::Socket(SocketMode::Connect {
                addr: SockAddr::Inet("127.0.0.1:4000".parse().unwrap()),
                reconnect: Some(Duration::from_secs(1))
            })
        );
        assert_eq!(
            kind("socket,id=a,connect=127.0.0.1:4000,reconnect=0"),
            NetdevKind::Socket(SocketMode::Connect {
                addr: SockAddr::Inet("127.0.0.1:4000".parse().unwrap()),
                reconnect: None
            })
        );
        assert_eq!(
            kind("socket,id=a,udp=127.0.0.1:5001,localaddr=127.0.0.1:5000"),
            NetdevKind::Socket(SocketMode::Udp {
                local: "127.0.0.1:5000".parse().unwrap(),
                remote: "127.0.0.1:5001".parse().unwrap()
            })
        );
        assert_eq!(
            kind("socket,id=a,mcast=239.1.2.3:5000,localaddr=127.0.0.1"),
            NetdevKind::Socket(SocketMode::Mcast {
                group: "239.1.2.3:5000".parse().unwrap(),
                interface: Some("127.0.0.1".parse().unwrap())
            })
        );
        assert_eq!(
            kind("socket,id=a,fd=5"),
            NetdevKind::Socket(SocketMode::Fd(5))
        );
        assert_eq!(
            kind("stream,id=a,server=on,addr.type=unix,addr.path=/tmp/s"),
            NetdevKind::Stream(SocketMode::Listen(SockAddr::Unix("/tmp/s".into())))
        );
        assert!(matches!(
            kind("stream,id=a,server=off,addr.type=inet,addr.host=127.0.0.1,addr.port=4000"),
            NetdevKind::Stream(SocketMode::Connect { .. })
        ));
        assert_eq!(
            kind(
                "dgram,id=a,local.type=unix,local.path=/tmp/l,remote.type=unix,remote.path=/tmp/r"
            ),
            NetdevKind::Dgram(SocketMode::UnixDgram {
                local: "/tmp/l".into(),
                remote: "/tmp/r".into()
            })
        );
        assert!(matches!(
            kind("dgram,id=a,remote.type=inet,remote.host=239.0.0.9,remote.port=6000"),
            NetdevKind::Dgram(SocketMode::Mcast { .. })
        ));
    }

    #[test]
    fn socket_kind_errors_name_the_offender() {
        for (spec, needle) in [
            ("socket,id=a", "exactly one of"),
            ("socket,id=a,listen=:1,connect=h:2", "exactly one of"),
            ("socket,id=a,listen=nope", "'listen'"),
            ("socket,id=a,listen=:1,localaddr=:2", "localaddr= is only valid"),
            ("socket,id=a,udp=127.0.0.1:1", "localaddr= is mandatory"),
            ("socket,id=a,mcast=127.0.0.1:5000", "multicast group"),
            ("socket,id=a,listen=:1,reconnect=3", "reconnect= is only valid"),
            ("socket,id=a,connect=127.0.0.1:1,reconnect=-1", "'reconnect'"),
            ("stream,id=a,server=on", "'addr' is missing"),
            ("stream,id=a,addr.host=x", "'addr.type' is missing"),
            ("stream,id=a,addr.type=inet,addr.port=1", "'addr.host' is missing"),
            ("stream,id=a,addr.type=inet,addr.host=h", "'addr.port' is missing"),
            ("stream,id=a,addr.type=unix", "'addr.path' is missing"),
            ("stream,id=a,addr.type=tipc", "'addr.type'"),
            ("stream,id=a,addr.type=unix,addr.path=/x,addr.port=1", "unexpected"),
            ("stream,id=a,server=maybe,addr.type=unix,addr.path=/x", "'server'"),
            ("stream,id=a,addr.type=inet,addr.host=h,addr.port=1,addr.to=9", "not supported"),
            ("dgram,id=a,local.type=unix,local.path=/l", "'remote' is missing"),
            ("dgram,id=a,local.type=unix,local.path=/l,remote.type=inet,remote.host=1.2.3.4,remote.port=1", "same type"),
            ("l2tpv3,id=a,dst=1.2.3.4,txsession=1", "'src' is missing"),
            ("l2tpv3,id=a,src=1.2.3.4,dst=1.2.3.5", "'txsession' is missing"),
            ("l2tpv3,id=a,src=1.2.3.4,dst=1.2.3.5,txsession=1,udp=on", "'srcport' is missing"),
            ("l2tpv3,id=a,src=1.2.3.4,dst=1.2.3.5,txsession=1,txcookie=1", "together"),
            ("l2tpv3,id=a,src=1.2.3.4,dst=1.2.3.5,txsession=1,txcookie=0x100000000,rxcookie=1", "32-bit cookie"),
            ("l2tpv3,id=a,src=1.2.3.4,dst=1.2.3.5,txsession=4294967296", "'txsession'"),
            ("l2tpv3,id=a,src=::1,dst=1.2.3.5,txsession=1", "IPv4"),
            ("bridge,id=a", "'br' is missing"),
            ("bridge,id=a,br=br0,helper=/x", "without a helper"),
            ("hubport,id=a", "'hubid' is missing"),
            ("hubport,id=a,hubid=70000", "'hubid'"),
        ] {
            let e = err(spec);
            assert!(e.contains(needle), "{spec}: {e}");
        }
    }

    #[test]
    fn l2tpv3_options_and_defaults() {
        let NetdevKind::L2tpv3(o) = kind("l2tpv3,id=a,src=127.0.0.2,dst=127.0.0.3,udp=on,srcport=1701,dstport=1702,txsession=0x11223344,cookie64=on,txcookie=0xa1a2a3a4a5a6a7a8,rxcookie=9,counter=on,offset=4") else {
            panic!()
        };
        assert_eq!(
            (o.txsession, o.rxsession, o.txcookie, o.rxcookie),
            (
                0x1122_3344,
                0x1122_3344,
                Some(0xa1a2_a3a4_a5a6_a7a8),
                Some(9)
            )
        );
        assert!(o.udp && o.counter && o.cookie64 && !o.pincounter);
        assert_eq!((o.srcport, o.dstport, o.offset), (1701, 1702, 4));
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
            prop_assert_eq!(spec.kind, NetdevKind::Tap(TapOptions { ifname: Some(ifname.clone()), fd: None, script: Script::None, downscript: Script::None }));
            prop_assert_eq!(spec.options, vec![("ifname".to_string(), ifname)]);
        }
    }
}
