//! The runtime, end to end through `Topology`: the real `demo_events`
//! source (which checkpoints what it hears acknowledged) feeding test sinks
//! that decide when, and in which order, events count as delivered. The test
//! sinks stand in for storage only because the case needs deliveries held
//! back and completed out of order on command, which no real sink exposes.

use std::{
    path::Path,
    sync::{Mutex, OnceLock},
    time::Duration,
};

use async_trait::async_trait;
use futures::{stream::BoxStream, FutureExt, StreamExt};
use mongo_adls::{
    config::{self, Config},
    event::{Event, EventFinalizers, EventStatus},
    sinks::{Healthcheck, SinkConfig, SinkContext, StreamSink},
    topology::{Outcome, Topology},
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Per-test channels, looked up by the sink's `name` option.
type Held = (u64, EventFinalizers);
static CHANNELS: Mutex<Vec<(String, mpsc::UnboundedSender<Held>)>> = Mutex::new(Vec::new());

/// A sink that hands every event's finalizers to the test, which finalizes
/// them when and in whatever order it wants. `delay_ms` slows consumption.
#[derive(Debug, Deserialize, Serialize)]
struct HoldSinkConfig {
    name: String,
    #[serde(default)]
    delay_ms: u64,
}

struct HoldSink {
    tx: mpsc::UnboundedSender<Held>,
    delay: Duration,
}

#[async_trait]
#[typetag::serde(name = "test_hold")]
impl SinkConfig for HoldSinkConfig {
    async fn build(
        &self,
        _cx: SinkContext,
    ) -> mongo_adls::Result<(Box<dyn StreamSink>, Healthcheck)> {
        let tx = CHANNELS
            .lock()
            .unwrap()
            .iter()
            .find(|(n, _)| *n == self.name)
            .map(|(_, tx)| tx.clone())
            .expect("test registered its channel");
        let sink = HoldSink {
            tx,
            delay: Duration::from_millis(self.delay_ms),
        };
        Ok((Box::new(sink), async { Ok(()) }.boxed()))
    }
}

impl mongo_adls::config::ComponentConfig for HoldSinkConfig {
    fn component_type(&self) -> &'static str {
        "test_hold"
    }
}

#[async_trait]
impl StreamSink for HoldSink {
    async fn run(self: Box<Self>, mut input: BoxStream<'static, Event>) -> Result<(), ()> {
        while let Some(event) = input.next().await {
            if let Event::Log(mut log) = event {
                let seq = log
                    .payload
                    .get_document("fullDocument")
                    .unwrap()
                    .get_i64("seq")
                    .unwrap() as u64;
                let _ = self.tx.send((seq, log.take_finalizers()));
            }
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
        }
        Ok(())
    }
}

fn channel(name: &str) -> mpsc::UnboundedReceiver<Held> {
    let (tx, rx) = mpsc::unbounded_channel();
    CHANNELS.lock().unwrap().push((name.to_string(), tx));
    rx
}

fn load(dir: &Path, toml: &str) -> Config {
    let path = dir.join("config.toml");
    std::fs::write(&path, toml).unwrap();
    config::load_from_paths(&[path], false).unwrap()
}

fn checkpoint(dir: &Path) -> u64 {
    checkpoint_of(dir, "demo")
}

fn checkpoint_of(dir: &Path, id: &str) -> u64 {
    let text = std::fs::read_to_string(dir.join(format!("data/{id}/checkpoint.json"))).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["acknowledged"]
        .as_u64()
        .unwrap()
}

async fn run(
    config: &Config,
) -> (
    tokio::task::JoinHandle<Outcome>,
    tokio::sync::oneshot::Sender<()>,
) {
    let state = config
        .data_dir()
        .map(mongo_adls::state_store::StateHandle::local);
    let topology = Topology::build(config, state).await.unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(
        topology.run(
            async move {
                let _ = stop_rx.await;
            }
            .boxed(),
            futures::future::pending().boxed(),
            Duration::from_secs(10),
        ),
    );
    (handle, stop_tx)
}

