//! The handover socket's wire: length-prefixed JSON messages with descriptors attached
//! (SCM_RIGHTS): an 8-byte head (body length, descriptor count, little-endian u32s) sent
//! with the message's descriptors, then the body.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use super::Message;
use crate::limits::{HANDOVER_FDS_PER_MSG, HANDOVER_MAX_FRAME};

fn send_fds(sock: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    // SAFETY: an all-zero msghdr is a valid empty one; every pointer set below outlives
    // the sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` bytes, enough for one header with
        // `fd_bytes` of data (CMSG_SPACE), so CMSG_FIRSTHDR is non-null and CMSG_DATA
        // has room for the descriptors.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), fd_bytes);
        }
    }
    loop {
        // SAFETY: `msg` and what it points at are valid for the call; `sock` is an open
        // socket of this process.
        let r = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn recv_fds(sock: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let max = HANDOVER_FDS_PER_MSG + 2;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((max * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    // SAFETY: an all-zero msghdr is a valid empty one; every pointer set below outlives
    // the recvmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let n = loop {
        // SAFETY: `msg` and its buffers are valid for the call; `sock` is an open socket
        // of this process.
        let r = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if r >= 0 {
            break r as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    // SAFETY: the kernel filled `msg_control` with `msg_controllen` bytes of well-formed
    // control messages; CMSG_FIRSTHDR/NXTHDR stay within it, and each SCM_RIGHTS payload
    // holds `(cmsg_len - CMSG_LEN(0)) / 4` descriptors now owned by this process.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("descriptors were cut off (MSG_CTRUNC)"));
    }
    Ok(n)
}

pub(super) fn send_msg(sock: &UnixStream, m: &Message, fds: &[RawFd]) -> io::Result<()> {
    let body = serde_json::to_vec(m).map_err(io::Error::other)?;
    let mut head = [0u8; 8];
    head[..4].copy_from_slice(&(body.len() as u32).to_le_bytes());
    head[4..].copy_from_slice(&(fds.len() as u32).to_le_bytes());
    let n = send_fds(sock.as_raw_fd(), &head, fds)?;
    let mut w = sock;
    w.write_all(&head[n..])?;
    w.write_all(&body)
}

pub(super) fn recv_msg(sock: &UnixStream) -> io::Result<(Message, Vec<OwnedFd>)> {
    let mut head = [0u8; 8];
    let mut fds = Vec::new();
    let mut got = 0;
    while got < head.len() {
        let n = recv_fds(sock.as_raw_fd(), &mut head[got..], &mut fds)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the other process closed the handover socket",
            ));
        }
        got += n;
    }
    let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
    let want = u32::from_le_bytes(head[4..].try_into().expect("4 bytes")) as usize;
    if len > HANDOVER_MAX_FRAME {
        return Err(io::Error::other(format!(
            "a handover message of {len} bytes"
        )));
    }
    let mut body = vec![0u8; len];
    let mut r = sock;
    r.read_exact(&mut body)?;
    if fds.len() != want {
        return Err(io::Error::other(format!(
            "{} descriptors came with a message announcing {want}",
            fds.len()
        )));
    }
    let m = serde_json::from_slice(&body).map_err(io::Error::other)?;
    Ok((m, fds))
}
