//! What Strata's librdkafka build accepts in `kafka.properties`, checked when
//! the client is created: TLS (`ssl`, `sasl_ssl`, against the system
//! OpenSSL) and the SASL mechanisms PLAIN and SCRAM are compiled in; GSSAPI
//! (Kerberos) is not, and is refused then, naming the mechanism, rather than
//! failing later. A CA file that cannot be read is refused at creation too,
//! naming the property. Real TLS connections are tested against a TLS
//! listener in `tests/kafka_tls.rs`.

use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::BaseProducer;
use strata_schemas::config::KafkaSection;

fn section(properties: &[(&str, &str)]) -> KafkaSection {
    let mut kafka = KafkaSection::default();
    for (key, value) in properties {
        kafka.properties.insert(key.to_string(), value.to_string());
    }
    kafka
}

fn refusal(properties: &[(&str, &str)]) -> String {
    match strata_kafka::client_config(&section(properties)).create::<BaseProducer>() {
        Ok(_) => panic!("{properties:?} was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn tls_sasl_plain_and_scram_are_accepted() {
    let scram = |mechanism| {
        vec![
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanism", mechanism),
            ("sasl.username", "strata"),
            ("sasl.password", "secret"),
        ]
    };
    for properties in [
        vec![("security.protocol", "plaintext")],
        vec![("security.protocol", "ssl")],
        vec![
            ("security.protocol", "sasl_plaintext"),
            ("sasl.mechanism", "PLAIN"),
            ("sasl.username", "strata"),
            ("sasl.password", "secret"),
        ],
        scram("PLAIN"),
        scram("SCRAM-SHA-256"),
        scram("SCRAM-SHA-512"),
        vec![("compression.codec", "zstd")],
    ] {
        strata_kafka::client_config(&section(&properties))
            .create::<BaseConsumer>()
            .unwrap_or_else(|e| panic!("{properties:?} should be accepted: {e}"));
    }
}

#[test]
fn gssapi_is_refused_at_client_creation_naming_the_mechanism() {
    let err = refusal(&[
        ("security.protocol", "sasl_ssl"),
        ("sasl.mechanism", "GSSAPI"),
    ]);
    assert!(
        err.contains("GSSAPI") || err.contains("sasl.mechanism"),
        "the error should name the mechanism: {err}"
    );
}

#[test]
fn an_unreadable_ca_file_is_refused_at_client_creation_naming_the_property() {
    let err = refusal(&[
        ("security.protocol", "ssl"),
        ("ssl.ca.location", "/nonexistent/strata-ca.pem"),
    ]);
    assert!(
        err.contains("ssl.ca.location"),
        "the error should name the property: {err}"
    );
}
