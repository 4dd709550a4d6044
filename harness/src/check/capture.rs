//! Captured guest state and the normalisers that make it comparable from run
//! to run.

use std::sync::OnceLock;
use std::time::Duration;

use regex::Regex;

use crate::guest::console::{CommandOutput, Console, ConsoleError};
use crate::guest::net;
use crate::guest::vm::Vm;
use crate::project::{CaptureKind, CaptureSpec, Normalizer};

/// How much of each output stream the harness's own commands in a round
/// of captures bring back (evidence of a whole boot is larger than most
/// captures).
const EXTRA_MAX_OUTPUT: u64 = 4 << 20;

/// How long one capture command may take.
const CAPTURE_TIMEOUT: Duration = Duration::from_secs(60);

/// One piece of recorded guest state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// The capture's name from the scenario.
    pub(crate) name: String,
    /// The command that produced it.
    pub(crate) command: String,
    /// Exit status of the command.
    pub(crate) status: i32,
    /// Normalised standard output (standard error appended, marked, when the
    /// command wrote any).
    pub(crate) text: String,
    /// The output exactly as the guest printed it.
    pub(crate) raw: String,
    /// The guest TCP port, for a probe from the host.
    pub(crate) probe: Option<u16>,
    /// The normalisers applied (beyond the default ones), which may know
    /// how to summarise the text.
    pub(crate) normalize: Vec<Normalizer>,
}

impl Capture {
    /// Whether the capture summarises itself: a probe, or a normaliser that
    /// knows its format.
    pub(crate) fn has_summary(&self) -> bool {
        self.probe.is_some()
            || self
                .normalize
                .iter()
                .any(|n| n.summary(&self.text).is_some())
    }
}

/// Facts about the guest that normalisers replace with placeholders.
#[derive(Debug, Clone, Default)]
pub(crate) struct GuestFacts {
    /// The guest's host name.
    pub(crate) hostname: String,
    /// `uname -r` of the running kernel.
    pub(crate) kernel_release: String,
}

impl GuestFacts {
    /// The script that prints them, a line each.
    const SCRIPT: &'static str = "hostname; uname -r";

    fn parse(out: &CommandOutput) -> GuestFacts {
        let mut lines = out.stdout.lines();
        GuestFacts {
            hostname: lines.next().unwrap_or_default().trim().to_owned(),
            kernel_release: lines.next().unwrap_or_default().trim().to_owned(),
        }
    }
}

/// What one round of captures found.
#[derive(Debug, Clone)]
pub(crate) struct Taken {
    /// The captures, normalised, in the scenario's order.
    pub(crate) captures: Vec<Capture>,
    /// The facts they were normalised with, read in the same round trip.
    pub(crate) facts: GuestFacts,
    /// What the extra commands printed, in their order.
    pub(crate) extra: Vec<CommandOutput>,
}

