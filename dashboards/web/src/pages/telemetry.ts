// Latency (p50, p95, p99) and energy per inference over time, one line per release and device class; for a
// language model also time to first token (p50, p95), decoding speed and energy per output token; and for one
// under a routing policy the share answered in the cloud over time and the split by reason.
import { ModelSummary, ModelTelemetry, RouteWindowStats, get } from "../api";
import { Series, lineChart } from "../chart";
import { bytes, card, h, num, table } from "../dom";
import type { Ctx, Page } from "../main";

export function telemetryPage(ctx: Ctx, chosen?: string): Page {
  const picker = h("select", { id: "model-picker", "aria-label": "Model" }) as HTMLSelectElement;
  picker.addEventListener("change", () => ctx.go(`#/telemetry/${encodeURIComponent(picker.value)}`));
  const body = h("div", { class: "charts" }, h("p", { class: "loading" }, "Loading…"));
  const el = h("div", { class: "page" }, h("h1", {}, "Latency & energy"), h("label", {}, "Model ", picker), h("p", { class: "muted" }, "The last 24 hours, per telemetry window, by release and device class."), body);

  async function refresh(): Promise<void> {
    const models = await get<ModelSummary[]>("/models");
    if (models.length === 0) {
      body.replaceChildren(h("p", { class: "empty" }, "No model published yet."));
      return;
    }
    const model = chosen && models.some((m) => m.model === chosen) ? chosen : models[0].model;
    if (picker.options.length !== models.length) picker.replaceChildren(...models.map((m) => h("option", { value: m.model }, m.model)));
    picker.value = model;
    const t = await get<ModelTelemetry>(`/models/${encodeURIComponent(model)}/telemetry?since=${Date.now() - 24 * 3600 * 1000}`);
    const groups = new Map<string, ModelTelemetry["windows"]>();
    for (const w of t.windows) {
      const key = `release ${w.release} on ${w.device_class}`;
      groups.set(key, [...(groups.get(key) ?? []), w]);
    }
    const series = (field: "p50_ms" | "p95_ms" | "p99_ms" | "joules_per_inference"): Series[] =>
      [...groups].map(([label, ws]) => ({ label, points: new Map(ws.map((w) => [Date.parse(w.window_start) / 1000, w[field]])) }));
    const none = "No inference reported for this model in the last 24 hours.";
    const llmSeries = (field: "ttft_p50_ms" | "ttft_p95_ms" | "tokens_per_second" | "joules_per_token"): Series[] =>
      [...groups].map(([label, ws]) => ({ label, points: new Map(ws.map((w) => [Date.parse(w.window_start) / 1000, w.llm ? w.llm[field] : null])) }));
    const isLlm = t.windows.some((w) => w.llm);
    const llmCharts = isLlm
      ? [
          lineChart("Time to first token p50", "TTFT p50 (ms)", llmSeries("ttft_p50_ms"), none),
          lineChart("Time to first token p95", "TTFT p95 (ms)", llmSeries("ttft_p95_ms"), none),
          lineChart("Decoding speed", "tokens/s per stream", llmSeries("tokens_per_second"), none),
          lineChart("Energy per output token", "energy per token (J)", llmSeries("joules_per_token"), "No sensor: no device running this model reported energy."),
        ]
      : [];
    const routeCharts = t.windows.some((w) => w.route) ? routing(groups) : [];
    const noEnergy = [...groups].filter(([, ws]) => ws.every((w) => w.joules_per_inference === null)).map(([k]) => k);
    const note = noEnergy.length ? [h("p", { class: "muted", id: "no-sensor" }, `No sensor (no energy figures) for: ${noEnergy.join("; ")}.`)] : [];
    body.replaceChildren(
      ...routeCharts,
      ...llmCharts,
      lineChart("p50 latency (median)", "p50 latency (ms)", series("p50_ms"), none),
      lineChart("p95 latency", "p95 latency (ms)", series("p95_ms"), none),
      lineChart("p99 latency", "p99 latency (ms)", series("p99_ms"), none),
      lineChart("Energy per inference", "energy per inference (J)", series("joules_per_inference"), "No sensor: no device running this model reported energy."),
      ...note,
    );
  }
  return { el, refresh };
}

/** The routing split: the cloud's share per window, and per release and class the totals by tier and reason. */
function routing(groups: Map<string, ModelTelemetry["windows"]>): HTMLElement[] {
  const share: Series[] = [...groups].map(([label, ws]) => ({
    label,
    points: new Map(ws.map((w) => [Date.parse(w.window_start) / 1000, w.route ? 100 * w.route.cloud_share : null])),
  }));
  const rows = [...groups].flatMap(([label, ws]) => {
    const rs = ws.flatMap((w) => (w.route ? [w.route] : []));
    if (rs.length === 0) return [];
    const sum = (f: (r: RouteWindowStats) => number) => rs.reduce((a, r) => a + f(r), 0);
    const reasons = new Map<string, number>();
    for (const r of rs) for (const [k, n] of Object.entries(r.by_reason)) reasons.set(k, (reasons.get(k) ?? 0) + n);
    const requests = sum((r) => r.requests);
    const cloud = sum((r) => r.cloud);
    const p95 = Math.max(...rs.map((r) => r.cloud_p95_ms ?? 0));
    return [[
      label,
      requests.toLocaleString(),
      (requests - cloud).toLocaleString(),
      cloud.toLocaleString(),
      requests ? `${num((100 * cloud) / requests, 1)} %` : "–",
      [...reasons].sort((a, b) => b[1] - a[1]).map(([k, n]) => `${k.replace(/_/g, " ")} ${n.toLocaleString()}`).join(", "),
      sum((r) => r.cloud_errors).toLocaleString(),
      bytes(sum((r) => r.cloud_bytes_sent)),
      p95 > 0 ? `${num(p95, 0)} ms (worst window)` : "–",
    ]];
  });
  return [
    lineChart("Share answered in the cloud", "cloud share (%)", share, "No routed request in the last 24 hours."),
    card(
      "Routing, last 24 hours (who answered and why)",
      table(["Release and class", "Requests", "Local", "Cloud", "Cloud share", "By reason", "Cloud errors", "Sent to the cloud", "Cloud p95"], rows, { id: "routing" }),
    ),
  ];
}
