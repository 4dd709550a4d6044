//! What a reboot changed, found without the scenario asking: evidence read
//! from the guest in the same round trip as the captures, before the last
//! reboot and at the end, normalised, and set side by side.
//!
//! Each source is read so that it works from jessie (systemd 215) to
//! trixie and changes nothing in the guest: `systemctl list-units --all
//! --no-legend` (215 has both options), `journalctl -b -p warning -o json`
//! (215: `-p` filters on the journal's own PRIORITY field, `-o json` is one
//! object per line), every readable file under `/proc/sys`,
//! `/proc/self/mountinfo`, `ip -o addr` and `ip route show table all`,
//! `/proc/modules`, and `iptables-save`, `ip6tables-save` and `nft list
//! ruleset` only where the kernel already has those tables (listing an
//! nf_tables ruleset would load the module).
//!
//! What changes on every boot of an untouched guest (counters, boot ids,
//! module addresses, mount ids) is normalised away or left out.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use crate::project::EvidenceSource as Source;

/// The guest-side reader: one function per source.
const SCRIPT: &str = include_str!("evidence.sh");

/// The marker line before each source's output.
const SECTION: &str = "@@vmrepro-evidence ";

/// When evidence is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Moment {
    /// Just before the last reboot.
    BeforeReboot,
    /// At the end, after the last reboot.
    AfterReboot,
}

/// The guest script that reads `sources`, in the order given. With the
/// journal, the script also reads, after the reboot, the boot before's
/// warnings and, last, the boot's id and how long it has run: what the
/// boot before logged after that moment is how it went down.
pub(crate) fn script(sources: &[Source], moment: Moment) -> String {
    let mut script = SCRIPT.to_owned();
    for source in sources {
        script.push_str(&format!("evidence_{}\n", source.name()));
    }
    if sources.contains(&Source::Journal) {
        if moment == Moment::AfterReboot {
            script.push_str("evidence_journal_before\n");
        }
        script.push_str("evidence_boot\n");
    }
    script
}

/// One boot's evidence, normalised.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Evidence {
    /// The sources read in full (a source whose output was cut short by the
    /// output limit is left out rather than compared half).
    pub(crate) read: BTreeSet<Source>,
    /// Unit → its `ACTIVE/SUB` state.
    pub(crate) units: BTreeMap<String, String>,
    /// Journal entries: (unit or identifier, normalised message) → the
    /// message as logged.
    pub(crate) journal: BTreeMap<(String, String), String>,
    /// `/proc/sys` key in dotted form → value.
    pub(crate) sysctl: BTreeMap<String, String>,
    /// Mount point → what is mounted there (type, source, options), one
    /// entry per mount stacked on it.
    pub(crate) mounts: BTreeMap<String, Vec<String>>,
    /// Address and route lines, normalised.
    pub(crate) network: BTreeSet<String>,
    /// Module names.
    pub(crate) modules: BTreeSet<String>,
    /// Firewall lines by table listing (`iptables`, `ip6tables`, `nft`),
    /// normalised, in order.
    pub(crate) firewall: BTreeMap<String, Vec<String>>,
    /// The boot's id (hex digits only, as the journal writes it) and the
    /// microseconds it had run when the evidence was read, rounded up.
    pub(crate) boot: Option<(String, u64)>,
    /// The boot before's entries of priority warning or worse, read in
    /// full after the reboot, in the journal's order.
    pub(crate) previous_boot: Option<Vec<Entry>>,
}

/// A journal entry of a boot before, with when and in which boot it was
/// logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The boot it belongs to (`_BOOT_ID`).
    pub(crate) boot_id: String,
    /// When it was logged, in microseconds since that boot began.
    pub(crate) at: u64,
    /// Its unit or identifier.
    pub(crate) who: String,
    /// Its message, normalised for comparing.
    pub(crate) key: String,
    /// Its message as logged.
    pub(crate) message: String,
}

/// Keys under `/proc/sys` that change on every boot, or while the guest
/// runs, whatever the scenario does: counters, ids and the kernel's own
/// tuning. Read from a reboot of an untouched guest on each release.
const VOLATILE_SYSCTL: &[&str] = &[
    "fs.dentry-state",
    "fs.file-nr",
    "fs.inode-nr",
    "fs.inode-state",
    "fs.aio-nr",
    "fs.quota.",
    "kernel.ns_last_pid",
    "kernel.pty.nr",
    "kernel.random.boot_id",
    "kernel.random.uuid",
    "kernel.random.entropy_avail",
    // The kernel lowers it itself when sampling interrupts run long.
    "kernel.perf_event_max_sample_rate",
    // Computed at boot from the free memory then (mm/util.c,
    // init_user_reserve and init_admin_reserve).
    "vm.user_reserve_kbytes",
    "vm.admin_reserve_kbytes",
    "net.netfilter.nf_conntrack_count",
];

/// Units left out: the harness's own login session, numbered per boot,
/// and slices, which only group the units that ran in them (a template's
/// slice appears once an instance has run, whenever that was).
fn harness_unit(unit: &str) -> bool {
    (unit.starts_with("session-") && unit.ends_with(".scope")) || unit.ends_with(".slice")
}

/// Whether journal entries of `who` are the harness's own: its root login
/// on the control port and the session it opens, which may or may not get
/// to log as the guest goes down (seen on trixie with the Linode-style
/// kernel, which has no audit support: "PAM audit_open() failed: No such
/// process", in one run of the untouched reboot and not in five others).
fn harness_login(who: &str) -> bool {
    (harness_unit(who) && who.ends_with(".scope"))
        || who
            .strip_prefix("serial-getty@")
            .and_then(|rest| rest.strip_suffix(".service"))
            == Some(crate::media::image::CONTROL_TTY)
}

