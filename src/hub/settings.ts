// Hugging Face Hub settings from the environment, with the same variables and
// defaults as huggingface_hub so a cache and a token set up for Python tools
// are found here too.
import { existsSync, readFileSync } from "node:fs";
import { homedir } from "node:os";
import { join, resolve } from "node:path";

export type Env = Record<string, string | undefined>;

const DEFAULT_ENDPOINT = "https://huggingface.co";

export interface HubSettings {
  /** HF_ENDPOINT without a trailing slash. */
  endpoint: string;
  /** HF_TOKEN, else the token file `huggingface-cli login` writes; null when there is none. */
  token: string | null;
  /** Where the token came from, for messages (never the token itself). */
  tokenSource: string | null;
  /** HF_HUB_OFFLINE: no network at all, the cache only. */
  offline: boolean;
  /** HF_HOME (default $XDG_CACHE_HOME/huggingface, ~/.cache/huggingface). */
  hfHome: string;
  /** HF_HUB_CACHE (default $HF_HOME/hub): the models--org--name folders. */
  cacheDir: string;
}

function expandHome(path: string, env: Env): string {
  if (path === "~" || path.startsWith("~/")) return join(env.HOME || homedir(), path.slice(1));
  return resolve(path);
}

/** huggingface_hub's reading of boolean variables. */
function envFlag(value: string | undefined): boolean {
  return value !== undefined && ["1", "true", "yes", "on"].includes(value.trim().toLowerCase());
}

export function hubSettings(env: Env = process.env): HubSettings {
  const home = env.HOME || homedir();
  const cacheHome = env.XDG_CACHE_HOME ? expandHome(env.XDG_CACHE_HOME, env) : join(home, ".cache");
  const hfHome = env.HF_HOME ? expandHome(env.HF_HOME, env) : join(cacheHome, "huggingface");
  const cacheVar = env.HF_HUB_CACHE || env.HUGGINGFACE_HUB_CACHE;
  const cacheDir = cacheVar ? expandHome(cacheVar, env) : join(hfHome, "hub");

  let token: string | null = null;
  let tokenSource: string | null = null;
  for (const name of ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"]) {
    const value = env[name]?.trim();
    if (value) {
      token = value;
      tokenSource = name;
      break;
    }
  }
  if (!token) {
    const tokenFile = env.HF_TOKEN_PATH ? expandHome(env.HF_TOKEN_PATH, env) : join(hfHome, "token");
    if (existsSync(tokenFile)) {
      const value = readFileSync(tokenFile, "utf8").trim();
      if (value) {
        token = value;
        tokenSource = tokenFile;
      }
    }
  }

  const endpoint = (env.HF_ENDPOINT?.trim() || DEFAULT_ENDPOINT).replace(/\/+$/, "");
  return { endpoint, token, tokenSource, offline: envFlag(env.HF_HUB_OFFLINE), hfHome, cacheDir };
}
