use super::*;

const G: &str = "Plant1";
const N: &str = "Line3";

fn metric(name: &str, alias: u64, datatype: u32, value: MetricValue) -> Metric {
    Metric {
        name: Some(name.into()),
        alias: Some(alias),
        datatype: Some(datatype),
        value: Some(value),
        ..Metric::default()
    }
}

fn by_alias(alias: u64, value: MetricValue) -> Metric {
    Metric {
        alias: Some(alias),
        value: Some(value),
        ..Metric::default()
    }
}

fn payload(seq: Option<u64>, metrics: Vec<Metric>) -> Vec<u8> {
    Payload {
        timestamp: Some(1_800_000_000_000),
        metrics,
        seq,
        ..Payload::default()
    }
    .encode_to_vec()
}

fn birth(seq: u64, bd_seq: u64) -> Vec<u8> {
    payload(
        Some(seq),
        vec![
            metric(BD_SEQ, 0, 8, MetricValue::Long(bd_seq)),
            metric("Count", 1, 7, MetricValue::Int(10)),
            metric("Temp", 2, 9, MetricValue::Float(21.5)),
        ],
    )
}

/// Tags: 0 = node Count, 1 = node Temp, 2 = device Press1 Force.
fn host() -> Host {
    Host::new([
        (0, G, N, None, "Count"),
        (1, G, N, None, "Temp"),
        (2, G, N, Some("Press1"), "Force"),
    ])
}

fn topic(kind: &str, device: Option<&str>) -> String {
    match device {
        Some(d) => format!("spBv1.0/{G}/{kind}/{N}/{d}"),
        None => format!("spBv1.0/{G}/{kind}/{N}"),
    }
}

fn read(host: &mut Host, kind: &str, device: Option<&str>, bytes: &[u8], now: Instant) -> Effect {
    host.read(&topic(kind, device), Ok(bytes), now, SystemTime::now())
        .expect("a configured node's message")
}

fn values(effect: &Effect) -> Vec<(usize, Result<Value, String>)> {
    effect
        .samples
        .iter()
        .map(|(i, r)| (*i, r.clone().map(|(v, _)| v)))
        .collect()
}

fn all_bad(effect: &Effect, tags: &[usize], reason: &str) {
    let got: Vec<usize> = effect.samples.iter().map(|(i, _)| *i).collect();
    assert_eq!(got, tags, "{effect:?}");
    for (_, r) in &effect.samples {
        let why = r.as_ref().expect_err("Bad");
        assert!(why.contains(reason), "{why}");
    }
}

#[test]
fn topics_are_taken_apart_and_others_ignored() {
    assert_eq!(
        Topic::parse("spBv1.0/G/DDATA/N/D"),
        Some(Topic {
            group: "G",
            kind: Kind::DData,
            edge_node: "N",
            device: Some("D")
        })
    );
    assert_eq!(
        Topic::parse("spBv1.0/G/NBIRTH/N").unwrap().kind,
        Kind::NBirth
    );
    assert_eq!(Topic::parse("spBv1.0/STATE/host"), None);
    assert_eq!(
        Topic::parse("spBv1.0/G/NDATA/N/D"),
        None,
        "node data has no device"
    );
    assert_eq!(
        Topic::parse("spBv1.0/G/DDATA/N"),
        None,
        "device data names one"
    );
    assert_eq!(Topic::parse("spAv1.0/G/NDATA/N"), None);
    assert_eq!(Topic::parse("spBv1.0/G/NDATA/N/D/x"), None);
}

