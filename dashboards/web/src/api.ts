// The control plane's JSON API, called with the signed-in token in the Authorization header (never in a URL).

export class Unauthorized extends Error {}
export class Unreachable extends Error {}
export class ApiFailure extends Error {
  constructor(
    public status: number,
    public code: string,
    message: string,
  ) {
    super(message);
  }
}

const KEY = "edgefleet.token";

export function token(): string | null {
  return sessionStorage.getItem(KEY);
}
export function setToken(t: string | null): void {
  if (t) sessionStorage.setItem(KEY, t);
  else sessionStorage.removeItem(KEY);
}

export async function call<T>(method: string, path: string, tok = token()): Promise<T> {
  let resp: Response;
  try {
    resp = await fetch(`/api/v1${path}`, {
      method,
      headers: { Authorization: `Bearer ${tok ?? ""}`, Accept: "application/json" },
      cache: "no-store",
    });
  } catch (e) {
    throw new Unreachable(String(e));
  }
  if (resp.status === 401) {
    const body = await resp.json().catch(() => null);
    throw new Unauthorized(body?.error?.message ?? "the token was refused");
  }
  if (resp.status === 502 || resp.status === 503 || resp.status === 504) throw new Unreachable(`HTTP ${resp.status}`);
  if (!resp.ok) {
    const body = await resp.json().catch(() => null);
    throw new ApiFailure(resp.status, body?.error?.code ?? "error", body?.error?.message ?? `HTTP ${resp.status}`);
  }
  if (resp.status === 204) return undefined as T;
  return (await resp.json()) as T;
}

export const get = <T>(path: string) => call<T>("GET", path);
export const post = <T>(path: string) => call<T>("POST", path);

// === the shapes the dashboard reads (see /api/v1/openapi.json) ===

export type Role = "viewer" | "publisher" | "operator" | "admin";
export interface WhoAmI {
  name: string;
  role: Role;
}
export interface ClassCount {
  device_class: string;
  devices: number;
  online: number;
  never_seen: number;
  failing: number;
}
export interface FleetOverview {
  devices: number;
  online: number;
  offline: number;
  never_seen: number;
  failing: number;
  revoked: number;
  online_window_secs: number;
  by_class: ClassCount[];
  by_release: { model: string; release: number; devices: number }[];
}
export interface DeviceSummary {
  id: string;
  labels: Record<string, string>;
  device_class: string;
  enrolled_at: string;
  last_seen: string | null;
  revoked: boolean;
  online: boolean;
  running: { model: string; release: number }[];
  last_error: string | null;
}
export interface DevicePage {
  devices: DeviceSummary[];
  next: string | null;
}
export interface SlotStatus {
  slot: string;
  release: number;
  variant: string;
  provider: string | null;
  state: string;
}
export interface DeviceEvent {
  id: string;
  kind: string;
  model: string | null;
  release: number | null;
  variant: string | null;
  detail: string;
  at: string;
}
export interface DeviceDetail extends DeviceSummary {
  hardware: {
    device_class: string;
    arch: string;
    execution_providers: string[];
    memory_bytes: number;
    soc: string[];
    power: string;
  };
  report: {
    models: { model: string; active: SlotStatus | null; staged: SlotStatus | null }[];
    last_error: string | null;
  } | null;
  desired_sequence: number | null;
  events: DeviceEvent[];
}
export interface LlmWindowStats {
  ttft_p50_ms: number | null;
  ttft_p95_ms: number | null;
  tpot_p95_ms: number | null;
  tokens_per_second: number | null;
  prompt_tokens: number;
  output_tokens: number;
  joules_per_token: number | null;
}

/** How a language model's requests were routed (models under a routing policy only). */
export interface RouteWindowStats {
  requests: number;
  local: number;
  cloud: number;
  cloud_share: number;
  by_reason: Record<string, number>;
  cloud_errors: number;
  cloud_bytes_sent: number;
  cloud_p50_ms: number | null;
  cloud_p95_ms: number | null;
}

export interface WindowStats {
  window_start: string;
  release: number;
  requests: number;
  errors: number;
  p50_ms: number | null;
  p95_ms: number | null;
  p99_ms: number | null;
  joules_per_inference: number | null;
  /** Language models only. */
  llm?: LlmWindowStats;
  /** Language models under a routing policy only. */
  route?: RouteWindowStats;
  watts: number | null;
  installs: number;
  install_failures: number;
}
export interface ModelTelemetry {
  model: string;
  window_secs: number;
  windows: (WindowStats & { device_class: string })[];
}
export interface DeviceTelemetry {
  device_id: string;
  window_secs: number;
  windows: (WindowStats & { model: string })[];
}
export interface ModelSummary {
  model: string;
  latest_version: number;
  releases: number;
}
export interface VariantInfo {
  id: string;
  precision: string;
  format: string;
  size_bytes: number;
  download_bytes: number;
  execution_providers: string[];
  arch: string[];
  soc: string[];
}
export interface ReleaseSummary {
  model: string;
  version: number;
  security_floor: number;
  description: string;
  variants: string[];
  published_at: string;
  published_by: string;
  variant_details: VariantInfo[];
  signed_by: string[];
}
export type Gate =
  | { kind: "error_rate"; max_increase: number }
  | { kind: "p95_latency_ratio"; max: number }
  | { kind: "energy_ratio"; max: number }
  | { kind: "install_failure_ratio"; max: number }
  | { kind: "ttft_p95_ratio"; max: number }
  | { kind: "tpot_p95_ratio"; max: number }
  | { kind: "energy_per_token_ratio"; max: number }
  | { kind: "cloud_share_ratio"; max: number };
export interface GateResult {
  gate: Gate;
  class: string;
  value: number | null;
  threshold: number;
  samples_new: number;
  samples_baseline: number;
  verdict: "pass" | "fail" | "too_few_samples" | "unavailable" | "not_reached";
}
export type RolloutState =
  | { state: "running"; wave: number; since: number }
  | { state: "paused"; wave: number; reason: string }
  | { state: "rolled_back"; reason: string }
  | { state: "aborted"; reason: string }
  | { state: "done" };
export interface RolloutView {
  id: string;
  model: string;
  selector: string;
  baseline: number;
  release: number;
  waves: { percent: number; cohort?: unknown; bake_secs: number }[];
  gates: Gate[];
  min_samples: number;
  on_failure: "pause" | "roll_back";
  choose_variant?: { by: "measurement"; objective: "latency" | "energy"; min_devices: number };
  state: RolloutState;
  share_percent: number;
  gate_results: GateResult[];
  variant_choices?: ClassChoice[];
  evaluated_at: string | null;
  created_at: string;
  created_by: string;
  updated_at: string;
}
export interface ClassChoice {
  class: string;
  variant: string | null;
  decided: boolean;
  reason: string;
  devices: number;
  measured: { variant: string; devices: number; failed: number; median_ms: number | null; energy_mj: number | null }[];
}
export interface AuditEntry {
  id: number;
  at: string;
  actor: string;
  action: string;
  target: string;
  source: string;
  detail: unknown;
}
