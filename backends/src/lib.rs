//! ringswitch's port kinds: QEMU `-netdev` option parsing and the kernel objects behind each
//! port. A backend opens its object and hands the data plane a descriptor plus the recipe to
//! drive it; it never touches frames on the hot path itself.

pub mod addr;
pub mod bridge;
pub mod chardev;
pub mod kinds;
pub mod netdev;
pub mod open;
pub mod rxfilter;
pub mod socket;
pub mod tap;
pub mod user;
pub mod vde;
pub mod vde_serve;
pub mod vhost_user;

pub use chardev::{chardev_from_qmp, parse_chardev, Chardev, ChardevSocket};
pub use netdev::{
    netdev_from_qmp, parse_netdev, NetdevError, NetdevId, NetdevKind, NetdevSpec, Script,
    TapOptions,
};
pub use open::{open, served_vde, set_carrier, Conn, OpenError, OpenedPort};
pub use rxfilter::{rx_filter_from_json, rx_filter_to_json, RxFilterError, RxFilterInfo};
pub use tap::{Tap, TapError};
