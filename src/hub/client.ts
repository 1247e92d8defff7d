// The Hub's HTTP API, as huggingface_hub uses it:
//   GET  {endpoint}/api/models/{repo}/revision/{rev}     → {sha, siblings: [{rfilename}]}
//   HEAD {endpoint}/{repo}/resolve/{rev}/{file}          → X-Repo-Commit, ETag / X-Linked-Etag,
//        Content-Length / X-Linked-Size, and for LFS files a 302 to a CDN.
//   GET  the resolve URL or the CDN URL, with Range to resume.
// Every request retries transient failures (network, 5xx, 429) with backoff.
import { HubError, isTransient } from "./errors";
import { type Env, type HubSettings, hubSettings } from "./settings";

export interface RetryPolicy {
  /** Attempts after the first. */
  retries: number;
  baseDelayMs: number;
  maxDelayMs: number;
}

const DEFAULT_RETRY: RetryPolicy = { retries: 5, baseDelayMs: 1000, maxDelayMs: 30_000 };

export interface HubClientOptions {
  settings?: HubSettings;
  /** Read when settings is not given. */
  env?: Env;
  retry?: Partial<RetryPolicy>;
  /** Timeout of API and HEAD requests, and of the wait for a download's response headers. */
  requestTimeoutMs?: number;
  userAgent?: string;
}

export interface RepoRevision {
  repoId: string;
  revision: string;
  /** The commit the revision points at. */
  commit: string;
  /** Every file of the repo at that commit (paths relative to the repo root). */
  files: string[];
}

export interface RemoteFile {
  repoId: string;
  filename: string;
  commit: string;
  /** Blob name in the cache: the sha256 for LFS files, the git blob sha1 for others. */
  etag: string;
  size: number;
  /** True when the Hub served an LFS pointer (X-Linked-Etag): the etag is then a sha256. */
  lfs: boolean;
  /** Where to GET the bytes: the CDN URL for LFS files, the resolve URL otherwise. */
  downloadUrl: string;
}

const REPO_ID = /^[A-Za-z0-9][\w.-]*\/[\w.-]+$/;
const COMMIT = /^[0-9a-f]{40}$/;
const MAX_REDIRECTS = 10;

export function isCommitHash(revision: string): boolean {
  return COMMIT.test(revision);
}

/** Rejects ids that could escape the cache folder or are not org/name. */
export function assertRepoId(repoId: string): void {
  if (!REPO_ID.test(repoId) || repoId.includes("..") || repoId.length > 200) {
    throw new HubError("invalid_request", `"${repoId}" is not a Hugging Face repo id (expected org/name)`);
  }
}

export function assertRepoFilename(filename: string): void {
  const parts = filename.split("/");
  if (!filename || filename.startsWith("/") || parts.some((p) => p === "" || p === "." || p === "..")) {
    throw new HubError("invalid_request", `"${filename}" is not a file path inside a repo`);
  }
}

