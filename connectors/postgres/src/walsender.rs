//! A logical-replication (walsender) connection, built by hand on postgres-protocol's codecs.
//!
//! tokio-postgres cannot open a connection with `replication=database`, and it could not carry
//! the CopyBoth stream that START_REPLICATION turns the connection into. So this module does the
//! few parts of the wire protocol a change stream needs: TLS negotiation, startup and password
//! authentication, the simple query protocol (for CREATE_REPLICATION_SLOT and friends), and the
//! CopyBoth stream of XLogData and keepalives with standby status updates going back.
//!
//! The same wire carries the snapshot's COPY out as an ordinary session (`SnapshotSession`).
//!
//! The stream half is read inside `tokio::select!`, so reading is cancel-safe: frames are parsed
//! out of a buffer the connection owns, and the only await is the socket read that refills it.
//! XLogData payloads are slices of that buffer, never copies.

mod pacing;
mod unix_drain;
mod protocol;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;

use pacing::ReadPacing;

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::{self, Message};
use postgres_protocol::message::frontend;
use switchyard_core::{ConnectorError, Lsn};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::config::Host;
use tokio_postgres::fallible_iterator::FallibleIterator;

use crate::tls::{SslMode, TlsSettings};
use protocol::{
    decode_text_row, parse_backend_frame, parse_stream_frame, postgres_clock_micros, protocol_error, quote_ident,
    standby_status_update, start_replication_command, BackendFrame, Peer, ServerError, StreamFrame,
};

const DEFAULT_PORT: u16 = 5432;

trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ByteStream for T {}
type BoxedStream = Box<dyn ByteStream>;

/// The socket halves and the read buffer shared by the query phase and the stream phase.
struct Wire {
    reader: ReadHalf<BoxedStream>,
    writer: WriteHalf<BoxedStream>,
    read_buffer: BytesMut,
    peer: Peer,
    pacing: ReadPacing,
}

impl Wire {
    async fn send(&mut self, bytes: &[u8]) -> Result<(), ConnectorError> {
        let written = async {
            self.writer.write_all(bytes).await?;
            self.writer.flush().await
        };
        written.await.map_err(|err| io_error(&self.peer.address, err))
    }

    /// Reads more bytes into the buffer. Cancel-safe: a cancelled read loses nothing.
    async fn fill_read_buffer(&mut self) -> Result<(), ConnectorError> {
        match self.pacing.read(&mut self.reader, &mut self.read_buffer).await {
            Ok(0) => Err(ConnectorError::transient(format!(
                "PostgreSQL at {} closed the replication connection",
                self.peer.address
            ))),
            Ok(_) => Ok(()),
            Err(err) => Err(io_error(&self.peer.address, err)),
        }
    }

    async fn read_frame(&mut self) -> Result<BackendFrame, ConnectorError> {
        loop {
            if let Some(frame) = parse_backend_frame(&mut self.read_buffer).map_err(protocol_error)? {
                return Ok(frame);
            }
            self.fill_read_buffer().await?;
        }
    }

    async fn read_message(&mut self) -> Result<Message, ConnectorError> {
        match self.read_frame().await? {
            BackendFrame::Message(message) => Ok(message),
            BackendFrame::CopyBothResponse => Err(ConnectorError::bug(
                "the server entered CopyBoth mode outside START_REPLICATION (use start_logical)",
            )),
        }
    }
}

/// A walsender connection in its command phase: replication commands and simple SQL queries.
pub struct ReplicationConnection {
    wire: Wire,
}

impl ReplicationConnection {
    /// Opens a logical-replication connection: TCP (or a Unix socket when the host is a
    /// directory), TLS as the settings ask, startup with `replication=database`, password
    /// authentication (cleartext, MD5, SCRAM-SHA-256), then waits for ReadyForQuery.
    pub async fn connect(config: &tokio_postgres::Config, tls: &TlsSettings) -> Result<Self, ConnectorError> {
        Self::connect_as(config, tls, true).await
    }