#[tokio::test]
async fn checkpoint_follows_deliveries_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut held = channel("ordered");
    // Paced, so the source is still in its send loop, which saves the
    // checkpoint (at most once a second) before sending each next event.
    let config = load(
        dir.path(),
        &format!(
            r#"
data_dir = "{}/data"
[sources.demo]
type = "demo_events"
count = 5
interval_secs = 0.5
[sinks.hold]
type = "test_hold"
inputs = ["demo"]
name = "ordered"
"#,
            dir.path().display()
        ),
    );
    let (handle, _stop) = run(&config).await;
    let mut events = Vec::new();
    for _ in 0..3 {
        events.push(held.recv().await.unwrap());
    }
    assert_eq!(
        events.iter().map(|e| e.0).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );

    // Deliver 3, then 2: nothing may be committed while 1 is outstanding.
    let (_, f3) = events.pop().unwrap();
    let (_, f2) = events.pop().unwrap();
    let (_, f1) = events.pop().unwrap();
    f3.finalize(EventStatus::Delivered);
    f2.finalize(EventStatus::Delivered);
    // Events 4 and 5 are sent after two more turns of the loop, each of
    // which saves the checkpoint if it moved (more than a second after the
    // start, so the once-a-second limit does not hold it back).
    let (_, f4) = held.recv().await.unwrap();
    let (_, f5) = held.recv().await.unwrap();
    let path = dir.path().join("data/demo/checkpoint.json");
    assert!(
        !path.exists(),
        "checkpoint moved past an undelivered event: {}",
        checkpoint(dir.path())
    );

    // The same loop does save once 1 is delivered (with 4 and 5 still
    // out, so this is not the final save at stop): the check above could
    // have failed.
    f1.finalize(EventStatus::Delivered);
    eventually(async || path.exists().then(|| checkpoint(dir.path()) == 3)).await;
    f4.finalize(EventStatus::Delivered);
    f5.finalize(EventStatus::Delivered);
    assert_eq!(handle.await.unwrap(), Outcome::Clean);
    assert_eq!(checkpoint(dir.path()), 5);
}

/// Polls `f` every 50 ms for up to 10 s until it answers `Some(true)`.
async fn eventually(mut f: impl AsyncFnMut() -> Option<bool>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while f().await != Some(true) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn failed_delivery_holds_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut held = channel("failing");
    let config = load(
        dir.path(),
        &format!(
            r#"
data_dir = "{}/data"
[sources.demo]
type = "demo_events"
count = 4
interval_secs = 0
[sinks.hold]
type = "test_hold"
inputs = ["demo"]
name = "failing"
"#,
            dir.path().display()
        ),
    );
    let (handle, _stop) = run(&config).await;
    for _ in 0..4 {
        let (seq, f) = held.recv().await.unwrap();
        f.finalize(if seq == 3 {
            EventStatus::Errored
        } else {
            EventStatus::Delivered
        });
    }
    assert_eq!(handle.await.unwrap(), Outcome::Clean);
    assert_eq!(
        checkpoint(dir.path()),
        2,
        "the checkpoint stops before the failed event"
    );
}

#[tokio::test]
async fn fan_out_needs_every_sink() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = channel("fan_a");
    let mut b = channel("fan_b");
    let config = load(
        dir.path(),
        &format!(
            r#"
data_dir = "{}/data"
[sources.demo]
type = "demo_events"
count = 2
interval_secs = 0
[sinks.a]
type = "test_hold"
inputs = ["demo"]
name = "fan_a"
[sinks.b]
type = "test_hold"
inputs = ["demo"]
name = "fan_b"
"#,
            dir.path().display()
        ),
    );
    let (handle, _stop) = run(&config).await;
    for _ in 0..2 {
        let (_, f) = a.recv().await.unwrap();
        f.finalize(EventStatus::Delivered);
    }
    // Sink b drops its copies without delivering them.
    for _ in 0..2 {
        drop(b.recv().await.unwrap());
    }
    assert_eq!(handle.await.unwrap(), Outcome::Clean);
    // The source saves its checkpoint when it stops: the file is there.
    assert_eq!(checkpoint(dir.path()), 0);
}

static RECORDER: OnceLock<metrics_util::debugging::Snapshotter> = OnceLock::new();

/// The value of `component_sent_events_total` for one component.
fn sent_events(component_id: &str) -> u64 {
    counter("component_sent_events_total", component_id)
}