/// Runs every capture command (and probes every port) and normalises the
/// output. One round trip to the guest runs the commands, reads the facts
/// the normalisers need, brings the network card up when a port is probed
/// and runs the `extra` commands (name, script) after them; the probes
/// follow, from the host, through the guest's forwarded ports.
pub(crate) fn take(
    console: &mut Console,
    vm: &mut Vm,
    specs: &[CaptureSpec],
    when: &str,
    extra: &[(String, String)],
) -> Result<Taken, ConsoleError> {
    let names: Vec<String> = specs
        .iter()
        .map(|spec| format!("capture {:?} ({when})", spec.name))
        .collect();
    let facts_what = format!("reading host name and kernel release ({when})");
    let up_what = format!("bringing the network card up ({when})");
    let up_script = net::bring_up_script();
    let probes = specs
        .iter()
        .any(|spec| matches!(spec.what, CaptureKind::ProbeTcp(_)));
    let default = crate::project::DEFAULT_MAX_OUTPUT;
    let mut scripts: Vec<(&str, &str, u64)> = vec![(&facts_what, GuestFacts::SCRIPT, default)];
    scripts.extend(
        specs
            .iter()
            .zip(&names)
            .filter_map(|(spec, what)| match &spec.what {
                CaptureKind::Run(command) => {
                    Some((what.as_str(), command.as_str(), spec.max_output))
                }
                CaptureKind::ProbeTcp(_) => None,
            }),
    );
    if probes {
        scripts.push((&up_what, &up_script, default));
    }
    scripts.extend(
        extra
            .iter()
            .map(|(what, script)| (what.as_str(), script.as_str(), EXTRA_MAX_OUTPUT)),
    );
    let mut outputs = console.run_all_limited(&scripts, CAPTURE_TIMEOUT)?;
    let extra_outputs = outputs.split_off(outputs.len().saturating_sub(extra.len()));
    let mut outputs = outputs.into_iter();
    let facts = outputs
        .next()
        .map(|out| GuestFacts::parse(&out))
        .unwrap_or_default();
    let up = if probes { outputs.next_back() } else { None };
    let probe_ports: Vec<(String, u16)> = specs
        .iter()
        .zip(&names)
        .filter_map(|(spec, what)| match spec.what {
            CaptureKind::ProbeTcp(port) => Some((what.clone(), port)),
            CaptureKind::Run(_) => None,
        })
        .collect();
    let mut probed = probe(up.as_ref(), console, vm, &probe_ports).into_iter();
    let captures = specs
        .iter()
        .zip(&names)
        .map(|(spec, what)| {
            let (out, probe) = match &spec.what {
                CaptureKind::Run(_) => (
                    outputs.next().ok_or_else(|| ConsoleError::Protocol {
                        what: what.clone(),
                        message: "no result".into(),
                    })?,
                    None,
                ),
                CaptureKind::ProbeTcp(port) => (
                    probed.next().ok_or_else(|| ConsoleError::Protocol {
                        what: what.clone(),
                        message: "no probe result".into(),
                    })??,
                    Some(*port),
                ),
            };
            let mut raw = out.stdout.clone();
            if !out.stderr.trim().is_empty() {
                if !raw.is_empty() && !raw.ends_with('\n') {
                    raw.push('\n');
                }
                raw.push_str("[stderr]\n");
                raw.push_str(&out.stderr);
            }
            let normalizers: Vec<Normalizer> = Normalizer::DEFAULT
                .iter()
                .chain(spec.normalize.iter())
                .copied()
                .collect();
            Ok(Capture {
                name: spec.name.clone(),
                command: spec.command_text(),
                status: out.status,
                text: normalize(&raw, &normalizers, &facts),
                raw,
                probe,
                normalize: spec.normalize.clone(),
            })
        })
        .collect::<Result<Vec<_>, ConsoleError>>()?;
    Ok(Taken {
        captures,
        facts,
        extra: extra_outputs,
    })
}

/// Probes every port at once from the host (see [`net::probe_tcp_all`]),
/// once the guest's network card is up (`up`: how bringing it up went);
/// one result per `(what, port)`, in order. The text is the port's state;
/// a guest that could not bring its card up gives that error instead
/// (non-zero status), never a made-up state.
fn probe(
    up: Option<&CommandOutput>,
    console: &mut Console,
    vm: &mut Vm,
    ports: &[(String, u16)],
) -> Vec<Result<CommandOutput, ConsoleError>> {
    let io = |what: &str, message: String| ConsoleError::Io {
        what: what.to_owned(),
        message,
    };
    if ports.is_empty() {
        return Vec::new();
    }
    let Some(up) = up else {
        return ports
            .iter()
            .map(|(what, _)| Err(io(what, "the network card was not brought up".into())))
            .collect();
    };
    if up.status != 0 {
        return ports.iter().map(|_| Ok(up.clone())).collect();
    }
    let mut host_ports = Vec::new();
    for (what, port) in ports {
        match vm.forwarded().get(port) {
            Some(host) => host_ports.push(*host),
            None => {
                return ports
                    .iter()
                    .map(|_| {
                        Err(io(
                            what,
                            format!("tcp/{port} is not forwarded to the guest"),
                        ))
                    })
                    .collect()
            }
        }
    }
    // A monitor that does not answer leaves only the bytes to go by.
    let mut look = |undecided: &[usize]| -> Vec<net::Seen> {
        let Ok(table) = vm.usernet() else {
            return Vec::new();
        };
        undecided
            .iter()
            .map(|&i| net::seen_in_usernet(&table, host_ports[i], ports[i].1))
            .collect()
    };
    // Whether the guest has dealt with the SYNs QEMU has sent it. When the
    // connection table shows a SYN sent, QEMU has already put it in the
    // guest's receive ring and raised the card's interrupt (libslirp
    // if.c, `if_output` → `if_start` → the card's receive, in the same
    // call, the guest's hardware address being known since the card was
    // brought up). The guest's kernel takes that interrupt, and answers or
    // drops the SYN in the softirq that follows it, before it returns to
    // any program (kernel/softirq.c, `irq_exit` → `invoke_softirq`); on
    // the guest's one processor (QEMU is given `-smp 1`, see
    // `MachineOptions::qemu_args`) a shell that reads a line typed after
    // the table was read has therefore run past it. Twice: where the
    // kernel leaves softirqs to its
    // ksoftirqd thread (`ksoftirqd_running`, from "softirq: Let ksoftirqd
    // do its job" in Linux 4.9 until its revert in 6.5), that thread has
    // run by the time the shell, having blocked on its next read, is woken
    // for the second line.
    let what = ports
        .first()
        .map_or_else(String::new, |(what, _)| what.clone());
    let mut past =
        || console.barrier(&what, net::PROBE_WAIT) && console.barrier(&what, net::PROBE_WAIT);
    let states = net::probe_tcp_all(&host_ports.clone(), net::PROBE_WAIT, &mut look, &mut past);
    states
        .into_iter()
        .zip(ports.iter().zip(&host_ports))
        .map(|(state, ((what, port), host_port))| {
            let state = state.map_err(|e| {
                io(
                    what,
                    format!("connecting to 127.0.0.1:{host_port} (the guest's tcp/{port}): {e}"),
                )
            })?;
            Ok(CommandOutput {
                stdout: format!("{}\n", state.word()),
                stderr: String::new(),
                status: 0,
            })
        })
        .collect()
}

