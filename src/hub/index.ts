// The Hugging Face Hub client, the model cache, aliases and the memory estimate.
export * from "./aliases";
export * from "./cache";
export * from "./client";
export * from "./download";
export * from "./errors";
export * from "./filter";
export * from "./format";
export * from "./memory";
export * from "./progress";
export * from "./settings";
