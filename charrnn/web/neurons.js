// The neuron view's numbers, after Karpathy's "The Unreasonable Effectiveness of Recurrent
// Neural Networks": a text's activations from `CharModel.trace`, features of the text a
// unit may track, and the units that track them best.
//
// A unit is (layer, index, kind): kind "h" (the hidden state, in (-1, 1)) or, for the
// LSTM, "c" (the cell, unbounded, shown as tanh(c) as in the post).

/** Per-character features of `chars` (an array of characters), each a Float64Array:
 * inside "double quotes", inside (round), [square] or {curly} brackets, and the
 * position in the line (0 at a line's first character). Each describes the character
 * just read, which is what the state after it has seen. */
export function textFeatures(chars) {
  const T = chars.length;
  const quote = new Float64Array(T), bracket = new Float64Array(T), column = new Float64Array(T);
  let inQuote = false, depth = 0, col = 0;
  chars.forEach((ch, t) => {
    if (ch === '"') inQuote = !inQuote;
    if ("([{".includes(ch)) depth += 1;
    if (")]}".includes(ch)) depth = Math.max(0, depth - 1);
    quote[t] = inQuote || ch === '"' ? 1 : 0; // the closing quote is still inside
    bracket[t] = depth > 0 || ")]}".includes(ch) ? 1 : 0;
    column[t] = col;
    col = ch === "\n" ? 0 : col + 1;
  });
  return { quote, bracket, column };
}

export const FEATURES = {
  quote: 'inside "quotes"',
  bracket: "inside (brackets)",
  column: "position in the line",
  variance: "variance (most active)",
};

/** Every unit's series over the text: {layer, unit, kind, values: Float64Array(T)}. */
export function unitSeries(model, trace) {
  const { T } = trace, size = model.L * model.H;
  const kinds = model.cell === "lstm" ? ["h", "c"] : ["h"];
  const series = [];
  for (const kind of kinds) {
    for (let layer = 0; layer < model.L; layer++) {
      for (let unit = 0; unit < model.H; unit++) {
        const values = new Float64Array(T);
        const at = layer * model.H + unit;
        for (let t = 0; t < T; t++) {
          const v = trace[kind][t * size + at];
          values[t] = kind === "c" ? Math.tanh(v) : v;
        }
        series.push({ layer, unit, kind, values });
      }
    }
  }
  return series;
}

function mean(a) {
  let s = 0;
  for (const v of a) s += v;
  return s / a.length;
}

/** Pearson's correlation of two series (0 where either is constant). */
export function correlation(a, b) {
  const ma = mean(a), mb = mean(b);
  let sab = 0, saa = 0, sbb = 0;
  for (let t = 0; t < a.length; t++) {
    const da = a[t] - ma, db = b[t] - mb;
    sab += da * db;
    saa += da * da;
    sbb += db * db;
  }
  return saa > 0 && sbb > 0 ? sab / Math.sqrt(saa * sbb) : 0;
}

export function variance(a) {
  const m = mean(a);
  let s = 0;
  for (const v of a) s += (v - m) * (v - m);
  return s / a.length;
}

/** The `count` units that track `feature` best: by |correlation| with it, or by variance;
 * each {layer, unit, kind, score} with score the correlation (signed) or the variance. */
export function rankUnits(series, chars, feature, count = 10) {
  const features = textFeatures(chars);
  const scored = series.map(({ layer, unit, kind, values }) => ({ layer, unit, kind,
    score: feature === "variance" ? variance(values) : correlation(values, features[feature]) }));
  scored.sort((a, b) => Math.abs(b.score) - Math.abs(a.score));
  return scored.slice(0, count);
}

/** A CSS colour for an activation in [-1, 1]: red below zero, blue above, clear at zero,
 * light enough at the ends for the character to stay readable. */
export function activationColour(value) {
  const v = Math.max(-1, Math.min(1, value));
  const alpha = (0.75 * Math.abs(v)).toFixed(3);
  return v >= 0 ? `rgba(33, 120, 230, ${alpha})` : `rgba(225, 40, 30, ${alpha})`;
}