impl Evidence {
    /// Parses what [`script`] printed. A source whose output the output
    /// limit cut (the line saying how many bytes were omitted falls in it)
    /// is left out: half of it compared would show changes that are not.
    pub(crate) fn parse(text: &str) -> Evidence {
        let mut evidence = Evidence::default();
        let mut sections: Vec<(String, Vec<&str>, bool)> = Vec::new();
        for line in text.lines() {
            if let Some(name) = line.strip_prefix(SECTION) {
                sections.push((name.trim().to_owned(), Vec::new(), false));
            } else if let Some((_, lines, cut)) = sections.last_mut() {
                if line.starts_with("[… ") && line.ends_with(" bytes omitted …]") {
                    *cut = true;
                }
                lines.push(line);
            }
        }
        // A source printed in several sections (addresses and routes) is
        // whole only if every one of them is.
        let cut_sources: BTreeSet<String> = sections
            .iter()
            .filter(|(_, _, cut)| *cut)
            .map(|(name, _, _)| source_of_section(name).to_owned())
            .collect();
        for (name, lines, _) in sections {
            if cut_sources.contains(source_of_section(&name)) {
                continue;
            }
            match name.as_str() {
                "units" => {
                    evidence.read.insert(Source::Units);
                    for line in lines {
                        // "● foo.service loaded failed failed Foo": a bullet
                        // (220 on) before a failed or not-found unit.
                        let mut words = line
                            .trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
                            .split_whitespace();
                        let (Some(unit), Some(_load), Some(active), Some(sub)) =
                            (words.next(), words.next(), words.next(), words.next())
                        else {
                            continue;
                        };
                        if !harness_unit(unit) {
                            evidence
                                .units
                                .insert(unit.to_owned(), format!("{active}/{sub}"));
                        }
                    }
                }
                "journal" => {
                    evidence.read.insert(Source::Journal);
                    for line in lines {
                        if let Some((key, message)) = journal_entry(line) {
                            evidence.journal.entry(key).or_insert(message);
                        }
                    }
                }
                "journal-before" => {
                    evidence.previous_boot =
                        Some(lines.iter().filter_map(|l| previous_entry(l)).collect());
                }
                "boot" => {
                    evidence.boot = lines.first().and_then(|line| {
                        let (id, up) = line.split_once(' ')?;
                        // Hundredths of a second, cut: the moment read was
                        // up to 10 ms later than it says.
                        let (whole, hundredths) = up.trim().split_once('.')?;
                        let micros = whole.parse::<u64>().ok()? * 1_000_000
                            + hundredths.parse::<u64>().ok()? * 10_000
                            + 10_000;
                        Some((id.replace('-', ""), micros))
                    });
                }
                "sysctl" => {
                    evidence.read.insert(Source::Sysctl);
                    for line in lines {
                        let Some((path, value)) = line.split_once(':') else {
                            continue;
                        };
                        let key = path.trim_start_matches("./").replace('/', ".");
                        if VOLATILE_SYSCTL
                            .iter()
                            .any(|v| key == *v || (v.ends_with('.') && key.starts_with(v)))
                        {
                            continue;
                        }
                        let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
                        // A file of several lines is one key.
                        evidence
                            .sysctl
                            .entry(key)
                            .and_modify(|v| {
                                v.push_str(" | ");
                                v.push_str(&value);
                            })
                            .or_insert(value);
                    }
                }
                "mounts" => {
                    evidence.read.insert(Source::Mounts);
                    for line in lines {
                        if let Some((point, what)) = mount(line) {
                            evidence.mounts.entry(point).or_default().push(what);
                        }
                    }
                    for stacked in evidence.mounts.values_mut() {
                        stacked.sort();
                    }
                }
                "addresses" | "routes" => {
                    evidence.read.insert(Source::Network);
                    for line in lines {
                        let line = network_line(line);
                        if !line.is_empty() {
                            evidence.network.insert(format!("{name}: {line}"));
                        }
                    }
                }
                "modules" => {
                    evidence.read.insert(Source::Modules);
                    for line in lines {
                        if let Some(name) = line.split_whitespace().next() {
                            if !HOST_PROBED_MODULES.contains(&name) {
                                evidence.modules.insert(name.to_owned());
                            }
                        }
                    }
                }
                "iptables" | "ip6tables" | "nft" => {
                    evidence.read.insert(Source::Firewall);
                    let kept = lines
                        .iter()
                        .filter_map(|line| firewall_line(line))
                        .collect::<Vec<_>>();
                    evidence.firewall.insert(name, kept);
                }
                // The firewall's own marker: read, whether or not any table
                // was there to list.
                "firewall" => {
                    evidence.read.insert(Source::Firewall);
                }
                _ => {}
            }
        }
        evidence
    }
}

/// The source a section of the script's output belongs to (the boot
/// before's journal and the boot's clock stand alone: one of them cut
/// short leaves the boot's own journal whole).
fn source_of_section(name: &str) -> &str {
    match name {
        "addresses" | "routes" => "network",
        "iptables" | "ip6tables" | "nft" => "firewall",
        other => other,
    }
}

/// An entry of the boot before's journal: `journalctl -o json` begins
/// every entry with `__CURSOR`, `__REALTIME_TIMESTAMP`,
/// `__MONOTONIC_TIMESTAMP` and `_BOOT_ID` (logs-show.c, `output_json`, as
/// in systemd 215). When it was logged is its source's own time where the
/// journal has it (`_SOURCE_MONOTONIC_TIMESTAMP`: the kernel's, for its
/// messages), else the time journald received it.
fn previous_entry(line: &str) -> Option<Entry> {
    let entry: serde_json::Value = serde_json::from_str(line).ok()?;
    let field = |name: &str| entry.get(name).and_then(|v| v.as_str());
    let at = field("_SOURCE_MONOTONIC_TIMESTAMP")
        .or_else(|| field("__MONOTONIC_TIMESTAMP"))?
        .parse()
        .ok()?;
    let boot_id = field("_BOOT_ID")?.to_owned();
    let ((who, key), message) = journal_entry(line)?;
    Some(Entry {
        boot_id,
        at,
        who,
        key,
        message,
    })
}

