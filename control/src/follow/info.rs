//! QEMU's `RxFilterInfo` (qapi/net.json, the answer of `query-rx-filter`) read into the
//! switch's [`RxFilter`], through the one parser `set-rx-filter` and the `rx-filter=` option
//! use (`ringswitch_backends::rxfilter`). Strict about the members the model needs (each must
//! be there, with its type); members it does not know are ignored, so a newer QEMU still
//! parses.

use serde_json::{Map, Value};

use ringswitch_backends::rxfilter::{rx_filter_from_json, Name, MEMBERS};
use ringswitch_switch::rxfilter::RxFilter;

/// What a QEMU virtio-net NIC accepts, from its `RxFilterInfo`, read as QEMU means it — and
/// as `set-rx-filter` reads it: `broadcast-allowed` is QEMU's inverted `nobcast`
/// (`virtio_net_query_rxfilter` reports `broadcast_allowed = n->nobcast` while its
/// `receive_filter` takes broadcast when `!n->nobcast`, so a Linux guest, which never sets
/// NOBCAST, is reported as `"broadcast-allowed": false` while it receives broadcast; seen
/// from QEMU 7.2.22, and the line is the same in QEMU's later releases).
pub fn rx_filter_from_qemu(info: &Value) -> Result<RxFilter, String> {
    let obj = info
        .as_object()
        .ok_or_else(|| format!("RxFilterInfo must be an object, not {}", kind(info)))?;
    let known: Map<String, Value> = obj
        .iter()
        .filter(|(k, _)| MEMBERS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    rx_filter_from_json(&known, Name::Optional)
        .map(|i| i.filter)
        .map_err(|e| format!("RxFilterInfo: {e}"))
}

/// As [`rx_filter_from_qemu`], but `broadcast-allowed` taken literally (for a QEMU that
/// reported it the right way round).
pub fn rx_filter_from_info(info: &Value) -> Result<RxFilter, String> {
    let mut f = rx_filter_from_qemu(info)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use ringswitch_switch::rxfilter::RxState;
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
        assert!(rx_filter_from_info(&v).unwrap_err().contains("0 to 4095"));
    }

    #[test]
    fn errors_name_the_field_and_what_is_expected() {
        let mut v = qemu_answer();
        v.as_object_mut().unwrap().remove("promiscuous");
        assert_eq!(
            rx_filter_from_info(&v).unwrap_err(),
            "RxFilterInfo: Parameter 'promiscuous' is missing"
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
            .contains("'multicast-table[0]'"));
        v = qemu_answer();
        v["broadcast-allowed"] = json!("yes");
        assert!(rx_filter_from_info(&v)
            .unwrap_err()
            .contains("expected: boolean"));
        assert!(rx_filter_from_info(&json!([]))
            .unwrap_err()
            .contains("an array"));
    }
}
