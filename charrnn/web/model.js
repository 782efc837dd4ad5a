// The model in JavaScript: Embedding -> num_layers x (LSTM | GRU | RNN) -> Dense, one
// character at a time, the operations of the NumPy reference's generation step
// (charrnn/frameworks/numpy_model.py, `layer_step` and `_step`) on Float32Arrays.
//
// Every value NumPy holds as float32 is rounded to float32 here too (Math.fround) at the
// same points: each product's result, each sum with a bias, each gate. The only
// difference is inside a dot product, which sums in float64 where NumPy's BLAS sums in
// float32; tests/test_web.py holds the logits and activations to the reference's within
// 1e-4. Layouts are the canonical ones (docs/SPEC.md section 5): kernels (G*H, in),
// gates i, f, g, o (LSTM), r, z, n (GRU, with b_ih and b_hh).

const f32 = Math.fround;

/** NumPy's float32 sigmoid: e = exp(-|z|), then 1 / (1 + e) for z >= 0, else e / (1 + e). */
function sigmoid(z) {
  const e = f32(Math.exp(-Math.abs(z)));
  return f32((z >= 0 ? 1 : e) / f32(1 + e));
}

/** out[r] = f32(W[r] . x) for a row-major (rows, n) matrix W. Four partial sums, which
 * the CPU adds side by side: a step of the shipped model took 519-699 us against 776-994
 * us with one sum (Node 20, six rounds taking turns, on a loaded 2-core machine). */
function matVec(w, rows, n, x, out) {
  const n4 = n - (n % 4);
  for (let r = 0, at = 0; r < rows; r++, at += n) {
    let s0 = 0, s1 = 0, s2 = 0, s3 = 0, j = 0;
    for (; j < n4; j += 4) {
      s0 += w[at + j] * x[j];
      s1 += w[at + j + 1] * x[j + 1];
      s2 += w[at + j + 2] * x[j + 2];
      s3 += w[at + j + 3] * x[j + 3];
    }
    for (; j < n; j++) s0 += w[at + j] * x[j];
    out[r] = f32((s0 + s1) + (s2 + s3));
  }
}

export class CharModel {
  /** From a portable model ({config, vocab, weights}, safetensors.js `loadPortable`). */
  constructor({ config, vocab, weights }) {
    this.config = config;
    this.vocab = vocab; // characters by id; "" is the unknown id 0
    this.index = new Map(vocab.map((ch, id) => [ch, id]));
    this.index.delete("");
    const { cell, num_layers: L, rnn_size: H, embedding_size: E, vocab_size: V } = config;
    this.cell = cell;
    this.L = L;
    this.H = H;
    this.E = E;
    this.V = V;
    this.G = { lstm: 4, gru: 3, rnn: 1 }[cell];
    this.weights = weights;
    this.layers = [];
    for (let k = 0; k < L; k++) {
      const p = (name) => weights[`${cell}.${k}.${name}`];
      this.layers.push({ inputSize: k === 0 ? E : H, w_ih: p("w_ih"), w_hh: p("w_hh"),
        b_ih: cell === "gru" ? p("b_ih") : p("bias"), b_hh: cell === "gru" ? p("b_hh") : null });
    }
    // Scratch, reused every step: the input and recurrent projections (G*H), the layer input.
    this.xp = new Float32Array(this.G * H);
    this.hp = new Float32Array(this.G * H);
    this.logits = new Float32Array(V);
    // Layer 0's input projection depends only on the character: computed once per id.
    this.inputProjections = new Array(V);
  }

  /** The all-zero state: h and c, each (num_layers * rnn_size), layer k at [k*H, (k+1)*H).
   * GRU and RNN have no cell state; their c stays zero (docs/SPEC.md section 10). */
  zeroState() {
    return { h: new Float32Array(this.L * this.H), c: new Float32Array(this.L * this.H) };
  }

  copyState(state) {
    return { h: state.h.slice(), c: state.c.slice() };
  }

  /** Ids of `text`'s characters (code points); characters outside the vocabulary are 0. */
  encode(text) {
    return Array.from(text, (ch) => this.index.get(ch) ?? 0);
  }

  /** The characters of `text` that have no id, each once, in order of appearance. */
  unknownChars(text) {
    return [...new Set(Array.from(text).filter((ch) => !this.index.has(ch)))];
  }

