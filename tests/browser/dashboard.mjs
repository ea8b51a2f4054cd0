// Drives the dashboard in Chromium against a running `hookrelay all` (started by
// crates/hookrelay/tests/dashboard.rs, which passes everything in the environment):
//   HOOKRELAY_BASE      http://127.0.0.1:<port>
//   HOOKRELAY_KEY       a key of tenant `acme` with every scope
//   HOOKRELAY_ADMIN     the admin token
//   RECEIVER_FAIL_URL   a loopback receiver URL that answers 500
//   RECEIVER_OK_URL     a loopback receiver URL that answers 200
//   ARTIFACTS           where screenshots go
// Exits non-zero, with the reason, on the first expectation that does not hold.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const base = env("HOOKRELAY_BASE");
const key = env("HOOKRELAY_KEY");
const failUrl = env("RECEIVER_FAIL_URL");
const okUrl = env("RECEIVER_OK_URL");
const artifacts = env("ARTIFACTS");
mkdirSync(artifacts, { recursive: true });

const step = (what) => console.log(`- ${what}`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run"],
});
const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
page.setDefaultTimeout(20_000);
const offOrigin = [];
page.on("request", (r) => { if (!r.url().startsWith(base)) offOrigin.push(r.url()); });
const pageErrors = [];
page.on("pageerror", (e) => pageErrors.push(e.message));
page.on("console", (m) => { if (m.type() === "error" && /Content Security Policy/.test(m.text())) pageErrors.push(m.text()); });

