// The Hugging Face Hub client, the model cache, aliases (the memory plan lives in src/engine/memory-plan.ts).
export * from "./aliases";
export * from "./cache";
export * from "./client";
export * from "./download";
export * from "./errors";
export * from "./filter";
export * from "./format";
export * from "./progress";
export * from "./settings";
