// Prompts for `bun run bench spec`, written for Pensieve (no outside source):
// code edits whose answer repeats most of a file, tool-call-style answers that
// quote a path and a snippet, and one control whose answer copies nothing.

export interface SpecPrompt {
  name: string;
  kind: "edit" | "tool-call" | "control";
  user: string;
}

const PY_FILE = `import json
from pathlib import Path


def load_settings(path):
    with open(path) as f:
        return json.load(f)


def save_settings(path, settings):
    with open(path, "w") as f:
        json.dump(settings, f, indent=2)


def merge_settings(base, override):
    merged = dict(base)
    for key, value in override.items():
        merged[key] = value
    return merged


def main():
    settings = load_settings("settings.json")
    settings = merge_settings(settings, {"theme": "dark"})
    save_settings("settings.json", settings)


if __name__ == "__main__":
    main()
`;

const TS_FILE = `export interface User {
  id: number;
  name: string;
  email: string;
}

export function findUser(users: User[], id: number): User | undefined {
  for (const user of users) {
    if (user.id === id) return user;
  }
  return undefined;
}

export function userNames(users: User[]): string[] {
  return users.map((user) => user.name);
}

export function byEmail(users: User[], email: string): User | undefined {
  return users.find((user) => user.email === email);
}
`;

const CONFIG_FILE = `{
  "name": "inventory-service",
  "version": "1.4.0",
  "port": 8080,
  "database": {
    "host": "localhost",
    "port": 5432,
    "user": "inventory",
    "pool": 10
  },
  "logging": {
    "level": "info",
    "format": "json"
  }
}
`;

const JS_FILE = `function total(items) {
  let sum = 0;
  for (const item of items) {
    sum += item.price * item.quantity;
  }
  return sum;
}

function formatPrice(value) {
  return "$" + value.toFixed(2);
}

function receipt(items) {
  const lines = items.map((item) => item.name + ": " + formatPrice(item.price * item.quantity));
  lines.push("Total: " + formatPrice(total(items)));
  return lines.join("\\n");
}

module.exports = { total, formatPrice, receipt };
`;

export const SPEC_PROMPTS: SpecPrompt[] = [
  {
    name: "py-rename",
    kind: "edit",
    user: `Here is a file, settings.py:\n\n\`\`\`python\n${PY_FILE}\`\`\`\n\nRename the function merge_settings to combine_settings everywhere. Reply with the whole updated file in a code block.`,
  },
  {
    name: "ts-add-field",
    kind: "edit",
    user: `Here is a file, users.ts:\n\n\`\`\`ts\n${TS_FILE}\`\`\`\n\nAdd a field \`active: boolean\` to the User interface. Reply with the whole updated file in a code block.`,
  },
  {
    name: "json-port",
    kind: "edit",
    user: `Here is a file, config.json:\n\n\`\`\`json\n${CONFIG_FILE}\`\`\`\n\nChange the service port to 9090 and the logging level to debug. Reply with the whole updated file.`,
  },
  {
    name: "js-comment",
    kind: "edit",
    user: `Here is a file, receipt.js:\n\n\`\`\`js\n${JS_FILE}\`\`\`\n\nAdd a one-line comment above each function saying what it does. Reply with the whole updated file in a code block.`,
  },
  {
    name: "tool-write-file",
    kind: "tool-call",
    user: `Here is a file, users.ts:\n\n\`\`\`ts\n${TS_FILE}\`\`\`\n\nCall the tool write_file to save this file unchanged under src/models/users.ts. Answer only with the call as JSON: {"name": "write_file", "arguments": {"path": ..., "content": ...}}.`,
  },
  {
    name: "tool-edit-snippet",
    kind: "tool-call",
    user: `Here is a file, settings.py:\n\n\`\`\`python\n${PY_FILE}\`\`\`\n\nCall the tool replace_in_file to change the indent from 2 to 4 in save_settings. Answer only with the call as JSON: {"name": "replace_in_file", "arguments": {"path": "settings.py", "old": <the function's current lines>, "new": <the new lines>}}.`,
  },
  {
    name: "control-story",
    kind: "control",
    user: "Write a short story about a lighthouse keeper who finds a message in a bottle.",
  },
];
