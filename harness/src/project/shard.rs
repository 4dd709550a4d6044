//! Which trials a run takes: every scenario × cell, and shares of them for
//! splitting a suite across machines.

use super::{Cell, Scenario};

/// Every scenario × cell, in file and matrix order: the list that shards
/// and filters select trials from.
pub fn trials_of(scenarios: &[Scenario]) -> Vec<(Scenario, Cell)> {
    scenarios
        .iter()
        .flat_map(|s| s.matrix.cells().into_iter().map(move |c| (s.clone(), c)))
        .collect()
}

/// One share of a list of trials, for splitting a suite across machines:
/// share `k` of `n` (1-based) holds every `n`-th trial from the `k`-th on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    k: usize,
    n: usize,
}

impl Shard {
    /// Parses `K/N`, such as `2/4`.
    pub fn parse(text: &str) -> Result<Shard, String> {
        text.split_once('/')
            .and_then(|(k, n)| Some((k.trim().parse().ok()?, n.trim().parse().ok()?)))
            .filter(|(k, n): &(usize, usize)| *n > 0 && (1..=*n).contains(k))
            .map(|(k, n)| Shard { k, n })
            .ok_or_else(|| format!("{text:?}: expected K/N with 1 <= K <= N, such as 2/4"))
    }

    /// Whether the trial at `index` (0-based, in a stable order) is in this share.
    pub(crate) fn holds(self, index: usize) -> bool {
        index % self.n == self.k - 1
    }

    /// The items of this share, from every scenario × cell in file and
    /// matrix order; the CLI and the test target both shard this way, before
    /// any other selection, so the same `K/N` means the same trials.
    pub fn select<T>(self, items: Vec<T>) -> Vec<T> {
        items
            .into_iter()
            .enumerate()
            .filter(|(i, _)| self.holds(*i))
            .map(|(_, t)| t)
            .collect()
    }
}
