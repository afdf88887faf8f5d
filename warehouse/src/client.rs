//! The client: construction, error classification and retries, and the
//! query and insert helpers every layer talks to ClickHouse through.

use std::time::Duration;

use clickhouse::Client;
use serde_json::{Map, Value as Json};
use strata_schemas::config::ClickHouseSection;

/// A failure talking to ClickHouse.
#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    /// The server answered with an error or could not be reached.
    #[error("ClickHouse {operation} failed: {source}")]
    ClickHouse {
        /// What Strata was doing.
        operation: String,
        /// The client error.
        #[source]
        source: clickhouse::error::Error,
    },
    /// The server answered with something Strata cannot read.
    #[error("ClickHouse {operation} returned unreadable data: {message}")]
    Decode {
        /// What Strata was doing.
        operation: String,
        /// What is wrong.
        message: String,
    },
    /// A table exists with a different layout.
    #[error(
        "table {table} exists with a different layout: {differences}; drop it (or rename it) and rerun `strata init`, or restore the metric definition it was created from"
    )]
    Drift {
        /// The table.
        table: String,
        /// What differs.
        differences: String,
    },
}

impl WarehouseError {
    /// The ClickHouse exception code, when the server sent one.
    pub fn exception_code(&self) -> Option<u32> {
        match self {
            WarehouseError::ClickHouse { source, .. } => exception_code(source),
            _ => None,
        }
    }

    /// Whether retrying the same request may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            WarehouseError::ClickHouse { source, .. } => is_retryable(source),
            _ => false,
        }
    }
}

/// The `Code: N.` of a ClickHouse exception carried in a client error.
pub fn exception_code(e: &clickhouse::error::Error) -> Option<u32> {
    let text = e.to_string();
    let rest = &text[text.find("Code: ")? + 6..];
    rest.chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

/// ClickHouse exception codes that mean the request itself is wrong: sending
/// it again cannot succeed, so the sink fails loudly instead of retrying.
/// (Syntax, unknown table/column/identifier, type mismatch, cannot parse
/// input, too large array, bad arguments, readonly, access denied.)
pub const NON_RETRYABLE_CODES: [u32; 18] = [
    6, 16, 26, 27, 32, 33, 36, 38, 41, 43, 44, 47, 53, 60, 62, 81, 164, 497,
];

/// Code 252 means two things: "too many parts" (transient: merges catch
/// up) and "too many partitions for single INSERT block" (the block itself
/// is wrong; [`crate::insert_blocks`] keeps Strata's inserts under the
/// limit, so this is a server set below the default).
const TOO_MANY_PARTS: u32 = 252;

/// Whether a client error is worth retrying: network failures, timeouts,
/// and server errors outside [`NON_RETRYABLE_CODES`] (too many parts, memory
/// limits, server shutting down, ...).
pub fn is_retryable(e: &clickhouse::error::Error) -> bool {
    use clickhouse::error::Error as E;
    match e {
        E::Network(_) | E::TimedOut => true,
        E::BadResponse(text) => match exception_code(e) {
            None => true,
            Some(TOO_MANY_PARTS) => !text.contains("for single INSERT block"),
            Some(code) => !NON_RETRYABLE_CODES.contains(&code),
        },
        _ => false,
    }
}

/// A client for the configured server. Schema validation is off: it relies
/// on `RowBinaryWithNamesAndTypes`, which ClickHouse 18.16 does not speak.
///
/// In cluster mode every insert into a `Distributed` table is synchronous
/// (`insert_distributed_sync = 1`): acknowledged only once its rows are on
/// their shards. The default queues them on the node for a background send,
/// so a speed checkpoint written after an acknowledged insert could run
/// ahead of data a crash of that node would lose.
pub fn client(section: &ClickHouseSection) -> Client {
    let url = section.url.trim_end_matches('/');
    let client = if url.starts_with("https://") {
        let http =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                // Below ClickHouse's keep-alive timeout (3 s before 23.11, then
                // 10 s), as the crate's own client does.
                .pool_idle_timeout(std::time::Duration::from_secs(2))
                .build(https_connector(section.ca_file.as_deref()));
        Client::with_http_client(http)
    } else {
        Client::default()
    };
    let client = client
        .with_url(url)
        .with_user(&section.user)
        .with_password(&section.password)
        .with_validation(false)
        .with_compression(clickhouse::Compression::None);
    if section.cluster.is_some() {
        client.with_setting("insert_distributed_sync", "1")
    } else {
        client
    }
}

/// TLS for an `https://` ClickHouse URL: rustls trusting the system's
/// roots plus every certificate of `ca_file`, HTTP/1.1, host name checked.
fn https_connector(
    ca_file: Option<&std::path::Path>,
) -> hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;

    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        // The config check read it already (clickhouse.ca_file): a failure
        // here means the file changed since; the handshake then fails with
        // an unknown issuer unless the system trusts the server.
        match CertificateDer::pem_file_iter(path) {
            Ok(certs) => {
                for cert in certs {
                    match cert.map(|c| roots.add(c)) {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::error!(ca_file = %path.display(), error = %e, "a certificate of clickhouse.ca_file is not a valid CA certificate");
                        }
                        Err(e) => {
                            tracing::error!(ca_file = %path.display(), error = %e, "clickhouse.ca_file holds a malformed PEM block");
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(ca_file = %path.display(), error = %e, "cannot read clickhouse.ca_file");
            }
        }
    }
    tracing::debug!(system_roots = added, ca_file = ?ca_file, "ClickHouse over https");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_keepalive(Some(std::time::Duration::from_secs(60)));
    http.enforce_http(false);
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http)
}