  /** x W_ih^T + b_ih of layer 0 for character `id`: f32(f32(x . w) + b), as NumPy. */
  inputProjection(id) {
    let xp = this.inputProjections[id];
    if (!xp) {
      const { w_ih, b_ih } = this.layers[0];
      const rows = this.G * this.H;
      xp = new Float32Array(rows);
      matVec(w_ih, rows, this.E, this.weights.embedding.subarray(id * this.E, (id + 1) * this.E),
        xp);
      for (let r = 0; r < rows; r++) xp[r] = f32(xp[r] + b_ih[r]);
      this.inputProjections[id] = xp;
    }
    return xp;
  }

  /** Feed character `id`: updates `state` in place and returns the logits (vocab_size),
   * a buffer the next call overwrites. */
  step(id, state) {
    const { H, G } = this;
    const rows = G * H;
    let x = null; // the layer below's new h (a view into state.h), after layer 0
    for (let k = 0; k < this.L; k++) {
      const layer = this.layers[k];
      let xp = this.xp;
      if (k === 0) {
        xp = this.inputProjection(id);
      } else {
        matVec(layer.w_ih, rows, H, x, xp);
        for (let r = 0; r < rows; r++) xp[r] = f32(xp[r] + layer.b_ih[r]);
      }
      const h = state.h.subarray(k * H, (k + 1) * H);
      const c = state.c.subarray(k * H, (k + 1) * H);
      const hp = this.hp;
      matVec(layer.w_hh, rows, H, h, hp); // from the old h, before it is overwritten
      if (this.cell === "lstm") {
        for (let j = 0; j < H; j++) {
          // z = (x W_ih^T + bias) + h W_hh^T, gates i, f, g, o
          const i = sigmoid(f32(xp[j] + hp[j]));
          const f = sigmoid(f32(xp[H + j] + hp[H + j]));
          const g = f32(Math.tanh(f32(xp[2 * H + j] + hp[2 * H + j])));
          const o = sigmoid(f32(xp[3 * H + j] + hp[3 * H + j]));
          c[j] = f32(f32(f * c[j]) + f32(i * g)); // c' = f * c + i * g
          h[j] = f32(o * f32(Math.tanh(c[j]))); // h' = o * tanh(c')
        }
      } else if (this.cell === "gru") {
        const b_hh = layer.b_hh;
        for (let j = 0; j < H; j++) {
          // hp = h W_hh^T + b_hh; r, z = sigmoid(xp + hp); n = tanh(xp_n + r * hp_n)
          const hpR = f32(hp[j] + b_hh[j]);
          const hpZ = f32(hp[H + j] + b_hh[H + j]);
          const hpN = f32(hp[2 * H + j] + b_hh[2 * H + j]);
          const r = sigmoid(f32(xp[j] + hpR));
          const z = sigmoid(f32(xp[H + j] + hpZ));
          const n = f32(Math.tanh(f32(xp[2 * H + j] + f32(r * hpN))));
          h[j] = f32(f32(f32(1 - z) * n) + f32(z * h[j])); // h' = (1 - z) * n + z * h
        }
      } else {
        for (let j = 0; j < H; j++) h[j] = f32(Math.tanh(f32(hp[j] + xp[j])));
      }
      x = h;
    }
    const logits = this.logits;
    matVec(this.weights["dense.w"], this.V, H, x, logits);
    const b = this.weights["dense.b"];
    for (let v = 0; v < this.V; v++) logits[v] = f32(logits[v] + b[v]);
    return logits;
  }

  /** Every step of `ids` from `state` (left as it is): logits (T * vocab_size), h and c
   * (T * num_layers * rnn_size) after each character, the neuron view's data. */
  trace(ids, state) {
    state = this.copyState(state);
    const T = ids.length, size = this.L * this.H;
    const out = { T, logits: new Float32Array(T * this.V), h: new Float32Array(T * size),
      c: new Float32Array(T * size) };
    ids.forEach((id, t) => {
      out.logits.set(this.step(id, state), t * this.V);
      out.h.set(state.h, t * size);
      out.c.set(state.c, t * size);
    });
    return out;
  }

  /** Trainable parameters, one bias per LSTM or RNN layer (ModelConfig.num_params). */
  numParams() {
    return Object.values(this.weights).reduce((total, a) => total + a.length, 0);
  }
}
