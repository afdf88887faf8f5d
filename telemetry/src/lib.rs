//! # strata-telemetry
//!
//! The one Prometheus recorder of a Strata process, shared by every layer
//! that runs in it (the demo runs them all), and the tiny HTTP endpoint the
//! speed layer, the archive and the batch scheduler expose it on. Each
//! layer's own `metrics` module names and describes its metrics.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder once per process. Returns the handle
/// that renders the exposition text; each layer describes its own metrics.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
                .map(PrometheusBuilder::build_recorder)
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Another recorder may already be installed (several layers in one
            // process, e.g. the demo); the handle still renders ours.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Counter: connections the metrics endpoint could not accept (for
/// example too many open files); the endpoint keeps listening.
pub const ACCEPT_ERRORS: &str = "strata_metrics_endpoint_accept_errors_total";
/// Counter: connections the metrics endpoint closed because the request
/// (or the client's reading of the answer) took longer than its timeout.
pub const TIMED_OUT_CONNECTIONS: &str = "strata_metrics_endpoint_timeouts_total";

/// How long a scraper may take to send its request. A connection that sends
/// nothing would otherwise hold a task and a file descriptor forever.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a scraper may take to read the answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after an accept error, so a persistent one (out of file
/// descriptors) does not spin a core; the connections being served close
/// meanwhile and free descriptors.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(200);
/// Largest request read; the request is ignored anyway (any path answers).
const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// Serves `GET /metrics` (any path, really) in Prometheus text format until
/// the task is dropped. A deliberately tiny HTTP/1.1 responder: a layer's
/// metrics endpoint needs nothing more and should not pull a web framework in.
///
/// Hostile or broken scrapers cannot stop it: a connection that does not
/// send its request within [`READ_TIMEOUT`] (or read the answer within
/// [`WRITE_TIMEOUT`]) is closed, and a failed accept is logged, counted and
/// the loop goes on. Only the bind can fail.
pub async fn serve(listen: SocketAddr, handle: PrometheusHandle) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(listen = %listen, "metrics endpoint listening");
    serve_on(listener, handle).await;
    Ok(())
}

/// [`serve`] on a bound listener; never returns.
pub async fn serve_on(listener: tokio::net::TcpListener, handle: PrometheusHandle) {
    describe_endpoint_metrics();
    loop {
        let mut socket = match listener.accept().await {
            Ok((socket, _)) => socket,
            Err(e) => {
                metrics::counter!(ACCEPT_ERRORS).increment(1);
                tracing::warn!(error = %e, "metrics endpoint: accepting a connection failed; still listening");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            if tokio::time::timeout(READ_TIMEOUT, read_request(&mut socket))
                .await
                .is_err()
            {
                metrics::counter!(TIMED_OUT_CONNECTIONS).increment(1);
                tracing::debug!("metrics endpoint: no request within the read timeout; closing");
                return;
            }
            let body = handle.render();
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let write = async {
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            };
            if tokio::time::timeout(WRITE_TIMEOUT, write).await.is_err() {
                metrics::counter!(TIMED_OUT_CONNECTIONS).increment(1);
            }
        });
    }
}

/// Reads until the end of the request head, end of stream, or
/// [`MAX_REQUEST_BYTES`].
async fn read_request(socket: &mut tokio::net::TcpStream) {
    let mut request = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
        if request.len() >= MAX_REQUEST_BYTES || request.windows(4).any(|w| w == b"\r\n\r\n") {
            return;
        }
    }
}

fn describe_endpoint_metrics() {
    metrics::describe_counter!(
        ACCEPT_ERRORS,
        "Connections the metrics endpoint failed to accept (it keeps listening)."
    );
    metrics::describe_counter!(
        TIMED_OUT_CONNECTIONS,
        "Metrics endpoint connections closed because the scraper was too slow to send or read."
    );
}