    /// With `replication` false, an ordinary session on the same wire (see `SnapshotSession`).
    async fn connect_as(config: &tokio_postgres::Config, tls: &TlsSettings, replication: bool) -> Result<Self, ConnectorError> {
        let endpoint = Endpoint::from_config(config)?;
        let connecting = Self::establish(config, tls, &endpoint, replication);
        match config.get_connect_timeout() {
            Some(limit) => tokio::time::timeout(*limit, connecting).await.map_err(|_| {
                ConnectorError::transient(format!(
                    "timed out after {limit:?} connecting to PostgreSQL at {}",
                    endpoint.describe()
                ))
            })?,
            None => connecting.await,
        }
    }

    async fn establish(
        config: &tokio_postgres::Config,
        tls: &TlsSettings,
        endpoint: &Endpoint,
        replication: bool,
    ) -> Result<Self, ConnectorError> {
        let user = match config.get_user() {
            Some(user) => user.to_string(),
            None => std::env::var("USER").map_err(|_| {
                ConnectorError::config("the connection URL names no user (add user@ before the host)")
            })?,
        };
        let database = config.get_dbname().unwrap_or(&user).to_string();
        let peer = Peer { address: endpoint.describe(), user, database };
        let (stream, socket) = endpoint.open(tls).await?;
        let (reader, writer) = tokio::io::split(stream);
        let mut connection = ReplicationConnection {
            wire: Wire { reader, writer, read_buffer: BytesMut::new(), peer, pacing: ReadPacing::new(socket) },
        };
        connection.start_session(config, replication).await?;
        tracing::debug!(server = %connection.wire.peer.address, replication, "hand-made connection ready");
        Ok(connection)
    }

    async fn start_session(&mut self, config: &tokio_postgres::Config, replication: bool) -> Result<(), ConnectorError> {
        let peer = self.wire.peer.clone();
        let mut parameters = vec![
            ("user", peer.user.as_str()),
            ("database", peer.database.as_str()),
            ("application_name", config.get_application_name().unwrap_or("switchyard")),
            ("client_encoding", "UTF8"),
        ];
        if replication {
            parameters.push(("replication", "database"));
        }
        if let Some(options) = config.get_options() {
            parameters.push(("options", options));
        }
        let mut buffer = BytesMut::new();
        frontend::startup_message(parameters, &mut buffer)
            .map_err(|err| ConnectorError::config(format!("invalid connection parameter: {err}")))?;
        self.wire.send(&buffer).await?;
        self.authenticate(config.get_password()).await?;
        loop {
            match self.wire.read_message().await? {
                Message::ReadyForQuery(_) => return Ok(()),
                Message::ErrorResponse(body) => return Err(ServerError::from_body(&body).into_error(&peer, None)),
                _ => {} // ParameterStatus, BackendKeyData, NoticeResponse
            }
        }
    }

    async fn authenticate(&mut self, password: Option<&[u8]>) -> Result<(), ConnectorError> {
        let peer = self.wire.peer.clone();
        let require_password = || {
            password.ok_or_else(|| {
                ConnectorError::config(format!(
                    "PostgreSQL at {} asks user {:?} for a password, but the connection URL has none",
                    peer.address, peer.user
                ))
            })
        };
        let scram_failed = |err: io::Error| {
            ConnectorError::definite(format!("SCRAM authentication with PostgreSQL at {} failed: {err}", peer.address))
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            let mut reply = BytesMut::new();
            match self.wire.read_message().await? {
                Message::AuthenticationOk => return Ok(()),
                Message::AuthenticationCleartextPassword => {
                    frontend::password_message(require_password()?, &mut reply).map_err(invalid_password)?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let hash = md5_hash(peer.user.as_bytes(), require_password()?, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut reply).map_err(invalid_password)?;
                }
                Message::AuthenticationSasl(body) => {
                    let mechanisms: Vec<String> =
                        body.mechanisms().map(|m| Ok(m.to_string())).collect().map_err(protocol_error)?;
                    if !mechanisms.iter().any(|m| m == SCRAM_SHA_256) {
                        return Err(unsupported_auth(&peer, &mechanisms.join(", ")));
                    }
                    // "n": this client does not do channel binding, which the server accepts.
                    let exchange = ScramSha256::new(require_password()?, ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, exchange.message(), &mut reply)
                        .map_err(protocol_error)?;
                    scram = Some(exchange);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let exchange = scram.as_mut().ok_or_else(|| protocol_error("SASL continue before SASL start"))?;
                    exchange.update(body.data()).map_err(scram_failed)?;
                    frontend::sasl_response(exchange.message(), &mut reply).map_err(protocol_error)?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let exchange = scram.as_mut().ok_or_else(|| protocol_error("SASL final before SASL start"))?;
                    exchange.finish(body.data()).map_err(scram_failed)?;
                }
                Message::ErrorResponse(body) => return Err(ServerError::from_body(&body).into_error(&peer, None)),
                Message::NoticeResponse(_) => {}
                _ => return Err(unsupported_auth(&peer, "Kerberos, GSSAPI, SSPI or an unknown method")),
            }
            if !reply.is_empty() {
                self.wire.send(&reply).await?;
            }
        }
    }

