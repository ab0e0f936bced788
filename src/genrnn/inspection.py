"""What a model learned, as one self-contained HTML page: ``genrnn inspect``.

:func:`analyse` runs a text through the model one token at a time (its own
``step``, from ``state.start``) and gathers, per token: the surprise
-log2 p(token | context) and the five likeliest tokens there; the running
bits per character; every hidden unit's activation (each layer's ``h``, and
``c`` for an LSTM), ranked per simple feature of the text by correlation
(Karpathy, Johnson & Fei-Fei 2015 found quote, bracket and line-length
cells); the next-token distribution at one position under a sweep of
temperatures with its entropy, and a greedy and a sampled continuation from
there (the loop of greedy text is the lesson's point); for a label-
conditioned run, the text scored under each label. For a sequence-to-
sequence run it translates each line and records the attention matrix.
:func:`render` writes the page: data as JSON inside it, a little inline
script to recolour by a chosen unit, no network and no build step.
"""

from __future__ import annotations

import base64
import html
import json
import math
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .errors import GenrnnError
from .state import start
from .tokenizers import EOS_ID, UNK_ID

TEMPERATURES = (0.3, 0.8, 1.0, 1.3, 1.8)
MAX_TOKENS = 4000  # tokens analysed per page: a few pages of text
MAX_SOURCES = 20
TOP_UNITS = 5  # units listed per feature
FEATURES = ("inside quotes", "inside brackets", "position in line", "inside a word", "after a newline")


def _features(pieces: List[str]) -> np.ndarray:
    """(T, 5): each token's value of :data:`FEATURES`, read from the text before and at it."""
    out = np.zeros((len(pieces), len(FEATURES)), dtype=np.float64)
    quote, depth, column, prev = False, 0, 0, "\n"
    for i, piece in enumerate(pieces):
        after_newline = prev == "\n"
        for ch in piece:
            if ch == '"':
                quote = not quote
            elif ch in "([{":
                depth += 1
            elif ch in ")]}" and depth:
                depth -= 1
            column = 0 if ch == "\n" else column + 1
        out[i] = (quote, depth > 0, column, bool(piece) and piece.strip().isalnum(), after_newline)
        prev = piece[-1:] if piece else prev
    return out


