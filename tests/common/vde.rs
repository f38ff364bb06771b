//! vde2's own programs for the tests: a `vde_switch` in a directory of the test's own
//! (`VdeSwitch`, killed on drop), `vde_plug2tap` inside a namespace (`Plug2Tap`, killed on
//! drop), and the check that they are installed (failing under `CI=true`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Netns;

/// Whether every one of vde2's `tools` is here; under CI=true their absence fails the test.
pub fn require_vde_tools(test: &str, tools: &[&str]) -> bool {
    let have = |t: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !have(t)).collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: {missing:?} (Debian's vde2, vdeplug) are needed (CI=true)");
    }
    eprintln!("skipping {test}: {missing:?} not installed (apt install vde2 vdeplug)");
    false
}

/// Whether vde_switch and vde_plug are here; under CI=true their absence fails the test.
pub fn require_vde(test: &str) -> bool {
    require_vde_tools(test, &["vde_switch", "vde_plug"])
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A vde_switch serving `dir`, killed when dropped.
pub struct VdeSwitch {
    pub dir: PathBuf,
    pidfile: PathBuf,
}

impl VdeSwitch {
    pub fn start(dir: &Path) -> VdeSwitch {
        let pidfile = dir.with_extension("pid");
        let _ = std::fs::remove_file(&pidfile);
        let st = Command::new("vde_switch")
            .arg("-s")
            .arg(dir)
            .arg("-d")
            .arg("-p")
            .arg(&pidfile)
            .stdin(Stdio::null())
            .status()
            .expect("vde_switch");
        assert!(st.success(), "vde_switch -s {} failed", dir.display());
        wait_for("vde_switch's control socket", || dir.join("ctl").exists());
        VdeSwitch {
            dir: dir.to_path_buf(),
            pidfile,
        }
    }

    /// Starts the switch again in the same directory (after `kill`).
    pub fn restart(&mut self) {
        let again = VdeSwitch::start(&self.dir);
        // The new one is ours now; the old value must not kill it or remove its directory.
        std::mem::forget(std::mem::replace(self, again));
    }

    pub fn pid(&self) -> Option<i32> {
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(p) = std::fs::read_to_string(&self.pidfile)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                return Some(p);
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn kill(&mut self) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill takes no pointers.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let end = Instant::now() + Duration::from_secs(5);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = std::fs::remove_file(&self.pidfile);
    }
}

impl Drop for VdeSwitch {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `vde_plug2tap -s SOCK TAP` run inside `ns` (the tap is found there by name: a persistent
/// tap keeps its address when the program is restarted). Killed when dropped.
pub struct Plug2Tap {
    child: Child,
}

impl Plug2Tap {
    pub fn start(ns: &Netns, sock: &Path, tap: &str) -> Plug2Tap {
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "vde_plug2tap", "-s"])
            .arg(sock)
            .arg(tap)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("vde_plug2tap");
        Plug2Tap { child }
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Plug2Tap {
    fn drop(&mut self) {
        self.kill();
    }
}
