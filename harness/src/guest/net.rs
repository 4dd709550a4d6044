//! The guest's restricted network, seen from the host: whether a guest TCP
//! port answers a connection that comes from outside the guest, through the
//! firewall, as a client's would.
//!
//! QEMU's user-mode network (libslirp) accepts the host side of a forwarded
//! connection at once, before the guest has seen a packet, and sends the
//! guest a SYN of its own. So `connect()` succeeding proves nothing. What
//! tells is the guest's answer to that SYN, which libslirp's connection
//! table shows (QEMU's `info usernet`): the guest-side connection stays
//! `SYN_SENT` until the guest answers, and becomes `ESTABLISHED` when it
//! accepts (libslirp tcp_input.c: `soisfconnected(so); tp->t_state =
//! TCPS_ESTABLISHED`). A reset closes the host side at once (`tcp_drop` →
//! `tcp_close` → `closesocket`), which the host reads as end of file. An
//! ICMP error is ignored by libslirp (ip_icmp.c), so a firewall that
//! REJECTs with one reads like one that DROPs: `no answer`.
//!
//! A port is therefore `open` once the guest has accepted the connection
//! (whether or not the service says anything first: a web server waits for
//! its request), or once bytes from it arrive.

use std::io::{ErrorKind, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::guest::vm::GUEST_ADDRESS;

/// QEMU's own address on the user-mode network (its default).
const GATEWAY: &str = "10.0.2.2";

/// How long a probe waits for the guest to accept or refuse. That answer is
/// the guest kernel's own (a SYN-ACK or a reset, sent as the SYN is
/// received), not a service's, which may take seconds to start under
/// emulation: a guest sitting idle at its shell gives it within
/// milliseconds, and 3 s leaves a wide margin. A firewall that drops the
/// packets answers never.
pub(crate) const PROBE_WAIT: Duration = Duration::from_secs(3);

/// What a connection to a guest port found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PortState {
    /// The guest accepted the connection, or sent bytes.
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
# One datagram toward QEMU's side of the network (which restrict=on drops)
# makes the guest ask for that address by ARP, and QEMU learns the guest's
# hardware address from the question (libslirp slirp.c, arp_input: the
# asker goes into its table before the answer): the probe's SYN then goes
# out at once instead of after an ARP exchange of QEMU's own.
echo 2>/dev/null > /dev/udp/{GATEWAY}/9 || true
"#
    )
}

/// How often a probe looks at the connection while it waits.
const PROBE_TICK: Duration = Duration::from_millis(20);

/// Connects to 127.0.0.1:`host_port` (forwarded to the guest) and waits up
/// to `wait` for the guest to accept, refuse or say something.
/// `accepted` says whether the guest has accepted the connection yet (see
/// [`accepted_in_usernet`]); it is asked between looks at the socket. The
/// harness probes all of a round's ports at once with [`probe_tcp_all`].
#[cfg(test)]
fn probe_tcp(
    host_port: u16,
    wait: Duration,
    accepted: &mut dyn FnMut() -> bool,
) -> std::io::Result<PortState> {
    let mut states = probe_tcp_all(&[host_port], wait, &mut |_| {
        if accepted() {
            vec![0]
        } else {
            Vec::new()
        }
    });
    states.pop().unwrap_or(Ok(PortState::NoAnswer))
}

/// [`probe_tcp`] for several ports at once: every connection is made
/// first, then all wait together, so that ports that do not answer cost
/// `wait` once, not once each. `accepted` is given the indexes of the ports
/// still undecided and returns those whose connection the guest has
/// accepted (one look at the connection table serves them all).
pub(crate) fn probe_tcp_all(
    host_ports: &[u16],
    wait: Duration,
    accepted: &mut dyn FnMut(&[usize]) -> Vec<usize>,
) -> Vec<std::io::Result<PortState>> {
    let deadline = Instant::now() + wait;
    // QEMU accepts for the guest; a refused connect means QEMU is not
    // listening there, which is the harness's trouble, not the guest's.
    let mut streams: Vec<Option<TcpStream>> = Vec::new();
    let mut states: Vec<Option<std::io::Result<PortState>>> = Vec::new();
    for &port in host_ports {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        match TcpStream::connect_timeout(&address, wait).and_then(|s| {
            s.set_nonblocking(true)?;
            Ok(s)
        }) {
            Ok(stream) => {
                streams.push(Some(stream));
                states.push(None);
            }
            Err(e) => {
                streams.push(None);
                states.push(Some(Err(e)));
            }
        }
    }
    let mut byte = [0u8; 1];
    loop {
        for (i, stream) in streams.iter_mut().enumerate() {
            if states[i].is_some() {
                continue;
            }
            let Some(stream) = stream.as_mut() else {
                continue;
            };
            states[i] = match stream.read(&mut byte) {
                Ok(0) => Some(Ok(PortState::Refused)),
                Ok(_) => Some(Ok(PortState::Open)),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
                Err(e) if e.kind() == ErrorKind::Interrupted => None,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                    ) =>
                {
                    Some(Ok(PortState::Refused))
                }
                Err(e) => Some(Err(e)),
            };
        }
        let undecided: Vec<usize> = (0..states.len()).filter(|&i| states[i].is_none()).collect();
        if undecided.is_empty() {
            break;
        }
        for i in accepted(&undecided) {
            if let Some(state @ None) = states.get_mut(i) {
                *state = Some(Ok(PortState::Open));
            }
        }
        if states.iter().all(Option::is_some) {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(PROBE_TICK));
    }
    states
        .into_iter()
        .map(|s| s.unwrap_or(Ok(PortState::NoAnswer)))
        .collect()
}