    /// Simple query protocol; returns all rows of all result sets as text (None for NULL).
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, ConnectorError> {
        self.run_query(sql, None).await
    }

    async fn run_query(&mut self, sql: &str, slot: Option<&str>) -> Result<Vec<Vec<Option<String>>>, ConnectorError> {
        let mut buffer = BytesMut::new();
        frontend::query(sql, &mut buffer)
            .map_err(|err| ConnectorError::bug(format!("cannot send query: {err}")))?;
        self.wire.send(&buffer).await?;
        let mut rows = Vec::new();
        let mut failure: Option<ConnectorError> = None;
        loop {
            match self.wire.read_message().await? {
                Message::DataRow(body) => match decode_text_row(&body) {
                    Ok(row) => rows.push(row),
                    Err(err) => failure = failure.or(Some(err)),
                },
                Message::ErrorResponse(body) => {
                    let err = ServerError::from_body(&body).into_error(&self.wire.peer, slot);
                    failure = failure.or(Some(err));
                }
                Message::CopyInResponse(_) => {
                    let mut refusal = BytesMut::new();
                    frontend::copy_fail("simple_query sends no COPY data", &mut refusal).map_err(protocol_error)?;
                    self.wire.send(&refusal).await?;
                }
                Message::ReadyForQuery(_) => break,
                _ => {} // RowDescription, CommandComplete, notices, COPY TO output
            }
        }
        match failure {
            Some(err) => Err(err),
            None => Ok(rows),
        }
    }

    /// CREATE_REPLICATION_SLOT "name" [TEMPORARY] LOGICAL pgoutput (SNAPSHOT 'export'); returns
    /// (consistent_point, snapshot_name). The snapshot stays valid until the next command on this
    /// connection or its close, so keep the connection open (idle) while using it.
    pub async fn create_slot_exporting_snapshot(
        &mut self,
        slot: &str,
        temporary: bool,
    ) -> Result<(Lsn, String), ConnectorError> {
        let temporary = if temporary { "TEMPORARY " } else { "" };
        let command = format!("CREATE_REPLICATION_SLOT {} {temporary}LOGICAL pgoutput (SNAPSHOT 'export')", quote_ident(slot));
        let rows = self.run_query(&command, Some(slot)).await?;
        // Columns: slot_name, consistent_point, snapshot_name, output_plugin.
        let column = |index: usize| rows.first().and_then(|row| row.get(index)).and_then(|value| value.clone());
        let consistent_point = column(1)
            .and_then(|text| text.parse::<Lsn>().ok())
            .ok_or_else(|| ConnectorError::bug(format!("CREATE_REPLICATION_SLOT {slot:?} returned no consistent point")))?;
        let snapshot = column(2)
            .ok_or_else(|| ConnectorError::bug(format!("CREATE_REPLICATION_SLOT {slot:?} returned no snapshot name")))?;
        Ok((consistent_point, snapshot))
    }

