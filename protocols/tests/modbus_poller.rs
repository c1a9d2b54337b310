//! The poller against a real tokio-modbus server on 127.0.0.1:0.

use std::time::Duration;

use firmware_config::{DataType, ModbusTagConfig, ModbusTcpConfig, RegisterKind, WordOrder};
use protocols::{
    modbus::{
        ModbusSource,
        codec::encode_registers,
        server::{Registers, serve},
    },
    model::{Quality, SampleBatch, Value},
};
use tokio::{net::TcpListener, sync::mpsc, time::timeout};
use tokio_modbus::ExceptionCode;
use tokio_util::sync::CancellationToken;

fn tag(
    name: &str,
    kind: RegisterKind,
    address: u16,
    data_type: DataType,
    order: WordOrder,
) -> ModbusTagConfig {
    ModbusTagConfig {
        name: name.into(),
        kind,
        address,
        data_type,
        order,
        scale: None,
        offset: None,
    }
}

fn config(address: String) -> ModbusTcpConfig {
    ModbusTcpConfig {
        name: "press".into(),
        address,
        unit: 1,
        poll: Duration::from_millis(20),
        timeout: Duration::from_millis(500),
        max_gap: 8,
        tags: vec![
            tag(
                "parts",
                RegisterKind::Holding,
                100,
                DataType::U32,
                WordOrder::Cdab,
            ),
            tag(
                "force",
                RegisterKind::Input,
                10,
                DataType::F32,
                WordOrder::Abcd,
            ),
            tag(
                "done",
                RegisterKind::Holding,
                104,
                DataType::Bit(2),
                WordOrder::Abcd,
            ),
            tag(
                "door",
                RegisterKind::Coil,
                3,
                DataType::Bool,
                WordOrder::Abcd,
            ),
        ],
    }
}

fn registers() -> Registers {
    let regs = Registers::default();
    regs.set_words(
        RegisterKind::Holding,
        100,
        &encode_registers(DataType::U32, WordOrder::Cdab, &Value::U64(70_000)),
    );
    regs.set_words(RegisterKind::Holding, 102, &[0, 0, 0b100]);
    regs.set_words(
        RegisterKind::Input,
        10,
        &encode_registers(DataType::F32, WordOrder::Abcd, &Value::F64(47.5)),
    );
    regs.set_bit(RegisterKind::Coil, 3, true);
    regs
}

async fn next(rx: &mut mpsc::Receiver<SampleBatch>) -> SampleBatch {
    timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a batch within 10 s")
        .expect("poller alive")
}

fn all_good(batch: &SampleBatch) -> bool {
    batch.samples.iter().all(|s| s.quality.is_good())
}

fn value(batch: &SampleBatch, tag: &str) -> Option<Value> {
    batch
        .samples
        .iter()
        .find(|s| &*s.tag == tag)
        .and_then(|s| s.value.clone())
}

#[tokio::test]
async fn the_poller_reads_every_type_through_a_real_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let cancel = CancellationToken::new();
    tokio::spawn(serve(listener, registers(), cancel.clone()));
    let (tx, mut rx) = mpsc::channel(4);
    let source = ModbusSource::new(config(address));
    assert_eq!(
        source.plan().requests.len(),
        3,
        "holding 100..=104 coalesce into one read"
    );
    let poller = tokio::spawn(source.run(tx, cancel.clone()));
    let batch = next(&mut rx).await;
    assert_eq!(batch.samples.len(), 4);
    assert!(
        batch.samples.iter().all(|s| s.quality == Quality::Good),
        "{batch:?}"
    );
    assert_eq!(value(&batch, "press.parts"), Some(Value::U64(70_000)));
    assert_eq!(value(&batch, "press.force"), Some(Value::F64(47.5)));
    assert_eq!(value(&batch, "press.done"), Some(Value::Bool(true)));
    assert_eq!(value(&batch, "press.door"), Some(Value::Bool(true)));
    cancel.cancel();
    timeout(Duration::from_secs(5), poller)
        .await
        .expect("the poller stops on cancel")
        .unwrap();
}

