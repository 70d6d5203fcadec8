use berth_oci::Digest;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong below the HTTP layer, with the context needed to act on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The blob is not in the store (or not linked into the repository asked about).
    #[error("blob {digest} is unknown to repository {repo}")]
    BlobUnknown {
        /// Repository asked about.
        repo: String,
        /// Digest asked for.
        digest: Digest,
    },
    /// No such upload session, or it belongs to another repository.
    #[error("upload session {id} is unknown to repository {repo}")]
    UploadUnknown {
        /// Repository in the request.
        repo: String,
        /// Session id in the request.
        id: String,
    },
    /// A chunk did not start where the session's data ends.
    #[error(
        "chunk starts at byte {start}, but the upload holds {offset} bytes: send the chunk that starts at {offset}"
    )]
    OutOfOrder {
        /// Session offset (bytes received so far).
        offset: u64,
        /// Start of the rejected chunk.
        start: u64,
    },
    /// The body's length disagrees with the declared range or length.
    #[error("declared {declared} bytes but received {received}")]
    SizeMismatch {
        /// Declared length.
        declared: u64,
        /// Received length.
        received: u64,
    },
    /// The uploaded bytes hash to something else than the digest given.
    #[error("uploaded content has digest {actual}, not {expected}")]
    DigestMismatch {
        /// Digest the client claimed.
        expected: Digest,
        /// Digest of what arrived.
        actual: Digest,
    },
    /// No such repository.
    #[error("repository {repo} is not known to this registry")]
    NameUnknown {
        /// The repository.
        repo: String,
    },
    /// No such manifest (tag or digest) in the repository.
    #[error("manifest {reference} is unknown to repository {repo}")]
    ManifestUnknown {
        /// The repository.
        repo: String,
        /// Tag or digest.
        reference: String,
    },
    /// A manifest references a blob or child manifest the repository does not have.
    #[error("manifest references {digest}, which repository {repo} does not have: push it first")]
    ManifestBlobUnknown {
        /// The repository.
        repo: String,
        /// The missing content.
        digest: Digest,
    },
    /// The object store failed.
    #[error("object storage error at {key}: {source}")]
    Backend {
        /// Object key involved.
        key: String,
        /// The backend's error.
        #[source]
        source: object_store::Error,
    },
    /// The database failed.
    #[error("metadata database error during {op}: {source}")]
    Database {
        /// What we were doing.
        op: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// The client's body stream failed (connection dropped, body too short).
    #[error("reading the request body failed after {received} bytes: {message}")]
    Body {
        /// Bytes received before the failure.
        received: u64,
        /// The transport's message.
        message: String,
    },
    /// A staged part lost bytes (a crash before they reached the disk): the upload cannot be
    /// finished; the client must start it again.
    #[error("staged upload data {key} has {actual} bytes, {expected} were accepted: start the upload again")]
    UploadDamaged {
        /// Object key of the part.
        key: String,
        /// Size recorded when the chunk was accepted.
        expected: u64,
        /// Size found.
        actual: u64,
    },
    /// Something with that name exists already.
    #[error("{what} already exists")]
    AlreadyExists {
        /// What, with its name.
        what: String,
    },
    /// Storing this would take a quota scope over its limit; nothing of it was stored.
    #[error(
        "quota {quota} exceeded: it holds {usage} of {limit} bytes and this needs {adding} more; delete images under it or ask for a larger quota"
    )]
    QuotaExceeded {
        /// The scope's name (its repository globs).
        quota: String,
        /// Bytes the scope holds.
        usage: u64,
        /// Its limit.
        limit: u64,
        /// Bytes the refused request would have added.
        adding: u64,
    },
    /// The tag is immutable and names a manifest already: it may not move or be deleted.
    #[error("tag {tag} of {repo} is immutable and names {digest}: push under a new tag instead")]
    ImmutableTag {
        /// The repository.
        repo: String,
        /// The tag.
        tag: String,
        /// The manifest it names.
        digest: String,
    },
    /// Stored metadata is not what this version wrote.
    #[error("corrupt metadata: {0}")]
    Corrupt(String),
    /// The storage URL or its options cannot be used.
    #[error("storage configuration: {0}")]
    Config(String),
}

impl Error {
    pub(crate) fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
        move |source| Error::Database { op, source }
    }

    pub(crate) fn backend(key: &object_store::path::Path) -> impl FnOnce(object_store::Error) -> Error + '_ {
        move |source| Error::Backend {
            key: key.to_string(),
            source,
        }
    }
}
