//! Decoder for the payload of one pgoutput (protocol version 1) logical replication message, i.e.
//! what follows the walsender's XLogData header.
//!
//! The input comes off the network, so every length and count is untrusted: each read checks the
//! bytes left first, and nothing is allocated in proportion to a count before the bytes that the
//! count promises are known to be there. Column values and logical-message contents are
//! [`Bytes::slice`]s of the payload, so decoding a large row does not copy it.

use bytes::Bytes;

pub use switchyard_core::Lsn;

/// Microseconds from the Unix epoch to PostgreSQL's epoch (2000-01-01 00:00:00 UTC).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Start of a transaction. `commit_time` is in microseconds since the Unix epoch.
    Begin {
        final_lsn: Lsn,
        commit_time: i64,
        xid: u32,
    },
    /// End of a transaction; `end_lsn` is what a slot confirms once the transaction is applied.
    Commit {
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time: i64,
    },
    /// The transaction was replicated from another node (replication origin).
    Origin {
        commit_lsn: Lsn,
        name: String,
    },
    /// A relation's schema; sent before the first change to it, and again after it changes.
    Relation(Relation),
    /// A non-built-in type's name, sent before a relation that uses it.
    Type {
        oid: u32,
        namespace: String,
        name: String,
    },
    Insert {
        relation: u32,
        new: Tuple,
    },
    /// `old` is present only when the replica identity changed (`Key`) or is FULL (`Full`).
    Update {
        relation: u32,
        old: Option<OldTuple>,
        new: Tuple,
    },
    Delete {
        relation: u32,
        old: OldTuple,
    },
    /// `options` bit 1 is CASCADE, bit 2 is RESTART IDENTITY.
    Truncate {
        options: u8,
        relations: Vec<u32>,
    },
    /// A logical decoding message (`pg_logical_emit_message`).
    Message {
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Bytes,
    },
}

/// A relation's schema as pgoutput describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
    pub oid: u32,
    /// Empty for `pg_catalog`.
    pub namespace: String,
    pub name: String,
    /// `relreplident`: `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<RelationColumn>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RelationColumn {
    /// Part of the replica identity key.
    pub is_key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

pub type Tuple = Vec<TupleValue>;

/// One column of a row, in the relation's column order.
#[derive(Debug, Clone, PartialEq)]
pub enum TupleValue {
    Null,
    /// A TOASTed value that did not change; the old value is not sent, so the target keeps its own.
    Unchanged,
    /// The type's text output.
    Text(Bytes),
    /// The type's binary send output (only when the subscriber asked for binary).
    Binary(Bytes),
}

/// The old row of an Update or Delete.
#[derive(Debug, Clone, PartialEq)]
pub enum OldTuple {
    /// `K`: only the replica identity key columns; the others are Null.
    Key(Tuple),
    /// `O`: the whole old row (REPLICA IDENTITY FULL).
    Full(Tuple),
}

