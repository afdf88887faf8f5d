//! A seeded synthetic clickstream of `page_view` events.
//!
//! The same configuration always yields the same records, byte for byte, in
//! the same order and partitions: the generator that feeds Kafka and the
//! tests that compute the expected aggregates both iterate [`Clickstream`],
//! so a test knows exactly what was sent without reading it back. The PRNG is
//! a local SplitMix64 so the stream never changes with a dependency upgrade.

use strata_schemas::sketch::hash_str;
use strata_schemas::value::format_rfc3339_ms;

/// Country codes events are drawn from (the first `countries` are used).
pub const COUNTRIES: [&str; 20] = [
    "US", "DE", "FR", "GB", "IN", "BR", "JP", "CA", "AU", "ES", "IT", "NL", "SE", "PL", "MX", "KR",
    "ZA", "AR", "NO", "FI",
];

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct ClickstreamConfig {
    /// PRNG seed.
    pub seed: u64,
    /// Number of records (valid, malformed and invalid together).
    pub events: u64,
    /// Distinct users.
    pub users: u32,
    /// Distinct pages.
    pub pages: u32,
    /// Distinct countries (at most 20).
    pub countries: u32,
    /// Kafka partitions; a user's events always go to the same partition.
    pub partitions: u32,
    /// Event time of the first record, epoch ms.
    pub start_ms: i64,
    /// Event-time distance between consecutive records.
    pub step_ms: i64,
    /// Share of valid events whose time is moved back by up to `max_disorder_ms`.
    pub out_of_order_fraction: f64,
    /// Largest backwards shift of out-of-order events (keep it under the
    /// source's allowed lateness so they still count in the speed layer).
    pub max_disorder_ms: i64,
    /// Share of valid events moved back by `late_by_ms` (later than any
    /// allowed lateness: the speed layer drops them, the batch layer counts them).
    pub late_fraction: f64,
    /// Backwards shift of late events.
    pub late_by_ms: i64,
    /// Share of records that are not JSON.
    pub malformed_fraction: f64,
    /// Share of records that are JSON but break the contract.
    pub invalid_fraction: f64,
    /// Share of valid events carrying the optional v2 field `referrer`.
    pub referrer_fraction: f64,
    /// When positive, the active users change every `cohort_ms` of event
    /// time (each cohort has its own `users` ids), so sessions end and close
    /// during the stream; 0 keeps one population for the whole stream.
    pub cohort_ms: i64,
    /// `Some(id)`: records are Avro in the Confluent wire format, written
    /// with [`PAGE_VIEW_AVRO_SCHEMA`] registered as `id`; `None`: JSON. The
    /// same seed gives the same events in either format (malformed and
    /// invalid records are broken the Avro way: not framed, cut bodies,
    /// values breaking the contract's limits).
    pub avro_schema_id: Option<u32>,
}

/// The producer's Avro schema of page views: its own record name, the
/// contract's fields in another order, `duration_ms` an `int` (Strata
/// resolves it against contract page_view v2, promoting int to long).
pub const PAGE_VIEW_AVRO_SCHEMA: &str = r#"{"type":"record","name":"PageView","namespace":"com.example.clickstream","fields":[
  {"name":"user_id","type":"string"},
  {"name":"event_time","type":{"type":"long","logicalType":"timestamp-millis"}},
  {"name":"page","type":"string"},
  {"name":"duration_ms","type":["null","int"],"default":null},
  {"name":"country","type":["null","string"],"default":null},
  {"name":"referrer","type":["null","string"],"default":null}
]}"#;

impl Default for ClickstreamConfig {
    fn default() -> Self {
        ClickstreamConfig {
            seed: 42,
            events: 10_000,
            users: 1_000,
            pages: 50,
            countries: 8,
            partitions: 4,
            start_ms: 1_795_341_600_000, // 2026-11-22T10:00:00Z
            step_ms: 10,
            out_of_order_fraction: 0.1,
            max_disorder_ms: 5_000,
            late_fraction: 0.0,
            late_by_ms: 600_000,
            malformed_fraction: 0.0,
            invalid_fraction: 0.0,
            referrer_fraction: 0.3,
            cohort_ms: 0,
            avro_schema_id: None,
        }
    }
}

