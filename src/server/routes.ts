// The API route modules the server mounts, in one list.
import { anthropicRoutes } from "./anthropic";
import type { RoutePlugin } from "./app";
import { openaiRoutes } from "./openai";
import { webRoutes } from "./web";
import { websocketRoutes } from "./ws";

export function serverRoutes(): RoutePlugin[] {
  return [openaiRoutes, anthropicRoutes, websocketRoutes, webRoutes];
}
