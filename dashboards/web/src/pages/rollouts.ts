// Rollouts: each rollout's waves and progress, every gate's measured value against its threshold with its
// sample counts, the audit events that moved it, and (for operators) pause, resume, abort and promote.
import { ApiFailure, AuditEntry, Gate, GateResult, RolloutView, get, post } from "../api";
import { badge, card, h, num, table, when } from "../dom";
import type { Ctx, Page } from "../main";
import { refreshNow } from "../main";

const STATE_KIND: Record<string, string> = { running: "good", paused: "warn", rolled_back: "bad", aborted: "bad", done: "muted" };

function stateBadge(r: RolloutView): HTMLElement {
  return badge(r.state.state.replace("_", " "), STATE_KIND[r.state.state] ?? "muted");
}

function gateText(g: Gate): string {
  switch (g.kind) {
    case "error_rate":
      return "error-rate increase (new − baseline, share of requests)";
    case "p95_latency_ratio":
      return "p95 latency ratio (new ÷ baseline)";
    case "energy_ratio":
      return "energy per inference ratio (new ÷ baseline)";
    case "install_failure_ratio":
      return "install failure ratio (failed ÷ tried)";
    case "ttft_p95_ratio":
      return "time-to-first-token p95 ratio (new ÷ baseline)";
    case "tpot_p95_ratio":
      return "time-per-output-token p95 ratio (new ÷ baseline)";
    case "energy_per_token_ratio":
      return "energy per output token ratio (new ÷ baseline)";
    case "cloud_share_ratio":
      return "share answered in the cloud, ratio (new ÷ baseline)";
  }
}

const VERDICT: Record<GateResult["verdict"], [string, string]> = {
  pass: ["pass", "good"],
  fail: ["FAIL", "bad"],
  too_few_samples: ["too few samples", "muted"],
  unavailable: ["not measured (no sensor, or no routing)", "muted"],
  not_reached: ["not reached yet", "muted"],
};

export function rolloutsPage(_ctx: Ctx): Page {
  const body = h("div", {}, h("p", { class: "loading" }, "Loading…"));
  const el = h("div", { class: "page" }, h("h1", {}, "Rollouts"), body);
  async function refresh(): Promise<void> {
    const rs = await get<RolloutView[]>("/rollouts");
    body.replaceChildren(
      rs.length === 0
        ? h("p", { class: "empty" }, "No rollout yet. Start one with edgefleet rollout start.")
        : table(
            ["Rollout", "Model", "From → to", "State", "On the new release", "Failing gates", "Started"],
            rs.map((r) => [
              h("a", { href: `#/rollouts/${encodeURIComponent(r.id)}` }, r.id),
              r.model,
              `release ${r.baseline} → ${r.release}`,
              stateBadge(r),
              `${num(r.share_percent, 0)} %`,
              String(r.gate_results.filter((g) => g.verdict === "fail").length),
              when(r.created_at),
            ]),
            { id: "rollouts" },
          ),
    );
  }
  return { el, refresh };
}

