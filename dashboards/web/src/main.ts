// The edgefleet dashboard: sign in with an API token, then Fleet, Device, Releases, Rollouts and Telemetry
// pages that refresh themselves. Routes live in the URL fragment (#/fleet, #/devices/ID, ...); the token never
// does: it stays in this tab's session storage and goes out only in the Authorization header.
import "./style.css";
import { ApiFailure, Unauthorized, Unreachable, WhoAmI, call, setToken, token } from "./api";
import { h } from "./dom";
import { devicePage } from "./pages/device";
import { fleetPage } from "./pages/fleet";
import { releasesPage } from "./pages/releases";
import { rolloutPage, rolloutsPage } from "./pages/rollouts";
import { telemetryPage } from "./pages/telemetry";

/// How often the open page refreshes itself, in milliseconds.
const REFRESH_MS = 5000;

export interface Ctx {
  who: WhoAmI;
  /// Navigate within the dashboard.
  go: (route: string) => void;
  /// Report a failed action to the person (kept on screen until the next one).
  flash: (message: string, kind?: "ok" | "error") => void;
}

/// A mounted page: fills its element once and refreshes it on request.
export interface Page {
  el: HTMLElement;
  refresh: () => Promise<void>;
}

const app = document.getElementById("app")!;
let who: WhoAmI | null = null;
let page: Page | null = null;
let timer: number | undefined;
let lastOk: Date | null = null;

const banner = h("div", { class: "banner", role: "status", "aria-live": "polite", hidden: true });
const flashBox = h("div", { class: "flash", role: "alert", hidden: true });
const main = h("main", { id: "main" });

function showBanner(text: string | null): void {
  banner.hidden = text === null;
  banner.textContent = text ?? "";
}

function flash(message: string, kind: "ok" | "error" = "error"): void {
  flashBox.hidden = false;
  flashBox.className = `flash ${kind}`;
  flashBox.textContent = message;
}

function signIn(message?: string): void {
  who = null;
  page = null;
  window.clearTimeout(timer);
  setToken(null);
  const input = h("input", {
    type: "password",
    id: "token",
    name: "token",
    autocomplete: "off",
    placeholder: "eft_…",
    required: true,
    "aria-describedby": "signin-help",
  }) as HTMLInputElement;
  const error = h("p", { class: "error", id: "signin-error", role: "alert" }, message ?? "");
  const form = h(
    "form",
    { class: "signin", id: "signin" },
    h("h1", {}, "edgefleet"),
    h("p", { id: "signin-help" }, "Sign in with an API token (viewer, publisher, operator or admin). Create one with ", h("code", {}, "edgefleet token create"), "."),
    h("label", { for: "token" }, "API token"),
    input,
    h("button", { type: "submit" }, "Sign in"),
    error,
  ) as HTMLFormElement;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const t = input.value.trim();
    try {
      const me = await call<WhoAmI>("GET", "/whoami", t);
      setToken(t);
      start(me);
    } catch (e) {
      error.textContent =
        e instanceof Unauthorized
          ? `This token was refused: ${e.message}. It may be mistyped, revoked or expired.`
          : e instanceof Unreachable
            ? "The control plane cannot be reached. Check the address and try again."
            : `Sign-in failed: ${(e as Error).message}`;
    }
  });
  app.replaceChildren(form);
  input.focus();
}

const NAV: [string, string][] = [
  ["#/fleet", "Fleet"],
  ["#/rollouts", "Rollouts"],
  ["#/releases", "Releases"],
  ["#/telemetry", "Latency & energy"],
];

function shell(me: WhoAmI): void {
  const nav = h(
    "nav",
    { "aria-label": "Pages" },
    NAV.map(([href, label]) => h("a", { href, "data-nav": href }, label)),
  );
  const user = h(
    "div",
    { class: "user" },
    h("span", { id: "whoami", title: "The signed-in token" }, `${me.name} · ${me.role}`),
    h("button", { type: "button", class: "link", id: "signout", onclick: () => signIn("Signed out.") }, "Sign out"),
  );
  app.replaceChildren(h("header", {}, h("a", { class: "brand", href: "#/fleet" }, "edgefleet"), nav, user), banner, flashBox, main);
}

function route(): void {
  if (!who) return;
  const hash = location.hash || "#/fleet";
  for (const a of document.querySelectorAll<HTMLAnchorElement>("nav a")) {
    a.classList.toggle("active", hash.startsWith(a.dataset.nav ?? "#none"));
  }
  const parts = hash.replace(/^#\//, "").split("/").map(decodeURIComponent);
  const ctx: Ctx = { who, go: (r) => (location.hash = r), flash };
  flashBox.hidden = true;
  switch (parts[0]) {
    case "devices":
      page = devicePage(ctx, parts[1] ?? "");
      break;
    case "rollouts":
      page = parts[1] ? rolloutPage(ctx, parts[1]) : rolloutsPage(ctx);
      break;
    case "releases":
      page = releasesPage(ctx);
      break;
    case "telemetry":
      page = telemetryPage(ctx, parts[1]);
      break;
    default:
      page = fleetPage(ctx);
  }
  main.replaceChildren(page.el);
  void tick();
}

/// Refreshes the open page now and schedules the next refresh; tells the person when the server is away.
async function tick(): Promise<void> {
  window.clearTimeout(timer);
  const current = page;
  if (!current) return;
  try {
    await current.refresh();
    lastOk = new Date();
    showBanner(null);
  } catch (e) {
    if (e instanceof Unauthorized) {
      signIn(`Your token is no longer accepted (${e.message}): it was revoked or has expired. Sign in again.`);
      return;
    }
    if (e instanceof Unreachable) {
      const since = lastOk ? ` Last update ${lastOk.toLocaleTimeString()}.` : "";
      showBanner(`The control plane is not answering; retrying every ${REFRESH_MS / 1000} s.${since}`);
    } else if (e instanceof ApiFailure) {
      showBanner(`The server answered ${e.status}: ${e.message}`);
    } else {
      showBanner(`Something went wrong: ${(e as Error).message}`);
    }
  }
  if (page === current) timer = window.setTimeout(tick, REFRESH_MS);
}

export function refreshNow(): void {
  void tick();
}

function start(me: WhoAmI): void {
  who = me;
  shell(me);
  route();
}

window.addEventListener("hashchange", route);
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") void tick();
});

(async () => {
  const t = token();
  if (!t) return signIn();
  try {
    start(await call<WhoAmI>("GET", "/whoami", t));
  } catch (e) {
    signIn(e instanceof Unauthorized ? `Your token is no longer accepted (${e.message}). Sign in again.` : undefined);
  }
})();
