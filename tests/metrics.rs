//! `--metrics`: the counters scraped over HTTP while the switch forwards. Two unix `dgram`
//! ports, frames both ways, then `GET /metrics` in both formats, read with a Prometheus
//! text-format parser (`prometheus-parse`): every family has HELP and TYPE, counters are
//! typed as counters, and the port counters equal what was sent. Clients that never send a
//! request, send garbage, or send headers without end get 400/404/405/431 or are closed,
//! and do not stall a scrape or the forwarding. No privileges needed.

mod common;

use common::DgramPeer as Peer;

use common::{run_cli, unique_name, Switch};
use prometheus_parse::{Scrape, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A free loopback port (the listener is closed again before the switch binds it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn frame(src: u8, dst: u8, tag: u8, len: usize) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(tag)).collect();
    f[..6].copy_from_slice(&[2, 0, 0, 0, 0, dst]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, src]);
    f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    f
}

/// One HTTP exchange; returns (status line, headers, body). Bounded by a 5 s timeout.
fn http(addr: SocketAddr, request: &[u8]) -> (String, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("answer within 5 s");
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete HTTP answer");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_string(), body.to_string())
}

fn scrape(addr: SocketAddr, accept: Option<&str>) -> (String, String) {
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    let (status, headers, body) = http(
        addr,
        format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{accept}\r\n").as_bytes(),
    );
    assert_eq!(status, "HTTP/1.1 200 OK", "{headers}\n{body}");
    let ctype = headers
        .lines()
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .unwrap_or_default()
        .to_string();
    (ctype, body)
}

fn parse(body: &str) -> Scrape {
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("the exposition parses")
}

/// The value of `metric` with `labels`, whatever its type.
fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => panic!("{metric}: not a plain value"),
        })
}

/// The sum of `metric`'s samples over every worker (the ports may be spread over several:
/// `--cores`, RINGSWITCH_CORES).
fn over_workers(s: &Scrape, metric: &str) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == metric && x.labels.get("worker").is_some())
        .map(|x| match x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => panic!("{metric}: not a plain value"),
        })
        .sum()
}

/// Sends `n` frames of `len` bytes from `from` to `to` one at a time, each received.
fn pass(from: &Peer, to: &Peer, src: u8, dst: u8, n: usize, len: usize) {
    for i in 0..n {
        let f = frame(src, dst, i as u8, len);
        from.send(&f);
        assert_eq!(to.recv(), f, "frame {i} from {src} to {dst}");
    }
}

