//! The docs say Strata's librdkafka is built without OpenSSL and libsasl2, so
//! TLS (`ssl`, `sasl_ssl`) and SASL mechanisms other than PLAIN in
//! `kafka.properties` are refused when the client is created (rather than
//! failing later, or silently talking plaintext). This holds the docs to
//! the build.

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
        Ok(_) => panic!("{properties:?} was accepted by a build without it"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn tls_is_refused_at_client_creation() {
    for protocol in ["ssl", "sasl_ssl"] {
        let err = refusal(&[("security.protocol", protocol)]);
        assert!(
            err.contains("security.protocol") && err.contains("OpenSSL"),
            "{protocol}: the error should name the property and the missing OpenSSL: {err}"
        );
    }
}

#[test]
fn sasl_mechanisms_other_than_plain_are_refused_at_client_creation() {
    for mechanism in ["GSSAPI", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let err = refusal(&[
            ("security.protocol", "sasl_plaintext"),
            ("sasl.mechanism", mechanism),
        ]);
        assert!(
            err.contains(mechanism) || err.contains("sasl.mechanism"),
            "{mechanism}: the error should name the mechanism: {err}"
        );
    }
}

#[test]
fn plaintext_and_sasl_plain_are_accepted() {
    for properties in [
        &[("security.protocol", "plaintext")][..],
        &[
            ("security.protocol", "sasl_plaintext"),
            ("sasl.mechanism", "PLAIN"),
            ("sasl.username", "strata"),
            ("sasl.password", "secret"),
        ][..],
    ] {
        strata_kafka::client_config(&section(properties))
            .create::<BaseConsumer>()
            .unwrap_or_else(|e| panic!("{properties:?} should be accepted: {e}"));
    }
}
