// Reading a portable `.safetensors` file (docs/SPEC.md section 5) in the browser, with the
// checks of charrnn/common/weights.py `load_portable`: every problem is one Error whose
// message names the file and what is wrong.
//
// The safetensors layout: an 8-byte little-endian header length N, N bytes of JSON
// ({name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {key: string}}),
// then the arrays' bytes, offsets counted from the end of the header.

export const FORMAT = "char-rnn-portable/1";
const CELLS = { lstm: 4, gru: 3, rnn: 1 }; // cell -> blocks of rnn_size rows in its kernels
const CONFIG_DEFAULTS = { embedding_size: 32, rnn_size: 128, num_layers: 2, drop_rate: 0.0,
  vocab_size: 98, cell: "lstm" }; // charrnn/common/config.py ModelConfig
const DTYPES = { F32: 4, F64: 8 }; // bytes per element; portable files are float32

/** {tensors: Map(name -> {shape, data: Float32Array}), metadata: {key: string}}. */
export function parseSafetensors(buffer, source) {
  const fail = (what) => new Error(`${source}: not a readable .safetensors file (${what})`);
  if (buffer.byteLength < 8) throw fail(`${buffer.byteLength} bytes, shorter than a header`);
  const headerLength = Number(new DataView(buffer).getBigUint64(0, true));
  if (headerLength < 2 || 8 + headerLength > buffer.byteLength) {
    throw fail(`header length ${headerLength} does not fit in ${buffer.byteLength} bytes`);
  }
  let header;
  try {
    const text = new TextDecoder("utf-8", { fatal: true })
      .decode(new Uint8Array(buffer, 8, headerLength));
    header = JSON.parse(text);
  } catch (error) {
    throw fail(`header is not UTF-8 JSON: ${error.message}`);
  }
  if (header === null || typeof header !== "object" || Array.isArray(header)) {
    throw fail("header is not a JSON object");
  }
  const dataStart = 8 + headerLength;
  const metadata = header.__metadata__ ?? {};
  const tensors = new Map();
  for (const [name, info] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const size = DTYPES[info?.dtype];
    if (!size) throw fail(`${name} has dtype ${info?.dtype}; the portable format is F32`);
    const { shape, data_offsets: offsets } = info;
    const count = Array.isArray(shape) ? shape.reduce((a, b) => a * b, 1) : NaN;
    if (!Array.isArray(offsets) || offsets.length !== 2 || !Number.isInteger(count)
        || offsets[1] - offsets[0] !== count * size || offsets[0] < 0
        || dataStart + offsets[1] > buffer.byteLength) {
      throw fail(`${name}: shape ${JSON.stringify(shape)} and offsets `
        + `${JSON.stringify(offsets)} do not fit the file`);
    }
    // A copy: the slice is then aligned for a typed array whatever the header's length.
    const bytes = buffer.slice(dataStart + offsets[0], dataStart + offsets[1]);
    const data = info.dtype === "F32" ? new Float32Array(bytes)
      : Float32Array.from(new Float64Array(bytes));
    tensors.set(name, { shape, data });
  }
  return { tensors, metadata };
}

/** The canonical shapes of every array (ModelConfig.param_shapes). */
export function paramShapes(config) {
  const { vocab_size: V, embedding_size: E, rnn_size: H, num_layers: L, cell } = config;
  const shapes = { embedding: [V, E] };
  const rows = CELLS[cell] * H;
  for (let k = 0; k < L; k++) {
    shapes[`${cell}.${k}.w_ih`] = [rows, k === 0 ? E : H];
    shapes[`${cell}.${k}.w_hh`] = [rows, H];
    for (const bias of cell === "gru" ? ["b_ih", "b_hh"] : ["bias"]) {
      shapes[`${cell}.${k}.${bias}`] = [rows];
    }
  }
  shapes["dense.w"] = [V, H];
  shapes["dense.b"] = [V];
  return shapes;
}

/** A portable model from a file's bytes: {config, vocab, weights, metadata}; `vocab` is
 * the characters by id, "" for the unknown id 0. */
export function loadPortable(buffer, source) {
  const { tensors, metadata } = parseSafetensors(buffer, source);
  const missingMeta = ["format", "config", "vocab"].filter((key) => !(key in metadata));
  if (missingMeta.length) {
    throw new Error(`${source}: missing metadata ${JSON.stringify(missingMeta)}; `
      + "not a char-rnn portable file");
  }
  if (metadata.format !== FORMAT) {
    throw new Error(`${source}: format ${JSON.stringify(metadata.format)}, expected "${FORMAT}"`);
  }
  let config, vocab;
  try {
    config = { ...CONFIG_DEFAULTS, ...JSON.parse(metadata.config) };
    vocab = JSON.parse(metadata.vocab);
  } catch (error) {
    throw new Error(`${source}: unreadable config or vocab metadata (${error.message})`);
  }
  if (!(config.cell in CELLS)) {
    throw new Error(`${source}: unknown cell ${JSON.stringify(config.cell)}: choose from `
      + Object.keys(CELLS).join(", "));
  }
  for (const key of ["embedding_size", "rnn_size", "num_layers", "vocab_size"]) {
    if (!Number.isInteger(config[key]) || config[key] < 1) {
      throw new Error(`${source}: config ${key} ${JSON.stringify(config[key])} is not a `
        + "positive integer");
    }
  }
  if (!Array.isArray(vocab) || vocab[0] !== ""
      || vocab.slice(1).some((ch) => typeof ch !== "string" || [...ch].length !== 1)
      || new Set(vocab).size !== vocab.length) {
    throw new Error(`${source}: vocab metadata is not a list of distinct single characters `
      + 'after the unknown entry ""');
  }
  if (vocab.length !== config.vocab_size) {
    throw new Error(`${source}: vocabulary has ${vocab.length} ids, config ${config.vocab_size}`);
  }
  const expected = paramShapes(config);
  const missing = Object.keys(expected).filter((name) => !tensors.has(name)).sort();
  const extra = [...tensors.keys()].filter((name) => !(name in expected)).sort();
  if (missing.length || extra.length) {
    throw new Error(`${source}: weights do not match the config (missing `
      + `${missing.length ? missing.join(", ") : "none"}, unexpected `
      + `${extra.length ? extra.join(", ") : "none"})`);
  }
  const weights = {};
  for (const [name, shape] of Object.entries(expected)) {
    const tensor = tensors.get(name);
    if (JSON.stringify(tensor.shape) !== JSON.stringify(shape)) {
      throw new Error(`${source}: ${name} has shape (${tensor.shape.join(", ")}), the config `
        + `needs (${shape.join(", ")})`);
    }
    if (!tensor.data.every(Number.isFinite)) {
      throw new Error(`${source}: non-finite values in ${name}`);
    }
    weights[name] = tensor.data;
  }
  return { config, vocab, weights, metadata };
}
