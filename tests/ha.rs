//! Leader election through a Blob lease (`mongo_adls::ha`) against a real
//! Azurite: one active per pipeline id, handover on release, loss on a
//! broken lease, fencing of the leader blob by the lease id, the active's
//! own deadline when storage cannot be reached, and `describe`.
//!
//! Azurite's shortest lease is 15 s, as Azure's, and tests do not wait for
//! expiry except where expiry is the point (the deadline test): a lost
//! lease is simulated with Break Lease (period 0).

mod support;

use std::time::Duration;

use azure_core::http::StatusCode;
use mongo_adls::{
    azure::auth::AuthConfig,
    ha::{
        ElectionSettings, Elector, LeaderBlob, Leadership, LeaseDuration, LeaseError, LeaseState,
        LostReason,
    },
};
use support::{Azurite, FaultProxy, Faults, Lake, AZURITE_ACCOUNT, AZURITE_KEY};
use tokio::time::Instant;

const CONTAINER: &str = "state";
const LEASE_SECS: u32 = 15;

fn auth() -> AuthConfig {
    AuthConfig {
        shared_key: Some(AZURITE_KEY.to_string()),
        ..Default::default()
    }
}

fn leader(account_url: &str, id: &str) -> LeaderBlob {
    LeaderBlob::new(account_url, CONTAINER, &auth(), id).unwrap()
}

fn elector(account_url: &str, id: &str) -> Elector {
    Elector::start(
        id,
        leader(account_url, id),
        ElectionSettings::new(LEASE_SECS).unwrap(),
    )
}

/// Azurite with the state container.
async fn store() -> Azurite {
    let azurite = Azurite::start();
    Lake::new(&azurite, CONTAINER).create().await;
    azurite
}

/// Waits until `elector`'s leadership satisfies `pred`; the state then.
async fn until(
    elector: &Elector,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&Leadership) -> bool,
) -> Leadership {
    let mut rx = elector.subscribe();
    let state = tokio::time::timeout(timeout, rx.wait_for(|l| pred(l)))
        .await
        .unwrap_or_else(|_| panic!("not {what} within {timeout:?}: {:?}", elector.leadership()))
        .expect("the election task runs");
    state.clone()
}

fn is_active(l: &Leadership) -> bool {
    matches!(l, Leadership::Active { .. })
}

fn is_lost(l: &Leadership) -> bool {
    matches!(l, Leadership::Lost { .. })
}

fn lease_id(l: &Leadership) -> String {
    match l {
        Leadership::Active { lease_id, .. } => lease_id.clone(),
        other => panic!("not active: {other:?}"),
    }
}

/// Two electors of one pipeline and one of another, started together:
/// exactly one of the pair becomes active and the other stays standby;
/// the other pipeline has its own leader.
#[tokio::test]
async fn exactly_one_of_two_becomes_active() {
    let azurite = store().await;
    let url = azurite.account_url();
    let (a, b) = (elector(&url, "orders"), elector(&url, "orders"));
    let other = elector(&url, "invoices");
    let first = tokio::time::timeout(Duration::from_secs(10), async {
        let (mut ra, mut rb) = (a.subscribe(), b.subscribe());
        tokio::select! {
            _ = ra.wait_for(is_active) => "a",
            _ = rb.wait_for(is_active) => "b",
        }
    })
    .await
    .expect("one becomes active within 10 s");
    until(&other, Duration::from_secs(10), "active", is_active).await;
    // Long enough for the standby to see the lease taken and to retry.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (active, standby) = if first == "a" { (&a, &b) } else { (&b, &a) };
    assert!(active.leadership().is_active(), "{:?}", active.leadership());
    assert_eq!(standby.leadership(), Leadership::Standby);
    assert!(other.leadership().is_active(), "another id, another lease");
}

