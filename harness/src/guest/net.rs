//! The guest's restricted network, seen from the host: whether a guest TCP
//! port answers a connection that comes from outside the guest, through the
//! firewall, as a client's would.
//!
//! QEMU's user-mode network accepts the host side of a forwarded connection
//! at once, before the guest has seen a packet, and closes it when the
//! guest resets it. So `connect()` succeeding proves nothing: a port is
//! `open` only when bytes from the guest arrive.

use std::io::{ErrorKind, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::guest::vm::GUEST_ADDRESS;

/// How long a probe waits for the guest's first byte. A socket-activated
/// service needs a moment to start under emulation; a firewall that drops
/// the packets answers never.
pub(crate) const PROBE_WAIT: Duration = Duration::from_secs(6);

/// What a connection to a guest port found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PortState {
    /// The guest sent bytes.
    Open,
    /// The connection was closed or reset without a byte: nothing listens,
    /// or a firewall rejects it.
    Refused,
    /// Nothing came back in time: a firewall drops the packets (or the
    /// service is too slow to say anything).
    NoAnswer,
}

impl PortState {
    /// The word captures and tables use.
    pub(crate) fn word(self) -> &'static str {
        match self {
            PortState::Open => "open",
            PortState::Refused => "refused",
            PortState::NoAnswer => "no answer",
        }
    }
}

/// A shell script for the guest that brings its network card up with the
/// address QEMU's forwards go to. No address is configured by the images
/// (and none persists across a reboot), so the harness does this before
/// each probe; it touches no firewall state.
pub(crate) fn bring_up_script() -> String {
    format!(
        r#"dev=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
[ -n "$dev" ] || {{ echo "the guest has no network card" >&2; exit 1; }}
ip link set "$dev" up
ip -4 addr show dev "$dev" | grep -q 'inet {GUEST_ADDRESS}/' || ip addr add {GUEST_ADDRESS}/24 dev "$dev"
"#
    )
}

/// Connects to 127.0.0.1:`host_port` (forwarded to the guest) and waits up
/// to `wait` for the guest's first byte.
pub(crate) fn probe_tcp(host_port: u16, wait: Duration) -> std::io::Result<PortState> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, host_port));
    let deadline = Instant::now() + wait;
    // QEMU accepts for the guest; a refused connect means QEMU is not
    // listening there, which is the harness's trouble, not the guest's.
    let mut stream = TcpStream::connect_timeout(&address, wait)?;
    let mut byte = [0u8; 1];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(PortState::NoAnswer);
        }
        stream.set_read_timeout(Some(left))?;
        return match stream.read(&mut byte) {
            Ok(0) => Ok(PortState::Refused),
            Ok(_) => Ok(PortState::Open),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Ok(PortState::NoAnswer)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                ) =>
            {
                Ok(PortState::Refused)
            }
            Err(e) => Err(e),
        };
    }
}

#[cfg(test)]
mod tests {
    //! Against local listeners standing in for QEMU's forward: this tests
    //! how bytes, a close and silence are read, not a guest.
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    fn listener() -> (TcpListener, u16) {
        let l = TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        let port = l.local_addr().expect("addr").port();
        (l, port)
    }

    #[test]
    fn bytes_mean_open_a_close_means_refused_silence_means_no_answer() {
        let (l, port) = listener();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().expect("accept");
            c.write_all(b"hello\n").expect("write");
        });
        assert_eq!(probe_tcp(port, PROBE_WAIT).expect("probe"), PortState::Open);
        server.join().expect("server");

        let (l, port) = listener();
        let server = std::thread::spawn(move || drop(l.accept().expect("accept")));
        assert_eq!(
            probe_tcp(port, PROBE_WAIT).expect("probe"),
            PortState::Refused
        );
        server.join().expect("server");

        // Accepted (by the backlog) and never answered.
        let (_l, port) = listener();
        let started = Instant::now();
        assert_eq!(
            probe_tcp(port, Duration::from_millis(500)).expect("probe"),
            PortState::NoAnswer
        );
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
