//! The shipped key set saved in Kafka, so that a restarted producer reads it back with the few
//! messages shipped since instead of the table's whole topic ([`crate::shipped::rebuild`]).
//!
//! A saved set is a *generation*: the set's bytes ([`ShippedKeys::to_bytes`]) cut into chunks
//! of at most [`CHUNK_BYTES`], each a message of partition 0 of the compacted topic
//! `<prefix>._keysets` keyed `<table>#keys.<n>`, and a header (JSON) keyed `<table>#keys` in
//! the checkpoint topic. All of it is one Kafka transaction, so a `read_committed` reader sees
//! a generation whole or not at all. The header names the generation, its chunk count, size and
//! checksum, the offset from which its chunks are, and, for each partition of the table's topic, the end
//! it had when the set was taken (`covers`): the set is exactly what the messages before those
//! offsets make. A restart takes the set in and replays the messages after `covers`
//! ([`load`]). A new generation overwrites the chunk keys of the last one and deletes those past
//! its own count, so that compaction keeps one generation per table.
//!
//! The set is taken between two of the worker's transactions, when it holds every event shipped
//! and nothing else ([`save`]).

use serde::{Deserialize, Serialize};

use crate::shipped::ShippedKeys;

mod load;
mod save;

pub use load::load_or_rebuild;
pub use save::KeySetSaver;

/// Most bytes of set in one chunk (Kafka's default largest message is 1 MB).
const CHUNK_BYTES: usize = 512 * 1024;

/// What starts every chunk's value.
const MAGIC: &[u8; 4] = b"TKS1";

/// The chunk's header: magic, generation (8 bytes), index (4), count (4), big endian.
const CHUNK_HEADER: usize = 4 + 8 + 4 + 4;

/// The key of a table's header in the checkpoint topic (a table name with `#` could have no
/// topic: no table's checkpoint has this key).
pub fn header_key(table: &str) -> String {
    format!("{table}#keys")
}

/// The key of a table's chunk `index` in the key sets' topic.
fn chunk_key(table: &str, index: u32) -> String {
    format!("{table}#keys.{index}")
}

/// The header of a saved generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub version: u32,
    pub table: String,
    pub generation: u64,
    /// [`ShippedKeys::kind`] of the set saved.
    pub kind: String,
    /// Keys in the set.
    pub keys: u64,
    /// Size of the set's bytes, over all chunks.
    pub bytes: u64,
    pub chunks: u32,
    /// [`checksum`] of the set's bytes.
    pub checksum: u64,
    /// The offset of partition 0 of the key sets' topic from which the chunks are (with other
    /// tables' messages, maybe).
    pub first_offset: i64,
    /// Each partition of the table's topic with its end when the set was taken.
    pub covers: Vec<(i32, i64)>,
    /// The checkpoint's count of events then.
    pub events: u64,
    pub written_at_ms: i64,
}

impl Header {
    pub const VERSION: u32 = 1;
}

/// A generation's bytes, cut: what [`save`] ships and [`load`] puts together again.
struct Generation {
    /// The chunks' values, in order.
    chunks: Vec<Vec<u8>>,
    checksum: u64,
    bytes: u64,
}

/// SipHash-1-3 of `bytes` with fixed keys: tells a damaged set from the one saved.
fn checksum(bytes: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = siphasher::sip::SipHasher13::new_with_keys(0x7475_6e6e_656c, 0x6b65_7973);
    h.write(bytes);
    h.finish()
}

impl Generation {
    /// Cuts `bytes` into chunks (at least one, empty for an empty set).
    fn cut(generation: u64, bytes: &[u8]) -> Self {
        let pieces: Vec<&[u8]> = if bytes.is_empty() {
            vec![&[]]
        } else {
            bytes.chunks(CHUNK_BYTES).collect()
        };
        let count = pieces.len() as u32;
        let chunks = pieces
            .iter()
            .enumerate()
            .map(|(i, piece)| {
                let mut v = Vec::with_capacity(CHUNK_HEADER + piece.len());
                v.extend_from_slice(MAGIC);
                v.extend_from_slice(&generation.to_be_bytes());
                v.extend_from_slice(&(i as u32).to_be_bytes());
                v.extend_from_slice(&count.to_be_bytes());
                v.extend_from_slice(piece);
                v
            })
            .collect();
        Self {
            chunks,
            checksum: checksum(bytes),
            bytes: bytes.len() as u64,
        }
    }
}

