// genrnn playground: plain JavaScript, no build step.
// Text streams in through fetch() + ReadableStream on the server-sent events of
// POST /v1/completions (EventSource cannot POST). A label-conditioned model
// gets a label picker (its label goes out as `condition`); a captioner gets an
// image drop zone, and its images go to POST /v1/captions as base64 JSON; a
// sequence-to-sequence model (condition kind "text") takes its source sentence
// as the prompt, decoded by beam search (`beam`) or sampled. Surprise scores
// the prompt itself (`echo` + `logprobs`, no tokens generated) and shows what
// the model expects next at five temperatures.
"use strict";

const SWEEP = [0.3, 0.8, 1.0, 1.3, 1.8];
const SWEEP_TITLE = "The same prompt at temperatures 0.3, 0.8, 1.0, 1.3 and 1.8";
const SURPRISE_TITLE = "How surprised the model is by each token of the prompt, and what it expects next at five temperatures";
const CAPTION_WORKERS = 4; // caption requests in flight at once (the server batches them)
const VIEWS = ["single", "sweep", "surprise", "labels", "captions"];
const SURPRISE_TOP = 5; // alternatives in a scored token's tooltip
const NEXT_TOP = 20; // next-token alternatives asked for (the most the server gives)
const $ = (id) => document.getElementById(id);
let apiKey = localStorage.getItem("genrnn-api-key") || "";
let running = null; // the AbortController of what is generating now
let models = new Map(); // id -> model card
let mode = "text"; // "text", or "image" for a captioner
const temperatures = { text: null, image: "0" }; // the slider of each mode: captions default to greedy
let seq2seq = false; // the selected model translates its prompt (a source sentence)
const prompts = { lm: null, seq2seq: "" }; // the prompt box of a language model, and of a seq2seq one
const PROMPT = {
  lm: { label: "Prompt", placeholder: "Type the start of a text (empty: a new document)", button: "Generate" },
  seq2seq: { label: "Source sentence", placeholder: "A sentence to translate (one per line: several)",
             button: "Translate" },
};
let captionCount = 0;

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

async function errorOf(res) {
  const err = await res.json().catch(() => null);
  return new Error((err && err.error && err.error.message) || "HTTP " + res.status);
}

// -- models ---------------------------------------------------------------------------

function conditionOf(card) {
  return (card && card.genrnn && card.genrnn.condition) || null;
}

function current() {
  return models.get($("model").value) || models.values().next().value || null;
}

function kind() {
  const c = conditionOf(current());
  return c ? c.kind : null;
}

function describeModel(card) {
  const g = card.genrnn || {};
  const net = g.hidden_size
    ? `${g.num_layers}x${g.hidden_size} ${String(g.cell || g.type).toUpperCase()}`
    : String(g.type);
  const c = g.condition;
  const cond = !c ? "" : c.kind === "label" ? `, from ${c.size} labels`
    : c.kind === "vector" ? `, from a vector of ${c.size}`
    : c.kind === "text" ? `, translates sources of up to ${c.max_length} tokens`
    : `, captions images (${c.size} px)`;
  return `${net}, ${g.tokenizer} tokens${cond}`;
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
  const before = select.value;
  models = new Map(data.map((m) => [m.id, m]));
  select.replaceChildren(...data.map((m) => {
    const opt = document.createElement("option");
    opt.value = m.id;
    opt.textContent = m.id;
    opt.title = describeModel(m);
    return opt;
  }));
  if (models.has(before)) select.value = before;
  $("model-picker").hidden = data.length < 2;
  applyModel(true);
  const health = await fetch("/healthz").then((r) => r.json()).catch(() => null);
  if (health && health.limits) $("max-tokens").max = health.limits.max_tokens;
}

