// Generation as the CLI does it (charrnn/common/generate.py, docs/SPEC.md section 10,
// "Generation"): from the warm state (or zeros with cold start), the seed primes the
// state one character at a time (all but its last), then each step feeds the last
// character and samples the next from one uniform of the seeded generator.

import { NumpyRandom } from "./random.js";
import { sample } from "./sampling.js";

// The warm-up (Generator.warm_state): from zeros, feed "\n" and sample the model's own
// text, top-3 at temperature 1, from default_rng(0), until it ends a paragraph ("\n\n"
// after at least 50 characters, at most 500 characters).
export const WARMUP_MIN_CHARS = 50, WARMUP_MAX_CHARS = 500, WARMUP_SEED = 0;

/** The state generation starts from: the warm state, computed once per model, or zeros. */
export function startState(model, coldStart) {
  if (coldStart) return model.zeroState();
  if (!model.warm) {
    const state = model.zeroState();
    const newline = model.index.get("\n");
    if (newline !== undefined) {
      const rng = new NumpyRandom(WARMUP_SEED);
      let last = newline, text = "", count = 0;
      for (let t = 0; t < WARMUP_MAX_CHARS; t++) {
        last = sample(model.step(last, state), rng.random(), { temperature: 1, topK: 3 });
        text += model.vocab[last];
        count += 1;
        if (count >= WARMUP_MIN_CHARS && text.endsWith("\n\n")) break;
      }
    }
    model.warm = state;
  }
  return model.copyState(model.warm);
}

/** The seed's ids; an empty seed, or one with characters the model lacks, is an Error. */
export function checkSeed(model, seed) {
  if (!seed) throw new Error("the seed text is empty");
  const unknown = model.unknownChars(seed);
  if (unknown.length) {
    throw new Error("seed text has characters outside the model's vocabulary: "
      + JSON.stringify(unknown.join("")));
  }
  return model.encode(seed);
}

/** The generated characters one at a time (a generator: the caller decides when to pause
 * or stop). `rng` gives the uniforms (`random()`); `sampling` is {temperature, topK, topP}. */
export function* generateChars(model, seed, length, rng, sampling, coldStart = false) {
  const ids = checkSeed(model, seed);
  const state = startState(model, coldStart);
  for (let t = 0; t < ids.length - 1; t++) model.step(ids[t], state);
  let last = ids[ids.length - 1];
  for (let t = 0; t < length; t++) {
    last = sample(model.step(last, state), rng.random(), sampling);
    yield model.vocab[last];
  }
}
