// Fleet: the fleet in numbers (by device class and running release, online, failing) and a searchable,
// filterable device table, paged by cursor so it stays fast at a million devices.
import { DevicePage, FleetOverview, get } from "../api";
import { badge, card, h, stat, table, when } from "../dom";
import type { Ctx, Page } from "../main";

const PAGE_SIZE = 50;

export function fleetPage(_ctx: Ctx): Page {
  // The filter and the page cursor survive refreshes; only the numbers and rows are redrawn.
  const filter = { q: "", selector: "", cls: "" };
  const cursors: (string | null)[] = [null]; // cursors[i] starts page i
  let pageNo = 0;
  let classes: string[] = [];

  const overview = h("div", { id: "fleet-overview" }, h("p", { class: "loading" }, "Loading the fleet…"));
  const rows = h("div", { id: "device-table" });
  const pager = h("div", { class: "pager" });
  const q = h("input", { type: "search", id: "device-search", placeholder: "device id starts with…", "aria-label": "Search by device id" }) as HTMLInputElement;
  const sel = h("input", { type: "text", id: "device-selector", placeholder: "labels, e.g. site=berlin,canary=true", "aria-label": "Label selector" }) as HTMLInputElement;
  const cls = h("select", { id: "device-class", "aria-label": "Device class" }, h("option", { value: "" }, "every class")) as HTMLSelectElement;
  const formError = h("p", { class: "error", role: "alert" });
  const form = h("form", { class: "filters", role: "search" }, q, sel, cls, h("button", { type: "submit" }, "Filter"), formError) as HTMLFormElement;
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    Object.assign(filter, { q: q.value.trim(), selector: sel.value.trim(), cls: cls.value });
    cursors.splice(1);
    pageNo = 0;
    void loadDevices().catch((e) => (formError.textContent = (e as Error).message));
  });
  cls.addEventListener("change", () => form.requestSubmit());

  const el = h("div", { class: "page" }, h("h1", {}, "Fleet"), overview, card("Devices", form, rows, pager));

  async function loadDevices(): Promise<void> {
    const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (filter.q) params.set("q", filter.q);
    if (filter.selector) params.set("selector", filter.selector);
    if (filter.cls) params.set("class", filter.cls);
    const after = cursors[pageNo];
    if (after) params.set("after", after);
    const p = await get<DevicePage>(`/devices?${params}`);
    formError.textContent = "";
    cursors[pageNo + 1] = p.next;
    rows.replaceChildren(
      p.devices.length === 0
        ? h("p", { class: "empty" }, pageNo === 0 ? "No device matches. Devices appear here once they enroll." : "No more devices.")
        : table(
            ["Device", "Class", "Status", "Running", "Last seen", "Labels"],
            p.devices.map((d) => [
              h("a", { href: `#/devices/${encodeURIComponent(d.id)}` }, d.id),
              d.device_class,
              d.revoked ? badge("revoked", "bad") : d.last_error ? badge("failing", "bad") : d.online ? badge("online", "good") : badge(d.last_seen ? "offline" : "never seen", "muted"),
              d.running.length ? d.running.map((r) => `${r.model} r${r.release}`).join(", ") : "nothing yet",
              when(d.last_seen),
              Object.entries(d.labels).map(([k, v]) => `${k}=${v}`).join(", "),
            ]),
            { id: "devices", "aria-label": "Devices" },
          ),
    );
    pager.replaceChildren(
      h("button", { type: "button", disabled: pageNo === 0, onclick: () => { pageNo--; void loadDevices(); } }, "← Previous"),
      h("span", {}, `Page ${pageNo + 1}`),
      h("button", { type: "button", disabled: !p.next, onclick: () => { pageNo++; void loadDevices(); } }, "Next →"),
    );
  }

  async function refresh(): Promise<void> {
    const [f] = await Promise.all([get<FleetOverview>("/fleet"), loadDevices()]);
    const names = f.by_class.map((c) => c.device_class);
    if (names.join() !== classes.join()) {
      classes = names;
      cls.replaceChildren(h("option", { value: "" }, "every class"), ...names.map((n) => h("option", { value: n, selected: n === filter.cls }, n)));
    }
    const pct = (n: number) => (f.devices ? `${Math.round((100 * n) / f.devices)} %` : "–");
    overview.replaceChildren(
      h(
        "div",
        { class: "stats" },
        stat("devices", f.devices.toLocaleString(), "enrolled, not revoked"),
        stat(`online (${pct(f.online)})`, f.online.toLocaleString(), `seen within the last ${f.online_window_secs} s`, "good"),
        stat("offline", f.offline.toLocaleString(), `not seen within ${f.online_window_secs} s`),
        stat("never seen", f.never_seen.toLocaleString(), "enrolled, never checked in"),
        stat("failing", f.failing.toLocaleString(), "last report carried an error", f.failing ? "bad" : ""),
        stat("revoked", f.revoked.toLocaleString(), "certificates refused"),
      ),
      h(
        "div",
        { class: "grid2" },
        card(
          "By device class",
          f.by_class.length === 0
            ? h("p", { class: "empty" }, "No devices yet.")
            : table(
                ["Device class", "Devices", "Online", "Never seen", "Failing"],
                f.by_class.map((c) => [
                  h("a", { href: "#/fleet", onclick: (ev: Event) => { ev.preventDefault(); cls.value = c.device_class; form.requestSubmit(); } }, c.device_class),
                  c.devices.toLocaleString(),
                  c.online.toLocaleString(),
                  c.never_seen.toLocaleString(),
                  c.failing ? badge(c.failing.toLocaleString(), "bad") : "0",
                ]),
                { id: "by-class" },
              ),
        ),
        card(
          "By running release",
          f.by_release.length === 0
            ? h("p", { class: "empty" }, "No device serves a model yet.")
            : table(
                ["Model", "Release", "Devices"],
                f.by_release.map((r) => [r.model, `release ${r.release}`, r.devices.toLocaleString()]),
                { id: "by-release" },
              ),
        ),
      ),
    );
  }

  return { el, refresh };
}