#[test]
fn metrics_are_scraped_in_both_formats_and_bad_clients_do_not_stall_them() {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(unique_name("rs-met"));
    std::fs::create_dir_all(&dir).unwrap();
    let (a, a_arg) = Peer::new(&dir, "a");
    let (b, b_arg) = Peer::new(&dir, "b");
    let port = free_port();
    let metrics_arg = format!("tcp:127.0.0.1:{port}");
    let switch = Switch::start(&[
        "-netdev",
        &a_arg,
        "-netdev",
        &b_arg,
        "--metrics",
        &metrics_arg,
    ]);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(switch
        .stderr()
        .contains(&format!("metrics on http://{addr}/metrics")));

    // Clients that never send a request, more than the server keeps open at once.
    let idle: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // One that sends headers without end.
    let mut huge = TcpStream::connect(addr).unwrap();
    huge.set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let _ = huge.write_all(&vec![b'X'; 64 * 1024]);

    let t = Instant::now();
    pass(&a, &b, 0xa, 0xb, 25, 100);
    pass(&b, &a, 0xb, 0xa, 7, 300);
    let forwarding = t.elapsed();

    // Prometheus text 0.0.4 unless OpenMetrics is asked for. The counters are read while
    // the worker runs: wait (bounded) until they caught up with the last frame.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (ctype, body, s) = loop {
        let t = Instant::now();
        let (ctype, body) = scrape(addr, None);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "a scrape took {:?}",
            t.elapsed()
        );
        let s = parse(&body);
        if value(&s, "ringswitch_port_tx_frames_total", &[("port", "a")]) == Some(7.0)
            || Instant::now() > deadline
        {
            break (ctype, body, s);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
    assert!(!body.contains("# EOF"));
    let want = [
        ("a", "rx_frames", 25.0),
        ("a", "rx_bytes", 2500.0),
        ("a", "tx_frames", 7.0),
        ("a", "tx_bytes", 2100.0),
        ("b", "rx_frames", 7.0),
        ("b", "rx_bytes", 2100.0),
        ("b", "tx_frames", 25.0),
        ("b", "tx_bytes", 2500.0),
    ];
    for (port, what, n) in want {
        let name = format!("ringswitch_port_{what}_total");
        let x = s
            .samples
            .iter()
            .find(|x| x.metric == name && x.labels.get("port") == Some(port))
            .unwrap_or_else(|| panic!("no {name}{{port={port}}} in\n{body}"));
        assert_eq!(x.labels.get("kind"), Some("dgram"));
        assert!(
            matches!(x.value, Value::Counter(v) if v == n),
            "{name}{{port={port}}} = {:?}, sent {n}\n{body}",
            x.value
        );
    }
    for reason in ["runt", "queue_full", "link_down"] {
        for port in ["a", "b"] {
            assert_eq!(
                value(
                    &s,
                    "ringswitch_port_drops_total",
                    &[("port", port), ("kind", "dgram"), ("reason", reason)]
                ),
                Some(0.0),
                "{port} {reason}"
            );
        }
    }
    assert_eq!(value(&s, "ringswitch_ports", &[]), Some(2.0));
    assert_eq!(
        value(&s, "ringswitch_port_link_up", &[("port", "a")]),
        Some(1.0)
    );
    assert_eq!(over_workers(&s, "ringswitch_worker_rx_frames_total"), 32.0);
    for m in [
        "ringswitch_worker_wakeups_total",
        "ringswitch_worker_busy_seconds_total",
        "ringswitch_worker_poll_seconds_total",
        "ringswitch_worker_sleep_seconds_total",
        "ringswitch_worker_queue_drops_total",
        "ringswitch_worker_max_batch",
        "ringswitch_worker_frames_per_wakeup",
    ] {
        assert!(value(&s, m, &[("worker", "0")]).is_some(), "{m}\n{body}");
    }
    // Every family has its HELP; counters are typed as counters.
    for x in &s.samples {
        assert!(s.docs.contains_key(&x.metric), "no HELP for {}", x.metric);
        if x.metric.ends_with("_total") {
            assert!(
                matches!(x.value, Value::Counter(_)),
                "{} {:?}",
                x.metric,
                x.value
            );
        }
    }

    // A runt is counted by reason.
    a.send(&[1, 2, 3]);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = parse(&scrape(addr, None).1);
        let runts = value(
            &s,
            "ringswitch_port_drops_total",
            &[("port", "a"), ("reason", "runt")],
        );
        if runts == Some(1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "runt not counted: {runts:?}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // OpenMetrics when asked for: counter families named without `_total`, `# EOF` last.
    let (ctype, om) = scrape(
        addr,
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    );
    assert_eq!(
        ctype,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert_eq!(om.matches("# EOF").count(), 1);
    assert!(om.contains("# TYPE ringswitch_port_rx_frames counter\n"));
    for line in om.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let (family, kind) = line.split_once(' ').unwrap();
        assert!(!family.ends_with("_total"), "{line}");
        let sample = if kind == "counter" {
            format!("{family}_total")
        } else {
            family.to_string()
        };
        assert!(
            om.lines()
                .any(|l| l.starts_with(&format!("{sample}{{"))
                    || l.starts_with(&format!("{sample} "))),
            "no samples for {line}"
        );
    }
    let s = parse(&om);
    assert_eq!(
        value(&s, "ringswitch_port_rx_frames_total", &[("port", "b")]),
        Some(7.0)
    );

    // Wrong requests get answers, not silence.
    let (st, h, _) = http(addr, b"HELLO\r\n\r\n");
    assert_eq!(st, "HTTP/1.1 400 Bad Request", "{h}");
    let (st, _, _) = http(addr, b"\x00\xff garbage \x01\r\n\r\n");
    assert_eq!(st, "HTTP/1.1 400 Bad Request");
    let (st, _, _) = http(addr, b"GET /nothing HTTP/1.1\r\n\r\n");
    assert_eq!(st, "HTTP/1.1 404 Not Found");
    let (st, h, _) = http(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(st, "HTTP/1.1 405 Method Not Allowed");
    assert!(h.contains("Allow: GET, HEAD"), "{h}");
    let (st, h, body) = http(addr, b"HEAD /metrics HTTP/1.0\r\n\r\n");
    assert_eq!(st, "HTTP/1.1 200 OK");
    assert!(body.is_empty() && h.contains("Content-Length: "), "{h}");

    // Headers without end: answered 431 (or cut off), not kept.
    huge.set_read_timeout(Some(Duration::from_secs(7))).unwrap();
    let mut got = Vec::new();
    let _ = huge.read_to_end(&mut got);
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.is_empty() || got.starts_with("HTTP/1.1 431 "),
        "huge request: {got}"
    );

    // The idle clients are dropped by the server (evicted, or at the 5 s deadline).
    for mut c in idle {
        c.set_read_timeout(Some(Duration::from_secs(7))).unwrap();
        let mut buf = [0u8; 16];
        let n = c.read(&mut buf);
        assert!(
            matches!(n, Ok(0)) || n.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "an idle client was kept"
        );
    }

    // Forwarding went on at its pace throughout.
    let t = Instant::now();
    pass(&a, &b, 0xa, 0xb, 25, 100);
    assert!(
        t.elapsed() < forwarding * 4 + Duration::from_millis(500),
        "forwarding slowed: {:?} against {forwarding:?}",
        t.elapsed()
    );
    let stopped = switch.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("metrics test took {:?}", started.elapsed());
}

#[test]
fn bad_metrics_specs_are_refused_by_name() {
    for bad in [
        "9100",
        "tcp:",
        "udp:127.0.0.1:9",
        "tcp:host-that-does-not-resolve.invalid:1",
    ] {
        let out = run_cli(&["-qmp", "unix:/tmp/unused,server=on", "--metrics", bad]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains(&format!("--metrics '{bad}'")), "{bad}: {err}");
    }
}