/// A valid page view as generated (the ground truth tests aggregate).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageView {
    /// Event time, epoch ms.
    pub event_time_ms: i64,
    /// `u000042`.
    pub user_id: String,
    /// `/page/7`.
    pub page: String,
    /// Country code.
    pub country: String,
    /// Time on page.
    pub duration_ms: i64,
    /// Optional v2 field.
    pub referrer: Option<String>,
}

/// What kind of record was generated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// A valid event (possibly out of order).
    Valid,
    /// A valid event later than any allowed lateness.
    Late,
    /// Not JSON.
    Malformed,
    /// JSON that breaks the contract.
    Invalid,
}

/// One generated Kafka record.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratedRecord {
    /// Position in the stream (0-based).
    pub seq: u64,
    /// Target partition.
    pub partition: i32,
    /// Message key (the user id).
    pub key: String,
    /// Message value.
    pub payload: Vec<u8>,
    /// Kind.
    pub kind: RecordKind,
    /// The event, for valid and late records.
    pub event: Option<PageView>,
}

/// SplitMix64: tiny, fast, and fixed forever.
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

/// The record iterator.
#[derive(Clone, Debug)]
pub struct Clickstream {
    config: ClickstreamConfig,
    rng: SplitMix64,
    seq: u64,
}

impl Clickstream {
    /// A stream for `config`.
    pub fn new(config: ClickstreamConfig) -> Self {
        let rng = SplitMix64(config.seed);
        Clickstream {
            config,
            rng,
            seq: 0,
        }
    }

    /// The partition of a user's events.
    pub fn partition_of(user_id: &str, partitions: u32) -> i32 {
        (hash_str(user_id) % u64::from(partitions.max(1))) as i32
    }
}

impl Iterator for Clickstream {
    type Item = GeneratedRecord;