#[test]
fn values_follow_the_declared_type() {
    let m = |v| Metric {
        value: Some(v),
        ..Metric::default()
    };
    // Int8 -1, whether the encoder sign-extended to 32 bits or not.
    assert_eq!(
        value(&m(MetricValue::Int(0xFFFF_FFFF)), 1),
        Ok(Value::I64(-1))
    );
    assert_eq!(value(&m(MetricValue::Int(0xFF)), 1), Ok(Value::I64(-1)));
    assert_eq!(
        value(&m(MetricValue::Int(0x8000)), 2),
        Ok(Value::I64(-32_768))
    );
    assert_eq!(
        value(&m(MetricValue::Long(u64::MAX)), 4),
        Ok(Value::I64(-1))
    );
    assert_eq!(
        value(&m(MetricValue::Int(65_535)), 6),
        Ok(Value::U64(65_535))
    );
    assert!(
        value(&m(MetricValue::Int(70_000)), 6)
            .unwrap_err()
            .contains("UInt16")
    );
    // UInt32 in the long field, as Java encoders put it.
    assert_eq!(
        value(&m(MetricValue::Long(4_000_000_000)), 7),
        Ok(Value::U64(4_000_000_000))
    );
    assert_eq!(value(&m(MetricValue::Float(1.5)), 9), Ok(Value::F64(1.5)));
    assert_eq!(
        value(&m(MetricValue::Boolean(true)), 11),
        Ok(Value::Bool(true))
    );
    assert_eq!(
        value(&m(MetricValue::Long(1_800_000_000_000)), 13),
        Ok(Value::Str("2027-01-15T08:00:00.000Z".into()))
    );
    assert!(
        value(&m(MetricValue::Boolean(true)), 9)
            .unwrap_err()
            .contains("wrong field")
    );
    let dataset = Metric::default();
    assert!(value(&dataset, 16).unwrap_err().contains("DataSet"));
    let null = Metric {
        is_null: Some(true),
        ..Metric::default()
    };
    assert!(value(&null, 9).unwrap_err().contains("is_null"));
}

/// The bytes as the Sparkplug B protobuf definition lays them out, written here field by
/// field, decode to what the edge node meant: the derive's field numbers are the spec's.
#[test]
fn the_wire_layout_is_the_specifications() {
    use prost::encoding::{WireType, encode_key, encode_varint};
    let mut metric = Vec::new();
    encode_key(1, WireType::LengthDelimited, &mut metric); // name
    encode_varint(5, &mut metric);
    metric.extend_from_slice(b"Count");
    encode_key(2, WireType::Varint, &mut metric); // alias
    encode_varint(7, &mut metric);
    encode_key(4, WireType::Varint, &mut metric); // datatype: Int16
    encode_varint(2, &mut metric);
    encode_key(10, WireType::Varint, &mut metric); // int_value: -2, sign-extended
    encode_varint(0xFFFF_FFFE, &mut metric);
    encode_key(8, WireType::LengthDelimited, &mut metric); // metadata: skipped
    encode_varint(2, &mut metric);
    metric.extend_from_slice(&[0x08, 0x01]);
    let mut bytes = Vec::new();
    encode_key(1, WireType::Varint, &mut bytes); // timestamp
    encode_varint(1_800_000_000_000, &mut bytes);
    encode_key(2, WireType::LengthDelimited, &mut bytes); // metrics
    encode_varint(metric.len() as u64, &mut bytes);
    bytes.extend_from_slice(&metric);
    encode_key(3, WireType::Varint, &mut bytes); // seq
    encode_varint(0, &mut bytes);
    let p = decode(&bytes).unwrap();
    assert_eq!(p.seq, Some(0));
    assert_eq!(p.metrics[0].name.as_deref(), Some("Count"));
    assert_eq!(p.metrics[0].alias, Some(7));
    assert_eq!(
        value(&p.metrics[0], p.metrics[0].datatype.unwrap()),
        Ok(Value::I64(-2))
    );
    assert!(
        decode(&bytes[..bytes.len() - 3])
            .unwrap_err()
            .contains("malformed")
    );
}

