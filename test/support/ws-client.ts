// A small WebSocket client for tests of the /v1/ws protocol: collects every
// server message and waits for the one a test expects.
export type WsMessage = { type: string; id?: string; [key: string]: unknown };

export class TestSocket {
  readonly messages: WsMessage[] = [];
  readonly socket: WebSocket;
  #waiters: Array<() => void> = [];
  closed: { code: number } | null = null;

  private constructor(socket: WebSocket) {
    this.socket = socket;
    socket.onmessage = (event) => {
      this.messages.push(JSON.parse(String(event.data)) as WsMessage);
      this.#wake();
    };
    socket.onclose = (event) => {
      this.closed = { code: event.code };
      this.#wake();
    };
  }

  static open(url: string): Promise<TestSocket> {
    return new Promise((resolve, reject) => {
      const socket = new WebSocket(url);
      socket.onopen = () => resolve(new TestSocket(socket));
      socket.onerror = () => reject(new Error(`cannot open ${url}`));
    });
  }

  send(message: unknown): void {
    this.socket.send(typeof message === "string" ? message : JSON.stringify(message));
  }

  /** Waits for the first message (from `from` on) that matches; fails after `timeoutMs`. */
  async next(match: (m: WsMessage) => boolean, timeoutMs = 30_000, from = 0): Promise<WsMessage> {
    const deadline = performance.now() + timeoutMs;
    while (true) {
      const found = this.messages.slice(from).find(match);
      if (found) return found;
      if (this.closed) throw new Error(`socket closed (${this.closed.code}) while waiting`);
      const left = deadline - performance.now();
      if (left <= 0) throw new Error(`timed out; got ${JSON.stringify(this.messages.slice(-5))}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /** The text streamed for a conversation so far. */
  text(id: string): string {
    return this.messages
      .filter((m) => m.type === "delta" && m.id === id)
      .map((m) => m.text as string)
      .join("");
  }

  close(): void {
    this.socket.close();
  }

  #wake(): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w();
  }
}

/** The HTTP status an upgrade request gets (101 when the server accepts it). */
export async function upgradeStatus(url: string, headers: Record<string, string> = {}): Promise<number> {
  const res = await fetch(url, {
    headers: {
      connection: "Upgrade",
      upgrade: "websocket",
      "sec-websocket-version": "13",
      "sec-websocket-key": btoa("0123456789abcdef"),
      ...headers,
    },
  });
  return res.status;
}