// Show the controls the selected model takes: a label picker, a vector, a
// source sentence with its decoding (seq2seq), or (a captioner) the drop
// zone instead of the prompt.
function applyModel(reloaded) {
  const card = current();
  if (!card) return;
  setStatus(`${card.id}: ${describeModel(card)}`);
  const c = conditionOf(card);
  const labelled = !!c && c.kind === "label";
  const captioner = !!c && c.kind === "image";
  $("condition-box").hidden = !labelled;
  $("tab-labels").hidden = !labelled;
  if (labelled) fillLabels(c, reloaded);
  $("vector-box").hidden = !(c && c.kind === "vector");
  if (c && c.kind === "vector") $("vector-size").textContent = `${c.size} numbers`;
  setSeq2seq(!!c && c.kind === "text");
  setMode(captioner ? "image" : "text");
  refreshVisibility();
  const showing = VIEWS.find((v) => !$(`${v}-view`).hidden);
  if (captioner) showView("captions");
  else if (showing === "captions" || (showing === "labels" && !labelled)
           || ((showing === "sweep" || showing === "surprise") && seq2seq)) {
    showView("single");
  }
  updateButtons();
}

// A source sentence instead of a prompt: each kind keeps its own text in the box.
function setSeq2seq(next) {
  if (next === seq2seq) return;
  const box = $("prompt");
  prompts[seq2seq ? "seq2seq" : "lm"] = box.value;
  seq2seq = next;
  const now = seq2seq ? "seq2seq" : "lm";
  if (prompts[now] !== null) box.value = prompts[now];
  $("prompt-label").textContent = PROMPT[now].label;
  box.placeholder = PROMPT[now].placeholder;
  $("generate").textContent = PROMPT[now].button;
  $("output-prompt").textContent = "";
  $("output-text").textContent = "";
  $("stats").textContent = "";
}

function beamSearch() {
  return seq2seq && $("decoding-beam").checked;
}

// What the page shows for the mode (text or image), the kind of model and its decoding.
function refreshVisibility() {
  const image = mode === "image";
  const beam = beamSearch();
  const rules = [
    [".text-only", image], [".image-only", !image], [".lm-only", seq2seq], [".seq2seq-only", !seq2seq || image],
    [".sampling-only", beam], [".beam-only", !beam],
  ];
  const hide = new Map();
  for (const [selector, off] of rules) {
    for (const el of document.querySelectorAll(selector)) hide.set(el, (hide.get(el) || false) || off);
  }
  for (const [el, off] of hide) el.hidden = off;
}

function fillLabels(c, reloaded) {
  const select = $("condition");
  const key = JSON.stringify(c.labels);
  const same = select.dataset.labels === key;
  if (same && !reloaded) return; // the same labels as before: keep the choice
  const before = select.value;
  const options = c.labels.map((name, i) => {
    const opt = document.createElement("option");
    opt.value = name;
    const value = c.values && c.values[i];
    opt.textContent = value !== undefined && value !== name ? `${name} (${value})` : name;
    return opt;
  });
  const each = document.createElement("option");
  each.value = "";
  each.dataset.each = "true";
  each.textContent = "each label, side by side";
  select.replaceChildren(...options, each);
  select.dataset.labels = key;
  if (same) select.value = before;
}

function eachLabel() {
  if (kind() !== "label") return false;
  const opt = $("condition").selectedOptions[0];
  return !!opt && opt.dataset.each === "true";
}

function setMode(next) {
  if (next === mode) return;
  const slider = $("temperature");
  temperatures[mode] = slider.value;
  if (temperatures[next] !== null) slider.value = temperatures[next];
  slider.dispatchEvent(new Event("input"));
  mode = next;
  refreshVisibility();
}

// -- completions ------------------------------------------------------------------------

// The condition a request sends: `label` where given, else what the page shows.
function condition(label) {
  const k = kind();
  if (k === "label") return label ?? (eachLabel() ? undefined : $("condition").value);
  if (k === "vector") {
    const text = $("condition-vector").value.trim();
    if (text === "") return undefined; // the server says what it needs
    const numbers = text.split(/[\s,;]+/).filter(Boolean).map(Number);
    if (numbers.some((x) => !Number.isFinite(x))) {
      throw new Error("the condition vector must be numbers, separated by commas or spaces");
    }
    return numbers;
  }
  return undefined;
}

// The sources in the box: one per line (a blank line keeps its place in the
// outputs but is not sent). {prompt: a string or a list, lines: the box's
// line of each prompt, count: the lines}.
function sources() {
  const lines = $("prompt").value.replace(/\s+$/, "").split(/\r?\n/);
  const at = [];
  lines.forEach((line, i) => { if (line.trim() !== "") at.push(i); });
  if (at.length === 0) return { prompt: "", lines: [0], count: 1 }; // the server says what is missing
  const list = at.map((i) => lines[i]);
  return { prompt: list.length === 1 ? list[0] : list, lines: at, count: lines.length };
}