#[test]
fn a_birth_then_data_by_alias_feed_the_tags() {
    let mut host = host();
    let now = Instant::now();
    let e = read(&mut host, "NBIRTH", None, &birth(0, 3), now);
    assert_eq!(
        values(&e),
        vec![(0, Ok(Value::U64(10))), (1, Ok(Value::F64(21.5)))]
    );
    assert!(e.rebirth.is_none() && e.warning.is_none());
    // NDATA by alias only, with its own time.
    let mut m = by_alias(1, MetricValue::Int(11));
    m.timestamp = Some(1_800_000_001_000);
    let e = read(&mut host, "NDATA", None, &payload(Some(1), vec![m]), now);
    assert_eq!(values(&e), vec![(0, Ok(Value::U64(11)))]);
    assert_eq!(
        e.samples[0].1.as_ref().unwrap().1,
        Some(UNIX_EPOCH + Duration::from_millis(1_800_000_001_000))
    );
    // A device: born, then its data; an unconfigured metric is passed over.
    let dbirth = payload(
        Some(2),
        vec![
            metric("Force", 10, 10, MetricValue::Double(12.5)),
            metric("Other", 11, 10, MetricValue::Double(0.0)),
        ],
    );
    let e = read(&mut host, "DBIRTH", Some("Press1"), &dbirth, now);
    assert_eq!(values(&e), vec![(2, Ok(Value::F64(12.5)))]);
    let ddata = payload(
        Some(3),
        vec![
            by_alias(11, MetricValue::Double(1.0)),
            by_alias(10, MetricValue::Double(13.0)),
        ],
    );
    let e = read(&mut host, "DDATA", Some("Press1"), &ddata, now);
    assert_eq!(values(&e), vec![(2, Ok(Value::F64(13.0)))]);
    // seq wraps from 255 to 0 without a gap; 3 -> 255 is one.
    let e = read(&mut host, "NDATA", None, &payload(Some(255), vec![]), now);
    assert!(
        e.warning.as_deref().unwrap().contains("255 after 3"),
        "{e:?}"
    );
    let mut host2 = self::host();
    let _ = read(&mut host2, "NBIRTH", None, &birth(254, 1), now);
    let _ = read(&mut host2, "NDATA", None, &payload(Some(255), vec![]), now);
    let e = read(
        &mut host2,
        "NDATA",
        None,
        &payload(Some(0), vec![by_alias(1, MetricValue::Int(12))]),
        now,
    );
    assert_eq!(values(&e), vec![(0, Ok(Value::U64(12)))]);
    assert!(e.warning.is_none());
}

#[test]
fn a_sequence_gap_asks_for_a_rebirth_and_reads_nothing_until_it_comes() {
    let mut host = host();
    let t0 = Instant::now();
    let _ = read(&mut host, "NBIRTH", None, &birth(0, 1), t0);
    let _ = read(
        &mut host,
        "NDATA",
        None,
        &payload(Some(1), vec![by_alias(1, MetricValue::Int(11))]),
        t0,
    );
    // seq 2 and 3 lost.
    let e = read(
        &mut host,
        "NDATA",
        None,
        &payload(Some(4), vec![by_alias(1, MetricValue::Int(99))]),
        t0,
    );
    assert!(e.warning.as_deref().unwrap().contains("4 after 1"), "{e:?}");
    let (topic, request) = e.rebirth.clone().expect("a rebirth request");
    assert_eq!(topic, format!("spBv1.0/{G}/NCMD/{N}"));
    let request = decode(&request).unwrap();
    assert_eq!(request.metrics[0].name.as_deref(), Some(REBIRTH_METRIC));
    assert_eq!(request.metrics[0].value, Some(MetricValue::Boolean(true)));
    // The value behind the gap is not believed: every tag waits for the birth.
    all_bad(&e, &[0, 1, 2], "waiting for a birth certificate");
    // More data before the birth: still not read, and no second request within 5 s ...
    let e = read(
        &mut host,
        "NDATA",
        None,
        &payload(Some(5), vec![by_alias(1, MetricValue::Int(100))]),
        t0 + Duration::from_secs(1),
    );
    all_bad(&e, &[0, 1, 2], "waiting");
    assert!(e.rebirth.is_none());
    // ... but one after.
    let e = read(
        &mut host,
        "NDATA",
        None,
        &payload(Some(6), vec![]),
        t0 + REBIRTH_EVERY,
    );
    assert!(e.rebirth.is_some());
    // The birth brings the values back.
    let e = read(&mut host, "NBIRTH", None, &birth(0, 2), t0 + REBIRTH_EVERY);
    assert_eq!(
        values(&e),
        vec![(0, Ok(Value::U64(10))), (1, Ok(Value::F64(21.5)))]
    );
}

