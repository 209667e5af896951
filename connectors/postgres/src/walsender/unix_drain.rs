//! A replication connection over a Unix socket, read by a thread of its own.
//!
//! The kernel charges each of the walsender's small messages to the server's send buffer at its
//! full in-kernel size, so a Unix socket holds only a few hundred of them; TCP's buffers hold
//! megabytes. Read by the pipeline's one thread, which also readies and writes batches, the
//! socket filled whenever that thread was busy, the walsender stopped, and batches came out a
//! tenth of their size (the catch-up took 1.4× as long as over TCP, the target's CPU 1.4×).
//! Here a thread takes the bytes as they arrive. It naps briefly after a short read, so it wakes
//! per few dozen messages rather than per message; bytes it has read are handed on before it
//! naps, so a lone transaction waits no longer than the nap. The socket is not registered with
//! the async runtime either: the kernel would wake the runtime for every message that arrives.

use std::future::Future;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::time::Sleep;

/// The most one read takes.
const CHUNK: usize = 256 * 1024;
/// Bytes read ahead of the pipeline before the thread waits (TCP's buffers hold about 6 MiB).
const HOLD_LIMIT: usize = 16 * 1024 * 1024;
/// A read shorter than this means the reader is not behind: nap before the next.
const NAP_BELOW: usize = 32 * 1024;
/// Short enough that the server's send buffer (a few hundred messages, about a millisecond of
/// a walsender streaming a backlog) does not fill meanwhile; long enough that the hand-offs
/// to the runtime cost little (0.6 ms against 0.2: Switchyard 3.0 CPU-s against 3.6–3.8 in
/// the bench's catch-up over sockets, the walsender no busier).
const NAP: Duration = Duration::from_micros(600);
/// How often a thread waiting for bytes checks that its connection is still wanted.
const POLL_MS: libc::c_int = 100;
/// A write the socket has no room for is tried again this much later (status updates are a
/// few dozen bytes, and the server reads them between its sends: this is rare).
const WRITE_RETRY: Duration = Duration::from_millis(1);

pub(super) struct DrainedUnixStream {
    /// Non-blocking; writes go straight to it, and the reading thread holds a duplicate.
    socket: UnixStream,
    write_retry: Option<Pin<Box<Sleep>>>,
    chunks: mpsc::UnboundedReceiver<io::Result<Bytes>>,
    /// Bytes the thread has read and the pipeline not yet taken.
    held: Arc<AtomicUsize>,
    pending: Bytes,
}

impl DrainedUnixStream {
    pub(super) fn new(stream: tokio::net::UnixStream) -> io::Result<Self> {
        let socket = stream.into_std()?;
        socket.set_nonblocking(true)?;
        let reading = socket.try_clone()?;
        let (sender, chunks) = mpsc::unbounded_channel();
        let held = Arc::new(AtomicUsize::new(0));
        let counted = held.clone();
        std::thread::Builder::new().name("walsender-reader".into()).spawn(move || drain(reading, sender, &counted))?;
        Ok(DrainedUnixStream { socket, write_retry: None, chunks, held, pending: Bytes::new() })
    }
}

/// Reads the socket until it ends, fails, or the connection is dropped. The socket is
/// non-blocking (the flag is shared with the runtime's descriptor), so the thread waits in poll.
fn drain(mut socket: UnixStream, sender: mpsc::UnboundedSender<io::Result<Bytes>>, held: &AtomicUsize) {
    let mut buffer = vec![0u8; CHUNK];
    loop {
        while held.load(Ordering::Acquire) >= HOLD_LIMIT {
            if sender.is_closed() {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut wanted = libc::pollfd { fd: socket.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, for a descriptor this thread owns.
        let ready = unsafe { libc::poll(&mut wanted, 1, POLL_MS) };
        if ready == 0 {
            if sender.is_closed() {
                return;
            }
            continue;
        }
        let read = if ready < 0 { Err(io::Error::last_os_error()) } else { socket.read(&mut buffer) };
        let read = match read {
            Ok(read) => read,
            Err(err) if matches!(err.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock) => continue,
            Err(err) => {
                let _ = sender.send(Err(err));
                return;
            }
        };
        held.fetch_add(read, Ordering::AcqRel);
        // An empty chunk is the end of the stream.
        if sender.send(Ok(Bytes::copy_from_slice(&buffer[..read]))).is_err() || read == 0 {
            return;
        }
        if read < NAP_BELOW {
            std::thread::sleep(NAP);
        }
    }
}

impl AsyncRead for DrainedUnixStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pending.is_empty() {
            match ready!(this.chunks.poll_recv(cx)) {
                Some(Ok(chunk)) => {
                    this.held.fetch_sub(chunk.len(), Ordering::AcqRel);
                    this.pending = chunk;
                }
                Some(Err(err)) => return Poll::Ready(Err(err)),
                // The reader ended: the stream did.
                None => return Poll::Ready(Ok(())),
            }
        }
        let taken = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending[..taken]);
        this.pending.advance(taken);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for DrainedUnixStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            if let Some(retry) = &mut this.write_retry {
                ready!(retry.as_mut().poll(cx));
                this.write_retry = None;
            }
            match (&this.socket).write(buf) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    this.write_retry = Some(Box::pin(tokio::time::sleep(WRITE_RETRY)));
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                written => return Poll::Ready(written),
            }
        }
    }

    /// Nothing is buffered here.
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.socket.shutdown(Shutdown::Write))
    }
}

impl Drop for DrainedUnixStream {
    /// The thread's duplicate would keep the connection open after this one closes: the server
    /// must see it end now (a slot is busy until its walsender exits), and the thread with it.
    fn drop(&mut self) {
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    use super::*;

    #[tokio::test]
    async fn bytes_arrive_in_order_and_the_end_is_seen() {
        let (ours, mut server) = UnixStream::pair().unwrap();
        let mut drained = DrainedUnixStream::new(ours).unwrap();
        drained.write_all(b"hello").await.unwrap();
        let mut greeting = [0u8; 5];
        server.read_exact(&mut greeting).await.unwrap();
        assert_eq!(&greeting, b"hello");
        let sent: Vec<u8> = (0..300_000u32).map(|n| (n % 251) as u8).collect();
        let writing = tokio::spawn(async move {
            for piece in sent.chunks(1000) {
                server.write_all(piece).await.unwrap();
            }
            sent
        });
        let mut received = Vec::new();
        drained.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, writing.await.unwrap());
    }

    /// The point of the thread: the server's writes go on while the pipeline reads nothing.
    #[tokio::test]
    async fn the_server_is_not_held_up_while_the_pipeline_is_busy() {
        let (ours, server) = UnixStream::pair().unwrap();
        let drained = DrainedUnixStream::new(ours).unwrap();
        let mut server = server.into_std().unwrap();
        server.set_nonblocking(false).unwrap();
        // Far more than the socket holds: without the thread this write would block for good.
        let written = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            for _ in 0..4_000 {
                server.write_all(&[7u8; 1000]).unwrap();
            }
        });
        tokio::time::timeout(Duration::from_secs(20), written).await.expect("the server's writes stalled").unwrap();
        drop(drained);
    }

    #[tokio::test]
    async fn dropping_the_connection_ends_it_for_the_server() {
        let (ours, mut server) = UnixStream::pair().unwrap();
        let drained = DrainedUnixStream::new(ours).unwrap();
        drop(drained);
        let mut rest = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(5), server.read_to_end(&mut rest)).await;
        assert!(matches!(ended, Ok(Ok(0))), "the server did not see the connection end: {ended:?}");
    }
}
