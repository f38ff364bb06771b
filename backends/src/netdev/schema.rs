//! What each netdev kind accepts, as QEMU's `qapi/net.json` declares it: the kinds this build
//! serves, the option names and value types of each, and the QEMU options ringswitch refuses
//! with the reason. Only tables live here; checking a spec against them is `netdev::build`'s.

use super::keyval::Ty;
use super::NetdevError;

/// Netdev kinds this build of ringswitch can open.
pub const SUPPORTED_KINDS: &[&str] = &[
    "tap",
    "socket",
    "stream",
    "dgram",
    "l2tpv3",
    "bridge",
    "hubport",
    "vhost-user",
    "vde",
    "user",
];

/// Kinds QEMU's schema has that this build does not (yet) serve.
const QEMU_ONLY_KINDS: &[&str] = &[
    "netmap",
    "af-xdp",
    "vhost-vdpa",
    "vmnet-host",
    "vmnet-shared",
    "vmnet-bridged",
];

/// Options every kind takes besides `type` and `id`, all ringswitch extensions: `macaddr`
/// names the station behind the port (reported by query-rx-filter, announced by
/// announce-self); `worker` names the worker that serves the port (otherwise the one with the
/// fewest ports); `rx-filter` names a JSON file holding the RxFilterInfo object of what the
/// station accepts (over QMP and in `--config`, the object may also be given inline).
pub(crate) const COMMON_OPTIONS: &[(&str, Ty)] = &[
    ("macaddr", Ty::Str),
    ("worker", Ty::Int),
    ("rx-filter", Ty::Str),
    ("rx-filter-qmp", Ty::Str),
    ("rx-filter-nic", Ty::Str),
];

/// Options of QEMU's tap that ringswitch accepts.
const TAP_OPTIONS: &[(&str, Ty)] = &[
    ("ifname", Ty::Str),
    ("fd", Ty::Str),
    ("script", Ty::Str),
    ("downscript", Ty::Str),
    ("vnet_hdr", Ty::Bool),
    ("queues", Ty::Int),
];

/// Options of QEMU's tap (net.json `NetdevTapOptions`) that ringswitch refuses, with why.
const TAP_UNSUPPORTED: &[(&str, &str)] = &[
    (
        "fds",
        "inherited multiqueue taps are not supported; use queues=N (ringswitch opens the queues)",
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
    (
        "poll-us",
        "polling is the worker's, for all its ports: see --poll and --poll-max-us",
    ),
];

const SOCKET_OPTIONS: &[(&str, Ty)] = &[
    ("fd", Ty::Str),
    ("listen", Ty::Str),
    ("connect", Ty::Str),
    ("mcast", Ty::Str),
    ("localaddr", Ty::Str),
    ("udp", Ty::Str),
    ("reconnect", Ty::Int),
];

/// A QAPI SocketAddress under a prefix, as dotted keys.
macro_rules! socket_address_options {
    ($p:literal) => {
        [
            (concat!($p, ".type"), Ty::Str),
            (concat!($p, ".host"), Ty::Str),
            (concat!($p, ".port"), Ty::Str),
            (concat!($p, ".path"), Ty::Str),
            (concat!($p, ".str"), Ty::Str),
        ]
    };
}

const STREAM_OPTIONS: &[(&str, Ty)] = &{
    let a = socket_address_options!("addr");
    [
        ("server", Ty::Bool),
        ("reconnect", Ty::Int),
        a[0],
        a[1],
        a[2],
        a[3],
        a[4],
    ]
};

const DGRAM_OPTIONS: &[(&str, Ty)] = &{
    let l = socket_address_options!("local");
    let r = socket_address_options!("remote");
    [l[0], l[1], l[2], l[3], l[4], r[0], r[1], r[2], r[3], r[4]]
};

/// Options of QEMU's SocketAddress that ringswitch refuses, with why.
const ADDRESS_UNSUPPORTED: &[(&str, &str)] = &[
    ("addr.numeric", "host names are always resolved"),
    ("addr.to", "port ranges are not supported"),
    ("addr.ipv4", "the address family follows the host address"),
    ("addr.ipv6", "the address family follows the host address"),
    ("addr.keep-alive", "TCP keep-alive is not supported"),
    ("addr.abstract", "abstract unix sockets are not supported"),
    ("addr.tight", "abstract unix sockets are not supported"),
    ("local.abstract", "abstract unix sockets are not supported"),
    ("remote.abstract", "abstract unix sockets are not supported"),
];

const L2TPV3_OPTIONS: &[(&str, Ty)] = &[
    ("src", Ty::Str),
    ("dst", Ty::Str),
    ("srcport", Ty::Str),
    ("dstport", Ty::Str),
    ("ipv6", Ty::Bool),
    ("udp", Ty::Bool),
    ("cookie64", Ty::Bool),
    ("counter", Ty::Bool),
    ("pincounter", Ty::Bool),
    ("txcookie", Ty::UInt),
    ("rxcookie", Ty::UInt),
    ("txsession", Ty::UInt),
    ("rxsession", Ty::UInt),
    ("offset", Ty::UInt),
];

/// `vnet_hdr` is a ringswitch extension here (QEMU's bridge netdev has none): the tap it
/// creates carries offloads as a tap's does.
const BRIDGE_OPTIONS: &[(&str, Ty)] = &[("br", Ty::Str), ("vnet_hdr", Ty::Bool)];
const BRIDGE_UNSUPPORTED: &[(&str, &str)] = &[(
    "helper",
    "ringswitch attaches the tap to the bridge itself, without a helper",
)];

const HUBPORT_OPTIONS: &[(&str, Ty)] = &[("hubid", Ty::Int), ("netdev", Ty::Str)];

/// QEMU's `NetdevVhostUserOptions`: the chardev the frontend talks over, and how many queue
/// pairs. `vhostforce` is accepted (it is deprecated in QEMU and means nothing here).
const VHOST_USER_OPTIONS: &[(&str, Ty)] = &[
    ("chardev", Ty::Str),
    ("queues", Ty::Int),
    ("vhostforce", Ty::Bool),
];

/// QEMU's `NetdevVdeOptions`: the vde_switch's directory, the port to plug into, and the
/// data socket's group and permissions (`mode=0700` is octal, as in QEMU).
const VDE_OPTIONS: &[(&str, Ty)] = &[
    ("sock", Ty::Str),
    ("port", Ty::UInt),
    ("group", Ty::Str),
    ("mode", Ty::UInt),
];

/// QEMU's `NetdevUserOptions` (libslirp), all but Samba's.
const USER_OPTIONS: &[(&str, Ty)] = &[
    ("hostname", Ty::Str),
    ("restrict", Ty::Bool),
    ("ipv4", Ty::Bool),
    ("ipv6", Ty::Bool),
    ("ip", Ty::Str),
    ("net", Ty::Str),
    ("host", Ty::Str),
    ("tftp", Ty::Str),
    ("bootfile", Ty::Str),
    ("dhcpstart", Ty::Str),
    ("dns", Ty::Str),
    ("dnssearch", Ty::StrList),
    ("domainname", Ty::Str),
    ("ipv6-prefix", Ty::Str),
    ("ipv6-prefixlen", Ty::Int),
    ("ipv6-host", Ty::Str),
    ("ipv6-dns", Ty::Str),
    ("hostfwd", Ty::StrList),
    ("guestfwd", Ty::StrList),
    ("tftp-server-name", Ty::Str),
];
const USER_UNSUPPORTED: &[(&str, &str)] = &[
    (
        "smb",
        "the SMB share needs Samba's smbd, which ringswitch does not run",
    ),
    (
        "smbserver",
        "the SMB share needs Samba's smbd, which ringswitch does not run",
    ),
];

/// One kind's schema.
pub(crate) struct Schema {
    /// The kind's name, as `type=` gives it.
    pub(crate) kind: &'static str,
    /// The options it accepts, with their types (`type`, `id` and `COMMON_OPTIONS` aside).
    pub(crate) options: &'static [(&'static str, Ty)],
    /// QEMU options of this kind that ringswitch refuses, with why.
    pub(crate) refused: &'static [(&'static str, &'static str)],
}

