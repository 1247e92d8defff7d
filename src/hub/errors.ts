// Errors from the Hub client, each with a message a user can act on.

export type HubErrorCode =
  /** 401/403: no token, a wrong token, or a token without access. */
  | "unauthorized"
  /** The repo is gated: the licence must be accepted on the website with the token's account. */
  | "gated"
  | "repo_not_found"
  | "revision_not_found"
  | "file_not_found"
  /** HF_HUB_OFFLINE=1 (or no network) and the cache lacks what was asked for. */
  | "not_cached"
  /** Connection failures, timeouts, 5xx and 429 that outlived the retries. */
  | "network"
  /** Size or sha256 mismatch that outlived the re-fetch. */
  | "integrity"
  | "bad_response"
  | "invalid_request";

export class HubError extends Error {
  readonly code: HubErrorCode;
  /** HTTP status when the error came from a response. */
  readonly status: number | null;
  /** Whether trying again later may succeed (used by the retry loop). */
  readonly transient: boolean;
  /** The server's Retry-After, when it sent one. */
  readonly retryAfterMs: number | null;

  constructor(
    code: HubErrorCode,
    message: string,
    options: { status?: number; transient?: boolean; retryAfterMs?: number | null; cause?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "HubError";
    this.code = code;
    this.status = options.status ?? null;
    this.transient = options.transient ?? false;
    this.retryAfterMs = options.retryAfterMs ?? null;
  }
}

/** Only errors the client classified itself are retried: a bug in our code must not loop. */
export function isTransient(error: unknown): boolean {
  return error instanceof HubError && error.transient;
}
