//! The pure half of the walsender protocol: cutting backend frames out of a read buffer,
//! decoding replication messages, encoding status updates, building replication commands and
//! turning a server's ErrorResponse into an error that says what to fix. Nothing here does I/O,
//! so all of it is tested against byte buffers, without a server.

use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::message::backend::{self, DataRowBody, ErrorResponseBody, Message};
use switchyard_core::{ConnectorError, Lsn};
use tokio_postgres::fallible_iterator::FallibleIterator;

use super::ReplicationMessage;

const COPY_BOTH_RESPONSE_TAG: u8 = b'W';
const XLOG_DATA_TAG: u8 = b'w';
const PRIMARY_KEEPALIVE_TAG: u8 = b'k';
const STANDBY_STATUS_UPDATE_TAG: u8 = b'r';
/// PostgreSQL timestamps count from 2000-01-01 UTC; this is that instant in Unix seconds.
const POSTGRES_EPOCH_UNIX_SECONDS: u64 = 946_684_800;
/// No backend message is this large; a bigger length means a corrupt or hostile stream, and
/// believing it would make us reserve gigabytes.
const MAX_FRAME_LEN: usize = 1 << 30;

/// Who we talked to, for error messages that name the server, user and database.
#[derive(Clone, Debug)]
pub(super) struct Peer {
    pub(super) address: String,
    pub(super) user: String,
    pub(super) database: String,
}

/// A backend frame: a message postgres-protocol parses, or CopyBothResponse, which it does not.
pub(super) enum BackendFrame {
    CopyBothResponse,
    Message(Message),
}

/// Removes one complete frame from the front of `buffer`; None if it holds only part of one.
pub(super) fn parse_backend_frame(buffer: &mut BytesMut) -> io::Result<Option<BackendFrame>> {
    let Some(header) = backend::Header::parse(buffer)? else { return Ok(None) };
    let frame_len = header.len() as usize + 1; // Header::parse rejects lengths below 4
    if frame_len > MAX_FRAME_LEN {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {frame_len} bytes")));
    }
    if header.tag() != COPY_BOTH_RESPONSE_TAG {
        return Ok(Message::parse(buffer)?.map(BackendFrame::Message));
    }
    if buffer.len() < frame_len {
        buffer.reserve(frame_len - buffer.len());
        return Ok(None);
    }
    buffer.advance(frame_len); // the body only lists column formats, which logical streams ignore
    Ok(Some(BackendFrame::CopyBothResponse))
}

/// What one frame of the CopyBoth stream means to the reader.
#[derive(Debug)]
pub(super) enum StreamFrame {
    Replication(ReplicationMessage),
    CopyEnded,
    ServerError(ServerError),
    Ignored,
}

/// Removes and decodes one complete stream frame from `buffer`; None if it is incomplete.
pub(super) fn parse_stream_frame(buffer: &mut BytesMut) -> Result<Option<StreamFrame>, ConnectorError> {
    let Some(frame) = parse_backend_frame(buffer).map_err(protocol_error)? else { return Ok(None) };
    let decoded = match frame {
        BackendFrame::Message(Message::CopyData(body)) => match decode_replication_payload(body.into_bytes())? {
            Some(message) => StreamFrame::Replication(message),
            None => StreamFrame::Ignored,
        },
        BackendFrame::Message(Message::CopyDone | Message::CommandComplete(_)) => StreamFrame::CopyEnded,
        BackendFrame::Message(Message::ErrorResponse(body)) => StreamFrame::ServerError(ServerError::from_body(&body)),
        _ => StreamFrame::Ignored, // NoticeResponse, ParameterStatus
    };
    Ok(Some(decoded))
}

/// Decodes the payload of a CopyData message; None for kinds this client does not use.
fn decode_replication_payload(payload: Bytes) -> Result<Option<ReplicationMessage>, ConnectorError> {
    let Some(&kind) = payload.first() else { return Err(protocol_error("empty CopyData message")) };
    let mut fields = &payload[1..];
    match kind {
        XLOG_DATA_TAG => {
            if fields.len() < 24 {
                return Err(protocol_error("XLogData shorter than its header"));
            }
            let wal_start = Lsn(fields.get_u64());
            let wal_end = Lsn(fields.get_u64());
            let _server_clock = fields.get_i64();
            Ok(Some(ReplicationMessage::XLogData { wal_start, wal_end, data: payload.slice(25..) }))
        }
        PRIMARY_KEEPALIVE_TAG => {
            if fields.len() < 17 {
                return Err(protocol_error("primary keepalive shorter than 18 bytes"));
            }
            let wal_end = Lsn(fields.get_u64());
            let _server_clock = fields.get_i64();
            Ok(Some(ReplicationMessage::KeepAlive { wal_end, reply_requested: fields.get_u8() != 0 }))
        }
        other => {
            tracing::debug!(kind = other, "ignoring unknown replication message");
            Ok(None)
        }
    }
}