/// A journal entry of `journalctl -o json`: its unit (or identifier) and
/// its message, normalised for comparing (digits and long hex numbers
/// stand for whatever they were), with the message as logged.
fn journal_entry(line: &str) -> Option<((String, String), String)> {
    let entry: serde_json::Value = serde_json::from_str(line).ok()?;
    let field = |name: &str| entry.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    // A message that is not valid UTF-8 comes as an array of bytes.
    let message = match entry.get("MESSAGE")? {
        serde_json::Value::String(text) => text.clone(),
        serde_json::Value::Array(bytes) => {
            let bytes: Vec<u8> = bytes
                .iter()
                .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect();
            crate::text::inert(&bytes)
        }
        _ => return None,
    };
    let message = crate::text::inert(message.trim_end().as_bytes());
    let who = field("UNIT")
        .or_else(|| field("_SYSTEMD_UNIT"))
        .or_else(|| field("SYSLOG_IDENTIFIER"))
        .or_else(|| field("_COMM"))
        .unwrap_or_else(|| "?".into());
    let who = crate::text::inert(who.as_bytes());
    if (who == "kernel" && timing_dependent(&message)) || harness_login(&who) {
        return None;
    }
    Some(((who.clone(), comparable(&message)), message))
}

/// Kernel warnings whose appearing depends on how fast the host ran the
/// guest at that moment, not on the guest: the TSC calibration against the
/// PIT and the clocksource watchdog (arch/x86/kernel/tsc.c,
/// kernel/time/clocksource.c), which under TCG come and go from one boot
/// of the same guest to the next.
fn timing_dependent(message: &str) -> bool {
    message.starts_with("clocksource")
        || message.starts_with("tsc:")
        || message.starts_with("TSC ")
        || message.contains("Marking clocksource")
        // arch/x86/kernel/apic/apic.c, the local APIC timer's calibration
        // and its check against the PIT and PM timer (seen on bookworm's
        // Linode-style and bullseye's stock kernel).
        || message.starts_with("APIC timer disabled due to verification failure")
        || message.starts_with("APIC calibration not consistent with PM-Timer")
}

/// Modules the guest's udev loads for the emulated CPU's virtualisation
/// flags. Under TCG their loading comes and goes from one boot of the same
/// untouched guest to the next (seen on trixie's stock kernel: kvm_amd
/// loaded at one boot and not the next), so a change in them says nothing
/// about a scenario.
const HOST_PROBED_MODULES: &[&str] = &["kvm", "kvm_amd", "kvm_intel", "irqbypass"];

/// A message with its numbers made alike: PIDs, times, sizes and ids
/// differ from boot to boot without meaning anything.
fn comparable(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut in_number = false;
    for c in message.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                out.push('#');
            }
            in_number = true;
        } else {
            in_number = false;
            out.push(c);
        }
    }
    out
}

/// A `/proc/self/mountinfo` line as (mount point, "type source options"),
/// without the ids and peer groups that change from boot to boot.
fn mount(line: &str) -> Option<(String, String)> {
    let (left, right) = line.split_once(" - ")?;
    let left: Vec<&str> = left.split_whitespace().collect();
    let right: Vec<&str> = right.split_whitespace().collect();
    let point = left.get(4)?;
    let mount_options = left.get(5).copied().unwrap_or("");
    let (kind, source) = (right.first()?, right.get(1).copied().unwrap_or(""));
    let super_options = right
        .get(2)
        .copied()
        .unwrap_or("")
        .split(',')
        // autofs: the pipe and process of this boot's automounter.
        .filter(|o| {
            !["fd=", "pipe_ino=", "pgrp="]
                .iter()
                .any(|p| o.starts_with(p))
        })
        // tmpfs shows its size only where it differs from the default,
        // half of the memory the kernel counts at the moment it is read
        // (mm/shmem.c, shmem_show_options), and that count grows while a
        // boot frees its early memory: whether a 50% mount shows a size
        // depends on when it was mounted.
        .filter(|o| !(*kind == "tmpfs" && (o.starts_with("size=") || o.starts_with("nr_inodes="))))
        .collect::<Vec<_>>()
        .join(",");
    Some((
        unescape_mount(point),
        format!("{kind} {source} {mount_options} {super_options}"),
    ))
}

/// mountinfo writes a space in a path as `\040`.
fn unescape_mount(path: &str) -> String {
    path.replace("\\040", " ").replace("\\011", "\t")
}

/// An address or route line without what ticks down (lifetimes, expiry)
/// or numbers the links per boot; empty for what QEMU's user-mode network
/// hands out on its own schedule: its router advertisements for fec0::/64
/// (libslirp's default IPv6 prefix) and what the guest makes of them
/// (`proto ra` routes, `dynamic` addresses), which arrive a varying time
/// after the card comes up. An IPv6 address's own route in the local table
/// goes too: the kernel adds it only once duplicate address detection is
/// done (addrconf.c, `addrconf_dad_completed` notifies RTM_NEWADDR, which
/// inserts it), so whether it is there says how long ago the card came up,
/// not what the reboot did; the address line says the rest. `ip route show
/// table all` prints that route with `table local` or without it (without
/// on bookworm and trixie, where the card's link-local address showed as
/// such a change on some runs and not on others).
fn network_line(line: &str) -> String {
    if line.contains("fec0:") || line.contains("proto ra") || line.contains(" dynamic ") {
        return String::new();
    }
    if line.starts_with("local ")
        && line
            .split_whitespace()
            .nth(1)
            .is_some_and(|address| address.contains(':'))
    {
        return String::new();
    }
    let mut words: Vec<&str> = Vec::new();
    let mut skip = 0;
    for (i, word) in line.split_whitespace().enumerate() {
        if skip > 0 {
            skip -= 1;
            continue;
        }
        // `ip -o addr`: "2: eth0 inet …": the index goes.
        if i == 0
            && word.ends_with(':')
            && word[..word.len() - 1].bytes().all(|b| b.is_ascii_digit())
        {
            continue;
        }
        match word {
            "valid_lft" | "preferred_lft" | "expires" => skip = 1,
            // Duplicate address detection still running, or done.
            "\\" | "tentative" | "dadfailed" => {}
            _ => words.push(word),
        }
    }
    words.join(" ")
}