fn ch_err(operation: &str) -> impl FnOnce(clickhouse::error::Error) -> WarehouseError + '_ {
    move |source| WarehouseError::ClickHouse {
        operation: operation.to_string(),
        source,
    }
}

/// Runs a statement that returns nothing.
pub async fn execute(client: &Client, sql: &str) -> Result<(), WarehouseError> {
    client
        .query_raw(sql)
        .execute()
        .await
        .map_err(ch_err(sql_head(sql)))
}

/// Runs a query and returns its rows as JSON objects (`JSONEachRow`, with
/// 64-bit integers unquoted). `sql` may contain `?` placeholders that
/// `binds` fill with client-side escaped values.
pub async fn query_rows(
    client: &Client,
    sql: &str,
    binds: &[&str],
) -> Result<Vec<Map<String, Json>>, WarehouseError> {
    let operation = sql_head(sql);
    let bytes = query_bytes(client, sql, binds, "JSONEachRow").await?;
    let mut rows = Vec::new();
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<Json>(line) {
            Ok(Json::Object(row)) => rows.push(row),
            Ok(other) => {
                return Err(WarehouseError::Decode {
                    operation: operation.to_string(),
                    message: format!("expected a JSON object per row, got {other}"),
                });
            }
            Err(e) => {
                return Err(WarehouseError::Decode {
                    operation: operation.to_string(),
                    message: e.to_string(),
                });
            }
        }
    }
    Ok(rows)
}

/// Runs a query and returns its whole answer in `format` (e.g. `RowBinary`
/// for callers that decode typed columns themselves; JSON formats print
/// 64-bit integers unquoted). `sql` may contain `?` placeholders that
/// `binds` fill with client-side escaped values.
pub async fn query_bytes(
    client: &Client,
    sql: &str,
    binds: &[&str],
    format: &str,
) -> Result<Vec<u8>, WarehouseError> {
    let mut query = client
        .query(sql)
        .with_setting("output_format_json_quote_64bit_integers", "0");
    for b in binds {
        query = query.bind(*b);
    }
    let operation = sql_head(sql);
    let mut cursor = query.fetch_bytes(format).map_err(ch_err(operation))?;
    // Chunks are kept until the end so the answer is copied once, into a
    // buffer of its exact size.
    let mut chunks = Vec::new();
    while let Some(chunk) = cursor.next().await.map_err(ch_err(operation))? {
        chunks.push(chunk);
    }
    let mut out = Vec::with_capacity(chunks.iter().map(|c| c.len()).sum());
    for chunk in chunks {
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Inserts JSON rows into `database.table` in one request (`JSONEachRow`).
pub async fn insert_rows(
    client: &Client,
    database: &str,
    table: &str,
    rows: &[Map<String, Json>],
    timeout: Duration,
) -> Result<(), WarehouseError> {
    if rows.is_empty() {
        return Ok(());
    }
    // Window rows of many months go in several inserts (see insert_blocks).
    let window_starts: Option<Vec<i64>> = rows
        .iter()
        .map(|row| row.get("window_start_ms").and_then(json_i64))
        .collect();
    let Some(blocks) = window_starts.as_deref().and_then(crate::insert_blocks) else {
        return insert_json_each_row(client, database, table, json_each_row(rows).into(), timeout)
            .await;
    };
    for block in blocks {
        let body = json_lines(block.iter().map(|&row| &rows[row]));
        insert_json_each_row(client, database, table, body.into(), timeout).await?;
    }
    Ok(())
}

/// `rows` as a `JSONEachRow` body: one object per line.
pub fn json_each_row(rows: &[Map<String, Json>]) -> Vec<u8> {
    json_lines(rows.iter())
}

fn json_lines<'a>(rows: impl ExactSizeIterator<Item = &'a Map<String, Json>>) -> Vec<u8> {
    let mut body = Vec::with_capacity(rows.len() * 256);
    for row in rows {
        // A map of JSON values always serialises; the writer is a Vec.
        serde_json::to_writer(&mut body, row).expect("a JSON map serialises into a Vec");
        body.push(b'\n');
    }
    body
}

/// Inserts a `JSONEachRow` body (one object per line, e.g. written by
/// [`json_each_row`]) into `database.table`. The body is shared, so a
/// retry does not copy it.
pub async fn insert_json_each_row(
    client: &Client,
    database: &str,
    table: &str,
    body: bytes::Bytes,
    timeout: Duration,
) -> Result<(), WarehouseError> {
    insert(
        client,
        database,
        table,
        &InsertFormat::JsonEachRow,
        body,
        timeout,
    )
    .await
}

/// How an insert's body is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InsertFormat {
    /// One JSON object per line; columns by name, omitted ones take their
    /// type's zero (ClickHouse 18.16 ignores `DEFAULT` there).
    JsonEachRow,
    /// [`crate::rowbinary`] values of exactly these columns, in this order.
    RowBinary(std::sync::Arc<[String]>),
}