fn re(cell: &'static OnceLock<Regex>, pattern: &str) -> &'static Regex {
    cell.get_or_init(|| {
        Regex::new(pattern).unwrap_or_else(|e| panic!("built-in pattern {pattern}: {e}"))
    })
}

/// Applies normalisers in order.
pub(crate) fn normalize(text: &str, normalizers: &[Normalizer], facts: &GuestFacts) -> String {
    let mut out = text.replace("\r\n", "\n");
    for normalizer in normalizers {
        out = apply(&out, *normalizer, facts);
    }
    out
}

fn apply(text: &str, normalizer: Normalizer, facts: &GuestFacts) -> String {
    static SYSLOG: OnceLock<Regex> = OnceLock::new();
    static ISO: OnceLock<Regex> = OnceLock::new();
    static MONO: OnceLock<Regex> = OnceLock::new();
    static CTIME: OnceLock<Regex> = OnceLock::new();
    static CONSUMED: OnceLock<Regex> = OnceLock::new();
    static PID: OnceLock<Regex> = OnceLock::new();
    static COUNTERS: OnceLock<Regex> = OnceLock::new();
    static RULE_COUNTERS: OnceLock<Regex> = OnceLock::new();
    static IPT_COMMENT: OnceLock<Regex> = OnceLock::new();
    match normalizer {
        Normalizer::Timestamps => {
            let t = re(
                &SYSLOG,
                r"(?m)^[A-Z][a-z]{2} [ 0-9]\d \d{2}:\d{2}:\d{2}(\.\d+)?",
            )
            .replace_all(text, "[TIME]");
            let t = re(
                &ISO,
                r"((Mon|Tue|Wed|Thu|Fri|Sat|Sun) )?\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d+)?([+-]\d{2}:?\d{2}|Z| [A-Z]{3,4})?",
            )
            .replace_all(&t, "[TIME]");
            let t = re(&CTIME, r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ 0-9]\d \d{2}:\d{2}:\d{2} \d{4}")
                .replace_all(&t, "[TIME]");
            let t = re(&MONO, r"\[\s*\d+\.\d+\]").replace_all(&t, "[MONOTONIC]");
            // systemd's per-unit resource summary ("…: Consumed 1.019s CPU
            // time.") is logged or not depending on how much was used, so the
            // whole line goes.
            re(&CONSUMED, r"(?m)^.*: Consumed .*(\n|$)")
                .replace_all(&t, "")
                .into_owned()
        }
        Normalizer::Pids => re(&PID, r"([A-Za-z0-9_.@-]+)\[\d+\]:")
            .replace_all(text, "$1[PID]:")
            .into_owned(),
        Normalizer::Hostname => replace_word(text, &facts.hostname, "[HOSTNAME]"),
        Normalizer::KernelRelease => {
            if facts.kernel_release.is_empty() {
                text.to_owned()
            } else {
                text.replace(&facts.kernel_release, "[KERNEL]")
            }
        }
        Normalizer::Iptables => {
            let t = re(&COUNTERS, r"(?m)^(:\S+ \S+) \[\d+:\d+\]").replace_all(text, "$1 [0:0]");
            let t = re(&RULE_COUNTERS, r"(?m)^\[\d+:\d+\] ").replace_all(&t, "");
            re(&IPT_COMMENT, r"(?m)^# (Generated by|Completed on) .*$")
                .replace_all(&t, "# $1 [IPTABLES]")
                .into_owned()
        }
        Normalizer::SortLines => {
            let mut lines: Vec<&str> = text.lines().collect();
            lines.sort_unstable();
            let mut out = lines.join("\n");
            if text.ends_with('\n') {
                out.push('\n');
            }
            out
        }
    }
}

/// Replaces whole-word occurrences of `word`.
/// Replaces `word` where it stands alone as a host name would: not as part
/// of a longer name such as a package `hello-vmrepro` or `vmrepro2` (`\b`
/// alone would take the `-` for a boundary).
fn replace_word(text: &str, word: &str, with: &str) -> String {
    if word.is_empty() {
        return text.to_owned();
    }
    let part_of_name =
        |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (at, _) in text.match_indices(word) {
        let end = at + word.len();
        if at < copied
            || part_of_name(text[..at].chars().last())
            || part_of_name(text[end..].chars().next())
        {
            continue;
        }
        out.push_str(&text[copied..at]);
        out.push_str(with);
        copied = end;
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> GuestFacts {
        GuestFacts {
            hostname: "vmrepro".into(),
            kernel_release: "6.1.0-50-cloud-amd64".into(),
        }
    }

    #[test]
    fn the_host_name_is_replaced_only_where_it_stands_alone() {
        assert_eq!(
            replace_word(
                "vmrepro systemd[1]: root@vmrepro:~ hello-vmrepro vmrepro2 /kernel/vmrepro/ x_vmrepro vmrepro",
                "vmrepro",
                "[H]"
            ),
            "[H] systemd[1]: root@[H]:~ hello-vmrepro vmrepro2 /kernel/[H]/ x_vmrepro [H]"
        );
    }

    #[test]
    fn journal_lines_lose_time_pid_host_and_kernel() {
        let line = "Nov 25 09:40:01 vmrepro systemd-modules-load[3452]: could not open moddep file '/lib/modules/6.1.0-50-cloud-amd64/modules.dep.bin'\n";
        assert_eq!(
            normalize(line, Normalizer::DEFAULT, &facts()),
            "[TIME] [HOSTNAME] systemd-modules-load[PID]: could not open moddep file '/lib/modules/[KERNEL]/modules.dep.bin'\n"
        );
    }

    #[test]
    fn iptables_save_loses_counters_and_dates() {
        let text = "# Generated by iptables-save v1.8.9 (nf_tables) on Wed Nov 25 09:40:01 2026\n*filter\n:INPUT DROP [12:3456]\n:FORWARD ACCEPT [0:0]\n[5:300] -A INPUT -i lo -j ACCEPT\nCOMMIT\n# Completed on Wed Nov 25 09:40:01 2026\n";
        let mut n = Normalizer::DEFAULT.to_vec();
        n.push(Normalizer::Iptables);
        assert_eq!(
            normalize(text, &n, &facts()),
            "# Generated by [IPTABLES]\n*filter\n:INPUT DROP [0:0]\n:FORWARD ACCEPT [0:0]\n-A INPUT -i lo -j ACCEPT\nCOMMIT\n# Completed on [IPTABLES]\n"
        );
    }

    #[test]
    fn journal_headers_and_resource_summaries_are_stable() {
        let text = "-- Journal begins at Wed 2026-11-25 10:10:01 UTC, ends at Wed 2026-11-25 10:12:09 UTC. --\nNov 25 10:10:02 vmrepro systemd[1]: netfilter-persistent.service: Consumed 1.019s CPU time.\n";
        assert_eq!(
            normalize(text, Normalizer::DEFAULT, &facts()),
            "-- Journal begins at [TIME], ends at [TIME]. --\n"
        );
    }

    #[test]
    fn hostname_is_replaced_only_as_a_word() {
        let f = facts();
        assert_eq!(
            normalize("vmrepro vmreprox", &[Normalizer::Hostname], &f),
            "[HOSTNAME] vmreprox"
        );
    }

    #[test]
    fn sorting_keeps_the_final_newline() {
        assert_eq!(
            normalize("b\na\n", &[Normalizer::SortLines], &facts()),
            "a\nb\n"
        );
    }
}