#[test]
fn data_before_any_birth_and_unknown_aliases_ask_for_one() {
    let mut host = host();
    let now = Instant::now();
    let e = read(
        &mut host,
        "NDATA",
        None,
        &payload(Some(7), vec![by_alias(1, MetricValue::Int(5))]),
        now,
    );
    all_bad(
        &e,
        &[0, 1, 2],
        "waiting for a birth certificate from edge node Plant1/Line3",
    );
    assert!(e.rebirth.is_some());
    let _ = read(&mut host, "NBIRTH", None, &birth(0, 1), now + REBIRTH_EVERY);
    // A device that has not been born.
    let e = read(
        &mut host,
        "DDATA",
        Some("Press1"),
        &payload(Some(1), vec![by_alias(10, MetricValue::Double(1.0))]),
        now + REBIRTH_EVERY * 2,
    );
    all_bad(&e, &[2], "device Plant1/Line3/Press1");
    assert!(e.rebirth.is_some());
    // An alias the birth did not declare: the births known are not the node's; nothing of the
    // message is read, every tag waits for the rebirth asked for (10 s after the last).
    let _ = read(
        &mut host,
        "NBIRTH",
        None,
        &birth(0, 1),
        now + REBIRTH_EVERY * 3,
    );
    let e = read(
        &mut host,
        "NDATA",
        None,
        &payload(
            Some(1),
            vec![
                by_alias(2, MetricValue::Float(3.0)),
                by_alias(42, MetricValue::Int(1)),
            ],
        ),
        now + REBIRTH_EVERY * 4,
    );
    all_bad(&e, &[0, 1, 2], "waiting for a birth certificate");
    assert!(e.warning.as_deref().unwrap().contains("alias 42"));
    assert!(e.rebirth.is_some());
}

#[test]
fn a_death_makes_tags_bad_unless_it_is_an_older_sessions_will() {
    let mut host = host();
    let now = Instant::now();
    let _ = read(&mut host, "NBIRTH", None, &birth(0, 5), now);
    let dbirth = payload(
        Some(1),
        vec![metric("Force", 10, 10, MetricValue::Double(1.0))],
    );
    let _ = read(&mut host, "DBIRTH", Some("Press1"), &dbirth, now);
    // DDEATH: the device's tags only.
    let e = read(
        &mut host,
        "DDEATH",
        Some("Press1"),
        &payload(Some(2), vec![]),
        now,
    );
    all_bad(&e, &[2], "device Plant1/Line3/Press1 is offline (DDEATH)");
    // The will of session 4 arriving late: the node of session 5 lives on.
    let stale = payload(None, vec![metric(BD_SEQ, 0, 8, MetricValue::Long(4))]);
    let e = read(&mut host, "NDEATH", None, &stale, now);
    assert!(e.samples.is_empty());
    let e = read(
        &mut host,
        "NDATA",
        None,
        &payload(Some(3), vec![by_alias(1, MetricValue::Int(11))]),
        now,
    );
    assert_eq!(values(&e), vec![(0, Ok(Value::U64(11)))]);
    // Its own death: every tag of the node and its devices.
    let death = payload(None, vec![metric(BD_SEQ, 0, 8, MetricValue::Long(5))]);
    let e = read(&mut host, "NDEATH", None, &death, now);
    all_bad(&e, &[0, 1, 2], "edge node Plant1/Line3 is offline (NDEATH)");
}

#[test]
fn a_birth_without_a_configured_metric_says_so() {
    let mut host = Host::new([(0, G, N, None, "Count"), (1, G, N, None, "Presure")]);
    let e = read(&mut host, "NBIRTH", None, &birth(0, 1), Instant::now());
    assert_eq!(
        e.samples[0],
        (
            0,
            Ok((
                Value::U64(10),
                Some(UNIX_EPOCH + Duration::from_millis(1_800_000_000_000))
            ))
        )
    );
    let why = e.samples[1].1.as_ref().unwrap_err();
    assert!(why.contains("does not declare a metric `Presure`"), "{why}");
    assert!(e.warning.unwrap().contains("Presure"));
}