    fn next(&mut self) -> Option<GeneratedRecord> {
        let c = &self.config;
        if self.seq >= c.events {
            return None;
        }
        let seq = self.seq;
        self.seq += 1;
        let rng = &mut self.rng;
        // Draw every random number unconditionally, in a fixed order, so one
        // record's kind never shifts the randomness of the records after it.
        let user = rng.below(u64::from(c.users.max(1)));
        let page_draw = rng.unit();
        let country = rng.below(u64::from(c.countries.clamp(1, COUNTRIES.len() as u32)));
        let duration_ms = 100 + rng.below(30_000) as i64;
        let kind_draw = rng.unit();
        let disorder_draw = rng.unit();
        let disorder = rng.below(c.max_disorder_ms.max(0) as u64 + 1) as i64;
        let referrer_draw = rng.unit();
        let format_draw = rng.unit();
        let variant = rng.below(4);

        let cohort = if c.cohort_ms > 0 {
            (seq as i64 * c.step_ms) / c.cohort_ms
        } else {
            0
        };
        let user = cohort as u64 * u64::from(c.users.max(1)) + user;
        let user_id = format!("u{user:06}");
        // Page popularity is skewed: low page numbers are visited most.
        let page = format!(
            "/page/{}",
            ((page_draw * page_draw) * f64::from(c.pages.max(1))) as u32
        );
        let country = COUNTRIES[country as usize].to_string();
        let partition = Clickstream::partition_of(&user_id, c.partitions);
        let mut time = c.start_ms + seq as i64 * c.step_ms;

        let malformed = kind_draw < c.malformed_fraction;
        let invalid = !malformed && kind_draw < c.malformed_fraction + c.invalid_fraction;
        let late = !malformed && !invalid && disorder_draw < c.late_fraction;
        if late {
            time -= c.late_by_ms;
        } else if disorder_draw < c.late_fraction + c.out_of_order_fraction {
            time -= disorder;
        }
        let referrer =
            (referrer_draw < c.referrer_fraction).then(|| format!("https://ref{variant}.example"));
        let event = PageView {
            event_time_ms: time,
            user_id: user_id.clone(),
            page,
            country,
            duration_ms,
            referrer,
        };

        if let Some(schema_id) = c.avro_schema_id {
            let (kind, payload, event) = if malformed {
                let payload = match variant {
                    0 => b"not avro at all".to_vec(),
                    1 => {
                        let mut cut = page_view_avro(&event, schema_id);
                        cut.truncate(cut.len() / 2);
                        cut
                    }
                    // Framed, but the body stops inside its first length.
                    2 => [&[0u8][..], &schema_id.to_be_bytes()[..], b"\xff\xff\xff"].concat(),
                    _ => b"[1, 2, 3]".to_vec(),
                };
                (RecordKind::Malformed, payload, None)
            } else if invalid {
                let mut broken = event;
                match variant {
                    0 => broken.user_id = "u".repeat(100),
                    1 => broken.country = "Atlantis".repeat(2),
                    2 => broken.page = "/".repeat(600),
                    _ => broken.event_time_ms = -1,
                }
                (
                    RecordKind::Invalid,
                    page_view_avro(&broken, schema_id),
                    None,
                )
            } else {
                let kind = if late {
                    RecordKind::Late
                } else {
                    RecordKind::Valid
                };
                (kind, page_view_avro(&event, schema_id), Some(event))
            };
            return Some(GeneratedRecord {
                seq,
                partition,
                key: user_id,
                payload,
                kind,
                event,
            });
        }
        let (kind, payload, event) = if malformed {
            let payload = match variant {
                0 => b"not json at all".to_vec(),
                1 => format!("{{\"event_time\": {time}, \"user_id\": \"{user_id}\"").into_bytes(),
                2 => b"\x00\xff\xfe binary".to_vec(),
                _ => b"[1, 2, 3]".to_vec(),
            };
            (RecordKind::Malformed, payload, None)
        } else if invalid {
            let mut json = page_view_json(&event, format_draw);
            match variant {
                0 => {
                    json.insert("duration_ms".into(), serde_json::Value::from("a while"));
                }
                1 => {
                    json.remove("user_id");
                }
                2 => {
                    json.insert("colour".into(), serde_json::Value::from("red"));
                }
                _ => {
                    json.insert("event_time".into(), serde_json::Value::from("yesterday"));
                }
            }
            (
                RecordKind::Invalid,
                serde_json::Value::Object(json).to_string().into_bytes(),
                None,
            )
        } else {
            let json = page_view_json(&event, format_draw);
            let kind = if late {
                RecordKind::Late
            } else {
                RecordKind::Valid
            };
            (
                kind,
                serde_json::Value::Object(json).to_string().into_bytes(),
                Some(event),
            )
        };
        Some(GeneratedRecord {
            seq,
            partition,
            key: user_id,
            payload,
            kind,
            event,
        })
    }
}

/// A page view framed as [`PAGE_VIEW_AVRO_SCHEMA`] registered as
/// `schema_id`, encoded here by hand as a producer's library would.
fn page_view_avro(e: &PageView, schema_id: u32) -> Vec<u8> {
    fn long(out: &mut Vec<u8>, v: i64) {
        let mut n = ((v << 1) ^ (v >> 63)) as u64;
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }
    fn string(out: &mut Vec<u8>, s: &str) {
        long(out, s.len() as i64);
        out.extend_from_slice(s.as_bytes());
    }
    let mut out = vec![0u8];
    out.extend_from_slice(&schema_id.to_be_bytes());
    string(&mut out, &e.user_id);
    long(&mut out, e.event_time_ms);
    string(&mut out, &e.page);
    long(&mut out, 1);
    long(&mut out, e.duration_ms);
    long(&mut out, 1);
    string(&mut out, &e.country);
    match &e.referrer {
        Some(r) => {
            long(&mut out, 1);
            string(&mut out, r);
        }
        None => long(&mut out, 0),
    }
    out
}

