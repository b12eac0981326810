//! The queues' doorbells: writing an event or queueing a text wakes a listener on every kind
//! of Redis, so delivery need not wait for the sweep.

use std::sync::Arc;
use std::time::Duration;

use hush::store::{EventDraft, Queue};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::harness::fresh_config;

/// Only guards against a hang: a ring that never comes fails the test.
const AT_MOST: Duration = Duration::from_secs(20);

/// A listener on `queue`'s bells and the guard that stops it; returns after the first ring,
/// which says it is subscribed.
async fn listening(
    store: &hush::store::Store,
    queue: Queue,
) -> (Arc<Notify>, CancellationToken, tokio::task::JoinHandle<()>) {
    let ring = Arc::new(Notify::new());
    let shutdown = CancellationToken::new();
    let listener = tokio::spawn({
        let (store, ring, shutdown) = (store.clone(), ring.clone(), shutdown.clone());
        async move { store.listen(queue, ring, shutdown).await }
    });
    tokio::time::timeout(AT_MOST, ring.notified())
        .await
        .expect("the doorbell never connected");
    (ring, shutdown, listener)
}

#[tokio::test]
async fn queueing_a_text_rings_the_text_doorbell_in_shard_and_shared_queues() {
    let config = fresh_config(&crate::topology::shared_url());
    let broker = hush::build_broker(&config).unwrap();
    let store = broker.store().clone();
    let (ring, shutdown, listener) = listening(&store, Queue::Texts).await;
    let shard = store.keys().shard(4, 0);
    for tag in [store.outbox_tag(Some(&shard)), store.outbox_tag(None)] {
        assert!(store.outbox_put(&tag, "t1", "sealed", 1).await.unwrap());
        tokio::time::timeout(AT_MOST, ring.notified())
            .await
            .unwrap_or_else(|_| panic!("queueing a text in {tag} did not ring"));
    }
    shutdown.cancel();
    listener.await.unwrap();
}

#[tokio::test]
async fn writing_or_redelivering_an_event_rings_the_doorbell() {
    let config = fresh_config(&crate::topology::shared_url());
    let broker = hush::build_broker(&config).unwrap();
    let store = broker.store().clone();
    let (ring, shutdown, listener) = listening(&store, Queue::Events).await;

    let shard = store.keys().shard(9, 1);
    let draft = EventDraft {
        id: "e1".into(),
        body: "{}".into(),
        numbers: String::new(),
    };
    store
        .event_put(&shard, "pool.exhausted", &draft, 1)
        .await
        .unwrap();
    tokio::time::timeout(AT_MOST, ring.notified())
        .await
        .expect("writing an event did not ring");

    // A delivered event put back in the queue rings too.
    let tag = shard.events_tag();
    let conn = &mut store.connection();
    let _: () = redis::cmd("HSET")
        .arg(format!("{tag}m:e1"))
        .arg("s")
        .arg("d")
        .query_async(conn)
        .await
        .unwrap();
    let _: () = redis::cmd("ZREM")
        .arg(format!("{tag}q"))
        .arg("e1")
        .query_async(conn)
        .await
        .unwrap();
    assert!(store.event_redeliver(&shard, "e1", 2).await.unwrap());
    tokio::time::timeout(AT_MOST, ring.notified())
        .await
        .expect("redelivering an event did not ring");

    shutdown.cancel();
    listener.await.unwrap();
}