#[tokio::test]
async fn every_exception_code_becomes_a_bad_sample_naming_it_and_polling_goes_on() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let cancel = CancellationToken::new();
    let regs = registers();
    tokio::spawn(serve(listener, regs.clone(), cancel.clone()));
    let (tx, mut rx) = mpsc::channel(1);
    tokio::spawn(ModbusSource::new(config(address)).run(tx, cancel.clone()));
    assert!(all_good(&next(&mut rx).await));
    let codes = [
        (ExceptionCode::IllegalFunction, "0x01"),
        (ExceptionCode::IllegalDataAddress, "0x02"),
        (ExceptionCode::IllegalDataValue, "0x03"),
        (ExceptionCode::ServerDeviceFailure, "0x04"),
        (ExceptionCode::Acknowledge, "0x05"),
        (ExceptionCode::ServerDeviceBusy, "0x06"),
        (ExceptionCode::MemoryParityError, "0x08"),
        (ExceptionCode::GatewayPathUnavailable, "0x0A"),
        (ExceptionCode::GatewayTargetDevice, "0x0B"),
    ];
    for (code, hex) in codes {
        regs.fail_with(Some(code));
        // A batch already in the channel may predate the change: wait for one that shows it.
        let mut seen = None;
        for _ in 0..5 {
            let batch = next(&mut rx).await;
            if batch
                .samples
                .iter()
                .all(|s| matches!(&s.quality, Quality::Bad(why) if why.contains(hex)))
            {
                seen = Some(batch);
                break;
            }
        }
        let batch = seen.unwrap_or_else(|| panic!("no batch showed exception {hex}"));
        let Quality::Bad(why) = &batch.samples[0].quality else {
            unreachable!()
        };
        assert!(why.contains("exception"), "{why}");
    }
    regs.fail_with(None);
    let mut recovered = false;
    for _ in 0..5 {
        if next(&mut rx)
            .await
            .samples
            .iter()
            .all(|s| s.quality.is_good())
        {
            recovered = true;
            break;
        }
    }
    assert!(
        recovered,
        "the same connection reads again once the device stops failing"
    );
    cancel.cancel();
}

#[tokio::test]
async fn a_server_that_vanishes_gives_bad_samples_and_is_reconnected_when_it_returns() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_cancel = CancellationToken::new();
    let regs = registers();
    let server = tokio::spawn(serve(listener, regs.clone(), server_cancel.clone()));
    let (tx, mut rx) = mpsc::channel(1);
    let cancel = CancellationToken::new();
    let source = ModbusSource::new(config(addr.to_string()))
        .with_reconnect(Duration::from_millis(20), Duration::from_millis(100));
    tokio::spawn(source.run(tx, cancel.clone()));
    assert!(all_good(&next(&mut rx).await));

    server_cancel.cancel();
    server.await.unwrap().unwrap();
    let mut saw_bad = false;
    for _ in 0..20 {
        let batch = next(&mut rx).await;
        if batch.samples.iter().all(|s| !s.quality.is_good()) {
            saw_bad = true;
            break;
        }
    }
    assert!(saw_bad, "an outage shows as Bad samples, not silence");

    let listener = rebind(addr).await;
    let back = CancellationToken::new();
    tokio::spawn(serve(listener, regs, back.clone()));
    let mut recovered = false;
    for _ in 0..100 {
        let batch = next(&mut rx).await;
        if batch.samples.iter().all(|s| s.quality.is_good()) {
            recovered = true;
            break;
        }
    }
    assert!(recovered, "the poller reconnects by itself");
    cancel.cancel();
    back.cancel();
}

#[tokio::test]
async fn a_device_that_accepts_and_drops_every_request_is_not_hammered() {
    // Accepts each connection, reads the request, and closes without answering.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&accepts);
    let dropper = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 260];
                let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await;
            });
        }
    });
    let (tx, mut rx) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    let source = ModbusSource::new(config(addr.to_string()))
        .with_reconnect(Duration::from_millis(20), Duration::from_secs(5));
    tokio::spawn(source.run(tx, cancel.clone()));
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cancel.cancel();
    let n = accepts.load(std::sync::atomic::Ordering::SeqCst);
    // Doubling from 20 ms: 20+40+80+160+320+640 ms fits about 7 connects into 1.5 s. Before,
    // the backoff reset on every connect and the device saw one every ~20 ms (over 40).
    assert!((2..=12).contains(&n), "{n} connections in 1.5 s");
    dropper.abort();
    drain.abort();
}

