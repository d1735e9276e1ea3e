//! Helper for `e2e/quickstart.sh`: drives a small workload into MongoDB and
//! prints what landed in the lake (Azurite or a `file://` folder).
//!
//!   quickstart_client workload <mongo-uri>
//!   quickstart_client show <account-url> <filesystem> [shared-key]

use std::{sync::Arc, time::Duration};

use futures::TryStreamExt;
use mongodb::bson::{doc, oid::ObjectId, Decimal128, Document};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("workload") => workload(&args[1]).await,
        Some("show") => show(&args[1], &args[2], args.get(3).map(String::as_str)).await,
        _ => Err("usage: quickstart_client workload <uri> | show <account-url> <filesystem> [shared-key]".into()),
    }
}

/// Inserts, updates, replaces and deletes across two databases and three
/// collections.
async fn workload(uri: &str) -> Result<(), Box<dyn std::error::Error>> {
    let client = mongodb::Client::with_uri_str(uri).await?;
    let orders = client.database("shop").collection::<Document>("orders");
    let customers = client.database("shop").collection::<Document>("customers");
    let leads = client.database("crm").collection::<Document>("leads");
    let mut ids = Vec::new();
    for i in 0..20 {
        let id = ObjectId::new();
        ids.push(id);
        orders
            .insert_one(doc! {
                "_id": id, "order_no": i, "total": format!("{}.99", 10 + i).parse::<Decimal128>()?,
                "placed_at": mongodb::bson::DateTime::now(), "items": [{ "sku": "A-1", "qty": 2 }],
            })
            .await?;
        customers
            .insert_one(doc! { "_id": i, "name": format!("customer {i}") })
            .await?;
        leads
            .insert_one(doc! { "source": "web", "score": i })
            .await?;
    }
    for id in &ids[..5] {
        orders
            .update_one(doc! { "_id": id }, doc! { "$set": { "status": "shipped" } })
            .await?;
    }
    orders
        .replace_one(
            doc! { "_id": ids[5] },
            doc! { "order_no": 5, "status": "rewritten" },
        )
        .await?;
    orders.delete_one(doc! { "_id": ids[6] }).await?;
    customers
        .delete_many(doc! { "_id": { "$gte": 18 } })
        .await?;
    println!("workload: 60 inserts, 5 updates, 1 replace, 3 deletes");
    Ok(())
}

async fn show(
    account_url: &str,
    filesystem: &str,
    key: Option<&str>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut names: Vec<(String, Vec<u8>)> = Vec::new();
    if let Some(path) = account_url.strip_prefix("file://") {
        let root = std::path::Path::new(path).join(filesystem);
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir)? {
                let p = entry?.path();
                if p.is_dir() {
                    stack.push(p);
                } else if !p
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .starts_with('.')
                {
                    let name = p.strip_prefix(&root)?.to_string_lossy().into_owned();
                    names.push((name, std::fs::read(&p)?));
                }
            }
        }
    } else {
        let key = key.ok_or("a shared key is needed for Azurite")?;
        let account = account_url.rsplit('/').next().unwrap_or_default();
        let policy =
            mongo_adls::sinks::azure_common::shared_key::SharedKeyPolicy::new(account, key)?;
        let options = azure_core::http::ClientOptions {
            per_try_policies: vec![Arc::new(policy)],
            ..Default::default()
        };
        let url = azure_core::http::Url::parse(&format!("{account_url}/{filesystem}"))?;
        let container = azure_storage_blob::BlobContainerClient::new(
            url.clone(),
            None,
            Some(azure_storage_blob::BlobContainerClientOptions {
                client_options: options.clone(),
                ..Default::default()
            }),
        )?;
        let mut pager = container.list_blobs(None)?;
        while let Some(item) = pager.try_next().await? {
            let name = item.name.unwrap_or_default();
            let mut blob_url = url.clone();
            blob_url
                .path_segments_mut()
                .map_err(|_| "bad url")?
                .extend(name.split('/'));
            let blob = azure_storage_blob::BlobClient::new(
                blob_url,
                None,
                Some(azure_storage_blob::BlobClientOptions {
                    client_options: options.clone(),
                    ..Default::default()
                }),
            )?;
            let body = blob.download(None).await?.body.collect().await?;
            names.push((name, body.to_vec()));
        }
    }
    names.sort();
    println!("lake {account_url}/{filesystem}:");
    let mut total = 0;
    for (name, body) in &names {
        let lines = body.iter().filter(|b| **b == b'\n').count();
        total += lines;
        println!("  {name}  ({lines} events, {} bytes)", body.len());
    }
    println!("{} files, {total} events", names.len());
    if let Some((name, body)) = names.iter().find(|(n, _)| n.contains("orders")) {
        println!("\nfirst records of {name}:");
        for line in String::from_utf8_lossy(body).lines().take(2) {
            println!("{line}");
        }
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}
