//! The queues' doorbells: writing an event or queueing a text wakes a listener on every kind
//! of Redis, so delivery need not wait for the sweep.

use std::sync::Arc;
use std::time::Duration;

use hush::store::{EventDraft, Queue, Rings};
use tokio_util::sync::CancellationToken;

use crate::harness::fresh_config;

/// Only guards against a hang: a ring that never comes fails the test.
const AT_MOST: Duration = Duration::from_secs(20);

/// A listener on `queue`'s bells and the guard that stops it; returns after the first ring,
/// which says it is subscribed (and that any queue may have rung).
async fn listening(
    store: &hush::store::Store,
    queue: Queue,
) -> (Arc<Rings>, CancellationToken, tokio::task::JoinHandle<()>) {
    let rings = Arc::new(Rings::default());
    let shutdown = CancellationToken::new();
    let listener = tokio::spawn({
        let (store, rings, shutdown) = (store.clone(), rings.clone(), shutdown.clone());
        async move { store.listen(queue, rings, shutdown).await }
    });
    tokio::time::timeout(AT_MOST, rings.wait())
        .await
        .expect("the doorbell never connected");
    assert_eq!(
        rings.take(),
        None,
        "a fresh subscription looks at every queue"
    );
    (rings, shutdown, listener)
}

/// Waits for the next ring and checks it named the queue `tag`.
async fn rang(rings: &Rings, tag: &str) {
    tokio::time::timeout(AT_MOST, rings.wait())
        .await
        .unwrap_or_else(|_| panic!("nothing rang for {tag}"));
    let rung = rings.take().expect("a ring names its queue");
    assert!(rung.contains(tag), "{tag} not among {rung:?}");
}

#[tokio::test]
async fn queueing_a_text_rings_the_text_doorbell_in_shard_and_shared_queues() {
    let config = fresh_config(&crate::topology::shared_url());
    let broker = hush::build_broker(&config).unwrap();
    let store = broker.store().clone();
    let (rings, shutdown, listener) = listening(&store, Queue::Texts).await;
    let shard = store.keys().shard(4, 0);
    for tag in [store.outbox_tag(Some(&shard)), store.outbox_tag(None)] {
        assert!(store.outbox_put(&tag, "t1", "sealed", 1).await.unwrap());
        rang(&rings, &tag).await;
    }
    shutdown.cancel();
    listener.await.unwrap();
}

#[tokio::test]
async fn writing_or_redelivering_an_event_rings_the_doorbell() {
    let config = fresh_config(&crate::topology::shared_url());
    let broker = hush::build_broker(&config).unwrap();
    let store = broker.store().clone();
    let (rings, shutdown, listener) = listening(&store, Queue::Events).await;

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
    rang(&rings, &shard.events_tag()).await;

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
    rang(&rings, &shard.events_tag()).await;

    shutdown.cancel();
    listener.await.unwrap();
}
