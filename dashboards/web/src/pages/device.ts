// Device: hardware profile, execution providers, slots, release history, events and errors, and latency and
// power over time. A device without a power sensor says so; it never shows a zero for a reading it lacks.
import { DeviceDetail, DeviceTelemetry, get } from "../api";
import { Series, lineChart } from "../chart";
import { badge, bytes, card, h, table, when } from "../dom";
import type { Ctx, Page } from "../main";

const FAILURES = new Set(["download_failed", "verification_failed", "load_failed", "golden_failed", "rolled_back", "no_variant_fits", "refused"]);
const RELEASE_STEPS = new Set(["installed", "swapped", "committed", "rolled_back"]);

export function devicePage(_ctx: Ctx, id: string): Page {
  const body = h("div", {}, h("p", { class: "loading" }, "Loading…"));
  const el = h("div", { class: "page" }, h("p", {}, h("a", { href: "#/fleet" }, "← Fleet")), h("h1", {}, "Device ", h("code", {}, id)), body);

  async function refresh(): Promise<void> {
    const since = Date.now() - 24 * 3600 * 1000;
    const [d, t] = await Promise.all([
      get<DeviceDetail>(`/devices/${encodeURIComponent(id)}`),
      get<DeviceTelemetry>(`/devices/${encodeURIComponent(id)}/telemetry?since=${since}`),
    ]);
    d.events.sort((a, b) => Date.parse(b.at) - Date.parse(a.at));
    const hw = d.hardware;
    const sensor = hw.power && !hw.power.startsWith("unavailable") ? hw.power : null;
    const status = d.revoked ? badge("revoked", "bad") : d.last_error ? badge("failing", "bad") : d.online ? badge("online", "good") : badge(d.last_seen ? "offline" : "never seen", "muted");
    const slots = (d.report?.models ?? []).flatMap((m) =>
      (["active", "staged"] as const).flatMap((which) => {
        const s = m[which];
        return s ? [[m.model, which, s.slot, `release ${s.release}`, s.variant, s.provider ?? "–", s.state]] : [];
      }),
    );
    const history = d.events.filter((e) => RELEASE_STEPS.has(e.kind) && e.release !== null);
    const latency: Series[] = [];
    const power: Series[] = [];
    const groups = new Map<string, typeof t.windows>();
    for (const w of t.windows) {
      const key = `${w.model} r${w.release}`;
      groups.set(key, [...(groups.get(key) ?? []), w]);
    }
    for (const [key, ws] of groups) {
      const at = (w: (typeof ws)[number]) => Date.parse(w.window_start) / 1000;
      for (const [q, field, dash] of [["p50", "p50_ms", true], ["p95", "p95_ms", false], ["p99", "p99_ms", true]] as const) {
        latency.push({ label: `${key} ${q}`, points: new Map(ws.map((w) => [at(w), w[field]])), dash });
      }
      power.push({ label: `${key} power`, points: new Map(ws.map((w) => [at(w), w.watts])) });
    }
    body.replaceChildren(
      h(
        "div",
        { class: "grid2" },
        card(
          "Hardware",
          h(
            "dl",
            { class: "facts", id: "hardware" },
            h("dt", {}, "Status"), h("dd", {}, status),
            h("dt", {}, "Device class"), h("dd", {}, hw.device_class),
            h("dt", {}, "Architecture"), h("dd", {}, hw.arch),
            h("dt", {}, "SoC / NPU"), h("dd", {}, hw.soc.length ? hw.soc.join(", ") : "–"),
            h("dt", {}, "Memory"), h("dd", {}, bytes(hw.memory_bytes)),
            h("dt", {}, "Execution providers"), h("dd", {}, hw.execution_providers.join(" → ")),
            h("dt", {}, "Power sensor"), h("dd", { id: "power-sensor" }, sensor ?? "no sensor"),
            h("dt", {}, "Last seen"), h("dd", {}, when(d.last_seen)),
            h("dt", {}, "Enrolled"), h("dd", {}, when(d.enrolled_at)),
            h("dt", {}, "Labels"), h("dd", {}, Object.entries(d.labels).map(([k, v]) => `${k}=${v}`).join(", ") || "none"),
          ),
        ),
        card(
          "Model slots",
          d.last_error ? h("p", { class: "error", id: "last-error" }, `Last error: ${d.last_error}`) : null,
          slots.length ? table(["Model", "Slot role", "Slot", "Release", "Variant", "Execution provider", "State"], slots, { id: "slots" }) : h("p", { class: "empty" }, "No model installed yet."),
        ),
      ),
      h(
        "div",
        { class: "grid2" },
        lineChart("Inference latency per window", "latency (ms)", latency, "No inference reported in the last 24 hours."),
        lineChart(
          "Power while serving, window average",
          "power (W)",
          power,
          sensor ? "No energy reported in the last 24 hours." : "No sensor: this device has no power sensor, so no power is shown.",
        ),
      ),
      card(
        "Release history",
        history.length
          ? table(["When", "Step", "Model", "Release", "Variant"], history.map((e) => [when(e.at), e.kind.replace(/_/g, " "), e.model ?? "–", String(e.release), e.variant ?? "–"]), { id: "release-history" })
          : h("p", { class: "empty" }, "No release installed yet."),
      ),
      card(
        "Events and errors (newest first)",
        d.events.length
          ? table(
              ["When", "Event", "Model", "Release", "Detail"],
              d.events.map((e) => [when(e.at), FAILURES.has(e.kind) ? badge(e.kind.replace(/_/g, " "), "bad") : e.kind.replace(/_/g, " "), e.model ?? "–", e.release === null ? "–" : String(e.release), e.detail]),
              { id: "events" },
            )
          : h("p", { class: "empty" }, "No events."),
      ),
    );
  }
  return { el, refresh };
}