/// The active releases (shutdown): the standby takes over within about
/// its one-second poll, and its term learns the earlier term's lease id.
#[tokio::test]
async fn release_hands_over_at_once() {
    let azurite = store().await;
    let url = azurite.account_url();
    let a = elector(&url, "p");
    until(&a, Duration::from_secs(10), "active", is_active).await;
    let b = elector(&url, "p");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(b.leadership(), Leadership::Standby);

    let a_state = a.subscribe();
    let a_id = lease_id(&a.leadership());
    let released = Instant::now();
    a.release().await.expect("Release Lease succeeds");
    assert_eq!(
        *a_state.borrow(),
        Leadership::Lost {
            reason: LostReason::Released
        }
    );
    until(&b, Duration::from_secs(8), "active", is_active).await;
    let took = released.elapsed();
    println!("release -> takeover: {took:?}");
    // A standby polls once a second for a free lease, and tries to acquire
    // every renew period (5 s) anyway: started 1.5 s before the release,
    // that try would come 3.5 s after it, so the bound stays below.
    assert!(took < Duration::from_secs(3), "takeover took {took:?}");

    // Each term records its lease id ahead of the earlier ones, and learns
    // those: the ids its takeover changes state leases from.
    let b_now = b.leadership();
    let Leadership::Active { earlier_terms, .. } = &b_now else {
        panic!("not active: {b_now:?}")
    };
    assert_eq!(earlier_terms.to_vec(), vec![a_id.clone()]);
    let record = leader(&url, "p").read_holder().await.unwrap().unwrap();
    assert_eq!(record.terms, vec![lease_id(&b_now), a_id]);
}

/// Break Lease (period 0) stands in for an expiry: the old active's next
/// renew is refused, it reports `Lost` with the refusal within one renew
/// period, and the standby acquires.
#[tokio::test]
async fn a_broken_lease_is_lost_at_the_next_renew() {
    let azurite = store().await;
    let url = azurite.account_url();
    let a = elector(&url, "p");
    until(&a, Duration::from_secs(10), "active", is_active).await;
    let b = elector(&url, "p");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(b.leadership(), Leadership::Standby);

    leader(&url, "p").break_lease(0).await.unwrap();
    let broken = Instant::now();
    let renew_every = ElectionSettings::new(LEASE_SECS).unwrap().renew_every();
    let ((lost, lost_after), taken_after) = tokio::join!(
        async {
            let state = until(&a, renew_every + Duration::from_secs(2), "lost", is_lost).await;
            (state, broken.elapsed())
        },
        async {
            until(&b, Duration::from_secs(3), "active", is_active).await;
            broken.elapsed()
        },
    );
    println!("break -> old active lost: {lost_after:?}; break -> standby active: {taken_after:?}");
    match lost {
        Leadership::Lost {
            reason: LostReason::Refused { error },
        } => assert!(
            error.contains("Renew Lease") && error.contains("409"),
            "{error}"
        ),
        other => panic!("expected a refused renew, got {other:?}"),
    }
    assert!(!a.leadership().is_active());
}

/// After a takeover, a write to the leader blob carrying the old term's
/// lease id is refused with 412, checked with a plain SDK client: the
/// lease id fences the leader blob itself. The new id is accepted.
#[tokio::test]
async fn the_old_lease_id_cannot_write_the_leader_blob() {
    let azurite = store().await;
    let url = azurite.account_url();
    let a = elector(&url, "p");
    let old = lease_id(&until(&a, Duration::from_secs(10), "active", is_active).await);
    let b = elector(&url, "p");
    leader(&url, "p").break_lease(0).await.unwrap();
    let new = lease_id(&until(&b, Duration::from_secs(5), "active", is_active).await);
    assert_ne!(old, new, "each term has its own lease id");

    assert_eq!(
        put(&url, Some(old.clone())).await,
        Err(Some(StatusCode::PreconditionFailed))
    );
    assert_eq!(
        put(&url, None).await,
        Err(Some(StatusCode::PreconditionFailed))
    );
    // The module's own write says the same.
    let refused = leader(&url, "p")
        .write_holder(&old, a.holder())
        .await
        .unwrap_err();
    assert!(
        matches!(refused, LeaseError::Refused { status: 412, .. }),
        "{refused}"
    );
    assert_eq!(put(&url, Some(new)).await, Ok(()));
}

