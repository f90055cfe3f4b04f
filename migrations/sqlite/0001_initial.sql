-- edgefleet control plane, initial schema (SQLite). Append-only: later changes are new files.
-- Times are milliseconds since the Unix epoch (BIGINT), JSON documents are TEXT.

CREATE TABLE api_tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    source TEXT NOT NULL,
    detail TEXT NOT NULL
);

CREATE TABLE roots (
    version BIGINT PRIMARY KEY,
    body TEXT NOT NULL,
    added_at BIGINT NOT NULL
);

CREATE TABLE releases (
    model TEXT NOT NULL,
    version BIGINT NOT NULL,
    security_floor BIGINT NOT NULL,
    description TEXT NOT NULL,
    variants TEXT NOT NULL,
    manifest TEXT NOT NULL,
    published_at BIGINT NOT NULL,
    published_by TEXT NOT NULL,
    PRIMARY KEY (model, version)
);

CREATE TABLE assignments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    version BIGINT NOT NULL,
    selector TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL
);

CREATE TABLE enroll_tokens (
    token_hash TEXT PRIMARY KEY,
    labels TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    used_at BIGINT,
    used_by TEXT
);

CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    labels TEXT NOT NULL,
    device_class TEXT NOT NULL,
    hardware TEXT NOT NULL,
    cert_serial TEXT NOT NULL,
    enrolled_at BIGINT NOT NULL,
    last_seen BIGINT,
    revoked_at BIGINT,
    report TEXT,
    desired_seq BIGINT NOT NULL DEFAULT 0,
    desired_digest TEXT,
    desired_doc TEXT,
    desired_expires BIGINT
);

CREATE TABLE device_labels (
    device_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (device_id, key)
);
CREATE INDEX device_labels_by_pair ON device_labels (key, value, device_id);

CREATE TABLE device_events (
    device_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (device_id, event_id)
);
