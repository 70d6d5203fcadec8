//! The node's one error type for its top-level operations (pull, images, containers). The
//! CLI prints it as one line and exits 125, as docker does for its own failures.

use berth_oci::Digest;
use std::path::PathBuf;

/// Result alias for this crate's top-level operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, with what to do where there is something to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Input the user gave that cannot work.
    #[error("{0}")]
    Usage(String),
    /// No such image or container.
    #[error("{0}")]
    NotFound(String),
    /// Talking to the registry failed.
    #[error(transparent)]
    Registry(#[from] berth_client::Error),
    /// The content store failed.
    #[error(transparent)]
    Content(#[from] crate::content::Error),
    /// The snapshotter failed.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::Error),
    /// A layer could not be unpacked (refused, corrupt, or the disk failed).
    #[error("layer {layer}: {source}")]
    Unpack {
        /// The layer's (compressed) digest.
        layer: Digest,
        /// The cause.
        source: crate::unpack::Error,
    },
    /// An image is not what its manifest or config says.
    #[error("{0}")]
    Image(String),
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Starting or controlling a container failed.
    #[error("{0}")]
    Runtime(String),
}

impl Error {
    /// An I/O error at `path`, for `map_err`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

/// `s` with every control character (C0, DEL, C1: ESC sequences, carriage returns, newlines)
/// written as an escape (`\x1b`, `\u{9b}`), for printing error messages that carry text from
/// an image (its user, working directory, entrypoint, a layer's entry names): a hostile image
/// must not be able to move the cursor, rewrite earlier lines or set a terminal's title on the
/// screen of whoever runs it.
pub fn escape_controls(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            c if (c as u32) < 0x80 && c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape_controls;

    #[test]
    fn control_bytes_are_escaped() {
        assert_eq!(escape_controls("plain ü text"), "plain ü text");
        assert_eq!(
            escape_controls("user \x1b]0;pwned\x07\x1b[2Jx\r\nnext\u{9b}"),
            "user \\x1b]0;pwned\\x07\\x1b[2Jx\\x0d\\x0anext\\u{9b}"
        );
    }
}
