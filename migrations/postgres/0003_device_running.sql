-- What each device's last report says runs (revoked devices: nothing), and whether it carried an error, kept
-- beside the report so the fleet overview counts with indexes instead of parsing every report.

ALTER TABLE devices ADD COLUMN failing BIGINT NOT NULL DEFAULT 0;

CREATE TABLE device_running (
    device_id TEXT NOT NULL,
    model TEXT NOT NULL,
    release BIGINT NOT NULL,
    PRIMARY KEY (device_id, model)
);
CREATE INDEX device_running_by_release ON device_running (model, release);
-- Covers the per-class counts (an index-only scan; last_seen writes, batched, keep it current).
CREATE INDEX devices_fleet ON devices (revoked_at, device_class, last_seen, failing);

INSERT INTO device_running (device_id, model, release)
SELECT d.id, m ->> 'model', CAST(m -> 'active' ->> 'release' AS BIGINT)
FROM devices d, jsonb_array_elements(d.report::jsonb -> 'models') m
WHERE d.report IS NOT NULL AND d.revoked_at IS NULL AND (m -> 'active' ->> 'release') IS NOT NULL;

UPDATE devices SET failing = 1 WHERE report IS NOT NULL AND (report::jsonb ->> 'last_error') IS NOT NULL;

-- API tokens may expire (ms since the epoch; NULL: never).
ALTER TABLE api_tokens ADD COLUMN expires_at BIGINT;
