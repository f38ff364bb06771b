//! `--config FILE`: a JSON object whose `netdevs` and `chardevs` members list the objects QMP's
//! `netdev_add` and `chardev-add` take, and whose other members are the command-line options by
//! their long names. Each option member is looked up in the command line's own table (clap's
//! definition) and checked by clap as if it had been typed; each netdev and chardev object
//! goes through QMP's reader and is refused with QMP's error text. Every error names the file
//! and the member.

use super::CliExit;
use clap::{ArgAction, Command};
use ringswitch_backends::{Chardev, NetdevSpec};
use ringswitch_control::commands::{chardev_add_args, netdev_add_args};
use serde_json::Value;
use std::path::Path;

/// One option member, as the command-line arguments it stands for.
pub(super) struct FileOption {
    /// clap's id of the option (to ask whether the command line gave it too).
    pub id: String,
    /// The option's long name, the member's name.
    pub long: String,
    /// `--long=VALUE` for each value, or `--long` for a flag that is true.
    pub tokens: Vec<String>,
}

/// A config file, read and checked.
pub(super) struct ConfigFile {
    pub options: Vec<FileOption>,
    pub netdevs: Vec<NetdevSpec>,
    pub chardevs: Vec<Chardev>,
}

/// Names a JSON value's type, as errors say what was found.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Reads and checks `path` against the command line's option table `cmd`.
pub(super) fn load(path: &Path, cmd: &Command) -> Result<ConfigFile, CliExit> {
    let file = path.display().to_string();
    let fail = |what: String| CliExit::Invalid(format!("{file}: {what}"));
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    let top: Value =
        serde_json::from_str(&text).map_err(|e| fail(format!("not valid JSON: {e}")))?;
    let Value::Object(members) = top else {
        return Err(fail(format!(
            "expected a JSON object at the top, found {}",
            kind(&top)
        )));
    };
    let mut out = ConfigFile {
        options: Vec::new(),
        netdevs: Vec::new(),
        chardevs: Vec::new(),
    };
    for (name, value) in &members {
        let member = |what: String| fail(format!("member \"{name}\": {what}"));
        match name.as_str() {
            "netdevs" => {
                for (i, obj) in objects(value).map_err(&member)?.into_iter().enumerate() {
                    let at = |what: String| fail(format!("member \"netdevs\"[{i}]: {what}"));
                    let spec = netdev_add_args(obj).map_err(|e| at(e.desc))?;
                    if out.netdevs.iter().any(|n| n.id == spec.id) {
                        return Err(at(format!("Duplicate ID '{}' for netdev", spec.id)));
                    }
                    out.netdevs.push(spec);
                }
            }
            "chardevs" => {
                for (i, obj) in objects(value).map_err(&member)?.into_iter().enumerate() {
                    let at = |what: String| fail(format!("member \"chardevs\"[{i}]: {what}"));
                    let c = chardev_add_args(obj).map_err(|e| at(e.desc))?;
                    if out.chardevs.iter().any(|d| d.id == c.id) {
                        return Err(at(format!("Duplicate ID '{}' for chardev", c.id)));
                    }
                    out.chardevs.push(c);
                }
            }
            "netdev" | "chardev" => {
                return Err(member(format!(
                    "unknown member; ports are given as \"{name}s\", a list of the objects QMP's {} takes",
                    if name == "netdev" { "netdev_add" } else { "chardev-add" }
                )))
            }
            "config" => return Err(member("a config file cannot name another".into())),
            _ => out.options.push(option(cmd, name, value).map_err(member)?),
        }
    }
    Ok(out)
}

/// A list of JSON objects (netdev_add's or chardev-add's arguments).
fn objects(v: &Value) -> Result<Vec<&serde_json::Map<String, Value>>, String> {
    let Value::Array(items) = v else {
        return Err(format!("expected a list of objects, found {}", kind(v)));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.as_object()
                .ok_or_else(|| format!("item {i}: expected an object, found {}", kind(item)))
        })
        .collect()
}

/// The option member `name`: found in the option table by long name, its JSON value turned
/// into the arguments it stands for, and those checked by clap alone.
fn option(cmd: &Command, name: &str, value: &Value) -> Result<FileOption, String> {
    let arg = cmd
        .get_arguments()
        .find(|a| a.get_long() == Some(name) && !matches!(name, "help" | "version"))
        .ok_or_else(|| {
            let known: Vec<&str> = cmd
                .get_arguments()
                .filter_map(|a| a.get_long())
                .filter(|l| !matches!(*l, "config" | "netdev" | "chardev"))
                .collect();
            format!(
                "unknown member; valid: netdevs, chardevs, {}",
                known.join(", ")
            )
        })?;
    let long = format!("--{name}");
    let scalar = |v: &Value| match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(format!(
            "expected a string or a number, found {}",
            kind(other)
        )),
    };
    let tokens = match arg.get_action() {
        ArgAction::SetTrue => match value {
            Value::Bool(true) => vec![long],
            Value::Bool(false) => vec![],
            other => return Err(format!("expected true or false, found {}", kind(other))),
        },
        ArgAction::Append => match value {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(format!("{long}={s}")),
                    other => Err(format!(
                        "item {i}: expected a string, found {}",
                        kind(other)
                    )),
                })
                .collect::<Result<_, _>>()?,
            Value::String(s) => vec![format!("{long}={s}")],
            other => {
                return Err(format!(
                    "expected a string or a list of strings, found {}",
                    kind(other)
                ))
            }
        },
        _ => vec![format!("{long}={}", scalar(value)?)],
    };
    // The command line's own check of these values (types, ranges, choices).
    cmd.clone()
        .try_get_matches_from(std::iter::once("ringswitch".to_string()).chain(tokens.clone()))
        .map_err(|e| {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            first.strip_prefix("error: ").unwrap_or(first).to_string()
        })?;
    Ok(FileOption {
        id: arg.get_id().to_string(),
        long: name.to_string(),
        tokens,
    })
}
