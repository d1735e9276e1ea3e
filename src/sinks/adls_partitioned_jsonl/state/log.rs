//! One line of the change log (`crate::sinks::util::state_log`): a staged
//! block, or a file about to be or just sealed.

use serde::{Deserialize, Serialize};

use super::{FileKey, StagedBlock};

/// One line of the log.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Change {
    Staged {
        staged: StagedBlock,
        at: i64,
    },
    /// A file is about to be sealed with its blocks as recorded.
    Sealing {
        key: FileKey,
        at: i64,
    },
    /// A file was sealed.
    Sealed {
        key: FileKey,
        at: i64,
    },
}

impl Change {
    /// When the change happened.
    pub(crate) fn at(&self) -> i64 {
        match self {
            Change::Staged { at, .. } | Change::Sealing { at, .. } | Change::Sealed { at, .. } => {
                *at
            }
        }
    }
}
