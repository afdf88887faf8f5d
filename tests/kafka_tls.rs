//! Kafka over TLS with SASL/SCRAM against a real listener (`deploy/local/up.sh
//! tls`: stunnel terminating TLS with a test CA's certificate for 127.0.0.1,
//! in front of a Tansu broker that advertises the TLS port and requires
//! SCRAM authentication).
//!
//! - A client that trusts the CA and gives the right SCRAM-SHA-256 or -512
//!   credentials gets metadata; one that does not trust the CA (the system
//!   trust store), speaks plaintext to the TLS port, gives a wrong password
//!   or no SASL at all, gets none; nor does one that reaches the listener
//!   under a name the certificate does not hold.
//! - The speed layer end to end over TLS: `strata generate` produces
//!   zstd-compressed batches, `strata speed` consumes them (and commits its
//!   offsets) through TLS, and the speed view equals aggregates computed
//!   independently from the same seeded events. (Whether Tansu serves the
//!   batches compressed as produced is its own business: reading zstd
//!   batches is tested on librdkafka's mock cluster, which does,
//!   in `kafka/tests/group.rs`.)

mod support;

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use support::{TestEnv, tls_endpoint};

fn brokers() -> String {
    tls_endpoint("STRATA_TLS_KAFKA_BROKERS")
}

fn ca() -> String {
    tls_endpoint("STRATA_TLS_CA")
}

fn user() -> String {
    tls_endpoint("STRATA_TLS_KAFKA_SASL_USER")
}

fn password() -> String {
    tls_endpoint("STRATA_TLS_KAFKA_SASL_PASSWORD")
}

/// Records librdkafka's error callbacks: the metadata call itself only says
/// "broker transport failure", the callbacks say why (certificate, SASL).
#[derive(Default)]
struct Errors(std::sync::Mutex<Vec<String>>);

impl rdkafka::ClientContext for Errors {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.0.lock().unwrap().push(format!("{error}: {reason}"));
    }
}

impl rdkafka::consumer::ConsumerContext for Errors {}

/// Broker count in the metadata a client with `properties` gets, or the
/// error with every reason librdkafka gave for it.
fn metadata(properties: &[(&str, &str)]) -> Result<usize, String> {
    metadata_from(&brokers(), properties)
}

/// [`metadata`] through the bootstrap servers `bootstrap`.
fn metadata_from(bootstrap: &str, properties: &[(&str, &str)]) -> Result<usize, String> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("log_level", "0");
    for (k, v) in properties {
        config.set(*k, *v);
    }
    let consumer: BaseConsumer<Errors> = config
        .create_with_context(Errors::default())
        .map_err(|e| e.to_string())?;
    consumer
        .fetch_metadata(None, Duration::from_secs(5))
        .map(|m| m.brokers().len())
        .map_err(|e| {
            // Error callbacks arrive through the client's queue.
            for _ in 0..10 {
                let _ = consumer.poll(Duration::from_millis(50));
            }
            format!("{e}; {}", consumer.context().0.lock().unwrap().join("; "))
        })
}

#[test]
fn only_a_client_trusting_the_ca_with_the_right_credentials_gets_metadata() {
    let (ca, user, password) = (ca(), user(), password());
    let sasl = |mechanism: &'static str, password: &str| {
        metadata(&[
            ("security.protocol", "sasl_ssl"),
            ("ssl.ca.location", &ca),
            ("sasl.mechanism", mechanism),
            ("sasl.username", &user),
            ("sasl.password", password),
        ])
    };
    assert_eq!(sasl("SCRAM-SHA-256", &password), Ok(1));
    assert_eq!(sasl("SCRAM-SHA-512", &password), Ok(1));
    let wrong = sasl("SCRAM-SHA-512", "not-the-password");
    assert!(
        wrong
            .as_ref()
            .is_err_and(|e| e.contains("SASL SCRAM authentication failed")),
        "a wrong password should fail SCRAM authentication: {wrong:?}"
    );
    // TLS without SASL: the broker requires authentication.
    let anonymous = metadata(&[("security.protocol", "ssl"), ("ssl.ca.location", &ca)]);
    assert!(
        anonymous
            .as_ref()
            .is_err_and(|e| e.contains("brokers are down")),
        "no SASL: the broker should close the connection: {anonymous:?}"
    );
    // The system trust store does not know the test CA.
    let untrusted = metadata(&[
        ("security.protocol", "sasl_ssl"),
        ("sasl.mechanism", "SCRAM-SHA-512"),
        ("sasl.username", &user),
        ("sasl.password", &password),
    ]);
    assert!(
        untrusted
            .as_ref()
            .is_err_and(|e| e.contains("certificate verify failed")),
        "the test CA is unknown to the system store: {untrusted:?}"
    );
    // Plaintext to a TLS port is no Kafka answer.
    let plaintext = metadata(&[("security.protocol", "plaintext")]);
    assert!(
        plaintext
            .as_ref()
            .is_err_and(|e| e.contains("brokers are down")),
        "plaintext to a TLS port should be closed: {plaintext:?}"
    );
}

/// librdkafka checks the broker's host name against its certificate: the
/// test certificate names 127.0.0.1 and localhost, and `127.1` reaches the
/// same listener under a name it does not hold. The same client with the
/// check switched off gets metadata, so the refusal is the host name's.
#[test]
fn a_broker_reached_under_a_name_its_certificate_does_not_hold_is_refused() {
    let (ca, user, password) = (ca(), user(), password());
    let port = brokers()
        .rsplit_once(':')
        .map(|(_, port)| port.to_string())
        .expect("the TLS brokers are host:port");
    let elsewhere = format!("127.1:{port}");
    let client = |identification: &'static str| {
        metadata_from(
            &elsewhere,
            &[
                ("security.protocol", "sasl_ssl"),
                ("ssl.ca.location", &ca),
                ("ssl.endpoint.identification.algorithm", identification),
                ("sasl.mechanism", "SCRAM-SHA-256"),
                ("sasl.username", &user),
                ("sasl.password", &password),
            ],
        )
    };
    let checked = client("https");
    assert!(
        checked
            .as_ref()
            .is_err_and(|e| e.contains("certificate verify failed")),
        "a certificate for 127.0.0.1 and localhost must not pass for 127.1: {checked:?}"
    );
    assert_eq!(
        client("none"),
        Ok(1),
        "the same client without the host check"
    );
}

#[tokio::test]
async fn speed_layer_over_tls_and_scram_with_a_zstd_producer_equals_independent_aggregates() {
    let extra = format!(
        "[kafka.properties]\n\
         \"security.protocol\" = \"sasl_ssl\"\n\
         \"ssl.ca.location\" = {:?}\n\
         \"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\
         \"sasl.username\" = {:?}\n\
         \"sasl.password\" = {:?}\n\
         # The producer (strata generate) compresses; consumers decompress.\n\
         \"compression.codec\" = \"zstd\"\n",
        ca(),
        user(),
        password()
    );
    let mut env = TestEnv::new("tls", &extra);
    env.kafka_brokers = brokers();
    env.init();
    let stream = TestEnv::two_partition_stream(23, 6_000, 500);
    env.speed_view_of_equals_expected(stream, Duration::from_secs(180), "over TLS")
        .await;
    env.drop_database().await;
}
