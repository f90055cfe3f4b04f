// DOM building without innerHTML: every piece of text from the server goes through textContent, so a name
// with HTML in it shows as text and never runs.

type Child = Node | string | number | null | undefined | false;
type Attrs = Record<string, string | number | boolean | EventListener | undefined>;

export function h(tag: string, attrs: Attrs = {}, ...children: (Child | Child[])[]): HTMLElement {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === false) continue;
    if (typeof v === "function") el.addEventListener(k.replace(/^on/, ""), v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/// A table with a header row; `rows` are cells. Wrapped so that wide tables scroll on narrow screens.
export function table(headers: string[], rows: Child[][], attrs: Attrs = {}): HTMLElement {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      attrs,
      h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c))))),
    ),
  );
}

export function card(title: string, ...body: Child[]): HTMLElement {
  return h("section", { class: "card" }, h("h2", {}, title), ...body);
}

export function stat(label: string, value: string | number, hint?: string, kind = ""): HTMLElement {
  return h(
    "div",
    { class: `stat ${kind}`, title: hint },
    h("div", { class: "stat-value" }, String(value)),
    h("div", { class: "stat-label" }, label),
  );
}

export function when(iso: string | null | undefined): string {
  if (!iso) return "never";
  const t = new Date(iso);
  const secs = Math.round((Date.now() - t.getTime()) / 1000);
  const ago =
    secs < 60 ? `${Math.max(secs, 0)} s ago` : secs < 3600 ? `${Math.round(secs / 60)} min ago` : secs < 86400 ? `${Math.round(secs / 3600)} h ago` : `${Math.round(secs / 86400)} d ago`;
  return `${t.toLocaleString()} (${ago})`;
}

export function bytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function num(n: number | null | undefined, digits = 1, unit = ""): string {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  return `${n.toFixed(digits)}${unit ? " " + unit : ""}`;
}

export function badge(text: string, kind: string): HTMLElement {
  return h("span", { class: `badge ${kind}` }, text);
}