#[test]
fn malformed_or_oversized_payloads_make_the_nodes_tags_bad_and_ask_for_a_rebirth() {
    let mut host = host();
    let now = Instant::now();
    let _ = read(&mut host, "NBIRTH", None, &birth(0, 1), now);
    let e = read(&mut host, "NDATA", None, &[0x12, 0xFF, 0x01], now);
    all_bad(&e, &[0, 1, 2], "malformed Sparkplug B payload");
    assert!(e.rebirth.is_some());
    // Afterwards the aliases are not trusted until the rebirth.
    let e = read(
        &mut host,
        "NDATA",
        None,
        &payload(Some(2), vec![by_alias(1, MetricValue::Int(11))]),
        now,
    );
    all_bad(&e, &[0, 1, 2], "waiting");
    let e = host
        .read(
            &topic("NDATA", None),
            Err("a message of 9000 bytes is larger than max_payload".into()),
            now + REBIRTH_EVERY,
            SystemTime::now(),
        )
        .unwrap();
    all_bad(&e, &[0, 1, 2], "larger than max_payload");
}

#[test]
fn other_nodes_commands_and_reconnects() {
    let mut host = host();
    let now = Instant::now();
    assert!(
        host.read(
            "spBv1.0/Plant1/NBIRTH/Other",
            Ok(&birth(0, 1)),
            now,
            SystemTime::now()
        )
        .is_none()
    );
    assert!(
        host.read(&topic("NCMD", None), Ok(&[]), now, SystemTime::now())
            .is_none()
    );
    assert_eq!(
        host.filters(),
        vec![
            "spBv1.0/Plant1/+/Line3".to_owned(),
            "spBv1.0/Plant1/+/Line3/+".to_owned()
        ]
    );
    let _ = read(&mut host, "NBIRTH", None, &birth(0, 1), now);
    let requests = host.reconnected(now, SystemTime::now());
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].0, "spBv1.0/Plant1/NCMD/Line3");
    // After a reconnect, data waits for the birth.
    let e = read(
        &mut host,
        "NDATA",
        None,
        &payload(Some(1), vec![by_alias(1, MetricValue::Int(11))]),
        now,
    );
    all_bad(&e, &[0, 1, 2], "waiting");
}

#[test]
fn unanswered_requests_are_repeated_ever_less_often_until_a_birth() {
    let mut host = host();
    let t0 = Instant::now();
    let wall = SystemTime::now();
    let requests = |host: &mut Host, at: Instant| host.due(at, wall).requests.len();
    assert_eq!(host.reconnected(t0, wall).len(), 1);
    assert_eq!(requests(&mut host, t0 + Duration::from_secs(4)), 0);
    assert_eq!(requests(&mut host, t0 + Duration::from_secs(5)), 1);
    // Next after 10 s, then 20 s, ...
    assert_eq!(requests(&mut host, t0 + Duration::from_secs(14)), 0);
    assert_eq!(requests(&mut host, t0 + Duration::from_secs(15)), 1);
    assert_eq!(requests(&mut host, t0 + Duration::from_secs(34)), 0);
    assert_eq!(requests(&mut host, t0 + Duration::from_secs(35)), 1);
    // ... up to 5 min apart, and so on while unanswered.
    let mut at = t0 + Duration::from_secs(35);
    for _ in 0..10 {
        at += REBIRTH_MAX;
        assert_eq!(requests(&mut host, at), 1);
    }
    assert_eq!(
        requests(&mut host, at + REBIRTH_MAX - Duration::from_secs(1)),
        0
    );
    // The birth answers it.
    let _ = read(&mut host, "NBIRTH", None, &birth(0, 1), at);
    assert_eq!(requests(&mut host, at + REBIRTH_MAX), 0);
    // A death ends the asking: the node's next birth comes unasked.
    let _ = read(
        &mut host,
        "NDATA",
        None,
        &payload(Some(7), vec![]),
        at + REBIRTH_MAX,
    );
    let _ = read(
        &mut host,
        "NDEATH",
        None,
        &payload(None, vec![]),
        at + REBIRTH_MAX,
    );
    assert_eq!(requests(&mut host, at + REBIRTH_MAX * 3), 0);
}