/// The JSON of a page view, varying the encodings the contract accepts
/// (RFC 3339 or epoch-ms times, numbers or numeric strings).
fn page_view_json(e: &PageView, format_draw: f64) -> serde_json::Map<String, serde_json::Value> {
    let mut json = serde_json::Map::new();
    if format_draw < 0.5 {
        json.insert(
            "event_time".into(),
            serde_json::Value::from(format_rfc3339_ms(e.event_time_ms)),
        );
    } else {
        json.insert(
            "event_time".into(),
            serde_json::Value::from(e.event_time_ms),
        );
    }
    json.insert("user_id".into(), serde_json::Value::from(e.user_id.clone()));
    json.insert("page".into(), serde_json::Value::from(e.page.clone()));
    json.insert("country".into(), serde_json::Value::from(e.country.clone()));
    if format_draw > 0.95 {
        json.insert(
            "duration_ms".into(),
            serde_json::Value::from(e.duration_ms.to_string()),
        );
    } else {
        json.insert("duration_ms".into(), serde_json::Value::from(e.duration_ms));
    }
    if let Some(r) = &e.referrer {
        json.insert("referrer".into(), serde_json::Value::from(r.clone()));
    }
    json
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let config = ClickstreamConfig {
            events: 500,
            malformed_fraction: 0.05,
            invalid_fraction: 0.05,
            late_fraction: 0.05,
            ..ClickstreamConfig::default()
        };
        let a: Vec<_> = Clickstream::new(config.clone()).collect();
        let b: Vec<_> = Clickstream::new(config).collect();
        assert_eq!(a, b);
        assert_eq!(a.len(), 500);
        for kind in [
            RecordKind::Valid,
            RecordKind::Late,
            RecordKind::Malformed,
            RecordKind::Invalid,
        ] {
            assert!(a.iter().any(|r| r.kind == kind), "no {kind:?} record");
        }
        for r in &a {
            assert_eq!(r.partition, Clickstream::partition_of(&r.key, 4));
        }
    }

    /// The same seed gives the same events as JSON and as Avro; every
    /// broken Avro record fails to decode.
    #[test]
    fn avro_and_json_streams_carry_the_same_events() {
        use strata_schemas::avro::WriterSchema;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/contracts");
        let contracts = strata_schemas::ContractRegistry::load_dir(&dir).unwrap();
        let contract = contracts.get("page_view", 2).unwrap();
        let decoder = strata_schemas::Decoder::new(contract.clone(), 0, 65_536);
        let writer = WriterSchema::compile(7, PAGE_VIEW_AVRO_SCHEMA, &contract).unwrap();
        let config = ClickstreamConfig {
            events: 2_000,
            malformed_fraction: 0.05,
            invalid_fraction: 0.05,
            late_fraction: 0.05,
            ..ClickstreamConfig::default()
        };
        let json: Vec<_> = Clickstream::new(config.clone()).collect();
        let avro: Vec<_> = Clickstream::new(ClickstreamConfig {
            avro_schema_id: Some(7),
            ..config
        })
        .collect();
        let mut broken = 0;
        for (j, a) in json.iter().zip(&avro) {
            assert_eq!(
                (j.kind, &j.event, j.partition),
                (a.kind, &a.event, a.partition)
            );
            let from_avro = decoder.decode_avro_into(&writer, &a.payload, &mut Default::default());
            match a.kind {
                RecordKind::Valid | RecordKind::Late => {
                    let mut e = strata_schemas::Event::default();
                    decoder
                        .decode_avro_into(&writer, &a.payload, &mut e)
                        .unwrap();
                    assert_eq!(e, decoder.decode(&j.payload).unwrap());
                }
                RecordKind::Malformed | RecordKind::Invalid => {
                    from_avro.unwrap_err();
                    broken += 1;
                }
            }
        }
        assert!(broken > 100, "{broken}");
    }
}
