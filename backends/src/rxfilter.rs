//! `RxFilterInfo` as JSON: the object QEMU's `query-rx-filter` returns, read into an
//! [`RxFilter`] with QAPI's typing and written back from one, so that query → set → query gives
//! the same object. One reader serves QMP's `set-rx-filter`, the `rx-filter=` netdev option
//! (a file, or an object inline in `netdev_add` and `--config`) and a later follow mode.
//!
//! Members are checked in the schema's order (net.json), as QEMU's input visitor does: the first
//! missing or mistyped member is the one reported, and members the schema does not have are
//! refused after that. Errors use the texts the QMP commands already use.

use ringswitch_switch::rxfilter::{RxFilter, RxState, VlanSet, MAX_VLAN};
use ringswitch_switch::MacAddr;
use serde_json::{json, Map, Value};
use std::path::Path;

/// RxFilterInfo's members, in the schema's order.
pub const MEMBERS: &[&str] = &[
    "name",
    "promiscuous",
    "multicast",
    "unicast",
    "vlan",
    "broadcast-allowed",
    "multicast-overflow",
    "unicast-overflow",
    "main-mac",
    "vlan-table",
    "unicast-table",
    "multicast-table",
];

/// Whether `name` must be given (`set-rx-filter`, where it names the port) or may be left
/// out (a netdev's own filter, where the netdev names the port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name {
    Required,
    Optional,
}

/// Why an RxFilterInfo object was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RxFilterError {
    #[error("Parameter '{0}' is missing")]
    Missing(&'static str),
    #[error("Parameter '{0}' is unexpected")]
    Unexpected(String),
    #[error("Invalid parameter type for '{member}', expected: {expected}")]
    WrongType {
        member: String,
        expected: &'static str,
    },
    #[error("Parameter '{member}' does not accept value '{value}'; valid: normal, none, all")]
    BadState { member: &'static str, value: String },
    #[error("Parameter '{member}' expects {expected}, got '{value}'")]
    BadValue {
        member: String,
        expected: &'static str,
        value: String,
    },
    #[error("{0}")]
    File(String),
}

/// A filter read from an RxFilterInfo object, with the name it gave (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RxFilterInfo {
    pub name: Option<String>,
    pub filter: RxFilter,
}

/// Reads one RxFilterInfo object. The tables are kept as given (order and all); QEMU's
/// capacity is the caller's to apply (`RxFilter::fit_tables`).
pub fn rx_filter_from_json(
    m: &Map<String, Value>,
    name: Name,
) -> Result<RxFilterInfo, RxFilterError> {
    let name = match (m.get("name"), name) {
        (Some(Value::String(s)), _) => Some(s.clone()),
        (Some(_), _) => return Err(wrong("name", "string")),
        (None, Name::Required) => return Err(RxFilterError::Missing("name")),
        (None, Name::Optional) => None,
    };
    let promiscuous = bool_member(m, "promiscuous")?;
    let multicast = state_member(m, "multicast")?;
    let unicast = state_member(m, "unicast")?;
    let vlan = state_member(m, "vlan")?;
    // QEMU's quirk, kept so that a NIC's filter copied verbatim means what it means there:
    // `virtio_net_query_rxfilter` reports `broadcast-allowed` as the NIC's `nobcast` (true
    // when broadcast is refused) — a Linux guest that takes broadcast reports false.
    let broadcast_allowed = !bool_member(m, "broadcast-allowed")?;
    let multicast_overflow = bool_member(m, "multicast-overflow")?;
    let unicast_overflow = bool_member(m, "unicast-overflow")?;
    let main_mac = mac(
        "main-mac".into(),
        member(m, "main-mac")?,
        "a MAC address such as 52:54:00:12:34:56",
        |_| true,
    )?;
    let mut vlan_table = VlanSet::empty();
    for (i, v) in list_member(m, "vlan-table")?.iter().enumerate() {
        let at = format!("vlan-table[{i}]");
        let id = v.as_i64().ok_or_else(|| wrong(&at, "integer"))?;
        if !(0..MAX_VLAN as i64).contains(&id) {
            return Err(RxFilterError::BadValue {
                member: at,
                expected: "a VLAN id, 0 to 4095",
                value: id.to_string(),
            });
        }
        vlan_table.insert(id as u16);
    }
    let unicast_table = mac_list(
        m,
        "unicast-table",
        "a unicast MAC address such as 52:54:00:12:34:56",
        |a| a.is_unicast(),
    )?;
    let multicast_table = mac_list(
        m,
        "multicast-table",
        "a multicast MAC address such as 33:33:00:00:00:01",
        |a| a.is_multicast(),
    )?;
    if let Some(k) = m.keys().find(|k| !MEMBERS.contains(&k.as_str())) {
        return Err(RxFilterError::Unexpected(k.clone()));
    }
    Ok(RxFilterInfo {
        name,
        filter: RxFilter {
            promiscuous,
            unicast,
            multicast,
            vlan,
            broadcast_allowed,
            unicast_overflow,
            multicast_overflow,
            main_mac,
            unicast_table,
            multicast_table,
            vlan_table,
        },
    })
}

