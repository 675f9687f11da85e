#![allow(clippy::unwrap_used)]
use super::*;
use crate::shipped::tests::{composite_table, encoder, hashed, key};
use apache_avro::types::Value;
use tunnel_shared::event::{ChangeEvent, Detection, Op};

fn event(op: Op, key: Vec<Value>) -> ChangeEvent {
    ChangeEvent {
        op,
        key,
        after: None,
        detected_by: Detection::Snapshot,
        updated_at: None,
        ts_ms: 0,
    }
}

fn integer_keys(ids: impl IntoIterator<Item = i32>) -> ShippedKeys {
    let mut t = composite_table();
    t.key = vec![1];
    let mut keys = ShippedKeys::empty(&t, &encoder(&t));
    let events: Vec<_> = ids
        .into_iter()
        .map(|i| event(Op::Read, vec![Value::Int(i)]))
        .collect();
    keys.apply(&events);
    keys
}

fn empty_integer() -> ShippedKeys {
    integer_keys([])
}

/// The generation the chunks of `cut` name.
fn generation_of(cut: &Generation) -> u64 {
    parse_chunk(&cut.chunks[0]).unwrap().0
}

fn header_of(keys: &ShippedKeys, cut: &Generation) -> Header {
    Header {
        version: Header::VERSION,
        table: "public.items".into(),
        generation: generation_of(cut),
        kind: keys.kind().into(),
        keys: keys.len(),
        bytes: cut.bytes,
        chunks: cut.chunks.len() as u32,
        checksum: cut.checksum,
        first_offset: 10,
        covers: vec![(0, 5), (1, 7)],
        events: 3,
        written_at_ms: 0,
    }
}

/// Offers the chunks as the key sets' topic would hand them out, in `order`.
fn assemble(header: &Header, cut: &Generation, order: &[usize]) -> Result<Vec<u8>, String> {
    let mut a = Assembler::new(header);
    for &i in order {
        let k = chunk_key(&header.table, i as u32);
        a.offer(k.as_bytes(), Some(&cut.chunks[i]))?;
    }
    a.finish()
}

#[test]
fn a_large_set_is_cut_into_chunks_and_put_together_again() {
    // sparse keys: array containers, about 2 bytes a key
    let keys = integer_keys((0..1_500_000).map(|i| i * 20));
    let bytes = keys.to_bytes();
    let cut = Generation::cut(42, &bytes);
    assert!(cut.chunks.len() > 2, "{} chunks", cut.chunks.len());
    assert!(cut
        .chunks
        .iter()
        .all(|c| c.len() <= CHUNK_HEADER + CHUNK_BYTES));
    let header = header_of(&keys, &cut);
    // chunks of other tables, of an older generation and tombstones in between are passed over
    let mut a = Assembler::new(&header);
    a.offer(b"public.other#keys.0", Some(b"whatever")).unwrap();
    let old = Generation::cut(41, b"old bytes");
    a.offer(chunk_key(&header.table, 0).as_bytes(), Some(&old.chunks[0]))
        .unwrap();
    a.offer(chunk_key(&header.table, 99).as_bytes(), None)
        .unwrap();
    for i in (0..cut.chunks.len()).rev() {
        let k = chunk_key(&header.table, i as u32);
        a.offer(k.as_bytes(), Some(&cut.chunks[i])).unwrap();
    }
    let back = a.finish().unwrap();
    assert_eq!(back, bytes);
    let keys_back = decode(&header, &back, empty_integer()).unwrap();
    assert_eq!(keys_back.len(), keys.len());
    assert!(keys_back.contains(&[Value::Int(29_999_980)]));
    assert!(!keys_back.contains(&[Value::Int(29_999_981)]));
}

#[test]
fn an_empty_set_is_one_empty_chunk() {
    let keys = hashed();
    let cut = Generation::cut(7, &keys.to_bytes());
    assert_eq!(cut.chunks.len(), 1);
    let header = header_of(&keys, &cut);
    let bytes = assemble(&header, &cut, &[0]).unwrap();
    assert_eq!(decode(&header, &bytes, hashed()).unwrap().len(), 0);
}

