// A lock file per blob, so two Pensieve processes (a server pulling its model and
// a `pull` in another terminal) never append to the same .incomplete file. The
// file holds the owner's pid and host; a lock whose process is gone is stale.
// (huggingface_hub locks with flock() on .locks/…/<etag>.lock; our file has
// another name so neither side mistakes the other's lock file for its own.)
import { randomBytes } from "node:crypto";
import {
  closeSync,
  linkSync,
  mkdirSync,
  openSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from "node:fs";
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

/**
 * Creates the lock with its content in one step: written to a private file,
 * then hard-linked into place (fails if the lock exists). A lock file is never
 * seen empty, so a waiter never mistakes a fresh lock for a stale one.
 */
function tryAcquire(path: string): boolean {
  const mine = `${path}.${process.pid}.${randomBytes(4).toString("hex")}`;
  writeFileSync(mine, `${process.pid} ${hostname()}\n`);
  try {
    linkSync(mine, path);
    return true;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "EEXIST") return false;
    if (code === "EPERM" || code === "ENOTSUP" || code === "EOPNOTSUPP") return tryCreate(path);
    throw e;
  } finally {
    rmSync(mine, { force: true });
  }
}

/** Where hard links are not allowed: create, then write (a waiter may see it empty for an instant). */
function tryCreate(path: string): boolean {
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

/**
 * Removes a stale lock under a second lock, so that of several waiters that
 * all saw it stale only one removes it, after checking again: the others
 * would otherwise remove the fresh lock the first one took meanwhile.
 */
function removeIfStale(path: string): boolean {
  const guard = `${path}.takeover`;
  if (!tryAcquire(guard)) {
    if (!isStale(guard)) return false; // another waiter is taking over
    rmSync(guard, { force: true }); // its taker died mid-takeover
    return true;
  }
  try {
    if (!isStale(path)) return false;
    rmSync(path, { force: true });
    return true;
  } finally {
    rmSync(guard, { force: true });
  }
}

export async function withFileLock<T>(path: string, fn: () => Promise<T>, signal?: AbortSignal): Promise<T> {
  mkdirSync(dirname(path), { recursive: true });
  while (!tryAcquire(path)) {
    if (isStale(path) && removeIfStale(path)) continue;
    if (signal?.aborted) throw signal.reason;
    await Bun.sleep(POLL_MS);
  }
  try {
    return await fn();
  } finally {
    rmSync(path, { force: true });
  }
}
