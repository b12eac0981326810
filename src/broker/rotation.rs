//! Re-sealing every stored ciphertext under the first data key, while hush serves, so a
//! retired (or leaked) data key can be removed at once instead of after the longest record
//! life. Each key is read, its ciphertexts opened and sealed again, and written back only if
//! it still holds what was read; a key hush changed meanwhile is read again. A value already
//! under the first key is left alone, so a run that stopped is resumed by running again,
//! and a second run re-seals nothing.

use tokio::task::JoinSet;

use crate::store::rotation::Spot;

use super::{Broker, Result};

/// How often a key that keeps changing under the re-seal is read again before it is skipped.
const TRIES_PER_KEY: usize = 5;

/// Keys re-sealed side by side: each costs a read and a script, so the round trips, not
/// the crypto, set the pace.
const PARALLEL: usize = 16;

/// How far a re-seal has come; counts are of ciphertexts (a route record, a session's blob,
/// an event's numbers, ...), not of keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rotation {
    /// The server being walked (1-based) and how many there are: one, or each Cluster primary.
    pub node: usize,
    pub nodes: usize,
    /// Where the walk is: `the primary`, or a Cluster primary's address.
    pub node_name: String,
    /// Keys that may hold a ciphertext, looked at so far.
    pub keys: u64,
    /// Sealed again under the first key by this run.
    pub resealed: u64,
    /// Already under the first key.
    pub current: u64,
    /// Left as they are: sealed under a key not configured, malformed, or changing too often
    /// to catch.
    pub skipped: u64,
    /// True when the run stopped early (`stop_after`): run again to finish.
    pub stopped: bool,
}

impl Rotation {
    /// Ciphertexts this run saw that are still under another key: 0 after a complete run
    /// means no stored record needs any other key than the first.
    pub fn left(&self) -> u64 {
        self.skipped
    }
}

impl Broker {
    /// Re-seals every ciphertext under this prefix that another data key sealed, calling
    /// `progress` after each batch of keys. With `stop_after`, stops once it has re-sealed
    /// that many (the rest is done by running again).
    pub async fn rotate_data(
        &self,
        stop_after: Option<u64>,
        mut progress: impl FnMut(&Rotation),
    ) -> Result<Rotation> {
        let store = &self.inner.store;
        let nodes = store.key_nodes().await?;
        let mut r = Rotation {
            nodes: nodes.len(),
            ..Rotation::default()
        };
        for (i, node) in nodes.iter().enumerate() {
            r.node = i + 1;
            r.node_name = node.to_string();
            let mut cursor = 0;
            loop {
                let (next, keys) = store.sealed_keys_step(node, cursor).await?;
                let mut keys = keys.into_iter().peekable();
                while keys.peek().is_some() {
                    let room = match stop_after {
                        Some(n) if r.resealed >= n => {
                            r.stopped = true;
                            progress(&r);
                            return Ok(r);
                        }
                        Some(n) => (n - r.resealed).min(PARALLEL as u64) as usize,
                        None => PARALLEL,
                    };
                    let mut batch = JoinSet::new();
                    for key in keys.by_ref().take(room) {
                        let me = self.clone();
                        batch.spawn(async move { me.reseal_key(&key).await });
                    }
                    while let Some(done) = batch.join_next().await {
                        let one =
                            done.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
                        r.keys += 1;
                        r.resealed += one.resealed;
                        r.current += one.current;
                        r.skipped += one.skipped;
                    }
                }
                progress(&r);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(r)
    }

    /// Re-seals what one key holds; the counts are of its ciphertexts.
    async fn reseal_key(&self, key: &str) -> Result<Rotation> {
        let (store, crypto) = (&self.inner.store, &self.inner.crypto);
        let mut r = Rotation::default();
        // Each value is rewritten only while it is still what was read; those hush changed
        // meanwhile are read again.
        let mut resealed = 0;
        let mut racing = 0;
        for _ in 0..TRIES_PER_KEY {
            let spots = store.sealed_spots(key).await?;
            let mut fresh: Vec<(&Spot, String)> = Vec::new();
            let (mut current, mut unreadable) = (0, 0);
            for spot in &spots {
                match crypto.reseal(spot.purpose, &spot.sealed) {
                    Ok(None) => current += 1,
                    Ok(Some(sealed)) => fresh.push((spot, sealed)),
                    Err(e) => {
                        tracing::warn!(error = %e, purpose = spot.purpose,
                            "a stored value cannot be opened; left as it is");
                        unreadable += 1;
                    }
                }
            }
            let written = if fresh.is_empty() {
                0
            } else {
                store.reseal_spots(key, &fresh).await?
            };
            if written == fresh.len() as u64 {
                // Values re-sealed by an earlier try read as current now.
                r.current += current - resealed.min(current);
                r.skipped += unreadable;
                r.resealed += resealed + written;
                return Ok(r);
            }
            resealed += written;
            racing = fresh.len() as u64 - written;
        }
        tracing::warn!("a record kept changing while being re-sealed; left as it is");
        r.resealed += resealed;
        r.skipped += racing;
        Ok(r)
    }
}
