//! `Stack`: one libslirp instance, safely. It owns the `Slirp*`, the callback state libslirp
//! points back into, and the timers libslirp asked for; it sends the frames libslirp emits
//! into the data socket it was given, gathered and sent together (one `sendmmsg` per
//! `flush`, or per `OUT_FRAMES` frames; runs of TCP segments joined into GSO frames, each
//! frame behind a virtio-net header: `outbox`) and never blocking: a frame the socket cannot take
//! now is dropped and counted, and TCP inside libslirp sends it again. libslirp is not
//! thread-safe: a `Stack` is neither `Send` nor `Sync` (it holds raw pointers), so it lives
//! and dies on the thread that made it.

use super::ffi;
use super::hostfwd::{GuestFwd, HostFwd, HostFwdKey};
use super::options::UserOptions;
use super::outbox::Outbox;
use libc::{c_char, c_int, c_void};
use std::ffi::{CStr, CString};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Most frames gathered before they are sent (one `sendmmsg`).
const OUT_FRAMES: usize = 64;

/// What a user port counts beside its switch-port counters.
#[derive(Debug, Default)]
pub struct StackCounters {
    /// Frames from the switch handed to libslirp (a run of TCP segments joined as one
    /// counts once).
    pub to_slirp: AtomicU64,
    /// TCP segments from the switch that joined the one before them on the way in (`gro`).
    pub to_slirp_joined: AtomicU64,
    /// Frames libslirp emitted and the data socket took (a run of TCP segments joined as one
    /// counts once).
    pub from_slirp: AtomicU64,
    /// TCP segments libslirp emitted that joined the one before them on the way out
    /// (`outbox`), and the data socket took.
    pub from_slirp_joined: AtomicU64,
    /// Frames libslirp emitted that the data socket could not take then (dropped).
    pub from_slirp_dropped: AtomicU64,
    /// Misbehaviour libslirp reported of the stations (`guest_error`).
    pub guest_errors: AtomicU64,
}

/// A timer libslirp asked for, due at `expire_ms` on the stack's clock.
struct Timer {
    id: c_int,
    cb_opaque: *mut c_void,
    expire_ms: Option<i64>,
}

/// What libslirp's callbacks reach through their `opaque` pointer.
struct State {
    data: RawFd,
    out: Outbox,
    epoch: Instant,
    timers: Vec<*mut Timer>,
    notified: bool,
    counters: Arc<StackCounters>,
}

impl State {
    fn now_ns(&self) -> i64 {
        self.epoch.elapsed().as_nanos() as i64
    }

    fn flush(&mut self) {
        let (sent, dropped, joined) = self.out.send(self.data);
        if sent > 0 {
            self.counters.from_slirp.fetch_add(sent, Ordering::Relaxed);
        }
        if joined > 0 {
            self.counters
                .from_slirp_joined
                .fetch_add(joined, Ordering::Relaxed);
        }
        if dropped > 0 {
            self.counters
                .from_slirp_dropped
                .fetch_add(dropped, Ordering::Relaxed);
        }
    }
}

/// One libslirp instance.
pub struct Stack {
    raw: NonNull<ffi::Slirp>,
    /// Owned (from `Box::into_raw`); libslirp holds it as its `opaque`.
    state: *mut State,
    /// The strings `slirp_new` was given, kept for the instance's life.
    _strings: Vec<CString>,
    _dnssearch: Vec<*const c_char>,
}

fn in_addr(a: Ipv4Addr) -> libc::in_addr {
    libc::in_addr {
        s_addr: u32::from(a).to_be(),
    }
}

fn in6_addr(a: Ipv6Addr) -> libc::in6_addr {
    libc::in6_addr {
        s6_addr: a.octets(),
    }
}

fn sockaddr_in(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: in_addr(*a.ip()),
        sin_zero: [0; 8],
    }
}

/// # Safety
/// `opaque` must be the `State` of a live `Stack` (libslirp passes back what it was given).
unsafe fn state<'a>(opaque: *mut c_void) -> &'a mut State {
    // SAFETY: the caller guarantees `opaque` is the live, exclusively-used State: libslirp
    // calls back only from within a Stack method on the Stack's own thread, while no Rust
    // reference to the State is held.
    unsafe { &mut *opaque.cast::<State>() }
}