#[test]
fn an_incomplete_generation_is_refused() {
    let keys = integer_keys((0..1_000_000).map(|i| i * 7));
    let cut = Generation::cut(5, &keys.to_bytes());
    let n = cut.chunks.len();
    assert!(n >= 2);
    let header = header_of(&keys, &cut);
    let all: Vec<usize> = (0..n).collect();
    assert!(assemble(&header, &cut, &all).is_ok());
    let e = assemble(&header, &cut, &all[1..]).unwrap_err();
    assert!(e.contains("chunk 0 of"), "{e}");
    // a header that names more chunks than were written
    let mut more = header.clone();
    more.chunks += 1;
    assert!(assemble(&more, &cut, &all).is_err());
}

#[test]
fn damaged_chunks_and_headers_are_refused() {
    let keys = integer_keys(0..100_000);
    let cut = Generation::cut(9, &keys.to_bytes());
    let header = header_of(&keys, &cut);
    // a byte changed in the set: the checksum says so
    let mut damaged = Generation::cut(9, &keys.to_bytes());
    let last = damaged.chunks[0].len() - 1;
    damaged.chunks[0][last] ^= 1;
    let e = assemble(&header, &damaged, &[0]).unwrap_err();
    assert!(e.contains("checksum"), "{e}");
    // a chunk cut short, or without its magic
    let mut a = Assembler::new(&header);
    assert!(a
        .offer(
            chunk_key(&header.table, 0).as_bytes(),
            Some(&cut.chunks[0][..10])
        )
        .is_err());
    let mut a = Assembler::new(&header);
    let mut v = cut.chunks[0].clone();
    v[0] = b'X';
    assert!(a
        .offer(chunk_key(&header.table, 0).as_bytes(), Some(&v))
        .is_err());
    // a chunk that says it is another one
    let mut a = Assembler::new(&header);
    assert!(a
        .offer(chunk_key(&header.table, 1).as_bytes(), Some(&cut.chunks[0]))
        .is_err());
    // bytes that pass the checksum but are not a set of the table's kind
    let e = decode(&header, &[1, 2, 3], empty_integer()).err().unwrap();
    assert!(!e.is_empty());
    let e = decode(&header, &keys.to_bytes(), hashed()).err().unwrap();
    assert!(e.contains("kind"), "{e}");
    // a header that counts other keys
    let mut wrong = header.clone();
    wrong.keys += 1;
    assert!(decode(&wrong, &keys.to_bytes(), empty_integer()).is_err());
    // headers that are not one, or of another version or table
    assert!(load::parse_header(b"{not json", "public.items").is_err());
    assert!(load::parse_header(&[0xff, 0xfe], "public.items").is_err());
    let json = serde_json::to_vec(&header).unwrap();
    assert!(load::parse_header(&json, "public.items").is_ok());
    assert!(load::parse_header(&json, "public.other").is_err());
    let v2 = serde_json::to_vec(&Header {
        version: 2,
        ..header
    })
    .unwrap();
    assert!(load::parse_header(&v2, "public.items").is_err());
}

/// A set saved at some point, brought up to date with the messages after that point, is the
/// set rebuilt from every message.
#[test]
fn a_saved_set_and_the_messages_after_it_make_the_rebuilt_set() {
    let t = composite_table();
    let enc = encoder(&t);
    let messages: Vec<(Vec<Value>, bool)> = vec![
        (key("a", 1), true),
        (key("a", 2), true),
        (key("b", 1), true),
        // saved here
        (key("a", 2), true),
        (key("a", 2), false),
        (key("c", 3), true),
        (key("a", 1), true),
    ];
    let body = |k: &[Value]| {
        let framed = enc.encode_key(k).unwrap();
        tunnel_shared::wire::parse(&framed).unwrap().1.to_vec()
    };
    let mut all = hashed();
    let mut saved = hashed();
    for (i, (k, present)) in messages.iter().enumerate() {
        all.read_message(&body(k), *present);
        if i < 3 {
            saved.read_message(&body(k), *present);
        }
    }
    let cut = Generation::cut(1, &saved.to_bytes());
    let header = header_of(&saved, &cut);
    let bytes = assemble(&header, &cut, &[0]).unwrap();
    let mut restored = decode(&header, &bytes, hashed()).unwrap();
    for (k, present) in &messages[3..] {
        restored.read_message(&body(k), *present);
    }
    assert_eq!(restored.len(), all.len());
    for k in [key("a", 1), key("a", 2), key("b", 1), key("c", 3)] {
        assert_eq!(restored.contains(&k), all.contains(&k), "{k:?}");
    }
    assert!(!restored.contains(&key("a", 2)));
}
