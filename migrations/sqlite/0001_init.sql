-- Berth metadata, SQLite dialect. Only ever add migrations; never edit an applied one.
-- Blobs are global; a repository sees a blob only through its repo_blobs link.

CREATE TABLE repositories (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    created_at  BIGINT  NOT NULL
);

CREATE TABLE blobs (
    digest      TEXT    PRIMARY KEY,
    size        BIGINT  NOT NULL,
    created_at  BIGINT  NOT NULL
);

CREATE TABLE repo_blobs (
    repo_id     BIGINT  NOT NULL,
    digest      TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    PRIMARY KEY (repo_id, digest)
);
CREATE INDEX repo_blobs_digest ON repo_blobs (digest);

-- Manifests are small (capped at 4 MiB) and read on every pull: kept byte-exact in the row.
CREATE TABLE manifests (
    repo_id       BIGINT  NOT NULL,
    digest        TEXT    NOT NULL,
    media_type    TEXT    NOT NULL,
    artifact_type TEXT,
    subject       TEXT,
    annotations   TEXT,
    content       BLOB    NOT NULL,
    created_at    BIGINT  NOT NULL,
    PRIMARY KEY (repo_id, digest)
);
CREATE INDEX manifests_subject ON manifests (repo_id, subject);

-- What each manifest references (blobs and child manifests): the mark set of garbage collection.
CREATE TABLE manifest_refs (
    repo_id          BIGINT NOT NULL,
    manifest_digest  TEXT   NOT NULL,
    child_digest     TEXT   NOT NULL,
    PRIMARY KEY (repo_id, manifest_digest, child_digest)
);
CREATE INDEX manifest_refs_child ON manifest_refs (child_digest);

CREATE TABLE tags (
    repo_id          BIGINT NOT NULL,
    name             TEXT   NOT NULL,
    manifest_digest  TEXT   NOT NULL,
    updated_at       BIGINT NOT NULL,
    PRIMARY KEY (repo_id, name)
);
CREATE INDEX tags_manifest ON tags (repo_id, manifest_digest);

-- Open upload sessions. parts: JSON array of {key, size}; hash_state: see storage::hashstate.
CREATE TABLE uploads (
    id          TEXT    PRIMARY KEY,
    repo        TEXT    NOT NULL,
    size        BIGINT  NOT NULL,
    parts       TEXT    NOT NULL,
    hash_state  BLOB,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL
);
