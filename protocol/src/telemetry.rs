//! The telemetry contract between the daemon's OpenTelemetry exporter and the control plane's OTLP receiver:
//! metric and attribute names, and the inference-duration histogram's bucket bounds.

/// Histogram bucket bounds of `edgefleet.inference.duration`, seconds: fine enough for sub-millisecond models,
/// up to 10 s. The receiver re-buckets histograms with other bounds (a stock SDK's defaults) onto these.
pub const DURATION_BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Histogram (s): time to answer one inference request.
pub const INFERENCE_DURATION: &str = "edgefleet.inference.duration";
/// Counter: inference requests, by `outcome` (`ok` | `error`).
pub const INFERENCE_COUNT: &str = "edgefleet.inference.count";
/// Histogram (s): a language model's time to first token, from the request to its first generated token
/// (OpenTelemetry GenAI semantic conventions).
pub const LLM_TTFT: &str = "gen_ai.server.time_to_first_token";
/// Histogram (s): a language model's time per output token after the first (GenAI semantic conventions).
pub const LLM_TPOT: &str = "gen_ai.server.time_per_output_token";
/// Counter: tokens a language model read and wrote, by `gen_ai.token.type` (`input` | `output`).
pub const LLM_TOKENS: &str = "edgefleet.llm.tokens";
pub const ATTR_TOKEN_TYPE: &str = "gen_ai.token.type";

/// Counter: language-model requests by who answered (`tier` = local | cloud) and why (`reason`, one of
/// [`ROUTE_REASONS`]); `release` and `variant` are the local release in force (absent when none serves).
pub const ROUTE_REQUESTS: &str = "edgefleet.route.requests";
/// Histogram (s): how long a cloud tier took to answer whole.
pub const ROUTE_CLOUD_DURATION: &str = "edgefleet.route.cloud.duration";
/// Counter: requests a cloud tier did not answer usably (down, slow, an error, garbage), by `tier_name`.
pub const ROUTE_CLOUD_ERRORS: &str = "edgefleet.route.cloud.errors";
/// Counter (By): request bytes sent to cloud tiers. The three cloud metrics carry `tier_name`, and `release`
/// and `variant` of the local release in force when one serves.
pub const ROUTE_CLOUD_BYTES: &str = "edgefleet.route.cloud.bytes_sent";
/// Every `reason` a routed request may carry, in this order wherever they are counted one by one (the
/// control plane keeps one column per reason). What answers is mostly the reason's own: `requested` alone can
/// be either tier, which `tier` says.
pub const ROUTE_REASONS: [&str; 13] = [
    "local_only",
    "private",
    "cloud_only",
    "requested",
    "prompt_tokens",
    "ttft_slo",
    "battery",
    "local_not_ready",
    "queue_depth",
    "low_confidence",
    "rules",
    "no_cloud_tier",
    "cloud_failed",
];
pub const ATTR_TIER: &str = "tier";
pub const ATTR_REASON: &str = "reason";
pub const ATTR_TIER_NAME: &str = "tier_name";

/// Counter: install steps and failures, by `kind` (the device event kinds: `committed`, `golden_failed`, …).
pub const INSTALL_EVENTS: &str = "edgefleet.install.events";
/// Counter (J): energy used by the device, from its sensor (OpenTelemetry `hw.energy`).
pub const HW_ENERGY: &str = "hw.energy";
/// Gauge (W): power drawn by the device, from its sensor (OpenTelemetry `hw.power`).
pub const HW_POWER: &str = "hw.power";
/// Gauge (By): the daemon's resident memory.
pub const PROCESS_MEMORY: &str = "process.memory.usage";

/// Resource attributes.
pub const RES_DEVICE_ID: &str = "device.id";
pub const RES_DEVICE_CLASS: &str = "edgefleet.device.class";
pub const RES_ARCH: &str = "host.arch";

/// Data point attributes.
pub const ATTR_MODEL: &str = "model";
pub const ATTR_RELEASE: &str = "release";
pub const ATTR_VARIANT: &str = "variant";
pub const ATTR_PROVIDER: &str = "provider";
pub const ATTR_OUTCOME: &str = "outcome";
pub const ATTR_KIND: &str = "kind";

/// Install event kinds that end an install attempt: it was committed, or it failed for good.
pub const INSTALL_COMMITTED: &str = "committed";
pub const INSTALL_FAILURES: [&str; 4] = ["verification_failed", "load_failed", "golden_failed", "rolled_back"];
