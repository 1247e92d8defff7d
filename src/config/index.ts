// Pensieve's configuration: schema and defaults (schema.ts), loading and writing (load.ts).
export * from "./load";
export * from "./schema";
