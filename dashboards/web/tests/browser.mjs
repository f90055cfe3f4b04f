// Browser tests of the built-in dashboard in Debian's headless Chromium, driven by playwright-core. Run by the
// e2e test `e2e/tests/dashboard.rs`, which starts the real server and daemons and answers this script's
// requests: a line `need: WHAT` on stdout is answered by a line on stdin once WHAT is done (`done` + JSON).
//
// Environment: EDGEFLEET_URL, EDGEFLEET_VIEWER_TOKEN, EDGEFLEET_OPERATOR_TOKEN, EDGEFLEET_EXPIRING_TOKEN (one
// that lives a second), EDGEFLEET_SCREENSHOTS (folder),
// EDGEFLEET_UI_TIMEOUT_MS (each wait; default 60000), CHROMIUM (default /usr/bin/chromium).
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const url = process.env.EDGEFLEET_URL;
const viewer = process.env.EDGEFLEET_VIEWER_TOKEN;
const operator = process.env.EDGEFLEET_OPERATOR_TOKEN;
const expiring = process.env.EDGEFLEET_EXPIRING_TOKEN;
const shots = process.env.EDGEFLEET_SCREENSHOTS ?? "screenshots";
const timeout = Number(process.env.EDGEFLEET_UI_TIMEOUT_MS ?? 60000);
if (!url || !viewer || !operator) throw new Error("EDGEFLEET_URL, EDGEFLEET_VIEWER_TOKEN and EDGEFLEET_OPERATOR_TOKEN are required");
mkdirSync(shots, { recursive: true });

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function need(what) {
  console.log(`need: ${what}`);
  const { value, done } = await lines.next();
  if (done || !value.startsWith("done")) throw new Error(`the test runner could not do "${what}": ${value}`);
  const rest = value.slice(4).trim();
  return rest ? JSON.parse(rest) : {};
}
function check(ok, message) {
  if (!ok) throw new Error(message);
}
let step = "start";
const say = (s) => {
  step = s;
  console.log(`step: ${s}`);
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
// The server's certificate is its own (self-signed, pinned by fingerprint in the CLI).
const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 900 } });
const page = await context.newPage();
page.setDefaultTimeout(timeout);
const scripts = [];
page.on("dialog", (d) => {
  scripts.push(d.message());
  void d.accept();
});
const shot = (name) => page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
const text = (sel) => page.locator(sel).innerText();
const signIn = async (token) => {
  await page.goto(url);
  await page.fill("#token", token);
  await page.click("#signin button[type=submit]");
};
const waitText = (sel, pattern) =>
  page.waitForFunction(
    ([s, p]) => new RegExp(p).test(document.querySelector(s)?.textContent ?? ""),
    [sel, pattern.source],
    { timeout },
  );

