//! The canonical encoding of rows for reconciliation, so that the same logical row hashes the
//! same wherever it is computed: in this process, or inside a database that can compute the same
//! bytes (PostgreSQL does, to save sending rows).
//!
//! A value is encoded as a tag byte — `0` for NULL, `1` for a value — followed, for a value, by
//! the length of its canonical text as a big-endian `u32` and the UTF-8 text itself. A row is its
//! values' encodings in column order. A row's hash is the first 8 bytes of the MD5 of its
//! encoding, read as a big-endian `i64`; a chunk's digest is its row count and the sum of its rows'
//! hashes, which does not depend on the order rows are read in.

use md5::{Digest as _, Md5};

use crate::Value;

/// The canonical bytes of one row.
pub fn encode_row(values: &[Value], out: &mut Vec<u8>) {
    for value in values {
        match value {
            Value::Null | Value::Unchanged => out.push(0),
            Value::Text(text) => {
                out.push(1);
                out.extend_from_slice(&(text.len() as u32).to_be_bytes());
                out.extend_from_slice(text);
            }
        }
    }
}

pub fn row_hash(values: &[Value]) -> i64 {
    let mut bytes = Vec::with_capacity(64);
    encode_row(values, &mut bytes);
    let digest = Md5::digest(&bytes);
    i64::from_be_bytes(digest[..8].try_into().expect("md5 is 16 bytes"))
}

/// Row count and hash sum of a set of rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ChunkDigest {
    pub rows: u64,
    pub hash_sum: i128,
}

impl ChunkDigest {
    pub fn add(&mut self, values: &[Value]) {
        self.rows += 1;
        self.hash_sum += row_hash(values) as i128;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_and_empty_text_differ_and_order_does_not_matter() {
        assert_ne!(row_hash(&[Value::Null]), row_hash(&[Value::text("")]));
        assert_ne!(row_hash(&[Value::text("ab"), Value::text("c")]), row_hash(&[Value::text("a"), Value::text("bc")]));
        let (a, b) = (vec![Value::text("1")], vec![Value::text("2")]);
        let mut one = ChunkDigest::default();
        one.add(&a);
        one.add(&b);
        let mut two = ChunkDigest::default();
        two.add(&b);
        two.add(&a);
        assert_eq!(one, two);
    }

    #[test]
    fn matches_the_documented_encoding() {
        let mut bytes = Vec::new();
        encode_row(&[Value::text("é"), Value::Null], &mut bytes);
        assert_eq!(bytes, [1, 0, 0, 0, 2, 0xC3, 0xA9, 0]);
    }
}