def _correlations(acts: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """Pearson r of every unit (T, U) with every feature (T, F): (F, U), 0 where constant."""
    a = acts - acts.mean(0)
    f = feats - feats.mean(0)
    denom = np.sqrt((a * a).sum(0))[None, :] * np.sqrt((f * f).sum(0))[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (f.T @ a) / denom
    return np.nan_to_num(r)


def _quantised(acts: np.ndarray) -> Dict[str, Any]:
    """Activations (T, U) as int8 per unit (scale = the unit's largest |value|), base64: compact enough
    to keep every unit in the page."""
    scale = np.abs(acts).max(0)
    scale[scale == 0] = 1.0
    q = np.clip(np.round(acts / scale * 127), -127, 127).astype(np.int8)
    return {"units": acts.shape[1], "scale": [round(float(s), 5) for s in scale],
            "data": base64.b64encode(q.T.copy().tobytes()).decode("ascii")}  # unit-major


def _leaves(model, state) -> List[torch.Tensor]:
    """The recurrent state's (layers, B, H) tensors: h, then c for an LSTM."""
    split = getattr(model, "split_state", None)
    rnn_state = split(state)[0] if split is not None else None
    if rnn_state is None or not hasattr(model, "config") or model.config.type not in ("rnn", "mixture"):
        return []
    return list(rnn_state) if isinstance(rnn_state, tuple) else [rnn_state]


@torch.inference_mode()
def analyse(run, text: str, *, at: Optional[int] = None, length: int = 200, seed: int = 0) -> Dict[str, Any]:
    """The page's data for ``text`` under the language model ``run`` (a
    :class:`genrnn.api.TrainedModel`). ``at``: the token whose next-token
    distribution is swept (default: the last)."""
    if run.condition is not None and run.condition.kind in ("text", "image", "vector"):
        raise GenrnnError(f"inspect --text reads a language model or a label-conditioned one; this run is "
                          f"conditioned on {run.condition.kind}s" + (" (give sources: inspect translates them)"
                                                                      if run.condition.kind == "text" else ""))
    tok, model = run.tokenizer, run.model
    ids = tok.encode(text)
    if not ids:
        raise GenrnnError("the text to inspect is empty")
    unknown = sum(i == UNK_ID for i in ids)
    truncated = len(ids) > MAX_TOKENS
    ids = ids[:MAX_TOKENS]
    decoder = tok.decoder()
    pieces = [decoder.push(i) for i in ids]
    model.eval()
    labels = run.condition.label_names() if run.condition is not None else [None]
    per_label: List[List[float]] = []
    first: Dict[str, Any] = {}
    for li, label in enumerate(labels):
        cond = None if label is None else run.encode_condition(label, 1).to(run.runtime.device)
        state = start(model, cond)
        logits, state = model.step(torch.tensor([EOS_ID], device=run.runtime.device), state)
        logps, tops, acts = [], [], []
        for i in ids:
            lp = F.log_softmax(logits[0].float(), -1)
            logps.append(float(lp[i]))
            if li == 0:
                values, which = lp.topk(min(5, lp.shape[0]))
                tops.append([[tok.token_str(int(w)), round(math.exp(float(v)), 4)] for v, w in zip(values, which)])
            logits, state = model.step(torch.tensor([i], device=run.runtime.device), state)
            if li == 0:
                acts.append([leaf[:, 0].float().cpu().numpy() for leaf in _leaves(model, state)])
            if li == 0 and len(logps) - 1 == (len(ids) - 1 if at is None else at):
                first["next"] = logits[0].float().cpu()
        per_label.append(logps)
        if li == 0:
            first.update(tops=tops, acts=acts)
    bits = [-lp / math.log(2) for lp in per_label[0]]
    chars = np.cumsum([max(1, len(p)) for p in pieces])
    data: Dict[str, Any] = {
        "kind": "lm", "run": str(run.run_dir), "model": repr(run), "truncated": truncated, "unknown": unknown,
        "tokens": pieces, "bits": [round(b, 3) for b in bits], "top": first["tops"],
        "running_bpc": [round(float(b), 4) for b in np.cumsum(bits) / chars],
        "bpc": round(float(sum(bits) / chars[-1]), 4),
    }
    data["neurons"] = _neurons(first["acts"], pieces, model)
    at = len(ids) - 1 if at is None else max(0, min(at, len(ids) - 1))
    data["temperature"] = _sweep(first.get("next"), tok, at, pieces)
    prompt = "".join(pieces[: at + 1])
    cond = None if labels[0] is None else labels[0]
    greedy = run.complete([prompt], length=length, greedy=True, condition=cond)[0].text
    sampled = run.complete([prompt], length=length, temperature=1.0, seed=seed, condition=cond)[0].text
    data["continuations"] = {"prompt_end": prompt[-60:], "greedy": greedy, "sampled (T 1.0, seed %d)" % seed: sampled}
    if labels[0] is not None:
        totals = [-sum(lps) / math.log(2) for lps in per_label]
        best = np.argmax(np.array(per_label), axis=0).tolist()
        data["condition"] = {"labels": labels, "total_bits": [round(t, 2) for t in totals], "best_label": best}
    return data


def _neurons(acts: List[List[np.ndarray]], pieces: List[str], model) -> Optional[Dict[str, Any]]:
    if not acts or not acts[0]:
        return None
    leaves = len(acts[0])
    names = []
    L = acts[0][0].shape[0]
    kinds = ["h", "c"][:leaves]
    columns = []
    for k in range(leaves):
        for layer in range(L):
            columns.append(np.stack([a[k][layer] for a in acts]))  # (T, H)
            names.append(f"{kinds[k]} layer {layer + 1}")
    feats = _features(pieces)
    ranked: Dict[str, List[Dict[str, Any]]] = {f: [] for f in FEATURES}
    for name, col in zip(names, columns):
        r = _correlations(col, feats)
        for fi, f in enumerate(FEATURES):
            if np.ptp(feats[:, fi]) == 0:  # constant in this text (no quotes at all...): nothing to rank
                continue
            for u in np.argsort(-np.abs(r[fi]))[:TOP_UNITS]:
                ranked[f].append({"group": name, "unit": int(u), "r": round(float(r[fi, u]), 3)})
    for f in FEATURES:
        ranked[f] = sorted(ranked[f], key=lambda x: -abs(x["r"]))[:TOP_UNITS]
    return {"groups": {n: _quantised(c) for n, c in zip(names, columns)}, "ranked": ranked}


def _sweep(logits: Optional[torch.Tensor], tok, at: int, pieces: List[str]) -> Dict[str, Any]:
    out: Dict[str, Any] = {"at": at, "context": "".join(pieces[max(0, at - 40) : at + 1]), "rows": []}
    if logits is None:
        return out
    logits = logits.clone()
    logits[0] = float("-inf")  # <pad> is never drawn
    for t in TEMPERATURES:
        p = torch.softmax(logits / t, -1)
        entropy = float(-(p[p > 0] * p[p > 0].log2()).sum())
        values, which = p.topk(min(8, p.shape[0]))
        out["rows"].append({"t": t, "entropy_bits": round(entropy, 3),
                            "top": [[tok.token_str(int(w)), round(float(v), 4)] for v, w in zip(values, which)]})
    return out


@torch.inference_mode()
def analyse_translations(run, sources: List[str]) -> Dict[str, Any]:
    """Greedy translations of ``sources`` by a sequence-to-sequence run, with
    each output token's attention over the source tokens."""
    if run.condition is None or run.condition.kind != "text":
        raise GenrnnError("inspect --sources is for a sequence-to-sequence run (trained with --task seq2seq)")
    sources = [s for s in sources if s.strip()][:MAX_SOURCES]
    if not sources:
        raise GenrnnError("give at least one source sentence to inspect")
    model, spec, dev = run.model, run.condition, run.runtime.device
    outputs = run.translate(sources, beam=1)
    rows = []
    for src, out in zip(sources, outputs):
        cond = spec.encode([src]).to(dev)
        src_dec = spec.source.decoder()
        src_pieces = [src_dec.push(int(i)) or spec.source.token_str(int(i)) for i in cond[0].tolist()]
        out_ids = run.tokenizer.encode(out) + [EOS_ID]
        dec = run.tokenizer.decoder()
        out_pieces = [dec.push(i) or run.tokenizer.token_str(i) for i in out_ids]
        state = start(model, cond)
        matrix = []
        previous = EOS_ID
        for i in out_ids:
            _, state = model.step(torch.tensor([previous], device=dev), state)
            rnn_state, context = model.split_state(state)
            h = rnn_state[0] if isinstance(rnn_state, tuple) else rnn_state
            if context[1] is None:
                break
            w = model.attention_weights(h[-1], context[1], context[2])[0]
            matrix.append([round(float(v), 3) for v in w.cpu()])
            previous = i
        rows.append({"source": src_pieces, "output": out_pieces, "text": out, "attention": matrix})
    return {"kind": "seq2seq", "run": str(run.run_dir), "model": repr(run), "translations": rows,
            "attention": bool(model.config.attention)}


def render(data: Dict[str, Any]) -> str:
    """The self-contained page for :func:`analyse` or :func:`analyse_translations` data."""
    payload = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")
    title = html.escape(f"genrnn inspect: {data['run']}")
    return _PAGE.replace("__TITLE__", title).replace("__DATA__", payload)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#1d2330;padding:0 16px}
h1{font-size:20px}h2{font-size:16px;margin-top:28px;border-bottom:1px solid #dde2ea}
.text{font:13px/1.9 ui-monospace,Menlo,monospace;white-space:pre-wrap;word-break:break-all;
 background:#fafbfc;border:1px solid #dde2ea;padding:10px;border-radius:6px}
.text span{border-radius:2px}.muted{color:#667}table{border-collapse:collapse;margin:6px 0}
td,th{padding:2px 6px;border:1px solid #e3e6ec;font-size:12px;text-align:left}
.bar{display:inline-block;height:10px;background:#3b6fd8;vertical-align:middle}
.att td{width:18px;height:18px;padding:0;text-align:center;font:11px ui-monospace,monospace}
select,input{font:inherit}#tip{position:fixed;pointer-events:none;background:#1d2330;color:#fff;
 padding:6px 8px;border-radius:5px;font:12px ui-monospace,monospace;display:none;white-space:pre}
</style></head><body>
<h1>__TITLE__</h1><div id="app"></div><div id="tip"></div>
<script type="application/json" id="data">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const app = document.getElementById("app"), tip = document.getElementById("tip");
const esc = s => s.replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c]));
const show = s => esc(s).replace(/\\n/g, "\\u21b5\\n");
function section(title, html) { app.insertAdjacentHTML("beforeend", `<h2>${title}</h2>${html}`); }
function heat(v) { const x = Math.max(0, Math.min(1, v)); return `hsl(${(1 - x) * 120},85%,${92 - 40 * x}%)`; }
function signed(v) { const x = Math.max(-1, Math.min(1, v));
  return x >= 0 ? `rgba(220,60,40,${x})` : `rgba(40,90,220,${-x})`; }
function tokens(colour, titles) {
  return `<div class="text">` + D.tokens.map((t, i) =>
    `<span data-i="${i}" style="background:${colour(i)}">${show(t || "\\u00b7")}</span>`).join("") + `</div>`;
}
document.addEventListener("mousemove", e => {
  const s = e.target.closest && e.target.closest("span[data-i]");
  if (!s || !D.top) { tip.style.display = "none"; return; }
  const i = +s.dataset.i;
  tip.textContent = `${D.bits[i]} bits\\nlikeliest here:\\n` +
    D.top[i].map(([t, p]) => `${JSON.stringify(t)} ${(100 * p).toFixed(1)}%`).join("\\n");
  tip.style.display = "block"; tip.style.left = e.clientX + 14 + "px"; tip.style.top = e.clientY + 14 + "px";
});
app.insertAdjacentHTML("beforeend", `<p class="muted">${esc(D.model)}</p>`);
if (D.kind === "lm") {
  const max = Math.min(10, Math.max(4, ...D.bits));  // one unknown character must not wash out the rest
  section("Surprise", `<p>Each token coloured by its surprise, -log2 p(token | context) (green 0 bits, red
    ${max.toFixed(1)}); hover for the five likeliest tokens there. <b>${D.bpc} bits per character</b> over
    ${D.tokens.length} tokens${D.truncated ? " (the text was cut)" : ""}${D.unknown ? `; ${D.unknown} tokens
    the model does not know, scored as &lt;unk&gt;` : ""}.</p>` + tokens(i => heat(D.bits[i] / max)) +
    `<p class="muted">Running bits per character:</p><svg id="bpc" width="1000" height="80"></svg>`);
  const svg = document.getElementById("bpc"), r = D.running_bpc, top = Math.max(...r);
  svg.innerHTML = `<polyline fill="none" stroke="#3b6fd8" points="${r.map((v, i) =>
    `${(i / Math.max(1, r.length - 1) * 990 + 5).toFixed(1)},${(75 - v / top * 70).toFixed(1)}`).join(" ")}"/>`;
  const T = D.temperature;
  section("Temperature", `<p>The next token after <code>${show(T.context)}</code> (token ${T.at}), side by side
    at each temperature: softmax(logits / T), its entropy, and its likeliest tokens.</p><table><tr>` +
    T.rows.map(row => `<th>T ${row.t}: ${row.entropy_bits} bits</th>`).join("") + `</tr><tr>` +
    T.rows.map(row => `<td>${row.top.map(([t, p]) => `<span class="bar" style="width:${Math.round(p * 90)}px">
    </span> ${show(JSON.stringify(t))} ${(100 * p).toFixed(1)}%`).join("<br>")}</td>`).join("") + `</tr></table>` + Object.entries(D.continuations).filter(([k]) => k !== "prompt_end").map(([k, v]) =>
    `<p><b>${esc(k)}</b> from there:</p><div class="text">\\u2026${show(D.continuations.prompt_end)}<b>${show(v)}</b></div>`
    ).join(""));
  if (D.neurons) {
    const groups = D.neurons.groups, names = Object.keys(groups);
    const decoded = {};
    const unit = (g, u) => { const G = groups[g]; if (!decoded[g]) decoded[g] = Int8Array.from(atob(G.data),
      c => c.charCodeAt(0)); const T = D.tokens.length; return Array.from(decoded[g].subarray(u * T, (u + 1) * T),
      v => v / 127); };
    const options = Object.entries(D.neurons.ranked).filter(([, list]) => list.length).map(([f, list]) =>
      `<optgroup label="${f}">` + list.map(x =>
      `<option value="${x.group}|${x.unit}">${x.group} unit ${x.unit} (r ${x.r})</option>`).join("") +
      `</optgroup>`).join("");
    const flat = Object.entries(D.neurons.ranked).filter(([, list]) => !list.length).map(([f]) => f);
    section("Neurons", `<p>The text coloured by one hidden unit's activation (red positive, blue negative). Units
      ranked by their correlation r with simple features of the text, or any unit by number.${flat.length ?
      ` Not ranked, constant in this text: ${flat.join(", ")}.` : ""}</p>
      <select id="ranked">${options}</select> or <select id="group">${names.map(n => `<option>${n}</option>`)
      .join("")}</select> unit <input id="unit" type="number" min="0" value="0" style="width:70px">
      <div id="neuron"></div>`);
    const draw = (g, u) => { const a = unit(g, u); document.getElementById("neuron").innerHTML =
      `<p class="muted">${g}, unit ${u} (of ${groups[g].units})</p>` + tokens(i => signed(a[i])); };
    const ranked = document.getElementById("ranked");
    ranked.onchange = () => { const [g, u] = ranked.value.split("|"); draw(g, +u); };
    const pick = () => { const g = document.getElementById("group").value;
      const u = Math.max(0, Math.min(groups[g].units - 1, +document.getElementById("unit").value || 0)); draw(g, u); };
    document.getElementById("group").onchange = pick; document.getElementById("unit").oninput = pick;
    ranked.onchange();
  }
  if (D.condition) {
    const C = D.condition, hues = C.labels.map((_, i) => (i * 360 / C.labels.length) | 0);
    section("Condition", `<p>Each token coloured by the label under which it is likeliest; the whole text's
      bits under each label: ` + C.labels.map((l, i) => `<span style="background:hsl(${hues[i]},70%,80%)">
      ${esc(l)}</span> ${C.total_bits[i]}`).join(", ") + `</p>` + tokens(i => `hsl(${hues[C.best_label[i]]},70%,80%)`));
  }
} else {
  section("Attention", D.attention ? "<p>For each translated sentence: which source token each output token " +
    "attends to (row: output token, column: source token; darker is more).</p>" :
    "<p>This model has no attention (trained without --attention): translations only.</p>");
  for (const t of D.translations) {
    let h = `<p><b>${show(t.source.join(""))}</b> \\u2192 ${show(t.text)}</p>`;
    if (t.attention.length) {
      h += `<table class="att"><tr><th></th>${t.source.map(s => `<th>${show(s)}</th>`).join("")}</tr>` +
        t.attention.map((row, j) => `<tr><th>${show(t.output[j] || "")}</th>${row.map(v =>
        `<td style="background:rgba(59,111,216,${v})" title="${v}"></td>`).join("")}</tr>`).join("") + `</table>`;
    }
    app.insertAdjacentHTML("beforeend", h);
  }
}
</script></body></html>
"""
