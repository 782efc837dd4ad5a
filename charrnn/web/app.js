// The page: loading a model (the shipped one, a URL, a picked or dropped file), the
// generation controls and URL parameters (the CLI's flag names), streaming generation with
// its speed, and the neuron view. docs/WEB.md describes it; tests/test_web.py drives it
// through `window.charrnn` and the controls.

import { checkSeed, generateChars, startState } from "./generate.js";
import { CharModel } from "./model.js";
import { activationColour, FEATURES, rankUnits, unitSeries } from "./neurons.js";
import { NumpyRandom } from "./random.js";
import { loadPortable } from "./safetensors.js";
import { checkSampling, ranks, softmax } from "./sampling.js";

// The shipped models by the CLI's names (`generate --model NAME`: PRETRAINED_MODELS in
// charrnn/common/config.py, which tests/test_web.py holds this to), relative to this
// file: charrnn/web/ -> charrnn/pretrained/, the same in a checkout, an installed package
// (`charrnn serve`) and on any static host.
const SHIPPED_FILES = {
  default: "tinyshakespeare.safetensors",
  large: "tinyshakespeare-large.safetensors",
};
/** [URL, what the page calls it] of a shipped model. */
function shipped(name) {
  const file = SHIPPED_FILES[name];
  return [new URL(`../pretrained/${file}`, import.meta.url),
    `the shipped ${name === "default" ? "pretrained" : name} model pretrained/${file}`];
}
const SLICE_MS = 25; // generate this long between two yields to the event loop
const UNITS_LISTED = 10;

const $ = (id) => document.getElementById(id);
let model = null; // the CharModel in use
let running = null; // the generation in progress: {stop: boolean}
let view = null; // the neuron view's text: {chars, trace, series}

// ---- messages and state ---------------------------------------------------------------

/** data-state on <body>: loading, ready, generating, done, error (tests wait on it). */
function setState(state) {
  document.body.dataset.state = state;
}

function showMessage(text) {
  $("message").textContent = text;
  $("message").hidden = !text;
}

/** Run `action`, showing any error on the page instead of throwing it. */
async function guarded(action) {
  try {
    return await action();
  } catch (error) {
    showMessage(error.message || String(error));
    setState("error");
    return undefined;
  }
}

// ---- loading a model --------------------------------------------------------------------

/** "trained by pytorch 2.13.0+cpu, 32 epochs (step 7840), val loss 1.6024", as the CLI. */
function trainedBy(meta) {
  if (!meta.framework) return "";
  const plural = (n, one, many) => `${n} ${n === "1" ? one : many}`;
  const digits = (s) => /^\d+$/.test(s ?? "");
  let done = "epochs unknown";
  if (digits(meta.epoch)) {
    done = meta.epoch !== "0" ? plural(meta.epoch, "epoch", "epochs") : "";
    if (digits(meta.batch) && meta.batch !== "0") {
      const batches = plural(meta.batch, "batch", "batches");
      done = done ? `${done} and ${batches}` : batches;
    }
    done = (done || "0 epochs") + (digits(meta.step) ? ` (step ${meta.step})` : "");
  }
  const val = meta.val_loss ? Number(meta.val_loss).toFixed(4) : "n/a";
  return ` (trained by ${meta.framework} ${meta.framework_version ?? ""}, ${done}, `
    + `val loss ${val})`;
}

// Metadata shown first, in this order; any other key follows (config and vocab are shown
// as the sizes above them).
const METADATA_ORDER = ["framework", "framework_version", "epoch", "batch", "step",
  "train_loss", "val_loss", "format"];

function showModel(portable, source) {
  const { config, metadata } = portable;
  $("model-source").textContent = `Using ${source}${trainedBy(metadata)}.`;
  const rows = [
    ["cell", config.cell], ["layers", config.num_layers], ["rnn_size", config.rnn_size],
    ["embedding_size", config.embedding_size], ["vocab_size", config.vocab_size],
    ["parameters", model.numParams().toLocaleString("en")],
  ];
  const keys = Object.keys(metadata).filter((key) => !["config", "vocab"].includes(key));
  const rank = (key) => (METADATA_ORDER.includes(key) ? METADATA_ORDER.indexOf(key) : 99);
  keys.sort((a, b) => rank(a) - rank(b));
  for (const key of keys) rows.push([key, metadata[key]]);
  $("model-info").replaceChildren(...rows.flatMap(([key, value]) => {
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = key;
    dd.textContent = String(value);
    return [dt, dd];
  }));
}

