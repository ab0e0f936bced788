// genrnn playground: plain JavaScript, no build step.
// Text streams in through fetch() + ReadableStream on the server-sent events of
// POST /v1/completions (EventSource cannot POST).
"use strict";

const SWEEP = [0.3, 0.8, 1.0, 1.3, 1.8];
const $ = (id) => document.getElementById(id);
let apiKey = localStorage.getItem("genrnn-api-key") || "";
let running = null; // the AbortController of what is generating now

function headers() {
  const h = { "Content-Type": "application/json" };
  if (apiKey) h.Authorization = "Bearer " + apiKey;
  return h;
}

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

function setStatus(text) {
  $("status").textContent = text;
}

async function loadModels() {
  const res = await fetch("/v1/models", { headers: headers() });
  if (res.status === 401) {
    $("key-box").hidden = false;
    setStatus("this server needs an API key");
    return;
  }
  if (!res.ok) throw new Error("could not list the models: HTTP " + res.status);
  const { data } = await res.json();
  const select = $("model");
  select.replaceChildren(...data.map((m) => {
    const opt = document.createElement("option");
    const g = m.genrnn || {};
    opt.value = m.id;
    opt.textContent = m.id;
    opt.title = `${g.num_layers}x${g.hidden_size} ${String(g.cell || g.type).toUpperCase()}, ${g.tokenizer} tokens`;
    return opt;
  }));
  $("model-picker").hidden = data.length < 2;
  const first = data[0] && data[0].genrnn;
  setStatus(data.length === 1 && first
    ? `${data[0].id}: ${first.num_layers}x${first.hidden_size} ${String(first.cell || first.type).toUpperCase()}, ${first.tokenizer} tokens`
    : `${data.length} models`);
  const health = await fetch("/healthz").then((r) => r.json()).catch(() => null);
  if (health && health.limits) $("max-tokens").max = health.limits.max_tokens;
}

function settings(temperature) {
  const body = {
    model: $("model").value || undefined,
    prompt: $("prompt").value,
    temperature: temperature ?? Number($("temperature").value),
    top_p: Number($("top-p").value),
    max_tokens: Number($("max-tokens").value) || 300,
    stream: true,
    stream_options: { include_usage: true },
  };
  const topK = parseInt($("top-k").value, 10);
  if (topK > 0) body.top_k = topK;
  const seed = $("seed").value.trim();
  if (seed !== "") body.seed = parseInt(seed, 10);
  return body;
}

// Stream one completion; onText(piece) gets the text as it comes. Resolves to
// {finish, tokens} at the end of the stream.
async function streamCompletion(body, onText, signal) {
  const res = await fetch("/v1/completions", { method: "POST", headers: headers(), body: JSON.stringify(body), signal });
  if (!res.ok) {
    const err = await res.json().catch(() => null);
    throw new Error((err && err.error && err.error.message) || "HTTP " + res.status);
  }
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  const result = { finish: null, tokens: null };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return result;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return result;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) result.tokens = chunk.usage.completion_tokens;
        for (const choice of chunk.choices) {
          if (choice.text) onText(choice.text);
          if (choice.finish_reason) result.finish = choice.finish_reason;
        }
      }
    }
  }
}

function describe(result, seconds) {
  const rate = result.tokens && seconds > 0 ? `, ${Math.round(result.tokens / seconds)} tokens/s` : "";
  const why = result.finish === "length" ? "length reached" : result.finish === "stop" ? "end of text" : "stopped";
  return `${result.tokens ?? "?"} tokens in ${seconds.toFixed(2)} s${rate} — ${why}`;
}

function begin() {
  if (running) running.abort();
  running = new AbortController();
  showError("");
  $("stop").disabled = false;
  $("generate").disabled = true;
  $("sweep").disabled = true;
  return running;
}

function end(controller) {
  if (running !== controller) return;
  running = null;
  $("stop").disabled = true;
  $("generate").disabled = false;
  $("sweep").disabled = false;
}

