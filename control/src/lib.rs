//! ringswitch's control plane: a QMP server (QEMU's Machine Protocol) driving the switch with
//! the net commands of QEMU's `qapi/net.json`.

pub mod json;