    /// START_REPLICATION SLOT "slot" LOGICAL X/Y ("proto_version" '1', options...). A
    /// `publication_names` option takes plain names separated by commas (each is quoted here) or
    /// an already double-quoted list. Consumes the connection: it now carries only the stream.
    pub async fn start_logical(
        mut self,
        slot: &str,
        start: Lsn,
        options: &[(&str, &str)],
    ) -> Result<ReplicationStream, ConnectorError> {
        let mut buffer = BytesMut::new();
        frontend::query(&start_replication_command(slot, start, options), &mut buffer)
            .map_err(|err| ConnectorError::bug(format!("cannot send START_REPLICATION: {err}")))?;
        self.wire.send(&buffer).await?;
        loop {
            match self.wire.read_frame().await? {
                BackendFrame::CopyBothResponse => break,
                BackendFrame::Message(Message::ErrorResponse(body)) => {
                    return Err(ServerError::from_body(&body).into_error(&self.wire.peer, Some(slot)));
                }
                BackendFrame::Message(Message::NoticeResponse(_) | Message::ParameterStatus(_)) => {}
                BackendFrame::Message(_) => {
                    return Err(protocol_error("unexpected reply to START_REPLICATION"));
                }
            }
        }
        tracing::debug!(slot, %start, "logical replication started");
        Ok(ReplicationStream { wire: self.wire, slot: slot.to_string() })
    }

    /// Ends the session politely (Terminate), which also releases an exported snapshot.
    pub async fn close(mut self) -> Result<(), ConnectorError> {
        let mut buffer = BytesMut::new();
        frontend::terminate(&mut buffer);
        self.wire.send(&buffer).await?;
        self.wire.writer.shutdown().await.map_err(|err| io_error(&self.wire.peer.address, err))
    }
}

/// An ordinary session (no `replication` parameter) on the same hand-made wire, for the
/// snapshot's COPY out. tokio-postgres hands over each CopyData message (one per row) as a
/// message of its own, parsed, reference-counted and freed: about a third of this process's
/// work in a copy. Here each row's payload is a slice of the read buffer, given to the caller
/// in place, and reads are paced as the change stream's are.
pub struct SnapshotSession {
    connection: ReplicationConnection,
}

impl SnapshotSession {
    /// Connects and begins a read-only `REPEATABLE READ` transaction at the exported `snapshot`.
    pub async fn open(config: &tokio_postgres::Config, tls: &TlsSettings, snapshot: &str) -> Result<Self, ConnectorError> {
        let mut connection = ReplicationConnection::connect_as(config, tls, false).await?;
        // Unlike `Endpoint::connect`, no idle_session_timeout: the session never leaves the
        // snapshot's transaction, and that setting only ends sessions idle outside one.
        // One query string, so the snapshot is the transaction's first statement. SET
        // TRANSACTION SNAPSHOT takes no parameters; the name is a literal the server gave us.
        let begin = format!("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'", snapshot.replace('\'', "''"));
        connection
            .run_query(&begin, None)
            .await
            .map_err(|error| ConnectorError::new(error.kind(), format!("cannot import snapshot {snapshot}: {}", error.message())))?;
        Ok(SnapshotSession { connection })
    }

    /// Starts `copy` (a `COPY ... TO STDOUT`); its rows are read with `SnapshotCopy::next`,
    /// to the end, before the session runs anything else.
    pub async fn copy_out(&mut self, copy: &str) -> Result<SnapshotCopy<'_>, ConnectorError> {
        let wire = &mut self.connection.wire;
        let mut buffer = BytesMut::new();
        frontend::query(copy, &mut buffer).map_err(|err| ConnectorError::bug(format!("cannot send query: {err}")))?;
        wire.send(&buffer).await?;
        let mut failure = None;
        loop {
            match wire.read_message().await? {
                Message::CopyOutResponse(_) => return Ok(SnapshotCopy { wire, ended: false }),
                Message::ErrorResponse(body) => failure = Some(ServerError::from_body(&body).into_error(&wire.peer, None)),
                Message::ReadyForQuery(_) => {
                    return Err(failure.unwrap_or_else(|| ConnectorError::bug(format!("{copy} began no COPY"))));
                }
                _ => {} // notices
            }
        }
    }
}

/// A COPY out in progress on a `SnapshotSession`.
pub struct SnapshotCopy<'a> {
    wire: &'a mut Wire,
    ended: bool,
}

