-- Governance (storage/src/meta/quota.rs, pins.rs, retention.rs), PostgreSQL dialect: the
-- same as sqlite/0008_governance.sql. Only ever add migrations;
-- never edit an applied one.
--
-- quota_objects: what each quota scope counts, once per scope however many of its
-- repositories hold it. A scope is named by its repository globs (the config's `repos`,
-- joined with ','); refs is how many (repository, digest) pairs of the scope hold the digest,
-- as a blob link or a manifest. The digest's size counts towards the scope while refs > 0.
CREATE TABLE quota_objects (
    scope   TEXT    NOT NULL,
    digest  TEXT    NOT NULL,
    size    BIGINT  NOT NULL,
    refs    BIGINT  NOT NULL,
    PRIMARY KEY (scope, digest)
);

-- quota_usage: the sum of quota_objects.size per scope, kept in step in the transaction that
-- changes quota_objects. Its row is the scope's lock: two pushers racing past a limit
-- serialize on it, and the second sees the first's bytes.
CREATE TABLE quota_usage (
    scope   TEXT    PRIMARY KEY,
    bytes   BIGINT  NOT NULL
);

-- pins: manifests that retention and garbage collection must keep, with the blobs under them.
-- holder: 'pin' for `berth-registry pin`, 'node:<name>' for a berth-node's report of what its
-- containers use. expires_at: unix milliseconds after which the pin no longer counts (a node
-- report's window); NULL: until removed.
CREATE TABLE pins (
    digest      TEXT    NOT NULL,
    holder      TEXT    NOT NULL,
    repo        TEXT,
    expires_at  BIGINT,
    updated_at  BIGINT  NOT NULL,
    PRIMARY KEY (digest, holder)
);

-- When a manifest was last pulled (unix milliseconds; NULL: never since this column exists),
-- written in batches by the registry (retention's `pulled_within`).
ALTER TABLE manifests ADD COLUMN last_pulled BIGINT;
