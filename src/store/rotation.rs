//! Re-sealing stored ciphertexts under the first data key: which keys hold one, where in
//! their value it sits, and a compare-and-set that rewrites a value only while it is still
//! what was read. Keys are found by `SCAN` on every server that holds keys (each Cluster
//! primary), so nothing depends on an index that could miss a kind of record.

use std::collections::HashMap;
use std::sync::LazyLock;

use redis::Script;

pub use super::conn::Node;
use super::{Result, Store, script};

static RESEAL: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/reseal.lua")));

/// How many keys one `SCAN` step asks for.
const SCAN_COUNT: usize = 500;

/// One ciphertext in a stored value: the value is `head` followed by `sealed`, in `fields`
/// of a hash (one) or the whole string (none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spot {
    pub fields: Vec<String>,
    pub purpose: &'static str,
    pub head: String,
    pub sealed: String,
    /// What follows the ciphertext (a session record's options), kept as it is.
    pub tail: String,
}

/// What kind of key may hold ciphertexts, by its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Holder {
    /// `{p..}:s:<bucket>`: session records, each with its sealed blob last.
    Sessions,
    /// A hash with sealed fields: `{p..}:ev:m:<id>` (`z`), `{..}:ox:m:<id>` and
    /// `{ox}:m:<id>` (`b`), `pool:<id>` (`sec`, `sec_old`).
    Fields(&'static [&'static str], &'static str),
    /// `idem:<digest>`: `d|<fingerprint>|<sealed response>` once answered.
    Idempotency,
    /// `{p..}:ref:<provider>:<ref>`: `b|<session>|<interaction>|<sealed message>`.
    BlockedRef,
    /// `{p..}:y:<session>`: a session's metadata, the whole string sealed.
    Metadata,
    /// `{p..}:i:<session>`: a session's interactions; `r:<interaction>` fields are sealed
    /// recordings.
    Recordings,
}

