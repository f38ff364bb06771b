//! `-chardev socket,…` and QMP `chardev-add`: the unix sockets vhost-user ports speak over.
//!
//! Only what a vhost-user netdev needs of QEMU's chardevs is served: the `socket` backend on a
//! unix path, as listener (`server=on`) or client (`server=off`, with `reconnect=SECONDS`).
//! `wait=` is accepted as QEMU takes it for `-qmp`, and ignored: the switch never waits for a
//! client. Other backends and options are refused by name.

use crate::netdev::split_keyval;
use serde_json::{Map, Value};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// A chardev's socket end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChardevSocket {
    /// The switch listens at the path (QEMU connects as a client).
    Listen(PathBuf),
    /// The switch connects to the path (QEMU listens), again every `reconnect` after a loss.
    Connect {
        path: PathBuf,
        reconnect: Option<Duration>,
    },
}

impl ChardevSocket {
    pub fn path(&self) -> &PathBuf {
        match self {
            ChardevSocket::Listen(p) | ChardevSocket::Connect { path: p, .. } => p,
        }
    }
}

/// A parsed chardev.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chardev {
    pub id: String,
    pub socket: ChardevSocket,
}

/// Why a chardev was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChardevError(pub String);

impl fmt::Display for ChardevError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ChardevError {}

fn err<T>(s: impl Into<String>) -> Result<T, ChardevError> {
    Err(ChardevError(s.into()))
}

fn on_off(key: &str, v: &str) -> Result<bool, ChardevError> {
    match v {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => err(format!("Parameter '{key}' expects 'on' or 'off'")),
    }
}

/// Parses `-chardev socket,id=ID,path=PATH[,server=on|off][,wait=on|off][,reconnect=SECS]`.
pub fn parse_chardev(s: &str) -> Result<Chardev, ChardevError> {
    let kv =
        split_keyval(s, "backend").map_err(|e| ChardevError(format!("-chardev '{s}': {e}")))?;
    let mut backend = None;
    let mut id = None;
    let mut path = None;
    let mut server = false;
    let mut reconnect = None;
    for (k, v) in kv {
        match k.as_str() {
            "backend" => backend = Some(v),
            "id" => id = Some(v),
            "path" => path = Some(v),
            "server" => server = on_off("server", &v)?,
            "wait" => {
                on_off("wait", &v)?;
            }
            "reconnect" => {
                let secs: u64 = v
                    .parse()
                    .map_err(|_| ChardevError(format!("Parameter 'reconnect' expects a number of seconds, not '{v}'")))?;
                reconnect = (secs > 0).then(|| Duration::from_secs(secs));
            }
            "host" | "port" | "to" | "ipv4" | "ipv6" | "nodelay" | "telnet" | "tn3270"
            | "websocket" | "fd" | "abstract" | "tight" | "tls-creds" | "tls-authz" | "logfile"
            | "logappend" | "mux" | "signal" => {
                return err(format!(
                    "-chardev '{s}': option '{k}' is not supported: vhost-user ports take a unix socket (path=)"
                ))
            }
            _ => return err(format!("-chardev '{s}': Invalid parameter '{k}'")),
        }
    }
    match backend.as_deref() {
        Some("socket") => {}
        Some(b) => {
            return err(format!(
                "-chardev '{s}': backend '{b}' is not supported; ringswitch serves 'socket' chardevs for vhost-user ports"
            ))
        }
        None => return err(format!("-chardev '{s}': a backend is needed (socket)")),
    }
    let Some(id) = id else {
        return err(format!("-chardev '{s}': Parameter 'id' is missing"));
    };
    crate::netdev::NetdevId::new(&id).map_err(|e| ChardevError(e.to_string()))?;
    let Some(path) = path else {
        return err(format!(
            "-chardev '{s}': chardev: socket: no path given (path=)"
        ));
    };
    let path = PathBuf::from(path);
    if reconnect.is_some() && server {
        return err(format!(
            "-chardev '{s}': 'reconnect' option is incompatible with socket in server listen mode"
        ));
    }
    Ok(Chardev {
        id,
        socket: if server {
            ChardevSocket::Listen(path)
        } else {
            ChardevSocket::Connect { path, reconnect }
        },
    })
}

