//! The `-netdev` specification: QEMU's keyval syntax and option names, parsed into typed specs.
//!
//! One parser serves the command line (and, later, QMP `netdev_add` and config files), so an
//! operator's existing `-netdev tap,id=n0,ifname=tap0` works unchanged. Nothing stringly-typed
//! leaves this module: every option is checked here, and every error names the offender and
//! what would have been accepted.

use crate::tap::{validate_ifname, TapError};
use ringswitch_switch::MacAddr;
use serde_json::{Map, Value};
use std::fmt;
use std::os::fd::RawFd;

/// Netdev kinds this build of ringswitch can open.
pub const SUPPORTED_KINDS: &[&str] = &["tap"];

/// Kinds QEMU's schema has that this build does not (yet) serve.
const QEMU_ONLY_KINDS: &[&str] = &[
    "user",
    "socket",
    "stream",
    "dgram",
    "l2tpv3",
    "vde",
    "bridge",
    "hubport",
    "netmap",
    "af-xdp",
    "vhost-user",
    "vhost-vdpa",
    "vmnet-host",
    "vmnet-shared",
    "vmnet-bridged",
];

/// The type of an option's value, as net.json declares it.
// Booleans and integers are declared by the socket and l2tpv3 kinds (issue #4).
#[allow(dead_code)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Str,
    Bool,
    Int,
}

impl Ty {
    fn qapi_name(self) -> &'static str {
        match self {
            Ty::Str => "string",
            Ty::Bool => "boolean",
            Ty::Int => "integer",
        }
    }
}

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
}

impl NetdevKind {
    pub fn name(&self) -> &'static str {
        match self {
            NetdevKind::Tap(_) => "tap",
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
enum Typed {
    Str(String),
    Bool(bool),
    Int(i64),
}

impl Typed {
    fn into_string(self) -> String {
        match self {
            Typed::Str(s) => s,
            Typed::Bool(b) => if b { "on" } else { "off" }.into(),
            Typed::Int(i) => i.to_string(),
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
        (Ty::Str, Raw::Json(Value::String(s))) => Ok(Typed::Str(s)),
        (Ty::Bool, Raw::Json(Value::Bool(b))) => Ok(Typed::Bool(b)),
        (Ty::Int, Raw::Json(Value::Number(n))) => n.as_i64().map(Typed::Int).ok_or_else(wrong),
        (_, Raw::Json(_)) => Err(wrong()),
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
enum Source {
    CommandLine,
    Qmp,
}

fn build_tap(opts: Vec<(String, Typed)>, source: Source) -> Result<TapOptions, NetdevError> {
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
    let kind = match kind {
        "tap" => NetdevKind::Tap(build_tap(kind_opts, source)?),
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
    let raw = args
        .iter()
        .filter(|(k, _)| *k != "type" && *k != "id")
        .map(|(k, v)| (k.clone(), Raw::Json(v.clone())))
        .collect();
    build(&ty, id, raw, Source::Qmp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tap(s: &str) -> TapOptions {
        match parse_netdev(s).unwrap().kind {
            NetdevKind::Tap(t) => t,
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
            ("socket,id=a", NetdevError::UnsupportedType("socket".into())),
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