/// Put Blob on the leader blob of pipeline `p` with a plain SDK client,
/// carrying `lease` as `x-ms-lease-id`: the HTTP status of a refusal.
async fn put(url: &str, lease: Option<String>) -> Result<(), Option<StatusCode>> {
    use azure_storage_blob::{models::BlockBlobClientUploadOptions, BlockBlobClient};
    let policy =
        mongo_adls::azure::shared_key::SharedKeyPolicy::new(AZURITE_ACCOUNT, AZURITE_KEY).unwrap();
    let options = azure_storage_blob::BlockBlobClientOptions {
        client_options: azure_core::http::ClientOptions {
            per_try_policies: vec![std::sync::Arc::new(policy)],
            ..Default::default()
        },
        ..Default::default()
    };
    let blob_url = azure_core::http::Url::parse(&format!("{url}/{CONTAINER}/p/leader")).unwrap();
    let blob = BlockBlobClient::new(blob_url, None, Some(options)).unwrap();
    let upload = BlockBlobClientUploadOptions {
        lease_id: lease,
        ..Default::default()
    };
    blob.upload(bytes::Bytes::from_static(b"{}").into(), Some(upload))
        .await
        .map(|_| ())
        .map_err(|e| e.http_status())
}

/// Storage becomes unreachable (a proxy answers 503 to everything): the
/// active reports `Lost` on its own clock before its lease could expire,
/// and a standby that still reaches storage takes over only after that.
#[tokio::test]
async fn an_active_that_cannot_renew_stops_before_its_lease_can_expire() {
    let azurite = store().await;
    let proxy = FaultProxy::start(
        azurite.port,
        Faults {
            every: 1,
            kinds: vec![],
            only: None,
        },
    )
    .await;
    let a = elector(&proxy.account_url(), "p");
    until(&a, Duration::from_secs(10), "active", is_active).await;
    let b = elector(&azurite.account_url(), "p");

    // Right after a renew was accepted, so none is in flight.
    let mut renews = a.subscribe();
    renews.borrow_and_update();
    renews.changed().await.unwrap();
    proxy.set_down(true);
    let down = Instant::now();
    let snapshot = a.leadership();
    let Leadership::Active {
        last_renewed,
        stop_by,
        ..
    } = snapshot.clone()
    else {
        panic!("not active: {snapshot:?}");
    };
    let lease = Duration::from_secs(LEASE_SECS.into());
    let lost = until(&a, lease, "lost", is_lost).await;
    let lost_at = Instant::now();
    assert!(
        !b.leadership().is_active(),
        "the standby became active while the old active still counted itself active"
    );
    let since_renew = match &lost {
        Leadership::Lost {
            reason: LostReason::DeadlinePassed { since_last_renew },
        } => *since_last_renew,
        other => panic!("expected the deadline, got {other:?}"),
    };
    println!(
        "outage -> lost: {:?}; last accepted renew -> lost: {since_renew:?} (lease {lease:?})",
        lost_at - down
    );
    assert!(since_renew < lease, "{since_renew:?}");
    assert!(
        lost_at - last_renewed < lease,
        "{:?}",
        lost_at - last_renewed
    );
    // The snapshot taken while active stops answering at its deadline by
    // itself, whatever the election task does.
    tokio::time::sleep_until(stop_by).await;
    assert_eq!(snapshot.lease_id(), None);

    until(&b, Duration::from_secs(20), "active", is_active).await;
    println!(
        "outage -> standby active (after expiry): {:?}",
        down.elapsed()
    );
}

/// `describe` reads the lease without taking it: nothing before the first
/// agent, then leased by the active agent, then available after release.
#[tokio::test]
async fn describe_names_the_holder_and_the_lease_state() {
    let azurite = store().await;
    let url = azurite.account_url();
    let blob = leader(&url, "p");
    assert_eq!(blob.describe().await.unwrap(), None);

    let a = elector(&url, "p");
    until(&a, Duration::from_secs(10), "active", is_active).await;
    let info = blob
        .describe()
        .await
        .unwrap()
        .expect("the leader blob exists");
    assert_eq!(info.lease_state, LeaseState::Leased);
    assert_eq!(info.lease_duration, Some(LeaseDuration::Fixed));
    let holder = info.holder.expect("the blob names its holder");
    assert_eq!(holder.instance, a.holder().instance);
    assert_eq!(holder.pid, std::process::id());
    assert!(holder.active_since.is_some());
    assert!(info.blob.ends_with("/state/p/leader"), "{}", info.blob);

    a.release().await.unwrap();
    let info = blob.describe().await.unwrap().unwrap();
    assert_eq!(info.lease_state, LeaseState::Available);
    assert!(info.holder.is_some(), "the last holder stays named");
}
