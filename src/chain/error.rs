//! Errors of the chain layer.

use std::path::PathBuf;

/// Cloneable, so that every caller of a failed batch gets the same error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChainError {
    /// An I/O error that is not a full disk; `context` says what was being done.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::sync::Arc<std::io::Error>,
    },
    /// The filesystem refused the write for lack of space. Nothing was committed; writes
    /// succeed again once space is freed.
    #[error("no space left on the chain's filesystem; nothing was written: {0}")]
    NoSpace(String),
    /// A flush to stable storage failed earlier. The store no longer knows what is durable, so
    /// it refuses every write until the daemon restarts and recovers from disk.
    #[error("storage failed earlier and is latched until restart: {0}")]
    Latched(String),
    /// Stored data does not check out; `height` is the first block concerned.
    #[error("chain is corrupted at height {height}: {reason}")]
    Corrupted { height: u64, reason: String },
    /// Another process holds the chain directory.
    #[error("chain directory {0} is in use by another process")]
    InUse(PathBuf),
    /// The writer has shut down.
    #[error("the chain writer has stopped")]
    Closed,
}

impl ChainError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        if source.raw_os_error() == Some(libc::ENOSPC)
            || source.raw_os_error() == Some(libc::EDQUOT)
        {
            return ChainError::NoSpace(format!("{}: {source}", context.into()));
        }
        ChainError::Io {
            context: context.into(),
            source: std::sync::Arc::new(source),
        }
    }
}

pub type Result<T, E = ChainError> = std::result::Result<T, E>;
