// Times the fleet page in Debian's headless Chromium: from a reload to usable (the overview's numbers and
// the first page of the device table drawn). Run by scripts/bench_dashboard.sh against a seeded server.
import { chromium } from "playwright-core";

const url = process.env.EDGEFLEET_URL;
const token = process.env.EDGEFLEET_VIEWER_TOKEN;
const runs = Number(process.env.RUNS ?? 7);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
const page = await (await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 900 } })).newPage();
page.setDefaultTimeout(60000);
await page.goto(url);
await page.fill("#token", token);
await page.click("#signin button[type=submit]");
await page.waitForSelector("#devices tbody tr:nth-child(50)");
const times = [];
for (let i = 0; i < runs; i++) {
  const t0 = performance.now();
  await page.reload();
  await page.waitForSelector("#fleet-overview .stats");
  await page.waitForSelector("#devices tbody tr:nth-child(50)");
  times.push(performance.now() - t0);
}
const total = await page.locator("#fleet-overview .stat-value").first().innerText();
times.sort((a, b) => a - b);
const api = await page.evaluate(() =>
  performance
    .getEntriesByType("resource")
    .filter((e) => e.name.includes("/api/v1/"))
    .map((e) => `${new URL(e.name).pathname} ${e.duration.toFixed(0)} ms`),
);
console.log(`bench: fleet page with ${total} devices: reload to usable, ${runs} runs: median ${times[Math.floor(runs / 2)].toFixed(0)} ms, fastest ${times[0].toFixed(0)} ms, slowest ${times[runs - 1].toFixed(0)} ms`);
console.log(`bench: the last load's API calls: ${api.join(", ")}`);
await browser.close();
