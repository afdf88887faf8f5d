//! The registry client against the in-memory registry (the documented API
//! subset, over real HTTP on loopback), and the Avro decoder's dead-letter
//! reasons: unknown id, registry down (and back), incompatible writer,
//! corrupt body.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use strata_registry::client::{INCOMPATIBLE, SCHEMA_NOT_FOUND, SUBJECT_NOT_FOUND};
use strata_registry::{Decoders, LocalRegistry, RegistryClient, RegistryError};
use strata_schemas::avro;
use strata_schemas::config::SourceFormat;
use strata_schemas::{Config, DecodeErrorKind, Event, EventDecoder, Source, Value};

fn config(registry_url: &str, extra: &str) -> Config {
    let text = format!(
        r#"
[contracts]
dir = "schemas/contracts"
[kafka]
brokers = "127.0.0.1:1"
[sources.views]
topic = "views"
contract = "page_view"
contract_version = 2
event_time_field = "event_time"
format = "avro"
schema_registry = {{ url = "{registry_url}", timeout = "300ms", retry_after = "300ms" {extra} }}
[metrics.views_per_minute]
source = "views"
window = {{ kind = "tumbling", size = "1m" }}
aggregations = [{{ name = "views", function = "count" }}]
"#
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    strata_schemas::config::parse(&text, "test.toml", &root, |_| None).unwrap()
}

fn source(config: &Config) -> Arc<Source> {
    config.sources["views"].clone()
}

fn client(config: &Config) -> RegistryClient {
    match &source(config).format {
        SourceFormat::Avro(r) => RegistryClient::new(r),
        SourceFormat::Json => unreachable!(),
    }
}

fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// A page view of contract v2 as an Avro record framed with `id`.
fn record(source: &Source, id: u32, user: &str, time_ms: i64) -> Vec<u8> {
    let values = vec![
        Value::Timestamp(time_ms),
        Value::String(user.into()),
        Value::String("/home".into()),
        Value::String("DE".into()),
        Value::Int(250),
        Value::Null,
    ];
    let mut body = Vec::new();
    avro::encode(&source.contract, &values, &mut body).unwrap();
    let mut framed = Vec::new();
    avro::frame(id, &body, &mut framed);
    framed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_speaks_the_documented_api_and_keeps_error_codes() {
    let registry = LocalRegistry::new();
    let running = registry.start(free_addr()).await.unwrap();
    let config = config(&running.url(), "");
    let client = client(&config);
    let contract_schema = avro::contract_schema(&source(&config).contract);

    // 40401 before the subject exists, for versions, latest and compatibility.
    for e in [
        client.versions("views-value").await.unwrap_err(),
        client.latest("views-value").await.unwrap_err(),
        client
            .is_compatible("views-value", &contract_schema)
            .await
            .unwrap_err(),
    ] {
        assert_eq!(e.code(), Some(SUBJECT_NOT_FOUND), "{e}");
        assert!(
            e.to_string().contains("Subject 'views-value' not found"),
            "{e}"
        );
    }
    let id = client
        .register("views-value", &contract_schema)
        .await
        .unwrap();
    assert_eq!(id, 1);
    // The same schema again keeps its id and adds no version.
    assert_eq!(
        client
            .register("views-value", &contract_schema)
            .await
            .unwrap(),
        1
    );
    assert_eq!(client.versions("views-value").await.unwrap(), vec![1]);
    let latest = client.latest("views-value").await.unwrap();
    assert_eq!((latest.id, latest.version), (1, 1));
    assert_eq!(client.schema_by_id(1).await.unwrap(), contract_schema);
    assert!(
        client
            .is_compatible("views-value", &contract_schema)
            .await
            .unwrap()
    );

    // 40403 for an unknown id.
    let e = client.schema_by_id(77).await.unwrap_err();
    assert_eq!(e.code(), Some(SCHEMA_NOT_FOUND), "{e}");

    // A new version that cannot read the latest one's data: 409, and the
    // compatibility endpoint says so first.
    let breaking = contract_schema.replace(
        r#"{"name":"page","type":"string"}"#,
        r#"{"name":"page","type":"string"},{"name":"required_new","type":"long"}"#,
    );
    assert_ne!(breaking, contract_schema);
    assert!(
        !client
            .is_compatible("views-value", &breaking)
            .await
            .unwrap()
    );
    let e = client.register("views-value", &breaking).await.unwrap_err();
    assert_eq!(e.code(), Some(INCOMPATIBLE), "{e}");
    assert!(
        matches!(e, RegistryError::Refused { status: 409, .. }),
        "{e}"
    );
    // An optional new field is a compatible version 2 with its own id.
    let evolving = contract_schema.replace(
        r#"{"name":"page","type":"string"}"#,
        r#"{"name":"page","type":"string"},{"name":"optional_new","type":["null","long"],"default":null}"#,
    );
    assert_eq!(client.register("views-value", &evolving).await.unwrap(), 2);
    assert_eq!(client.versions("views-value").await.unwrap(), vec![1, 2]);
    running.stop().await;

    // Down: unreachable, with the reason.
    let e = client.schema_by_id(1).await.unwrap_err();
    assert!(matches!(e, RegistryError::Unreachable { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_is_sent_and_required() {
    let registry = LocalRegistry::new().with_basic_auth("strata", "s3cret");
    let running = registry.start(free_addr()).await.unwrap();
    let anonymous = client(&config(&running.url(), ""));
    let e = anonymous.versions("x").await.unwrap_err();
    assert!(
        matches!(e, RegistryError::Refused { status: 401, .. }),
        "{e}"
    );
    let wrong = client(&config(
        &running.url(),
        r#", username = "strata", password = "nope""#,
    ));
    let e = wrong.versions("x").await.unwrap_err();
    assert!(
        matches!(e, RegistryError::Refused { status: 401, .. }),
        "{e}"
    );
    let right = client(&config(
        &running.url(),
        r#", username = "strata", password = "s3cret""#,
    ));
    let e = right.versions("x").await.unwrap_err();
    assert_eq!(e.code(), Some(SUBJECT_NOT_FOUND), "{e}");
    running.stop().await;
}

/// Decoding blocks on registry lookups, as on the speed layer's and the
/// archive's blocking threads: the test decodes on its own thread and runs
/// the registry on a runtime beside it.
#[test]
fn every_avro_failure_is_a_dead_letter_reason_and_the_registry_recovers() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let registry = LocalRegistry::new();
    let addr = free_addr();
    let running = runtime.block_on(registry.start(addr)).unwrap();
    let config = config(&running.url(), "");
    let source = source(&config);
    let contract_id = registry
        .register("views-value", &avro::contract_schema(&source.contract))
        .unwrap();
    // A writer whose user_id is a long: registered (under another subject,
    // as the registry refuses it here) but unreadable as the contract.
    let incompatible_id = registry
        .register(
            "other-value",
            r#"{"type":"record","name":"V","fields":[
                {"name":"event_time","type":"long"},{"name":"user_id","type":"long"},{"name":"page","type":"string"}]}"#,
        )
        .unwrap();
    let decoders = Decoders::new(runtime.handle().clone());
    let mut decoder = decoders.decoder(&source);
    let mut event = Event::default();
    let failure = |decoder: &mut Box<dyn EventDecoder>, payload: &[u8]| {
        let e = decoder
            .decode_event(payload, &mut Event::default())
            .unwrap_err();
        (e.kind, e.message)
    };

    decoder
        .decode_event(&record(&source, contract_id, "u1", 1_000), &mut event)
        .unwrap();
    assert_eq!(event.values[1], Value::String("u1".into()));
    assert_eq!(event.time_ms, 1_000);

    let (k, m) = failure(&mut decoder, &record(&source, 99, "u", 1));
    assert_eq!(k, DecodeErrorKind::UnknownSchemaId, "{m}");
    assert!(
        m.contains("schema id 99 is not in the schema registry"),
        "{m}"
    );

    let (k, m) = failure(&mut decoder, &record(&source, incompatible_id, "u", 1));
    assert_eq!(k, DecodeErrorKind::IncompatibleSchema, "{m}");
    assert!(
        m.contains("field \"user_id\" is long in the writer, string in the contract"),
        "{m}"
    );

    let mut corrupt = record(&source, contract_id, "u", 1);
    corrupt.truncate(corrupt.len() - 3);
    let (k, m) = failure(&mut decoder, &corrupt);
    assert_eq!(k, DecodeErrorKind::CorruptAvro, "{m}");

    let (k, _) = failure(&mut decoder, br#"{"event_time":1}"#);
    assert_eq!(k, DecodeErrorKind::NotConfluentAvro);

    // A producer registers a new version, then the registry goes down.
    // Another partition's decoder shares the cache, so the schema already
    // known still decodes; the new id is a dead letter with the reason.
    // The new version lists the fields in another order (Avro resolves
    // them by name): country last.
    let mut evolved: serde_json::Value =
        serde_json::from_str(&avro::contract_schema(&source.contract)).unwrap();
    let fields = evolved["fields"].as_array_mut().unwrap();
    let country = fields.remove(3);
    fields.push(country);
    let evolved = evolved.to_string();
    let evolved_id = registry.register("views-value", &evolved).unwrap();
    runtime.block_on(running.stop());
    let mut other = decoders.decoder(&source);
    other
        .decode_event(&record(&source, contract_id, "u2", 2_000), &mut event)
        .unwrap();
    let mut evolved_record = record(&source, evolved_id, "u3", 3_000);
    // country (union branch 1, then "DE") moves behind referrer: it sits
    // after the header, event_time (2 bytes), user_id (1 + 2), page (1 + 5).
    let at = avro::HEADER_LEN + 2 + 3 + 6;
    let country: Vec<u8> = evolved_record.drain(at..at + 4).collect();
    evolved_record.extend_from_slice(&country);
    let (k, m) = failure(&mut other, &evolved_record);
    assert_eq!(k, DecodeErrorKind::RegistryUnavailable, "{m}");
    assert!(
        m.contains(&format!("cannot fetch schema id {evolved_id}")),
        "{m}"
    );
    assert!(m.contains("strata dlq replay"), "{m}");
    // While it is down, another new id fails at once, without a request.
    let (k, m) = failure(&mut other, &record(&source, 1234, "u", 1));
    assert_eq!(k, DecodeErrorKind::RegistryUnavailable, "{m}");
    assert!(
        m.contains("schema id 1234 not fetched: the registry was unreachable moments ago"),
        "{m}"
    );

    // Back on the same address: after retry_after the id decodes.
    let running = runtime.block_on(registry.start(addr)).unwrap();
    let (k, _) = failure(&mut other, &evolved_record);
    assert_eq!(
        k,
        DecodeErrorKind::RegistryUnavailable,
        "within retry_after"
    );
    std::thread::sleep(Duration::from_millis(350));
    other.decode_event(&evolved_record, &mut event).unwrap();
    assert_eq!(event.values[1], Value::String("u3".into()));
    assert_eq!(event.time_ms, 3_000);
    runtime.block_on(running.stop());
}
