-- Variant choice by measurement (a rollout's `choose_variant`): what each device measured of each variant of a
-- release on its golden inputs, and each device class's choice in a rollout.

CREATE TABLE variant_measurements (
    model TEXT NOT NULL,
    release BIGINT NOT NULL,
    device_id TEXT NOT NULL,
    variant TEXT NOT NULL,
    -- the class the device reported when it sent them
    device_class TEXT NOT NULL,
    golden_passed BIGINT NOT NULL,
    runs BIGINT NOT NULL,
    median_us BIGINT NOT NULL,
    p95_us BIGINT NOT NULL,
    -- energy per inference, where the device has a power sensor
    energy_uj BIGINT,
    detail TEXT NOT NULL,
    measured_at BIGINT NOT NULL,
    PRIMARY KEY (model, release, device_id, variant)
);

-- One row per device class a rollout measured: the class's ClassChoice (JSON); once decided, never changed.
CREATE TABLE rollout_choices (
    rollout_id TEXT NOT NULL,
    device_class TEXT NOT NULL,
    decided BIGINT NOT NULL,
    body TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (rollout_id, device_class)
);
