//! The metrics endpoint under a scraper that connects and never sends: the
//! others are still answered and the idle connection is closed after
//! `READ_TIMEOUT`, instead of holding a task and a descriptor forever.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// One scrape: the status line and the body.
fn scrape(addr: SocketAddr) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

async fn wait_listening(addr: SocketAddr) {
    for _ in 0..100 {
        if TcpStream::connect(addr).is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the metrics endpoint did not listen on {addr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_and_others_are_answered() {
    let handle = strata_telemetry::install();
    let addr = free_addr();
    let server = tokio::spawn(strata_telemetry::serve(addr, handle));
    wait_listening(addr).await;

    let mut idle = TcpStream::connect(addr).unwrap();
    let opened = Instant::now();
    let answer = tokio::task::spawn_blocking(move || scrape(addr))
        .await
        .unwrap();
    assert_eq!(answer.0, "HTTP/1.1 200 OK");

    // The idle connection is closed by the server (end of stream) after
    // READ_TIMEOUT (5 s), not left open.
    let closed = tokio::task::spawn_blocking(move || {
        idle.set_read_timeout(Some(Duration::from_secs(12)))
            .unwrap();
        let mut buf = [0u8; 16];
        let read = idle.read(&mut buf);
        (read.map_err(|e| e.kind()), opened.elapsed())
    })
    .await
    .unwrap();
    assert_eq!(
        closed.0,
        Ok(0),
        "the silent connection was still open after {:?}",
        closed.1
    );
    assert!(
        closed.1 >= strata_telemetry::READ_TIMEOUT - Duration::from_millis(100)
            && closed.1 < Duration::from_secs(8),
        "closed after {:?}",
        closed.1
    );
    let (status, body) = tokio::task::spawn_blocking(move || scrape(addr))
        .await
        .unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        body.lines()
            .any(|l| l == format!("{} 1", strata_telemetry::TIMED_OUT_CONNECTIONS)),
        "{body}"
    );
    assert!(!server.is_finished());
    server.abort();
}
