//! PostgreSQL's COPY text format: one row a line, columns separated by tabs, `\N` for NULL,
//! backslash escapes for the characters that would break the framing.
//!
//! Snapshot rows are read and written in this format. Fields without a backslash are handed on
//! as slices of the buffer the server sent, so the common case copies nothing.

use bytes::{BufMut, Bytes, BytesMut};
use switchyard_core::Value;

/// Splits one line (without its newline) into values.
pub fn parse_line(line: Bytes, out: &mut Vec<Value>) -> Result<(), String> {
    out.clear();
    let mut start = 0;
    let bytes = &line[..];
    for i in 0..=bytes.len() {
        if i == bytes.len() || bytes[i] == b'\t' {
            out.push(parse_field(line.slice(start..i))?);
            start = i + 1;
        }
    }
    Ok(())
}

fn parse_field(field: Bytes) -> Result<Value, String> {
    if &field[..] == b"\\N" {
        return Ok(Value::Null);
    }
    if !field.contains(&b'\\') {
        return Ok(Value::Text(field));
    }
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let c = field[i];
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let next = *field.get(i + 1).ok_or("COPY field ends in a lone backslash")?;
        i += 2;
        match next {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut value = (next - b'0') as u32;
                for _ in 0..2 {
                    match field.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            value = value * 8 + (d - b'0') as u32;
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(value as u8);
            }
            b'x' => {
                let mut value = 0u32;
                let mut digits = 0;
                while digits < 2 {
                    match field.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            value = value * 16 + d;
                            i += 1;
                            digits += 1;
                        }
                        None => break,
                    }
                }
                if digits == 0 {
                    out.push(b'x');
                } else {
                    out.push(value as u8);
                }
            }
            other => out.push(other),
        }
    }
    Ok(Value::Text(Bytes::from(out)))
}

/// Appends one row as a COPY text line, newline included. `Unchanged` cannot be copied: a
/// snapshot row always has every value.
pub fn write_line(values: &[Value], out: &mut BytesMut) {
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            out.put_u8(b'\t');
        }
        match value {
            Value::Null | Value::Unchanged => out.put_slice(b"\\N"),
            Value::Text(text) => write_escaped(text, out),
        }
    }
    out.put_u8(b'\n');
}

/// Values as COPY text to end a line with, each after a tab (see `append_with_suffix`).
pub fn suffix(values: &[Value]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for value in values {
        out.put_u8(b'\t');
        match value {
            Value::Null | Value::Unchanged => out.put_slice(b"\\N"),
            Value::Text(text) => write_escaped(text, &mut out),
        }
    }
    out.to_vec()
}

/// Copies COPY text data to `out`, with `suffix` put before each newline; returns how many lines
/// it ended. Data may break anywhere, even inside a line: a newline byte only ever ends a line
/// (one inside a value travels as `\n`).
pub fn append_with_suffix(data: &[u8], suffix: &[u8], out: &mut BytesMut) -> u64 {
    if suffix.is_empty() {
        out.extend_from_slice(data);
        return memchr::memchr_iter(b'\n', data).count() as u64;
    }
    let mut lines = 0;
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', data) {
        out.extend_from_slice(&data[start..end]);
        out.extend_from_slice(suffix);
        out.put_u8(b'\n');
        start = end + 1;
        lines += 1;
    }
    out.extend_from_slice(&data[start..]);
    lines
}

fn write_escaped(text: &[u8], out: &mut BytesMut) {
    let mut start = 0;
    for (i, &c) in text.iter().enumerate() {
        let escape: &[u8] = match c {
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            _ => continue,
        };
        out.put_slice(&text[start..i]);
        out.put_slice(escape);
        start = i + 1;
    }
    out.put_slice(&text[start..]);
}

/// Cuts complete lines off the front of a buffer of COPY data as it arrives in chunks.
#[derive(Default)]
pub struct LineSplitter {
    pending: BytesMut,
}

impl LineSplitter {
    pub fn push(&mut self, chunk: &[u8]) {
        self.pending.extend_from_slice(chunk);
    }

    pub fn next_line(&mut self) -> Option<Bytes> {
        let end = self.pending.iter().position(|&c| c == b'\n')?;
        let mut line = self.pending.split_to(end + 1);
        line.truncate(end);
        Some(line.freeze())
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(values: Vec<Value>) {
        let mut out = BytesMut::new();
        write_line(&values, &mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        let line = out.freeze().slice(..);
        let mut parsed = Vec::new();
        parse_line(line.slice(..line.len() - 1), &mut parsed).unwrap();
        assert_eq!(parsed, values);
    }

    #[test]
    fn round_trips_awkward_text() {
        round_trip(vec![Value::text("plain"), Value::Null, Value::text("tab\there\nnew\\line\r")]);
        round_trip(vec![Value::text("")]);
        round_trip(vec![Value::text("\\N"), Value::text("ünïcødé ✓")]);
    }

    #[test]
    fn parses_server_escapes() {
        let mut out = Vec::new();
        parse_line(Bytes::from_static(b"a\\101\\x41\\b\tx"), &mut out).unwrap();
        assert_eq!(out, vec![Value::Text(Bytes::from_static(b"aAA\x08")), Value::text("x")]);
        assert!(parse_line(Bytes::from_static(b"bad\\"), &mut out).is_err());
    }

    #[test]
    fn suffix_goes_before_each_newline_wherever_data_breaks() {
        let suffix = suffix(&[Value::text("t\\1"), Value::Null]);
        assert_eq!(suffix, b"\tt\\\\1\t\\N");
        let data = b"1\ta\\nb\n2\t\\N\n";
        let whole = {
            let mut out = BytesMut::new();
            assert_eq!(append_with_suffix(data, &suffix, &mut out), 2);
            out
        };
        assert_eq!(&whole[..], b"1\ta\\nb\tt\\\\1\t\\N\n2\t\\N\tt\\\\1\t\\N\n");
        for cut in 0..data.len() {
            let mut out = BytesMut::new();
            let lines = append_with_suffix(&data[..cut], &suffix, &mut out) + append_with_suffix(&data[cut..], &suffix, &mut out);
            assert_eq!((lines, &out[..]), (2, &whole[..]), "cut at {cut}");
        }
        let mut plain = BytesMut::new();
        assert_eq!(append_with_suffix(data, b"", &mut plain), 2);
        assert_eq!(&plain[..], data);
    }

    #[test]
    fn splits_lines_across_chunks() {
        let mut splitter = LineSplitter::default();
        splitter.push(b"1\ta\n2\t");
        assert_eq!(splitter.next_line().unwrap(), Bytes::from_static(b"1\ta"));
        assert!(splitter.next_line().is_none());
        splitter.push(b"b\n");
        assert_eq!(splitter.next_line().unwrap(), Bytes::from_static(b"2\tb"));
        assert!(splitter.is_empty());
    }
}
