//! The client's one error type: every variant says what failed and, where there is one, what
//! to do about it (the CLI prints it as one line).

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong talking to a registry or handling image files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The registry answered with an error (the spec's code and message when it sent them).
    #[error("{registry}: {code}: {message}{hint}")]
    Registry {
        /// Registry host.
        registry: String,
        /// HTTP status.
        status: u16,
        /// The spec's error code (e.g. `MANIFEST_UNKNOWN`), or the HTTP status text.
        code: String,
        /// The registry's message.
        message: String,
        /// What to do, with a leading separator, or empty.
        hint: String,
    },
    /// The network failed (after retries).
    #[error("{registry}: {message}")]
    Network {
        /// Registry host.
        registry: String,
        /// What failed.
        message: String,
    },
    /// Downloaded or read bytes do not match their digest: nothing was kept.
    #[error("{what} has digest {actual}, expected {expected}: refusing it")]
    DigestMismatch {
        /// What was checked.
        what: String,
        /// Digest it should have.
        expected: String,
        /// Digest it has.
        actual: String,
    },
    /// A local file or directory problem.
    #[error("{path}: {message}")]
    Local {
        /// The path.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Input the user gave that cannot work.
    #[error("{0}")]
    Usage(String),
}

impl Error {
    pub(crate) fn local(path: impl AsRef<std::path::Path>, e: impl std::fmt::Display) -> Error {
        Error::Local {
            path: path.as_ref().display().to_string(),
            message: e.to_string(),
        }
    }
}
