//! QMP's message shapes: greeting, responses, errors with QEMU's classes, events, and the
//! argument checking of QEMU's input visitor (missing, wrong type, unexpected parameter).

use serde_json::{json, Map, Value};
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// QEMU's error classes that ringswitch uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    GenericError,
    CommandNotFound,
    DeviceNotFound,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::GenericError => "GenericError",
            ErrorClass::CommandNotFound => "CommandNotFound",
            ErrorClass::DeviceNotFound => "DeviceNotFound",
        }
    }
}

/// An error answer: a class and a description naming the offender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpError {
    pub class: ErrorClass,
    pub desc: String,
}

impl QmpError {
    pub fn generic(desc: impl Into<String>) -> QmpError {
        QmpError {
            class: ErrorClass::GenericError,
            desc: desc.into(),
        }
    }

    pub fn command_not_found(desc: impl Into<String>) -> QmpError {
        QmpError {
            class: ErrorClass::CommandNotFound,
            desc: desc.into(),
        }
    }

    pub fn device_not_found(name: &str) -> QmpError {
        QmpError {
            class: ErrorClass::DeviceNotFound,
            desc: format!("Device '{name}' not found"),
        }
    }
}

impl fmt::Display for QmpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class.as_str(), self.desc)
    }
}

/// The version ringswitch reports in the greeting and in `query-version`: the QEMU release
/// whose QMP behaviour it reproduces, and its own name and version as the package.
pub fn version() -> Value {
    json!({
        "qemu": {"major": 7, "minor": 2, "micro": 0},
        "package": format!("ringswitch {} (QMP as QEMU 7.2)", env!("CARGO_PKG_VERSION")),
    })
}

/// The first message on every connection.
pub fn greeting() -> Value {
    json!({"QMP": {"version": version(), "capabilities": []}})
}

/// `{"return": value}` with the id last, as QEMU writes it.
pub fn success(ret: Value, id: Option<&Value>) -> Value {
    let mut m = Map::new();
    m.insert("return".into(), ret);
    if let Some(id) = id {
        m.insert("id".into(), id.clone());
    }
    Value::Object(m)
}

/// `{"error": {...}}` with the id first, as QEMU writes it.
pub fn failure(e: &QmpError, id: Option<&Value>) -> Value {
    let mut m = Map::new();
    if let Some(id) = id {
        m.insert("id".into(), id.clone());
    }
    m.insert(
        "error".into(),
        json!({"class": e.class.as_str(), "desc": e.desc}),
    );
    Value::Object(m)
}

/// An event stamped with the wall-clock time.
pub fn event(name: &str, data: Option<Value>) -> Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut m = Map::new();
    m.insert(
        "timestamp".into(),
        json!({"seconds": now.as_secs(), "microseconds": now.subsec_micros()}),
    );
    m.insert("event".into(), Value::String(name.into()));
    if let Some(d) = data {
        m.insert("data".into(), d);
    }
    Value::Object(m)
}

/// One message on the wire: compact JSON and CR LF.
pub fn encode(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(v).expect("a Value always serializes");
    out.extend_from_slice(b"\r\n");
    out
}

/// A command's arguments, checked the way QEMU's input visitor does: each parameter is taken
/// once with its declared type; `finish` refuses whatever was not taken.
pub struct Args<'a> {
    map: Option<&'a Map<String, Value>>,
    taken: Vec<&'static str>,
}

fn type_error(name: &str, expected: &str) -> QmpError {
    QmpError::generic(format!(
        "Invalid parameter type for '{name}', expected: {expected}"
    ))
}

fn missing(name: &str) -> QmpError {
    QmpError::generic(format!("Parameter '{name}' is missing"))
}

impl<'a> Args<'a> {
    pub fn new(map: Option<&'a Map<String, Value>>) -> Args<'a> {
        Args {
            map,
            taken: Vec::new(),
        }
    }

    fn get(&mut self, name: &'static str) -> Option<&'a Value> {
        self.taken.push(name);
        self.map?.get(name)
    }

    pub fn opt_str(&mut self, name: &'static str) -> Result<Option<&'a str>, QmpError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(type_error(name, "string")),
        }
    }

    pub fn str(&mut self, name: &'static str) -> Result<&'a str, QmpError> {
        self.opt_str(name)?.ok_or_else(|| missing(name))
    }

    pub fn opt_bool(&mut self, name: &'static str) -> Result<Option<bool>, QmpError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(type_error(name, "boolean")),
        }
    }

    pub fn bool(&mut self, name: &'static str) -> Result<bool, QmpError> {
        self.opt_bool(name)?.ok_or_else(|| missing(name))
    }

    pub fn opt_int(&mut self, name: &'static str) -> Result<Option<i64>, QmpError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| type_error(name, "integer")),
            Some(_) => Err(type_error(name, "integer")),
        }
    }

    pub fn int(&mut self, name: &'static str) -> Result<i64, QmpError> {
        self.opt_int(name)?.ok_or_else(|| missing(name))
    }

