//! The metrics endpoint when accepting fails (out of file descriptors): the
//! error is logged and counted and the endpoint keeps listening, instead of
//! the listener ending for the life of the process.
//!
//! Its own test binary: it lowers the process's descriptor limit.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

fn set_nofile(soft: u64) {
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={soft}:"))
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(status.success(), "prlimit failed");
}

fn soft_nofile() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_errors_do_not_end_the_listener() {
    let handle = strata_telemetry::install();
    let addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = tokio::spawn(strata_telemetry::serve(addr, handle));
    for _ in 0..100 {
        if TcpStream::connect(addr).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Exhaust the descriptors: each connection costs one here and one for
    // the accepted socket; connections are queued by the kernel even when
    // the endpoint cannot accept them.
    let original = soft_nofile();
    set_nofile(open_fds() + 16);
    let mut held = Vec::new();
    for _ in 0..200 {
        if let Ok(s) = TcpStream::connect(addr) {
            held.push(s);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !server.is_finished(),
        "the endpoint stopped: {:?}",
        server.await
    );
    drop(held);
    set_nofile(original);

    // Still listening, and the failed accepts were counted.
    let mut answered = None;
    for _ in 0..50 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        let mut raw = String::new();
        if s.read_to_string(&mut raw).is_ok() && raw.starts_with("HTTP/1.1 200 OK") {
            answered = Some(raw);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let raw = answered.expect("the endpoint answers again");
    let errors: f64 = raw
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{} ", strata_telemetry::ACCEPT_ERRORS)))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {} in:\n{raw}", strata_telemetry::ACCEPT_ERRORS));
    assert!(errors >= 1.0, "{errors}");
    server.abort();
}
