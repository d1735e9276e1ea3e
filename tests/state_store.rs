//! The Azure state store (`mongo_adls::state_store`) against a real
//! Azurite: conditional document replaces, appends at the expected length
//! only, and fencing of a stale term by the lease on each state blob. The
//! local store's same semantics are unit tests in `src/state_store/local.rs`.
//!
//! A lost term is simulated by breaking its leases (Azurite's shortest lease
//! is 15 s, as Azure's); waiting them out is what agents do.

mod support;

use std::time::Duration;

use bytes::Bytes;
use mongo_adls::{
    azure::auth::AuthConfig,
    state_store::{AzureStateStore, Fence, StateHandle, StateStore, StateStoreError},
};
use support::{account_sas, Azurite, Lake, AZURITE_KEY};
use tokio::time::Instant;

const CONTAINER: &str = "state";
const ID: &str = "orders-to-lake";
const DOC: &str = "sources/orders/checkpoint.json";
const LOG: &str = "sinks/lake/state.0.log";

fn store(azurite: &Azurite) -> AzureStateStore {
    let auth = AuthConfig {
        shared_key: Some(AZURITE_KEY.to_string()),
        ..Default::default()
    };
    AzureStateStore::new(&azurite.account_url(), CONTAINER, &auth, ID, 15)
        .unwrap()
        .with_takeover_wait(Duration::from_secs(2))
}

/// A new term's fence: a fresh lease id, as the elector makes.
fn term() -> Fence {
    Fence::Lease(uuid::Uuid::new_v4().to_string())
}

/// Azurite with the state container.
async fn azurite() -> Azurite {
    let azurite = Azurite::start();
    Lake::new(&azurite, CONTAINER).create().await;
    azurite
}

fn refused(e: &StateStoreError) -> bool {
    e.is_fenced() || e.is_condition_failed()
}

#[tokio::test]
async fn documents_are_replaced_only_from_the_version_read() {
    let azurite = azurite().await;
    let s = store(&azurite);
    let a = term();
    assert_eq!(s.take_over(&a, &[]).await.unwrap(), Vec::<String>::new());
    assert_eq!(s.read(DOC).await.unwrap(), None);

    let v1 = s.replace(DOC, "one".into(), None, &a).await.unwrap();
    assert_eq!(s.read(DOC).await.unwrap(), Some(("one".into(), v1.clone())));
    let v2 = s.replace(DOC, "two".into(), Some(&v1), &a).await.unwrap();
    assert_ne!(v1, v2);

    // A writer that read v1 cannot overwrite v2.
    let stale = s
        .replace(DOC, "old".into(), Some(&v1), &a)
        .await
        .unwrap_err();
    assert!(stale.is_condition_failed(), "{stale}");
    assert!(
        stale.to_string().contains(&format!("{ID}/{DOC}")),
        "{stale}"
    );
    // Create-only fails when it exists.
    let exists = s.replace(DOC, "new".into(), None, &a).await.unwrap_err();
    assert!(exists.is_condition_failed(), "{exists}");
    assert_eq!(s.read(DOC).await.unwrap(), Some(("two".into(), v2.clone())));

    // Creating leased the blob for the term: another lease id is refused
    // even with the current version, and so is a write with no fence.
    let other = s.replace(DOC, "x".into(), Some(&v2), &term()).await;
    assert!(other.unwrap_err().is_fenced());
    let unfenced = s.replace(DOC, "x".into(), Some(&v2), &Fence::None).await;
    assert!(unfenced
        .unwrap_err()
        .to_string()
        .contains("only under the lease"));

    s.replace("sinks/lake/state.json", "{}".into(), None, &a)
        .await
        .unwrap();
    assert_eq!(
        s.list("").await.unwrap(),
        vec!["sinks/lake/state.json", DOC]
    );
    assert_eq!(s.list("sources/").await.unwrap(), vec![DOC]);
    s.delete("sinks/lake/state.json", &a).await.unwrap();
    s.delete("sinks/lake/state.json", &a).await.unwrap();
    assert_eq!(s.list("").await.unwrap(), vec![DOC]);
}