impl SnapshotCopy<'_> {
    /// Passes each row (its CopyData payload) complete in the read buffer to `each`, reading
    /// first if there is none; false once the COPY has ended and the session is ready for the
    /// next one. Not cancel-safe: a row may have been passed when the read is cancelled.
    pub async fn next<F>(&mut self, each: &mut F) -> Result<bool, ConnectorError>
    where
        F: FnMut(&[u8]) -> Result<(), ConnectorError> + Send,
    {
        let mut failure = None;
        while !self.ended {
            let mut passed = false;
            loop {
                let buffer = &self.wire.read_buffer;
                let Some(header) = backend::Header::parse(buffer).map_err(protocol_error)? else { break };
                if header.tag() == b'd' {
                    let end = 1 + header.len() as usize;
                    if buffer.len() < end {
                        break;
                    }
                    each(&buffer[5..end])?;
                    self.wire.read_buffer.advance(end);
                    passed = true;
                    continue;
                }
                // CopyDone, CommandComplete, ReadyForQuery, an error or a notice.
                let Some(frame) = parse_backend_frame(&mut self.wire.read_buffer).map_err(protocol_error)? else { break };
                match frame {
                    BackendFrame::Message(Message::ErrorResponse(body)) => {
                        failure = Some(ServerError::from_body(&body).into_error(&self.wire.peer, None));
                    }
                    BackendFrame::Message(Message::ReadyForQuery(_)) => {
                        self.ended = true;
                        break;
                    }
                    _ => {}
                }
            }
            if let Some(error) = failure {
                return Err(error);
            }
            if passed || self.ended {
                return Ok(!self.ended);
            }
            self.wire.fill_read_buffer().await?;
        }
        Ok(false)
    }
}

/// One message of the logical replication stream.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplicationMessage {
    XLogData { wal_start: Lsn, wal_end: Lsn, data: Bytes },
    KeepAlive { wal_end: Lsn, reply_requested: bool },
}

/// The CopyBoth stream after START_REPLICATION: read messages, send status updates.
pub struct ReplicationStream {
    wire: Wire,
    slot: String,
}

impl ReplicationStream {
    /// Next message from the stream; Ok(None) when the server ended the copy. Cancel-safe.
    pub async fn next(&mut self) -> Result<Option<ReplicationMessage>, ConnectorError> {
        loop {
            while let Some(frame) = parse_stream_frame(&mut self.wire.read_buffer)? {
                match frame {
                    StreamFrame::Replication(message) => return Ok(Some(message)),
                    StreamFrame::CopyEnded => return Ok(None),
                    StreamFrame::ServerError(err) => return Err(err.into_error(&self.wire.peer, Some(&self.slot))),
                    StreamFrame::Ignored => {}
                }
            }
            self.wire.fill_read_buffer().await?;
        }
    }

    /// Standby status update ('r'): positions as given, the client clock, and whether the server
    /// should answer with a keepalive at once.
    pub async fn send_status(
        &mut self,
        written: Lsn,
        flushed: Lsn,
        applied: Lsn,
        reply_requested: bool,
    ) -> Result<(), ConnectorError> {
        let message = standby_status_update(written, flushed, applied, postgres_clock_micros(), reply_requested);
        self.wire.send(&message).await
    }
}

/// Where to connect: a TCP host (with the name TLS checks) or a Unix-domain socket.
enum Endpoint {
    Tcp { address: String, tls_name: String, port: u16 },
    Unix { socket: PathBuf },
}

impl Endpoint {
    fn from_config(config: &tokio_postgres::Config) -> Result<Endpoint, ConnectorError> {
        let port = config.get_ports().first().copied().unwrap_or(DEFAULT_PORT);
        let hostaddr = config.get_hostaddrs().first();
        match (config.get_hosts().first(), hostaddr) {
            (Some(Host::Unix(directory)), None) => {
                Ok(Endpoint::Unix { socket: directory.join(format!(".s.PGSQL.{port}")) })
            }
            (Some(Host::Tcp(host)), _) => Ok(Endpoint::Tcp {
                address: hostaddr.map_or_else(|| host.clone(), |ip| ip.to_string()),
                tls_name: host.clone(),
                port,
            }),
            (_, Some(ip)) => Ok(Endpoint::Tcp { address: ip.to_string(), tls_name: ip.to_string(), port }),
            (None, None) => Err(ConnectorError::config("the connection URL names no host")),
        }
    }

