// The text layer: tokenizers, chat templates, streaming detokenization and stop strings.
// Nothing here loads MLX, so the HTTP server process can use it directly.
export * from "./chat-template.ts";
export * from "./detokenizer.ts";
export * from "./gguf-tokenizer.ts";
export * from "./stop.ts";
export * from "./token-bytes.ts";
export * from "./tokenizer.ts";
export * from "./tokenizer-json.ts";
