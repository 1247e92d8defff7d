// A lock file per blob, so two Pensieve processes (a server pulling its model and
// a `pull` in another terminal) never append to the same .incomplete file. The
// file holds the owner's pid and host; a lock whose process is gone is stale.
// (huggingface_hub locks with flock() on .locks/…/<etag>.lock; our file has
// another name so neither side mistakes the other's lock file for its own.)
import { mkdirSync, openSync, readFileSync, rmSync, statSync, writeSync, closeSync } from "node:fs";
import { hostname } from "node:os";
import { dirname } from "node:path";

const POLL_MS = 200;
/** A lock from another host cannot be checked: after this long without change it is taken as stale. */
const FOREIGN_STALE_MS = 6 * 3600_000;

function isStale(path: string): boolean {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch {
    return false; // removed meanwhile: the next try creates it
  }
  const [pidText, host] = text.trim().split(/\s+/);
  const pid = Number(pidText);
  if (!Number.isInteger(pid) || pid <= 0) return true;
  if (host && host !== hostname()) {
    try {
      return Date.now() - statSync(path).mtimeMs > FOREIGN_STALE_MS;
    } catch {
      return false;
    }
  }
  try {
    process.kill(pid, 0);
    return false;
  } catch (e) {
    // EPERM: alive, but another user's.
    return (e as NodeJS.ErrnoException).code === "ESRCH";
  }
}

function tryAcquire(path: string): boolean {
  try {
    const fd = openSync(path, "wx");
    writeSync(fd, `${process.pid} ${hostname()}\n`);
    closeSync(fd);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
    return false;
  }
}

export async function withFileLock<T>(path: string, fn: () => Promise<T>, signal?: AbortSignal): Promise<T> {
  mkdirSync(dirname(path), { recursive: true });
  while (!tryAcquire(path)) {
    if (isStale(path)) {
      rmSync(path, { force: true });
      continue;
    }
    if (signal?.aborted) throw signal.reason;
    await Bun.sleep(POLL_MS);
  }
  try {
    return await fn();
  } finally {
    rmSync(path, { force: true });
  }
}
