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

/// How long a probe waits at most for the guest to accept or refuse. That
/// answer is the guest kernel's own (a SYN-ACK or a reset, sent as the SYN
/// is received), not a service's, which may take seconds to start under
/// emulation: a guest sitting idle at its shell gives it within
/// milliseconds, and 3 s leaves a wide margin. A firewall that drops the
/// packets answers never; the wait is cut short once the guest is known to
/// have dealt with the SYN (see [`probe_tcp_all`]).
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

/// What QEMU's connection table shows of one probe's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Nothing yet: QEMU has not taken the host side of the connection.
    Nothing,
    /// QEMU has sent the guest its SYN, and the guest has not accepted.
    Sent,
    /// The guest accepted the connection.
    Accepted,
}

/// Connects to 127.0.0.1:`host_port` (forwarded to the guest) and waits up
/// to `wait` for the guest to accept, refuse or say something. `look`
/// reads the connection table (see [`seen_in_usernet`]) between looks at
/// the socket, and `past` is the barrier of [`probe_tcp_all`]. The
/// harness probes all of a round's ports at once with [`probe_tcp_all`].
#[cfg(test)]
fn probe_tcp(
    host_port: u16,
    wait: Duration,
    look: &mut dyn FnMut() -> Seen,
    past: &mut dyn FnMut() -> bool,
) -> std::io::Result<PortState> {
    let mut states = probe_tcp_all(&[host_port], wait, &mut |_| vec![look()], past);
    states.pop().unwrap_or(Ok(PortState::NoAnswer))
}

