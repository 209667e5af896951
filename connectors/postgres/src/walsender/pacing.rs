//! Reading the change stream in fewer, larger pieces while a backlog streams.
//!
//! The walsender sends every change as a message of its own, and the kernel hands each to a
//! waiting reader at once: read as it arrives, a backlog of a million changes costs the process
//! hundreds of thousands of wake-ups and reads. While reads come back large (the server has more
//! than we have taken), the socket's low-water mark asks the kernel to wake the reader only once
//! `LOW_WATER` bytes wait. A read that finds less within `PATIENCE` lowers the mark again, so the
//! end of a backlog, or a lone small transaction, waits at most that long.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

const LOW_WATER: usize = 64 * 1024;
const PATIENCE: Duration = Duration::from_millis(2);

pub(super) struct ReadPacing {
    /// The TCP socket under the stream (TLS or not), owned by the stream beside this value;
    /// None for a Unix socket (whose readiness ignores a low-water mark; unix_drain.rs reads it)
    /// or once setting it failed.
    socket: Option<RawFd>,
    low_water: usize,
    last_read: usize,
}

impl ReadPacing {
    pub(super) fn new(socket: Option<RawFd>) -> Self {
        ReadPacing { socket, low_water: 1, last_read: 0 }
    }

    /// Reads into `buffer` (at least one byte unless the peer closed). Cancel-safe, as
    /// `read_buf` is: a cancelled read takes nothing.
    pub(super) async fn read<R: AsyncRead + Unpin>(&mut self, reader: &mut R, buffer: &mut BytesMut) -> io::Result<usize> {
        // Room for a full mark, so a read while behind can take all of it.
        if buffer.capacity() - buffer.len() < LOW_WATER {
            buffer.reserve(2 * LOW_WATER);
        }
        let behind = self.last_read >= LOW_WATER / 2;
        self.set_low_water(if behind { LOW_WATER } else { 1 });
        let read = if self.low_water > 1 {
            match tokio::time::timeout(PATIENCE, reader.read_buf(buffer)).await {
                Ok(read) => read,
                Err(_) => {
                    // Lowering the mark makes the kernel signal whatever already waits.
                    self.set_low_water(1);
                    reader.read_buf(buffer).await
                }
            }
        } else {
            reader.read_buf(buffer).await
        };
        self.last_read = *read.as_ref().unwrap_or(&0);
        read
    }

    fn set_low_water(&mut self, bytes: usize) {
        let Some(socket) = self.socket else { return };
        if bytes == self.low_water {
            return;
        }
        let value = bytes as libc::c_int;
        // SAFETY: `socket` is open for as long as the stream beside this value, and the option
        // is a plain int passed by pointer with its size.
        let set = unsafe {
            libc::setsockopt(
                socket,
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if set == 0 {
            self.low_water = bytes;
        } else {
            // Without the mark every read is as before: correct, only busier.
            tracing::debug!(error = %io::Error::last_os_error(), "the replication socket takes no low-water mark");
            self.socket = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// The kernel's low-water mark on `socket`.
    fn kernel_low_water(socket: RawFd) -> usize {
        let mut value: libc::c_int = 0;
        let mut size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: an open socket; an int-sized out value with its size.
        let got = unsafe {
            libc::getsockopt(socket, libc::SOL_SOCKET, libc::SO_RCVLOWAT, (&mut value as *mut libc::c_int).cast(), &mut size)
        };
        assert_eq!(got, 0, "getsockopt(SO_RCVLOWAT) failed");
        value as usize
    }

    const BACKLOG: usize = 8 * LOW_WATER;

    /// A reader behind a backlog: one large read taken, the next about to wait for a full mark.
    async fn behind_a_backlog() -> (TcpStream, TcpStream, ReadPacing, BytesMut) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut reader = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (mut writer, _) = listener.accept().await.unwrap();
        let mut pacing = ReadPacing::new(Some(reader.as_raw_fd()));
        let mut buffer = BytesMut::new();
        writer.write_all(&vec![1u8; BACKLOG]).await.unwrap();
        // Let the kernel hold more than a mark, so the first read is a large one.
        tokio::time::sleep(Duration::from_millis(200)).await;
        pacing.read(&mut reader, &mut buffer).await.unwrap();
        assert!(buffer.len() >= LOW_WATER / 2, "the first read took only {} bytes", buffer.len());
        (reader, writer, pacing, buffer)
    }

    #[tokio::test]
    async fn reading_behind_a_backlog_sets_the_kernels_mark() {
        let (mut reader, _writer, mut pacing, mut buffer) = behind_a_backlog().await;
        let read = buffer.len();
        pacing.read(&mut reader, &mut buffer).await.unwrap();
        assert!(buffer.len() > read);
        assert_eq!(kernel_low_water(reader.as_raw_fd()), LOW_WATER);
    }

    #[tokio::test]
    async fn the_end_of_a_backlog_and_a_small_tail_arrive_under_the_mark() {
        let (mut reader, mut writer, mut pacing, mut buffer) = behind_a_backlog().await;
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            while buffer.len() < BACKLOG {
                pacing.read(&mut reader, &mut buffer).await.unwrap();
            }
        });
        assert!(drained.await.is_ok(), "the backlog's last bytes never arrived ({} of {BACKLOG})", buffer.len());

        writer.write_all(b"tail").await.unwrap();
        let arrived = tokio::time::timeout(Duration::from_secs(10), async {
            while buffer.len() < BACKLOG + 4 {
                pacing.read(&mut reader, &mut buffer).await.unwrap();
            }
        });
        assert!(arrived.await.is_ok(), "a tail far under the low-water mark never arrived");
        assert!(buffer.ends_with(b"tail"));

        // After a short read the next waits for no mark.
        writer.write_all(b"more").await.unwrap();
        pacing.read(&mut reader, &mut buffer).await.unwrap();
        assert_eq!(kernel_low_water(reader.as_raw_fd()), 1, "a read after a short one waits for one byte");
    }
}
