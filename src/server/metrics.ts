// Prometheus metrics in the text exposition format. A small registry of
// counters, gauges and histograms with labels; engine gauges are read from the
// engine's statistics at scrape time.

type Labels = Record<string, string>;

function labelKey(labels: Labels): string {
  const keys = Object.keys(labels).sort();
  return keys
    .map((k) => `${k}="${String(labels[k]).replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n")}"`)
    .join(",");
}

abstract class Metric {
  constructor(
    readonly name: string,
    readonly help: string,
    readonly type: "counter" | "gauge" | "histogram",
  ) {}
  abstract lines(): string[];
  header(): string[] {
    return [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} ${this.type}`];
  }
}

class Counter extends Metric {
  #values = new Map<string, number>();
  constructor(name: string, help: string) {
    super(name, help, "counter");
  }
  inc(labels: Labels = {}, by = 1): void {
    const k = labelKey(labels);
    this.#values.set(k, (this.#values.get(k) ?? 0) + by);
  }
  get(labels: Labels = {}): number {
    return this.#values.get(labelKey(labels)) ?? 0;
  }
  lines(): string[] {
    if (this.#values.size === 0) return [`${this.name} 0`];
    return [...this.#values].map(([k, v]) => `${this.name}${k ? `{${k}}` : ""} ${v}`);
  }
}

class Gauge extends Metric {
  #values = new Map<string, number>();
  constructor(name: string, help: string) {
    super(name, help, "gauge");
  }
  set(value: number, labels: Labels = {}): void {
    this.#values.set(labelKey(labels), value);
  }
  lines(): string[] {
    if (this.#values.size === 0) return [`${this.name} 0`];
    return [...this.#values].map(([k, v]) => `${this.name}${k ? `{${k}}` : ""} ${v}`);
  }
}

class Histogram extends Metric {
  readonly buckets: number[];
  #counts: number[];
  #sum = 0;
  #count = 0;
  constructor(name: string, help: string, buckets: number[]) {
    super(name, help, "histogram");
    this.buckets = [...buckets].sort((a, b) => a - b);
    this.#counts = this.buckets.map(() => 0);
  }
  observe(value: number): void {
    this.#sum += value;
    this.#count++;
    this.buckets.forEach((b, i) => {
      if (value <= b) this.#counts[i] = (this.#counts[i] as number) + 1;
    });
  }
  get count(): number {
    return this.#count;
  }
  lines(): string[] {
    const out = this.buckets.map((b, i) => `${this.name}_bucket{le="${b}"} ${this.#counts[i]}`);
    out.push(
      `${this.name}_bucket{le="+Inf"} ${this.#count}`,
      `${this.name}_sum ${this.#sum}`,
      `${this.name}_count ${this.#count}`,
    );
    return out;
  }
}

const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];

