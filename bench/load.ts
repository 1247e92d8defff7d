// Load benchmark (continuous batching): N concurrent streaming clients over HTTP.
// Filled in with the scheduler work; see bench/README.md.
export async function benchLoad(_argv: string[]): Promise<void> {
  throw new Error("the load benchmark is not written yet");
}