/** Use the portable file in `buffer`; a bad file leaves the current model in place. */
async function useBytes(buffer, source) {
  const portable = loadPortable(buffer, source);
  abandonGeneration();
  model = new CharModel(portable);
  showMessage("");
  showModel(portable, source);
  setupNeuronControls();
  $("generate").disabled = false;
  analyse();
  setState("ready");
}

async function useUrl(url, source) {
  setState("loading");
  let response;
  try {
    response = await fetch(url);
  } catch (error) {
    throw new Error(`${url}: could not be fetched (${error.message})`);
  }
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status} ${response.statusText}`);
  await useBytes(await response.arrayBuffer(), source ?? url);
}

async function useFile(file) {
  setState("loading");
  await useBytes(await file.arrayBuffer(), file.name);
}

// ---- generation -------------------------------------------------------------------------

// A message to ourselves is a task queued behind those already waiting (a click on Stop,
// a repaint), without setTimeout's 4 ms clamp. (scheduler.yield() puts the continuation
// ahead of them: measured here, a Stop click and WebDriver's commands never ran.)
const channel = new MessageChannel();
const waiting = [];
channel.port1.onmessage = () => waiting.shift()();
function yieldToEventLoop() {
  return new Promise((resolve) => {
    waiting.push(resolve);
    channel.port2.postMessage(null);
  });
}

/** The controls' settings, checked as the CLI checks its flags. */
function readControls() {
  const number = (id, name) => {
    const text = $(id).value.trim();
    const value = Number(text);
    if (text === "" || !Number.isFinite(value)) throw new Error(`${name} ${JSON.stringify(text)}: not a number`);
    return value;
  };
  const settings = {
    seed: $("seed").value,
    length: number("length", "length"),
    sampling: { temperature: number("temperature", "temperature"),
      topK: number("top-k", "top_k"), topP: number("top-p", "top_p") },
    randomSeed: $("random-seed").value.trim() === "" ? null : number("random-seed", "random_seed"),
    coldStart: $("cold-start").checked,
  };
  if (!Number.isInteger(settings.length) || settings.length < 0) {
    throw new Error(`length ${settings.length}: must be an integer >= 0`);
  }
  if (settings.randomSeed !== null
      && !(Number.isSafeInteger(settings.randomSeed) && settings.randomSeed >= 0)) {
    throw new Error(`random_seed ${settings.randomSeed}: must be an integer >= 0`);
  }
  checkSampling(settings.sampling);
  checkSeed(model, settings.seed);
  return settings;
}

/** Stop (the Stop button): the generation ends at its next slice and says so. */
function stopGeneration() {
  if (running) running.stop = true;
}

/** Stop without a word: a new generation or a new model replaces this one. */
function abandonGeneration() {
  if (running) {
    running.stop = true;
    running = null;
    $("stop").disabled = true;
  }
}

/** Generate with the controls' settings into <pre id="output">, a slice at a time. */
async function generate() {
  if (!model) throw new Error("no model is loaded");
  const settings = readControls();
  abandonGeneration();
  showMessage("");
  const randomSeed = settings.randomSeed
    ?? crypto.getRandomValues(new Uint32Array(1))[0]; // fresh, but shown: reproducible
  const job = { stop: false };
  running = job;
  setState("generating");
  $("stop").disabled = false;
  const output = $("output");
  output.textContent = settings.seed;
  startState(model, settings.coldStart); // once per model, before the clock, as the CLI
  const chars = generateChars(model, settings.seed, settings.length,
    new NumpyRandom(randomSeed), settings.sampling, settings.coldStart);
  const start = performance.now();
  let count = 0, done = false;
  const report = (what) => {
    const seconds = (performance.now() - start) / 1000;
    // Under headless Chromium's --virtual-time-budget the clock stands still while the
    // page computes: no speed to give then.
    const rate = seconds > 0 ? `${Math.round(count / seconds).toLocaleString("en")} chars/s`
      : "no speed: the clock did not advance";
    $("speed").textContent = `${what} ${count.toLocaleString("en")} characters in `
      + `${seconds.toFixed(3)} s (${rate}; random seed ${randomSeed}, `
      + `${settings.coldStart ? "cold" : "warm"} start)`;
    $("speed").dataset.charsPerSecond = seconds > 0 ? String(count / seconds) : "";
  };
  while (!done && !job.stop) {
    const sliceEnd = performance.now() + SLICE_MS;
    let chunk = "";
    while (performance.now() < sliceEnd) {
      const next = chars.next();
      if (next.done) {
        done = true;
        break;
      }
      chunk += next.value;
      count += 1;
    }
    output.append(chunk);
    report("generating:");
    if (!done) await yieldToEventLoop();
  }
  if (running !== job) return ""; // abandoned: the page belongs to what replaced it
  running = null;
  output.normalize(); // one text node
  report(job.stop ? "stopped after" : "generated");
  $("stop").disabled = true;
  setState("done");
  return output.textContent;
}

// ---- URL parameters (the CLI's flag names) ----------------------------------------------

const PARAMS = { seed: "seed", length: "length", temperature: "temperature", top_k: "top-k",
  top_p: "top-p", random_seed: "random-seed" }; // parameter -> control id
const ALIASES = { top_n: "top_k" }; // the original suite's name, as the CLI

/** Fill the controls from ?seed=...&length=...; returns {model, run}. */
function applyUrlParams() {
  const params = new URLSearchParams(location.search);
  const flag = (value) => value !== null && !["0", "false", "no", "off"].includes(value.toLowerCase());
  let modelUrl = null, run = false;
  for (const [rawName, value] of params) {
    let name = rawName.replaceAll("-", "_");
    name = ALIASES[name] ?? name;
    if (name in PARAMS) $(PARAMS[name]).value = value;
    else if (name === "cold_start") $("cold-start").checked = flag(value);
    else if (name === "model") modelUrl = value;
    else if (name === "run") run = flag(value);
    else throw new Error(`unknown URL parameter ${JSON.stringify(rawName)}; the page takes `
      + [...Object.keys(PARAMS), "cold_start", "model", "run"].join(", "));
  }
  return { modelUrl, run };
}

// ---- the neuron view -------------------------------------------------------------------

function setupNeuronControls() {
  const options = (select, items) => select.replaceChildren(...items.map(([value, label]) => {
    const option = document.createElement("option");
    option.value = value;
    option.textContent = label;
    return option;
  }));
  options($("layer"), Array.from({ length: model.L }, (_, k) => [k, String(k)]));
  options($("kind"), model.cell === "lstm" ? [["c", "c (cell)"], ["h", "h (hidden)"]]
    : [["h", "h (hidden)"]]);
  $("unit").max = model.H - 1;
  $("unit").value = Math.min(Number($("unit").value) || 0, model.H - 1);
  if (!$("feature").options.length) {
    options($("feature"), Object.entries(FEATURES));
  }
}

function shown(ch) {
  return ch === "\n" ? "\u21b5\n" : ch === "\t" ? "\u2192\t" : ch;
}

/** Run the model over the neuron text and draw it. */
function analyse() {
  const text = $("neuron-text").value;
  const chars = Array.from(text);
  const trace = model.trace(model.encode(text), startState(model, $("cold-start").checked));
  view = { chars, trace, series: unitSeries(model, trace) };
  const unknown = model.unknownChars(text);
  $("neuron-status").textContent = unknown.length
    ? `Characters outside the model's vocabulary, read as the unknown id 0: ${JSON.stringify(unknown.join(""))}`
    : "";
  $("neurons").replaceChildren(...chars.map((ch, t) => {
    const span = document.createElement("span");
    span.textContent = shown(ch);
    span.dataset.t = t;
    return span;
  }));
  findUnits();
}