function translation() {
  const { prompt } = sources();
  const body = {
    model: $("model").value || undefined,
    prompt,
    max_tokens: Number($("max-tokens").value) || 300,
    stream: true,
    stream_options: { include_usage: true },
  };
  if (beamSearch()) {
    const text = $("beam").value.trim();
    const beam = Number(text);
    if (text === "" || !Number.isInteger(beam)) throw new Error("the beam size must be a whole number (1 is greedy)");
    body.beam = beam;
    const penalty = $("length-penalty").value.trim();
    if (penalty !== "" && Number(penalty) !== 1) body.length_penalty = Number(penalty);
  } else {
    body.temperature = Number($("temperature").value);
    body.top_p = Number($("top-p").value);
    const topK = parseInt($("top-k").value, 10);
    if (topK > 0) body.top_k = topK;
    const seed = $("seed").value.trim();
    if (seed !== "") body.seed = parseInt(seed, 10);
  }
  return body;
}

function settings(temperature, label) {
  if (seq2seq) return translation();
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
  const cond = condition(label);
  if (cond !== undefined) body.condition = cond;
  return body;
}

// Stream one completion; onText(piece, index) gets the text as it comes. Resolves to
// {finish, tokens} at the end of the stream.
async function streamCompletion(body, onText, signal) {
  const res = await fetch("/v1/completions", { method: "POST", headers: headers(), body: JSON.stringify(body), signal });
  if (!res.ok) throw await errorOf(res);
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
          if (choice.text) onText(choice.text, choice.index);
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

function updateButtons() {
  const busy = running !== null;
  const each = eachLabel();
  $("stop").disabled = !busy;
  $("generate").disabled = busy;
  $("sweep").disabled = busy || each;
  $("sweep").title = each ? "Choose one label for the temperature sweep" : SWEEP_TITLE;
  $("surprise").disabled = busy || each;
  $("surprise").title = each ? "Choose one label to score the text with" : SURPRISE_TITLE;
}

function begin() {
  if (running) running.abort();
  running = new AbortController();
  showError("");
  updateButtons();
  return running;
}

function end(controller) {
  if (running !== controller) return;
  running = null;
  updateButtons();
}

function showView(name) {
  for (const v of VIEWS) {
    const on = v === name;
    $(`${v}-view`).hidden = !on;
    const tab = $(`tab-${v}`);
    tab.classList.toggle("active", on);
    tab.setAttribute("aria-selected", String(on));
  }
}

async function generate() {
  if (mode !== "text") return;
  if (eachLabel()) return everyLabel();
  let body;
  try { body = settings(); } catch (e) { showError(e.message); return; }
  const controller = begin();
  showView("single");
  const out = $("output-text");
  const pre = $("output");
  // A seq2seq model's output is not a continuation of its source: one output
  // line per source line instead.
  const place = seq2seq ? sources() : null;
  const outputs = place ? new Array(place.count).fill("") : null;
  $("output-prompt").textContent = seq2seq ? "" : body.prompt;
  out.textContent = "";
  $("stats").textContent = seq2seq ? "translating…" : "generating…";
  pre.classList.add("running");
  const started = performance.now();
  try {
    const result = await streamCompletion(body, (piece, index) => {
      if (outputs) {
        outputs[place.lines[index] ?? 0] += piece;
        out.textContent = outputs.join("\n");
      } else out.textContent += piece;
      pre.scrollTop = pre.scrollHeight;
    }, controller.signal);
    const n = place && place.lines.length > 1 ? `${place.lines.length} sources, ` : "";
    $("stats").textContent = n + describe(result, (performance.now() - started) / 1000);
  } catch (e) {
    if (e.name === "AbortError") $("stats").textContent = "stopped";
    else { showError(e.message); $("stats").textContent = ""; }
  } finally {
    pre.classList.remove("running");
    end(controller);
  }
}

// Panels side by side: `prefix`-panel-i with its `prefix`-text-i and `prefix`-stats-i.
function buildPanels(prefix, items) {
  $(`${prefix}-panels`).replaceChildren(...items.map((item, i) => {
    const panel = document.createElement("div");
    panel.className = `panel ${prefix}-panel`;
    panel.id = `${prefix}-panel-${i}`;
    Object.assign(panel.dataset, item.data);
    const title = document.createElement("h3");
    const small = document.createElement("small");
    small.id = `${prefix}-stats-${i}`;
    const name = document.createElement("span");
    name.textContent = item.title;
    title.append(name, small);
    const pre = document.createElement("pre");
    pre.className = "text";
    pre.id = `${prefix}-text-${i}`;
    const prompt = document.createElement("span");
    prompt.className = "prompt-text";
    const generated = document.createElement("span");
    generated.className = "generated";
    pre.append(prompt, generated);
    panel.append(title, pre);
    return panel;
  }));
}

// Run one stream per item at once, with one seed for all (so they differ
// only by what the items change); `done` describes the whole at the end.
async function sideBySide(view, prefix, statsId, items, done) {
  const seed = $("seed").value.trim() === "" ? Math.floor(Math.random() * 2 ** 31) : undefined;
  let bodies;
  try { bodies = items.map((item) => item.body()); } catch (e) { showError(e.message); return; }
  const controller = begin();
  showView(view);
  buildPanels(prefix, items);
  $(statsId).textContent = "generating…";
  const started = performance.now();
  const runs = items.map(async (item, i) => {
    const pre = $(`${prefix}-text-${i}`);
    const out = pre.querySelector(".generated");
    const body = bodies[i];
    pre.querySelector(".prompt-text").textContent = body.prompt;
    pre.classList.add("running");
    if (seed !== undefined) body.seed = seed;
    try {
      const result = await streamCompletion(body, (piece) => {
        out.textContent += piece;
        pre.scrollTop = pre.scrollHeight;
      }, controller.signal);
      $(`${prefix}-stats-${i}`).textContent = `${result.tokens ?? "?"} tok`;
    } catch (e) {
      if (e.name !== "AbortError") showError(`${item.title}: ${e.message}`);
    } finally {
      pre.classList.remove("running");
    }
  });
  await Promise.all(runs);
  $(statsId).textContent = `${done} in ${((performance.now() - started) / 1000).toFixed(2)} s`;
  end(controller);
}

function sweep() {
  if (mode !== "text" || seq2seq || eachLabel()) return;
  return sideBySide("sweep", "sweep", "sweep-stats", SWEEP.map((t) => ({
    title: `T = ${t.toFixed(1)}`,
    data: { temperature: String(t) },
    body: () => settings(t), // with the chosen label (or vector), the same for all five
  })), "five streams");
}

function everyLabel() {
  const c = conditionOf(current());
  return sideBySide("labels", "label", "label-stats", c.labels.map((name) => ({
    title: name,
    data: { label: name },
    body: () => settings(undefined, name),
  })), `${c.labels.length} labels`);
}

// -- surprise ---------------------------------------------------------------------------

async function completeOnce(body, signal) {
  const res = await fetch("/v1/completions", { method: "POST", headers: headers(), body: JSON.stringify(body), signal });
  if (!res.ok) throw await errorOf(res);
  return res.json();
}

// A request about the prompt box's text, with the chosen label (or vector).
function scoring(extra) {
  const body = { model: $("model").value || undefined, prompt: $("prompt").value, ...extra };
  const cond = condition();
  if (cond !== undefined) body.condition = cond;
  return body;
}

const bitsOf = (logprob) => -logprob / Math.LN2;
const percent = (p) => (p >= 0.0995 ? (100 * p).toFixed(1) + "%" : p >= 1e-4 ? (100 * p).toPrecision(2) + "%"
  : "<0.01%");

// A token as the tooltips and bars show it: quoted, so spaces and line breaks show.
function shownToken(token) {
  return /^<[a-z]+>$/.test(token) ? token : JSON.stringify(token);
}

// Green (0 bits) through yellow to red (`cap` bits and more).
function surpriseColour(bits, cap) {
  const x = Math.min(1, Math.max(0, bits / cap));
  return `hsl(${Math.round(120 * (1 - x))} 80% 50% / 0.4)`;
}

// How surprised the model is by each token of the prompt (one request that
// scores it: echo + logprobs, max_tokens 0), and its next token at each
// temperature of the sweep (one more: the top-20 at the first generated position).
async function surprise() {
  if (mode !== "text" || seq2seq || eachLabel()) return;
  let scoreBody, nextBody;
  try {
    scoreBody = scoring({ echo: true, logprobs: SURPRISE_TOP, max_tokens: 0 });
    nextBody = scoring({ max_tokens: 1, logprobs: NEXT_TOP });
  } catch (e) { showError(e.message); return; }
  const controller = begin();
  showView("surprise");
  $("surprise-stats").textContent = "scoring…";
  const started = performance.now();
  try {
    const [scored, next] = await Promise.all([completeOnce(scoreBody, controller.signal),
                                              completeOnce(nextBody, controller.signal)]);
    showSurprise(scoreBody.prompt, scored.choices[0].logprobs, (performance.now() - started) / 1000);
    const after = next.choices[0].logprobs;
    showNextToken((after && after.top_logprobs && after.top_logprobs[0]) || {});
  } catch (e) {
    if (e.name === "AbortError") $("surprise-stats").textContent = "stopped";
    else { showError(e.message); $("surprise-stats").textContent = ""; }
  } finally {
    end(controller);
  }
}

function tooltip(token, bits, top) {
  const lines = [`${shownToken(token)}: ${bits.toFixed(2)} bits (p = ${percent(2 ** -bits)})`];
  const alternatives = Object.entries(top || {}).sort((a, b) => b[1] - a[1]);
  if (alternatives.length) lines.push("the model expected:");
  for (const [alt, logprob] of alternatives) lines.push(`  ${shownToken(alt)}  ${percent(Math.exp(logprob))}`);
  return lines.join("\n");
}

function showSurprise(text, lp, seconds) {
  const card = current();
  const vocab = (card && card.genrnn && card.genrnn.vocab_size) || 2;
  const cap = Math.max(1, Math.log2(vocab)); // a uniform guess over the vocabulary
  const pre = $("surprise-text");
  const spans = [];
  let total = 0;
  lp.tokens.forEach((token, i) => {
    const bits = bitsOf(lp.token_logprobs[i]);
    total += bits;
    const span = document.createElement("span");
    span.className = "tok";
    span.textContent = token;
    span.dataset.bits = bits.toFixed(4);
    span.style.backgroundColor = surpriseColour(bits, cap);
    span.title = tooltip(token, bits, lp.top_logprobs && lp.top_logprobs[i]);
    spans.push(span);
  });
  const joined = lp.tokens.join("");
  const rest = text.startsWith(joined) ? text.slice(joined.length) : ""; // spaces after the last token
  pre.replaceChildren(...spans, rest);
  const chars = [...text].length; // code points, as the server counts them
  const perChar = chars ? total / chars : 0;
  const stats = $("surprise-stats");
  stats.dataset.bitsPerChar = String(perChar);
  stats.textContent = chars
    ? `${lp.tokens.length} tokens, ${chars} characters: ${total.toFixed(1)} bits, `
      + `${perChar.toFixed(3)} bits/char — ${seconds.toFixed(2)} s`
    : `no text to score: the prompt is empty — ${seconds.toFixed(2)} s`;
  $("surprise-max").textContent = `${cap.toFixed(1)} bits and more (a uniform guess over ${vocab} tokens)`;
  $("surprise-empty").hidden = true;
  pre.hidden = false;
  $("surprise-legend").hidden = false;
}

// The top-k next-token distribution renormalised at temperature t: [[token, p]...] and its entropy in bits.
function atTemperature(entries, t) {
  const top = Math.max(...entries.map(([, l]) => l));
  const weights = entries.map(([, l]) => Math.exp((l - top) / t));
  const sum = weights.reduce((a, b) => a + b, 0);
  const probs = entries.map(([token], i) => [token, weights[i] / sum]);
  const entropy = -probs.reduce((h, [, p]) => h + (p > 0 ? p * Math.log2(p) : 0), 0);
  return { probs, entropy };
}

function showNextToken(top) {
  const entries = Object.entries(top).sort((a, b) => b[1] - a[1]);
  $("next-box").hidden = !entries.length;
  if (!entries.length) return;
  const mass = entries.reduce((m, [, l]) => m + Math.exp(l), 0);
  $("next-panels").replaceChildren(...SWEEP.map((t, i) => {
    const { probs, entropy } = atTemperature(entries, t);
    const panel = document.createElement("div");
    panel.className = "panel next-panel";
    panel.id = `next-panel-${i}`;
    panel.dataset.temperature = String(t);
    panel.dataset.entropy = String(entropy);
    const title = document.createElement("h3");
    const name = document.createElement("span");
    name.textContent = `T = ${t.toFixed(1)}`;
    const small = document.createElement("small");
    small.textContent = `H = ${entropy.toFixed(2)} bits`;
    small.title = "entropy of this distribution";
    title.append(name, small);
    const bars = document.createElement("div");
    bars.className = "bars";
    bars.setAttribute("role", "list");
    for (const [token, p] of probs) {
      const row = document.createElement("div");
      row.className = "bar-row";
      row.setAttribute("role", "listitem");
      row.title = `${shownToken(token)}: ${percent(p)} at T = ${t.toFixed(1)}`;
      const label = document.createElement("span");
      label.className = "bar-label";
      label.textContent = shownToken(token);
      const bar = document.createElement("span");
      bar.className = "bar";
      const fill = document.createElement("span");
      fill.className = "bar-fill";
      fill.style.width = `${(100 * p).toFixed(2)}%`;
      bar.append(fill);
      const value = document.createElement("span");
      value.className = "bar-value";
      value.textContent = percent(p);
      row.append(label, bar, value);
      bars.append(row);
    }
    panel.append(title, bars);
    return panel;
  }));
  $("next-hint").textContent = `H is the entropy. An approximation: the server gives the model's ${entries.length} most likely next `
    + `tokens (together ${percent(mass)} of its probability at T = 1), and each panel renormalises those alone `
    + "at its temperature. The rest of the vocabulary is left out, which matters most at high temperatures; "
    + `the entropy is over those ${entries.length} tokens.`;
}

// -- captions ---------------------------------------------------------------------------

function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error("could not read the file"));
    reader.readAsDataURL(file);
  });
}

