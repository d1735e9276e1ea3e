//! What recording one staged block costs in the sink's state, with many
//! namespaces: the change log's append (what the sink does now) against a
//! full snapshot (what it did per block before the log).
//!
//!   cargo bench --bench state
//!
//! Plain `harness = false` binary, like `encode`: fixed work, best of runs.

use std::time::Instant;

use mongo_adls::{
    event::Position,
    sinks::adls_partitioned_jsonl::state::{Block, FileKey, SinkState, StagedBlock},
    state_store::StateHandle,
};

const TOKEN: &str =
    "826B07E2BE0000001F2B022C0100296E5A100430AB0560ADA745628786791E911C30E6461E5F6964002B3A0004";

fn staged(key: &FileKey, object: &str, block: Block) -> StagedBlock {
    StagedBlock {
        key: key.clone(),
        part: 0,
        object: object.into(),
        block,
        first: Some(Position(TOKEN.into())),
        high_water: Some(Position(TOKEN.into())),
        source: Some("mongo".into()),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    for namespaces in [10, 1000] {
        let dir = tempfile::tempdir().unwrap();
        let mut state = SinkState::load(StateHandle::local(dir.path()))
            .await
            .unwrap();
        // Each namespace: 24 sealed hourly windows and one open file.
        let mut n = 0u64;
        for ns in 0..namespaces {
            for hour in 0..25 {
                let key = FileKey {
                    db: "shop".into(),
                    coll: format!("coll{ns}").into(),
                    window_start: 1_700_000_000 + hour * 3600,
                };
                n += 1;
                let object = format!("shop/coll{ns}/hour={hour}/events.jsonl");
                let block = Block {
                    id: format!("{n:040}"),
                    bytes: 1 << 20,
                    events: 1000,
                };
                state.staged(staged(&key, &object, block), 0).await.unwrap();
                if hour < 24 {
                    state.sealed(&key, 0).await.unwrap();
                }
            }
        }
        state.save(0).await.unwrap();
        let snapshot = std::fs::metadata(dir.path().join("state.json"))
            .unwrap()
            .len();
        let key = FileKey {
            db: "shop".into(),
            coll: "coll0".into(),
            window_start: 1_700_000_000 + 24 * 3600,
        };
        let rounds = 50;
        let mut append = f64::MAX;
        let mut rewrite = f64::MAX;
        for _ in 0..3 {
            let started = Instant::now();
            for _ in 0..rounds {
                n += 1;
                let block = Block {
                    id: format!("{n:040}"),
                    bytes: 1 << 20,
                    events: 1000,
                };
                state.staged(staged(&key, "o", block), 0).await.unwrap();
            }
            append = append.min(started.elapsed().as_secs_f64() / rounds as f64);
            let started = Instant::now();
            for _ in 0..rounds {
                state.save(0).await.unwrap();
            }
            rewrite = rewrite.min(started.elapsed().as_secs_f64() / rounds as f64);
        }
        println!(
            "{namespaces} namespaces ({} sealed windows, snapshot {} KB): per staged block, log append {:.2} ms, whole-state rewrite {:.2} ms ({:.0}x)",
            state.sealed_count(),
            snapshot / 1024,
            append * 1e3,
            rewrite * 1e3,
            rewrite / append
        );
    }
}
