//! The controller's side of `--vde-serve`: each served directory's handshakes are polled from
//! the control loop; a client that completed one becomes a port named `NAME.N` (N its vde
//! port number), added through the same path as `netdev_add`; a port whose client closed
//! its control connection is removed as `netdev_del` removes one.

use super::Controller;
use crate::qmp::QmpError;
use ringswitch_backends::vde_serve::{ServeOptions, VdeServer};
use ringswitch_backends::{served_vde, NetdevId, NetdevKind, NetdevSpec};
use serde_json::{json, Value};
use std::time::Instant;

impl Controller {
    /// Starts serving vde2's control protocol at `opts.dir`.
    pub fn vde_serve(&mut self, opts: ServeOptions) -> Result<(), QmpError> {
        if let Some(other) = self
            .vde_servers
            .iter()
            .find(|s| s.options().dir == opts.dir || s.options().name == opts.name)
        {
            return Err(QmpError::generic(format!(
                "--vde-serve {}: already serving {} with id '{}' (give each directory an id= of its own)",
                opts.dir.display(),
                other.options().dir.display(),
                other.options().name
            )));
        }
        let server = VdeServer::bind(opts).map_err(|e| QmpError::generic(e.to_string()))?;
        self.vde_servers.push(server);
        Ok(())
    }

    /// Serves handshakes and retires ports whose client left. Called from the control loop
    /// (through `service_connections`); never blocks.
    pub(super) fn service_vde(&mut self, now: Instant) {
        let gone: Vec<String> = self
            .ports
            .iter()
            .filter(|p| p.opened.client_gone())
            .map(|p| p.id().to_string())
            .collect();
        for id in gone {
            eprintln!("ringswitch: netdev '{id}': the vde client closed its control connection; port removed");
            if let Err(e) = self.netdev_del(&id) {
                eprintln!("ringswitch: netdev '{id}': {}", e.desc);
            }
        }
        if self.vde_servers.is_empty() {
            return;
        }
        let mut servers = std::mem::take(&mut self.vde_servers);
        for server in &mut servers {
            let name = server.options().name.clone();
            let dir = server.options().dir.clone();
            let room = self.config.max_ports.saturating_sub(self.ports.len());
            let ports = &self.ports;
            let clients = server.poll(
                now,
                |n| {
                    let id = format!("{name}.{n}");
                    ports.iter().any(|p| p.id() == id)
                },
                room,
            );
            for c in clients {
                let (port, descr) = (c.port, c.descr.clone());
                let id = format!("{name}.{port}");
                let added = self.add_served(&id, &dir, c);
                match added {
                    Ok(()) => eprintln!(
                        "ringswitch: vde-serve {}: client '{descr}' plugged in as port {port} (netdev '{id}')",
                        dir.display()
                    ),
                    Err(e) => eprintln!(
                        "ringswitch: vde-serve {}: client '{descr}' dropped: {}",
                        dir.display(),
                        e.desc
                    ),
                }
            }
        }
        self.vde_servers = servers;
    }

    /// Makes a port of a client that completed its handshake.
    fn add_served(
        &mut self,
        id: &str,
        dir: &std::path::Path,
        c: ringswitch_backends::vde_serve::ServedClient,
    ) -> Result<(), QmpError> {
        let netdev_id = NetdevId::new(id).map_err(|e| QmpError::generic(e.to_string()))?;
        let index = self
            .free_index()
            .ok_or_else(|| QmpError::generic("the switch has no free port (see --max-ports)"))?;
        let spec = NetdevSpec {
            id: netdev_id,
            kind: NetdevKind::VdeServed {
                dir: dir.to_path_buf(),
                port: c.port,
            },
            macaddr: None,
            worker: None,
            rx_filter: None,
            follow: None,
            options: vec![
                ("sock".into(), dir.display().to_string()),
                ("port".into(), c.port.to_string()),
            ],
        };
        let opened = served_vde(c).map_err(|e| QmpError::generic(e.to_string()))?;
        self.insert(spec, index, opened)
    }

    /// `query-vde-serve`: each served directory, its ports and its handshake counters.
    pub fn query_vde_serve(&self) -> Value {
        self.vde_servers
            .iter()
            .map(|s| {
                let o = s.options();
                let st = s.stats();
                let prefix = format!("{}.", o.name);
                let ports: Vec<&str> = self
                    .ports
                    .iter()
                    .filter(|p| {
                        matches!(&p.spec.kind, NetdevKind::VdeServed { dir, .. } if *dir == o.dir)
                    })
                    .map(|p| p.id())
                    .filter(|id| id.starts_with(&prefix))
                    .collect();
                json!({
                    "sock": o.dir.display().to_string(),
                    "id": o.name,
                    "mode": format!("{:04o}", o.mode),
                    "ports": ports,
                    "connections": st.connections,
                    "served": st.served,
                    "refused": st.refused,
                })
            })
            .collect()
    }
}
