//! The link's conditions, measured through a real lab: RTT, rate, loss,
//! outages and byte counters. Run as root (`cargo test -p anypatch-netlab`).
//! Every wait has a bound; no assertion rests on a sleep.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anypatch_netlab::{Lab, CLIENT_ADDR, SERVER_ADDR};

/// A lab, or a failure that says why (not root, tools missing).
fn lab(tag: &str) -> Lab {
    Lab::new(tag).unwrap_or_else(|e| panic!("cannot make a network lab: {e}"))
}

/// Both kinds of lab: GSO batches (the default) and one packet at a time.
fn both_labs(tag: &str) -> [Lab; 2] {
    [
        lab(tag),
        Lab::per_packet(tag).unwrap_or_else(|e| panic!("cannot make a network lab: {e}")),
    ]
}

/// A TCP connection from the client to the server namespace: (client end, server end).
fn tcp_pair(lab: &Lab) -> (TcpStream, TcpStream) {
    let listener = lab
        .in_server(|| TcpListener::bind((SERVER_ADDR, 0)))
        .expect("enter the server namespace")
        .expect("bind in the server namespace");
    let addr = listener.local_addr().expect("listener address");
    let client = lab
        .in_client(|| TcpStream::connect_timeout(&addr, Duration::from_secs(10)))
        .expect("enter the client namespace")
        .expect("connect across the lab");
    let (server, _) = listener.accept().expect("accept");
    for s in [&client, &server] {
        s.set_nodelay(true).expect("nodelay");
        s.set_read_timeout(Some(Duration::from_secs(15)))
            .expect("read timeout");
    }
    (client, server)
}

