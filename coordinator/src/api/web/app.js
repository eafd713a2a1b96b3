// strata's page: a streaming chat over /v1/chat/completions and a live view
// of the pool from /v1/pool. Plain DOM, no framework; model text is only
// ever set as textContent.
"use strict";

const KEY_STORE = "strata-api-key";
const $ = (id) => document.getElementById(id);
const chatHistory = [];
let poolTimer = null;

function apiKey() {
  return localStorage.getItem(KEY_STORE) || "";
}

function headers(json) {
  const h = {};
  if (json) h["content-type"] = "application/json";
  const key = apiKey();
  if (key) h["authorization"] = "Bearer " + key;
  return h;
}

class Unauthorized extends Error {}

// A 401 opens the key form instead of failing silently.
async function api(path, options) {
  const resp = await fetch(path, options || { headers: headers(false) });
  if (resp.status === 401) {
    askForKey(apiKey() ? "that key was refused" : "");
    throw new Unauthorized("API key required");
  }
  return resp;
}

function askForKey(error) {
  $("key-form").hidden = false;
  $("key-error").textContent = error;
  $("key").focus();
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    return (body.error && body.error.message) || JSON.stringify(body);
  } catch (_) {
    return resp.status + " " + resp.statusText;
  }
}

async function loadModels() {
  const resp = await api("/v1/models");
  if (!resp.ok) throw new Error(await errorText(resp));
  const body = await resp.json();
  const select = $("model");
  const chosen = select.value;
  select.textContent = "";
  for (const m of body.data) {
    const opt = document.createElement("option");
    opt.value = m.id;
    opt.textContent = m.state ? `${m.id} (${m.state})` : m.id;
    select.appendChild(opt);
  }
  if (chosen) select.value = chosen;
  if (!select.value && select.options.length) select.selectedIndex = 0;
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  $("messages").appendChild(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return div;
}

// Reads an SSE body; calls onData with each `data:` payload.
async function readEvents(resp, onData) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, end).trim();
      buffer = buffer.slice(end + 1);
      if (line.startsWith("data:")) onData(line.slice(5).trim());
    }
  }
}

async function send(event) {
  event.preventDefault();
  const text = $("prompt").value.trim();
  if (!text) return;
  $("prompt").value = "";
  addMessage("user", text);
  chatHistory.push({ role: "user", content: text });
  const out = addMessage("assistant", "");
  out.classList.add("streaming");
  $("send").disabled = true;
  const started = performance.now();
  let first = null;
  let tokens = 0;
  let chunks = 0;
  let reply = "";
  try {
    const resp = await api("/v1/chat/completions", {
      method: "POST",
      headers: headers(true),
      body: JSON.stringify({
        model: $("model").value,
        messages: chatHistory,
        stream: true,
        stream_options: { include_usage: true },
        max_tokens: Number($("max-tokens").value) || 256,
        temperature: Number($("temperature").value),
      }),
    });
    if (!resp.ok) throw new Error(await errorText(resp));
    await readEvents(resp, (data) => {
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) tokens = chunk.usage.completion_tokens;
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) {
        if (first === null) first = performance.now();
        chunks += 1;
        reply += delta.content;
        out.textContent = reply;
        $("messages").scrollTop = $("messages").scrollHeight;
      }
    });
    chatHistory.push({ role: "assistant", content: reply });
    const n = tokens || chunks;
    const end = performance.now();
    // Decode rate from the first token on; the wait before it is the prompt.
    const decodeS = first === null ? 0 : (end - first) / 1000;
    const tps = n > 1 && decodeS > 0 ? ((n - 1) / decodeS).toFixed(1) : "–";
    $("tps").textContent =
      `${n} tokens, ${tps} tok/s, first token after ${(((first || end) - started) / 1000).toFixed(2)} s`;
    $("tps").dataset.tokens = String(n);
  } catch (e) {
    chatHistory.pop();
    if (!(e instanceof Unauthorized)) addMessage("error", String(e.message || e));
    if (!reply) out.remove();
  } finally {
    out.classList.remove("streaming");
    out.classList.add("done");
    $("send").disabled = false;
  }
}