impl InsertFormat {
    /// `RowBinary` of `columns` (name, type), in their order.
    pub fn row_binary(columns: &[(String, String)]) -> Self {
        InsertFormat::RowBinary(columns.iter().map(|(name, _)| name.clone()).collect())
    }
}

/// Inserts `body`, written in `format`, into `database.table`.
pub async fn insert(
    client: &Client,
    database: &str,
    table: &str,
    format: &InsertFormat,
    body: bytes::Bytes,
    timeout: Duration,
) -> Result<(), WarehouseError> {
    if body.is_empty() {
        return Ok(());
    }
    let target = qualified(database, table);
    let sql = match format {
        InsertFormat::JsonEachRow => format!("INSERT INTO {target} FORMAT JSONEachRow"),
        InsertFormat::RowBinary(columns) => {
            // Column names come from validated config and contracts
            // (identifiers: `[a-z_][a-z0-9_]*`), never from a request.
            debug_assert!(
                columns
                    .iter()
                    .all(|c| strata_schemas::contract::is_identifier(c))
            );
            let list: Vec<String> = columns.iter().map(|c| format!("`{c}`")).collect();
            format!(
                "INSERT INTO {target} ({}) FORMAT RowBinary",
                list.join(", ")
            )
        }
    };
    let operation = format!("insert into {database}.{table}");
    let mut insert = client
        .insert_formatted_with(sql)
        .with_timeouts(Some(timeout), Some(timeout));
    insert.send(body).await.map_err(ch_err(&operation))?;
    insert.end().await.map_err(ch_err(&operation))
}

fn sql_head(sql: &str) -> &str {
    let head = sql.trim_start();
    match head.char_indices().nth(60) {
        Some((i, _)) => &head[..i],
        None => head,
    }
}

/// The current time as a ClickHouse `DateTime` literal (UTC). Written
/// explicitly because ClickHouse 18.16 fills columns omitted from
/// `JSONEachRow` with zero values, not with their `DEFAULT` expressions.
pub fn now_datetime() -> String {
    chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string()
}

/// `` `db`.`table` ``.
pub fn qualified(database: &str, table: &str) -> String {
    format!("`{database}`.`{table}`")
}

/// A JSON number or numeric string as `i64` (ClickHouse may quote 64-bit integers).
pub fn json_i64(v: &Json) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str()?.parse().ok())
}

/// A JSON number or numeric string as `u64`.
pub fn json_u64(v: &Json) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}

/// Whether the server answers a query (for readiness checks).
pub async fn ping(client: &Client) -> Result<(), WarehouseError> {
    query_rows(client, "SELECT 1 AS one", &[]).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_many_partitions_for_one_insert_is_not_retried_but_too_many_parts_is() {
        // The messages of a current ClickHouse (18.16 has no per-insert limit).
        let partitions = clickhouse::error::Error::BadResponse(
            "Code: 252. DB::Exception: Too many partitions for single INSERT block (more than 100). \
             The limit is controlled by 'max_partitions_per_insert_block' setting."
                .into(),
        );
        let parts = clickhouse::error::Error::BadResponse(
            "Code: 252. DB::Exception: Too many parts (300). Merges are processing significantly \
             slower than inserts."
                .into(),
        );
        assert!(!is_retryable(&partitions));
        assert!(is_retryable(&parts));
        let syntax =
            clickhouse::error::Error::BadResponse("Code: 62. DB::Exception: Syntax error".into());
        assert!(!is_retryable(&syntax));
    }
}