/// A CopyData frame holding a standby status update.
pub(super) fn standby_status_update(written: Lsn, flushed: Lsn, applied: Lsn, clock_micros: i64, reply_requested: bool) -> BytesMut {
    let mut message = BytesMut::with_capacity(39);
    message.put_u8(b'd');
    message.put_i32(4 + 1 + 8 * 4 + 1);
    message.put_u8(STANDBY_STATUS_UPDATE_TAG);
    message.put_u64(written.0);
    message.put_u64(flushed.0);
    message.put_u64(applied.0);
    message.put_i64(clock_micros);
    message.put_u8(u8::from(reply_requested));
    message
}

/// Microseconds since 2000-01-01 UTC, the clock the replication protocol speaks.
pub(super) fn postgres_clock_micros() -> i64 {
    let since_unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let since_postgres = since_unix.saturating_sub(Duration::from_secs(POSTGRES_EPOCH_UNIX_SECONDS));
    i64::try_from(since_postgres.as_micros()).unwrap_or(i64::MAX)
}

pub(super) fn start_replication_command(slot: &str, start: Lsn, options: &[(&str, &str)]) -> String {
    let mut rendered = Vec::with_capacity(options.len() + 1);
    if !options.iter().any(|(name, _)| *name == "proto_version") {
        rendered.push("\"proto_version\" '1'".to_string());
    }
    for (name, value) in options {
        let value = if *name == "publication_names" && !value.starts_with('"') {
            value.split(',').map(|publication| quote_ident(publication.trim())).collect::<Vec<_>>().join(",")
        } else {
            value.to_string()
        };
        rendered.push(format!("{} {}", quote_ident(name), quote_literal(&value)));
    }
    format!("START_REPLICATION SLOT {} LOGICAL {start} ({})", quote_ident(slot), rendered.join(", "))
}

/// A double-quoted identifier for a replication command.
pub(super) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A role name as the user would type it in SQL: bare when that is unambiguous.
fn role_for_sql(role: &str) -> String {
    let plain = role.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && role.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain { role.to_string() } else { quote_ident(role) }
}

pub(super) fn decode_text_row(body: &DataRowBody) -> Result<Vec<Option<String>>, ConnectorError> {
    let buffer = body.buffer();
    body.ranges()
        .map(|range| {
            Ok(range.map(|range| {
                buffer.get(range).map(|bytes| String::from_utf8_lossy(bytes).into_owned()).unwrap_or_default()
            }))
        })
        .collect()
        .map_err(protocol_error)
}

/// The fields of an ErrorResponse that decide what the error means and what to tell the user.
#[derive(Debug, Default)]
pub(super) struct ServerError {
    code: String,
    message: String,
    detail: Option<String>,
    hint: Option<String>,
}

impl ServerError {
    pub(super) fn from_body(body: &ErrorResponseBody) -> ServerError {
        let mut error = ServerError::default();
        let mut fields = body.fields();
        while let Ok(Some(field)) = fields.next() {
            let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
            match field.type_() {
                b'C' => error.code = value,
                b'M' => error.message = value,
                b'D' => error.detail = Some(value),
                b'H' => error.hint = Some(value),
                _ => {}
            }
        }
        error
    }

    /// "message (SQLSTATE code) detail hint", as the server said it.
    fn describe(&self) -> String {
        let mut text = format!("{} (SQLSTATE {})", self.message, self.code);
        for extra in [&self.detail, &self.hint].into_iter().flatten() {
            text.push_str(". ");
            text.push_str(extra);
        }
        text
    }

