// The dashboard's speed, in Debian's Chromium: the overview's first contentful paint on
// localhost, how long until its charts are drawn with 24 hours at 1-minute buckets, and the frame
// intervals while the traffic chart is zoomed with the mouse wheel (smoothness).
//
//   node tests/bench.mjs URL USER PASSWORD [RUNS]

import { chromium } from "playwright-core";

const [url, user, password, runsArg] = process.argv.slice(2);
const runs = Number(runsArg ?? 5);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
const pct = (xs, q) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.round((xs.length - 1) * q))];
try {
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  await context.addInitScript(() => localStorage.setItem("tapwatch.range", "1440"));
  const page = await context.newPage();
  await page.goto(url);
  await page.getByLabel("User name").fill(user);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.locator("#chart-traffic [data-points]").waitFor({ timeout: 30_000 });
  const fcp = [];
  const drawn = [];
  let points = 0;
  for (let i = 0; i < runs; i++) {
    await page.reload();
    await page.locator("#chart-traffic [data-points]").waitFor({ timeout: 30_000 });
    const t = await page.evaluate(() => ({
      fcp: performance.getEntriesByName("first-contentful-paint")[0]?.startTime ?? NaN,
      now: performance.now(),
    }));
    fcp.push(t.fcp);
    drawn.push(t.now);
    points = Number(await page.locator("#chart-traffic [data-points]").getAttribute("data-points"));
  }
  // Zoom in and out over the traffic chart while recording frame intervals.
  const box = await page.locator("#chart-traffic canvas").first().boundingBox();
  await page.evaluate(() => {
    window.__frames = [];
    let last = performance.now();
    const tick = (t) => {
      window.__frames.push(t - last);
      last = t;
      if (window.__frames.length < 100000) requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
  });
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  for (let i = 0; i < 60; i++) {
    await page.mouse.wheel(0, i < 30 ? -120 : 120);
    await page.waitForTimeout(33);
  }
  const frames = (await page.evaluate(() => window.__frames)).slice(2);
  const f = (x) => x.toFixed(1).padStart(8);
  console.log(`traffic chart: ${points} points (24 h at 1-minute buckets), ${runs} loads`);
  console.log(`first contentful paint  p50 ${f(pct(fcp, 0.5))} ms  max ${f(Math.max(...fcp))} ms   target 1000 ms`);
  console.log(`charts drawn by         p50 ${f(pct(drawn, 0.5))} ms  max ${f(Math.max(...drawn))} ms`);
  console.log(`frame interval zooming  p50 ${f(pct(frames, 0.5))} ms  p95 ${f(pct(frames, 0.95))} ms  max ${f(Math.max(...frames))} ms (${frames.length} frames; 16.7 ms is 60 fps)`);
} finally {
  await browser.close();
}