/// [`probe_tcp`] for several ports at once: every connection is made
/// first, then all wait together, so that ports that do not answer cost
/// one wait, not one each. `look` is given the indexes of the ports still
/// undecided and returns what the connection table shows of each, in the
/// same order (one look at the table serves them all).
///
/// Silence is "no answer" once `wait` has passed, or sooner, once the
/// guest is known to have dealt with every SYN: when the table shows each
/// undecided connection's SYN sent, `past` is asked once to make sure the
/// guest has run its own programs since (see `check::capture`), and the
/// table is then read twice more. A SYN is answered or dropped by the
/// guest's kernel as it is received, before any program of the guest runs
/// again; its answer reaches the table within QEMU's next turns. Where
/// `past` cannot tell (it returns false), the whole `wait` is waited.
pub(crate) fn probe_tcp_all(
    host_ports: &[u16],
    wait: Duration,
    look: &mut dyn FnMut(&[usize]) -> Vec<Seen>,
    past: &mut dyn FnMut() -> bool,
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
    // How many looks at the table are left after the barrier before the
    // silence counts as no answer; None until the barrier has been passed.
    let mut looks_after_barrier: Option<u32> = None;
    let mut barrier_tried = false;
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
        if undecided.is_empty() || looks_after_barrier == Some(0) {
            break;
        }
        let seen = look(&undecided);
        for (&i, seen) in undecided.iter().zip(&seen) {
            if *seen == Seen::Accepted {
                states[i] = Some(Ok(PortState::Open));
            }
        }
        let all_sent = seen.len() == undecided.len()
            && seen.iter().all(|s| *s != Seen::Nothing)
            && seen.contains(&Seen::Sent);
        match looks_after_barrier.as_mut() {
            Some(left) => *left -= 1,
            None if all_sent && !barrier_tried => {
                barrier_tried = true;
                if past() {
                    looks_after_barrier = Some(2);
                    // Straight to the next look: the barrier took its time.
                    continue;
                }
            }
            None => {}
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

/// What QEMU's `info usernet` text shows of the connection from host port
/// `host_port` to guest port `guest_port`. The listening forward itself
/// reads `HOST_FORWARD`; the connection made for a client reads `SYN_SENT`
/// from the moment QEMU has sent the guest its SYN (libslirp tcp_subr.c,
/// `tcp_connect`: the state is set and `tcp_output` called as the host
/// side is accepted) until the guest answers, and a state past the
/// handshake once the guest has accepted (libslirp misc.c,
/// `slirp_connection_info`: a line per socket, `TCP[STATE] FD SRC-ADDRESS
/// SRC-PORT DST-ADDRESS DST-PORT RECVQ SENDQ`, where an incoming
/// connection's source is the forward's host address and port).
pub(crate) fn seen_in_usernet(text: &str, host_port: u16, guest_port: u16) -> Seen {
    const ACCEPTED: &[&str] = &[
        "ESTABLISHED",
        "CLOSE_WAIT",
        "FIN_WAIT_1",
        "CLOSING",
        "LAST_ACK",
        "FIN_WAIT_2",
        "TIME_WAIT",
    ];
    let (host_port, guest_port) = (host_port.to_string(), guest_port.to_string());
    let mut seen = Seen::Nothing;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(state) = words
            .first()
            .and_then(|w| w.strip_prefix("TCP["))
            .and_then(|w| w.strip_suffix(']'))
        else {
            continue;
        };
        if words.get(3) != Some(&host_port.as_str())
            || words.get(4) != Some(&GUEST_ADDRESS)
            || words.get(5) != Some(&guest_port.as_str())
        {
            continue;
        }
        if ACCEPTED.contains(&state) {
            return Seen::Accepted;
        }
        if state == "SYN_SENT" {
            seen = Seen::Sent;
        }
    }
    seen
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

    /// A connection table that shows `before` until its `nth` look, and
    /// `then` from it on.
    fn turns(nth: usize, before: Seen, then: Seen) -> impl FnMut() -> Seen {
        let mut looks = 0;
        move || {
            looks += 1;
            if looks >= nth {
                then
            } else {
                before
            }
        }
    }

    /// A connection table that never shows the connection.
    fn unseen(undecided: &[usize]) -> Vec<Seen> {
        vec![Seen::Nothing; undecided.len()]
    }

    #[test]
    fn bytes_mean_open_a_close_means_refused_silence_means_no_answer() {
        let nothing = &mut || Seen::Nothing;
        let never = &mut || false;
        let (l, port) = listener();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().expect("accept");
            c.write_all(b"hello\n").expect("write");
        });
        assert_eq!(
            probe_tcp(port, PROBE_WAIT, nothing, never).expect("probe"),
            PortState::Open
        );
        server.join().expect("server");

        let (l, port) = listener();
        let server = std::thread::spawn(move || drop(l.accept().expect("accept")));
        assert_eq!(
            probe_tcp(port, PROBE_WAIT, nothing, never).expect("probe"),
            PortState::Refused
        );
        server.join().expect("server");

        // Accepted (by the backlog) and never answered.
        let (_l, port) = listener();
        assert_eq!(
            probe_tcp(port, Duration::from_millis(500), nothing, never).expect("probe"),
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
        let states = probe_tcp_all(&[a, b, c], wait, &mut unseen, &mut || false);
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
        let states = probe_tcp_all(
            &[a, b],
            wait,
            &mut |undecided| {
                undecided
                    .iter()
                    .map(|&i| {
                        if i == 1 {
                            Seen::Accepted
                        } else {
                            Seen::Nothing
                        }
                    })
                    .collect()
            },
            &mut || false,
        );
        let states: Vec<PortState> = states.into_iter().map(|s| s.expect("probe")).collect();
        assert_eq!(states, vec![PortState::NoAnswer, PortState::Open]);
    }

    #[test]
    fn a_silent_service_the_guest_accepted_for_is_open() {
        // A listener that accepts and says nothing, as a web server does;
        // the connection table says the guest accepted.
        let (_l, port) = listener();
        let mut asked = 0;
        let mut look = turns(3, Seen::Nothing, Seen::Accepted);
        let state = probe_tcp(
            port,
            PROBE_WAIT,
            &mut || {
                asked += 1;
                look()
            },
            &mut || false,
        )
        .expect("probe");
        assert_eq!(state, PortState::Open);
        assert_eq!(asked, 3);
    }

    #[test]
    fn silence_once_the_guest_has_run_past_every_syn_is_no_answer_at_once() {
        let (_quiet_a, a) = listener();
        let (_quiet_b, b) = listener();
        let mut barriers = 0;
        let mut looks = 0;
        let started = Instant::now();
        let states = probe_tcp_all(
            &[a, b],
            PROBE_WAIT,
            &mut |undecided| {
                looks += 1;
                vec![Seen::Sent; undecided.len()]
            },
            &mut || {
                barriers += 1;
                true
            },
        );
        let took = started.elapsed();
        let states: Vec<PortState> = states.into_iter().map(|s| s.expect("probe")).collect();
        assert_eq!(states, vec![PortState::NoAnswer, PortState::NoAnswer]);
        assert_eq!(barriers, 1);
        // The look that found the SYNs sent, then two after the barrier.
        assert_eq!(looks, 3);
        assert!(took < PROBE_WAIT / 2, "{took:?}");
    }

    #[test]
    fn an_answer_the_table_shows_after_the_barrier_still_counts() {
        let (_l, port) = listener();
        let mut look = turns(3, Seen::Sent, Seen::Accepted);
        let state = probe_tcp(port, PROBE_WAIT, &mut look, &mut || true).expect("probe");
        assert_eq!(state, PortState::Open);
    }

    #[test]
    fn without_the_barrier_or_before_every_syn_is_sent_the_whole_wait_is_waited() {
        let wait = Duration::from_millis(400);
        // The barrier could not tell: asked once, then the wait runs out.
        let (_l, port) = listener();
        let mut barriers = 0;
        let started = Instant::now();
        let state = probe_tcp(port, wait, &mut || Seen::Sent, &mut || {
            barriers += 1;
            false
        })
        .expect("probe");
        assert_eq!(state, PortState::NoAnswer);
        assert_eq!(barriers, 1);
        assert!(started.elapsed() >= wait);
        // One port's SYN not yet sent: no barrier at all.
        let (_quiet_a, a) = listener();
        let (_quiet_b, b) = listener();
        let mut barriers = 0;
        let started = Instant::now();
        let states = probe_tcp_all(
            &[a, b],
            wait,
            &mut |undecided| {
                undecided
                    .iter()
                    .map(|&i| if i == 0 { Seen::Sent } else { Seen::Nothing })
                    .collect()
            },
            &mut || {
                barriers += 1;
                true
            },
        );
        assert!(states.iter().all(|s| matches!(s, Ok(PortState::NoAnswer))));
        assert_eq!(barriers, 0);
        assert!(started.elapsed() >= wait);
        // A table that cannot be read (no answer from the monitor) is no
        // reason to stop early either.
        let started = Instant::now();
        let state = probe_tcp_all(&[a], wait, &mut |_| Vec::new(), &mut || true);
        assert!(matches!(state[..], [Ok(PortState::NoAnswer)]));
        assert!(started.elapsed() >= wait);
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
        assert_eq!(seen_in_usernet(table, 40001, 8080), Seen::Sent);
        assert_eq!(seen_in_usernet(table, 40002, 22), Seen::Accepted);
        assert_eq!(seen_in_usernet(table, 40002, 8080), Seen::Nothing);
        assert_eq!(seen_in_usernet("", 40001, 8080), Seen::Nothing);
        let later = table.replace("TCP[SYN_SENT]   ", "TCP[CLOSE_WAIT] ");
        assert_eq!(seen_in_usernet(&later, 40001, 8080), Seen::Accepted);
    }
}