/// A fault that comes back with every birth (here a gap right after it) must not make a storm
/// of requests and births: each request waits longer than the last.
#[test]
fn a_fault_after_every_birth_does_not_make_a_storm() {
    let mut host = host();
    let t0 = Instant::now();
    let mut sent = Vec::new();
    // Every 100 ms for 20 min: a birth, then at once a message out of sequence.
    for step in 0..12_000u64 {
        let at = t0 + Duration::from_millis(100 * step);
        let _ = read(&mut host, "NBIRTH", None, &birth(0, 1), at);
        let e = read(&mut host, "NDATA", None, &payload(Some(9), vec![]), at);
        sent.extend(e.rebirth.map(|_| at));
        sent.extend(host.due(at, SystemTime::now()).requests.iter().map(|_| at));
    }
    // Each interval twice the last, then one every 5 min: 9 requests in 20 min, not 12,000.
    let seconds: Vec<u64> = sent
        .iter()
        .map(|t| t.duration_since(t0).as_secs())
        .collect();
    assert_eq!(
        seconds,
        [0, 5, 15, 35, 75, 155, 315, 615, 915],
        "{seconds:?}"
    );
}

#[test]
fn history_duplicates_and_undeclared_metrics_are_not_taken_for_current_values() {
    let mut host = host();
    let now = Instant::now();
    let _ = read(&mut host, "NBIRTH", None, &birth(0, 1), now);
    // Store and forward: an old value after the current one must not replace it.
    let mut old = by_alias(1, MetricValue::Int(3));
    old.is_historical = Some(true);
    let current = by_alias(1, MetricValue::Int(11));
    let e = read(
        &mut host,
        "NDATA",
        None,
        &payload(Some(1), vec![current, old]),
        now,
    );
    assert_eq!(values(&e), vec![(0, Ok(Value::U64(11)))]);
    assert!(e.warning.as_deref().unwrap().contains("historical"));
    // The same message twice (seq repeated): read once, and not a gap.
    let again = payload(Some(2), vec![by_alias(1, MetricValue::Int(12))]);
    let e = read(&mut host, "NDATA", None, &again, now);
    assert_eq!(values(&e), vec![(0, Ok(Value::U64(12)))]);
    let e = read(&mut host, "NDATA", None, &again, now);
    assert!(
        e.samples.is_empty() && e.warning.is_none() && e.rebirth.is_none(),
        "{e:?}"
    );
    let next = payload(Some(3), vec![by_alias(1, MetricValue::Int(13))]);
    let e = read(&mut host, "NDATA", None, &next, now);
    assert_eq!(values(&e), vec![(0, Ok(Value::U64(13)))]);
    // A configured metric by name that the birth did not declare, without a type: Bad, not
    // guessed (an Int32 of -2 is not 4294967294).
    let mut host = Host::new([(0, G, N, None, "Late")]);
    let _ = read(&mut host, "NBIRTH", None, &birth(0, 1), now);
    let late = Metric {
        name: Some("Late".into()),
        value: Some(MetricValue::Int(0xFFFF_FFFE)),
        ..Metric::default()
    };
    let e = read(
        &mut host,
        "NDATA",
        None,
        &payload(Some(1), vec![late.clone()]),
        now,
    );
    assert!(
        e.samples[0]
            .1
            .as_ref()
            .unwrap_err()
            .contains("not declared")
    );
    let typed = Metric {
        datatype: Some(3),
        ..late
    };
    let e = read(
        &mut host,
        "NDATA",
        None,
        &payload(Some(2), vec![typed]),
        now,
    );
    assert_eq!(values(&e), vec![(0, Ok(Value::I64(-2)))]);
}

