-- Accounts for basic and token auth. kind: 'user' or 'robot'. password_hash: bcrypt.
-- scopes: robots only, JSON [{"repos": ["team/*"], "actions": ["pull"]}]: the most a robot may do.
CREATE TABLE users (
    name           TEXT    PRIMARY KEY,
    kind           TEXT    NOT NULL,
    password_hash  TEXT    NOT NULL,
    scopes         TEXT,
    created_at     BIGINT  NOT NULL,
    updated_at     BIGINT  NOT NULL
);