unsafe extern "C" fn send_packet(buf: *const c_void, len: usize, opaque: *mut c_void) -> isize {
    // SAFETY: libslirp passes back the opaque of slirp_new, our State.
    let st = unsafe { state(opaque) };
    // SAFETY: libslirp's frame is `len` readable bytes for the call.
    let frame = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) };
    st.out.push(frame);
    if st.out.len() >= OUT_FRAMES {
        st.flush();
    }
    // Gathered, then sent or dropped, the frame is done with: TCP inside libslirp recovers a
    // drop.
    len as isize
}

unsafe extern "C" fn guest_error(msg: *const c_char, opaque: *mut c_void) {
    // SAFETY: libslirp passes back the opaque of slirp_new, our State.
    let st = unsafe { state(opaque) };
    let n = st.counters.guest_errors.fetch_add(1, Ordering::Relaxed);
    if n < 10 {
        // SAFETY: libslirp's message is a NUL-terminated string valid for the call.
        let m = unsafe { CStr::from_ptr(msg) }.to_string_lossy();
        eprintln!("ringswitch: user network: {m}");
    }
}

unsafe extern "C" fn clock_get_ns(opaque: *mut c_void) -> i64 {
    // SAFETY: libslirp passes back the opaque of slirp_new, our State.
    unsafe { state(opaque) }.now_ns()
}

unsafe extern "C" fn timer_new_opaque(
    id: c_int,
    cb_opaque: *mut c_void,
    opaque: *mut c_void,
) -> *mut c_void {
    // SAFETY: libslirp passes back the opaque of slirp_new, our State.
    let st = unsafe { state(opaque) };
    let t = Box::into_raw(Box::new(Timer {
        id,
        cb_opaque,
        expire_ms: None,
    }));
    st.timers.push(t);
    t.cast()
}

unsafe extern "C" fn timer_free(timer: *mut c_void, opaque: *mut c_void) {
    // SAFETY: libslirp passes back the opaque of slirp_new, our State.
    let st = unsafe { state(opaque) };
    let t = timer.cast::<Timer>();
    if let Some(i) = st.timers.iter().position(|&p| p == t) {
        st.timers.swap_remove(i);
        // SAFETY: `t` came from Box::into_raw in timer_new_opaque and was still listed, so
        // it has not been freed; it is unlisted now and never used again.
        drop(unsafe { Box::from_raw(t) });
    }
}

unsafe extern "C" fn timer_mod(timer: *mut c_void, expire_ms: i64, opaque: *mut c_void) {
    // SAFETY: libslirp passes back the opaque of slirp_new, our State.
    let st = unsafe { state(opaque) };
    let t = timer.cast::<Timer>();
    if st.timers.contains(&t) {
        // SAFETY: a listed timer is a live Box owned by the State.
        unsafe { (*t).expire_ms = Some(expire_ms) };
    }
}

unsafe extern "C" fn poll_fd_noop(_fd: c_int, _opaque: *mut c_void) {}

unsafe extern "C" fn notify(opaque: *mut c_void) {
    // SAFETY: libslirp passes back the opaque of slirp_new, our State.
    unsafe { state(opaque) }.notified = true;
}

static CALLBACKS: ffi::SlirpCb = ffi::SlirpCb {
    send_packet: Some(send_packet),
    guest_error: Some(guest_error),
    clock_get_ns: Some(clock_get_ns),
    timer_new: None,
    timer_free: Some(timer_free),
    timer_mod: Some(timer_mod),
    register_poll_fd: Some(poll_fd_noop),
    unregister_poll_fd: Some(poll_fd_noop),
    notify: Some(notify),
    init_completed: None,
    timer_new_opaque: Some(timer_new_opaque),
};

