// Choosing the next character, as charrnn/common/sampling.py defines it (docs/SPEC.md
// section 10, "Generation"): softmax(logits / temperature) in float64, then top-k, then
// top-p (the smallest set of ranks whose probability reaches top_p), renormalised; ranks
// by descending probability, ties broken by id; one uniform u per character, by inverse
// CDF over the ids in id order. Temperature 0 is the argmax. The unknown id 0 is never
// chosen.

/** The sampling settings' errors, as the CLI's `check_sampling` words them. */
export function checkSampling({ temperature, topK, topP }) {
  if (!(temperature >= 0)) throw new Error(`temperature ${temperature}: must be >= 0 (0 is greedy)`);
  if (!(Number.isInteger(topK) && topK >= 0)) throw new Error(`top_k ${topK}: must be an integer >= 0 (0 keeps all)`);
  if (!(topP > 0 && topP <= 1)) throw new Error(`top_p ${topP}: must be in (0, 1]`);
}

/** The id with the largest logit (the first of equals), id 0 left out. */
export function argmax(logits) {
  let best = 1;
  for (let v = 2; v < logits.length; v++) if (logits[v] > logits[best]) best = v;
  return best;
}

/** softmax(logits / temperature) as a Float64Array, id 0 at probability 0. */
export function softmax(logits, temperature = 1) {
  const probs = Float64Array.from(logits, (l) => l / temperature);
  probs[0] = -Infinity;
  let max = -Infinity;
  for (const p of probs) if (p > max) max = p;
  let total = 0;
  for (let v = 0; v < probs.length; v++) {
    probs[v] = Math.exp(probs[v] - max);
    total += probs[v];
  }
  for (let v = 0; v < probs.length; v++) probs[v] /= total;
  return probs;
}

/** Ids ordered by descending probability, ties by id. */
export function ranks(probs) {
  const ids = Array.from(probs.keys());
  return ids.sort((a, b) => probs[b] - probs[a] || a - b);
}

/** The next id from `logits` and a uniform `u` in [0, 1) (Python's `Sampler`). */
export function sample(logits, u, { temperature = 1, topK = 0, topP = 1 } = {}) {
  if (temperature === 0) return argmax(logits);
  const probs = softmax(logits, temperature);
  let kept = ranks(probs).slice(0, topK || probs.length);
  if (topP < 1) {
    let before = 0; // the mass of the ranks before this one
    kept = kept.filter((id) => {
      const keep = before < topP;
      before += probs[id];
      return keep;
    });
  }
  let total = 0;
  for (const id of kept) total += probs[id];
  // The cdf of the kept probabilities, renormalised, in id order: the first id whose
  // cdf exceeds u * cdf[-1]; past the top, the last id with a nonzero probability.
  kept.sort((a, b) => a - b);
  const cdf = [];
  let sum = 0;
  for (const id of kept) {
    sum += probs[id] / total;
    cdf.push(sum);
  }
  const x = u * sum;
  for (let k = 0; k < kept.length; k++) if (cdf[k] > x) return kept[k];
  for (let k = kept.length - 1; k >= 0; k--) if (probs[kept[k]] > 0) return kept[k];
  return kept[kept.length - 1];
}
