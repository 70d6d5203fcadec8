-- Berth metadata, PostgreSQL dialect: the same schema as sqlite/0001_init.sql. Only ever add
-- migrations; never edit an applied one. Names sort bytewise (COLLATE "C") so tag and catalog
-- pages come in the order the spec asks for, whatever the database's locale.

CREATE TABLE repositories (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT COLLATE "C" NOT NULL UNIQUE,
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

CREATE TABLE manifests (
    repo_id       BIGINT  NOT NULL,
    digest        TEXT    NOT NULL,
    media_type    TEXT    NOT NULL,
    artifact_type TEXT,
    subject       TEXT,
    annotations   TEXT,
    content       BYTEA   NOT NULL,
    created_at    BIGINT  NOT NULL,
    PRIMARY KEY (repo_id, digest)
);
CREATE INDEX manifests_subject ON manifests (repo_id, subject);

CREATE TABLE manifest_refs (
    repo_id          BIGINT NOT NULL,
    manifest_digest  TEXT   NOT NULL,
    child_digest     TEXT   NOT NULL,
    PRIMARY KEY (repo_id, manifest_digest, child_digest)
);
CREATE INDEX manifest_refs_child ON manifest_refs (child_digest);

CREATE TABLE tags (
    repo_id          BIGINT NOT NULL,
    name             TEXT COLLATE "C" NOT NULL,
    manifest_digest  TEXT   NOT NULL,
    updated_at       BIGINT NOT NULL,
    PRIMARY KEY (repo_id, name)
);
CREATE INDEX tags_manifest ON tags (repo_id, manifest_digest);

CREATE TABLE uploads (
    id          TEXT    PRIMARY KEY,
    repo        TEXT    NOT NULL,
    size        BIGINT  NOT NULL,
    parts       TEXT    NOT NULL,
    hash_state  BYTEA,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL
);