#[tokio::test]
async fn appends_land_only_at_the_expected_length() {
    let azurite = azurite().await;
    let a = term();
    // Two writers of one term (say, a request retried after a timeout and
    // the next one), each with its own idea of the log's length.
    let (w1, w2) = (store(&azurite), store(&azurite));
    w1.take_over(&a, &[]).await.unwrap();
    let missing = w1.append(LOG, "x\n".into(), 0, &a).await.unwrap_err();
    assert!(missing.is_condition_failed(), "{missing}");

    w1.create_log(LOG, &a).await.unwrap();
    let again = w2.create_log(LOG, &a).await.unwrap_err();
    assert!(again.is_condition_failed(), "{again}");
    assert_eq!(w1.read_log(LOG).await.unwrap(), Some(Bytes::new()));

    // Both saw length 0; the second writer appends first.
    let len = w2.append(LOG, "second\n".into(), 0, &a).await.unwrap();
    assert_eq!(len, 7);
    let stale = w1.append(LOG, "first\n".into(), 0, &a).await.unwrap_err();
    assert!(stale.is_condition_failed(), "{stale}");
    assert!(stale.to_string().contains("length 0"), "{stale}");
    assert_eq!(
        w1.read_log(LOG).await.unwrap(),
        Some(Bytes::from("second\n"))
    );

    // Read again, append at the new length.
    let at = w1.read_log(LOG).await.unwrap().unwrap().len() as u64;
    assert_eq!(w1.append(LOG, "first\n".into(), at, &a).await.unwrap(), 13);
    let lake = Lake::new(&azurite, CONTAINER);
    assert_eq!(lake.read(&format!("{ID}/{LOG}")).await, b"second\nfirst\n");
}

#[tokio::test]
async fn a_new_term_fences_the_old_one() {
    let azurite = azurite().await;
    let (a_store, b_store) = (store(&azurite), store(&azurite));
    let (a, b) = (term(), term());

    a_store.take_over(&a, &[]).await.unwrap();
    let va = a_store.replace(DOC, "a1".into(), None, &a).await.unwrap();
    a_store.create_log(LOG, &a).await.unwrap();
    let a_len = a_store.append(LOG, "a1\n".into(), 0, &a).await.unwrap();

    // While A's term holds its leases, B waits and gives up, breaking
    // nothing: A still writes.
    let started = Instant::now();
    let early = b_store.take_over(&b, &[]).await.unwrap_err();
    assert!(early.is_fenced(), "{early}");
    assert!(early.to_string().contains("previous active"), "{early}");
    assert!(started.elapsed() >= Duration::from_secs(2));
    let va = a_store
        .replace(DOC, "a2".into(), Some(&va), &a)
        .await
        .unwrap();

    // A's term ends (its leases run out; simulated by breaking them), B
    // takes over, reads what A left and writes.
    a_store.break_leases().await.unwrap();
    let mut taken = b_store.take_over(&b, &[]).await.unwrap();
    taken.sort();
    assert_eq!(taken, vec![LOG, DOC]);
    let (bytes, vb) = b_store.read(DOC).await.unwrap().unwrap();
    assert_eq!(bytes, "a2");
    let vb = b_store
        .replace(DOC, "b1".into(), Some(&vb), &b)
        .await
        .unwrap();
    let b_len = b_store.append(LOG, "b1\n".into(), a_len, &b).await.unwrap();

    // A wakes up. Even after reading the current version and length
    // (reads are not fenced), its writes are refused by the lease...
    let (_, current) = a_store.read(DOC).await.unwrap().unwrap();
    assert_eq!(current, vb);
    let e = a_store
        .replace(DOC, "a3".into(), Some(&current), &a)
        .await
        .unwrap_err();
    assert!(e.is_fenced(), "{e}");
    assert!(e.to_string().contains(&format!("{ID}/{DOC}")), "{e}");
    let e = a_store
        .append(LOG, "a3\n".into(), b_len, &a)
        .await
        .unwrap_err();
    assert!(e.is_fenced(), "{e}");
    // ...and with what it knew before, too.
    let e = a_store.replace(DOC, "a3".into(), Some(&va), &a).await;
    assert!(refused(&e.unwrap_err()));
    let e = a_store.append(LOG, "a3\n".into(), a_len, &a).await;
    assert!(refused(&e.unwrap_err()));
    // It cannot renew, delete, or take the blobs back either.
    assert!(a_store.renew(&a).await.unwrap_err().is_fenced());
    assert!(a_store.delete(DOC, &a).await.unwrap_err().is_fenced());
    assert!(a_store.take_over(&a, &[]).await.unwrap_err().is_fenced());

    // The content is B's, and B's term goes on.
    assert_eq!(b_store.read(DOC).await.unwrap(), Some(("b1".into(), vb)));
    let lake = Lake::new(&azurite, CONTAINER);
    assert_eq!(lake.read(&format!("{ID}/{LOG}")).await, b"a1\nb1\n");
    b_store.renew(&b).await.unwrap();
    b_store.append(LOG, "b2\n".into(), b_len, &b).await.unwrap();
}

