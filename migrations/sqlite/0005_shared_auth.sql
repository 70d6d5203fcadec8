-- Auth state every replica must see alike (registry/src/auth). Only ever add migrations;
-- never edit an applied one.
--
-- signing_keys: the token service's ES256 private key (PEM), so a token minted by one replica
-- verifies on every other. The first replica to start inserts its candidate with ON CONFLICT DO
-- NOTHING and every replica then reads the one row that won. Anyone who can read this table can
-- mint tokens: grant it like the users table.
CREATE TABLE signing_keys (
    name             TEXT    PRIMARY KEY,
    private_key_pem  TEXT    NOT NULL,
    created_at       BIGINT  NOT NULL
);

-- login_failures: failed logins per account name and client address ('' when unknown), so a
-- lockout earned on one replica holds on all. Times in unix milliseconds. expires_at is when
-- the row stops mattering (the later of the counting window's end and the lockout's end):
-- rows past it count from zero again, and are purged.
CREATE TABLE login_failures (
    account       TEXT    NOT NULL,
    peer          TEXT    NOT NULL,
    failures      BIGINT  NOT NULL,
    first_at      BIGINT  NOT NULL,
    locked_until  BIGINT,
    expires_at    BIGINT  NOT NULL,
    PRIMARY KEY (account, peer)
);
CREATE INDEX login_failures_expires ON login_failures (expires_at);
