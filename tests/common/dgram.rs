//! `DgramPeer`: a test's end of a unix `dgram` port of the switch under test.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The test's socket, bound in `dir`, and the switch's end it sends to.
pub struct DgramPeer {
    pub sock: UnixDatagram,
    pub switch_end: PathBuf,
}

impl DgramPeer {
    /// Binds the peer of port `id` in `dir`; returns it and the `-netdev` spec of the port.
    /// Receives wait at most 2 s.
    pub fn new(dir: &Path, id: &str) -> (DgramPeer, String) {
        let peer_end = dir.join(format!("{id}-peer.sock"));
        let switch_end = dir.join(format!("{id}.sock"));
        let sock = UnixDatagram::bind(&peer_end).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let arg = format!(
            "dgram,id={id},local.type=unix,local.path={},remote.type=unix,remote.path={}",
            switch_end.display(),
            peer_end.display()
        );
        (DgramPeer { sock, switch_end }, arg)
    }

    pub fn send(&self, f: &[u8]) {
        self.sock.send_to(f, &self.switch_end).unwrap();
    }

    pub fn recv(&self) -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        let n = self.sock.recv(&mut buf).expect("a frame within 2 s");
        buf.truncate(n);
        buf
    }
}