/// Reads an RxFilterInfo object from the JSON file at `path` (`name` may be left out).
pub fn rx_filter_from_file(path: &Path) -> Result<RxFilterInfo, RxFilterError> {
    let file = |why: String| RxFilterError::File(format!("{}: {why}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| file(e.to_string()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| file(e.to_string()))?;
    let Value::Object(m) = v else {
        return Err(file(
            "expected one RxFilterInfo object, as query-rx-filter lists them".into(),
        ));
    };
    rx_filter_from_json(&m, Name::Optional).map_err(|e| file(e.to_string()))
}

/// The RxFilterInfo object of port `name`: the filter exactly as it was set, the VLAN ids
/// highest first and the tables in their order (as QEMU lists them).
pub fn rx_filter_to_json(name: &str, f: &RxFilter) -> Value {
    let macs = |t: &[MacAddr]| t.iter().map(|m| m.to_string()).collect::<Vec<_>>();
    json!({
        "name": name,
        "promiscuous": f.promiscuous,
        "multicast": f.multicast.as_str(),
        "unicast": f.unicast.as_str(),
        "vlan": f.vlan.as_str(),
        // QEMU's meaning: the inverse (see `rx_filter_from_json`).
        "broadcast-allowed": !f.broadcast_allowed,
        "multicast-overflow": f.multicast_overflow,
        "unicast-overflow": f.unicast_overflow,
        "main-mac": f.main_mac.to_string(),
        "vlan-table": f.vlan_table.ids_descending().collect::<Vec<_>>(),
        "unicast-table": macs(&f.unicast_table),
        "multicast-table": macs(&f.multicast_table),
    })
}

fn wrong(member: &str, expected: &'static str) -> RxFilterError {
    RxFilterError::WrongType {
        member: member.into(),
        expected,
    }
}

fn member<'a>(m: &'a Map<String, Value>, name: &'static str) -> Result<&'a Value, RxFilterError> {
    m.get(name).ok_or(RxFilterError::Missing(name))
}

fn bool_member(m: &Map<String, Value>, name: &'static str) -> Result<bool, RxFilterError> {
    member(m, name)?
        .as_bool()
        .ok_or_else(|| wrong(name, "boolean"))
}

fn state_member(m: &Map<String, Value>, name: &'static str) -> Result<RxState, RxFilterError> {
    let s = member(m, name)?
        .as_str()
        .ok_or_else(|| wrong(name, "string"))?;
    s.parse().map_err(|_| RxFilterError::BadState {
        member: name,
        value: s.into(),
    })
}

fn list_member<'a>(
    m: &'a Map<String, Value>,
    name: &'static str,
) -> Result<&'a [Value], RxFilterError> {
    member(m, name)?
        .as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| wrong(name, "array"))
}

fn mac(
    at: String,
    v: &Value,
    expected: &'static str,
    kind: impl Fn(&MacAddr) -> bool,
) -> Result<MacAddr, RxFilterError> {
    let s = v.as_str().ok_or_else(|| wrong(&at, "string"))?;
    s.parse::<MacAddr>()
        .ok()
        .filter(|a| kind(a))
        .ok_or_else(|| RxFilterError::BadValue {
            member: at,
            expected,
            value: s.into(),
        })
}