try {
  say("a bad token is refused with a clear message");
  await signIn("eft_0000not-a-real-token");
  await waitText("#signin-error", /refused.*unknown or revoked/);
  check(!(await page.url()).includes("eft_"), "the token must never be put in the URL");
  await shot("01-signin-refused");

  say("sign in as a viewer: an empty fleet says so");
  await signIn(viewer);
  await page.waitForSelector("#whoami");
  check((await text("#whoami")).includes("sre<b>on-call</b>"), "the token's name is shown as text");
  check((await page.locator("header b").count()) === 0, "no element was made from the token's name");
  await waitText("#fleet-overview", /No devices yet/);
  check(!page.url().includes(viewer), "the token is not in the URL");
  await shot("02-fleet-empty");

  const fleet = await need("fleet");

  say("the device that checked in appears in the fleet table");
  await waitText("#devices", new RegExp(fleet.device));
  await waitText("#by-release", /magika.*release \d/);
  await shot("03-fleet");

  say("search and filter narrow the table");
  await page.fill("#device-search", "no-such-device");
  await page.click(".filters button[type=submit]");
  await waitText("#device-table", /No device matches/);
  await page.fill("#device-search", fleet.device.slice(0, 4));
  await page.fill("#device-selector", "site=lab");
  await page.click(".filters button[type=submit]");
  await waitText("#devices", new RegExp(fleet.device));

  say("the device page: hardware, slots, events, and no sensor shown as such");
  await page.click(`#devices a[href="#/devices/${fleet.device}"]`);
  await waitText("#power-sensor", /^no sensor$/);
  await waitText("#slots", /serving|committed|baking/);
  await waitText("#events", /swapped/);
  await waitText("#release-history", /rolled back|swapped/);
  await page.waitForSelector("figure.chart .uplot");
  const powerChart = await page.locator("figure.chart", { hasText: "Power while serving" }).innerText();
  check(/No sensor/.test(powerChart) && !/\b0(\.0+)? ?W\b/.test(powerChart), `a device without a sensor shows "no sensor", never 0 W: ${powerChart}`);
  await shot("04-device");

  say("releases: variants with precision and size, signers, and HTML in a description shown as text");
  await page.goto(`${url}/#/releases`);
  await page.waitForSelector(`[data-release="magika/3"]`);
  const described = await page.locator(`[data-release="magika/3"] .description`).innerText();
  check(described.includes("<img src=x onerror="), `the description's HTML shows as text: ${described}`);
  check((await page.locator(`[data-release="magika/3"] img`).count()) === 0, "no element was made from the description");
  check(await page.evaluate(() => window.__owned === undefined), "the description's script never ran");
  await waitText(`[data-release="magika/1"]`, /fp32/);
  await waitText(`[data-release="magika/1"]`, /KiB|MiB/);
  await waitText(`[data-release="magika/1"]`, /Signed by release key/);
  await shot("05-releases");

  say("a rollout whose gate failed shows the failing gate and its numbers");
  await page.goto(`${url}/#/rollouts`);
  await waitText("#rollouts", new RegExp(fleet.failed));
  await shot("06-rollouts");
  await page.goto(`${url}/#/rollouts/${fleet.failed}`);
  await waitText("#rollout-state", /rolled back/);
  const failing = page.locator("#gates tr", { hasText: "FAIL" });
  await failing.first().waitFor();
  const row = await failing.first().innerText();
  check(/p95 latency ratio/.test(row) && row.includes(fleet.value) && row.includes("≤ 1.500"), `the failed gate's value (${fleet.value}) and threshold: ${row}`);
  await waitText("#rollout-events", /rollout\.rolled_back/);
  await shot("07-rollout-failed-gate");

  say("a viewer sees no pause button");
  await page.goto(`${url}/#/rollouts/${fleet.running}`);
  await waitText("#rollout-state", /running/);
  await page.waitForSelector("#viewer-note");
  check((await page.locator("#action-pause").count()) === 0, "a viewer must not be offered pause");

  say("latency and energy charts");
  await page.goto(`${url}/#/telemetry/magika`);
  await page.waitForSelector(".charts figure.chart .uplot");
  await waitText(".charts", /p95 latency/);
  await waitText("#no-sensor", /No sensor.*release 1 on x86-server/);
  await shot("08-latency-energy");

  say("an operator's pause takes effect on the server");
  await page.click("#signout");
  await signIn(operator);
  await page.waitForSelector("#whoami");
  await page.goto(`${url}/#/rollouts/${fleet.running}`);
  await page.click("#action-pause");
  await waitText("#rollout-state", /paused/);
  await need(`paused ${fleet.running}`);
  await page.waitForSelector("#action-resume");
  await shot("09-rollout-paused-by-operator");

  say("the server goes away: the page says so, and recovers when it is back");
  await need("stop-server");
  await waitText(".banner", /not answering/);
  await shot("10-server-away");
  await need("start-server");
  await page.waitForSelector(".banner", { state: "hidden" });

  say("a revoked token sends the person back to sign in, with the reason");
  await need("revoke-operator");
  await waitText("#signin-error", /no longer accepted/);
  await shot("11-token-revoked");

  say("an expired token is refused, saying so");
  await signIn(expiring);
  await waitText("#signin-error", /expired at/);

  say("a narrow screen");
  await page.setViewportSize({ width: 390, height: 844 });
  await signIn(viewer);
  await waitText("#devices", new RegExp(fleet.device));
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  check(overflow <= 1, `the page fits a 390 px screen (overflows by ${overflow} px)`);
  await shot("12-fleet-narrow");

  check(scripts.length === 0, `no dialog may open by itself: ${scripts.join("; ")}`);
  console.log("browser: all passed");
  await browser.close();
  process.exit(0);
} catch (e) {
  console.log(`browser: FAILED at "${step}": ${e.message ?? e}`);
  await shot("failure").catch(() => {});
  await browser.close();
  process.exit(1);
}