function mib(bytes) {
  return bytes ? (bytes / 1048576).toFixed(0) + " MiB" : "–";
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function layerBar(first, end, total) {
  const bar = document.createElement("div");
  bar.className = "bar";
  const span = document.createElement("span");
  span.style.left = (100 * first) / total + "%";
  span.style.width = (100 * (end - first)) / total + "%";
  bar.appendChild(span);
  return bar;
}

function renderModel(m) {
  const div = document.createElement("div");
  div.className = "model";
  div.dataset.model = m.id;
  const h = document.createElement("h3");
  h.textContent = m.id + " ";
  const state = document.createElement("span");
  state.className = "state state-" + m.state;
  state.textContent = m.state;
  h.appendChild(state);
  div.appendChild(h);
  const summary = document.createElement("div");
  summary.className = "summary";
  const parts = [];
  if (m.message) parts.push(m.message);
  if (m.state === "ready" || m.state === "recovering") {
    parts.push(`${(m.tokens_per_second || 0).toFixed(1)} tok/s`);
    parts.push(`${m.sequences_live} running, ${m.requests_queued} queued`);
    parts.push(`${m.failovers} failover(s)`);
  }
  summary.textContent = parts.join(" · ");
  div.appendChild(summary);
  if (!m.stages || !m.stages.length) return div;
  const table = document.createElement("table");
  const head = table.insertRow();
  for (const t of ["stage", "worker", "layers", "", "memory used of offered", "KV blocks", "link", "compute tok/s", "est. tok/s"]) {
    const th = document.createElement("th");
    th.textContent = t;
    head.appendChild(th);
  }
  m.stages.forEach((s, i) => {
    const row = table.insertRow();
    row.className = "stage";
    row.dataset.layers = `${s.first_layer}..${s.end_layer}`;
    cell(row, String(i));
    const worker = cell(row, s.addr, "worker");
    const device = document.createElement("small");
    device.textContent = `${s.backend}: ${s.device_name}`;
    worker.appendChild(device);
    cell(row, `${s.first_layer}..${s.end_layer}`, "layers");
    row.insertCell().appendChild(layerBar(s.first_layer, s.end_layer, m.n_layers || s.end_layer));
    cell(row, `${mib(s.memory_planned_bytes)} of ${mib(s.memory_offered_bytes)}`);
    cell(row, s.error ? s.error : `${s.kv_blocks_used} used, ${s.kv_blocks_free} free`);
    cell(row, s.link_ms == null ? "–" : `${s.link_ms.toFixed(2)} ms`);
    // Measured on the stage (positions per second of its own compute).
    cell(row, s.tokens_per_second ? s.tokens_per_second.toFixed(0) : "–", "stage-tps");
    cell(row, s.est_tokens_per_second ? s.est_tokens_per_second.toFixed(0) : "–");
  });
  div.appendChild(table);
  return div;
}

async function refreshPool() {
  try {
    const resp = await api("/v1/pool");
    if (!resp.ok) throw new Error(await errorText(resp));
    const body = await resp.json();
    const root = $("pool-body");
    root.textContent = "";
    for (const m of body.models) root.appendChild(renderModel(m));
    // Models load and unload on their own (--config): keep the picker's
    // states current.
    for (const opt of $("model").options) {
      const m = body.models.find((x) => x.id === opt.value);
      if (m) opt.textContent = `${m.id} (${m.state})`;
    }
    const picked = body.models.find((m) => m.id === $("model").value);
    $("model-state").textContent = picked ? picked.state : "";
  } catch (e) {
    if (!(e instanceof Unauthorized)) $("pool-body").textContent = String(e.message || e);
  }
}

async function start() {
  try {
    await loadModels();
  } catch (e) {
    if (!(e instanceof Unauthorized)) addMessage("error", String(e.message || e));
    return;
  }
  $("key-form").hidden = true;
  await refreshPool();
  clearInterval(poolTimer);
  poolTimer = setInterval(refreshPool, 1500);
}

$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  localStorage.setItem(KEY_STORE, $("key").value.trim());
  $("key").value = "";
  start();
});
$("key-button").addEventListener("click", () => askForKey(""));
$("chat-form").addEventListener("submit", send);
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) send(e);
});
$("clear").addEventListener("click", () => {
  chatHistory.length = 0;
  $("messages").textContent = "";
  $("tps").textContent = "";
});
$("model").addEventListener("change", refreshPool);
start();