/// The value of a counter for one component, from the test recorder.
fn counter(name: &str, component_id: &str) -> u64 {
    let snapshotter = RECORDER.get_or_init(|| {
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().unwrap();
        snapshotter
    });
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| {
            key.key().name() == name
                && key
                    .key()
                    .labels()
                    .any(|l| l.key() == "component_id" && l.value() == component_id)
        })
        .map(|(.., value)| match value {
            metrics_util::debugging::DebugValue::Counter(v) => v,
            _ => 0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_buffer_backpressures_and_loses_nothing() {
    sent_events("bp");
    let dir = tempfile::tempdir().unwrap();
    let mut held = channel("slow");
    let config = load(
        dir.path(),
        &format!(
            r#"
data_dir = "{}/data"
[sources.bp]
type = "demo_events"
count = 200
interval_secs = 0
[sinks.hold]
type = "test_hold"
inputs = ["bp"]
name = "slow"
delay_ms = 2
buffer.max_events = 10
buffer.when_full = "block"
"#,
            dir.path().display()
        ),
    );
    let (handle, _stop) = run(&config).await;
    let mut seen = Vec::new();
    while let Some((seq, f)) = held.recv().await {
        f.finalize(EventStatus::Delivered);
        seen.push(seq);
        if seq == 50 {
            // The sink is slow and the buffer holds 10: the source must be
            // waiting, not racing ahead (+2 for the event in the sink's hands
            // and the one blocked in send).
            let sent = sent_events("bp");
            assert!(
                sent <= 50 + 10 + 2,
                "source ran ahead of a full buffer: sent {sent}"
            );
        }
        if seen.len() == 200 {
            break;
        }
    }
    assert_eq!(seen, (1..=200).collect::<Vec<_>>());
    assert_eq!(handle.await.unwrap(), Outcome::Clean);
    assert_eq!(checkpoint_of(dir.path(), "bp"), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_newest_discards_and_acknowledges_what_it_drops() {
    counter("component_discarded_events_total", "dropper");
    let dir = tempfile::tempdir().unwrap();
    let mut held = channel("dropping");
    let config = load(
        dir.path(),
        &format!(
            r#"
data_dir = "{}/data"
[sources.demo]
type = "demo_events"
count = 300
interval_secs = 0
[sinks.dropper]
type = "test_hold"
inputs = ["demo"]
name = "dropping"
delay_ms = 5
buffer.max_events = 5
buffer.when_full = "drop_newest"
"#,
            dir.path().display()
        ),
    );
    let (handle, _stop) = run(&config).await;
    let collector = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some((seq, f)) = held.recv().await {
            f.finalize(EventStatus::Delivered);
            seen.push(seq);
        }
        seen
    });
    assert_eq!(handle.await.unwrap(), Outcome::Clean);
    CHANNELS.lock().unwrap().retain(|(n, _)| n != "dropping");
    let seen = collector.await.unwrap();
    assert!(
        seen.len() < 300,
        "some events must have been dropped, got {}",
        seen.len()
    );
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "kept events stay in order"
    );
    assert_eq!(
        counter("component_discarded_events_total", "dropper"),
        300 - seen.len() as u64,
        "every dropped event is counted"
    );
    // Dropped on purpose counts as done, so the source moves past them.
    assert_eq!(checkpoint(dir.path()), 300);
}

#[tokio::test]
async fn shutdown_drains_in_flight_events() {
    let dir = tempfile::tempdir().unwrap();
    let mut held = channel("drain");
    let config = load(
        dir.path(),
        &format!(
            r#"
data_dir = "{}/data"
[sources.demo]
type = "demo_events"
interval_secs = 0
[sinks.hold]
type = "test_hold"
inputs = ["demo"]
name = "drain"
delay_ms = 1
buffer.max_events = 50
"#,
            dir.path().display()
        ),
    );
    let (handle, stop) = run(&config).await;
    let collector = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some((seq, f)) = held.recv().await {
            f.finalize(EventStatus::Delivered);
            seen.push(seq);
            if seq == 0 {
                break;
            }
        }
        seen
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.send(()).unwrap();
    assert_eq!(handle.await.unwrap(), Outcome::Clean);
    CHANNELS.lock().unwrap().retain(|(n, _)| n != "drain");
    let seen = collector.await.unwrap();
    assert!(!seen.is_empty());
    let last = *seen.last().unwrap();
    assert_eq!(
        seen,
        (1..=last).collect::<Vec<_>>(),
        "every sent event reached the sink"
    );
    assert_eq!(
        checkpoint(dir.path()),
        last,
        "all drained events were acknowledged"
    );
}