/// The lease id of a term's fence.
fn id(fence: &Fence) -> String {
    match fence {
        Fence::Lease(id) => id.clone(),
        Fence::None => unreachable!("terms have leases"),
    }
}

/// A term that knows the earlier term's lease id (the leader blob records
/// it) changes that term's running leases to its own at once, without
/// waiting them out; the earlier term's writes are refused from then on.
/// A stale term cannot do the same back: its Change Lease names an id that
/// no longer holds the blobs.
#[tokio::test]
async fn a_new_term_changes_an_earlier_terms_leases_at_once() {
    let azurite = azurite().await;
    let (a_store, b_store, stale_store) = (store(&azurite), store(&azurite), store(&azurite));
    let (a, b, stale) = (term(), term(), term());
    a_store.take_over(&a, &[]).await.unwrap();
    let va = a_store.replace(DOC, "a1".into(), None, &a).await.unwrap();
    a_store.create_log(LOG, &a).await.unwrap();
    let a_len = a_store.append(LOG, "a1\n".into(), 0, &a).await.unwrap();

    let started = Instant::now();
    let mut taken = b_store.take_over(&b, &[id(&stale), id(&a)]).await.unwrap();
    taken.sort();
    assert_eq!(taken, vec![LOG, DOC]);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "changed at once, not waited out: {:?}",
        started.elapsed()
    );
    let e = a_store
        .replace(DOC, "a2".into(), Some(&va), &a)
        .await
        .unwrap_err();
    assert!(e.is_fenced(), "{e}");
    assert!(a_store.renew(&a).await.unwrap_err().is_fenced());
    // A stale term that saw A's id takes nothing from B (it waits its 2 s
    // and gives up), and neither does A.
    let e = stale_store.take_over(&stale, &[id(&a)]).await.unwrap_err();
    assert!(e.is_fenced(), "{e}");
    let e = a_store.take_over(&a, &[id(&a)]).await.unwrap_err();
    assert!(e.is_fenced(), "{e}");

    let (_, vb) = b_store.read(DOC).await.unwrap().unwrap();
    b_store
        .replace(DOC, "b1".into(), Some(&vb), &b)
        .await
        .unwrap();
    b_store.append(LOG, "b1\n".into(), a_len, &b).await.unwrap();
    b_store.renew(&b).await.unwrap();
    let lake = Lake::new(&azurite, CONTAINER);
    assert_eq!(lake.read(&format!("{ID}/{LOG}")).await, b"a1\nb1\n");
}

#[tokio::test]
async fn release_hands_over_at_once() {
    let azurite = azurite().await;
    let (a_store, b_store) = (store(&azurite), store(&azurite));
    let (a, b) = (term(), term());
    a_store.take_over(&a, &[]).await.unwrap();
    a_store.replace(DOC, "a".into(), None, &a).await.unwrap();
    a_store.create_log(LOG, &a).await.unwrap();
    a_store.release(&a).await.unwrap();

    // Released leases need no waiting (the store gives up after 2 s).
    assert_eq!(b_store.take_over(&b, &[]).await.unwrap().len(), 2);
    let (_, v) = b_store.read(DOC).await.unwrap().unwrap();
    b_store
        .replace(DOC, "b".into(), Some(&v), &b)
        .await
        .unwrap();
    b_store.append(LOG, "b\n".into(), 0, &b).await.unwrap();
    let e = a_store.append(LOG, "a\n".into(), 2, &a).await.unwrap_err();
    assert!(e.is_fenced(), "{e}");
}