export function rolloutPage(ctx: Ctx, id: string): Page {
  const body = h("div", {}, h("p", { class: "loading" }, "Loading…"));
  const el = h("div", { class: "page" }, h("p", {}, h("a", { href: "#/rollouts" }, "← Rollouts")), h("h1", {}, "Rollout ", h("code", {}, id)), body);
  const canAct = ctx.who.role === "operator" || ctx.who.role === "admin";

  async function act(action: string): Promise<void> {
    if ((action === "abort" || action === "promote") && !window.confirm(`${action} rollout ${id}?`)) return;
    try {
      await post(`/rollouts/${encodeURIComponent(id)}/${action}`);
      ctx.flash(`Rollout ${id}: ${action} done.`, "ok");
    } catch (e) {
      ctx.flash(e instanceof ApiFailure ? `${action} refused: ${e.message}` : `${action} failed: ${(e as Error).message}`);
    }
    refreshNow();
  }

  async function refresh(): Promise<void> {
    const [r, audit] = await Promise.all([
      get<RolloutView>(`/rollouts/${encodeURIComponent(id)}`),
      get<AuditEntry[]>(`/audit?target=${encodeURIComponent(id)}&limit=200`),
    ]);
    const s = r.state;
    const wave = s.state === "running" || s.state === "paused" ? s.wave : s.state === "done" ? r.waves.length : -1;
    const actions: [string, boolean][] = [
      ["pause", s.state === "running"],
      ["resume", s.state === "paused"],
      ["promote", s.state === "running" || s.state === "paused"],
      ["abort", s.state === "running" || s.state === "paused"],
    ];
    const reason = "reason" in s ? s.reason : null;
    body.replaceChildren(
      h(
        "div",
        { class: "grid2" },
        card(
          "State",
          h("p", { id: "rollout-state" }, stateBadge(r), ` ${r.model}: release ${r.baseline} → ${r.release}, for devices matching `, h("code", {}, r.selector || "every device")),
          reason ? h("p", { class: "reason", id: "rollout-reason" }, reason) : null,
          h("div", { class: "progress", role: "progressbar", "aria-valuenow": r.share_percent, "aria-valuemin": 0, "aria-valuemax": 100, "aria-label": "Share of selected devices meant to run the new release" }, h("div", { class: "bar", style: `width:${Math.min(100, r.share_percent)}%` })),
          h("p", {}, `${num(r.share_percent, 1)} % of the selected devices are meant to run release ${r.release}. On a failed gate: ${r.on_failure.replace("_", " ")}. Minimum samples per side: ${r.min_samples}.`),
          canAct
            ? h("div", { class: "actions" }, actions.filter(([, ok]) => ok).map(([a]) => h("button", { type: "button", id: `action-${a}`, class: a === "abort" ? "danger" : "", onclick: () => void act(a) }, a[0].toUpperCase() + a.slice(1))))
            : h("p", { class: "muted", id: "viewer-note" }, `Your role (${ctx.who.role}) can watch rollouts; pausing, resuming, aborting and promoting need an operator token.`),
        ),
        card(
          "Waves",
          table(
            ["Wave", "Share of devices", "Cohort", "Bake time", "Status"],
            r.waves.map((w, i) => [
              String(i + 1),
              `${num(w.percent, 0)} %`,
              w.cohort ? String(w.cohort) : "–",
              `${w.bake_secs} s`,
              i < wave ? "done" : i === wave ? (s.state === "paused" ? "paused" : "in progress") : s.state === "running" || s.state === "paused" ? "waiting" : `stopped (${s.state.replace("_", " ")})`,
            ]),
            { id: "waves" },
          ),
        ),
      ),
      card(
        "Gates (per device class, new release against the baseline)",
        h("p", { class: "muted" }, r.evaluated_at ? `Last evaluated ${when(r.evaluated_at)}.` : "Not evaluated yet."),
        r.gate_results.length
          ? table(
              ["Gate", "Device class", "Measured", "Threshold", "Samples (new / baseline)", "Verdict"],
              r.gate_results.map((g) => [
                gateText(g.gate),
                g.class,
                num(g.value, 3),
                `≤ ${num(g.threshold, 3)}`,
                `${g.samples_new.toLocaleString()} / ${g.samples_baseline.toLocaleString()}`,
                badge(...VERDICT[g.verdict]),
              ]),
              { id: "gates" },
            )
          : h("p", { class: "empty" }, `Gates: ${r.gates.map(gateText).join("; ") || "none"}. No results yet.`),
      ),
      ...(r.choose_variant
        ? [card(
            `Variant chosen by measurement (${r.choose_variant.objective}, ${r.choose_variant.min_devices} device(s) per class)`,
            (r.variant_choices ?? []).length
              ? table(
                  ["Device class", "Variant", "Why", "Measured (median over devices)"],
                  (r.variant_choices ?? []).map((c) => [
                    c.class,
                    c.variant ?? (c.decided ? "first fit" : "measuring…"),
                    c.reason,
                    c.measured
                      .map((m) => `${m.variant}: ${m.failed ? `missed golden on ${m.failed} of ${m.devices}` : `${num(m.median_ms, 3)} ms${m.energy_mj === null ? "" : `, ${num(m.energy_mj, 3)} mJ`}`}`)
                      .join("; "),
                  ]),
                  { id: "variant-choices" },
                )
              : h("p", { class: "empty" }, "No device class has reported measurements yet."),
          )]
        : []),
      card(
        "What happened (audit log)",
        audit.length
          ? table(["When", "Action", "By", "Detail"], audit.map((a) => [when(a.at), a.action, a.actor, h("code", { class: "detail" }, JSON.stringify(a.detail))]), { id: "rollout-events" })
          : h("p", { class: "empty" }, "No events."),
      ),
    );
  }
  return { el, refresh };
}
