//! PostgreSQL's COPY binary format, for snapshot rows passed from source to target untouched.
//!
//! The target then runs each type's receive function instead of parsing text (about a fifth
//! less work per row for the S=1 orders table), and the source runs send functions instead of
//! output functions. Only types whose binary form means the same on both servers qualify
//! (`binary_safe`), on servers of one major version.

use bytes::{BufMut, BytesMut};

/// The file header's fixed part: signature, flags (no OIDs), header extension length (none).
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
const HEADER_FIXED: usize = SIGNATURE.len() + 4 + 4;

/// Built-in scalar types whose binary form is the same value on any server of a major version:
/// no embedded OIDs (unlike the `reg*` types, arrays and records) and no settings in play.
/// Columns of other types are copied as text.
const BINARY_SAFE: &[u32] = &[
    16,   // bool
    17,   // bytea
    20,   // int8
    21,   // int2
    23,   // int4
    25,   // text
    114,  // json
    700,  // float4
    701,  // float8
    1042, // bpchar
    1043, // varchar
    1082, // date
    1083, // time
    1114, // timestamp
    1184, // timestamptz
    1186, // interval
    1266, // timetz
    1700, // numeric
    2950, // uuid
    3802, // jsonb
];

/// Whether a column may travel in binary: the same safe type, modifiers included, on both sides.
pub fn binary_safe(source_oid: u32, source_type: &str, target_oid: u32, target_type: &str) -> bool {
    source_oid == target_oid && source_type == target_type && BINARY_SAFE.contains(&source_oid)
}

/// The header a binary COPY's data begins with.
pub fn header(out: &mut BytesMut) {
    out.put_slice(SIGNATURE);
    out.put_i32(0);
    out.put_i32(0);
}

/// The trailer that ends a binary COPY's data.
pub fn trailer(out: &mut BytesMut) {
    out.put_i16(-1);
}

/// One field as a binary COPY tuple carries it (`None` is NULL).
pub fn field(value: Option<&[u8]>, out: &mut Vec<u8>) {
    match value {
        Some(bytes) => {
            out.put_i32(bytes.len() as i32);
            out.put_slice(bytes);
        }
        None => out.put_i32(-1),
    }
}

/// Re-frames a source's binary COPY data for the target: the source's header and trailer are
/// dropped (the load writes its own) and each tuple gets constant fields appended. Data may
/// break anywhere; an incomplete tuple waits for the rest.
#[derive(Default)]
pub struct TupleAppender {
    pending: BytesMut,
    header_read: bool,
    ended: bool,
}

impl TupleAppender {
    /// Appends the complete tuples of `data` to `out`, each followed by `suffix` (`extra`
    /// fields made with [`field`]); returns how many tuples it ended.
    pub fn push(&mut self, data: &[u8], suffix: &[u8], extra: u16, out: &mut BytesMut) -> Result<u64, String> {
        if self.pending.is_empty() {
            let (tuples, used) = self.take(data, suffix, extra, out)?;
            self.pending.extend_from_slice(&data[used..]);
            return Ok(tuples);
        }
        self.pending.extend_from_slice(data);
        let pending = std::mem::take(&mut self.pending);
        let (tuples, used) = self.take(&pending, suffix, extra, out)?;
        self.pending.extend_from_slice(&pending[used..]);
        Ok(tuples)
    }

    /// The data ended: it must have ended with the trailer, after whole tuples.
    pub fn finish(&self) -> Result<(), String> {
        match (self.ended, self.pending.is_empty()) {
            (true, true) => Ok(()),
            (false, _) => Err("binary COPY data ended without its trailer".into()),
            (true, false) => Err("binary COPY data continues after its trailer".into()),
        }
    }

    /// Appends the complete tuples at the front of `data`; returns them and the bytes used.
    fn take(&mut self, data: &[u8], suffix: &[u8], extra: u16, out: &mut BytesMut) -> Result<(u64, usize), String> {
        let mut at = 0;
        if !self.header_read {
            let seen = data.len().min(SIGNATURE.len());
            if data[..seen] != SIGNATURE[..seen] {
                return Err("binary COPY data does not begin with PGCOPY's signature".into());
            }
            if data.len() < HEADER_FIXED {
                return Ok((0, 0));
            }
            let extension = i32_at(data, SIGNATURE.len() + 4) as usize;
            if data.len() < HEADER_FIXED + extension {
                return Ok((0, 0));
            }
            at = HEADER_FIXED + extension;
            self.header_read = true;
        }
        let mut tuples = 0;
        while data.len() - at >= 2 && !self.ended {
            let count = i16::from_be_bytes([data[at], data[at + 1]]);
            if count == -1 {
                self.ended = true;
                at += 2;
                break;
            }
            if count < 0 {
                return Err(format!("binary COPY tuple with {count} fields"));
            }
            let Some(end) = tuple_end(data, at + 2, count as usize)? else { break };
            let fields = (count as u16).checked_add(extra).ok_or("too many fields in a binary COPY tuple")?;
            out.put_u16(fields);
            out.put_slice(&data[at + 2..end]);
            out.put_slice(suffix);
            tuples += 1;
            at = end;
        }
        if self.ended && at < data.len() {
            return Err("binary COPY data continues after its trailer".into());
        }
        Ok((tuples, at))
    }
}

