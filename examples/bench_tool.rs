//! Helper for `e2e/bench.sh`.
//!
//!   bench_tool token <uri>                         print the current resume token
//!   bench_tool load <uri> <count> <doc_bytes>      insert a backlog (db bench, coll items)
//!   bench_tool drain <uri> <token> <count>         bare driver loop: read <count> events, discard
//!   bench_tool wait <metrics-url> <component> <count>   wait until a component sent <count> events

use std::time::{Duration, Instant};

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
            let coll = client.database("bench").collection::<Document>("items");
            let filler = "x".repeat(size.saturating_sub(60));
            let mut next = 0;
            while next < count {
                let n = (count - next).min(1000);
                let docs: Vec<Document> = (next..next + n)
                    .map(|i| doc! { "_id": i as i64, "seq": i as i64, "filler": &filler })
                    .collect();
                coll.insert_many(docs).await?;
                next += n;
            }
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
        Some("wait") => {
            let (url, component, count) = (&a[1], &a[2], a[3].parse::<f64>()?);
            let needle = format!("component_sent_events_total{{component_id=\"{component}\"");
            loop {
                if let Ok(body) = get(url).await {
                    let sent: f64 = body
                        .lines()
                        .filter(|l| l.starts_with(&needle))
                        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                        .sum();
                    if sent >= count {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        _ => return Err("see the usage at the top of examples/bench_tool.rs".into()),
    }
    Ok(())
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