unsafe extern "C" fn add_poll(fd: c_int, events: c_int, opaque: *mut c_void) -> c_int {
    // SAFETY: `opaque` is the Vec<pollfd> that Stack::fill passed for this call.
    let fds = unsafe { &mut *opaque.cast::<Vec<libc::pollfd>>() };
    let mut ev = 0;
    if events & ffi::SLIRP_POLL_IN != 0 {
        ev |= libc::POLLIN;
    }
    if events & ffi::SLIRP_POLL_OUT != 0 {
        ev |= libc::POLLOUT;
    }
    if events & ffi::SLIRP_POLL_PRI != 0 {
        ev |= libc::POLLPRI;
    }
    fds.push(libc::pollfd {
        fd,
        events: ev,
        revents: 0,
    });
    (fds.len() - 1) as c_int
}

unsafe extern "C" fn get_revents(idx: c_int, opaque: *mut c_void) -> c_int {
    // SAFETY: `opaque` is the slice of pollfds that Stack::poll passed for this call.
    let fds = unsafe { &*opaque.cast::<&[libc::pollfd]>() };
    let Some(p) = usize::try_from(idx).ok().and_then(|i| fds.get(i)) else {
        return 0;
    };
    let mut r = 0;
    for (bit, slirp) in [
        (libc::POLLIN, ffi::SLIRP_POLL_IN),
        (libc::POLLOUT, ffi::SLIRP_POLL_OUT),
        (libc::POLLPRI, ffi::SLIRP_POLL_PRI),
        (libc::POLLERR, ffi::SLIRP_POLL_ERR),
        (libc::POLLHUP, ffi::SLIRP_POLL_HUP),
    ] {
        if p.revents & bit != 0 {
            r |= slirp;
        }
    }
    r
}

fn cstring(s: &str) -> CString {
    // UserOptions refused values with NUL characters.
    CString::new(s).expect("no NUL in option values")
}

impl Stack {
    /// A libslirp instance configured as `o` says, sending its frames into `data`, which
    /// must stay open for the Stack's life.
    pub fn new(o: &UserOptions, data: RawFd, counters: Arc<StackCounters>) -> Option<Stack> {
        let mut strings = Vec::new();
        let mut keep = |s: &Option<String>| -> *const c_char {
            match s {
                Some(s) => {
                    let c = cstring(s);
                    let p = c.as_ptr();
                    strings.push(c);
                    p
                }
                None => std::ptr::null(),
            }
        };
        let vhostname = keep(&o.hostname);
        let tftp_server_name = keep(&o.tftp_server_name);
        let tftp_path = keep(&o.tftp);
        let bootfile = keep(&o.bootfile);
        let vdomainname = keep(&o.domainname);
        let mut dnssearch: Vec<*const c_char> = Vec::new();
        for d in &o.dnssearch {
            let c = cstring(d);
            dnssearch.push(c.as_ptr());
            strings.push(c);
        }
        dnssearch.push(std::ptr::null());
        let cfg = ffi::SlirpConfig {
            version: ffi::SLIRP_CONFIG_VERSION,
            restricted: o.restricted.into(),
            in_enabled: o.ipv4,
            vnetwork: in_addr(o.net),
            vnetmask: in_addr(o.mask),
            vhost: in_addr(o.host),
            in6_enabled: o.ipv6,
            vprefix_addr6: in6_addr(o.prefix6),
            vprefix_len: o.prefix6_len,
            vhost6: in6_addr(o.host6),
            vhostname,
            tftp_server_name,
            tftp_path,
            bootfile,
            vdhcp_start: in_addr(o.dhcp_start),
            vnameserver: in_addr(o.dns),
            vnameserver6: in6_addr(o.dns6),
            vdnssearch: if o.dnssearch.is_empty() {
                std::ptr::null()
            } else {
                dnssearch.as_ptr()
            },
            vdomainname,
            if_mtu: 0,
            if_mru: 0,
            disable_host_loopback: false,
            enable_emu: false,
            outbound_addr: std::ptr::null_mut(),
            outbound_addr6: std::ptr::null_mut(),
            disable_dns: false,
            disable_dhcp: false,
        };
        let state = Box::into_raw(Box::new(State {
            data,
            out: Outbox::default(),
            epoch: Instant::now(),
            timers: Vec::new(),
            notified: false,
            counters,
        }));
        // SAFETY: cfg and its strings are valid for the call (libslirp copies what it keeps;
        // the strings stay alive with the Stack anyway); CALLBACKS is static; `state` is a
        // live allocation that the Stack frees only after slirp_cleanup.
        let raw = unsafe { ffi::slirp_new(&cfg, &CALLBACKS, state.cast()) };
        let Some(raw) = NonNull::new(raw) else {
            // SAFETY: libslirp did not keep `state`; it came from Box::into_raw above.
            drop(unsafe { Box::from_raw(state) });
            return None;
        };
        Some(Stack {
            raw,
            state,
            _strings: strings,
            _dnssearch: dnssearch,
        })
    }