/// Where the tuple whose `count` fields start at `at` ends, if `data` holds all of it.
fn tuple_end(data: &[u8], mut at: usize, count: usize) -> Result<Option<usize>, String> {
    for _ in 0..count {
        if data.len() - at < 4 {
            return Ok(None);
        }
        let length = i32_at(data, at);
        at += 4;
        if length < -1 {
            return Err(format!("binary COPY field of length {length}"));
        }
        if length > 0 {
            if data.len() - at < length as usize {
                return Ok(None);
            }
            at += length as usize;
        }
    }
    Ok(Some(at))
}

fn i32_at(data: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(fields: &[Option<&[u8]>]) -> Vec<u8> {
        let mut out = (fields.len() as u16).to_be_bytes().to_vec();
        for value in fields {
            field(*value, &mut out);
        }
        out
    }

    fn source_data(tuples: &[Vec<u8>]) -> Vec<u8> {
        let mut out = BytesMut::new();
        header(&mut out);
        let mut data = out.to_vec();
        for t in tuples {
            data.extend_from_slice(t);
        }
        data.extend_from_slice(&(-1i16).to_be_bytes());
        data
    }

    #[test]
    fn appends_constant_fields_to_every_tuple_wherever_data_breaks() {
        let data = source_data(&[tuple(&[Some(b"\0\0\0\x01"), None, Some(b"")]), tuple(&[Some(b"abc"), Some(b"de"), None])]);
        let mut suffix = Vec::new();
        field(Some(b"tenant"), &mut suffix);
        field(None, &mut suffix);
        let expected: Vec<u8> = [
            tuple(&[Some(b"\0\0\0\x01"), None, Some(b""), Some(b"tenant"), None]),
            tuple(&[Some(b"abc"), Some(b"de"), None, Some(b"tenant"), None]),
        ]
        .concat();
        for cut in 0..=data.len() {
            for second in cut..=data.len() {
                let mut appender = TupleAppender::default();
                let mut out = BytesMut::new();
                let mut tuples = 0;
                for part in [&data[..cut], &data[cut..second], &data[second..]] {
                    tuples += appender.push(part, &suffix, 2, &mut out).unwrap();
                }
                appender.finish().unwrap();
                assert_eq!((tuples, &out[..]), (2, &expected[..]), "cuts at {cut} and {second}");
            }
        }
    }

    #[test]
    fn refuses_data_that_is_not_binary_copy() {
        let mut out = BytesMut::new();
        let mut appender = TupleAppender::default();
        assert!(appender.push(b"1\tabc\n2\tdef\n3\tghi\n", b"", 0, &mut out).is_err());

        let mut cut_short = TupleAppender::default();
        let data = source_data(&[tuple(&[Some(b"abc")])]);
        cut_short.push(&data[..data.len() - 3], b"", 0, &mut out).unwrap();
        assert!(cut_short.finish().is_err(), "a tuple without its end is an error, not a lost row");

        let mut trailing = TupleAppender::default();
        let mut data = source_data(&[]);
        data.push(0);
        assert!(trailing.push(&data, b"", 0, &mut out).is_err());
    }

    #[test]
    fn only_same_safe_types_travel_in_binary() {
        assert!(binary_safe(1700, "numeric(12,2)", 1700, "numeric(12,2)"));
        assert!(!binary_safe(1700, "numeric(12,2)", 1700, "numeric(12,4)"), "modifiers differ");
        assert!(!binary_safe(23, "integer", 20, "bigint"), "types differ: the target casts text");
        assert!(!binary_safe(2205, "regclass", 2205, "regclass"), "an OID that differs between servers");
        assert!(!binary_safe(1007, "integer[]", 1007, "integer[]"), "arrays carry element OIDs");
        assert!(!binary_safe(16390, "mood", 16390, "mood"), "user-defined types have no common OID");
    }
}