function selectedUnit() {
  const layer = Number($("layer").value), kind = $("kind").value;
  const unit = Math.max(0, Math.min(model.H - 1, Math.trunc(Number($("unit").value) || 0)));
  return view.series.find((s) => s.layer === layer && s.unit === unit && s.kind === kind);
}

function colour() {
  if (!view) return;
  const { values } = selectedUnit();
  $("neurons").childNodes.forEach((span, t) => {
    span.style.backgroundColor = activationColour(values[t]);
  });
}

function selectUnit({ layer, unit, kind }) {
  $("layer").value = layer;
  $("unit").value = unit;
  $("kind").value = kind;
  colour();
}

/** List the units that track the chosen feature best, and show the first. */
function findUnits() {
  const feature = $("feature").value;
  const best = rankUnits(view.series, view.chars, feature, UNITS_LISTED);
  if (best.length && view.chars.length) selectUnit(best[0]);
  else colour();
  $("units").replaceChildren(...best.map(({ layer, unit, kind, score }) => {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    const what = feature === "variance" ? `variance ${score.toFixed(3)}` : `r = ${score.toFixed(2)}`;
    button.textContent = `layer ${layer}, unit ${unit}, ${kind}: ${what}`;
    button.addEventListener("click", () => selectUnit({ layer, unit, kind }));
    item.append(button);
    return item;
  }));
}