/** huggingface_hub strips W/ and quotes so an etag can name a file. */
function normalizeEtag(value: string | null): string | null {
  if (!value) return null;
  return value.trim().replace(/^W\//, "").replace(/^"|"$/g, "") || null;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** Runs `attempt` until it succeeds, fails for good, or the retries run out. */
export async function withRetries<T>(
  policy: RetryPolicy,
  attempt: (n: number) => Promise<T>,
  signal?: AbortSignal,
): Promise<T> {
  for (let n = 0; ; n++) {
    try {
      return await attempt(n);
    } catch (error) {
      if (signal?.aborted || !isTransient(error) || n >= policy.retries) throw error;
      const backoff = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** n);
      // Jitter spreads out parallel workers that failed together.
      const jittered = backoff * (0.5 + Math.random() / 2);
      const hinted = error instanceof HubError ? error.retryAfterMs : null;
      await sleep(hinted !== null ? Math.min(hinted, policy.maxDelayMs) : jittered, signal);
    }
  }
}

function parseRetryAfter(value: string | null): number | null {
  if (!value) return null;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(0, date - Date.now());
}

interface Target {
  repoId: string;
  revision: string;
  filename?: string;
}

export class HubClient {
  readonly settings: HubSettings;
  readonly retry: RetryPolicy;
  readonly requestTimeoutMs: number;
  readonly userAgent: string;

  constructor(options: HubClientOptions = {}) {
    this.settings = options.settings ?? hubSettings(options.env);
    this.retry = { ...DEFAULT_RETRY, ...options.retry };
    this.requestTimeoutMs = options.requestTimeoutMs ?? 30_000;
    this.userAgent = options.userAgent ?? `pensieve/0.1; bun/${Bun.version}`;
  }

  resolveUrl(repoId: string, revision: string, filename: string): string {
    const path = filename.split("/").map(encodeURIComponent).join("/");
    return `${this.settings.endpoint}/${repoId}/resolve/${encodeURIComponent(revision)}/${path}`;
  }

  /** The commit a revision points at and the repo's file list. */
  async repoRevision(repoId: string, revision = "main", signal?: AbortSignal): Promise<RepoRevision> {
    assertRepoId(repoId);
    this.#assertOnline();
    const url = `${this.settings.endpoint}/api/models/${repoId}/revision/${encodeURIComponent(revision)}`;
    const target = { repoId, revision };
    return withRetries(
      this.retry,
      async () => {
        const res = await this.#fetch(url, { headers: this.#headers(url, { Accept: "application/json" }) }, signal);
        if (!res.ok) throw await this.#errorFor(res, target, true);
        let body: unknown;
        try {
          body = await res.json();
        } catch (e) {
          throw new HubError("bad_response", `${url} did not answer JSON: is HF_ENDPOINT a Hugging Face Hub?`, {
            cause: e,
          });
        }
        const info = body as { sha?: unknown; siblings?: unknown };
        if (typeof info.sha !== "string" || !Array.isArray(info.siblings)) {
          throw new HubError("bad_response", `${url}: the answer has no "sha" and "siblings"`);
        }
        const files = info.siblings
          .map((s) => (s as { rfilename?: unknown }).rfilename)
          .filter((f): f is string => typeof f === "string");
        return { repoId, revision, commit: info.sha, files };
      },
      signal,
    );
  }

  /** HEAD of one file: its blob name (etag), size, commit and download URL. */
  async fileMetadata(repoId: string, filename: string, revision = "main", signal?: AbortSignal): Promise<RemoteFile> {
    assertRepoId(repoId);
    assertRepoFilename(filename);
    this.#assertOnline();
    const target = { repoId, revision, filename };
    return withRetries(
      this.retry,
      async () => {
        let url = this.resolveUrl(repoId, revision, filename);
        for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
          const res = await this.#fetch(
            url,
            { method: "HEAD", redirect: "manual", headers: this.#headers(url, { "Accept-Encoding": "identity" }) },
            signal,
          );
          const location = res.headers.get("location");
          if (res.status >= 300 && res.status < 400 && location) {
            const next = new URL(location, url);
            // A relative redirect is a renamed repo: follow it. An absolute one is the CDN:
            // the metadata headers are on this response, and the CDN URL is where to GET.
            if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(location) && !location.startsWith("//")) {
              url = next.href;
              continue;
            }
            return this.#remoteFile(res, target, url, this.#rewriteEndpoint(next.href));
          }
          if (!res.ok) throw await this.#errorFor(res, target, false);
          return this.#remoteFile(res, target, url, url);
        }
        throw new HubError("bad_response", `too many redirects for ${this.resolveUrl(repoId, revision, filename)}`);
      },
      signal,
    );
  }

  /**
   * GET of a file's bytes from `offset`. Redirects are followed by hand so that the
   * token is only ever sent to the Hub's own origin, never to a CDN.
   */
  async openDownload(file: RemoteFile, offset: number, signal?: AbortSignal): Promise<Response> {
    let url = file.downloadUrl;
    const target = { repoId: file.repoId, revision: file.commit, filename: file.filename };
    for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
      const extra: Record<string, string> = { "Accept-Encoding": "identity" };
      if (offset > 0) extra.Range = `bytes=${offset}-`;
      const res = await this.#fetch(url, { redirect: "manual", headers: this.#headers(url, extra) }, signal, false);
      const location = res.headers.get("location");
      if (res.status >= 300 && res.status < 400 && location) {
        url = new URL(location, url).href;
        continue;
      }
      if (res.ok || res.status === 416) return res;
      throw await this.#errorFor(res, target, false);
    }
    throw new HubError("bad_response", `too many redirects downloading ${file.filename}`);
  }

  #assertOnline(): void {
    if (this.settings.offline) {
      throw new HubError("not_cached", "HF_HUB_OFFLINE is set: no requests to the Hub are allowed");
    }
  }

  #headers(url: string, extra: Record<string, string> = {}): Record<string, string> {
    const headers: Record<string, string> = { "User-Agent": this.userAgent, ...extra };
    if (this.settings.token && new URL(url).origin === new URL(this.settings.endpoint).origin) {
      headers.Authorization = `Bearer ${this.settings.token}`;
    }
    return headers;
  }

  /** A proxy (HF_ENDPOINT) may hand out URLs that name huggingface.co: keep them on the proxy. */
  #rewriteEndpoint(url: string): string {
    const official = "https://huggingface.co";
    if (this.settings.endpoint !== official && url.startsWith(`${official}/`)) {
      return this.settings.endpoint + url.slice(official.length);
    }
    return url;
  }

  /**
   * fetch, with network failures and timeouts turned into transient HubErrors. The
   * timeout covers the whole exchange, or only the wait for headers when `wholeBody`
   * is false (a download's body may take hours; its stalls are watched elsewhere).
   */
  async #fetch(url: string, init: RequestInit, signal?: AbortSignal, wholeBody = true): Promise<Response> {
    const timeout = new AbortController();
    const timer = setTimeout(() => timeout.abort(), this.requestTimeoutMs);
    timer.unref();
    try {
      const res = await fetch(url, {
        ...init,
        signal: signal ? AbortSignal.any([timeout.signal, signal]) : timeout.signal,
      });
      if (!wholeBody) clearTimeout(timer);
      return res;
    } catch (error) {
      clearTimeout(timer);
      if (signal?.aborted) throw signal.reason;
      const reason = timeout.signal.aborted
        ? `no answer in ${this.requestTimeoutMs / 1000} s`
        : (error as Error).message;
      throw new HubError("network", `cannot reach ${new URL(url).origin}: ${reason}`, {
        transient: true,
        cause: error,
      });
    }
  }

  #remoteFile(res: Response, target: Target, url: string, downloadUrl: string): RemoteFile {
    const linkedEtag = normalizeEtag(res.headers.get("x-linked-etag"));
    const etag = linkedEtag ?? normalizeEtag(res.headers.get("etag"));
    const commit = res.headers.get("x-repo-commit");
    const size = Number(res.headers.get("x-linked-size") ?? res.headers.get("content-length") ?? Number.NaN);
    const missing = [!etag && "ETag", !commit && "X-Repo-Commit", !Number.isSafeInteger(size) && "a size"].filter(
      Boolean,
    );
    if (missing.length > 0 || !etag || !commit) {
      throw new HubError(
        "bad_response",
        `HEAD ${url} answered without ${missing.join(", ")}: is HF_ENDPOINT (${this.settings.endpoint}) a Hugging Face Hub?`,
      );
    }
    if (!/^[\w.-]+$/.test(etag)) throw new HubError("bad_response", `HEAD ${url}: unusable ETag "${etag}"`);
    return {
      repoId: target.repoId,
      filename: target.filename ?? "",
      commit,
      etag,
      size,
      lfs: linkedEtag !== null,
      downloadUrl,
    };
  }

  async #errorFor(res: Response, target: Target, isApi: boolean): Promise<HubError> {
    const status = res.status;
    const code = res.headers.get("x-error-code");
    let serverMessage = res.headers.get("x-error-message");
    if (!serverMessage) {
      try {
        const text = (await res.text()).trim();
        const parsed = text.startsWith("{") ? (JSON.parse(text) as { error?: unknown }) : null;
        serverMessage = typeof parsed?.error === "string" ? parsed.error : text.length <= 200 ? text : null;
      } catch {
        serverMessage = null;
      }
    }
    const { repoId, revision, filename } = target;
    const { endpoint, tokenSource } = this.settings;
    const server = serverMessage ? ` (server: ${serverMessage})` : "";
    const tokenHint = tokenSource
      ? `the token from ${tokenSource} has no access to it (or is invalid): set HF_TOKEN to a token that can read it`
      : "set HF_TOKEN to a Hugging Face access token (https://huggingface.co/settings/tokens)";

    if (code === "GatedRepo") {
      return new HubError(
        "gated",
        `${repoId} is gated (HTTP ${status}): accept its conditions at ${endpoint}/${repoId}, then ${tokenHint}${server}`,
        { status },
      );
    }
    if (status === 401 || status === 403) {
      return new HubError(
        "unauthorized",
        `${repoId}: HTTP ${status}: the repo is gated or private (or does not exist): ${tokenHint}${server}`,
        { status },
      );
    }
    if (status === 404) {
      if (code === "RevisionNotFound") {
        return new HubError("revision_not_found", `no revision "${revision}" in ${repoId}${server}`, { status });
      }
      if (filename && (code === "EntryNotFound" || (!isApi && code !== "RepoNotFound"))) {
        return new HubError("file_not_found", `no such file: "${filename}" in ${repoId} at ${revision}${server}`, {
          status,
        });
      }
      return new HubError("repo_not_found", `no such repo: ${repoId} on ${endpoint} (check the name)${server}`, {
        status,
      });
    }
    if (status === 429 || status === 408 || status >= 500) {
      return new HubError("network", `${endpoint} answered HTTP ${status} for ${repoId}${server}`, {
        status,
        transient: true,
        retryAfterMs: parseRetryAfter(res.headers.get("retry-after")),
      });
    }
    return new HubError("bad_response", `unexpected HTTP ${status} from ${res.url || endpoint}${server}`, { status });
  }
}