/// A firewall line worth comparing: rules, chains and policies without
/// their counters; comments and dates go.
fn firewall_line(line: &str) -> Option<String> {
    let line = line.trim();
    // A table's frame (`*filter`, `COMMIT`, nft's closing braces) and a
    // built-in chain that accepts (what a chain is when its table was
    // never loaded) say nothing of their own.
    if line.is_empty()
        || line.starts_with('#')
        || line.starts_with('*')
        || line == "COMMIT"
        || line == "}"
    {
        return None;
    }
    const BUILT_IN: &[&str] = &["INPUT", "FORWARD", "OUTPUT", "PREROUTING", "POSTROUTING"];
    if let Some(chain) = line.strip_prefix(':') {
        let mut words = chain.split_whitespace();
        if let (Some(name), Some("ACCEPT")) = (words.next(), words.next()) {
            if BUILT_IN.contains(&name) {
                return None;
            }
        }
    }
    // ":INPUT DROP [12:3456]" and "[3:180] -A INPUT …" (iptables-save -c).
    let line = match line.rsplit_once(" [") {
        Some((head, tail)) if line.starts_with(':') && tail.ends_with(']') => head.to_owned(),
        _ => line.to_owned(),
    };
    let line = match line.strip_prefix('[').and_then(|l| l.split_once("] ")) {
        Some((counters, rest)) if counters.contains(':') => rest.to_owned(),
        _ => line,
    };
    // nft: "counter packets 12 bytes 3456".
    let mut words: Vec<&str> = Vec::new();
    let mut it = line.split_whitespace().peekable();
    while let Some(word) = it.next() {
        if word == "packets" || word == "bytes" {
            it.next();
            continue;
        }
        words.push(word);
    }
    Some(words.join(" "))
}

/// One thing the reboot changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The source that shows it.
    pub source: Source,
    /// What changed: a unit, a key, a mount point, a table, a module.
    pub item: String,
    /// How it read before the reboot (`None`: it was not there).
    pub before: Option<String>,
    /// How it reads after (`None`: it is gone).
    pub after: Option<String>,
}

impl Change {
    /// The name an expectation uses: `source:item`.
    pub fn name(&self) -> String {
        format!("{}:{}", self.source, self.item)
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        match (&self.before, &self.after) {
            (Some(before), Some(after)) => {
                format!("{} {}: {before} → {after}", self.source, self.item)
            }
            (Some(before), None) => format!("{} {}: {before} → gone", self.source, self.item),
            (None, Some(after)) => format!("{} {}: new, {after}", self.source, self.item),
            (None, None) => format!("{} {}", self.source, self.item),
        }
    }
}

/// What the reboot changed, most telling first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    /// Units failed after the reboot, each with its journal lines of the
    /// boot after it.
    pub failed_units: Vec<(String, Vec<String>)>,
    /// The journal's entries of priority warning or worse that the boot
    /// before logged on its way down, after the harness's look before the
    /// reboot: (unit or identifier, message), in the order logged, each
    /// once.
    #[serde(default)]
    pub going_down: Vec<(String, String)>,
    /// Everything else that differs, by source in [`Source::ALL`] order.
    pub changes: Vec<Change>,
    /// The sources compared (read in full on both sides).
    pub compared: Vec<Source>,
}

impl Changes {
    /// Whether the reboot changed nothing the sources show.
    pub fn is_empty(&self) -> bool {
        self.failed_units.is_empty() && self.going_down.is_empty() && self.changes.is_empty()
    }

