// Headless Chromium for browser tests: Debian's package at /usr/bin/chromium,
// driven by playwright-core. On a clean machine (CI) the package is installed
// here when we run as root; otherwise the test explains what is missing.
import { existsSync } from "node:fs";
import { type Browser, chromium } from "playwright-core";

export const CHROMIUM = "/usr/bin/chromium";

function run(command: string[]): boolean {
  const result = Bun.spawnSync(command, {
    env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" },
    stdout: "ignore",
    stderr: "pipe",
  });
  return result.exitCode === 0;
}

/** Installs Debian's chromium package when it is missing (root only; a few minutes on a clean machine). */
export function ensureChromium(): void {
  if (existsSync(CHROMIUM)) return;
  if (process.getuid?.() !== 0)
    throw new Error(`${CHROMIUM} is missing: install it with "apt-get install -y chromium" (needs root)`);
  // The package lists may be absent on a fresh image: update once if the first try fails.
  const installed =
    run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"]) ||
    (run(["apt-get", "update"]) && run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"]));
  if (!installed || !existsSync(CHROMIUM)) throw new Error("apt-get could not install chromium");
}

export async function launchChromium(): Promise<Browser> {
  ensureChromium();
  return chromium.launch({ executablePath: CHROMIUM, headless: true });
}
