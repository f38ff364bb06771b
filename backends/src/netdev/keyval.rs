//! Option values on their way in: QEMU's keyval text split into pairs, QMP's nested JSON
//! flattened into the same dotted keys, and each raw value checked against the type its kind
//! declares (`Ty`) into a `Typed` value. Kind builders then take their options from `Opts`.
//! This module knows no option names: which keys a kind accepts is the schema's business.

use super::NetdevError;
use serde_json::Value;

/// The type of an option's value, as net.json declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ty {
    Str,
    Bool,
    Int,
    /// uint64 (l2tpv3's cookies, sessions and offset).
    UInt,
    /// A list of QAPI `String`s (`['String']`: user's `hostfwd`, `guestfwd`, `dnssearch`):
    /// the option repeated on the command line, `[{"str": …}, …]` over QMP.
    StrList,
}

impl Ty {
    fn qapi_name(self) -> &'static str {
        match self {
            Ty::Str => "string",
            Ty::Bool => "boolean",
            Ty::Int | Ty::UInt => "integer",
            Ty::StrList => "array of String",
        }
    }
}

/// Where the options came from: QMP refuses what only makes sense on a command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    CommandLine,
    Qmp,
}

/// Splits QEMU keyval text into (key, value) pairs; `,,` stands for a literal comma. The first
/// element may be a bare value, which is the implied key `implied`.
pub fn split_keyval(s: &str, implied: &str) -> Result<Vec<(String, String)>, NetdevError> {
    split_keyval_with(s, implied, |_| false)
}

/// `split_keyval`, letting the keys for which `repeats` holds appear more than once (list
/// options, which QEMU's legacy option parser collects in order).
pub(crate) fn split_keyval_with(
    s: &str,
    implied: &str,
    repeats: impl Fn(&str) -> bool,
) -> Result<Vec<(String, String)>, NetdevError> {
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
        if !repeats(&k) && out.iter().any(|(ok, _)| *ok == k) {
            return Err(NetdevError::Duplicate(k));
        }
        out.push((k, v));
    }
    Ok(out)
}

/// An option's value before its type is checked: text from the command line, or a JSON value
/// from QMP.
pub(crate) enum Raw {
    Text(String),
    Json(Value),
}

/// Turns QMP's nested objects (`"addr": {"type": "inet", …}`) into the dotted keys of the
/// keyval syntax (`addr.type`), so both take one schema.
pub(crate) fn flatten(
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

/// A value of the declared type.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Typed {
    Str(String),
    Bool(bool),
    Int(i64),
    UInt(u64),
    List(Vec<String>),
}

impl Typed {
    /// The value as the keyval syntax spells it (for listings, and for options read as text).
    pub(crate) fn into_string(self) -> String {
        match self {
            Typed::Str(s) => s,
            Typed::Bool(b) => if b { "on" } else { "off" }.into(),
            Typed::Int(i) => i.to_string(),
            Typed::UInt(i) => i.to_string(),
            Typed::List(l) => l.join(" "),
        }
    }
}

/// Checks `raw` against the declared type `ty` of `option`: text is parsed as QEMU's option
/// parser would, JSON must already be of the right type.
pub(crate) fn typed(option: &str, ty: Ty, raw: Raw) -> Result<Typed, NetdevError> {
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
        (Ty::StrList, Raw::Text(s)) => Ok(Typed::List(vec![s])),
        (Ty::StrList, Raw::Json(Value::Array(items))) => items
            .into_iter()
            .map(|item| match item {
                Value::Object(mut m) if m.len() == 1 => match m.remove("str") {
                    Some(Value::String(s)) => Ok(s),
                    _ => Err(wrong()),
                },
                _ => Err(wrong()),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Typed::List),
        (Ty::Str, Raw::Json(Value::String(s))) => Ok(Typed::Str(s)),
        (Ty::Bool, Raw::Json(Value::Bool(b))) => Ok(Typed::Bool(b)),
        (Ty::Int, Raw::Json(Value::Number(n))) => n.as_i64().map(Typed::Int).ok_or_else(wrong),
        (Ty::UInt, Raw::Json(Value::Number(n))) => n.as_u64().map(Typed::UInt).ok_or_else(wrong),
        (_, Raw::Json(_)) => Err(wrong()),
    }
}

/// Decimal, 0x-prefixed hexadecimal or 0-prefixed octal, as QEMU's option parser takes
/// numbers (`strtoull` with base 0: `mode=0700` of a vde netdev is 448).
fn parse_uint(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None if s.len() > 1 && s.starts_with('0') => u64::from_str_radix(&s[1..], 8).ok(),
        None => s.parse().ok(),
    }
}

/// A kind's options after type checking, taken one by one by the kind's builder.
pub(crate) struct Opts {
    items: Vec<(String, Typed)>,
}

impl Opts {
    pub(crate) fn new(items: Vec<(String, Typed)>) -> Opts {
        Opts { items }
    }

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

    /// A list option: every occurrence, in order (empty when absent).
    pub(crate) fn list(&mut self, k: &str) -> Vec<String> {
        match self.take(k) {
            None => Vec::new(),
            Some(Typed::List(l)) => l,
            Some(other) => unreachable!("{k} declared a list, got {other:?}"),
        }
    }

    pub(crate) fn uint(&mut self, k: &str) -> Option<u64> {
        match self.take(k)? {
            Typed::UInt(i) => Some(i),
            other => unreachable!("{k} declared uint64, got {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn double_comma_escapes_a_comma() {
        let kv = split_keyval("tap,id=a,script=/p,,q", "type").unwrap();
        assert_eq!(kv[2], ("script".to_string(), "/p,q".to_string()));
    }

    #[test]
    fn numbers_are_decimal_or_hexadecimal_text() {
        let t = |ty, s: &str| typed("o", ty, Raw::Text(s.into()));
        assert_eq!(t(Ty::UInt, "0x10"), Ok(Typed::UInt(16)));
        assert_eq!(t(Ty::UInt, "0X10"), Ok(Typed::UInt(16)));
        assert_eq!(t(Ty::UInt, "10"), Ok(Typed::UInt(10)));
        assert!(t(Ty::UInt, "-1").is_err());
        assert_eq!(t(Ty::Int, "-1"), Ok(Typed::Int(-1)));
        assert_eq!(t(Ty::Bool, "yes"), Ok(Typed::Bool(true)));
        assert!(t(Ty::Bool, "maybe").is_err());
    }

    #[test]
    fn json_values_must_already_have_the_declared_type() {
        let j = |ty, v: Value| typed("o", ty, Raw::Json(v));
        assert_eq!(j(Ty::Int, 3.into()), Ok(Typed::Int(3)));
        assert_eq!(
            j(Ty::Int, "3".into()),
            Err(NetdevError::WrongType {
                option: "o".into(),
                expected: "integer"
            })
        );
        assert_eq!(
            j(Ty::Str, true.into()),
            Err(NetdevError::WrongType {
                option: "o".into(),
                expected: "string"
            })
        );
    }
}
