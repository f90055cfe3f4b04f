// Releases: every model and its releases, with each variant's precision, format and sizes, and the release
// keys that signed it.
import { ModelSummary, ReleaseSummary, get } from "../api";
import { bytes, card, h, table, when } from "../dom";
import type { Ctx, Page } from "../main";

export function releasesPage(_ctx: Ctx): Page {
  const body = h("div", {}, h("p", { class: "loading" }, "Loading…"));
  const el = h("div", { class: "page" }, h("h1", {}, "Releases"), body);

  async function refresh(): Promise<void> {
    const models = await get<ModelSummary[]>("/models");
    const releases = await Promise.all(models.map((m) => get<ReleaseSummary[]>(`/models/${encodeURIComponent(m.model)}/releases`)));
    body.replaceChildren(
      ...(models.length === 0 ? [h("p", { class: "empty" }, "No release published yet. Publish one with edgefleet push.")] : []),
      ...models.map((m, i) =>
        card(
          `${m.model} — ${m.releases} release${m.releases === 1 ? "" : "s"}, latest ${m.latest_version}`,
          ...releases[i].map((r) =>
            h(
              "article",
              { class: "release", "data-release": `${r.model}/${r.version}` },
              h("h3", {}, `Release ${r.version}`),
              r.description ? h("p", { class: "description" }, r.description) : null,
              h(
                "p",
                { class: "meta" },
                `Published ${when(r.published_at)} by ${r.published_by}. Security floor: release ${r.security_floor}. Signed by release key${r.signed_by.length === 1 ? "" : "s"}: `,
                h("code", {}, r.signed_by.join(", ") || "none"),
              ),
              table(
                ["Variant", "Precision", "Format", "Model size", "Download (zstd)", "Execution providers", "Architectures", "SoC"],
                r.variant_details.map((v) => [
                  v.id,
                  v.precision,
                  v.format,
                  bytes(v.size_bytes),
                  bytes(v.download_bytes),
                  v.execution_providers.join(", ") || "any",
                  v.arch.join(", ") || "any",
                  v.soc.join(", ") || "any",
                ]),
              ),
            ),
          ),
        ),
      ),
    );
  }
  return { el, refresh };
}