impl Holder {
    fn of(prefix: &str, key: &str) -> Option<Holder> {
        let rest = key.strip_prefix(prefix)?.strip_prefix(':')?;
        if let Some(tagged) = rest.strip_prefix('{') {
            let (tag, within) = tagged.split_once("}:")?;
            if tag == "ox" {
                return within
                    .starts_with("m:")
                    .then_some(Holder::Fields(&["b"], "outbox"));
            }
            return Some(match within.split_once(':')?.0 {
                "s" => Holder::Sessions,
                "ref" => Holder::BlockedRef,
                "y" => Holder::Metadata,
                "i" => Holder::Recordings,
                "ev" if within.starts_with("ev:m:") => Holder::Fields(&["z"], "event-numbers"),
                "ox" if within.starts_with("ox:m:") => Holder::Fields(&["b"], "outbox"),
                _ => return None,
            });
        }
        if rest.starts_with("idem:") {
            return Some(Holder::Idempotency);
        }
        let id = rest.strip_prefix("pool:")?;
        (!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
            .then_some(Holder::Fields(&["sec", "sec_old"], "callback-secret"))
    }

    fn is_hash(self) -> bool {
        !matches!(
            self,
            Holder::Idempotency | Holder::BlockedRef | Holder::Metadata
        )
    }
}

/// A session record split around its sealed blob: the fields before it, the blob, and the
/// options that may follow it (`lua/common.lua`).
fn record_parts(value: &str) -> (String, String, String) {
    let fields = super::sessions::SESSION_FIELDS.len();
    let parts: Vec<&str> = value.splitn(fields + 1, '|').collect();
    if parts.len() < fields {
        return (String::new(), String::new(), String::new());
    }
    let head: String = parts[..fields - 1]
        .iter()
        .map(|p| format!("{p}|"))
        .collect();
    let tail = parts
        .get(fields)
        .map(|o| format!("|{o}"))
        .unwrap_or_default();
    (head, parts[fields - 1].to_string(), tail)
}

/// The ciphertexts a hash of kind `holder` holds.
fn hash_spots(holder: Holder, hash: &HashMap<String, String>) -> Vec<Spot> {
    let spot =
        |fields: Vec<String>, purpose, (head, sealed, tail): (String, String, String)| Spot {
            fields,
            purpose,
            head,
            sealed,
            tail,
        };
    match holder {
        Holder::Sessions => hash
            .iter()
            .map(|(f, v)| spot(vec![f.clone()], "session", record_parts(v)))
            .filter(|s| !s.sealed.is_empty())
            .collect(),
        Holder::Fields(names, purpose) => names
            .iter()
            .filter_map(|f| hash.get(*f).filter(|v| !v.is_empty()).map(|v| (f, v)))
            .map(|(f, v)| {
                let whole = (String::new(), v.clone(), String::new());
                spot(vec![f.to_string()], purpose, whole)
            })
            .collect(),
        Holder::Recordings => hash
            .iter()
            .filter(|(f, _)| f.starts_with("r:"))
            .map(|(f, v)| {
                let whole = (String::new(), v.clone(), String::new());
                spot(vec![f.clone()], "recording", whole)
            })
            .collect(),
        Holder::Idempotency | Holder::BlockedRef | Holder::Metadata => Vec::new(),
    }
}

/// The ciphertext a string of kind `holder` holds, if any.
fn string_spot(holder: Holder, value: &str) -> Option<Spot> {
    if holder == Holder::Metadata {
        return (!value.is_empty()).then(|| Spot {
            fields: Vec::new(),
            purpose: "metadata",
            head: String::new(),
            sealed: value.to_string(),
            tail: String::new(),
        });
    }
    let parts: Vec<&str> = value.splitn(4, '|').collect();
    let (purpose, at) = match (holder, parts.as_slice()) {
        (Holder::Idempotency, ["d", _, sealed, ..]) if !sealed.is_empty() => ("idempotency", 2),
        (Holder::BlockedRef, ["b", _, _, sealed]) if !sealed.is_empty() => ("block", 3),
        _ => return None,
    };
    let head: String = parts[..at].iter().map(|p| format!("{p}|")).collect();
    Some(Spot {
        fields: Vec::new(),
        purpose,
        tail: String::new(),
        sealed: value[head.len()..].to_string(),
        head,
    })
}

impl Store {
    /// The servers a key scan must walk to see every key.
    pub async fn key_nodes(&self) -> Result<Vec<Node>> {
        Ok(self.conn.nodes().await?)
    }

    /// One `SCAN` step over this prefix's keys on `node`: the next cursor (0 at the end) and
    /// the keys that may hold a ciphertext.
    pub async fn sealed_keys_step(&self, node: &Node, cursor: u64) -> Result<(u64, Vec<String>)> {
        let prefix = self.keys.prefix();
        let (next, keys) = self
            .conn
            .scan_step(node, cursor, &format!("{prefix}:*"), SCAN_COUNT)
            .await?;
        let keys = keys
            .into_iter()
            .filter(|k| Holder::of(prefix, k).is_some())
            .collect();
        Ok((next, keys))
    }

    /// The ciphertexts `key` holds now (none when it is gone).
    pub async fn sealed_spots(&self, key: &str) -> Result<Vec<Spot>> {
        let Some(holder) = Holder::of(self.keys.prefix(), key) else {
            return Ok(Vec::new());
        };
        if holder.is_hash() {
            let hash: HashMap<String, String> = self.query("HGETALL", key).await?;
            return Ok(hash_spots(holder, &hash));
        }
        let value: Option<String> = self.query("GET", key).await?;
        Ok(value
            .and_then(|v| string_spot(holder, &v))
            .into_iter()
            .collect())
    }