    fn describe(&self) -> String {
        match self {
            Endpoint::Tcp { address, port, .. } => format!("{address}:{port}"),
            Endpoint::Unix { socket } => socket.display().to_string(),
        }
    }

    /// A connected byte stream, encrypted if the settings and the server agree, and the TCP socket
    /// under it (for the read pacing). The server never offers TLS on a Unix socket, and libpq
    /// does not ask there, so neither do we.
    async fn open(&self, tls: &TlsSettings) -> Result<(BoxedStream, Option<RawFd>), ConnectorError> {
        let (address, tls_name, port) = match self {
            Endpoint::Unix { socket } => {
                let stream = UnixStream::connect(socket).await.map_err(|err| io_error(&self.describe(), err))?;
                let drained = unix_drain::DrainedUnixStream::new(stream).map_err(|err| io_error(&self.describe(), err))?;
                return Ok((Box::new(drained), None));
            }
            Endpoint::Tcp { address, tls_name, port } => (address, tls_name, *port),
        };
        let connect_tcp = || async {
            let stream = TcpStream::connect((address.as_str(), port)).await.map_err(|err| io_error(&self.describe(), err))?;
            let _ = stream.set_nodelay(true);
            Ok::<_, ConnectorError>(stream)
        };
        let mut stream = connect_tcp().await?;
        let Some(rustls_config) = tls.rustls_config()? else { return Ok(unencrypted(stream)) };
        let mut request = BytesMut::new();
        frontend::ssl_request(&mut request);
        let mut answer = [0u8; 1];
        let negotiated = async {
            stream.write_all(&request).await?;
            stream.read_exact(&mut answer).await
        };
        negotiated.await.map_err(|err| io_error(&self.describe(), err))?;
        match (answer[0], &tls.mode) {
            (b'S', _) => {}
            (b'N', SslMode::Prefer) => return Ok(unencrypted(stream)),
            (b'N', mode) => {
                return Err(ConnectorError::config(format!(
                    "PostgreSQL at {} does not accept SSL connections, but the connection URL asks for sslmode={}",
                    self.describe(),
                    mode.as_str()
                )));
            }
            (other, _) => return Err(protocol_error(format!("unexpected answer {other:#x} to SSLRequest"))),
        }
        let server_name = rustls::pki_types::ServerName::try_from(tls_name.clone())
            .map_err(|err| ConnectorError::config(format!("host {tls_name:?} cannot be checked by TLS: {err}")))?;
        let connector = tokio_rustls::TlsConnector::from(rustls_config);
        let fd = stream.as_raw_fd();
        match connector.connect(server_name, stream).await {
            Ok(encrypted) => Ok((Box::new(encrypted), Some(fd))),
            Err(err) if tls.mode == SslMode::Prefer => {
                tracing::debug!(error = %err, "TLS failed under sslmode=prefer; retrying without TLS");
                Ok(unencrypted(connect_tcp().await?))
            }
            Err(err) => Err(tls_error(&self.describe(), tls, err)),
        }
    }
}

/// A TCP stream used as it is, with its socket for the read pacing.
fn unencrypted(stream: TcpStream) -> (BoxedStream, Option<RawFd>) {
    let fd = stream.as_raw_fd();
    (Box::new(stream), Some(fd))
}

fn io_error(server: &str, err: io::Error) -> ConnectorError {
    ConnectorError::transient(format!("connection to PostgreSQL at {server} failed")).with_source(err)
}

fn invalid_password(err: io::Error) -> ConnectorError {
    ConnectorError::config(format!("the password cannot be sent: {err}"))
}

fn unsupported_auth(peer: &Peer, offered: &str) -> ConnectorError {
    ConnectorError::config(format!(
        "PostgreSQL at {} asks user {:?} to authenticate with {offered}; Switchyard supports trust, password, md5 \
         and scram-sha-256 (set one of those for this user in pg_hba.conf)",
        peer.address, peer.user
    ))
}

