//! Helper for `e2e/bench.sh`.
//!
//!   bench_tool token <uri>                         print the current resume token
//!   bench_tool load <uri> <count> <doc_bytes> [collections [prefix]]
//!        insert a backlog into db bench: one collection `items` by default,
//!        else spread round-robin over <collections> collections
//!        `<prefix>0000`.. (prefix `many`), a few documents per collection
//!        and round, so that every collection stays active to the end
//!   bench_tool drain <uri> <token> <count>         bare driver loop: read <count> events, discard
//!   bench_tool scan <uri> <parallelism> <chunk_docs>
//!        bare chunked copy of bench.items, as `snapshot = "incremental"` reads
//!        it: rounds of <parallelism> `_id` ranges of <chunk_docs> documents
//!        (bounds by a skip down the `_id` index), one find cursor per range,
//!        concurrently, documents discarded; prints `<docs> <seconds>`
//!   bench_tool wait <metrics-url> <component> <count>
//!        wait until a component sent <count> events; prints the bytes it
//!        sent, the seconds since its first event, and the Azure storage
//!        requests the agent made (`azure_storage_requests_total`)
//!   bench_tool azurite-ceiling <account_url> <key> <writers> <block_bytes> <total_bytes> [file_bytes]
//!        storage's own ingest: <writers> concurrent Put Blocks of <block_bytes>
//!        (Shared Key) until <total_bytes> are staged, each writer into its own
//!        blob, committed (Put Block List) every <file_bytes> (default the
//!        sink's roll.max_bytes, 128 MiB) and at the end; prints
//!        `<seconds> <bytes>`
//!   bench_tool latency-proxy <listen> <upstream> <ms>
//!        TCP proxy that delays every chunk from <upstream> to the client by
//!        <ms> (a delay line: throughput is not limited), so every request /
//!        response round trip takes <ms> longer; client to upstream is copied
//!        as is. Runs until killed.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use mongodb::{
    bson::{doc, Document, RawDocumentBuf},
    change_stream::event::ResumeToken,
    options::FullDocumentType,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    match a.first().map(String::as_str) {
        Some("token") => {
            let client = mongodb::Client::with_uri_str(&a[1]).await?;
            let mut cs = client.database("bench").watch().await?;
            let _ = cs.next_if_any().await?;
            let token = cs.resume_token().ok_or("no token")?;
            println!("{}", mongodb::bson::to_document(&token)?.get_str("_data")?);
            // Close the pool while the runtime runs: dropped at exit, the
            // driver's pool worker panics on a closed channel.
            drop(cs);
            client.shutdown().await;
        }
        Some("load") => {
            let client = mongodb::Client::with_uri_str(&a[1]).await?;
            let count: usize = a[2].parse()?;
            let size: usize = a[3].parse()?;
            let collections: usize = a.get(4).map(|s| s.parse()).transpose()?.unwrap_or(1);
            let prefix = a.get(5).map(String::as_str).unwrap_or("many");
            load(&client, count, size, collections.max(1), prefix).await?;
            client.shutdown().await;
        }
        Some("drain") => {
            let client = mongodb::Client::with_uri_str(&a[1]).await?;
            let token: ResumeToken = mongodb::bson::from_document(doc! { "_data": &a[2] })?;
            let count: usize = a[3].parse()?;
            let started = Instant::now();
            let mut cs = client
                .database("bench")
                .watch()
                .full_document(FullDocumentType::UpdateLookup)
                .start_after(token)
                .await?
                .with_type::<RawDocumentBuf>();
            let (mut n, mut bytes) = (0usize, 0usize);
            while n < count {
                match cs.next().await {
                    Some(Ok(ev)) => {
                        bytes += ev.as_bytes().len();
                        n += 1;
                    }
                    Some(Err(e)) => return Err(e.into()),
                    None => break,
                }
            }
            let secs = started.elapsed().as_secs_f64();
            println!("{n} events, {bytes} bytes in {secs:.2}s");
        }
        Some("scan") => {
            let client = mongodb::Client::with_uri_str(&a[1]).await?;
            let started = Instant::now();
            let docs = scan(&client, a[2].parse()?, a[3].parse()?).await?;
            println!("{docs} {:.3}", started.elapsed().as_secs_f64());
            client.shutdown().await;
        }
        Some("wait") => {
            let (url, component, count) = (&a[1], &a[2], a[3].parse::<f64>()?);
            let needle = format!("component_sent_events_total{{component_id=\"{component}\"");
            // When the first event was seen sent: the copy's own duration
            // leaves out the agent's start (printed second).
            let mut first: Option<std::time::Instant> = None;
            loop {
                if let Ok(body) = get(url).await {
                    let sent: f64 = body
                        .lines()
                        .filter(|l| l.starts_with(&needle))
                        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                        .sum();
                    if sent > 0.0 && first.is_none() {
                        first = Some(std::time::Instant::now());
                    }
                    if sent >= count {
                        let bytes_needle = format!(
                            "component_sent_event_bytes_total{{component_id=\"{component}\""
                        );
                        let bytes: f64 = body
                            .lines()
                            .filter(|l| l.starts_with(&bytes_needle))
                            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                            .sum();
                        let since_first = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
                        // Every Azure request the agent sent, lake and state.
                        let requests: f64 = body
                            .lines()
                            .filter(|l| l.starts_with("azure_storage_requests_total{"))
                            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                            .fold(0.0, |a, b| a + b);
                        println!("{bytes:.0} {since_first:.3} {requests:.0}");
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Some("azurite-ceiling") => {
            let writers: usize = a[3].parse()?;
            let block: usize = a[4].parse()?;
            let total: u64 = a[5].parse()?;
            let file: u64 = a
                .get(6)
                .map(|s| s.parse())
                .transpose()?
                .unwrap_or(134_217_728);
            let (secs, bytes) = ceiling(&a[1], &a[2], writers.max(1), block, total, file).await?;
            eprintln!(
                "azurite-ceiling: {bytes} bytes in {secs:.2}s with {writers} writers of {block}-byte blocks = {:.1} MB/s",
                bytes as f64 / secs / 1e6
            );
            println!("{secs:.3} {bytes}");
        }
        Some("latency-proxy") => {
            let ms: u64 = a[3].parse()?;
            latency_proxy(&a[1], &a[2], Duration::from_millis(ms)).await?;
        }
        _ => return Err("see the usage at the top of examples/bench_tool.rs".into()),
    }
    Ok(())
}

/// `bench_tool scan`: the bare driver reading bench.items in rounds of
/// `parallelism` concurrent chunk cursors.
async fn scan(
    client: &mongodb::Client,
    parallelism: usize,
    chunk: u64,
) -> mongodb::error::Result<u64> {
    use mongodb::{bson::Bson, options::Hint};
    let coll = client.database("bench").collection::<Document>("items");
    let raw = coll.clone_with_type::<RawDocumentBuf>();
    let mut from: Option<Bson> = None;
    let mut docs = 0;
    loop {
        let mut bounds: Vec<Bson> = Vec::new();
        for _ in 0..parallelism {
            let mut find = coll
                .find(doc! {})
                .hint(Hint::Keys(doc! { "_id": 1 }))
                .sort(doc! { "_id": 1 })
                .projection(doc! { "_id": 1 })
                .skip(chunk)
                .limit(1);
            if let Some(f) = bounds.last().or(from.as_ref()) {
                find = find.min(doc! { "_id": f.clone() });
            }
            let mut cursor = find.await?;
            match cursor.next().await.transpose()? {
                Some(d) => bounds.push(d.get("_id").cloned().expect("an _id")),
                None => break,
            }
        }
        let done = bounds.len() < parallelism;
        let mut lows = vec![from.clone()];
        lows.extend(bounds.iter().cloned().map(Some));
        let mut highs: Vec<Option<Bson>> = bounds.iter().cloned().map(Some).collect();
        if done {
            highs.push(None);
        } else {
            lows.pop();
        }
        let reads = lows.into_iter().zip(highs).map(|(lo, hi)| {
            let raw = raw.clone();
            tokio::spawn(async move {
                let mut find = raw
                    .find(doc! {})
                    .hint(Hint::Keys(doc! { "_id": 1 }))
                    .sort(doc! { "_id": 1 })
                    .batch_size(256);
                if let Some(lo) = lo {
                    find = find.min(doc! { "_id": lo });
                }
                if let Some(hi) = hi {
                    find = find.max(doc! { "_id": hi });
                }
                let mut cursor = find.await?;
                let mut n = 0u64;
                while let Some(d) = cursor.next().await.transpose()? {
                    std::hint::black_box(d.as_bytes().len());
                    n += 1;
                }
                Ok::<_, mongodb::error::Error>(n)
            })
        });
        for r in futures::future::join_all(reads).await {
            docs += r.expect("a chunk reader panicked")?;
        }
        if done {
            return Ok(docs);
        }
        from = bounds.last().cloned();
    }
}

/// A plain HTTP GET over TCP (the metrics endpoint is local and tiny).
async fn get(url: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = tokio::net::TcpStream::connect(host).await?;
    s.write_all(
        format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    Ok(body)
}

/// Inserts `count` documents of about `size` bytes into `bench.items`, or
/// round-robin into `collections` collections `<prefix>0000`..: in rounds of
/// a few documents per collection (at least ten rounds, at most 1,000
/// documents per insert), so every collection has changes from start to end.
async fn load(
    client: &mongodb::Client,
    count: usize,
    size: usize,
    collections: usize,
    prefix: &str,
) -> mongodb::error::Result<()> {
    let db = client.database("bench");
    // `BENCH_FILLER=text`: words, numbers and ids that compress about as
    // real documents do (for comparing the bytes each sink writes);
    // otherwise one repeated letter (the cheapest to make and encode).
    let text = std::env::var("BENCH_FILLER").is_ok_and(|v| v == "text");
    let filler = "x".repeat(size.saturating_sub(60));
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut text_of = |i: usize| -> String {
        const WORDS: [&str; 24] = [
            "order",
            "shipped",
            "pending",
            "customer",
            "invoice",
            "paid",
            "refund",
            "warehouse",
            "berlin",
            "paris",
            "madrid",
            "express",
            "standard",
            "gift",
            "card",
            "coupon",
            "review",
            "return",
            "cart",
            "item",
            "blue",
            "large",
            "small",
            "green",
        ];
        let mut out = String::with_capacity(size);
        while out.len() + 60 < size {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            match rng % 4 {
                0 => out.push_str(&format!("{} ", rng % 100_000)),
                1 => out.push_str(&format!("{:08x} ", (rng >> 8) as u32 ^ i as u32)),
                _ => {
                    out.push_str(WORDS[(rng >> 20) as usize % WORDS.len()]);
                    out.push(' ');
                }
            }
        }
        out
    };
    let colls: Vec<_> = if collections == 1 {
        vec![db.collection::<Document>("items")]
    } else {
        (0..collections)
            .map(|c| db.collection::<Document>(&format!("{prefix}{c:04}")))
            .collect()
    };
    let per_coll = count.div_ceil(collections);
    let chunk = (per_coll / 10).clamp(1, 1000);
    let mut next = 0;
    while next < count {
        for coll in &colls {
            if next >= count {
                break;
            }
            let n = (count - next).min(chunk);
            let docs: Vec<Document> = (next..next + n)
                .map(|i| {
                    let filler = if text { text_of(i) } else { filler.clone() };
                    doc! { "_id": i as i64, "seq": i as i64, "filler": filler }
                })
                .collect();
            coll.insert_many(docs).await?;
            next += n;
        }
    }
    Ok(())
}

/// Storage's own ingest: `writers` tasks take blocks of `block` bytes from
/// one budget of `total` bytes and Put Block them, each into its own blob,
/// through the same SDK, HTTP client and Shared Key policy the sink uses;
/// a writer commits its blob (Put Block List) once it holds `file` bytes
/// and at the end. Returns the seconds from the first Put Block to the last
/// commit and the bytes staged. The container is created first and deleted
/// afterwards (not timed) so the data does not stay on disk.
async fn ceiling(
    account_url: &str,
    key: &str,
    writers: usize,
    block: usize,
    total: u64,
    file: u64,
) -> Result<(f64, u64), Box<dyn std::error::Error>> {
    use azure_core::http::{ClientOptions, RetryOptions, Transport, Url};
    use azure_storage_blob::{
        models::BlockLookupList, BlobContainerClient, BlobContainerClientOptions, BlockBlobClient,
        BlockBlobClientOptions,
    };
    use mongo_adls::azure::shared_key::SharedKeyPolicy;

    let service = Url::parse(account_url.trim_end_matches('/'))?;
    let account = service
        .path_segments()
        .and_then(|mut s| s.find(|p| !p.is_empty()))
        .ok_or("account_url must be http://host:port/<account>")?
        .to_string();
    let container = format!("ceiling-{}", std::process::id());
    let mut container_url = service.clone();
    container_url
        .path_segments_mut()
        .map_err(|_| "bad account_url")?
        .push(&container);
    let mut client_options = ClientOptions {
        retry: RetryOptions::none(),
        transport: Some(Transport::new(azure_core::http::new_http_client(None))),
        ..Default::default()
    };
    client_options
        .per_try_policies
        .push(Arc::new(SharedKeyPolicy::new(&account, key)?));
    let containers = BlobContainerClient::new(
        container_url.clone(),
        None,
        Some(BlobContainerClientOptions {
            client_options: client_options.clone(),
            ..Default::default()
        }),
    )?;
    containers.create(None).await?;
    let options = BlockBlobClientOptions {
        client_options,
        ..Default::default()
    };

    // One buffer of JSON-like lines, shared by every request (no copies).
    let line = format!("{{\"filler\":\"{}\"}}\n", "x".repeat(1000));
    let data = bytes::Bytes::from(line.repeat(block / line.len() + 1)[..block].to_string());
    let taken = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let (taken, data, options, container_url) = (
            taken.clone(),
            data.clone(),
            options.clone(),
            container_url.clone(),
        );
        tasks.spawn(async move {
            let (mut part, mut ids, mut in_file) = (0usize, Vec::<String>::new(), 0u64);
            let blob_for = |part: usize| {
                let mut url = container_url.clone();
                url.path_segments_mut()
                    .expect("base URL")
                    .push(&format!("w{w:02}-{part:04}.jsonl"));
                BlockBlobClient::new(url, None, Some(options.clone()))
            };
            let mut blob = blob_for(part)?;
            loop {
                let start = taken.fetch_add(block as u64, Ordering::Relaxed);
                if start >= total {
                    break;
                }
                let len = (total - start).min(block as u64);
                let id = format!("{:032}", ids.len());
                blob.stage_block(id.as_bytes(), len, data.slice(..len as usize).into(), None)
                    .await?;
                ids.push(id);
                in_file += len;
                if in_file >= file {
                    commit(&blob, &ids).await?;
                    part += 1;
                    blob = blob_for(part)?;
                    (ids, in_file) = (Vec::new(), 0);
                }
            }
            if !ids.is_empty() {
                commit(&blob, &ids).await?;
            }
            Ok::<(), azure_core::Error>(())
        });
    }
    async fn commit(blob: &BlockBlobClient, ids: &[String]) -> azure_core::Result<()> {
        let list = BlockLookupList {
            latest: Some(ids.iter().map(|id| id.as_bytes().to_vec()).collect()),
            ..Default::default()
        };
        blob.commit_block_list(list.try_into()?, None).await?;
        Ok(())
    }
    let mut result = Ok(());
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done? {
            result = Err(e);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = containers.delete(None).await;
    result?;
    Ok((secs, total))
}

/// Accepts connections on `listen` and forwards each to `upstream`; what
/// comes back from upstream goes through a delay line: each chunk is sent
/// on `delay` after it was read, in order, while later chunks keep being
/// read, so a response arrives `delay` late without capping throughput.
async fn latency_proxy(listen: &str, upstream: &str, delay: Duration) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(listen).await?;
    loop {
        let (client, _) = listener.accept().await?;
        let upstream = upstream.to_string();
        tokio::spawn(async move {
            let server = match tokio::net::TcpStream::connect(&upstream).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("latency-proxy: connect {upstream}: {e}");
                    return;
                }
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let up = tokio::spawn(async move {
                let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                let _ = server_write.shutdown().await;
            });
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
            let reader = tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    match server_read.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if tx
                                .send((Instant::now() + delay, buf[..n].to_vec()))
                                .is_err()
                            {
                                break;
                            }
                        }
                    }
                }
            });
            while let Some((due, chunk)) = rx.recv().await {
                tokio::time::sleep_until(due.into()).await;
                if client_write.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            let _ = client_write.shutdown().await;
            reader.abort();
            up.abort();
        });
    }
}