/// Binds `addr` again once it is free: during an outage the poller's reconnects (or another
/// test) may hold the port for a moment.
async fn rebind(addr: std::net::SocketAddr) -> TcpListener {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(error) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{addr} stayed taken: {error}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

fn quality_of<'a>(batch: &'a SampleBatch, tag: &str) -> &'a Quality {
    &batch
        .samples
        .iter()
        .find(|s| &*s.tag == tag)
        .unwrap_or_else(|| panic!("no sample of {tag}"))
        .quality
}

#[tokio::test]
async fn an_exception_on_one_coalesced_request_makes_only_that_requests_tags_bad() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let regs = registers();
    regs.set_words(RegisterKind::Holding, 120, &[42]);
    let server_cancel = CancellationToken::new();
    tokio::spawn(serve(listener, regs.clone(), server_cancel.clone()));
    // Two requests in one table: holding 100..=104 (parts, done) and holding 120 (far), more
    // than max_gap apart. Only the first fails.
    let mut config = config(addr.to_string());
    config.timeout = Duration::from_secs(5); // no timeout under load: a reconnect is not the point
    config.tags.push(tag(
        "far",
        RegisterKind::Holding,
        120,
        DataType::U16,
        WordOrder::Abcd,
    ));
    regs.fail_request(
        RegisterKind::Holding,
        100,
        Some(ExceptionCode::ServerDeviceFailure),
    );
    let (tx, mut rx) = mpsc::channel(4);
    let cancel = CancellationToken::new();
    tokio::spawn(ModbusSource::new(config).run(tx, cancel.clone()));
    let batch = next(&mut rx).await;
    for tag in ["press.parts", "press.done"] {
        let Quality::Bad(why) = quality_of(&batch, tag) else {
            panic!("{tag} is read by the failing request: {batch:?}");
        };
        assert!(why.contains("exception 0x04"), "{why}");
    }
    for tag in ["press.far", "press.force", "press.door"] {
        assert!(
            quality_of(&batch, tag).is_good(),
            "{tag} is read by another request: {batch:?}"
        );
    }
    assert_eq!(value(&batch, "press.far"), Some(Value::U64(42)));
    assert_eq!(value(&batch, "press.force"), Some(Value::F64(47.5)));
    regs.fail_request(RegisterKind::Holding, 100, None);
    let mut recovered = false;
    for _ in 0..50 {
        if all_good(&next(&mut rx).await) {
            recovered = true;
            break;
        }
    }
    assert!(recovered, "the same connection reads again");
    assert_eq!(
        regs.connections(),
        1,
        "an exception is no reason to reconnect"
    );
    cancel.cancel();
    server_cancel.cancel();
}

#[tokio::test]
async fn a_device_that_accepts_and_then_stalls_is_timed_out_and_the_connection_rebuilt() {
    // A real server behind a front that holds its first connection silent, as a stalled
    // device (or a gateway with a dead serial line behind it) does.
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = backend.local_addr().unwrap();
    let regs = registers();
    let server_cancel = CancellationToken::new();
    tokio::spawn(serve(backend, regs.clone(), server_cancel.clone()));
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_addr = front.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&accepted);
    let proxy = tokio::spawn(async move {
        while let Ok((mut client, _)) = front.accept().await {
            let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                if n == 0 {
                    // Accept, read, never answer.
                    let mut sink = Vec::new();
                    let _ = tokio::io::AsyncReadExt::read_to_end(&mut client, &mut sink).await;
                } else if let Ok(mut server) = tokio::net::TcpStream::connect(backend_addr).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    let mut config = config(front_addr.to_string());
    config.timeout = Duration::from_millis(200);
    let (tx, mut rx) = mpsc::channel(4);
    let cancel = CancellationToken::new();
    tokio::spawn(
        ModbusSource::new(config)
            .with_reconnect(Duration::from_millis(20), Duration::from_millis(100))
            .run(tx, cancel.clone()),
    );
    let stalled = next(&mut rx).await;
    let Quality::Bad(why) = quality_of(&stalled, "press.parts") else {
        panic!("a stalled device gives Bad samples: {stalled:?}");
    };
    assert!(why.contains("no answer within 200ms"), "{why}");
    let mut recovered = false;
    for _ in 0..50 {
        if all_good(&next(&mut rx).await) {
            recovered = true;
            break;
        }
    }
    assert!(recovered, "a new connection reads again");
    assert!(
        accepted.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "the connection was rebuilt"
    );
    cancel.cancel();
    server_cancel.cancel();
    proxy.abort();
}
