//! QEMU's `RxFilterInfo` (qapi/net.json, the answer of `query-rx-filter`) read into the
//! switch's [`RxFilter`]. Strict about the fields the model needs (each must be there, with
//! its type); fields it does not know are ignored, so a newer QEMU still parses.

use serde_json::{Map, Value};

use ringswitch_switch::rxfilter::{RxFilter, RxState, VlanSet, MAX_VLAN};
use ringswitch_switch::MacAddr;

/// Reads an `RxFilterInfo` as its schema names its fields, every field taken literally.
/// The error says which field was missing or malformed and what was expected.
pub fn rx_filter_from_info(info: &Value) -> Result<RxFilter, String> {
    let obj = info
        .as_object()
        .ok_or_else(|| format!("RxFilterInfo must be an object, not {}", kind(info)))?;
    let mut vlan_table = VlanSet::empty();
    for v in list(obj, "vlan-table")? {
        match v.as_u64() {
            Some(id) if id < MAX_VLAN as u64 => vlan_table.insert(id as u16),
            _ => {
                return Err(format!(
                    "RxFilterInfo 'vlan-table' holds {v}; expected VLAN ids 0..4095"
                ))
            }
        }
    }
    Ok(RxFilter {
        promiscuous: flag(obj, "promiscuous")?,
        unicast: state(obj, "unicast")?,
        multicast: state(obj, "multicast")?,
        vlan: state(obj, "vlan")?,
        broadcast_allowed: flag(obj, "broadcast-allowed")?,
        unicast_overflow: flag(obj, "unicast-overflow")?,
        multicast_overflow: flag(obj, "multicast-overflow")?,
        main_mac: mac(field(obj, "main-mac")?, "main-mac")?,
        unicast_table: macs(obj, "unicast-table")?,
        multicast_table: macs(obj, "multicast-table")?,
        vlan_table,
    })
}

/// What a QEMU virtio-net NIC accepts, from its `RxFilterInfo`: as [`rx_filter_from_info`],
/// with `broadcast-allowed` turned the right way round. QEMU's `virtio_net_query_rxfilter`
/// reports `broadcast_allowed = n->nobcast` while its `receive_filter` takes broadcast when
/// `!n->nobcast`, so a Linux guest (which never sets NOBCAST) is reported as
/// `"broadcast-allowed": false` while it receives broadcast (seen from QEMU 7.2.22; the
/// line is the same in QEMU's later releases). virtio-net is the only QEMU NIC that answers
/// `query-rx-filter`, so every real answer carries this inversion.
pub fn rx_filter_from_qemu(info: &Value) -> Result<RxFilter, String> {
    let mut f = rx_filter_from_info(info)?;
    f.broadcast_allowed = !f.broadcast_allowed;
    Ok(f)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn field<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a Value, String> {
    obj.get(key)
        .ok_or_else(|| format!("RxFilterInfo lacks '{key}'"))
}

fn flag(obj: &Map<String, Value>, key: &str) -> Result<bool, String> {
    let v = field(obj, key)?;
    v.as_bool()
        .ok_or_else(|| format!("RxFilterInfo '{key}' must be a boolean, not {}", kind(v)))
}

fn state(obj: &Map<String, Value>, key: &str) -> Result<RxState, String> {
    let v = field(obj, key)?;
    let s = v
        .as_str()
        .ok_or_else(|| format!("RxFilterInfo '{key}' must be a string, not {}", kind(v)))?;
    s.parse().map_err(|e| format!("RxFilterInfo '{key}': {e}"))
}

fn list<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a [Value], String> {
    let v = field(obj, key)?;
    v.as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| format!("RxFilterInfo '{key}' must be an array, not {}", kind(v)))
}

fn mac(v: &Value, key: &str) -> Result<MacAddr, String> {
    let s = v.as_str().ok_or_else(|| {
        format!(
            "RxFilterInfo '{key}' holds {}; expected a MAC string",
            kind(v)
        )
    })?;
    s.parse().map_err(|e| format!("RxFilterInfo '{key}': {e}"))
}

fn macs(obj: &Map<String, Value>, key: &str) -> Result<Vec<MacAddr>, String> {
    list(obj, key)?.iter().map(|v| mac(v, key)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// QEMU 7.2.22's answer for a Linux guest's virtio-net NIC once a macvlan is up on it.
    fn qemu_answer() -> Value {
        json!({"promiscuous": false, "name": "nic0", "main-mac": "52:54:00:12:34:56",
               "unicast": "normal", "vlan": "none", "vlan-table": [], "unicast-table":
               ["02:00:00:aa:bb:cc"], "multicast": "normal", "multicast-overflow": false,
               "unicast-overflow": false, "multicast-table": ["33:33:ff:aa:bb:cc",
               "33:33:ff:12:34:56", "01:00:5e:00:00:01", "33:33:00:00:00:01"],
               "broadcast-allowed": false})
    }

    #[test]
    fn a_real_qemu_answer_reads_into_the_model() {
        let f = rx_filter_from_info(&qemu_answer()).unwrap();
        assert!(!f.promiscuous && f.vlan == RxState::None && f.unicast == RxState::Normal);
        assert_eq!(f.main_mac.to_string(), "52:54:00:12:34:56");
        assert_eq!(f.unicast_table, vec!["02:00:00:aa:bb:cc".parse().unwrap()]);
        assert_eq!(f.multicast_table.len(), 4);
        assert!(!f.broadcast_allowed);
        assert!(
            rx_filter_from_qemu(&qemu_answer())
                .unwrap()
                .broadcast_allowed
        );
    }

    #[test]
    fn vlan_ids_are_read_and_checked() {
        let mut v = qemu_answer();
        v["vlan-table"] = json!([4095, 7, 0]);
        let f = rx_filter_from_info(&v).unwrap();
        assert!(
            f.vlan_table.contains(7) && f.vlan_table.contains(4095) && !f.vlan_table.contains(8)
        );
        v["vlan-table"] = json!([4096]);
        assert!(rx_filter_from_info(&v).unwrap_err().contains("0..4095"));
    }

    #[test]
    fn errors_name_the_field_and_what_is_expected() {
        let mut v = qemu_answer();
        v.as_object_mut().unwrap().remove("promiscuous");
        assert_eq!(
            rx_filter_from_info(&v).unwrap_err(),
            "RxFilterInfo lacks 'promiscuous'"
        );
        let mut v = qemu_answer();
        v["unicast"] = json!("some");
        assert!(rx_filter_from_info(&v)
            .unwrap_err()
            .contains("normal, none, all"));
        v = qemu_answer();
        v["multicast-table"] = json!(["01:00:5e"]);
        assert!(rx_filter_from_info(&v)
            .unwrap_err()
            .contains("'multicast-table'"));
        v = qemu_answer();
        v["broadcast-allowed"] = json!("yes");
        assert!(rx_filter_from_info(&v)
            .unwrap_err()
            .contains("must be a boolean"));
        assert!(rx_filter_from_info(&json!([]))
            .unwrap_err()
            .contains("an array"));
    }
}