    pub(super) fn into_error(self, peer: &Peer, slot: Option<&str>) -> ConnectorError {
        let said = self.describe();
        let (server, user, database) = (&peer.address, &peer.user, &peer.database);
        match (self.code.as_str(), slot) {
            ("28000" | "28P01", _) => ConnectorError::config(format!(
                "PostgreSQL at {server} refused user {user:?} on database {database:?}: {said}. Check the \
                 password, and that pg_hba.conf has a line admitting {user} to database {database} from this \
                 host (a logical replication connection matches on its database like any other; the \
                 `replication` keyword covers physical replication only)"
            )),
            ("42501", _) => {
                let role = role_for_sql(user);
                ConnectorError::config(format!("role {role} lacks REPLICATION: ALTER ROLE {role} REPLICATION ({said})"))
            }
            ("3D000", _) => ConnectorError::config(format!("database {database:?} does not exist on {server}: {said}")),
            ("55006", Some(slot)) if self.message.contains("replication slot") => ConnectorError::definite(format!(
                "replication slot {slot} is active for another process: is another `switchyard run` of this \
                 pipeline running? ({said})"
            )),
            ("55000", Some(slot)) if self.message.contains("can no longer get changes") => {
                ConnectorError::definite(format!("{} ({said})", crate::slot::unusable_slot(slot, crate::slot::INVALIDATED)))
            }
            ("42704", Some(slot)) if self.message.contains("does not exist") => {
                ConnectorError::definite(format!("{} ({said})", crate::slot::unusable_slot(slot, crate::slot::GONE)))
            }
            ("55000", _) if self.message.contains("wal_level") => ConnectorError::config(format!(
                "PostgreSQL at {server} is not set up for logical decoding: set wal_level = logical and restart \
                 it ({said})"
            )),
            (code, _) if code.starts_with("08") || code.starts_with("53") || matches!(code, "57P01" | "57P02" | "57P03") => {
                ConnectorError::transient(format!("PostgreSQL at {server}: {said}"))
            }
            _ => ConnectorError::definite(format!("PostgreSQL at {server}: {said}")),
        }
    }
}