try {
  step("open /ui and enter the key");
  await page.goto(`${base}/ui`);
  await page.keyboard.press("Tab");
  await page.keyboard.press("Tab");
  const focused = await page.evaluate(() => document.activeElement && document.activeElement.id);
  if (focused !== "token") throw new Error(`Tab reached #${focused}, not the key field, after the skip link`);
  await page.getByLabel("API key or admin token").fill(key);
  await page.getByRole("button", { name: "Connect" }).click();
  await page.locator("#main").waitFor({ state: "visible" });
  await page.getByText("Connected").waitFor();

  step("a filter the API refuses shows the API's 422 message");
  await page.getByRole("button", { name: "New endpoint" }).click();
  await page.getByLabel("URL").fill(failUrl);
  await page.getByLabel(/Event patterns/).fill("orders/*");
  await page.getByLabel(/Filter/).fill('{"data.items": {"$near": 3}}');
  await page.getByRole("button", { name: "Save endpoint" }).click();
  await page.locator("#endpoint-form-error").filter({ hasText: "422" }).waitFor();
  console.log("  shown:", await page.locator("#endpoint-form-error").textContent());

  step("create an endpoint at a receiver that fails");
  await page.getByLabel(/Filter/).fill("");
  await page.getByRole("button", { name: "Save endpoint" }).click();
  await page.locator("#endpoint-detail-h").filter({ hasText: failUrl }).waitFor();
  await page.locator("#ep-secret-value code").filter({ hasText: "whsec_" }).waitFor();

  step("send a test ping (shows the result or the API's error)");
  await page.getByRole("button", { name: "Send test ping" }).click();
  await page.locator("#endpoint-detail-msg").filter({ hasText: /Test ping sent|failed:/ }).waitFor();
  console.log("  ping:", await page.locator("#endpoint-detail-msg").textContent());

  step("create an endpoint at a receiver that answers 200");
  await page.getByRole("button", { name: "New endpoint" }).click();
  await page.getByLabel("URL").fill(okUrl);
  await page.getByLabel(/Event patterns/).fill("orders/*\nreturns/updated");
  await page.getByLabel(/Custom headers/).fill("X-Team: payments");
  await page.getByRole("button", { name: "Save endpoint" }).click();
  await page.locator("#endpoint-detail-h").filter({ hasText: okUrl }).waitFor();
  await page.locator("#endpoint-stats").getByText("healthy").waitFor();
  await page.locator("#endpoint-rows tr").filter({ hasText: okUrl }).locator(".badge", { hasText: "healthy" }).waitFor();

  step("edit, disable, enable, reveal the secret");
  await page.getByRole("button", { name: "Edit" }).click();
  await page.getByLabel(/Rate limit/).fill("10");
  await page.getByLabel(/Max in flight/).fill("20");
  await page.getByRole("button", { name: "Save endpoint" }).click();
  await page.locator("#endpoint-facts").getByText("10 per second").waitFor();
  await page.locator("#endpoint-facts").getByText("20", { exact: true }).waitFor();
  await page.locator("#endpoint-stats").getByText("In flight / limit").waitFor();
  await page.getByRole("button", { name: "Disable" }).click();
  await page.locator("#endpoint-stats .badge", { hasText: "disabled" }).waitFor();
  await page.getByRole("button", { name: "Enable" }).click();
  await page.locator("#endpoint-stats .badge", { hasText: "healthy" }).waitFor();
  await page.getByRole("button", { name: "Reveal secret" }).click();
  await page.locator("#endpoint-detail-msg").filter({ hasText: "Secret shown" }).waitFor();
  await page.locator("#ep-secret-value code").filter({ hasText: "whsec_" }).waitFor();
  await page.screenshot({ path: join(artifacts, "endpoints.png"), fullPage: true });

  step("sign with Ed25519: the public key is shown, never a private key; then back to HMAC");
  await page.getByRole("button", { name: "Edit" }).click();
  await page.getByLabel(/Signature/).selectOption("standard-ed25519");
  await page.getByRole("button", { name: "Save endpoint" }).click();
  await page.locator("#endpoint-facts").getByText("standard-ed25519").waitFor();
  await page.getByRole("button", { name: "Reveal secret" }).click();
  await page.locator("#endpoint-detail-msg").filter({ hasText: "Public key shown" }).waitFor();
  await page.locator("#ep-secret-value code").filter({ hasText: "whpk_" }).waitFor();
  if ((await page.content()).includes("whsk_")) throw new Error("the page shows an Ed25519 private key");
  await page.getByRole("button", { name: "Edit" }).click();
  await page.getByLabel(/Signature/).selectOption("standard-hmac");
  await page.getByRole("button", { name: "Save endpoint" }).click();
  await page.locator("#endpoint-facts").getByText("standard-hmac").waitFor();

  step("an event sent over REST appears in the log without a reload");
  await page.evaluate(() => { window.__notReloaded = true; });
  const eventId = `evt_browser_${Date.now()}`;
  const sent = await fetch(`${base}/v1/events`, {
    method: "POST",
    headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
    body: JSON.stringify({ event: "orders/created", event_id: eventId,
      data: { order_id: "ord_9x8y7z", items: 3, merchant: "Acme Corp" } }),
  });
  if (sent.status !== 202) throw new Error(`POST /v1/events answered ${sent.status}: ${await sent.text()}`);
  const failRow = page.locator("#log-rows tr").filter({ hasText: eventId }).filter({ hasText: failUrl });
  const okRow = page.locator("#log-rows tr").filter({ hasText: eventId }).filter({ hasText: okUrl });
  await okRow.waitFor();
  await failRow.waitFor();
  await okRow.locator(".badge", { hasText: "delivered" }).waitFor();
  await failRow.locator(".badge", { hasText: "failed" }).waitFor();
  if (!(await page.evaluate(() => window.__notReloaded === true))) throw new Error("the page reloaded");
  await page.locator("#log-live").filter({ hasText: "new deliver" }).waitFor();

  step("the inspector shows the payload and every attempt");
  await failRow.getByRole("button", { name: /Inspect/ }).click();
  await page.locator("#payload").filter({ hasText: eventId }).waitFor();
  await page.locator("#payload").filter({ hasText: '"merchant": "Acme Corp"' }).waitFor();
  const attempts = page.locator("#attempts .attempt");
  await attempts.first().waitFor();
  const before = await attempts.count();
  const firstAttempt = attempts.first();
  await firstAttempt.getByText("500").first().waitFor();
  await firstAttempt.getByText("receiver is down").waitFor();
  await firstAttempt.locator("summary").click();
  await firstAttempt.getByText("webhook-signature").waitFor();
  await firstAttempt.getByText(/^v1,/).waitFor();
  console.log(`  ${before} attempts before the retry`);

  step("Retry makes a new attempt, shown without a reload");
  await page.getByRole("button", { name: "Retry now" }).click();
  await page.locator("#inspector-msg").filter({ hasText: "Retry queued" }).waitFor();
  await page.locator(`#attempts .attempt[data-attempt="${before + 1}"]`).waitFor();
  await page.locator(`#attempts .attempt[data-attempt="${before + 1}"]`).getByText("(manual retry)").waitFor();
  await page.locator("#inspector").screenshot({ path: join(artifacts, "inspector.png") });

  step("the pipeline counts the event");
  await page.waitForFunction(() => Number(document.querySelector('[data-stage="ingested"]').textContent) >= 1);
  await page.waitForFunction(() => Number(document.querySelector('[data-stage="delivered"]').textContent) >= 1);

  step("recover failed since… answers with a count");
  await page.locator("#endpoint-rows tr").filter({ hasText: failUrl }).getByRole("button", { name: "Open" }).click();
  await page.locator("#endpoint-detail-h").filter({ hasText: failUrl }).waitFor();
  await page.getByLabel("Recover failed deliveries since").fill("2020-01-01T00:00");
  await page.getByRole("button", { name: "Recover failed since…" }).click();
  await page.locator("#endpoint-detail-msg").filter({ hasText: /requeued|failed:/ }).waitFor();
  console.log("  recover:", await page.locator("#endpoint-detail-msg").textContent());

  step("the admin token works with a tenant id, and is refused without one");
  const admin = await browser.newPage();
  admin.setDefaultTimeout(20_000);
  await admin.goto(`${base}/`);
  await admin.getByLabel("API key or admin token").fill(env("HOOKRELAY_ADMIN"));
  await admin.getByRole("button", { name: "Connect" }).click();
  await admin.locator("#status").filter({ hasText: "tenant_required" }).waitFor();
  await admin.getByLabel(/Tenant id/).fill("acme");
  await admin.getByRole("button", { name: "Connect" }).click();
  await admin.getByText("Connected as tenant acme").waitFor();
  await admin.locator("#endpoint-rows tr").filter({ hasText: okUrl }).waitFor();
  await admin.locator("#log-rows tr").filter({ hasText: eventId }).first().waitFor();
  step("the log pages with the cursor (\"Older deliveries\")");
  await admin.goto(`${base}/ui?limit=1`);
  await admin.getByText("Connected as tenant acme").waitFor();
  const logRows = admin.locator("#log-rows tr");
  await logRows.first().waitFor();
  if ((await logRows.count()) !== 1) throw new Error(`?limit=1 showed ${await logRows.count()} rows`);
  await admin.getByRole("button", { name: "Older deliveries" }).click();
  await admin.waitForFunction(() => document.querySelectorAll("#log-rows tr").length === 2);
  const ids = await logRows.evaluateAll((rows) => rows.map((r) => r.dataset.delivery));
  if (!(ids[0] > ids[1])) throw new Error(`the log is not newest first: ${ids}`);
  step("a reload keeps the key for the tab's session");
  await admin.reload();
  await admin.getByText("Connected as tenant acme").waitFor();
  await admin.close();

  await page.screenshot({ path: join(artifacts, "dashboard-full.png"), fullPage: true });
  // The README's picture (docs/dashboard.png): the live log above the inspector.
  await page.evaluate(() => document.getElementById("deliveries").scrollIntoView());
  await page.screenshot({ path: join(artifacts, "dashboard.png") });
  if (pageErrors.length) throw new Error(`the page raised errors: ${pageErrors.join("; ")}`);
  if (offOrigin.length) throw new Error(`the page asked another origin: ${offOrigin.join(", ")}`);
  console.log("dashboard browser test passed");
} catch (e) {
  await page.screenshot({ path: join(artifacts, "failure.png"), fullPage: true }).catch(() => {});
  console.error("FAILED:", e.message);
  process.exitCode = 1;
} finally {
  await browser.close();
}
