// The built-in chat page in headless Chromium (Debian's package, installed by
// test/support/chromium.ts when missing and running as root), against a live
// server with the embedded SmolLM2: it streams a real answer over /v1/ws.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import type { Browser, Page } from "playwright-core";
import type { RunningServer } from "../../src/server/server";
import { launchChromium } from "../support/chromium";
import { waitForEngineIdle } from "../support/engine-idle";
import { TEST_TMP, tinyModel } from "../support/models";
import { startTestServer } from "../support/server";

const LONG = 300_000;
let browser: Browser;
let server: RunningServer;

beforeAll(async () => {
  [browser, server] = await Promise.all([launchChromium(), startTestServer()]);
}, 900_000);

afterAll(async () => {
  await browser?.close();
  await server?.stop();
});

/** A page with console errors and page errors (CSP violations included) collected. */
async function openPage(url: string): Promise<{ page: Page; problems: string[] }> {
  const page = await browser.newPage({ viewport: { width: 960, height: 640 } });
  const problems: string[] = [];
  page.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`console: ${m.text()}`);
  });
  await page.goto(url);
  await page.waitForSelector('#status[data-state="open"]', { timeout: 10_000 });
  return { page, problems };
}

const lastAnswer = (page: Page) => page.locator(".msg.assistant").last();

describe("chat page", () => {
  test(
    "streams SmolLM2's answer to a question",
    async () => {
      const { page, problems } = await openPage(`${server.url}/`);
      expect(await page.title()).toContain(server.session.modelId);
      expect(await page.textContent("#model")).toBe(server.session.modelId);
      await page.fill("#input", "What is the capital of France?");
      // While streaming, Stop replaces Send. A short answer can be done before a poll for the button would see
      // it, so the page records whether it was ever shown.
      await page.evaluate(() => {
        const stop = document.querySelector("#stop") as HTMLElement;
        const w = window as unknown as { stopShown: boolean };
        w.stopShown = false;
        // Records may arrive batched: a removal of `hidden` (its old value not null) is the button shown.
        new MutationObserver((records) => {
          if (records.some((r) => r.attributeName === "hidden" && r.oldValue !== null)) w.stopShown = true;
        }).observe(stop, { attributes: true, attributeOldValue: true });
      });
      await page.click("#send");
      await page.waitForSelector(".msg.assistant:not(.streaming)", { timeout: 120_000 });
      expect(await page.evaluate(() => (window as unknown as { stopShown: boolean }).stopShown)).toBe(true);
      const answer = await lastAnswer(page).locator(".text").textContent();
      expect(answer).toContain("Paris");
      expect(await page.locator("#send").isVisible()).toBe(true);
      expect(await page.locator("#stop").isVisible()).toBe(false);
      expect(await page.locator(".msg.user").first().textContent()).toBe("What is the capital of France?");
      mkdirSync(TEST_TMP, { recursive: true });
      await page.screenshot({ path: join(TEST_TMP, "web-chat.png") });
      expect(problems).toEqual([]);
      await page.close();
    },
    LONG,
  );

  test(
    "the stop button cancels the answer being written",
    async () => {
      const { page, problems } = await openPage(`${server.url}/`);
      await page.fill("#input", "Write a long story about a dragon who loves books.");
      await page.press("#input", "Enter");
      // Wait for some streamed text, then stop.
      await page.waitForFunction(
        () => (document.querySelector(".msg.assistant.streaming .text")?.textContent ?? "").length > 10,
        undefined,
        { timeout: 120_000 },
      );
      await page.click("#stop");
      await page.waitForSelector(".msg.assistant:not(.streaming)", { timeout: 10_000 });
      expect(await lastAnswer(page).locator(".meta").textContent()).toContain("stopped");
      expect(await page.locator("#send").isVisible()).toBe(true);
      const idle = await waitForEngineIdle(server.engine);
      expect(idle.running + idle.prefilling + idle.waiting).toBe(0);
      mkdirSync(TEST_TMP, { recursive: true });
      await page.screenshot({ path: join(TEST_TMP, "web-chat-stopped.png") });
      expect(problems).toEqual([]);
      await page.close();
    },
    LONG,
  );

  test("server errors are shown", async () => {
    const { page } = await openPage(`${server.url}/`);
    await page.click("summary");
    await page.fill("#temperature", "5");
    await page.click("summary");
    await page.fill("#input", "Hello");
    await page.click("#send");
    const error = page.locator(".msg.error");
    await error.waitFor({ timeout: 10_000 });
    expect(await error.textContent()).toContain("temperature");
    // The failed turn is gone from the conversation and the page is ready again.
    expect(await page.locator("#send").isVisible()).toBe(true);
    await page.evaluate(() => localStorage.clear());
    await page.close();
  });
});

describe("chat page behind an API key", () => {
  let guarded: RunningServer;
  beforeAll(async () => {
    guarded = await startTestServer({ model: tinyModel("tiny-llama-f16"), server: { apiKey: "page-key" } });
  }, LONG);
  afterAll(async () => {
    await guarded?.stop();
  });

  test("opens with ?api_key= and passes the key on to the WebSocket", async () => {
    expect((await fetch(`${guarded.url}/`)).status).toBe(401);
    const { page, problems } = await openPage(`${guarded.url}/?api_key=page-key`);
    await page.fill("#input", "Hi");
    await page.click("#send");
    await page.waitForSelector(".msg.assistant:not(.streaming)", { timeout: 30_000 });
    expect(problems).toEqual([]);
    await page.close();
  });
});
