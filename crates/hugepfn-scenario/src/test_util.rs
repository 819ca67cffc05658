//! Helpers the crate's unit tests share.

use crate::scenario::LevelCounts;

/// An expected per-level count of `n` PUD leaves, the other levels not checked.
pub(crate) fn puds(n: u64) -> Option<LevelCounts> {
    Some(LevelCounts {
        pud: Some(n),
        ..LevelCounts::default()
    })
}