    pub fn opt_str_list(&mut self, name: &'static str) -> Result<Option<Vec<&'a str>>, QmpError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().ok_or_else(|| type_error(name, "string")))
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(type_error(name, "array")),
        }
    }

    /// Refuses any parameter that was not taken.
    pub fn finish(self) -> Result<(), QmpError> {
        if let Some(map) = self.map {
            if let Some(k) = map.keys().find(|k| !self.taken.contains(&k.as_str())) {
                return Err(QmpError::generic(format!("Parameter '{k}' is unexpected")));
            }
        }
        Ok(())
    }
}

/// A request after its envelope was checked.
#[derive(Debug)]
pub struct Request {
    pub execute: String,
    pub arguments: Option<Map<String, Value>>,
    pub id: Option<Value>,
}

/// Checks a message's envelope as QEMU's dispatcher does. On error, returns the id (if one
/// could be read) with the error.
pub fn parse_request(v: Value) -> Result<Request, (Option<Value>, QmpError)> {
    let Value::Object(mut m) = v else {
        return Err((None, QmpError::generic("QMP input must be a JSON object")));
    };
    let id = m.remove("id");
    if let Some(k) = m
        .keys()
        .find(|k| !matches!(k.as_str(), "execute" | "arguments"))
    {
        let e = QmpError::generic(format!("QMP input member '{k}' is unexpected"));
        return Err((id, e));
    }
    let execute = match m.remove("execute") {
        Some(Value::String(s)) => s,
        Some(_) => {
            let e = QmpError::generic("QMP input member 'execute' must be a string");
            return Err((id, e));
        }
        None => return Err((id, QmpError::generic("QMP input lacks member 'execute'"))),
    };
    let arguments = match m.remove("arguments") {
        None => None,
        Some(Value::Object(a)) => Some(a),
        Some(_) => {
            let e = QmpError::generic("QMP input member 'arguments' must be an object");
            return Err((id, e));
        }
    };
    Ok(Request {
        execute,
        arguments,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_have_qemus_shape() {
        let id = json!([1, {"a": 2}]);
        assert_eq!(
            String::from_utf8(encode(&success(json!({}), Some(&id)))).unwrap(),
            "{\"return\":{},\"id\":[1,{\"a\":2}]}\r\n"
        );
        let e = QmpError::command_not_found("The command x has not been found");
        assert_eq!(
            serde_json::to_string(&failure(&e, Some(&json!(3)))).unwrap(),
            r#"{"id":3,"error":{"class":"CommandNotFound","desc":"The command x has not been found"}}"#
        );
        let ev = event("SHUTDOWN", Some(json!({"guest": false})));
        assert!(ev["timestamp"]["seconds"].as_u64().unwrap() > 1_700_000_000);
        assert!(event("RESUME", None).get("data").is_none());
    }

    #[test]
    fn envelope_errors() {
        let cases = [
            (json!([1, 2, 3]), "QMP input must be a JSON object", None),
            (
                json!({"exec": "x"}),
                "QMP input member 'exec' is unexpected",
                None,
            ),
            (
                json!({"execute": 42, "id": "i"}),
                "QMP input member 'execute' must be a string",
                Some(json!("i")),
            ),
            (
                json!({"id": 5}),
                "QMP input lacks member 'execute'",
                Some(json!(5)),
            ),
            (
                json!({"execute": "x", "arguments": [1]}),
                "QMP input member 'arguments' must be an object",
                None,
            ),
        ];
        for (input, desc, id) in cases {
            let (got_id, e) = parse_request(input.clone()).unwrap_err();
            assert_eq!(e.desc, desc, "{input}");
            assert_eq!(e.class, ErrorClass::GenericError);
            assert_eq!(got_id, id);
        }
        let r = parse_request(json!({"execute": "q", "arguments": {"a": 1}, "id": null})).unwrap();
        assert_eq!((r.execute.as_str(), r.id), ("q", Some(Value::Null)));
    }

    #[test]
    fn argument_checking_names_the_parameter() {
        let m = json!({"name": "n0", "up": "yes", "extra": 1});
        let m = m.as_object().unwrap();
        let mut a = Args::new(Some(m));
        assert_eq!(a.str("name").unwrap(), "n0");
        assert_eq!(
            a.bool("up").unwrap_err().desc,
            "Invalid parameter type for 'up', expected: boolean"
        );
        let mut a = Args::new(Some(m));
        a.str("name").unwrap();
        assert_eq!(
            a.int("rounds").unwrap_err().desc,
            "Parameter 'rounds' is missing"
        );
        let mut a = Args::new(Some(m));
        let _ = a.str("name");
        let _ = a.opt_str("up");
        assert_eq!(
            a.finish().unwrap_err().desc,
            "Parameter 'extra' is unexpected"
        );
        assert!(Args::new(None).finish().is_ok());
        let l = json!({"interfaces": ["a", 1]});
        let mut a = Args::new(l.as_object());
        assert!(a.opt_str_list("interfaces").is_err());
    }
}