/// Parses QMP `chardev-add`'s arguments: `{"id": …, "backend": {"type": "socket", "data":
/// {"addr": {"type": "unix", "data": {"path": …}}, "server": bool, "wait": bool,
/// "reconnect": int}}}` (QEMU's `ChardevBackend`).
pub fn chardev_from_qmp(args: &Map<String, Value>) -> Result<Chardev, ChardevError> {
    let id = args
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| ChardevError("Parameter 'id' is missing".into()))?;
    crate::netdev::NetdevId::new(id).map_err(|e| ChardevError(e.to_string()))?;
    let backend = args
        .get("backend")
        .and_then(Value::as_object)
        .ok_or_else(|| ChardevError("Parameter 'backend' is missing".into()))?;
    match backend.get("type").and_then(Value::as_str) {
        Some("socket") => {}
        Some(t) => {
            return err(format!(
                "chardev backend '{t}' is not supported; ringswitch serves 'socket' chardevs for vhost-user ports"
            ))
        }
        None => return err("Parameter 'backend.type' is missing"),
    }
    let data = backend
        .get("data")
        .and_then(Value::as_object)
        .ok_or_else(|| ChardevError("Parameter 'backend.data' is missing".into()))?;
    for k in data.keys() {
        if !matches!(k.as_str(), "addr" | "server" | "wait" | "reconnect") {
            return err(format!("Parameter 'backend.data.{k}' is unexpected"));
        }
    }
    let addr = data
        .get("addr")
        .and_then(Value::as_object)
        .ok_or_else(|| ChardevError("Parameter 'backend.data.addr' is missing".into()))?;
    match addr.get("type").and_then(Value::as_str) {
        Some("unix") => {}
        Some(t) => {
            return err(format!(
                "socket address type '{t}' is not supported: vhost-user ports take a unix socket"
            ))
        }
        None => return err("Parameter 'backend.data.addr.type' is missing"),
    }
    let path = addr
        .get("data")
        .and_then(|d| d.get("path"))
        .and_then(Value::as_str)
        .ok_or_else(|| ChardevError("Parameter 'backend.data.addr.data.path' is missing".into()))?;
    let flag = |k: &str, default: bool| -> Result<bool, ChardevError> {
        match data.get(k) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => err(format!(
                "Invalid parameter type for 'backend.data.{k}', expected: boolean"
            )),
        }
    };
    let server = flag("server", true)?;
    flag("wait", true)?;
    let reconnect = match data.get("reconnect") {
        None => None,
        Some(v) => {
            let secs = v.as_u64().ok_or_else(|| {
                ChardevError(
                    "Invalid parameter type for 'backend.data.reconnect', expected: integer".into(),
                )
            })?;
            (secs > 0).then(|| Duration::from_secs(secs))
        }
    };
    if reconnect.is_some() && server {
        return err("'reconnect' option is incompatible with socket in server listen mode");
    }
    let path = PathBuf::from(path);
    Ok(Chardev {
        id: id.to_string(),
        socket: if server {
            ChardevSocket::Listen(path)
        } else {
            ChardevSocket::Connect { path, reconnect }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_spellings_parse() {
        let c = parse_chardev("socket,id=c0,path=/tmp/vhu.sock,server=on,wait=off").unwrap();
        assert_eq!(c.id, "c0");
        assert_eq!(c.socket, ChardevSocket::Listen("/tmp/vhu.sock".into()));
        let c = parse_chardev("socket,id=c1,path=/tmp/q.sock,reconnect=2").unwrap();
        assert_eq!(
            c.socket,
            ChardevSocket::Connect {
                path: "/tmp/q.sock".into(),
                reconnect: Some(Duration::from_secs(2))
            }
        );
    }

    #[test]
    fn refusals_name_the_offender() {
        for (s, want) in [
            ("pty,id=c0", "backend 'pty'"),
            ("socket,id=c0,host=::1,port=5", "option 'host'"),
            ("socket,path=/x", "'id' is missing"),
            ("socket,id=c0", "no path"),
            ("socket,id=c0,path=/x,server=on,reconnect=1", "incompatible"),
            ("socket,id=c0,path=/x,bogus=1", "Invalid parameter 'bogus'"),
            ("socket,id=c0,path=/x,server=maybe", "expects 'on' or 'off'"),
        ] {
            let e = parse_chardev(s).unwrap_err().0;
            assert!(e.contains(want), "{s}: {e}");
        }
    }

    #[test]
    fn qmp_shape_parses_and_refuses() {
        let v: Value = serde_json::from_str(
            r#"{"id":"c0","backend":{"type":"socket","data":{"addr":{"type":"unix","data":{"path":"/tmp/a"}},"server":false,"reconnect":1}}}"#,
        )
        .unwrap();
        let c = chardev_from_qmp(v.as_object().unwrap()).unwrap();
        assert_eq!(
            c.socket,
            ChardevSocket::Connect {
                path: "/tmp/a".into(),
                reconnect: Some(Duration::from_secs(1))
            }
        );
        let v: Value = serde_json::from_str(
            r#"{"id":"c0","backend":{"type":"socket","data":{"addr":{"type":"inet","data":{"host":"h","port":"1"}}}}}"#,
        )
        .unwrap();
        assert!(chardev_from_qmp(v.as_object().unwrap())
            .unwrap_err()
            .0
            .contains("'inet'"));
    }
}