/// Why a payload could not be decoded; `offset` is the byte of the payload where it went wrong.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("empty message")]
    Empty,
    #[error("unknown message tag {}", show(.0))]
    UnknownTag(u8),
    /// Streaming and two-phase messages exist only in protocol versions 2 and up, and we ask for 1.
    #[error("unsupported message tag {} (streaming/two-phase messages need pgoutput protocol 2+; we use 1)", show(.0))]
    Unsupported(u8),
    #[error("truncated {kind} message at byte {offset}")]
    Truncated { kind: &'static str, offset: usize },
    #[error("invalid UTF-8 in string of {kind} message at byte {offset}")]
    InvalidUtf8 { kind: &'static str, offset: usize },
    #[error("negative length {len} in {kind} message at byte {offset}")]
    NegativeLength {
        kind: &'static str,
        offset: usize,
        len: i32,
    },
    #[error("expected {expected} in {kind} message at byte {offset}, found {}", show(.found))]
    Unexpected {
        kind: &'static str,
        offset: usize,
        expected: &'static str,
        found: u8,
    },
    #[error("commit timestamp out of range in {kind} message at byte {offset}")]
    TimestampOutOfRange { kind: &'static str, offset: usize },
    /// Leftover bytes mean we misread the message (or the server speaks another protocol version).
    #[error("{count} trailing bytes after {kind} message at byte {offset}")]
    TrailingBytes {
        kind: &'static str,
        offset: usize,
        count: usize,
    },
}

/// A tag byte as `'Z'` when printable, else as `0x1f`, so errors stay readable.
fn show(b: &u8) -> String {
    if b.is_ascii_graphic() || *b == b' ' {
        format!("'{}'", char::from(*b))
    } else {
        format!("0x{b:02x}")
    }
}

/// Decode one pgoutput message (the XLogData payload, starting with its tag byte).
///
/// # Errors
///
/// Any payload that is not exactly one well-formed protocol-1 message, including trailing bytes;
/// streaming and two-phase messages give [`DecodeError::Unsupported`].
pub fn decode(payload: Bytes) -> Result<Message, DecodeError> {
    let Some(&tag) = payload.first() else {
        return Err(DecodeError::Empty);
    };
    let kind = match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "logical decoding",
        // Stream start/stop/commit/abort (v2), begin prepare/prepare/commit prepared/rollback
        // prepared/stream prepare (v3).
        b'S' | b'E' | b'c' | b'A' | b'b' | b'P' | b'K' | b'r' | b'p' => {
            return Err(DecodeError::Unsupported(tag))
        }
        _ => return Err(DecodeError::UnknownTag(tag)),
    };
    let mut r = Reader {
        buf: payload,
        pos: 1,
        kind,
    };
    let message = match tag {
        b'B' => Message::Begin {
            final_lsn: r.lsn()?,
            commit_time: r.timestamp()?,
            xid: r.u32()?,
        },
        b'C' => Message::Commit {
            flags: r.u8()?,
            commit_lsn: r.lsn()?,
            end_lsn: r.lsn()?,
            commit_time: r.timestamp()?,
        },
        b'O' => Message::Origin {
            commit_lsn: r.lsn()?,
            name: r.string()?,
        },
        b'R' => Message::Relation(r.relation()?),
        b'Y' => Message::Type {
            oid: r.u32()?,
            namespace: r.string()?,
            name: r.string()?,
        },
        b'I' => {
            let relation = r.u32()?;
            r.expect(b'N', "'N'")?;
            Message::Insert {
                relation,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relation = r.u32()?;
            let at = r.pos;
            let old = match r.u8()? {
                b'K' => Some(OldTuple::Key(r.tuple()?)),
                b'O' => Some(OldTuple::Full(r.tuple()?)),
                b'N' => None,
                found => return Err(r.unexpected(at, "'K', 'O' or 'N'", found)),
            };
            if old.is_some() {
                r.expect(b'N', "'N'")?;
            }
            Message::Update {
                relation,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation = r.u32()?;
            let at = r.pos;
            let old = match r.u8()? {
                b'K' => OldTuple::Key(r.tuple()?),
                b'O' => OldTuple::Full(r.tuple()?),
                found => return Err(r.unexpected(at, "'K' or 'O'", found)),
            };
            Message::Delete { relation, old }
        }
        b'T' => r.truncate()?,
        b'M' => Message::Message {
            transactional: r.u8()? & 1 != 0,
            lsn: r.lsn()?,
            prefix: r.string()?,
            content: r.counted()?,
        },
        _ => unreachable!("tags are filtered above"),
    };
    r.finish()?;
    Ok(message)
}

/// A cursor over the payload that turns every short read into a `Truncated` error.
struct Reader {
    buf: Bytes,
    pos: usize,
    /// The message kind, for error messages.
    kind: &'static str,
}

impl Reader {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn truncated(&self) -> DecodeError {
        DecodeError::Truncated {
            kind: self.kind,
            offset: self.pos,
        }
    }

    fn unexpected(&self, offset: usize, expected: &'static str, found: u8) -> DecodeError {
        DecodeError::Unexpected {
            kind: self.kind,
            offset,
            expected,
            found,
        }
    }

    /// The next `n` bytes as a slice of the payload (no copy).
    fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if self.remaining() < n {
            return Err(self.truncated());
        }
        let out = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let bytes = self
            .buf
            .get(self.pos..self.pos + N)
            .ok_or_else(|| self.truncated())?;
        let mut out = [0; N];
        out.copy_from_slice(bytes);
        self.pos += N;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    fn lsn(&mut self) -> Result<Lsn, DecodeError> {
        Ok(Lsn(u64::from_be_bytes(self.array()?)))
    }

    /// A TimestampTz (microseconds since 2000-01-01) as microseconds since the Unix epoch.
    fn timestamp(&mut self) -> Result<i64, DecodeError> {
        let offset = self.pos;
        let pg = self.i64()?;
        pg.checked_add(PG_EPOCH_OFFSET_MICROS)
            .ok_or(DecodeError::TimestampOutOfRange {
                kind: self.kind,
                offset,
            })
    }

    /// A NUL-terminated UTF-8 string; the NUL is consumed, not returned.
    fn string(&mut self) -> Result<String, DecodeError> {
        let start = self.pos;
        let rest = &self.buf[start..];
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.truncated())?;
        let s = std::str::from_utf8(&rest[..len])
            .map_err(|e| DecodeError::InvalidUtf8 {
                kind: self.kind,
                offset: start + e.valid_up_to(),
            })?
            .to_owned();
        self.pos = start + len + 1;
        Ok(s)
    }

    /// An Int32 length followed by that many bytes.
    fn counted(&mut self) -> Result<Bytes, DecodeError> {
        let offset = self.pos;
        let len = self.i32()?;
        let len = usize::try_from(len).map_err(|_| DecodeError::NegativeLength {
            kind: self.kind,
            offset,
            len,
        })?;
        self.take(len)
    }

    fn expect(&mut self, want: u8, expected: &'static str) -> Result<(), DecodeError> {
        let offset = self.pos;
        match self.u8()? {
            b if b == want => Ok(()),
            found => Err(self.unexpected(offset, expected, found)),
        }
    }

    /// TupleData: Int16 column count, then per column a kind byte and maybe a counted value.
    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let n = usize::from(self.u16()?);
        // Every column takes at least its kind byte, so never reserve more than the bytes left.
        let mut values = Vec::with_capacity(n.min(self.remaining()));
        for _ in 0..n {
            let offset = self.pos;
            values.push(match self.u8()? {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::Unchanged,
                b't' => TupleValue::Text(self.counted()?),
                b'b' => TupleValue::Binary(self.counted()?),
                found => {
                    return Err(self.unexpected(offset, "column kind 'n', 'u', 't' or 'b'", found))
                }
            });
        }
        Ok(values)
    }

    fn relation(&mut self) -> Result<Relation, DecodeError> {
        let oid = self.u32()?;
        let namespace = self.string()?;
        let name = self.string()?;
        let replica_identity = self.u8()?;
        let n = usize::from(self.u16()?);
        // A column is at least flags (1) + empty name (1) + type oid (4) + typmod (4) bytes.
        let mut columns = Vec::with_capacity(n.min(self.remaining() / 10));
        for _ in 0..n {
            columns.push(RelationColumn {
                is_key: self.u8()? & 1 != 0,
                name: self.string()?,
                type_oid: self.u32()?,
                type_modifier: self.i32()?,
            });
        }
        Ok(Relation {
            oid,
            namespace,
            name,
            replica_identity,
            columns,
        })
    }

    fn truncate(&mut self) -> Result<Message, DecodeError> {
        let n = self.u32()?;
        let options = self.u8()?;
        // Check the whole oid array is there before reserving room for it.
        if u64::from(n) * 4 > self.remaining() as u64 {
            return Err(self.truncated());
        }
        let relations = (0..n).map(|_| self.u32()).collect::<Result<_, _>>()?;
        Ok(Message::Truncate { options, relations })
    }

    fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes {
                kind: self.kind,
                offset: self.pos,
                count,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds wire-format payloads for tests.
    struct W(Vec<u8>);

    impl W {
        fn tag(t: u8) -> W {
            W(vec![t])
        }
        fn raw(mut self, b: &[u8]) -> W {
            self.0.extend_from_slice(b);
            self
        }
        fn u8(self, v: u8) -> W {
            self.raw(&[v])
        }
        fn u16(self, v: u16) -> W {
            self.raw(&v.to_be_bytes())
        }
        fn u32(self, v: u32) -> W {
            self.raw(&v.to_be_bytes())
        }
        fn i32(self, v: i32) -> W {
            self.raw(&v.to_be_bytes())
        }
        fn i64(self, v: i64) -> W {
            self.raw(&v.to_be_bytes())
        }
        fn u64(self, v: u64) -> W {
            self.raw(&v.to_be_bytes())
        }
        fn str(self, s: &str) -> W {
            self.raw(s.as_bytes()).u8(0)
        }
        /// A 't' or 'b' column value.
        fn val(self, kind: u8, data: &[u8]) -> W {
            self.u8(kind).i32(data.len() as i32).raw(data)
        }
        fn bytes(self) -> Bytes {
            Bytes::from(self.0)
        }
    }

    const UNIX_2000: i64 = PG_EPOCH_OFFSET_MICROS;

    fn text(s: &str) -> TupleValue {
        TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// One valid payload per message kind (and per Update/Delete shape), with its decoding.
    fn samples() -> Vec<(Bytes, Message)> {
        let key_tuple = |w: W| w.u16(3).val(b't', b"42").u8(b'n').u8(b'n');
        let full_tuple = |w: W| w.u16(3).val(b't', b"42").val(b't', b"old").u8(b'n');
        let new_tuple = |w: W| w.u16(3).val(b't', b"42").val(b't', b"new").u8(b'u');
        let key = vec![text("42"), TupleValue::Null, TupleValue::Null];
        let full = vec![text("42"), text("old"), TupleValue::Null];
        let new = vec![text("42"), text("new"), TupleValue::Unchanged];
        vec![
            (
                W::tag(b'B')
                    .u64(0x16_B374_D848)
                    .i64(1_000_000)
                    .u32(770)
                    .bytes(),
                Message::Begin {
                    final_lsn: Lsn(0x16_B374_D848),
                    commit_time: UNIX_2000 + 1_000_000,
                    xid: 770,
                },
            ),
            (
                W::tag(b'C').u8(0).u64(0x100).u64(0x180).i64(-5).bytes(),
                Message::Commit {
                    flags: 0,
                    commit_lsn: Lsn(0x100),
                    end_lsn: Lsn(0x180),
                    commit_time: UNIX_2000 - 5,
                },
            ),
            (
                W::tag(b'O').u64(0x200).str("node_a").bytes(),
                Message::Origin {
                    commit_lsn: Lsn(0x200),
                    name: "node_a".into(),
                },
            ),
            (
                W::tag(b'R')
                    .u32(16384)
                    .str("public")
                    .str("accounts")
                    .u8(b'd')
                    .u16(2)
                    .raw(&[1])
                    .str("id")
                    .u32(20)
                    .i32(-1)
                    .raw(&[0])
                    .str("name")
                    .u32(1043)
                    .i32(68)
                    .bytes(),
                Message::Relation(Relation {
                    oid: 16384,
                    namespace: "public".into(),
                    name: "accounts".into(),
                    replica_identity: b'd',
                    columns: vec![
                        RelationColumn {
                            is_key: true,
                            name: "id".into(),
                            type_oid: 20,
                            type_modifier: -1,
                        },
                        RelationColumn {
                            is_key: false,
                            name: "name".into(),
                            type_oid: 1043,
                            type_modifier: 68,
                        },
                    ],
                }),
            ),
            (
                W::tag(b'Y').u32(90000).str("public").str("mood").bytes(),
                Message::Type {
                    oid: 90000,
                    namespace: "public".into(),
                    name: "mood".into(),
                },
            ),
            (
                W::tag(b'I')
                    .u32(16384)
                    .u8(b'N')
                    .u16(4)
                    .u8(b'n')
                    .u8(b'u')
                    .val(b't', "héllo".as_bytes())
                    .val(b'b', &[0, 0xff, 0])
                    .bytes(),
                Message::Insert {
                    relation: 16384,
                    new: vec![
                        TupleValue::Null,
                        TupleValue::Unchanged,
                        text("héllo"),
                        TupleValue::Binary(Bytes::from_static(&[0, 0xff, 0])),
                    ],
                },
            ),
            (
                new_tuple(key_tuple(W::tag(b'U').u32(7).u8(b'K')).u8(b'N')).bytes(),
                Message::Update {
                    relation: 7,
                    old: Some(OldTuple::Key(key.clone())),
                    new: new.clone(),
                },
            ),
            (
                new_tuple(full_tuple(W::tag(b'U').u32(7).u8(b'O')).u8(b'N')).bytes(),
                Message::Update {
                    relation: 7,
                    old: Some(OldTuple::Full(full.clone())),
                    new: new.clone(),
                },
            ),
            (
                new_tuple(W::tag(b'U').u32(7).u8(b'N')).bytes(),
                Message::Update {
                    relation: 7,
                    old: None,
                    new: new.clone(),
                },
            ),
            (
                key_tuple(W::tag(b'D').u32(7).u8(b'K')).bytes(),
                Message::Delete {
                    relation: 7,
                    old: OldTuple::Key(key),
                },
            ),
            (
                full_tuple(W::tag(b'D').u32(7).u8(b'O')).bytes(),
                Message::Delete {
                    relation: 7,
                    old: OldTuple::Full(full),
                },
            ),
            (
                W::tag(b'T').u32(2).u8(3).u32(16384).u32(16390).bytes(),
                Message::Truncate {
                    options: 3,
                    relations: vec![16384, 16390],
                },
            ),
            (
                W::tag(b'M')
                    .u8(1)
                    .u64(0x300)
                    .str("switchyard")
                    .i32(5)
                    .raw(b"hello")
                    .bytes(),
                Message::Message {
                    transactional: true,
                    lsn: Lsn(0x300),
                    prefix: "switchyard".into(),
                    content: Bytes::from_static(b"hello"),
                },
            ),
            (
                W::tag(b'M').u8(0).u64(0x301).str("").i32(0).bytes(),
                Message::Message {
                    transactional: false,
                    lsn: Lsn(0x301),
                    prefix: String::new(),
                    content: Bytes::new(),
                },
            ),
        ]
    }

    #[test]
    fn decodes_every_message_kind() {
        for (payload, want) in samples() {
            assert_eq!(decode(payload.clone()), Ok(want), "payload {payload:?}");
        }
    }

    #[test]
    fn commit_time_is_unix_micros() {
        // 2024-01-01T00:00:00Z is 757_382_400 s after 2000-01-01 and 1_704_067_200 s after 1970.
        let p = W::tag(b'B').u64(1).i64(757_382_400_000_000).u32(1).bytes();
        let Ok(Message::Begin { commit_time, .. }) = decode(p) else {
            panic!()
        };
        assert_eq!(commit_time, 1_704_067_200_000_000);
    }

    #[test]
    fn values_are_slices_of_the_payload() {
        let payload = W::tag(b'I')
            .u32(1)
            .u8(b'N')
            .u16(2)
            .val(b't', b"abc")
            .val(b'b', b"xyz")
            .bytes();
        let range = payload.as_ptr_range();
        let Ok(Message::Insert { new, .. }) = decode(payload.clone()) else {
            panic!()
        };
        for value in &new {
            let (TupleValue::Text(b) | TupleValue::Binary(b)) = value else {
                panic!("{value:?}")
            };
            assert!(range.contains(&b.as_ptr()), "value was copied");
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        for (payload, _) in samples() {
            assert_eq!(decode(payload.slice(..0)), Err(DecodeError::Empty));
            for len in 1..payload.len() {
                let got = decode(payload.slice(..len));
                assert!(
                    matches!(got, Err(DecodeError::Truncated { offset, .. }) if offset <= len),
                    "prefix {len} of {payload:?} gave {got:?}"
                );
            }
        }
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        for (payload, _) in samples() {
            let mut longer = payload.to_vec();
            longer.push(0);
            let got = decode(Bytes::from(longer));
            assert!(
                matches!(got, Err(DecodeError::TrailingBytes { count: 1, offset, .. }) if offset == payload.len()),
                "{got:?}"
            );
        }
    }

    #[test]
    fn errors_say_what_and_where() {
        let msg = |p: Bytes| decode(p).unwrap_err().to_string();
        assert_eq!(msg(Bytes::from_static(b"Z")), "unknown message tag 'Z'");
        assert_eq!(msg(Bytes::from_static(b"\x01")), "unknown message tag 0x01");
        assert_eq!(
            msg(W::tag(b'I').u32(1).u8(b'N').u16(1).u8(b't').bytes()),
            "truncated Insert message at byte 9"
        );
        assert_eq!(
            msg(W::tag(b'I').u32(1).u8(b'X').bytes()),
            "expected 'N' in Insert message at byte 5, found 'X'"
        );
        assert_eq!(
            msg(W::tag(b'I').u32(1).u8(b'N').u16(1).i32(0).bytes()),
            "expected column kind 'n', 'u', 't' or 'b' in Insert message at byte 8, found 0x00"
        );
        assert_eq!(
            msg(W::tag(b'I').u32(1).u8(b'N').u16(1).u8(b't').i32(-1).bytes()),
            "negative length -1 in Insert message at byte 9"
        );
        assert_eq!(
            msg(W::tag(b'Y').u32(1).raw(b"pub\xfflic\0").str("t").bytes()),
            "invalid UTF-8 in string of Type message at byte 8"
        );
        assert_eq!(
            msg(W::tag(b'O').u64(1).raw(b"abc").bytes()),
            "truncated Origin message at byte 9"
        );
        assert_eq!(
            msg(W::tag(b'C').u8(0).u64(1).u64(2).i64(i64::MAX).bytes()),
            "commit timestamp out of range in Commit message at byte 18"
        );
        assert_eq!(
            msg(W::tag(b'D').u32(1).u8(b'N').bytes()),
            "expected 'K' or 'O' in Delete message at byte 5, found 'N'"
        );
        assert_eq!(msg(Bytes::new()), "empty message");
        for tag in *b"SEcAbPKrp" {
            assert_eq!(
                decode(W::tag(tag).u32(0).bytes()),
                Err(DecodeError::Unsupported(tag))
            );
        }
    }

    #[test]
    fn absurd_counts_fail_without_allocating() {
        // 65535 columns promised, 3 bytes present.
        let p = W::tag(b'I')
            .u32(1)
            .u8(b'N')
            .u16(u16::MAX)
            .raw(b"nnn")
            .bytes();
        assert_eq!(
            decode(p),
            Err(DecodeError::Truncated {
                kind: "Insert",
                offset: 11
            })
        );
        let p = W::tag(b'R')
            .u32(1)
            .str("s")
            .str("t")
            .u8(b'd')
            .u16(u16::MAX)
            .raw(&[1, 0])
            .bytes();
        assert!(matches!(decode(p), Err(DecodeError::Truncated { .. })));
        let p = W::tag(b'T').u32(u32::MAX).u8(0).u32(1).bytes();
        assert_eq!(
            decode(p),
            Err(DecodeError::Truncated {
                kind: "Truncate",
                offset: 6
            })
        );
        let p = W::tag(b'M')
            .u8(0)
            .u64(1)
            .str("p")
            .i32(i32::MAX)
            .raw(b"x")
            .bytes();
        assert_eq!(
            decode(p),
            Err(DecodeError::Truncated {
                kind: "logical decoding",
                offset: 16
            })
        );
        let p = W::tag(b'M').u8(0).u64(1).str("p").i32(i32::MIN).bytes();
        assert!(matches!(
            decode(p),
            Err(DecodeError::NegativeLength { len: i32::MIN, .. })
        ));
    }

    /// xorshift64*: deterministic, dependency-free randomness for the robustness test.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn byte(&mut self) -> u8 {
            self.next() as u8
        }
    }

    /// Random and mutated-valid payloads must decode to Ok or Err, never panic.
    #[test]
    fn random_and_mutated_input_never_panics() {
        let corpus: Vec<Vec<u8>> = samples().into_iter().map(|(p, _)| p.to_vec()).collect();
        let tags = b"BCORYIUDTMSZ";
        let mut rng = Rng(0x5EED_CAFE_F00D_1234);
        let (mut ok, mut err) = (0, 0);
        for _ in 0..200_000 {
            let buf = if rng.below(4) == 0 {
                let mut buf: Vec<u8> = (0..rng.below(48)).map(|_| rng.byte()).collect();
                if !buf.is_empty() && rng.below(4) != 0 {
                    buf[0] = tags[rng.below(tags.len())];
                }
                buf
            } else {
                let mut buf = corpus[rng.below(corpus.len())].clone();
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(buf.len() + 1);
                    match rng.below(6) {
                        0 if at < buf.len() => buf[at] = rng.byte(),
                        1 => buf.truncate(at),
                        2 => buf.insert(at, rng.byte()),
                        // Absurd lengths and counts: 0xFFFF.., 0x7FFF.., 0x8000.. over 2 or 4 bytes.
                        3 => {
                            let fill = [0xFF, 0x7F, 0x80][rng.below(3)];
                            let width = [2, 4][rng.below(2)];
                            for (i, slot) in buf.iter_mut().skip(at).take(width).enumerate() {
                                *slot = if i == 0 {
                                    fill
                                } else if fill == 0x80 {
                                    0
                                } else {
                                    0xFF
                                };
                            }
                        }
                        4 if at < buf.len() => {
                            buf.remove(at);
                        }
                        _ => {
                            let tail = buf[at..].to_vec();
                            buf.extend_from_slice(&tail);
                        }
                    }
                }
                buf
            };
            match decode(Bytes::from(buf)) {
                Ok(_) => ok += 1,
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    err += 1;
                }
            }
        }
        assert_eq!(ok + err, 200_000);
        assert!(
            ok > 0 && err > 0,
            "mutations should hit both outcomes: ok={ok} err={err}"
        );
    }
}