/// A UDP socket in each namespace, each connected to the other: (client, server).
fn udp_pair(lab: &Lab) -> (UdpSocket, UdpSocket) {
    let server = lab
        .in_server(|| UdpSocket::bind((SERVER_ADDR, 0)))
        .expect("enter the server namespace")
        .expect("bind in the server namespace");
    let client = lab
        .in_client(|| UdpSocket::bind((CLIENT_ADDR, 0)))
        .expect("enter the client namespace")
        .expect("bind in the client namespace");
    client
        .connect(server.local_addr().expect("addr"))
        .expect("connect");
    server
        .connect(client.local_addr().expect("addr"))
        .expect("connect");
    for s in [&client, &server] {
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
    }
    (client, server)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Median time of `rounds` one-byte TCP round trips.
fn tcp_rtt(client: &mut TcpStream, server: TcpStream, rounds: usize) -> Duration {
    let echo = thread::spawn(move || {
        let mut s = server;
        let mut b = [0u8; 1];
        while s.read_exact(&mut b).is_ok() {
            if s.write_all(&b).is_err() {
                break;
            }
        }
    });
    let mut samples = Vec::new();
    let mut b = [0u8; 1];
    for _ in 0..rounds {
        let t = Instant::now();
        client.write_all(&[7]).expect("send");
        client.read_exact(&mut b).expect("echo");
        samples.push(t.elapsed());
    }
    client.shutdown(std::net::Shutdown::Both).expect("shutdown");
    echo.join().expect("echo thread");
    median(samples)
}

/// Median time of `rounds` UDP round trips (a lost one would fail the read).
fn udp_rtt(client: &UdpSocket, server: UdpSocket, rounds: usize) -> Duration {
    let echo = thread::spawn(move || {
        let mut b = [0u8; 16];
        for _ in 0..rounds {
            let Ok(n) = server.recv(&mut b) else { break };
            if server.send(&b[..n]).is_err() {
                break;
            }
        }
    });
    let mut samples = Vec::new();
    let mut b = [0u8; 16];
    for i in 0..rounds {
        let t = Instant::now();
        client.send(&[i as u8]).expect("send");
        let n = client.recv(&mut b).expect("echo");
        assert_eq!(&b[..n], &[i as u8]);
        samples.push(t.elapsed());
    }
    echo.join().expect("echo thread");
    median(samples)
}

/// Whether `got` is within 20% or 3 ms of `want_ms`.
fn close_to(got: Duration, want_ms: f64) -> bool {
    let got_ms = got.as_secs_f64() * 1000.0;
    (got_ms - want_ms).abs() <= (want_ms * 0.2).max(3.0)
}

#[test]
fn tcp_and_udp_round_trips_take_the_rtt_set() {
    let [mut lab, mut per_packet] = both_labs("rtt");
    round_trips(&mut lab);
    round_trips(&mut per_packet);
}

fn round_trips(lab: &mut Lab) {
    for rtt in [100.0, 20.0] {
        lab.set_rtt(rtt).expect("set_rtt");
        let (mut c, s) = tcp_pair(lab);
        let tcp = tcp_rtt(&mut c, s, 15);
        assert!(
            close_to(tcp, rtt),
            "TCP round trip {tcp:?} with RTT set to {rtt} ms"
        );
        let (c, s) = udp_pair(lab);
        let udp = udp_rtt(&c, s, 15);
        assert!(
            close_to(udp, rtt),
            "UDP round trip {udp:?} with RTT set to {rtt} ms"
        );
    }
}

/// Sends as fast as TCP allows from `tx` for `run`, and returns the
/// goodput `rx` saw in Mbit/s, after the first `warmup`.
fn goodput(tx: TcpStream, rx: TcpStream, warmup: Duration, run: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let stop_tx = stop.clone();
    let sender = thread::spawn(move || {
        let mut tx = tx;
        let chunk = vec![0x5a_u8; 64 * 1024];
        while !stop_tx.load(Ordering::Relaxed) {
            if tx.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let mut rx = rx;
    let mut buf = vec![0u8; 256 * 1024];
    let start = Instant::now();
    let mut counted = 0u64;
    let mut counting_since = None;
    while start.elapsed() < warmup + run {
        let n = rx.read(&mut buf).expect("receive");
        assert!(n > 0, "the sender closed early");
        if start.elapsed() >= warmup {
            counting_since.get_or_insert_with(Instant::now);
            counted += n as u64;
        }
    }
    let secs = counting_since.map_or(0.0, |t| t.elapsed().as_secs_f64());
    stop.store(true, Ordering::Relaxed);
    drop(rx);
    sender.join().expect("sender thread");
    counted as f64 * 8.0 / secs / 1e6
}

#[test]
fn rate_limit_holds_throughput_near_the_set_rate_each_way() {
    let mut lab = lab("rate");
    lab.set_rtt(10.0).expect("set_rtt");
    let rate = 40.0;
    lab.set_rate(rate).expect("set_rate");
    // TCP/IP headers take 52 of every 1500 bytes; the rest is goodput.
    let ceiling = rate * 1448.0 / 1500.0;
    let (c, s) = tcp_pair(&lab);
    let up = goodput(c, s, Duration::from_millis(700), Duration::from_secs(2));
    let (c, s) = tcp_pair(&lab);
    let down = goodput(s, c, Duration::from_millis(700), Duration::from_secs(2));
    for (way, got) in [("client to server", up), ("server to client", down)] {
        assert!(
            got > ceiling * 0.8 && got < ceiling * 1.05,
            "{way}: {got:.1} Mbit/s of goodput with the rate set to {rate} Mbit/s (ceiling {ceiling:.1})"
        );
    }
}

/// Median one-way delay of 1400-byte datagrams the client sends at
/// `mbit` Mbit/s (paced), measured on the datagrams that arrive after
/// the first second. Sender and receiver share this process's clock.
fn one_way_delay_under_load(lab: &Lab, mbit: f64) -> Duration {
    let (tx, rx) = udp_pair(lab);
    let base = Instant::now();
    let run = Duration::from_millis(2500);
    let sink = thread::spawn(move || {
        rx.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let mut buf = vec![0u8; 2048];
        let mut delays = Vec::new();
        while let Ok(n) = rx.recv(&mut buf) {
            let now = base.elapsed();
            let sent = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
            assert_eq!(n, 1400);
            if now > Duration::from_secs(1) {
                delays.push(now.saturating_sub(Duration::from_nanos(sent)));
            }
        }
        delays
    });
    let mut payload = vec![0u8; 1400];
    // Datagrams a 5 ms tick, to send `mbit` on average.
    let per_tick = (mbit * 1e6 / 8.0 / 1428.0 * 0.005).ceil() as usize;
    while base.elapsed() < run {
        for _ in 0..per_tick {
            let sent = base.elapsed().as_nanos() as u64;
            payload[..8].copy_from_slice(&sent.to_le_bytes());
            tx.send(&payload).expect("send");
        }
        // Pacing, not timing.
        thread::sleep(Duration::from_millis(5));
    }
    let delays = sink.join().expect("sink thread");
    assert!(
        delays.len() > 100,
        "only {} datagrams arrived",
        delays.len()
    );
    median(delays)
}

#[test]
fn a_full_bottleneck_queue_delays_by_its_length() {
    let mut lab = lab("queue");
    lab.set_rate(10.0).expect("set_rate");
    lab.set_queue(150.0).expect("set_queue");
    // Two and a half times the rate: the queue stays full even if the
    // sender misses some ticks, so each datagram that gets in waits its length.
    let deep = one_way_delay_under_load(&lab, 25.0);
    assert!(
        close_to(deep, 150.0),
        "one-way delay {deep:?} through a full 150 ms queue"
    );
    lab.set_queue(30.0).expect("set_queue");
    let shallow = one_way_delay_under_load(&lab, 25.0);
    assert!(
        close_to(shallow, 30.0),
        "one-way delay {shallow:?} through a full 30 ms queue"
    );
}

/// Sends `n` datagrams of `len` bytes from `tx` in paced batches (so no
/// socket buffer overflows) and returns how many `rx` received.
fn udp_blast(tx: &UdpSocket, rx: UdpSocket, n: usize, len: usize) -> usize {
    let counter = thread::spawn(move || {
        rx.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let mut buf = vec![0u8; 2048];
        let mut got = 0;
        // Ends half a second after the last datagram that arrived.
        while rx.recv(&mut buf).is_ok() {
            got += 1;
        }
        got
    });
    let payload = vec![0xa5_u8; len];
    for i in 0..n {
        tx.send(&payload).expect("send");
        if i % 100 == 99 {
            // Pacing, not timing: keeps the receiver's buffer from overflowing.
            thread::sleep(Duration::from_millis(2));
        }
    }
    counter.join().expect("counter thread")
}

/// Datagrams the kernel of namespace `ns` dropped because a socket's
/// receive buffer was full (`RcvbufErrors` in /proc/net/snmp).
fn rcvbuf_errors(lab: &Lab, server: bool) -> usize {
    let mut cmd = if server {
        lab.server_cmd("cat")
    } else {
        lab.client_cmd("cat")
    };
    let out = cmd
        .arg("/proc/net/snmp")
        .output()
        .expect("read /proc/net/snmp");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (
        udp.next().expect("Udp header"),
        udp.next().expect("Udp values"),
    );
    let col = names
        .split_whitespace()
        .position(|n| n == "RcvbufErrors")
        .expect("RcvbufErrors column");
    values
        .split_whitespace()
        .nth(col)
        .expect("value")
        .parse()
        .expect("a count")
}

#[test]
fn loss_drops_about_the_set_share_of_udp_datagrams_each_way() {
    for lab in both_labs("loss") {
        loss_share(lab);
    }
}

fn loss_share(mut lab: Lab) {
    lab.set_loss(20.0).expect("set_loss");
    let n = 4000;
    let (c, s) = udp_pair(&lab);
    // A receiver starved of CPU may overflow its buffer: those datagrams
    // passed the link and the loss rule, so they count as arrived.
    let up = udp_blast(&c, s.try_clone().expect("clone"), n, 200) + rcvbuf_errors(&lab, true);
    let down = udp_blast(&s, c.try_clone().expect("clone"), n, 200) + rcvbuf_errors(&lab, false);
    for (way, got) in [("client to server", up), ("server to client", down)] {
        let lost = 1.0 - got as f64 / n as f64;
        // 4000 draws at p = 0.2: one standard deviation is 0.63 %.
        assert!(
            (0.16..=0.24).contains(&lost),
            "{way}: {:.1} % lost with loss set to 20 %",
            lost * 100.0
        );
    }
    // The counters count before the loss rule: every datagram crossed the link.
    assert_eq!(lab.bytes_to_server().expect("counter"), (n * 228) as u64);
    assert_eq!(lab.bytes_to_client().expect("counter"), (n * 228) as u64);

    lab.set_loss(0.0).expect("set_loss");
    let (c, s) = udp_pair(&lab);
    let before = rcvbuf_errors(&lab, true);
    let got = udp_blast(&c, s, 1000, 200) + rcvbuf_errors(&lab, true) - before;
    assert_eq!(got, 1000, "loss set back to 0");
}

#[test]
fn link_down_stops_traffic_and_link_up_restores_it() {
    let lab = lab("down");
    let (mut c, mut s) = tcp_pair(&lab);
    let (uc, us) = udp_pair(&lab);
    c.write_all(b"before").expect("send");
    let mut b = [0u8; 6];
    s.read_exact(&mut b).expect("receive before the outage");

    lab.link_down().expect("link_down");
    let during = lab.bytes_to_server().expect("counter");
    // UDP: the kernel refuses the send (the route is gone) or the datagram
    // is lost; either way it never arrives (checked after link_up).
    let _ = uc.send(b"lost");
    // TCP: the data waits in the sender; nothing reaches the server.
    c.write_all(b"during")
        .expect("TCP queues while the link is down");
    s.set_read_timeout(Some(Duration::from_millis(700)))
        .expect("timeout");
    let e = s
        .read(&mut b)
        .expect_err("nothing arrives while the link is down");
    assert!(
        matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{e}"
    );
    assert_eq!(lab.bytes_to_server().expect("counter"), during);

    lab.link_up().expect("link_up");
    // TCP retransmits what waited; the same connection goes on.
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    s.read_exact(&mut b).expect("the queued data after link_up");
    assert_eq!(&b, b"during");
    uc.send(b"after").expect("send after link_up");
    let mut d = [0u8; 8];
    let n = us.recv(&mut d).expect("a datagram after link_up");
    assert_eq!(
        &d[..n],
        b"after",
        "the first datagram to arrive is the one sent after link_up"
    );
}

#[test]
fn counters_count_the_ip_bytes_each_way() {
    for lab in both_labs("count") {
        counters(lab);
    }
}

fn counters(lab: Lab) {
    assert_eq!(lab.bytes_to_server().expect("counter"), 0);
    assert_eq!(lab.bytes_to_client().expect("counter"), 0);
    let (c, s) = udp_pair(&lab);
    let mut buf = [0u8; 2048];
    for _ in 0..10 {
        c.send(&[1u8; 1000]).expect("send");
        assert_eq!(s.recv(&mut buf).expect("receive"), 1000);
    }
    for _ in 0..5 {
        s.send(&[2u8; 500]).expect("send");
        assert_eq!(c.recv(&mut buf).expect("receive"), 500);
    }
    // Each datagram is its payload plus 8 bytes of UDP and 20 of IPv4.
    assert_eq!(lab.bytes_to_server().expect("counter"), 10 * 1028);
    assert_eq!(lab.bytes_to_client().expect("counter"), 5 * 528);
}
