//! What the host's scheduler gave a process's threads: time on a CPU and
//! time spent runnable but waiting for one, read from
//! `/proc/PID/task/TID/schedstat` (proc(5): "time spent on the cpu",
//! "time spent waiting on a runqueue", in nanoseconds; present with
//! `CONFIG_SCHED_INFO`, which Debian's and Ubuntu's kernels enable).
//!
//! A guest under TCG runs only while its vCPU thread is on a host CPU; on a
//! loaded host that thread spends much of its time in the runqueue, and a
//! console that stays quiet then says nothing about the guest. Likewise
//! while one of QEMU's threads sits in uninterruptible sleep (state `D` in
//! `/proc/PID/task/TID/stat`, proc(5)), which is QEMU waiting on the host's
//! disk: a reset drains the block devices' writes before the guest runs
//! again. The time spent waiting is what the hang judgement leaves out.

use std::time::Duration;

/// One thread's totals since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ThreadTimes {
    /// The thread id.
    pub(crate) tid: u32,
    /// Time on a CPU.
    pub(crate) ran: Duration,
    /// Time runnable but waiting for a CPU.
    pub(crate) waited: Duration,
    /// In uninterruptible sleep (waiting on the host's I/O) when read.
    pub(crate) blocked: bool,
}

/// Every thread of `pid` that could be read (threads come and go while the
/// folder is read, and a missing file is no error: an empty answer means
/// nothing is known).
pub(crate) fn of_process(pid: u32) -> Vec<ThreadTimes> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| {
            let task = task.ok()?;
            let tid = task.file_name().to_str()?.parse().ok()?;
            let text = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            parse(tid, &text, &stat)
        })
        .collect()
}

fn parse(tid: u32, schedstat: &str, stat: &str) -> Option<ThreadTimes> {
    let mut fields = schedstat.split_ascii_whitespace();
    let ran = fields.next()?.parse().ok()?;
    let waited = fields.next()?.parse().ok()?;
    // "TID (COMM) STATE …": the name may hold spaces and parentheses, the
    // state follows the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_ascii_whitespace().next());
    Some(ThreadTimes {
        tid,
        ran: Duration::from_nanos(ran),
        waited: Duration::from_nanos(waited),
        blocked: state == Some("D"),
    })
}

/// How much more each thread of `now` ran and waited than it had in
/// `before`, as the largest increase of each among threads in both (the
/// vCPU thread is the busiest of a TCG guest's, and the one whose waiting
/// holds the guest up).
pub(crate) fn most_since(before: &[ThreadTimes], now: &[ThreadTimes]) -> (Duration, Duration) {
    let mut most = (Duration::ZERO, Duration::ZERO);
    for n in now {
        if let Some(b) = before.iter().find(|b| b.tid == n.tid) {
            most.0 = most.0.max(n.ran.saturating_sub(b.ran));
            most.1 = most.1.max(n.waited.saturating_sub(b.waited));
        }
    }
    most
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_is_read_and_compared() {
        assert_eq!(
            parse(7, "1944370789 1063030927 289\n", "7 (CPU 0/TCG) R 1 2 3"),
            Some(ThreadTimes {
                tid: 7,
                ran: Duration::from_nanos(1_944_370_789),
                waited: Duration::from_nanos(1_063_030_927),
                blocked: false,
            })
        );
        let blocked = parse(8, "1 2 3", "8 (worker (x) D) D 1 2 3").map(|t| t.blocked);
        assert_eq!(blocked, Some(true));
        assert_eq!(parse(7, "12\n", ""), None);
        assert_eq!(parse(7, "x y z", ""), None);
        let t = |tid, ran: u64, waited: u64| ThreadTimes {
            tid,
            ran: Duration::from_secs(ran),
            waited: Duration::from_secs(waited),
            blocked: false,
        };
        let before = [t(1, 10, 5), t(2, 3, 1)];
        // Thread 3 is new: nothing to compare it with.
        let now = [t(1, 12, 9), t(2, 8, 2), t(3, 100, 100)];
        assert_eq!(
            most_since(&before, &now),
            (Duration::from_secs(5), Duration::from_secs(4))
        );
    }

    #[test]
    fn this_process_can_be_read() {
        let threads = of_process(std::process::id());
        assert!(
            threads.iter().any(|t| t.ran > Duration::ZERO),
            "no schedstat for this process: {threads:?}"
        );
        assert!(of_process(u32::MAX).is_empty());
    }
}
