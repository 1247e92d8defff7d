// The built-in chat page: one self-contained HTML document (inline CSS and
// JS, no external resources) that talks to the server over /v1/ws. Text from
// the model is always inserted as text, never as HTML.

const escapeHtml = (s: string) =>
  s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c] as string);

export function chatPage(modelId: string): string {
  return PAGE.replaceAll("{{MODEL}}", escapeHtml(modelId));
}

const STYLE = `
:root {
  --bg: #f6f7f9; --panel: #ffffff; --text: #1d2330; --muted: #687085; --border: #dde1e8;
  --user: #2f6feb; --user-text: #ffffff; --bot: #ffffff; --accent: #2f6feb; --danger: #c93c37;
  --ok: #2da44e; --warn: #bf8700;
  color-scheme: light dark;
}
@media (prefers-color-scheme: dark) {
  :root { --bg: #0f1115; --panel: #171a21; --text: #e6e8ee; --muted: #9099ab; --border: #2a2f3a;
    --user: #2f6feb; --bot: #1d212a; --accent: #4c8dff; --danger: #f26b66; }
}
* { box-sizing: border-box; }
html, body { height: 100%; margin: 0; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; background: var(--bg); color: var(--text);
  display: flex; flex-direction: column; }
header { display: flex; align-items: center; gap: 12px; padding: 10px 16px; background: var(--panel);
  border-bottom: 1px solid var(--border); flex-wrap: wrap; }
header h1 { font-size: 16px; margin: 0; font-weight: 650; letter-spacing: .2px; }
#model { font: 13px ui-monospace, SFMono-Regular, Menlo, monospace; color: var(--muted); background: var(--bg);
  border: 1px solid var(--border); border-radius: 6px; padding: 2px 8px; }
#status { display: inline-flex; align-items: center; gap: 6px; font-size: 13px; color: var(--muted); margin-left: auto; }
#status::before { content: ""; width: 8px; height: 8px; border-radius: 50%; background: var(--warn); }
#status[data-state="open"]::before { background: var(--ok); }
#status[data-state="closed"]::before { background: var(--danger); }
details { position: relative; }
summary { cursor: pointer; font-size: 13px; color: var(--muted); list-style: none; padding: 4px 8px;
  border: 1px solid var(--border); border-radius: 6px; }
summary::-webkit-details-marker { display: none; }
.settings { position: absolute; right: 0; top: 34px; z-index: 5; width: 300px; background: var(--panel);
  border: 1px solid var(--border); border-radius: 10px; padding: 12px; box-shadow: 0 8px 24px rgba(0,0,0,.12);
  display: grid; gap: 10px; }
.settings label { display: grid; gap: 4px; font-size: 13px; color: var(--muted); }
.settings input, .settings textarea { font: inherit; color: var(--text); background: var(--bg);
  border: 1px solid var(--border); border-radius: 6px; padding: 6px 8px; }
main { flex: 1; overflow-y: auto; padding: 20px 16px; }
#messages { max-width: 820px; margin: 0 auto; display: flex; flex-direction: column; gap: 14px; }
.empty { text-align: center; color: var(--muted); margin-top: 18vh; }
.msg { max-width: 85%; padding: 10px 14px; border-radius: 14px; white-space: pre-wrap; overflow-wrap: anywhere;
  border: 1px solid var(--border); }
.msg.user { align-self: flex-end; background: var(--user); color: var(--user-text); border-color: transparent;
  border-bottom-right-radius: 4px; }
.msg.assistant { align-self: flex-start; background: var(--bot); border-bottom-left-radius: 4px; }
.msg.assistant.streaming .text::after { content: "\\258D"; animation: blink 1s steps(1) infinite; color: var(--accent); }
@keyframes blink { 50% { opacity: 0; } }
.msg .meta { display: block; margin-top: 6px; font-size: 12px; color: var(--muted); white-space: normal; }
.msg.error { align-self: stretch; max-width: 100%; background: transparent; color: var(--danger);
  border-color: var(--danger); font-size: 14px; }
footer { background: var(--panel); border-top: 1px solid var(--border); padding: 12px 16px; }
form { max-width: 820px; margin: 0 auto; display: flex; gap: 8px; align-items: flex-end; }
#input { flex: 1; resize: none; min-height: 44px; max-height: 200px; font: inherit; color: var(--text);
  background: var(--bg); border: 1px solid var(--border); border-radius: 10px; padding: 10px 12px; }
#input:focus { outline: 2px solid var(--accent); outline-offset: -1px; }
button { font: inherit; font-weight: 600; border: 0; border-radius: 10px; padding: 0 18px; height: 44px; cursor: pointer; }
button:disabled { opacity: .5; cursor: default; }
#send { background: var(--accent); color: #fff; }
#stop { background: var(--danger); color: #fff; }
#clear { background: transparent; color: var(--muted); border: 1px solid var(--border); height: 30px; padding: 0 10px;
  font-size: 13px; font-weight: 500; border-radius: 6px; }
[hidden] { display: none !important; }
`;

