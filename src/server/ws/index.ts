// The WebSocket chat API at /v1/ws (protocol: PROTOCOL.md). The app's guards
// (API key, allowed origins) run on the upgrade request like on any other.
import { Elysia } from "elysia";
import type { AppContext } from "../app";
import { Connection } from "./connection";

type RawSocket = { send(data: string): number };

export function websocketRoutes(ctx: AppContext) {
  // Elysia wraps the socket in a new object for every event; Bun's socket is the stable identity.
  const connections = new WeakMap<RawSocket, Connection>();
  const connectionOf = (raw: RawSocket) => {
    let connection = connections.get(raw);
    if (!connection) {
      connection = new Connection(ctx, { send: (data) => raw.send(data) });
      connections.set(raw, connection);
    }
    return connection;
  };
  return new Elysia().ws("/v1/ws", {
    open(ws) {
      connectionOf(ws.raw);
    },
    message(ws, message) {
      connectionOf(ws.raw).receive(message);
    },
    drain(ws) {
      connections.get(ws.raw)?.drain();
    },
    close(ws) {
      connections.get(ws.raw)?.close();
      connections.delete(ws.raw);
    },
  });
}
