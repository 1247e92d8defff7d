// GET /: the built-in chat page. With an API key configured, open it as
// /?api_key=KEY (the app's guard checks the page request like any other, and
// the page passes the key on to the WebSocket).
import { Elysia } from "elysia";
import type { AppContext } from "../app";
import { chatPage } from "./page";

const PAGE_HEADERS = {
  "content-type": "text/html; charset=utf-8",
  // Everything is inline; the only connection is the page's own WebSocket.
  "content-security-policy":
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  "x-content-type-options": "nosniff",
  // The URL may carry ?api_key=: never send it elsewhere.
  "referrer-policy": "no-referrer",
  "cache-control": "no-store",
} as const;

export function webRoutes(ctx: AppContext) {
  return new Elysia().get("/", () => new Response(chatPage(ctx.session.modelId), { headers: PAGE_HEADERS }));
}
