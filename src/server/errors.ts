// API errors. Handlers throw ApiError; the app renders it in the shape of the
// API that was called (OpenAI or Anthropic), with the right status.

export type ErrorKind =
  | "invalid_request"
  | "authentication"
  | "permission"
  | "not_found"
  | "request_too_large"
  | "rate_limit"
  | "overloaded"
  | "api_error";

export class ApiError extends Error {
  readonly status: number;
  readonly kind: ErrorKind;
  /** The request field at fault (OpenAI's `param`), when there is one. */
  readonly param: string | null;
  readonly retryAfterSeconds: number | undefined;

  constructor(
    status: number,
    kind: ErrorKind,
    message: string,
    param: string | null = null,
    retryAfterSeconds?: number,
  ) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.kind = kind;
    this.param = param;
    this.retryAfterSeconds = retryAfterSeconds;
  }
}

export const badRequest = (message: string, param: string | null = null) =>
  new ApiError(400, "invalid_request", message, param);

/** The error kind for a status the engine or a guard reported. */
function kindForStatus(status: number): ErrorKind {
  if (status === 401) return "authentication";
  if (status === 403) return "permission";
  if (status === 404) return "not_found";
  if (status === 413) return "request_too_large";
  if (status === 429) return "rate_limit";
  if (status === 503 || status === 529) return "overloaded";
  if (status >= 400 && status < 500) return "invalid_request";
  return "api_error";
}

export function apiErrorFromStatus(status: number, message: string, retryAfterSeconds?: number): ApiError {
  return new ApiError(status, kindForStatus(status), message, null, retryAfterSeconds);
}

const ANTHROPIC_TYPES: Record<ErrorKind, string> = {
  invalid_request: "invalid_request_error",
  authentication: "authentication_error",
  permission: "permission_error",
  not_found: "not_found_error",
  request_too_large: "request_too_large",
  rate_limit: "rate_limit_error",
  overloaded: "overloaded_error",
  api_error: "api_error",
};

const OPENAI_TYPES: Record<ErrorKind, string> = {
  invalid_request: "invalid_request_error",
  authentication: "authentication_error",
  permission: "permission_error",
  not_found: "not_found_error",
  request_too_large: "invalid_request_error",
  rate_limit: "rate_limit_error",
  overloaded: "server_error",
  api_error: "server_error",
};

/** Anthropic: {"type":"error","error":{"type":...,"message":...}} */
export function anthropicErrorBody(e: ApiError) {
  return { type: "error", error: { type: ANTHROPIC_TYPES[e.kind], message: e.message } };
}

/** OpenAI: {"error":{"message","type","param","code"}} */
export function openaiErrorBody(e: ApiError) {
  return {
    error: {
      message: e.message,
      type: OPENAI_TYPES[e.kind],
      param: e.param,
      code: e.kind === "not_found" ? "model_not_found" : e.kind === "rate_limit" ? "rate_limit_exceeded" : null,
    },
  };
}

/** Which API shape a path answers in. */
export function apiFlavor(path: string): "anthropic" | "openai" {
  return path.startsWith("/v1/messages") ? "anthropic" : "openai";
}

export function errorBody(e: ApiError, path: string) {
  return apiFlavor(path) === "anthropic" ? anthropicErrorBody(e) : openaiErrorBody(e);
}
