// Drives the `--demo` page in headless Chromium (tests/browser.rs starts the server):
// two pages join one room with tokens in the bearer.<token> subprotocol and see each
// other's messages; a POST /publish/<room> appears on both; a token without the room is
// refused; a screenshot goes to SCREENSHOT. Prints one JSON line; exit 1 on failure.
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} not set`);
  return v;
};
const [base, admin, key, room] = [env("BASE"), env("ADMIN"), env("PUBLISH_KEY"), env("ROOM")];
const [tokA, tokB, tokOther] = [env("TOKEN_A"), env("TOKEN_B"), env("TOKEN_OTHER")];
const shot = env("SCREENSHOT");
// Set for the compressed run: the extension the page must show as negotiated.
const wantExt = process.env.EXPECT_EXTENSION || "";
const steps = [];
const dataDir = mkdtempSync(join(tmpdir(), "wsloop-chromium-"));
let ctx;
try {
  ctx = await chromium.launchPersistentContext(dataDir, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--no-first-run", "--disable-quic", "--disable-sync",
      // The wss run's certificate is a test CA's, made by the test.
      "--ignore-certificate-errors",
    ],
    ignoreHTTPSErrors: true,
    timeout: 60000,
  });
} catch (e) {
  console.log(JSON.stringify({ ok: false, launch_failed: true, error: String(e) }));
  process.exit(2);
}
const timeout = 15000;
const open = async (token, r) => {
  const p = await ctx.newPage();
  await p.goto(`${base}/?room=${encodeURIComponent(r)}&token=${encodeURIComponent(token)}&join`);
  return p;
};
const state = async (p) => ({ status: await p.locator("#status").textContent(), log: await p.locator("#log").textContent() });
const seen = (p, text) => p.locator("#log li", { hasText: text }).first().waitFor({ timeout });
try {
  const a = await open(tokA, room);
  const b = await open(tokB, room);
  for (const p of [a, b]) await p.locator("#status", { hasText: `joined ${room}` }).waitFor({ timeout });
  steps.push("both joined");
  if (wantExt) {
    for (const p of [a, b]) await p.locator("#log li", { hasText: `extensions: ${wantExt}` }).first().waitFor({ timeout });
    steps.push(`${wantExt} negotiated`);
  }
  await a.fill("#msg", "hello from page A");
  await a.click("#send");
  await seen(b, "hello from page A");
  await seen(a, "hello from page A");
  await b.fill("#msg", "hi from page B");
  await b.press("#msg", "Enter");
  await seen(a, "hi from page B");
  steps.push("pages see each other");
  const resp = await fetch(`${admin}/publish/${encodeURIComponent(room)}`, {
    method: "POST",
    headers: { Authorization: `Bearer ${key}`, "Content-Type": "text/plain" },
    body: "pushed by the backend",
  });
  const json = await resp.json();
  if (resp.status !== 200 || json.connections !== 2) throw new Error(`publish: ${resp.status} ${JSON.stringify(json)}`);
  for (const p of [a, b]) await seen(p, "pushed by the backend");
  steps.push("publish reached both");
  const c = await open(tokOther, room);
  await c.locator("#status", { hasText: "closed" }).waitFor({ timeout });
  const status = await c.locator("#status").textContent();
  if (status.includes("joined")) throw new Error("the other token joined");
  await seen(c, "connection failed or refused");
  steps.push("other token refused");
  await a.screenshot({ path: shot, fullPage: true });
  steps.push("screenshot");
  console.log(JSON.stringify({ ok: true, steps, refused_status: status }));
  await ctx.close();
} catch (e) {
  const pages = [];
  for (const p of ctx.pages()) pages.push(await state(p).catch(() => null));
  console.log(JSON.stringify({ ok: false, steps, error: String(e), pages }));
  await ctx.close().catch(() => {});
  process.exitCode = 1;
} finally {
  rmSync(dataDir, { recursive: true, force: true });
}