/// Whether QEMU's `info usernet` text shows a connection from host port
/// `host_port` to guest port `guest_port` that the guest has accepted: a
/// TCP state past the handshake. The listening forward itself reads
/// `HOST_FORWARD`, a connection the guest has not answered `SYN_SENT`
/// (libslirp misc.c, `slirp_connection_info`: a line per socket,
/// `TCP[STATE] FD SRC-ADDRESS SRC-PORT DST-ADDRESS DST-PORT RECVQ SENDQ`,
/// where an incoming connection's source is the forward's host address and
/// port).
pub(crate) fn accepted_in_usernet(text: &str, host_port: u16, guest_port: u16) -> bool {
    const ACCEPTED: &[&str] = &[
        "ESTABLISHED",
        "CLOSE_WAIT",
        "FIN_WAIT_1",
        "CLOSING",
        "LAST_ACK",
        "FIN_WAIT_2",
        "TIME_WAIT",
    ];
    text.lines().any(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(state) = words
            .first()
            .and_then(|w| w.strip_prefix("TCP["))
            .and_then(|w| w.strip_suffix(']'))
        else {
            return false;
        };
        ACCEPTED.contains(&state)
            && words.get(3) == Some(&host_port.to_string().as_str())
            && words.get(4) == Some(&GUEST_ADDRESS)
            && words.get(5) == Some(&guest_port.to_string().as_str())
    })
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
        let never = &mut || false;
        let (l, port) = listener();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().expect("accept");
            c.write_all(b"hello\n").expect("write");
        });
        assert_eq!(
            probe_tcp(port, PROBE_WAIT, never).expect("probe"),
            PortState::Open
        );
        server.join().expect("server");

        let (l, port) = listener();
        let server = std::thread::spawn(move || drop(l.accept().expect("accept")));
        assert_eq!(
            probe_tcp(port, PROBE_WAIT, never).expect("probe"),
            PortState::Refused
        );
        server.join().expect("server");

        // Accepted (by the backlog) and never answered.
        let (_l, port) = listener();
        assert_eq!(
            probe_tcp(port, Duration::from_millis(500), never).expect("probe"),
            PortState::NoAnswer
        );
    }

    #[test]
    fn ports_that_do_not_answer_are_waited_for_together() {
        let (_quiet_a, a) = listener();
        let (_quiet_b, b) = listener();
        let (talker, c) = listener();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = talker.accept().expect("accept");
            conn.write_all(b"hi").expect("write");
            // Held open until the probe has read.
            std::thread::sleep(Duration::from_millis(300));
        });
        let wait = Duration::from_millis(600);
        let started = Instant::now();
        let states = probe_tcp_all(&[a, b, c], wait, &mut |_| Vec::new());
        let took = started.elapsed();
        server.join().expect("server");
        let states: Vec<PortState> = states.into_iter().map(|s| s.expect("probe")).collect();
        assert_eq!(
            states,
            vec![PortState::NoAnswer, PortState::NoAnswer, PortState::Open]
        );
        // Once for both silent ports, not twice: well under 2 × wait.
        assert!(took < wait * 2 - Duration::from_millis(100), "{took:?}");
        // The connection table's answer counts for the port it names.
        let states = probe_tcp_all(&[a, b], wait, &mut |undecided| {
            undecided.iter().copied().filter(|&i| i == 1).collect()
        });
        let states: Vec<PortState> = states.into_iter().map(|s| s.expect("probe")).collect();
        assert_eq!(states, vec![PortState::NoAnswer, PortState::Open]);
    }

    #[test]
    fn a_silent_service_the_guest_accepted_for_is_open() {
        // A listener that accepts and says nothing, as a web server does;
        // the connection table says the guest accepted.
        let (_l, port) = listener();
        let mut asked = 0;
        let state = probe_tcp(port, PROBE_WAIT, &mut || {
            asked += 1;
            asked >= 3
        })
        .expect("probe");
        assert_eq!(state, PortState::Open);
        assert_eq!(asked, 3);
    }

    #[test]
    fn the_connection_table_tells_an_accepted_connection_from_a_waiting_one() {
        // As QEMU 10 with libslirp 4.7 prints it.
        let table = "Hub -1 (net0):
  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ
  TCP[SYN_SENT]      15       127.0.0.1 40001       10.0.2.15  8080     0     0
  TCP[ESTABLISHED]   16       127.0.0.1 40002       10.0.2.15    22     0     0
  TCP[HOST_FORWARD]  12       127.0.0.1 40001       10.0.2.15  8080     0     0
  TCP[HOST_FORWARD]  13       127.0.0.1 40002       10.0.2.15    22     0     0
";
        assert!(!accepted_in_usernet(table, 40001, 8080));
        assert!(accepted_in_usernet(table, 40002, 22));
        assert!(!accepted_in_usernet(table, 40002, 8080));
        assert!(!accepted_in_usernet("", 40001, 8080));
        let later = table.replace("TCP[SYN_SENT]   ", "TCP[CLOSE_WAIT] ");
        assert!(accepted_in_usernet(&later, 40001, 8080));
    }
}