function showView(name) {
  const single = name === "single";
  $("single-view").hidden = !single;
  $("sweep-view").hidden = single;
  $("tab-single").classList.toggle("active", single);
  $("tab-sweep").classList.toggle("active", !single);
}

async function generate() {
  const controller = begin();
  showView("single");
  const out = $("output-text");
  const pre = $("output");
  $("output-prompt").textContent = $("prompt").value;
  out.textContent = "";
  $("stats").textContent = "generating…";
  pre.classList.add("running");
  const started = performance.now();
  try {
    const result = await streamCompletion(settings(), (piece) => {
      out.textContent += piece;
      pre.scrollTop = pre.scrollHeight;
    }, controller.signal);
    $("stats").textContent = describe(result, (performance.now() - started) / 1000);
  } catch (e) {
    if (e.name === "AbortError") $("stats").textContent = "stopped";
    else { showError(e.message); $("stats").textContent = ""; }
  } finally {
    pre.classList.remove("running");
    end(controller);
  }
}

function buildPanels() {
  $("sweep-panels").replaceChildren(...SWEEP.map((t, i) => {
    const panel = document.createElement("div");
    panel.className = "panel sweep-panel";
    panel.id = `sweep-panel-${i}`;
    panel.dataset.temperature = String(t);
    panel.innerHTML = `<h3>T = ${t.toFixed(1)} <small id="sweep-stats-${i}"></small></h3>` +
      `<pre class="text" id="sweep-text-${i}"><span class="prompt-text"></span><span class="generated"></span></pre>`;
    return panel;
  }));
}

async function sweep() {
  const controller = begin();
  showView("sweep");
  buildPanels();
  $("sweep-stats").textContent = "generating…";
  const prompt = $("prompt").value;
  const seed = $("seed").value.trim() === "" ? Math.floor(Math.random() * 2 ** 31) : undefined;
  const started = performance.now();
  const runs = SWEEP.map(async (t, i) => {
    const pre = $(`sweep-text-${i}`);
    const out = pre.querySelector(".generated");
    pre.querySelector(".prompt-text").textContent = prompt;
    pre.classList.add("running");
    const body = settings(t);
    if (seed !== undefined) body.seed = seed; // one seed for all five, so they differ by temperature only
    try {
      const result = await streamCompletion(body, (piece) => {
        out.textContent += piece;
        pre.scrollTop = pre.scrollHeight;
      }, controller.signal);
      $(`sweep-stats-${i}`).textContent = `${result.tokens ?? "?"} tok`;
    } catch (e) {
      if (e.name !== "AbortError") showError(`T = ${t}: ${e.message}`);
    } finally {
      pre.classList.remove("running");
    }
  });
  await Promise.all(runs);
  $("sweep-stats").textContent = `five streams in ${((performance.now() - started) / 1000).toFixed(2)} s`;
  end(controller);
}

function init() {
  const bind = (id, fmt) => {
    const input = $(id);
    const update = () => { $(id + "-value").textContent = fmt(Number(input.value)); };
    input.addEventListener("input", update);
    update();
  };
  bind("temperature", (v) => v.toFixed(2));
  bind("top-p", (v) => v.toFixed(2));
  $("generate").addEventListener("click", generate);
  $("sweep").addEventListener("click", sweep);
  $("stop").addEventListener("click", () => { if (running) running.abort(); });
  $("tab-single").addEventListener("click", () => showView("single"));
  $("tab-sweep").addEventListener("click", () => showView("sweep"));
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); generate(); }
  });
  $("api-key").value = apiKey;
  $("api-key").addEventListener("change", () => {
    apiKey = $("api-key").value.trim();
    localStorage.setItem("genrnn-api-key", apiKey);
    loadModels().catch((e) => showError(e.message));
  });
  buildPanels();
  loadModels().catch((e) => { setStatus("offline"); showError(e.message); });
}

init();
