//! `Qmp`: a QMP client for the switch under test, on its unix socket. Every read is bounded
//! by a timeout.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// A QMP connection to the switch under test (greeting read, capabilities negotiated).
pub struct Qmp(BufReader<UnixStream>);

impl Qmp {
    /// Connects (retrying for up to 10 s while the socket is not there yet) and negotiates.
    pub fn connect(path: &Path) -> Qmp {
        let end = Instant::now() + Duration::from_secs(10);
        let s = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(_) if Instant::now() < end => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => panic!("QMP at {}: {e}", path.display()),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut q = Qmp(BufReader::new(s));
        q.line();
        q.execute("qmp_capabilities");
        q
    }

    fn line(&mut self) -> serde_json::Value {
        let mut l = String::new();
        self.0.read_line(&mut l).expect("a QMP line");
        serde_json::from_str(&l).expect("QMP JSON")
    }

    /// Runs `cmd` without arguments; its `return` (null after an error).
    pub fn execute(&mut self, cmd: &str) -> serde_json::Value {
        self.send(serde_json::json!({"execute": cmd}))["return"].clone()
    }

    /// Runs `cmd` with `arguments`; the whole answer (`return` or `error`).
    pub fn execute_with(&mut self, cmd: &str, arguments: serde_json::Value) -> serde_json::Value {
        self.send(serde_json::json!({"execute": cmd, "arguments": arguments}))
    }

    /// Sends one request; its answer, events skipped.
    fn send(&mut self, req: serde_json::Value) -> serde_json::Value {
        writeln!(self.0.get_mut(), "{req}").unwrap();
        loop {
            let v = self.line();
            if v.get("event").is_none() {
                return v;
            }
        }
    }

    /// Port `id` as `query-ports` shows it.
    pub fn port(&mut self, id: &str) -> serde_json::Value {
        let ports = self.execute("query-ports");
        ports
            .as_array()
            .expect("a list of ports")
            .iter()
            .find(|p| p["id"] == id)
            .expect("the port")
            .clone()
    }

    /// `connected` of port `id` in `query-ports`.
    pub fn connected(&mut self, id: &str) -> bool {
        self.port(id)["connected"].as_bool().expect("connected")
    }
}

/// One raw QMP command line (`{"execute": …}`) over a fresh connection to `path`; the whole
/// answer (`{"return": …}` or `{"error": …}`).
pub fn execute_once(path: &Path, cmd: &str) -> serde_json::Value {
    let s = UnixStream::connect(path).expect("QMP");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    writeln!(w, r#"{{"execute":"qmp_capabilities"}}"#).unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    writeln!(w, "{cmd}").unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}