    /// Replaces each spot's ciphertext with its new one, each only while its value is still
    /// what was read. How many were replaced.
    pub async fn reseal_spots(&self, key: &str, spots: &[(&Spot, String)]) -> Result<u64> {
        let hash = spots.iter().any(|(s, _)| !s.fields.is_empty());
        let mut inv = RESEAL.key(key);
        inv.arg("").arg(if hash { "h" } else { "s" });
        for (spot, fresh) in spots {
            if spot.fields.is_empty() {
                inv.arg("")
                    .arg(format!("{}{}{}", spot.head, spot.sealed, spot.tail))
                    .arg(format!("{}{fresh}{}", spot.head, spot.tail));
                continue;
            }
            for field in &spot.fields {
                inv.arg(field)
                    .arg(format!("{}{}{}", spot.head, spot.sealed, spot.tail))
                    .arg(format!("{}{fresh}{}", spot.head, spot.tail));
            }
        }
        let done: u64 = inv.invoke_async(&mut self.c()).await?;
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_told_apart_by_name() {
        let of = |k: &str| Holder::of("hush", k);
        assert_eq!(of("hush:{p7.0}:s:ab3"), Some(Holder::Sessions));
        assert_eq!(of("hush:{p7.0}:y:k9z0"), Some(Holder::Metadata));
        assert_eq!(of("hush:{p7.0}:ref:telnyx:r1"), Some(Holder::BlockedRef));
        assert_eq!(
            of("hush:{p7.0}:ev:m:e1"),
            Some(Holder::Fields(&["z"], "event-numbers"))
        );
        assert_eq!(
            of("hush:{p7.0}:ox:m:t1"),
            Some(Holder::Fields(&["b"], "outbox"))
        );
        assert_eq!(of("hush:{ox}:m:t1"), Some(Holder::Fields(&["b"], "outbox")));
        assert_eq!(of("hush:idem:d"), Some(Holder::Idempotency));
        assert!(matches!(
            of("hush:pool:12"),
            Some(Holder::Fields(_, "callback-secret"))
        ));
        for other in [
            "hush:pools",
            "hush:pool_seq",
            "hush:{p7.0}:ev:q",
            "hush:{p7.0}:ox:q",
            "hush:{ox}:q",
            "hush:{p7.0}:nums",
            "hush:{p7.0}:u:Ab",
            "hush:{p7.0}:xb",
            "hushx:idem:d",
            "other:idem:d",
        ] {
            assert_eq!(of(other), None, "{other}");
        }
    }

    #[test]
    fn the_ciphertext_is_found_where_each_record_keeps_it() {
        let s = string_spot(Holder::Idempotency, "d|fp|SEALED").unwrap();
        assert_eq!((s.head.as_str(), s.sealed.as_str()), ("d|fp|", "SEALED"));
        assert!(string_spot(Holder::Idempotency, "p|fp|123|tok").is_none());
        let s = string_spot(Holder::BlockedRef, "b|sk|int_1|MSG").unwrap();
        assert_eq!((s.head.as_str(), s.sealed.as_str()), ("b|sk|int_1|", "MSG"));
        assert!(string_spot(Holder::BlockedRef, "b|sk|int_1").is_none());
        assert!(string_spot(Holder::BlockedRef, "c|sk|int_1").is_none());

        let sessions: HashMap<String, String> = [
            (
                "k93".into(),
                "o|v|+12125550100|1|2|3|A|B|c||||SEALED".into(),
            ),
            ("k94".into(), "c|v|+12125550100|1|2|3|||c||||".into()),
            (
                "k95".into(),
                "o|v|+12125550100|1|2|3|A|B|c||||SEALED2|r,w17".into(),
            ),
        ]
        .into();
        let mut spots = hash_spots(Holder::Sessions, &sessions);
        spots.sort_by(|a, b| a.fields.cmp(&b.fields));
        assert_eq!(spots.len(), 2);
        assert_eq!(spots[0].fields, ["k93"]);
        assert_eq!(spots[0].head, "o|v|+12125550100|1|2|3|A|B|c||||");
        assert_eq!(spots[0].sealed, "SEALED");
        assert_eq!(spots[0].tail, "");
        assert_eq!(spots[1].sealed, "SEALED2");
        assert_eq!(spots[1].tail, "|r,w17");
    }
}