/// One chunk's value read back: (generation, index, count, bytes).
fn parse_chunk(value: &[u8]) -> Option<(u64, u32, u32, &[u8])> {
    if value.len() < CHUNK_HEADER || &value[..4] != MAGIC {
        return None;
    }
    let generation = u64::from_be_bytes(value[4..12].try_into().ok()?);
    let index = u32::from_be_bytes(value[12..16].try_into().ok()?);
    let count = u32::from_be_bytes(value[16..20].try_into().ok()?);
    Some((generation, index, count, &value[CHUNK_HEADER..]))
}

/// Puts a generation's chunks together again as they are read, refusing anything that does not
/// match its header.
struct Assembler<'a> {
    header: &'a Header,
    prefix: String,
    slots: Vec<Option<Vec<u8>>>,
}

impl<'a> Assembler<'a> {
    fn new(header: &'a Header) -> Self {
        Self {
            header,
            prefix: format!("{}.", header_key(&header.table)),
            slots: vec![None; header.chunks as usize],
        }
    }

    /// Takes in one message of the key sets' topic (other tables', other generations' and
    /// tombstones are passed over).
    fn offer(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        let Some(index) = std::str::from_utf8(key)
            .ok()
            .and_then(|k| k.strip_prefix(self.prefix.as_str()))
            .and_then(|i| i.parse::<u32>().ok())
        else {
            return Ok(());
        };
        let Some(value) = value else { return Ok(()) };
        let Some((generation, at, count, bytes)) = parse_chunk(value) else {
            return Err(format!("chunk {index} is damaged"));
        };
        if generation != self.header.generation {
            return Ok(());
        }
        if at != index || count != self.header.chunks {
            return Err(format!(
                "chunk {index} says it is {at} of {count}, the header {} chunks",
                self.header.chunks
            ));
        }
        let slot = self
            .slots
            .get_mut(index as usize)
            .ok_or_else(|| format!("chunk {index} is past the header's {}", self.header.chunks))?;
        match slot {
            Some(seen) if seen.as_slice() != bytes => {
                Err(format!("chunk {index} read twice, different"))
            }
            _ => {
                *slot = Some(bytes.to_vec());
                Ok(())
            }
        }
    }

    /// Whether every chunk is in.
    fn complete(&self) -> bool {
        self.slots.iter().all(Option::is_some)
    }

    /// The set's bytes, once every chunk is in and they check out.
    fn finish(self) -> Result<Vec<u8>, String> {
        let mut bytes = Vec::with_capacity(usize::try_from(self.header.bytes).unwrap_or(0));
        for (i, slot) in self.slots.into_iter().enumerate() {
            let piece =
                slot.ok_or_else(|| format!("chunk {i} of {} is missing", self.header.chunks))?;
            bytes.extend_from_slice(&piece);
        }
        if bytes.len() as u64 != self.header.bytes {
            return Err(format!(
                "{} bytes in the chunks, {} in the header",
                bytes.len(),
                self.header.bytes
            ));
        }
        if checksum(&bytes) != self.header.checksum {
            return Err("the chunks do not match the header's checksum".into());
        }
        Ok(bytes)
    }
}

/// The set saved in `header` and `bytes`, taken in by `keys` (empty, of the table's kind).
fn decode(header: &Header, bytes: &[u8], mut keys: ShippedKeys) -> Result<ShippedKeys, String> {
    if header.kind != keys.kind() {
        return Err(format!(
            "a set of kind {}, the table's is {}",
            header.kind,
            keys.kind()
        ));
    }
    keys.load_bytes(bytes)?;
    if keys.len() != header.keys {
        return Err(format!(
            "{} keys read, {} in the header",
            keys.len(),
            header.keys
        ));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests;