// Plain ES2017, no template literals: this text sits inside a TypeScript template string.
const SCRIPT = `
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var list = $("messages"), input = $("input"), sendButton = $("send"), stopButton = $("stop");
  var statusEl = $("status"), modelEl = $("model");
  var settings = { temperature: $("temperature"), maxTokens: $("max-tokens"), system: $("system") };
  var history = [];
  var socket = null, retryMs = 500, counter = 0;
  var current = null; // { id, bubble, textEl, text }
  var apiKey = new URLSearchParams(location.search).get("api_key");

  ["temperature", "maxTokens", "system"].forEach(function (name) {
    var saved = localStorage.getItem("pensieve." + name);
    if (saved !== null) settings[name].value = saved;
    settings[name].addEventListener("change", function () { localStorage.setItem("pensieve." + name, settings[name].value); });
  });

  function setStatus(state, text) { statusEl.dataset.state = state; statusEl.textContent = text; }

  function scrollDown() { var m = list.parentElement; m.scrollTop = m.scrollHeight; }

  function addBubble(role, text) {
    var empty = list.querySelector(".empty");
    if (empty) empty.remove();
    var el = document.createElement("div");
    el.className = "msg " + role;
    var body = document.createElement("span");
    body.className = "text";
    body.textContent = text;
    el.appendChild(body);
    list.appendChild(el);
    scrollDown();
    return el;
  }

  function addMeta(el, text) {
    var meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = text;
    el.appendChild(meta);
  }

  function showError(text) { addBubble("error", text); }

  function setBusy(busy) {
    sendButton.hidden = busy;
    stopButton.hidden = !busy;
    stopButton.disabled = false;
    if (!busy) input.focus();
  }

  function connect() {
    var url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/v1/ws";
    if (apiKey) url += "?api_key=" + encodeURIComponent(apiKey);
    setStatus("connecting", "connecting…");
    socket = new WebSocket(url);
    socket.onopen = function () { retryMs = 500; setStatus("open", "connected"); sendButton.disabled = false; };
    socket.onclose = function () {
      setStatus("closed", "disconnected");
      sendButton.disabled = true;
      if (current) finish("connection lost", true);
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 8000);
    };
    socket.onmessage = function (event) {
      var msg;
      try { msg = JSON.parse(event.data); } catch (e) { return; }
      if (msg.type === "start" && msg.model) modelEl.textContent = msg.model;
      if (!current || msg.id !== current.id) {
        if (msg.type === "error" && !msg.id) showError(msg.message);
        return;
      }
      if (msg.type === "delta") {
        current.text += msg.text;
        current.textEl.textContent = current.text;
        scrollDown();
      } else if (msg.type === "done") {
        var note = msg.finish_reason === "cancelled" ? "stopped" : msg.finish_reason === "length" ? "max tokens reached" : "";
        var u = msg.usage || {};
        finish((note ? note + " · " : "") + (u.completion_tokens || 0) + " tokens", false);
      } else if (msg.type === "error") {
        finish(null, true);
        showError("Error " + msg.status + ": " + msg.message);
      }
    };
  }

  function finish(note, failed) {
    var c = current;
    current = null;
    c.bubble.classList.remove("streaming");
    if (note) addMeta(c.bubble, note);
    if (!failed && c.text) history.push({ role: "assistant", content: c.text });
    else history.pop(); // the unanswered user turn
    if (failed && !c.text) c.bubble.remove();
    setBusy(false);
  }

  function send() {
    var text = input.value.trim();
    if (!text || current || !socket || socket.readyState !== WebSocket.OPEN) return;
    input.value = "";
    autosize();
    addBubble("user", text);
    history.push({ role: "user", content: text });
    var bubble = addBubble("assistant streaming", "");
    current = { id: "c" + (++counter), bubble: bubble, textEl: bubble.querySelector(".text"), text: "" };
    var messages = history.slice();
    var system = settings.system.value.trim();
    if (system) messages.unshift({ role: "system", content: system });
    var request = { type: "chat", id: current.id, messages: messages };
    var temperature = parseFloat(settings.temperature.value);
    if (!isNaN(temperature)) request.temperature = temperature;
    var maxTokens = parseInt(settings.maxTokens.value, 10);
    if (maxTokens > 0) request.max_tokens = maxTokens;
    socket.send(JSON.stringify(request));
    setBusy(true);
  }

  function stop() {
    if (!current) return;
    stopButton.disabled = true;
    socket.send(JSON.stringify({ type: "cancel", id: current.id }));
  }

  function autosize() { input.style.height = "auto"; input.style.height = Math.min(input.scrollHeight, 200) + "px"; }

  $("composer").addEventListener("submit", function (e) { e.preventDefault(); send(); });
  stopButton.addEventListener("click", stop);
  $("clear").addEventListener("click", function () {
    if (current) stop();
    history = [];
    list.innerHTML = '<p class="empty">Ask anything. Enter sends, Shift+Enter adds a line.</p>';
  });
  input.addEventListener("input", autosize);
  input.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
  });
  connect();
  input.focus();
})();
`;

const PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Pensieve · {{MODEL}}</title>
<style>${STYLE}</style>
</head>
<body>
<header>
  <h1>Pensieve</h1>
  <span id="model" title="The model this server runs">{{MODEL}}</span>
  <span id="status" data-state="connecting">connecting…</span>
  <button id="clear" type="button" title="Start a new conversation">New chat</button>
  <details>
    <summary>Settings</summary>
    <div class="settings">
      <label>Temperature (0 = always the most likely token)
        <input id="temperature" type="number" min="0" max="2" step="0.1" value="0"></label>
      <label>Max tokens per answer
        <input id="max-tokens" type="number" min="1" step="1" value="512"></label>
      <label>System prompt
        <textarea id="system" rows="3" placeholder="Optional"></textarea></label>
    </div>
  </details>
</header>
<main>
  <div id="messages" aria-live="polite"><p class="empty">Ask anything. Enter sends, Shift+Enter adds a line.</p></div>
</main>
<footer>
  <form id="composer">
    <textarea id="input" rows="1" placeholder="Message {{MODEL}}…" aria-label="Message" autocomplete="off"></textarea>
    <button id="send" type="submit" disabled>Send</button>
    <button id="stop" type="button" hidden>Stop</button>
  </form>
</footer>
<script>${SCRIPT}</script>
</body>
</html>
`;