    /// A few words for the outcome table and the verdict line: counts by
    /// source, failed units first.
    pub fn short(&self) -> String {
        let mut parts = Vec::new();
        if !self.failed_units.is_empty() {
            parts.push(format!(
                "failed: {}",
                self.failed_units
                    .iter()
                    .map(|(u, _)| u.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if !self.going_down.is_empty() {
            let n = self.going_down.len();
            parts.push(format!(
                "{n} warning{} going down",
                if n == 1 { "" } else { "s" }
            ));
        }
        for source in Source::ALL {
            let n = self.changes.iter().filter(|c| c.source == source).count();
            if n == 0 {
                continue;
            }
            let what = match source {
                Source::Units => "unit state",
                Source::Journal => "new warning",
                Source::Sysctl => "kernel setting",
                Source::Firewall => "firewall line",
                Source::Mounts => "mount",
                Source::Network => "address/route",
                Source::Modules => "module",
            };
            parts.push(format!("{n} {what}{}", if n == 1 { "" } else { "s" }));
        }
        parts.join(", ")
    }
}

/// What the reboot changed, as a section of the snapshot (for scenarios
/// that ask for it): one line per failed unit and per change.
pub(crate) fn as_capture(changes: &Changes) -> crate::check::capture::Capture {
    let mut text = String::new();
    for (unit, _) in &changes.failed_units {
        text.push_str(&format!("units {unit}: failed\n"));
    }
    for (who, message) in &changes.going_down {
        text.push_str(&format!("journal going down {who}: {message}\n"));
    }
    for change in &changes.changes {
        text.push_str(&change.describe());
        text.push('\n');
    }
    crate::check::capture::Capture {
        name: "what the reboot changed".into(),
        command: "(read by vmrepro before and after the last reboot)".into(),
        status: 0,
        raw: text.clone(),
        text,
        probe: None,
        normalize: Vec::new(),
    }
}

/// Whether a unit's change of state is the time of day rather than the
/// reboot: a timer that is running its service or waiting for the next time
/// (both `active`), and the service a timer starts, which runs when the
/// clock says whichever boot it is. A timer starts the service of its own
/// name unless its `Unit=` says otherwise (systemd.timer(5)), as Debian's
/// all do. Such a service failing after the reboot still shows, among the
/// failed units.
fn on_the_clock(
    unit: &str,
    before: Option<&String>,
    after: Option<&String>,
    timers: &BTreeSet<&str>,
) -> bool {
    fn active(state: &str) -> &str {
        state.split('/').next().unwrap_or_default()
    }
    if unit.ends_with(".timer") {
        return matches!((before, after), (Some(b), Some(a)) if active(b) == active(a));
    }
    unit.strip_suffix(".service")
        .is_some_and(|stem| timers.contains(stem))
}

/// What differs between the boot before the reboot and the boot after it,
/// in the sources both read in full.
pub(crate) fn compare(before: &Evidence, after: &Evidence) -> Changes {
    let compared: Vec<Source> = Source::ALL
        .into_iter()
        .filter(|s| before.read.contains(s) && after.read.contains(s))
        .collect();
    let mut changes = Changes {
        compared: compared.clone(),
        ..Changes::default()
    };
    let both = |s: Source| compared.contains(&s);
    let mut push = |source: Source, item: &str, b: Option<&String>, a: Option<&String>| {
        if b != a {
            changes.changes.push(Change {
                source,
                item: item.to_owned(),
                before: b.cloned(),
                after: a.cloned(),
            });
        }
    };
    if both(Source::Units) {
        let timers: BTreeSet<&str> = before
            .units
            .keys()
            .chain(after.units.keys())
            .filter_map(|unit| unit.strip_suffix(".timer"))
            .collect();
        for (unit, state) in &after.units {
            if state.starts_with("failed/")
                || on_the_clock(unit, before.units.get(unit), Some(state), &timers)
            {
                continue;
            }
            push(Source::Units, unit, before.units.get(unit), Some(state));
        }
        for (unit, state) in &before.units {
            if !after.units.contains_key(unit) && !on_the_clock(unit, Some(state), None, &timers) {
                push(Source::Units, unit, Some(state), None);
            }
        }
    }
    if both(Source::Journal) {
        if let (Some((boot_id, read_at)), Some(entries)) = (&before.boot, &after.previous_boot) {
            let mut seen = BTreeSet::new();
            for entry in entries {
                if entry.boot_id == *boot_id
                    && entry.at > *read_at
                    && seen.insert((entry.who.clone(), entry.key.clone()))
                {
                    changes
                        .going_down
                        .push((entry.who.clone(), entry.message.clone()));
                }
            }
        }
        for ((who, key), message) in &after.journal {
            if !before.journal.contains_key(&(who.clone(), key.clone())) {
                push(Source::Journal, who, None, Some(message));
            }
        }
    }
    if both(Source::Sysctl) {
        for key in before
            .sysctl
            .keys()
            .chain(after.sysctl.keys())
            .collect::<BTreeSet<_>>()
        {
            push(
                Source::Sysctl,
                key,
                before.sysctl.get(key),
                after.sysctl.get(key),
            );
        }
    }
    if both(Source::Firewall) {
        for table in before
            .firewall
            .keys()
            .chain(after.firewall.keys())
            .collect::<BTreeSet<_>>()
        {
            let empty = Vec::new();
            let b = before.firewall.get(table).unwrap_or(&empty);
            let a = after.firewall.get(table).unwrap_or(&empty);
            for line in b.iter().filter(|l| !a.contains(l)) {
                push(Source::Firewall, table, Some(line), None);
            }
            for line in a.iter().filter(|l| !b.contains(l)) {
                push(Source::Firewall, table, None, Some(line));
            }
        }
    }
    if both(Source::Mounts) {
        for point in before
            .mounts
            .keys()
            .chain(after.mounts.keys())
            .collect::<BTreeSet<_>>()
        {
            let b = before.mounts.get(point).map(|m| m.join(" + "));
            let a = after.mounts.get(point).map(|m| m.join(" + "));
            push(Source::Mounts, point, b.as_ref(), a.as_ref());
        }
    }
    if both(Source::Network) {
        for line in before.network.difference(&after.network) {
            push(Source::Network, line, Some(&"present".to_owned()), None);
        }
        for line in after.network.difference(&before.network) {
            push(Source::Network, line, None, Some(&"present".to_owned()));
        }
    }
    if both(Source::Modules) {
        for name in before.modules.difference(&after.modules) {
            push(Source::Modules, name, Some(&"loaded".to_owned()), None);
        }
        for name in after.modules.difference(&before.modules) {
            push(Source::Modules, name, None, Some(&"loaded".to_owned()));
        }
    }
    // Failed units, with what the journal of the boot after says about
    // them, lead; their journal lines are not repeated among the new ones.
    if after.read.contains(&Source::Units) {
        let failed: BTreeSet<&String> = after
            .units
            .iter()
            .filter(|(_, state)| state.starts_with("failed/"))
            .map(|(unit, _)| unit)
            .collect();
        changes.changes.retain(|c| {
            !(c.source == Source::Journal
                && failed.iter().any(|unit| {
                    let program = unit.rsplit_once('.').map_or(unit.as_str(), |(p, _)| p);
                    c.item == **unit
                        || c.item == program
                        || c.after
                            .as_deref()
                            .is_some_and(|m| m.contains(unit.as_str()))
                }))
        });
        for (unit, state) in &after.units {
            if state.starts_with("failed/") {
                // Early in a boot, before journald runs, systemd and the
                // units it starts log to the kernel's buffer, from which
                // journald imports their lines with an identifier and no
                // unit: a line is the unit's by unit, by the identifier of
                // its program, or by naming it.
                let program = unit.rsplit_once('.').map_or(unit.as_str(), |(p, _)| p);
                let lines = after
                    .journal
                    .iter()
                    .filter(|((who, _), message)| {
                        who == unit || who == program || message.contains(unit.as_str())
                    })
                    .map(|(_, message)| message.clone())
                    .collect();
                changes.failed_units.push((unit.clone(), lines));
            }
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// bookworm's evidence, cut down, as the guest prints it.
    fn bookworm(extra_units: &str, ip_forward: &str, module_base: &str) -> String {
        format!(
            "@@vmrepro-evidence units\n\
  apt-daily.timer loaded active waiting Daily apt download activities\n\
  session-1.scope loaded active running Session 1 of User root\n\
{extra_units}\
@@vmrepro-evidence journal\n\
{{\"PRIORITY\":\"4\",\"SYSLOG_IDENTIFIER\":\"kernel\",\"MESSAGE\":\"acpi PNP0A03:00: fail to add MMCONFIG information\"}}\n\
{{\"PRIORITY\":\"3\",\"_SYSTEMD_UNIT\":\"serial-getty@ttyS1.service\",\"MESSAGE\":\"pam_env(login:session): Unable to open env file\"}}\n\
@@vmrepro-evidence sysctl\n\
./fs/file-nr:320\t0\t9223372036854775807\n\
./kernel/random/boot_id:{module_base}\n\
./net/ipv4/ip_forward:{ip_forward}\n\
./dev/cdrom/info:CD-ROM information\n\
./dev/cdrom/info:drive name:\n\
@@vmrepro-evidence mounts\n\
33 22 0:28 / /proc/sys/fs/binfmt_misc rw,relatime shared:13 - autofs systemd-1 rw,fd=30,pgrp=1,timeout=0,pipe_ino=1127{module_base}\n\
76 33 0:36 / /proc/sys/fs/binfmt_misc rw,nosuid shared:4{module_base} - binfmt_misc binfmt_misc rw\n\
@@vmrepro-evidence addresses\n\
1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n\
@@vmrepro-evidence routes\n\
local 127.0.0.1 dev lo table local proto kernel scope host src 127.0.0.1\n\
@@vmrepro-evidence modules\n\
loop 32768 0 - Live 0xffffffffc0{module_base}\n\
@@vmrepro-evidence firewall\n"
        )
    }

    #[test]
    fn a_timer_that_came_due_is_the_clock_not_the_reboot() {
        // dpkg-db-backup.timer came due just before the reboot (its
        // service still starting) and was waiting again after it.
        let before = Evidence::parse(&bookworm(
            "  dpkg-db-backup.timer loaded active running Daily dpkg database backup timer\n\
  dpkg-db-backup.service loaded activating start Daily dpkg database backup service\n",
            "0",
            "460000",
        ));
        let after = Evidence::parse(&bookworm(
            "  dpkg-db-backup.timer loaded active waiting Daily dpkg database backup timer\n\
  dpkg-db-backup.service loaded inactive dead Daily dpkg database backup service\n\
  fstrim.timer loaded inactive dead Discard unused blocks once a week\n",
            "0",
            "729000",
        ));
        let changes = compare(&before, &after);
        // A timer that is no longer active is the reboot's doing.
        assert_eq!(
            changes
                .changes
                .iter()
                .map(|c| c.item.as_str())
                .collect::<Vec<_>>(),
            ["fstrim.timer"],
            "{changes:#?}"
        );
        // A timer's service that fails after the reboot still shows.
        let failed = Evidence::parse(&bookworm(
            "  dpkg-db-backup.timer loaded active waiting Daily dpkg database backup timer\n\
  dpkg-db-backup.service loaded failed failed Daily dpkg database backup service\n",
            "0",
            "729000",
        ));
        let changes = compare(&before, &failed);
        assert_eq!(changes.failed_units.len(), 1, "{changes:#?}");
        assert_eq!(changes.failed_units[0].0, "dpkg-db-backup.service");
    }

    #[test]
    fn an_untouched_reboot_changes_nothing() {
        let before = Evidence::parse(&bookworm("", "0", "460000"));
        let after = Evidence::parse(&bookworm("", "0", "729000"));
        assert_eq!(before.read.len(), 7, "{:?}", before.read);
        assert_eq!(
            before.sysctl.get("dev.cdrom.info").map(String::as_str),
            Some("CD-ROM information | drive name:")
        );
        assert!(!before.units.contains_key("session-1.scope"));
        let changes = compare(&before, &after);
        assert!(changes.is_empty(), "{changes:#?}");
        assert_eq!(changes.compared.len(), 7);
    }

    #[test]
    fn a_lost_setting_a_failed_unit_and_a_lost_module_are_found() {
        let failed = "● hello.service loaded failed failed Hello\n";
        let mut after_text = bookworm(failed, "0", "729000").replace("loop 32768", "zram 1");
        after_text = after_text.replace(
            "@@vmrepro-evidence sysctl",
            "{\"PRIORITY\":\"3\",\"UNIT\":\"hello.service\",\"MESSAGE\":\"Failed to start hello.service - Hello.\"}\n@@vmrepro-evidence sysctl",
        );
        let before = Evidence::parse(&bookworm("", "1", "460000"));
        let after = Evidence::parse(&after_text);
        let changes = compare(&before, &after);
        assert_eq!(
            changes.failed_units,
            vec![(
                "hello.service".to_owned(),
                vec!["Failed to start hello.service - Hello.".to_owned()]
            )]
        );
        let described: Vec<String> = changes.changes.iter().map(Change::describe).collect();
        // The failed unit's journal line is shown with it, not again.
        assert_eq!(
            described,
            vec![
                "sysctl net.ipv4.ip_forward: 1 → 0",
                "modules loop: loaded → gone",
                "modules zram: new, loaded",
            ]
        );
        assert_eq!(changes.changes[0].name(), "sysctl:net.ipv4.ip_forward");
        assert_eq!(
            changes.short(),
            "failed: hello.service, 1 kernel setting, 2 modules"
        );
    }

    #[test]
    fn a_failed_units_early_lines_are_its_own_whoever_logged_them() {
        let failed = "● systemd-modules-load.service loaded failed failed Load Kernel Modules\n";
        let early = "{\"PRIORITY\":\"3\",\"SYSLOG_IDENTIFIER\":\"systemd-modules-load\",\"MESSAGE\":\"Failed to find module 'loop'\"}\n\
{\"PRIORITY\":\"3\",\"SYSLOG_IDENTIFIER\":\"systemd\",\"MESSAGE\":\"Failed to start systemd-modules-load.service - Load Kernel Modules.\"}\n\
{\"PRIORITY\":\"4\",\"SYSLOG_IDENTIFIER\":\"systemd\",\"MESSAGE\":\"Dependency failed for netfilter-persistent.service.\"}\n";
        let after = bookworm(failed, "0", "1").replace(
            "@@vmrepro-evidence sysctl",
            &format!("{early}@@vmrepro-evidence sysctl"),
        );
        let changes = compare(
            &Evidence::parse(&bookworm("", "0", "1")),
            &Evidence::parse(&after),
        );
        assert_eq!(changes.failed_units.len(), 1);
        assert_eq!(
            changes.failed_units[0].1.len(),
            2,
            "{:?}",
            changes.failed_units
        );
        let journal: Vec<&Change> = changes
            .changes
            .iter()
            .filter(|c| c.source == Source::Journal)
            .collect();
        assert_eq!(journal.len(), 1, "{journal:?}");
        assert!(journal[0]
            .describe()
            .contains("Dependency failed for netfilter-persistent"));
    }

    #[test]
    fn router_advertisements_and_address_detection_are_not_changes() {
        assert_eq!(
            network_line("default via fe80::2 dev enp0s2 proto ra metric 1024"),
            ""
        );
        assert_eq!(
            network_line("fec0::/64 dev enp0s2 proto kernel metric 256 pref medium"),
            ""
        );
        assert_eq!(
            network_line("local fe80::5054:ff:fe12:3456 dev ens2 table local proto kernel metric 0 pref medium"),
            ""
        );
        assert_eq!(
            network_line(
                "local fe80::5054:ff:fe12:3456 dev enp0s2 proto kernel metric 0 pref medium"
            ),
            ""
        );
        assert_eq!(
            network_line(
                "local 10.0.2.15 dev ens2 table local proto kernel scope host src 10.0.2.15"
            ),
            "local 10.0.2.15 dev ens2 table local proto kernel scope host src 10.0.2.15"
        );
        assert_eq!(
            network_line("2: enp0s2    inet6 fe80::5054:ff:fe12:3456/64 scope link tentative \\       valid_lft forever preferred_lft forever"),
            network_line("2: enp0s2    inet6 fe80::5054:ff:fe12:3456/64 scope link \\       valid_lft forever preferred_lft forever")
        );
    }

    #[test]
    fn a_source_cut_short_is_not_compared() {
        let text = bookworm("", "0", "1");
        let cut = Evidence::parse(
            &text.replace("./net/ipv4/ip_forward:0\n", "[… 4096 bytes omitted …]\n"),
        );
        assert!(!cut.read.contains(&Source::Sysctl));
        assert!(cut.read.contains(&Source::Mounts));
        let whole = Evidence::parse(&text);
        let changes = compare(&whole, &cut);
        assert!(!changes.compared.contains(&Source::Sysctl));
        assert!(changes.is_empty(), "{changes:?}");
    }

    #[test]
    fn mounts_lose_their_ids_and_a_tmpfs_its_moving_default_size() {
        let a = mount(
            "28 22 0:25 / /tmp rw,nosuid,nodev shared:9 - tmpfs tmpfs rw,nr_inodes=1048576,inode64",
        );
        let b = mount("31 22 0:25 / /tmp rw,nosuid,nodev shared:12 - tmpfs tmpfs rw,size=495588k,nr_inodes=1048576,inode64");
        assert_eq!(a, b);
        assert_eq!(
            a,
            Some((
                "/tmp".to_owned(),
                "tmpfs tmpfs rw,nosuid,nodev rw,inode64".to_owned()
            ))
        );
        let c = mount("40 22 0:30 / /srv/my\\040data rw - ext4 /dev/sda rw");
        assert_eq!(c.map(|(p, _)| p).as_deref(), Some("/srv/my data"));
    }

    #[test]
    fn firewall_lines_lose_counters_and_comments() {
        assert_eq!(
            firewall_line("# Generated by iptables-save v1.8.9 on Thu"),
            None
        );
        assert_eq!(
            firewall_line(":INPUT DROP [12:3456]").as_deref(),
            Some(":INPUT DROP")
        );
        assert_eq!(
            firewall_line("[3:180] -A INPUT -p tcp --dport 22 -j ACCEPT").as_deref(),
            Some("-A INPUT -p tcp --dport 22 -j ACCEPT")
        );
        assert_eq!(
            firewall_line("\t\ttcp dport 22 counter packets 12 bytes 3456 accept").as_deref(),
            Some("tcp dport 22 counter accept")
        );
    }

    #[test]
    fn journal_messages_compare_without_their_numbers_and_stay_inert() {
        let (key, message) = journal_entry(
            "{\"SYSLOG_IDENTIFIER\":\"kernel\",\"MESSAGE\":[27,91,51,49,109,104,105]}",
        )
        .expect("an entry");
        assert_eq!(message, "\\u{1b}[31mhi");
        assert_eq!(key.0, "kernel");
        assert_eq!(comparable("pid 1234 at 0.5s"), "pid # at #.#s");
        // Seen on untouched bookworm and bullseye guests under TCG.
        for timing in [
            "TSC found unstable after boot, most likely due to broken BIOS. Use 'tsc=unstable'.",
            "tsc: Unable to calibrate against PIT",
            "clocksource: timekeeping watchdog on CPU0: Marking clocksource 'tsc-early' as unstable because the skew is too large:",
        ] {
            let line = format!("{{\"SYSLOG_IDENTIFIER\":\"kernel\",\"MESSAGE\":{timing:?}}}");
            assert_eq!(journal_entry(&line), None, "{timing}");
        }
    }

    #[test]
    fn the_script_calls_only_the_sources_asked_for() {
        let units_and_sysctl = [Source::Units, Source::Sysctl];
        for moment in [Moment::BeforeReboot, Moment::AfterReboot] {
            let script = script(&units_and_sysctl, moment);
            assert!(
                script.ends_with("evidence_units\nevidence_sysctl\n"),
                "{script}"
            );
        }
        // With the journal, the boot's clock last, and the boot before's
        // journal after the reboot only.
        let before = script(&[Source::Journal], Moment::BeforeReboot);
        assert!(
            before.ends_with("\nevidence_journal\nevidence_boot\n"),
            "{before}"
        );
        let after = script(&[Source::Journal], Moment::AfterReboot);
        assert!(
            after.ends_with("\nevidence_journal\nevidence_journal_before\nevidence_boot\n"),
            "{after}"
        );
    }

    /// A line of `journalctl -o json` for the boot before.
    fn logged(boot: &str, at: u64, who: &str, message: &str) -> String {
        format!(
            "{{\"__MONOTONIC_TIMESTAMP\":\"{at}\",\"_BOOT_ID\":\"{boot}\",\"PRIORITY\":\"4\",\"_SYSTEMD_UNIT\":\"{who}\",\"MESSAGE\":\"{message}\"}}\n"
        )
    }

    #[test]
    fn what_the_boot_before_logged_on_its_way_down_is_found_once() {
        let id = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
        let plain = id.replace('-', "");
        let before = Evidence::parse(&format!(
            "{}@@vmrepro-evidence boot\n{id} 41.27\n",
            bookworm("", "0", "460000")
        ));
        assert_eq!(before.boot, Some((plain.clone(), 41_280_000)));
        let previous = [
            // Before the look, the boot's own: not the way down.
            logged(&plain, 41_275_000, "early.service", "Something early"),
            logged(
                &plain,
                52_000_000,
                "slow.service",
                "State 'stop-sigterm' timed out. Killing.",
            ),
            logged(
                &plain,
                52_100_000,
                "slow.service",
                "Killing process 812 (sleep) with signal SIGKILL.",
            ),
            logged(
                &plain,
                52_200_000,
                "slow.service",
                "Killing process 813 (sleep) with signal SIGKILL.",
            ),
            // The harness's own login on the control port and its session,
            // going down.
            logged(
                &plain,
                52_300_000,
                "serial-getty@ttyS1.service",
                "PAM audit_open() failed: No such process",
            ),
            logged(
                &plain,
                52_400_000,
                "session-1.scope",
                "session-1.scope: Killing process 300 (bash) with signal SIGKILL.",
            ),
            // Another boot's (journalctl without a kept journal shows the
            // boot after instead).
            logged(
                "ffffffffffffffffffffffffffffffff",
                60_000_000,
                "x.service",
                "Not this boot",
            ),
            "not json\n".to_owned(),
        ]
        .concat();
        let after = Evidence::parse(&format!(
            "{}@@vmrepro-evidence journal-before\n{previous}@@vmrepro-evidence boot\n{} 9.01\n",
            bookworm("", "0", "729000"),
            "11111111-2222-3333-4444-555555555555"
        ));
        let changes = compare(&before, &after);
        assert_eq!(
            changes.going_down,
            vec![
                (
                    "slow.service".to_owned(),
                    "State 'stop-sigterm' timed out. Killing.".to_owned()
                ),
                (
                    "slow.service".to_owned(),
                    "Killing process 812 (sleep) with signal SIGKILL.".to_owned()
                ),
            ],
            "{changes:#?}"
        );
        assert_eq!(changes.short(), "2 warnings going down");
        assert!(!changes.is_empty());
        assert!(as_capture(&changes).text.contains(
            "journal going down slow.service: State 'stop-sigterm' timed out. Killing.\n"
        ));
        // The kernel's own time for its messages, not journald's.
        let kernel = "{\"__MONOTONIC_TIMESTAMP\":\"41300000\",\"_SOURCE_MONOTONIC_TIMESTAMP\":\"41200000\",\"_BOOT_ID\":\"BOOTHEX\",\"SYSLOG_IDENTIFIER\":\"kernel\",\"MESSAGE\":\"ICMPv6: deprecated sysctl\"}";
        let entry = previous_entry(&kernel.replace("BOOTHEX", &plain)).expect("an entry");
        assert_eq!(entry.at, 41_200_000);
        // Without the boot's clock from before, or the journal of the boot
        // before, nothing is claimed.
        let mut unknown = before.clone();
        unknown.boot = None;
        assert!(compare(&unknown, &after).going_down.is_empty());
        let mut unread = after.clone();
        unread.previous_boot = None;
        assert!(compare(&before, &unread).going_down.is_empty());
    }
}
