//! `causeway mqtt sub` against rumqttd in-process: what arrives, decoded, one line each.

use std::time::Duration;

use gateway::mqtt_sub::{SubArgs, run};
use rumqttc::{AsyncClient, MqttOptions, QoS};

#[path = "support/broker.rs"]
mod support_broker;
use support_broker::broker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_are_printed_decoded_and_a_malformed_one_says_why() {
    let addr = broker();
    let (client, mut eventloop) = AsyncClient::new(
        MqttOptions::new("test-publisher", "127.0.0.1", addr.port()),
        10,
    );
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    for (topic, payload) in [
        (
            "plant/line3/press1/telemetry",
            r#"{"temp": 21.5, "state": 1}"#,
        ),
        ("plant/line3/press2/telemetry", r#"{"temp": 2"#),
    ] {
        client
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await
            .unwrap();
    }
    // Retained messages reach a later subscriber: wait until the broker has them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let args = SubArgs {
        host: "127.0.0.1".into(),
        port: addr.port(),
        tls: None,
        credentials: None,
        topics: vec!["plant/line3/+/telemetry".into()],
        format: gateway::mqtt_sub::Shown::Json,
        count: Some(2),
        duration: Some(Duration::from_secs(30)),
        max_payload: 65_536,
    };
    let mut out = Vec::new();
    run(&args, &mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines.len(), 2, "{text}");
    let (topic, json) = lines[0].split_once("  ").unwrap();
    assert_eq!(topic, "plant/line3/press1/telemetry");
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(v, serde_json::json!({"temp": 21.5, "state": 1}));
    assert!(
        lines[1].starts_with("plant/line3/press2/telemetry  <malformed JSON at line 1"),
        "{}",
        lines[1]
    );
}
