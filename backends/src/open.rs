//! Opening a parsed netdev: the kernel object behind the port and what the data plane needs of
//! it (one descriptor that carries a frame per read and per write), plus its life-cycle hooks
//! (QEMU's `script=`/`downscript=`, carrier changes for `set_link`).

use crate::netdev::{NetdevKind, NetdevSpec, Script};
use crate::tap::{Tap, TapError};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::process::Command;

/// Why a port could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("script= and downscript= run programs as this user; the switch was started without --allow-scripts")]
    ScriptsNotAllowed,
    #[error("network script '{path} {ifname}' could not run: {source}")]
    ScriptSpawn {
        path: String,
        ifname: String,
        #[source]
        source: io::Error,
    },
    #[error("network script '{path} {ifname}' failed ({status})")]
    ScriptFailed {
        path: String,
        ifname: String,
        status: std::process::ExitStatus,
    },
}

/// An open port.
#[derive(Debug)]
pub struct OpenedPort {
    pub fd: OwnedFd,
    /// The kernel interface behind the port, if it has one.
    pub ifname: Option<String>,
    downscript: Script,
    carrier: bool,
}

fn run_script(path: &str, ifname: &str) -> Result<(), OpenError> {
    let status =
        Command::new(path)
            .arg(ifname)
            .status()
            .map_err(|source| OpenError::ScriptSpawn {
                path: path.into(),
                ifname: ifname.into(),
                source,
            })?;
    if !status.success() {
        return Err(OpenError::ScriptFailed {
            path: path.into(),
            ifname: ifname.into(),
            status,
        });
    }
    Ok(())
}

/// Opens the port `spec` describes. Scripts run only when `allow_scripts` is set.
pub fn open(spec: &NetdevSpec, allow_scripts: bool) -> Result<OpenedPort, OpenError> {
    if spec.wants_scripts() && !allow_scripts {
        return Err(OpenError::ScriptsNotAllowed);
    }
    match &spec.kind {
        NetdevKind::Tap(t) => {
            let tap = match t.fd {
                Some(fd) => Tap::from_inherited(fd)?,
                None => Tap::open(t.ifname.as_deref())?,
            };
            let ifname = tap.name().to_string();
            if let Script::Path(p) = &t.script {
                run_script(p, &ifname)?;
            }
            Ok(OpenedPort {
                fd: tap.into_fd(),
                ifname: Some(ifname),
                downscript: t.downscript.clone(),
                carrier: true,
            })
        }
    }
}

impl OpenedPort {
    /// Runs the port's `downscript=` (after its descriptor was closed elsewhere).
    pub fn run_downscript(&self) -> Result<(), OpenError> {
        match (&self.downscript, &self.ifname) {
            (Script::Path(p), Some(ifname)) => run_script(p, ifname),
            _ => Ok(()),
        }
    }

    /// Whether the port can show link changes to the other side (a tap's carrier).
    pub fn has_carrier(&self) -> bool {
        self.carrier
    }
}

/// Shows a link change to the kernel side of a tap (its carrier). `fd` must be the port's.
pub fn set_carrier(fd: BorrowedFd<'_>, up: bool) -> Result<(), TapError> {
    crate::tap::set_carrier_fd(fd.as_fd().as_raw_fd(), up)
}
