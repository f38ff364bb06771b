//! `ringswitch qmp ADDRESS COMMAND [ARGS-JSON]`: runs one QMP command and prints its result,
//! for scripts. ADDRESS is a unix socket path, `unix:PATH` or `tcp:HOST:PORT`. Exit status 0
//! with the `return` value on stdout; 1 with the error's class and description on stderr.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: ringswitch qmp ADDRESS COMMAND [ARGS-JSON]\n  ADDRESS: a unix socket path, unix:PATH or tcp:HOST:PORT\n  e.g. ringswitch qmp /run/rs.sock set_link '{\"name\": \"a\", \"up\": false}'";

trait Conn: std::io::Read + Write {}
impl<T: std::io::Read + Write> Conn for T {}

fn connect(addr: &str) -> Result<Box<dyn Conn>, String> {
    let timeout = Some(Duration::from_secs(30));
    if let Some(hp) = addr.strip_prefix("tcp:") {
        let s = TcpStream::connect(hp).map_err(|e| format!("connecting to {hp}: {e}"))?;
        s.set_read_timeout(timeout).map_err(|e| e.to_string())?;
        return Ok(Box::new(s));
    }
    let path = addr.strip_prefix("unix:").unwrap_or(addr);
    let s = UnixStream::connect(path).map_err(|e| format!("connecting to {path}: {e}"))?;
    s.set_read_timeout(timeout).map_err(|e| e.to_string())?;
    Ok(Box::new(s))
}

/// Reads messages until one that is not an event.
fn answer(r: &mut impl BufRead) -> Result<Value, String> {
    let mut line = String::new();
    loop {
        line.clear();
        let n = r
            .read_line(&mut line)
            .map_err(|e| format!("reading: {e}"))?;
        if n == 0 {
            return Err("the switch closed the connection".into());
        }
        let v: Value = serde_json::from_str(&line).map_err(|e| format!("bad answer: {e}"))?;
        if v.get("event").is_none() {
            return Ok(v);
        }
    }
}

fn run(args: &[std::ffi::OsString]) -> Result<Value, String> {
    let args: Vec<&str> = args.iter().filter_map(|a| a.to_str()).collect();
    let (addr, cmd, cmd_args) = match args.as_slice() {
        [a, c] => (*a, *c, None),
        [a, c, j] => {
            let v: Value =
                serde_json::from_str(j).map_err(|e| format!("ARGS-JSON is not JSON: {e}"))?;
            if !v.is_object() {
                return Err("ARGS-JSON must be a JSON object".into());
            }
            (*a, *c, Some(v))
        }
        _ => return Err(USAGE.into()),
    };
    let conn = connect(addr)?;
    let mut reader = BufReader::new(conn);
    let greeting = answer(&mut reader)?;
    if greeting.get("QMP").is_none() {
        return Err(format!("not a QMP greeting: {greeting}"));
    }
    let mut send = |v: Value| -> Result<Value, String> {
        let mut bytes = serde_json::to_vec(&v).expect("serializable");
        bytes.push(b'\n');
        reader
            .get_mut()
            .write_all(&bytes)
            .map_err(|e| format!("writing: {e}"))?;
        answer(&mut reader)
    };
    let neg = send(json!({"execute": "qmp_capabilities"}))?;
    if neg.get("return").is_none() {
        return Err(format!("negotiation failed: {neg}"));
    }
    let mut req = json!({"execute": cmd});
    if let Some(a) = cmd_args {
        req["arguments"] = a;
    }
    let r = send(req)?;
    match (r.get("return"), r.get("error")) {
        (Some(v), _) => Ok(v.clone()),
        (_, Some(e)) => Err(format!(
            "{}: {}",
            e["class"].as_str().unwrap_or("?"),
            e["desc"].as_str().unwrap_or("?")
        )),
        _ => Err(format!("unexpected answer: {r}")),
    }
}

pub fn main(args: &[std::ffi::OsString]) -> ExitCode {
    match run(args) {
        Ok(v) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&v).expect("serializable")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringswitch qmp: {e}");
            ExitCode::FAILURE
        }
    }
}
