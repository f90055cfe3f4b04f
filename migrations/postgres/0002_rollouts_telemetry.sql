-- Rollouts (which replace plain assignments for the devices they select) and telemetry rollups.

CREATE TABLE rollouts (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    baseline BIGINT NOT NULL,
    release BIGINT NOT NULL,
    selector TEXT NOT NULL,
    -- waves, gates, min_samples, on_failure (JSON)
    spec TEXT NOT NULL,
    -- where it stands (JSON), and its gates' numbers at the last evaluation (JSON)
    state TEXT NOT NULL,
    gates TEXT NOT NULL DEFAULT '[]',
    evaluated_at BIGINT,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX rollouts_by_model ON rollouts (model, created_at);

-- Deltas of the devices' cumulative OTLP metrics, per device, model, release, variant, execution provider
-- and time window. b00..b16 count inference durations in the buckets of telemetry::BUCKETS (seconds;
-- b16 is everything above the last bound). Energy is the device's energy-counter delta over exports in
-- which it ran inferences, shared among the series by their inference counts.
CREATE TABLE telemetry_rollups (
    device_id TEXT NOT NULL,
    model TEXT NOT NULL,
    release BIGINT NOT NULL,
    variant TEXT NOT NULL,
    provider TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    device_class TEXT NOT NULL,
    ok BIGINT NOT NULL DEFAULT 0,
    errors BIGINT NOT NULL DEFAULT 0,
    duration_sum DOUBLE PRECISION NOT NULL DEFAULT 0,
    b00 BIGINT NOT NULL DEFAULT 0,
    b01 BIGINT NOT NULL DEFAULT 0,
    b02 BIGINT NOT NULL DEFAULT 0,
    b03 BIGINT NOT NULL DEFAULT 0,
    b04 BIGINT NOT NULL DEFAULT 0,
    b05 BIGINT NOT NULL DEFAULT 0,
    b06 BIGINT NOT NULL DEFAULT 0,
    b07 BIGINT NOT NULL DEFAULT 0,
    b08 BIGINT NOT NULL DEFAULT 0,
    b09 BIGINT NOT NULL DEFAULT 0,
    b10 BIGINT NOT NULL DEFAULT 0,
    b11 BIGINT NOT NULL DEFAULT 0,
    b12 BIGINT NOT NULL DEFAULT 0,
    b13 BIGINT NOT NULL DEFAULT 0,
    b14 BIGINT NOT NULL DEFAULT 0,
    b15 BIGINT NOT NULL DEFAULT 0,
    b16 BIGINT NOT NULL DEFAULT 0,
    energy_j DOUBLE PRECISION NOT NULL DEFAULT 0,
    energy_inferences BIGINT NOT NULL DEFAULT 0,
    installs BIGINT NOT NULL DEFAULT 0,
    install_failures BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (device_id, model, release, variant, provider, window_start)
);
CREATE INDEX telemetry_rollups_by_release ON telemetry_rollups (model, release, window_start);
CREATE INDEX telemetry_rollups_by_window ON telemetry_rollups (window_start);

-- The last cumulative point of each of a device's series (JSON), written in the same transaction as the
-- rollups it produced, so a restarted server neither loses nor double-counts a delta.
CREATE TABLE telemetry_series (
    device_id TEXT PRIMARY KEY,
    series TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
