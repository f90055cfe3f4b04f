-- Replicas over one database. `changes` is what the servers' in-memory caches depend on, in the order it changed:
-- each server reads it from where it left off, woken by NOTIFY edgefleet_changes and every second regardless,
-- and applies what other servers changed (all documents, the trust root, or one device). Rows are kept an hour.
CREATE TABLE changes (
    seq BIGSERIAL PRIMARY KEY,
    origin TEXT NOT NULL,
    scope TEXT NOT NULL,
    device_id TEXT,
    at BIGINT NOT NULL
);
CREATE INDEX changes_at ON changes (at);

-- PEM material every server shares and none may make on its own: the device CA and, when no certificate is
-- configured, the self-signed server identity. Written once (the first server to start), read by all.
CREATE TABLE shared_pem (
    name TEXT PRIMARY KEY,
    pem TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
