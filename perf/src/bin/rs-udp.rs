//! `rs-udp`: a UDP datagram generator and sink for benchmarking socket ports (QEMU's
//! `-netdev socket,udp=…`): each datagram carries one Ethernet frame. `send` pushes
//! `sendmmsg` batches from a connected socket as fast as possible (or at `--rate`); `sink`
//! counts what arrives with `recvmmsg`. Each prints one JSON line at the end.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use ringswitch_perf::cpu::{pin_current_thread, PinError};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "UDP frame generator and sink for socket-port benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send frames, one per datagram.
    Send {
        /// Local address to send from.
        #[arg(long)]
        local: SocketAddr,
        /// Where to send (the switch port's localaddr).
        #[arg(long)]
        remote: SocketAddr,
        /// Frame length in bytes (60..=1514).
        #[arg(long, default_value_t = 60)]
        size: usize,
        /// Seconds to send for.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Frames per second (0: as fast as possible).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Destination MAC of the frames.
        #[arg(long, default_value = "ff:ff:ff:ff:ff:ff")]
        dst: String,
        /// Source MAC of the frames.
        #[arg(long, default_value = "02:00:00:00:0a:01")]
        src: String,
        /// Pin to this CPU.
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// Count datagrams.
    Sink {
        /// Address to receive on.
        #[arg(long)]
        local: SocketAddr,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Stop after this many seconds without a datagram (once one arrived).
        #[arg(long, default_value_t = 1.0)]
        idle: f64,
        /// Pin to this CPU.
        #[arg(long)]
        cpu: Option<usize>,
    },
}

const BATCH: usize = 64;

fn mac(s: &str) -> anyhow::Result<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad MAC {s}"))?;
    v.try_into().map_err(|_| anyhow::anyhow!("bad MAC {s}"))
}

fn pin(cpu: Option<usize>) -> anyhow::Result<()> {
    if let Some(c) = cpu {
        match pin_current_thread(c) {
            Ok(()) => {}
            Err(PinError::Kernel(_, e)) => bail!("cannot pin to CPU {c}: {e}"),
            Err(e) => bail!("cannot pin to CPU {c}: {e}"),
        }
    }
    Ok(())
}

fn send(
    local: SocketAddr,
    remote: SocketAddr,
    size: usize,
    secs: f64,
    rate: u64,
    dst: [u8; 6],
    src: [u8; 6],
) -> anyhow::Result<()> {
    if !(60..=1514).contains(&size) {
        bail!("--size must be 60..=1514");
    }
    let s = UdpSocket::bind(local).with_context(|| format!("bind {local}"))?;
    s.connect(remote)?;
    let mut frames = vec![[0u8; 1514]; BATCH];
    for f in frames.iter_mut() {
        f[..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&src);
        f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    }
    let mut iovs: Vec<libc::iovec> = frames
        .iter_mut()
        .map(|f| libc::iovec {
            iov_base: f.as_mut_ptr().cast(),
            iov_len: size,
        })
        .collect();
    // SAFETY: mmsghdr is plain data; all-zero is an empty header, filled in below.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let (mut sent, mut errors) = (0u64, 0u64);
    while Instant::now() < end {
        let mut n = BATCH;
        if rate > 0 {
            let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
            if due <= sent {
                std::thread::sleep(Duration::from_micros(50));
                continue;
            }
            n = n.min((due - sent) as usize);
        }
        // SAFETY: `msgs[..n]` point at live iovecs and frames for the whole call.
        let r = unsafe { libc::sendmmsg(s.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
        if r < 0 {
            errors += 1;
            continue;
        }
        sent += r as u64;
    }
    let t = start.elapsed().as_secs_f64();
    println!(
        "{{\"sent\":{sent},\"errors\":{errors},\"seconds\":{t},\"pps\":{}}}",
        sent as f64 / t
    );
    Ok(())
}

fn sink(local: SocketAddr, secs: f64, idle: f64) -> anyhow::Result<()> {
    let s = UdpSocket::bind(local).with_context(|| format!("bind {local}"))?;
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut bufs = vec![[0u8; 2048]; BATCH];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: as above.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let (mut got, mut bytes) = (0u64, 0u64);
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    while Instant::now() < end {
        // SAFETY: `msgs` point at live iovecs and buffers for the whole call.
        let r = unsafe {
            libc::recvmmsg(
                s.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as u32,
                0,
                std::ptr::null_mut(),
            )
        };
        if r <= 0 {
            if first.is_some() && last.elapsed().as_secs_f64() > idle {
                break;
            }
            continue;
        }
        let now = Instant::now();
        first.get_or_insert(now);
        last = now;
        got += r as u64;
        bytes += msgs[..r as usize]
            .iter()
            .map(|m| m.msg_len as u64)
            .sum::<u64>();
    }
    let span = match first {
        Some(f) => (last - f).as_secs_f64().max(1e-9),
        None => 0.0,
    };
    let pps = if span > 0.0 { got as f64 / span } else { 0.0 };
    println!("{{\"received\":{got},\"bytes\":{bytes},\"seconds\":{span},\"pps\":{pps}}}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Send {
            local,
            remote,
            size,
            duration,
            rate,
            dst,
            src,
            cpu,
        } => {
            pin(cpu)?;
            send(local, remote, size, duration, rate, mac(&dst)?, mac(&src)?)
        }
        Cmd::Sink {
            local,
            duration,
            idle,
            cpu,
        } => {
            pin(cpu)?;
            sink(local, duration, idle)
        }
    }
}