function sizeOf(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  return bytes < 1048576 ? `${(bytes / 1024).toFixed(1)} KB` : `${(bytes / 1048576).toFixed(1)} MB`;
}

function addCaptionItem(file) {
  const item = document.createElement("li");
  item.className = "caption-item";
  item.id = `caption-${captionCount++}`;
  item.dataset.state = "pending";
  const url = URL.createObjectURL(file);
  item.dataset.url = url;
  const img = document.createElement("img");
  img.className = "caption-image";
  img.alt = file.name;
  img.addEventListener("error", () => item.classList.add("no-preview"), { once: true });
  img.src = url;
  const body = document.createElement("div");
  body.className = "caption-body";
  const name = document.createElement("div");
  name.className = "caption-file";
  name.textContent = `${file.name} · ${sizeOf(file.size)}`;
  const text = document.createElement("p");
  text.className = "caption-text";
  const stats = document.createElement("div");
  stats.className = "caption-stats stats";
  stats.textContent = "captioning…";
  body.append(name, text, stats);
  item.append(img, body);
  $("captions").append(item);
  $("captions-empty").hidden = true;
  $("captions-clear").hidden = false;
  return item;
}

async function captionOne(file, item) {
  const text = item.querySelector(".caption-text");
  const stats = item.querySelector(".caption-stats");
  const started = performance.now();
  try {
    const body = {
      model: $("model").value || undefined,
      image: await readAsDataURL(file),
      max_tokens: Number($("max-tokens").value) || 100,
      temperature: Number($("temperature").value),
    };
    const seed = $("seed").value.trim();
    if (seed !== "") body.seed = parseInt(seed, 10);
    const res = await fetch("/v1/captions", { method: "POST", headers: headers(), body: JSON.stringify(body) });
    if (!res.ok) throw await errorOf(res);
    const caption = (await res.json()).captions[0];
    text.textContent = caption.text;
    item.querySelector(".caption-image").alt = caption.text || file.name;
    const why = caption.finish_reason === "length" ? "length reached" : "end of text";
    stats.textContent = `${((performance.now() - started) / 1000).toFixed(2)} s — ${why}`;
    item.dataset.state = "done";
    return null;
  } catch (e) {
    text.textContent = e.message;
    stats.textContent = "no caption";
    item.dataset.state = "error";
    return `${file.name}: ${e.message}`;
  }
}