/** Every metric Pensieve exports. */
export class ServerMetrics {
  readonly requests = new Counter("pensieve_requests_total", "HTTP and WebSocket requests by endpoint and status.");
  readonly promptTokens = new Counter(
    "pensieve_prompt_tokens_total",
    "Prompt tokens processed (including cached ones).",
  );
  readonly cachedTokens = new Counter(
    "pensieve_cached_prompt_tokens_total",
    "Prompt tokens served from the prefix cache.",
  );
  readonly completionTokens = new Counter("pensieve_completion_tokens_total", "Tokens generated.");
  readonly timeToFirstToken = new Histogram(
    "pensieve_time_to_first_token_seconds",
    "From request arrival to the first generated token.",
    LATENCY_BUCKETS,
  );
  readonly interTokenLatency = new Histogram(
    "pensieve_inter_token_latency_seconds",
    "Time between consecutive generated tokens of one request.",
    [0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2],
  );
  readonly queueWait = new Histogram(
    "pensieve_queue_wait_seconds",
    "Time a request waited in the engine before its prefill started or finished.",
    LATENCY_BUCKETS,
  );
  readonly requestDuration = new Histogram(
    "pensieve_request_duration_seconds",
    "Whole generation requests.",
    LATENCY_BUCKETS,
  );
  readonly queueDepth = new Gauge("pensieve_queue_depth", "Requests waiting for admission in the engine.");
  readonly activeSequences = new Gauge("pensieve_active_sequences", "Sequences decoding in the batch.");
  readonly prefilling = new Gauge("pensieve_prefilling_sequences", "Sequences being prefilled.");
  readonly kvCacheBytes = new Gauge("pensieve_kv_cache_bytes", "Bytes held by KV caches of live sequences.");
  readonly kvBudgetBytes = new Gauge("pensieve_kv_budget_bytes", "KV memory budget for admission.");
  readonly prefixCacheBytes = new Gauge("pensieve_prefix_cache_bytes", "Bytes of cached prefixes in the KV pool.");
  readonly kvReservedBytes = new Gauge(
    "pensieve_kv_reserved_bytes",
    "KV bytes running and prefilling sequences hold at their longest.",
  );
  readonly outOfMemoryFailures = new Gauge(
    "pensieve_out_of_memory_failures",
    "Times the engine ran out of memory since it started (the sequences involved recompute or fail).",
  );
  readonly outOfMemoryRequeued = new Gauge(
    "pensieve_out_of_memory_requeued",
    "Sequences sent back to recompute after running out of memory, instead of failing.",
  );
  readonly prefixDiskBytes = new Gauge("pensieve_prefix_disk_bytes", "Bytes of cached prefixes written to disk.");
  readonly prefixDiskFiles = new Gauge("pensieve_prefix_disk_files", "Cached prefix pieces written to disk.");
  readonly prefixDiskPendingBytes = new Gauge(
    "pensieve_prefix_disk_pending_bytes",
    "Bytes of cached prefixes still to write to disk (as the last plan left them).",
  );
  readonly prefixDiskSkippedWrites = new Gauge(
    "pensieve_prefix_disk_skipped_writes",
    "Plans that wrote nothing to disk because prefilling again is quicker than reading back.",
  );
  readonly mlxActiveBytes = new Gauge("pensieve_mlx_active_memory_bytes", "MLX active memory.");
  readonly mlxPeakBytes = new Gauge("pensieve_mlx_peak_memory_bytes", "MLX peak memory.");
  readonly mlxCacheBytes = new Gauge("pensieve_mlx_cache_memory_bytes", "MLX buffer cache.");
  readonly mlxLiveHandles = new Gauge("pensieve_mlx_live_handles", "MLX array handles alive in the engine.");
  readonly engineRssBytes = new Gauge("pensieve_engine_resident_bytes", "Resident memory of the engine process.");
  readonly serverRssBytes = new Gauge("pensieve_server_resident_bytes", "Resident memory of the server process.");
  readonly engineUp = new Gauge("pensieve_engine_up", "1 when the engine has a model loaded and serves.");
  readonly engineRestarts = new Counter("pensieve_engine_restarts_total", "Times the engine process was restarted.");
  readonly streamsOpen = new Gauge("pensieve_open_streams", "Requests the server is streaming now.");
  // Data parallelism (--replicas): one series per replica.
  readonly replicaUp = new Gauge("pensieve_replica_up", "1 when the replica's engine serves.");
  readonly replicaStreams = new Gauge("pensieve_replica_open_streams", "Requests streaming from the replica.");
  readonly replicaRestarts = new Gauge("pensieve_replica_restarts", "Times the replica's engine was restarted.");
  readonly replicaRouted = new Gauge(
    "pensieve_replica_routed",
    "Requests routed to the replica, by prefix affinity or load.",
  );
  readonly replicaRunning = new Gauge("pensieve_replica_active_sequences", "Sequences decoding on the replica.");
  readonly replicaWaiting = new Gauge("pensieve_replica_queue_depth", "Requests waiting on the replica.");
  readonly replicaKvCacheBytes = new Gauge("pensieve_replica_kv_cache_bytes", "KV cache bytes of the replica's batch.");
  readonly replicaPrefixCacheBytes = new Gauge(
    "pensieve_replica_prefix_cache_bytes",
    "Cached prefix bytes on the replica.",
  );

  all(): Metric[] {
    return Object.values(this).filter((m): m is Metric => m instanceof Metric);
  }

  render(): string {
    return `${this.all()
      .flatMap((m) => [...m.header(), ...m.lines()])
      .join("\n")}\n`;
  }
}