fn mac_list(
    m: &Map<String, Value>,
    name: &'static str,
    expected: &'static str,
    kind: impl Fn(&MacAddr) -> bool + Copy,
) -> Result<Vec<MacAddr>, RxFilterError> {
    list_member(m, name)?
        .iter()
        .enumerate()
        .map(|(i, v)| mac(format!("{name}[{i}]"), v, expected, kind))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a Linux guest's virtio-net NIC reports once its driver is up (QEMU 7.2).
    fn guest() -> Value {
        json!({
            "name": "net1",
            "promiscuous": false,
            "multicast": "normal",
            "unicast": "normal",
            "vlan": "normal",
            "broadcast-allowed": false,
            "multicast-overflow": false,
            "unicast-overflow": false,
            "main-mac": "52:54:00:12:34:56",
            "vlan-table": [4, 0],
            "unicast-table": ["02:00:00:00:00:09"],
            "multicast-table": ["33:33:ff:00:77:09", "01:00:5e:00:00:01", "33:33:00:00:00:01"],
        })
    }

    fn read(v: &Value) -> Result<RxFilterInfo, RxFilterError> {
        rx_filter_from_json(v.as_object().unwrap(), Name::Required)
    }

    #[test]
    fn an_object_round_trips_exactly() {
        let v = guest();
        let info = read(&v).unwrap();
        assert_eq!(info.name.as_deref(), Some("net1"));
        assert!(!info.filter.promiscuous && info.filter.vlan_table.contains(4));
        assert_eq!(rx_filter_to_json("net1", &info.filter), v);
        // The promiscuous default, with every VLAN id listed (a NIC before its driver).
        let all = rx_filter_to_json("p", &RxFilter::promiscuous(MacAddr::ZERO));
        assert_eq!(rx_filter_to_json("p", &read(&all).unwrap().filter), all);
    }

    #[test]
    fn members_are_checked_in_schema_order_with_qapi_texts() {
        let with = |k: &str, val: Value| {
            let mut v = guest();
            v[k] = val;
            read(&v).unwrap_err().to_string()
        };
        let without = |k: &str| {
            let mut v = guest();
            v.as_object_mut().unwrap().remove(k);
            read(&v).unwrap_err().to_string()
        };
        for k in MEMBERS {
            assert_eq!(without(k), format!("Parameter '{k}' is missing"));
        }
        assert_eq!(
            with("promiscuous", json!("yes")),
            "Invalid parameter type for 'promiscuous', expected: boolean"
        );
        assert_eq!(
            with("unicast", json!("x")),
            "Parameter 'unicast' does not accept value 'x'; valid: normal, none, all"
        );
        assert_eq!(
            with("vlan", json!(1)),
            "Invalid parameter type for 'vlan', expected: string"
        );
        assert_eq!(
            with("main-mac", json!("52:54:00:12:34")),
            "Parameter 'main-mac' expects a MAC address such as 52:54:00:12:34:56, got '52:54:00:12:34'"
        );
        assert_eq!(
            with("vlan-table", json!([1, 4096])),
            "Parameter 'vlan-table[1]' expects a VLAN id, 0 to 4095, got '4096'"
        );
        assert_eq!(
            with("vlan-table", json!([-1])),
            "Parameter 'vlan-table[0]' expects a VLAN id, 0 to 4095, got '-1'"
        );
        assert_eq!(
            with("vlan-table", json!(["1"])),
            "Invalid parameter type for 'vlan-table[0]', expected: integer"
        );
        assert_eq!(
            with("unicast-table", json!("02:00:00:00:00:01")),
            "Invalid parameter type for 'unicast-table', expected: array"
        );
        assert!(with("unicast-table", json!(["01:00:5e:00:00:01"]))
            .starts_with("Parameter 'unicast-table[0]' expects a unicast MAC address"));
        assert!(with(
            "multicast-table",
            json!(["33:33:00:00:00:01", "02:00:00:00:00:01"])
        )
        .starts_with("Parameter 'multicast-table[1]' expects a multicast MAC address"));
        assert_eq!(with("extra", json!(1)), "Parameter 'extra' is unexpected");
        // The first problem in schema order is the one reported.
        let mut v = guest();
        v["vlan"] = json!("bad");
        v["unicast"] = json!(7);
        assert_eq!(
            read(&v).unwrap_err().to_string(),
            "Invalid parameter type for 'unicast', expected: string"
        );
    }

    #[test]
    fn a_netdevs_filter_may_leave_the_name_out() {
        let mut v = guest();
        v.as_object_mut().unwrap().remove("name");
        let info = rx_filter_from_json(v.as_object().unwrap(), Name::Optional).unwrap();
        assert_eq!(info.name, None);
        let dir = std::env::temp_dir().join(format!("rs-rxf-{}", std::process::id()));
        std::fs::write(&dir, v.to_string()).unwrap();
        let from_file = rx_filter_from_file(&dir);
        std::fs::write(&dir, "[1]").unwrap();
        let not_object = rx_filter_from_file(&dir).unwrap_err().to_string();
        let _ = std::fs::remove_file(&dir);
        assert_eq!(from_file.unwrap().filter, info.filter);
        assert!(
            not_object.contains("one RxFilterInfo object"),
            "{not_object}"
        );
        let missing = rx_filter_from_file(Path::new("/nonexistent/rx.json")).unwrap_err();
        assert!(missing.to_string().starts_with("/nonexistent/rx.json: "));
    }
}