/// A takeover that finds the old term's leases still running waits for
/// them (here: until the old term releases), then holds every blob.
#[tokio::test]
async fn a_takeover_waits_for_the_old_term() {
    let azurite = azurite().await;
    let a_store = store(&azurite);
    let b_store = store(&azurite).with_takeover_wait(Duration::from_secs(10));
    let (a, b) = (term(), term());
    a_store.take_over(&a, &[]).await.unwrap();
    a_store.replace(DOC, "a".into(), None, &a).await.unwrap();
    a_store.create_log(LOG, &a).await.unwrap();

    let started = Instant::now();
    let taking = tokio::spawn(async move {
        let taken = b_store.take_over(&b, &[]).await;
        (b_store, b, taken)
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a_store.renew(&a).await.unwrap();
    a_store.release(&a).await.unwrap();
    let (b_store, b, taken) = taking.await.unwrap();
    assert_eq!(taken.unwrap().len(), 2);
    assert!(started.elapsed() >= Duration::from_millis(1500));
    let (_, v) = b_store.read(DOC).await.unwrap().unwrap();
    b_store
        .replace(DOC, "b".into(), Some(&v), &b)
        .await
        .unwrap();
    b_store.append(LOG, "b\n".into(), 0, &b).await.unwrap();
    let e = a_store.append(LOG, "a\n".into(), 2, &a).await.unwrap_err();
    assert!(e.is_fenced(), "{e}");
}

/// Errors name the blob (its URL without the SAS) and say what to do.
#[tokio::test]
async fn errors_name_the_blob_and_hide_the_sas() {
    let azurite = azurite().await;
    let auth = AuthConfig {
        sas_token: Some(account_sas("rwdlac")),
        ..Default::default()
    };
    let s = AzureStateStore::new(&azurite.account_url(), CONTAINER, &auth, ID, 15).unwrap();
    let a = term();
    s.replace(DOC, "x".into(), None, &a).await.unwrap();
    let e = s.replace(DOC, "y".into(), None, &a).await.unwrap_err();
    let missing = AzureStateStore::new(&azurite.account_url(), "missing", &auth, ID, 15)
        .unwrap()
        .read(DOC)
        .await
        .unwrap_err();
    assert!(missing.to_string().contains("create it"), "{missing}");
    for e in [e, missing] {
        let text = e.to_string();
        assert!(text.contains(&format!("/{ID}/{DOC}")), "{text}");
        assert!(!text.contains("sig="), "{text}");
    }
}

/// Under a lease only another term changes the state: a write refused on
/// its condition (here an append to a log that is gone, as after a new
/// term compacted it away) marks the term fenced as a lease refusal does,
/// so an agent steps down and stands by instead of exiting as failed.
/// The log goes with an in-memory Azurite's restart (which also forgets
/// the lease that keeps anyone else from deleting it).
#[tokio::test]
async fn a_write_refused_on_its_condition_under_a_lease_fences_the_term() {
    let mut azurite = azurite().await;
    let a = term();
    let s = store(&azurite);
    s.take_over(&a, &[]).await.unwrap();
    let handle = StateHandle::new(std::sync::Arc::new(s), a);
    handle.create_log(LOG).await.unwrap();
    let at = handle.append(LOG, "x\n".into(), 0).await.unwrap();
    assert!(!handle.write_was_fenced());
    azurite.restart();
    Lake::new(&azurite, CONTAINER).create().await;
    let err = handle.append(LOG, "y\n".into(), at).await.unwrap_err();
    assert!(err.is_condition_failed(), "{err}");
    assert!(
        handle.write_was_fenced(),
        "a refused condition under a lease ends the term"
    );
}