// Caption files (from a drop, the file chooser or a paste), a few at a time;
// each caption shows beside its image, and failures in the error area.
async function captionFiles(fileList) {
  const files = [...(fileList || [])];
  if (!files.length || mode !== "image") return;
  showError("");
  showView("captions");
  const items = files.map((file) => [file, addCaptionItem(file)]);
  items[items.length - 1][1].scrollIntoView({ block: "nearest" });
  const errors = [];
  const started = performance.now();
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const [file, item] = items[next++];
      const error = await captionOne(file, item);
      if (error) { errors.push(error); showError(errors.join("\n")); }
    }
  };
  $("captions-stats").textContent = "captioning…";
  await Promise.all(Array.from({ length: Math.min(CAPTION_WORKERS, items.length) }, worker));
  const n = files.length;
  const seconds = ((performance.now() - started) / 1000).toFixed(2);
  $("captions-stats").textContent = `${n} image${n === 1 ? "" : "s"} in ${seconds} s`
    + (errors.length ? `, ${errors.length} failed` : "");
}

function clearCaptions() {
  for (const item of $("captions").children) URL.revokeObjectURL(item.dataset.url);
  $("captions").replaceChildren();
  $("captions-empty").hidden = false;
  $("captions-clear").hidden = true;
  $("captions-stats").textContent = "";
  showError("");
}

