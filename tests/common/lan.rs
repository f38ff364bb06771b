//! `Lan`: one switch whose tap ports each sit in a namespace of their own, one host per
//! port — the smallest network that shows what a switch does.

use super::{host_mac, unique_name, MacAddr, Netns, Stopped, Switch};

/// One host: a namespace holding one switch port's tap, configured as its only interface.
pub struct Host {
    pub ns: Netns,
    /// The port id given to the switch (`a`, `b`, …).
    pub id: String,
    pub ifname: String,
    pub mac: MacAddr,
    /// IPv4 address without prefix length, when the host has one.
    pub ip: Option<String>,
}

/// Fields drop in declaration order: the switch stops (its taps vanish) before the
/// namespaces are deleted.
pub struct Lan {
    switch: Option<Switch>,
    pub hosts: Vec<Host>,
}

impl Lan {
    /// Starts a switch with `ports` tap ports plus `extra_args`, moves each tap into a new
    /// namespace and brings it up; with `ipv4`, host i gets 10.77.0.(i+1)/24.
    pub fn new(ports: usize, ipv4: bool, extra_args: &[&str]) -> Lan {
        assert!((1..=26).contains(&ports));
        let mut hosts = Vec::with_capacity(ports);
        for i in 0..ports {
            hosts.push(Host {
                ns: Netns::new(),
                id: char::from(b'a' + i as u8).to_string(),
                ifname: unique_name("rst"),
                mac: host_mac(i as u8 + 1),
                ip: ipv4.then(|| format!("10.77.0.{}", i + 1)),
            });
        }
        let netdevs: Vec<String> = hosts
            .iter()
            .map(|h| format!("tap,id={},ifname={}", h.id, h.ifname))
            .collect();
        let mut args: Vec<&str> = Vec::new();
        for nd in &netdevs {
            args.extend(["-netdev", nd.as_str()]);
        }
        args.extend_from_slice(extra_args);
        let mut lan = Lan {
            switch: None,
            hosts,
        };
        lan.switch = Some(Switch::start(&args));
        for h in &lan.hosts {
            let cidr = h.ip.as_ref().map(|ip| format!("{ip}/24"));
            h.ns.adopt(&h.ifname, h.mac, cidr.as_deref(), None);
        }
        lan
    }

    pub fn host(&self, id: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.id == id)
            .unwrap_or_else(|| panic!("no host '{id}'"))
    }

    pub fn switch(&self) -> &Switch {
        self.switch.as_ref().expect("switch already stopped")
    }

    /// Stops the switch with SIGTERM; the namespaces stay until the `Lan` drops.
    pub fn stop(&mut self) -> Stopped {
        self.stop_with(libc::SIGTERM)
    }

    pub fn stop_with(&mut self, signal: libc::c_int) -> Stopped {
        self.switch
            .take()
            .expect("switch already stopped")
            .stop_with(signal)
    }
}

impl Host {
    /// Pings `other` from this host (both need IPv4 addresses).
    pub fn ping(&self, other: &Host, count: u32) {
        let dst = other
            .ip
            .as_deref()
            .expect("target host has no IPv4 address");
        self.ns.ping(dst, count);
    }
}