pub(super) fn protocol_error(err: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::bug(format!("PostgreSQL protocol violation on the replication connection: {err}"))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use switchyard_core::ErrorKind;

    /// A backend message as the server frames it: tag, length, body.
    pub(in crate::walsender) fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut bytes = vec![tag];
        bytes.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    fn xlog_data(start: u64, end: u64, payload: &[u8]) -> Vec<u8> {
        let mut body = vec![b'w'];
        body.extend_from_slice(&start.to_be_bytes());
        body.extend_from_slice(&end.to_be_bytes());
        body.extend_from_slice(&123i64.to_be_bytes());
        body.extend_from_slice(payload);
        frame(b'd', &body)
    }

    fn keepalive(end: u64, reply: bool) -> Vec<u8> {
        let mut body = vec![b'k'];
        body.extend_from_slice(&end.to_be_bytes());
        body.extend_from_slice(&0i64.to_be_bytes());
        body.push(u8::from(reply));
        frame(b'd', &body)
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let whole = xlog_data(0x16_B374_D848, 0x16_B374_D900, b"BEGIN");
        for cut in [0, 1, 4, 5, 20, whole.len() - 1] {
            let mut buffer = BytesMut::from(&whole[..cut]);
            assert!(parse_stream_frame(&mut buffer).unwrap().is_none(), "cut at {cut}");
            assert_eq!(buffer.len(), cut, "an incomplete frame is left in place");
        }
    }

    #[test]
    fn xlog_data_and_keepalive_decode_in_sequence() {
        let mut bytes = xlog_data(0x16_B374_D848, 0x16_B374_D900, b"pgoutput bytes");
        bytes.extend(keepalive(0x17_0000_0000, true));
        let mut buffer = BytesMut::from(&bytes[..]);
        let Some(StreamFrame::Replication(first)) = parse_stream_frame(&mut buffer).unwrap() else { panic!() };
        assert_eq!(
            first,
            ReplicationMessage::XLogData {
                wal_start: "16/B374D848".parse().unwrap(),
                wal_end: Lsn(0x16_B374_D900),
                data: Bytes::from_static(b"pgoutput bytes"),
            }
        );
        let Some(StreamFrame::Replication(second)) = parse_stream_frame(&mut buffer).unwrap() else { panic!() };
        assert_eq!(second, ReplicationMessage::KeepAlive { wal_end: Lsn(0x17_0000_0000), reply_requested: true });
        assert!(buffer.is_empty());
        assert!(parse_stream_frame(&mut buffer).unwrap().is_none());
    }

    #[test]
    fn copy_done_ends_and_errors_carry_sqlstate() {
        let mut bytes = frame(b'N', b"SNOTICE\0Mhello\0\0");
        bytes.extend(frame(b'E', b"SERROR\0C55006\0Mreplication slot \"s\" is active for PID 42\0\0"));
        bytes.extend(frame(b'c', b""));
        let mut buffer = BytesMut::from(&bytes[..]);
        assert!(matches!(parse_stream_frame(&mut buffer).unwrap(), Some(StreamFrame::Ignored)));
        let Some(StreamFrame::ServerError(server)) = parse_stream_frame(&mut buffer).unwrap() else { panic!() };
        let peer = Peer { address: "h:5432".into(), user: "u".into(), database: "d".into() };
        let err = server.into_error(&peer, Some("s"));
        assert_eq!(err.kind(), ErrorKind::Definite);
        assert!(err.message().contains("is another `switchyard run`"), "{}", err.message());
        assert!(matches!(parse_stream_frame(&mut buffer).unwrap(), Some(StreamFrame::CopyEnded)));
    }

    #[test]
    fn copy_both_response_is_recognised_and_bad_lengths_rejected() {
        let mut buffer = BytesMut::from(&frame(b'W', &[0, 0, 0])[..]);
        assert!(matches!(parse_backend_frame(&mut buffer).unwrap(), Some(BackendFrame::CopyBothResponse)));
        assert!(buffer.is_empty());
        let mut short = BytesMut::from(&frame(b'W', &[0, 0, 0])[..6]);
        assert!(parse_backend_frame(&mut short).unwrap().is_none());
        let mut huge = BytesMut::from(&[b'd', 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(parse_stream_frame(&mut huge).is_err());
        let mut truncated_xlog = BytesMut::from(&frame(b'd', b"w\0\0")[..]);
        assert_eq!(parse_stream_frame(&mut truncated_xlog).unwrap_err().kind(), ErrorKind::Bug);
    }

    #[test]
    fn status_update_layout() {
        let message = standby_status_update(Lsn(1), Lsn(2), Lsn(3), 4, true);
        assert_eq!(message.len(), 39);
        assert_eq!(&message[..6], &[b'd', 0, 0, 0, 38, b'r']);
        assert_eq!(&message[6..14], &1u64.to_be_bytes());
        assert_eq!(&message[30..38], &4i64.to_be_bytes());
        assert_eq!(message[38], 1);
        assert!(postgres_clock_micros() > 800_000_000_000_000); // after 2025
    }

    #[test]
    fn commands_quote_names_and_values() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(
            start_replication_command("slot\"x", Lsn(0x16_B374_D848), &[("publication_names", "pub, O'Brien")]),
            "START_REPLICATION SLOT \"slot\"\"x\" LOGICAL 16/B374D848 (\"proto_version\" '1', \
             \"publication_names\" '\"pub\",\"O''Brien\"')"
        );
        assert_eq!(
            start_replication_command("s", Lsn(0), &[("proto_version", "2"), ("publication_names", "\"A\",\"b\"")]),
            "START_REPLICATION SLOT \"s\" LOGICAL 0/0 (\"proto_version\" '2', \"publication_names\" '\"A\",\"b\"')"
        );
        assert_eq!(role_for_sql("app_user"), "app_user");
        assert_eq!(role_for_sql("App"), "\"App\"");
    }

    #[test]
    fn auth_and_privilege_errors_are_config_errors_with_remedies() {
        let peer = Peer { address: "h:5432".into(), user: "repl".into(), database: "shop".into() };
        let auth = ServerError { code: "28P01".into(), message: "password authentication failed".into(), ..Default::default() };
        let err = auth.into_error(&peer, None);
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.message().contains("\"repl\"") && err.message().contains("pg_hba.conf"));
        let privilege = ServerError { code: "42501".into(), message: "permission denied".into(), ..Default::default() };
        let message = privilege.into_error(&peer, None).message().to_string();
        assert!(message.starts_with("role repl lacks REPLICATION: ALTER ROLE repl REPLICATION"), "{message}");
        let shutdown = ServerError { code: "57P01".into(), ..Default::default() };
        assert!(shutdown.into_error(&peer, None).is_transient());
    }

    #[test]
    fn a_lost_or_missing_slot_stops_with_the_way_out() {
        let peer = Peer { address: "h:5432".into(), user: "repl".into(), database: "shop".into() };
        let lost = ServerError {
            code: "55000".into(),
            message: "can no longer get changes from replication slot \"s\"".into(),
            ..Default::default()
        };
        let err = lost.into_error(&peer, Some("s"));
        assert_eq!(err.kind(), ErrorKind::Definite);
        assert!(err.message().contains("was invalidated by the source") && err.message().contains("teardown --drop-checkpoint"), "{}", err.message());
        let missing = ServerError { code: "42704".into(), message: "replication slot \"s\" does not exist".into(), ..Default::default() };
        let err = missing.into_error(&peer, Some("s"));
        assert_eq!(err.kind(), ErrorKind::Definite);
        assert!(err.message().starts_with("replication slot s is gone") && err.message().contains("teardown --drop-checkpoint"), "{}", err.message());
    }
}