impl Schema {
    /// The schema of kind `ty`, or why there is none.
    pub(crate) fn of(ty: &str) -> Result<Schema, NetdevError> {
        let (kind, options, refused): (&'static str, _, &'static [(&str, &str)]) = match ty {
            "tap" => ("tap", TAP_OPTIONS, TAP_UNSUPPORTED),
            "socket" => ("socket", SOCKET_OPTIONS, &[]),
            "stream" => ("stream", STREAM_OPTIONS, ADDRESS_UNSUPPORTED),
            "dgram" => ("dgram", DGRAM_OPTIONS, ADDRESS_UNSUPPORTED),
            "l2tpv3" => ("l2tpv3", L2TPV3_OPTIONS, &[]),
            "bridge" => ("bridge", BRIDGE_OPTIONS, BRIDGE_UNSUPPORTED),
            "hubport" => ("hubport", HUBPORT_OPTIONS, &[]),
            "vhost-user" => ("vhost-user", VHOST_USER_OPTIONS, &[]),
            "vde" => ("vde", VDE_OPTIONS, &[]),
            "user" => ("user", USER_OPTIONS, USER_UNSUPPORTED),
            other if QEMU_ONLY_KINDS.contains(&other) => {
                return Err(NetdevError::UnsupportedType(other.to_string()))
            }
            other => return Err(NetdevError::UnknownType(other.to_string())),
        };
        Ok(Schema {
            kind,
            options,
            refused,
        })
    }

    /// The declared type of option `k`, if this kind accepts it.
    pub(crate) fn ty(&self, k: &str) -> Option<Ty> {
        self.options.iter().find(|(n, _)| *n == k).map(|(_, t)| *t)
    }

    /// Why this kind refuses QEMU's option `k`, if it is one ringswitch knows and refuses.
    pub(crate) fn refusal(&self, k: &str) -> Option<&'static str> {
        self.refused
            .iter()
            .find(|(o, _)| *o == k)
            .map(|(_, why)| *why)
    }

    /// Every option name this kind accepts, `id` and the common options included.
    pub(crate) fn valid(&self) -> String {
        let valid: Vec<&str> = ["id"]
            .into_iter()
            .chain(self.options.iter().map(|(n, _)| *n))
            .chain(COMMON_OPTIONS.iter().map(|(n, _)| *n))
            .collect();
        valid.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_kind_has_a_schema() {
        for k in SUPPORTED_KINDS {
            assert_eq!(Schema::of(k).map(|s| s.kind), Ok(*k));
        }
        for k in QEMU_ONLY_KINDS {
            assert_eq!(
                Schema::of(k).err(),
                Some(NetdevError::UnsupportedType(k.to_string()))
            );
        }
    }
}