#[test]
fn devices_without_tags_are_only_counted_and_absent_ones_are_noticed() {
    let mut host = host();
    let t0 = Instant::now();
    let wall = SystemTime::now();
    let _ = read(&mut host, "NBIRTH", None, &birth(0, 1), t0);
    // Devices nobody configured: their births and data are not kept, and a malformed message
    // from one does not unsettle the node (the gap it leaves in seq will).
    for i in 0..100u64 {
        let dbirth = payload(
            Some(i + 1),
            vec![metric("X", 1_000 + i, 9, MetricValue::Float(1.0))],
        );
        let e = read(
            &mut host,
            "DBIRTH",
            Some(&format!("tablet{i}")),
            &dbirth,
            t0,
        );
        assert!(e.samples.is_empty() && e.warning.is_none(), "{e:?}");
    }
    let node = &host.nodes[&(G.to_owned(), N.to_owned())];
    assert!(
        node.aliases.len() <= 3 && node.devices.is_empty(),
        "{node:?}"
    );
    let e = read(&mut host, "DDATA", Some("tablet1"), &[0x12, 0xFF], t0);
    assert!(e.samples.is_empty() && e.rebirth.is_none());
    // Press1 (configured) never sends its DBIRTH: after 10 s its tag is Bad, once.
    assert!(
        host.due(t0 + Duration::from_secs(9), wall)
            .samples
            .is_empty()
    );
    let due = host.due(t0 + DBIRTH_GRACE, wall);
    assert_eq!(due.samples.len(), 1);
    assert_eq!(due.samples[0].0, 2);
    let why = due.samples[0].1.as_ref().unwrap_err();
    assert!(
        why.contains("no DBIRTH from device Plant1/Line3/Press1"),
        "{why}"
    );
    assert!(host.due(t0 + DBIRTH_GRACE * 2, wall).samples.is_empty());
    // A DBIRTH in time: nothing said; a DDEATH forgets the device's aliases.
    let mut host = self::host();
    let _ = read(&mut host, "NBIRTH", None, &birth(0, 1), t0);
    let dbirth = payload(
        Some(1),
        vec![metric("Force", 10, 10, MetricValue::Double(1.0))],
    );
    let _ = read(&mut host, "DBIRTH", Some("Press1"), &dbirth, t0);
    assert!(host.due(t0 + DBIRTH_GRACE, wall).samples.is_empty());
    let _ = read(
        &mut host,
        "DDEATH",
        Some("Press1"),
        &payload(Some(2), vec![]),
        t0,
    );
    assert!(
        !host.nodes[&(G.to_owned(), N.to_owned())]
            .aliases
            .contains_key(&10)
    );
}

#[test]
fn a_gap_seen_on_any_message_distrusts_the_node_and_a_healthy_birth_resets_the_backoff() {
    let mut host = host();
    let t0 = Instant::now();
    let _ = read(&mut host, "NBIRTH", None, &birth(0, 1), t0);
    // The gap shows on a message of a device nobody reads: still the node's tags are Bad and a
    // rebirth is asked for (what was lost may have been a configured metric's change).
    let e = read(
        &mut host,
        "DDATA",
        Some("tablet1"),
        &payload(Some(5), vec![]),
        t0,
    );
    all_bad(&e, &[0, 1, 2], "waiting for a birth certificate");
    assert!(e.rebirth.is_some());
    // The same seq with other content is no repeat: a gap.
    let _ = read(&mut host, "NBIRTH", None, &birth(0, 1), t0 + REBIRTH_EVERY);
    let one = payload(Some(1), vec![by_alias(1, MetricValue::Int(11))]);
    let other = payload(Some(1), vec![by_alias(1, MetricValue::Int(12))]);
    let _ = read(&mut host, "NDATA", None, &one, t0 + REBIRTH_EVERY);
    let e = read(&mut host, "NDATA", None, &other, t0 + REBIRTH_EVERY);
    assert!(e.warning.as_deref().unwrap().contains("1 after 1"), "{e:?}");
    // A deaf node: requests at 0, 5, 15, 35, 75, 155, 315 s, the interval now 5 min ...
    let mut host = self::host();
    let wall = SystemTime::now();
    assert_eq!(host.reconnected(t0, wall).len(), 1);
    for at in [5, 15, 35, 75, 155, 315] {
        assert_eq!(
            host.due(t0 + Duration::from_secs(at), wall).requests.len(),
            1
        );
    }
    // ... then it answers. A fault right after the birth waits the 5 min ...
    let _ = read(
        &mut host,
        "NBIRTH",
        None,
        &birth(0, 1),
        t0 + Duration::from_secs(316),
    );
    let e = read(
        &mut host,
        "NDATA",
        None,
        &payload(Some(9), vec![]),
        t0 + Duration::from_secs(320),
    );
    assert!(
        e.rebirth.is_none(),
        "a fault at once after the birth: still 5 min"
    );
    // ... but after a birth that stayed healthy for a minute, a gap is asked about at once.
    let _ = read(
        &mut host,
        "NBIRTH",
        None,
        &birth(0, 1),
        t0 + Duration::from_secs(330),
    );
    let e = read(
        &mut host,
        "NDATA",
        None,
        &payload(Some(9), vec![]),
        t0 + Duration::from_secs(390),
    );
    assert!(e.rebirth.is_some(), "the healthy birth reset the backoff");
}
