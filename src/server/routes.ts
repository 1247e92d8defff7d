// The API route modules the server mounts, in one list.
import type { RoutePlugin } from "./app";

export function serverRoutes(): RoutePlugin[] {
  return [];
}