function hasFiles(event) {
  return !!event.dataTransfer && [...(event.dataTransfer.types || [])].includes("Files");
}

function initDropZone() {
  const zone = $("drop-zone");
  const input = $("image-file");
  let leave = null;
  zone.addEventListener("click", () => input.click());
  zone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); }
  });
  input.addEventListener("change", () => {
    const files = [...input.files];
    input.value = ""; // the same file again is a new change
    captionFiles(files);
  });
  // The whole page takes a drop while a captioner is selected (a file dropped
  // elsewhere would otherwise replace the page); the zone lights up.
  document.addEventListener("dragover", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    e.dataTransfer.dropEffect = mode === "image" ? "copy" : "none";
    if (mode !== "image") return;
    zone.classList.add("dragover");
    clearTimeout(leave);
    leave = setTimeout(() => zone.classList.remove("dragover"), 150);
  });
  document.addEventListener("drop", (e) => {
    if (!e.dataTransfer || !e.dataTransfer.files.length) return;
    e.preventDefault();
    zone.classList.remove("dragover");
    captionFiles(e.dataTransfer.files);
  });
  document.addEventListener("paste", (e) => {
    if (mode !== "image" || !e.clipboardData || !e.clipboardData.files.length) return;
    e.preventDefault();
    captionFiles(e.clipboardData.files);
  });
  $("captions-clear").addEventListener("click", clearCaptions);
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
  $("surprise").addEventListener("click", surprise);
  $("stop").addEventListener("click", () => { if (running) running.abort(); });
  for (const v of VIEWS) $(`tab-${v}`).addEventListener("click", () => showView(v));
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); generate(); }
  });
  $("model").addEventListener("change", () => { showError(""); applyModel(false); });
  $("condition").addEventListener("change", updateButtons);
  for (const id of ["decoding-beam", "decoding-sample"]) $(id).addEventListener("change", refreshVisibility);
  $("api-key").value = apiKey;
  $("api-key").addEventListener("change", () => {
    apiKey = $("api-key").value.trim();
    localStorage.setItem("genrnn-api-key", apiKey);
    loadModels().catch((e) => showError(e.message));
  });
  initDropZone();
  buildPanels("sweep", SWEEP.map((t) => ({ title: `T = ${t.toFixed(1)}`, data: { temperature: String(t) } })));
  loadModels().catch((e) => { setStatus("offline"); showError(e.message); });
}

init();
