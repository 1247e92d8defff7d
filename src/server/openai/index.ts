// Routes of this API (being built): mounted by src/server/routes.ts.
import { Elysia } from "elysia";
import type { AppContext } from "../app";

export function openaiRoutes(_ctx: AppContext) {
  return new Elysia();
}
