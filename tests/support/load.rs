//! The load of the chaos runs and the Delta tests: identifiable changes
//! (inserts, updates, replaces, deletes, cross-database transactions), each
//! recorded in a manifest that the independent checkers compare the lake
//! with.

use std::{
    io::Write,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use mongodb::bson::{doc, Document};
use rand::Rng;

/// One change the generator made (or may have made, `ok: false`).
#[derive(serde::Serialize)]
pub struct Change {
    pub ns: String,
    pub op: &'static str,
    pub seq: i64,
    pub id: String,
    pub ok: bool,
}

#[derive(Default)]
pub struct Manifest {
    pub changes: Vec<Change>,
    pub next_id: i64,
    pub next_seq: i64,
}

impl Manifest {
    pub fn record(&mut self, ns: &str, op: &'static str, seq: i64, id: i64, ok: bool) {
        self.changes.push(Change {
            ns: ns.to_string(),
            op,
            seq,
            id: id.to_string(),
            ok,
        });
    }

    /// An incremental snapshot running beside the load reads collections
    /// as they are, so it may copy a document the load inserted: such a
    /// record is allowed, at most once per `_id`.
    pub fn allow_snapshots_of_inserted(&mut self) {
        let inserted: Vec<Change> = self
            .changes
            .iter()
            .filter(|c| c.op == "insert")
            .map(|c| Change {
                ns: c.ns.clone(),
                op: "snapshot",
                seq: c.seq,
                id: c.id.clone(),
                ok: false,
            })
            .collect();
        self.changes.extend(inserted);
    }
}

/// Makes `batches` rounds of about 960 changes, pausing between rounds so
/// the run spans many short windows and the disruptions land mid-load.
pub async fn generate(
    client: mongodb::Client,
    namespaces: &[(&str, &str)],
    batches: usize,
    pause: Duration,
    manifest: Arc<Mutex<Manifest>>,
) {
    let mut live: Vec<Vec<i64>> = vec![Vec::new(); namespaces.len()];
    for _ in 0..batches {
        for (n, (db, coll)) in namespaces.iter().enumerate() {
            let ns = format!("{db}.{coll}");
            let c = client.database(db).collection::<Document>(coll);
            let (docs, ids): (Vec<Document>, Vec<(i64, i64)>) = {
                let mut m = manifest.lock().unwrap();
                (0..150)
                    .map(|_| {
                        m.next_id += 1;
                        m.next_seq += 1;
                        let (id, seq) = (m.next_id, m.next_seq);
                        (
                            doc! { "_id": id, "seq": seq, "pad": "p".repeat(200) },
                            (id, seq),
                        )
                    })
                    .unzip()
            };
            let ok = c.insert_many(docs).await.is_ok();
            {
                let mut m = manifest.lock().unwrap();
                for (id, seq) in &ids {
                    m.record(&ns, "insert", *seq, *id, ok);
                }
            }
            if ok {
                live[n].extend(ids.iter().map(|(id, _)| *id));
            }
            for (op, count) in [("update", 50), ("replace", 25), ("delete", 12)] {
                for _ in 0..count {
                    if live[n].is_empty() {
                        break;
                    }
                    let pick = rand::rng().random_range(0..live[n].len());
                    let id = live[n][pick];
                    let seq = {
                        let mut m = manifest.lock().unwrap();
                        m.next_seq += 1;
                        m.next_seq
                    };
                    let result = match op {
                        "update" => c
                            .update_one(doc! { "_id": id }, doc! { "$set": { "seq": seq } })
                            .await
                            .map(|r| r.modified_count == 1),
                        "replace" => c
                            .replace_one(doc! { "_id": id }, doc! { "seq": seq, "replaced": true })
                            .await
                            .map(|r| r.modified_count == 1),
                        _ => c
                            .delete_one(doc! { "_id": id })
                            .await
                            .map(|r| r.deleted_count == 1),
                    };
                    let outcome = match result {
                        Ok(true) => Some(true),
                        Ok(false) => None, // no change made
                        Err(_) => Some(false),
                    };
                    if op == "delete" || outcome == Some(false) {
                        // Never touch a document whose state is uncertain.
                        live[n].swap_remove(pick);
                    }
                    if let Some(ok) = outcome {
                        manifest.lock().unwrap().record(&ns, op, seq, id, ok);
                    }
                }
            }
        }
        // A multi-document transaction across two databases.
        let last = namespaces.len() - 1;
        let (a, b) = (
            client
                .database(namespaces[0].0)
                .collection::<Document>(namespaces[0].1),
            client
                .database(namespaces[last].0)
                .collection::<Document>(namespaces[last].1),
        );
        let planned: Vec<(usize, i64, i64)> = {
            let mut m = manifest.lock().unwrap();
            (0..10)
                .map(|i| {
                    m.next_id += 1;
                    m.next_seq += 1;
                    (if i < 5 { 0 } else { last }, m.next_id, m.next_seq)
                })
                .collect()
        };
        let txn = async {
            let mut session = client.start_session().await?;
            session.start_transaction().await?;
            for (n, id, seq) in &planned {
                let c = if *n == 0 { &a } else { &b };
                c.insert_one(doc! { "_id": id, "seq": seq })
                    .session(&mut session)
                    .await?;
            }
            session.commit_transaction().await
        }
        .await;
        let ok = txn.is_ok();
        {
            let mut m = manifest.lock().unwrap();
            for (n, id, seq) in &planned {
                let (db, coll) = namespaces[*n];
                m.record(&format!("{db}.{coll}"), "insert", *seq, *id, ok);
            }
        }
        if !ok {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        tokio::time::sleep(pause).await;
    }
}

/// Documents that exist before the agent first starts, for `snapshot =
/// "initial"`: `per_namespace` in each namespace, recorded in the manifest
/// as `snapshot` changes (one per `_id`). The generator never touches them,
/// so MongoDB's final state of each is the snapshot record's.
pub async fn preload(
    client: &mongodb::Client,
    namespaces: &[(&str, &str)],
    per_namespace: usize,
    manifest: &Mutex<Manifest>,
) {
    for (db, coll) in namespaces {
        let docs: Vec<Document> = {
            let mut m = manifest.lock().unwrap();
            (0..per_namespace)
                .map(|_| {
                    m.next_id += 1;
                    m.next_seq += 1;
                    let (id, seq) = (m.next_id, m.next_seq);
                    m.record(&format!("{db}.{coll}"), "snapshot", seq, id, true);
                    doc! { "_id": id, "seq": seq, "pad": "s".repeat(200) }
                })
                .collect()
        };
        client
            .database(db)
            .collection::<Document>(coll)
            .insert_many(docs)
            .await
            .unwrap();
    }
}

impl Manifest {
    /// Writes the manifest as JSON lines, for the checkers.
    pub fn write(&self, path: &Path) {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
        for c in &self.changes {
            serde_json::to_writer(&mut f, c).unwrap();
            f.write_all(b"\n").unwrap();
        }
    }

    /// Changes known to be made.
    pub fn acknowledged(&self) -> usize {
        self.changes.iter().filter(|c| c.ok).count()
    }
}
