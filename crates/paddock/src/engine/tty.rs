//! Pseudo-terminals for `docker run -t` and `docker exec -t`.
//!
//! The runtime allocates the pty inside the container (so the slave is the container's own
//! `/dev/pts/N` and its controlling terminal) and sends the master over a console socket, the
//! OCI runtime convention. Whoever listens on that socket (the shim for a container, the daemon
//! for an exec) owns the master: it pumps bytes and resizes it. rustix's safe ancillary-data
//! API hands the received descriptor over as an `OwnedFd`, so no `unsafe` is needed here.

use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

/// Accepts the runtime's connection on `listener` and receives the pty master it sends.
/// Gives up after `timeout` (the runtime failed before it connected).
pub fn receive_master(listener: &UnixListener, timeout: Duration) -> io::Result<OwnedFd> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    let conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the runtime never connected to the console socket",
                ));
            }
            Err(e) => return Err(e),
        }
    };
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(timeout))?;
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    let mut name = [0u8; 256];
    rustix::net::recvmsg(
        conn.as_fd(),
        &mut [IoSliceMut::new(&mut name)],
        &mut cmsg,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    for msg in cmsg.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = msg
            && let Some(fd) = fds.next()
        {
            return Ok(fd);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "the console socket message carried no file descriptor",
    ))
}

/// Sets the window size of the terminal behind `fd` (a pty master).
pub fn resize(fd: impl AsFd, height: u16, width: u16) -> io::Result<()> {
    let ws = rustix::termios::Winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(fd, ws)?;
    Ok(())
}

/// Parses a resize request line `"<height> <width>"`.
pub fn parse_size(line: &str) -> Option<(u16, u16)> {
    let mut it = line.split_whitespace();
    let h = it.next()?.parse().ok()?;
    let w = it.next()?.parse().ok()?;
    Some((h, w))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn size_lines() {
        assert_eq!(parse_size("24 80\n"), Some((24, 80)));
        assert_eq!(parse_size("24"), None);
        assert_eq!(parse_size("x 80"), None);
    }

    #[test]
    fn receives_a_descriptor_and_resizes_a_real_pty() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("console.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let pty = nix::pty::openpty(None, None).unwrap();
        let sender = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let fds = [std::os::fd::AsRawFd::as_raw_fd(&pty.master)];
        let iov = [io::IoSlice::new(b"/dev/ptmx")];
        nix::sys::socket::sendmsg::<nix::sys::socket::UnixAddr>(
            std::os::fd::AsRawFd::as_raw_fd(&sender),
            &iov,
            &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
            nix::sys::socket::MsgFlags::empty(),
            None,
        )
        .unwrap();
        let master = receive_master(&listener, Duration::from_secs(5)).unwrap();
        resize(&master, 33, 101).unwrap();
        let ws = rustix::termios::tcgetwinsize(&pty.slave).unwrap();
        assert_eq!((ws.ws_row, ws.ws_col), (33, 101));
    }

    #[test]
    fn gives_up_when_nobody_connects() {
        let d = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(d.path().join("c.sock")).unwrap();
        let e = receive_master(&listener, Duration::from_millis(50)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
