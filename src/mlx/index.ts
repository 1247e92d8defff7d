// The typed MLX binding: import * as mx from "../mlx".
export * from "./array";
export * from "./ops";