/// A failed TLS handshake: a certificate the settings reject is a configuration problem; anything
/// else (a reset mid-handshake) may pass on retry.
fn tls_error(server: &str, tls: &TlsSettings, err: io::Error) -> ConnectorError {
    let certificate_rejected = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|inner| matches!(inner, rustls::Error::InvalidCertificate(_)));
    if certificate_rejected {
        ConnectorError::config(format!(
            "the TLS certificate of PostgreSQL at {server} failed verification under sslmode={} (check \
             sslrootcert and the host name): {err}",
            tls.mode.as_str()
        ))
    } else {
        ConnectorError::transient(format!("TLS handshake with PostgreSQL at {server} failed")).with_source(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::tests::frame;

    fn copy_out_response() -> Vec<u8> {
        frame(b'H', &[1, 0, 1, 0, 1])
    }

    fn error(message: &str) -> Vec<u8> {
        frame(b'E', format!("SERROR\0C22P02\0M{message}\0\0").as_bytes())
    }

    fn ready() -> Vec<u8> {
        frame(b'Z', b"I")
    }

    /// A session whose server sends `reply`, `piece` bytes at a time, after reading the query.
    fn session_answering(reply: Vec<u8>, piece: usize) -> SnapshotSession {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let mut query = [0u8; 256];
            let _ = server.read(&mut query).await;
            for part in reply.chunks(piece) {
                server.write_all(part).await.unwrap();
                tokio::task::yield_now().await;
            }
            // Kept open until the client is done, as a server would be.
            let _ = server.read(&mut query).await;
        });
        let stream: BoxedStream = Box::new(client);
        let (reader, writer) = tokio::io::split(stream);
        let peer = Peer { address: "test".into(), user: "u".into(), database: "d".into() };
        let wire = Wire { reader, writer, read_buffer: BytesMut::new(), peer, pacing: ReadPacing::new(None) };
        SnapshotSession { connection: ReplicationConnection { wire } }
    }

    async fn rows(session: &mut SnapshotSession) -> Result<Vec<Vec<u8>>, ConnectorError> {
        let mut copy = session.copy_out("COPY t TO STDOUT").await?;
        let mut rows = Vec::new();
        let mut keep = |row: &[u8]| {
            rows.push(row.to_vec());
            Ok(())
        };
        while copy.next(&mut keep).await? {}
        Ok(rows)
    }

    #[tokio::test]
    async fn a_snapshot_copy_passes_every_row_in_order_however_the_bytes_arrive() {
        let expected: Vec<Vec<u8>> = (0..50).map(|i| format!("row {i}\twith some text").into_bytes()).collect();
        let mut reply = copy_out_response();
        for row in &expected {
            reply.extend(frame(b'd', row));
        }
        reply.extend(frame(b'd', b""));
        reply.extend(frame(b'c', b""));
        reply.extend(frame(b'C', b"COPY 51\0"));
        reply.extend(ready());
        let mut with_empty = expected.clone();
        with_empty.push(Vec::new());
        for piece in [1, 3, 7, 64, 100_000] {
            let mut session = session_answering(reply.clone(), piece);
            assert_eq!(rows(&mut session).await.unwrap(), with_empty, "read {piece} bytes at a time");
            assert!(session.connection.wire.read_buffer.is_empty(), "the session is ready for the next query");
        }
    }

    #[tokio::test]
    async fn a_snapshot_copy_that_fails_midway_is_an_error_not_a_short_table() {
        let mut reply = copy_out_response();
        reply.extend(frame(b'd', b"first row"));
        reply.extend(error("invalid input"));
        reply.extend(ready());
        for piece in [1, 5, 100_000] {
            let mut session = session_answering(reply.clone(), piece);
            let failed = rows(&mut session).await.unwrap_err();
            assert!(failed.message().contains("invalid input"), "{}", failed.message());
        }
        let mut refused = error("permission denied for table t");
        refused.extend(ready());
        let mut session = session_answering(refused, 4);
        assert!(session.copy_out("COPY t TO STDOUT").await.is_err(), "a COPY the server refuses never starts");
    }
}
