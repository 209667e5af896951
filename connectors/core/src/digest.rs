//! The canonical encoding of rows for reconciliation, so that the same logical row hashes the
//! same wherever it is computed: in this process, or inside a database that can compute the same
//! bytes (PostgreSQL does, to save sending rows).
//!
//! A row is encoded as a record literal over its values' canonical text, exactly as PostgreSQL's
//! `record_out` prints `ROW(a::text, b::text, ...)`: `(` values separated by `,` `)`, NULL as
//! nothing, and a value in double quotes (with `"` and `\` doubled) when it is empty or holds a
//! quote, backslash, parenthesis, comma or ASCII white space. The encoding is unambiguous, and a
//! database computes it with one cast per row. A row's hash is the first 8 bytes of the MD5 of its
//! encoding, read as a big-endian `i64`; a chunk's digest is its row count and the sum of its rows'
//! hashes, which does not depend on the order rows are read in.

use md5::{Digest as _, Md5};

use crate::Value;

/// The canonical bytes of one row.
pub fn encode_row(values: &[Value], out: &mut Vec<u8>) {
    out.push(b'(');
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let Value::Text(text) = value else { continue };
        let quoted = text.is_empty() || text.iter().any(|c| matches!(c, b'"' | b'\\' | b'(' | b')' | b',' | b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c));
        if quoted {
            out.push(b'"');
        }
        for &c in text.iter() {
            if c == b'"' || c == b'\\' {
                out.push(c);
            }
            out.push(c);
        }
        if quoted {
            out.push(b'"');
        }
    }
    out.push(b')');
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
        let encode = |values: &[Value]| {
            let mut bytes = Vec::new();
            encode_row(values, &mut bytes);
            String::from_utf8(bytes).unwrap()
        };
        assert_eq!(encode(&[Value::text("é"), Value::Null, Value::text("")]), "(é,,\"\")");
        assert_eq!(encode(&[Value::text("a \"b\"\\(c),d")]), "(\"a \"\"b\"\"\\\\(c),d\")");
        assert_eq!(encode(&[Value::text("NULL")]), "(NULL)");
    }
}