function showTooltip(event) {
  const t = Number(event.target.dataset?.t);
  if (!view || !Number.isInteger(t)) return;
  const logits = view.trace.logits.subarray(t * model.V, (t + 1) * model.V);
  const probs = softmax(logits);
  const top = ranks(probs).slice(0, 5).map((id) => `${JSON.stringify(model.vocab[id])} `
    + `${(100 * probs[id]).toFixed(1)}%`);
  const { values } = selectedUnit();
  const tip = $("tooltip");
  tip.textContent = `after ${JSON.stringify(view.chars[t])} (activation ${values[t].toFixed(3)}): `
    + top.join(", ");
  tip.style.left = `${event.pageX + 12}px`;
  tip.style.top = `${event.pageY + 16}px`;
  tip.hidden = false;
}

// ---- for tests and the console ---------------------------------------------------------

/** Logits and states after each character of `text`, as plain arrays: logits
 * [T][vocab_size], h and c [T][num_layers * rnn_size] (layer k at k * rnn_size). */
function traceArrays(text, coldStart = false) {
  const trace = model.trace(model.encode(text), startState(model, coldStart));
  const rows = (a, width) => Array.from({ length: trace.T },
    (_, t) => Array.from(a.subarray(t * width, (t + 1) * width)));
  const size = model.L * model.H;
  return { logits: rows(trace.logits, model.V), h: rows(trace.h, size), c: rows(trace.c, size) };
}

/** The first `count` doubles of NumPy's default_rng(seed).random(). */
function uniforms(seed, count) {
  const rng = new NumpyRandom(seed);
  return Array.from({ length: count }, () => rng.random());
}

window.charrnn = {
  trace: traceArrays,
  uniforms,
  generate: () => guarded(generate),
  get model() {
    return model && { config: model.config, vocab: model.vocab };
  },
};

// ---- wiring -------------------------------------------------------------------------------

function wire() {
  $("controls").addEventListener("submit", (event) => {
    event.preventDefault();
    guarded(generate);
  });
  $("stop").addEventListener("click", stopGeneration);
  $("model-file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) guarded(() => useFile(file));
  });
  $("load-shipped").addEventListener("click", () => guarded(() => useUrl(...shipped("default"))));
  $("load-large").addEventListener("click", () => guarded(() => useUrl(...shipped("large"))));
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    document.body.classList.add("dragging");
  });
  document.addEventListener("dragleave", () => document.body.classList.remove("dragging"));
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    document.body.classList.remove("dragging");
    const file = event.dataTransfer?.files[0];
    if (file) guarded(() => useFile(file));
  });
  const whenLoaded = (action) => () => guarded(async () => model && action());
  $("analyse").addEventListener("click", whenLoaded(analyse));
  $("use-output").addEventListener("click", whenLoaded(() => {
    $("neuron-text").value = $("output").textContent;
    analyse();
  }));
  for (const id of ["layer", "unit", "kind"]) $(id).addEventListener("change", whenLoaded(colour));
  $("feature").addEventListener("change", whenLoaded(() => view && findUnits()));
  $("cold-start").addEventListener("change", whenLoaded(analyse));
  $("neurons").addEventListener("mouseover", showTooltip);
  $("neurons").addEventListener("mouseleave", () => { $("tooltip").hidden = true; });
}

async function main() {
  wire();
  const { modelUrl, run } = applyUrlParams();
  if (modelUrl && Object.hasOwn(SHIPPED_FILES, modelUrl)) await useUrl(...shipped(modelUrl));
  else if (modelUrl) await useUrl(new URL(modelUrl, location.href), modelUrl);
  else await useUrl(...shipped("default"));
  if (run) await generate();
}

guarded(main);