    /// Hands a frame from the network to libslirp.
    pub fn input(&mut self, frame: &[u8]) {
        let Ok(len) = c_int::try_from(frame.len()) else {
            return;
        };
        // SAFETY: the instance is live; `frame` is `len` readable bytes for the call.
        unsafe { ffi::slirp_input(self.raw.as_ptr(), frame.as_ptr(), len) };
        // SAFETY: not inside a libslirp call: no callback holds the State.
        unsafe { &*self.state }
            .counters
            .to_slirp
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Sends the frames libslirp emitted since the last flush (callers flush before they
    /// wait).
    pub fn flush(&mut self) {
        // SAFETY: not inside a libslirp call: no callback holds the State.
        unsafe { &mut *self.state }.flush();
    }

    /// Counts TCP segments that joined others before `input`.
    pub fn count_joined(&mut self, n: u64) {
        if n > 0 {
            // SAFETY: not inside a libslirp call: no callback holds the State.
            unsafe { &*self.state }
                .counters
                .to_slirp_joined
                .fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Appends libslirp's sockets to `fds` (whose first `fds.len()` entries are the
    /// caller's) and returns how long libslirp may wait, in ms, given the caller's `max_ms`
    /// and the stack's timers.
    pub fn fill(&mut self, fds: &mut Vec<libc::pollfd>, max_ms: u32) -> u32 {
        let base = fds.len();
        let mut mine: Vec<libc::pollfd> = Vec::new();
        let mut timeout = max_ms;
        // SAFETY: the instance is live; add_poll gets `mine`, a Vec<pollfd> live for the call.
        unsafe {
            ffi::slirp_pollfds_fill(
                self.raw.as_ptr(),
                &mut timeout,
                add_poll,
                (&mut mine as *mut Vec<libc::pollfd>).cast(),
            )
        };
        debug_assert_eq!(fds.len(), base);
        fds.extend_from_slice(&mine);
        // SAFETY: not inside a libslirp call: no callback holds the State.
        let st = unsafe { &mut *self.state };
        if std::mem::take(&mut st.notified) {
            return 0;
        }
        let now_ms = st.now_ns() / 1_000_000;
        for &t in &st.timers {
            // SAFETY: listed timers are live Boxes owned by the State.
            if let Some(e) = unsafe { (*t).expire_ms } {
                timeout = timeout.min((e - now_ms).clamp(0, i64::from(u32::MAX)) as u32);
            }
        }
        timeout
    }

    /// Lets libslirp serve its sockets after `poll` filled in `fds[base..]`'s revents
    /// (`base`: how many of the caller's entries came first), then runs due timers.
    pub fn poll(&mut self, fds: &[libc::pollfd], base: usize, error: bool) {
        let mine: &[libc::pollfd] = &fds[base..];
        // SAFETY: the instance is live; get_revents gets a reference to `mine`, live for the
        // call, indexed with the indices add_poll returned during the last fill.
        unsafe {
            ffi::slirp_pollfds_poll(
                self.raw.as_ptr(),
                error.into(),
                get_revents,
                (&mine as *const &[libc::pollfd]).cast_mut().cast(),
            )
        };
        self.run_timers();
    }

    fn run_timers(&mut self) {
        // SAFETY: not inside a libslirp call: no callback holds the State.
        let st = unsafe { &mut *self.state };
        let now_ms = st.now_ns() / 1_000_000;
        let mut due = Vec::new();
        for &t in &st.timers {
            // SAFETY: listed timers are live Boxes owned by the State.
            let timer = unsafe { &mut *t };
            if timer.expire_ms.is_some_and(|e| e <= now_ms) {
                timer.expire_ms = None;
                due.push((t, timer.id, timer.cb_opaque));
            }
        }
        for (t, id, cb_opaque) in due {
            // SAFETY: not inside a libslirp call.
            if !unsafe { &*self.state }.timers.contains(&t) {
                continue; // freed by an earlier handler
            }
            // SAFETY: the instance is live; id and cb_opaque are what libslirp gave the timer.
            unsafe { ffi::slirp_handle_timer(self.raw.as_ptr(), id, cb_opaque) };
        }
    }

    /// `slirp_add_hostxfwd`; false when libslirp refused (the host port is taken, …).
    pub fn add_hostfwd(&mut self, r: &HostFwd) -> bool {
        let h = sockaddr_in(r.host);
        let g = sockaddr_in(r.guest);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let flags = if r.udp { ffi::SLIRP_HOSTFWD_UDP } else { 0 };
        // SAFETY: the instance is live; both addresses are valid sockaddr_in of `len` bytes.
        let rc = unsafe {
            ffi::slirp_add_hostxfwd(
                self.raw.as_ptr(),
                (&h as *const libc::sockaddr_in).cast(),
                len,
                (&g as *const libc::sockaddr_in).cast(),
                len,
                flags,
            )
        };
        rc >= 0
    }

    /// `slirp_remove_hostxfwd`; false when no such rule was set up.
    pub fn remove_hostfwd(&mut self, k: &HostFwdKey) -> bool {
        let h = sockaddr_in(k.host);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let flags = if k.udp { ffi::SLIRP_HOSTFWD_UDP } else { 0 };
        // SAFETY: the instance is live; `h` is a valid sockaddr_in of `len` bytes.
        let rc = unsafe {
            ffi::slirp_remove_hostxfwd(
                self.raw.as_ptr(),
                (&h as *const libc::sockaddr_in).cast(),
                len,
                flags,
            )
        };
        rc == 0
    }

    /// `slirp_add_exec`: connections to the rule's server and port run its command.
    pub fn add_guestfwd(&mut self, r: &GuestFwd) -> bool {
        let cmd = cstring(&r.cmd);
        let mut server = in_addr(r.server);
        // SAFETY: the instance is live; `cmd` is NUL-terminated (libslirp copies it) and
        // `server` a valid in_addr, both live for the call.
        let rc = unsafe {
            ffi::slirp_add_exec(
                self.raw.as_ptr(),
                cmd.as_ptr(),
                &mut server,
                c_int::from(r.port),
            )
        };
        rc >= 0
    }

    /// libslirp's table of connections (QEMU's `info usernet`).
    pub fn connection_info(&mut self) -> String {
        // SAFETY: the instance is live; the result is a malloc'd string or NULL.
        let p = unsafe { ffi::slirp_connection_info(self.raw.as_ptr()) };
        if p.is_null() {
            return String::new();
        }
        // SAFETY: `p` is a NUL-terminated string libslirp allocated with glib's allocator,
        // which is the C library's malloc; it is freed once, after the copy.
        let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
        // SAFETY: as above: allocated by malloc, not used after this.
        unsafe { libc::free(p.cast()) };
        s
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the instance is live and used no more; slirp_cleanup frees its timers
        // through timer_free, which still finds the State.
        unsafe { ffi::slirp_cleanup(self.raw.as_ptr()) };
        // SAFETY: libslirp is gone, so nothing points at the State any more; it came from
        // Box::into_raw in new().
        let st = unsafe { Box::from_raw(self.state) };
        for t in st.timers {
            // SAFETY: timers libslirp did not free are still live Boxes of ours.
            drop(unsafe { Box::from_raw(t) });
        }
    }
}

/// The libslirp this was linked against (for start-up lines).
pub fn version() -> String {
    // SAFETY: libslirp returns a static NUL-terminated string.
    unsafe { CStr::from_ptr(ffi::slirp_version_string()) }
        .to_string_lossy()
        .into_owned()
}
