// NumPy's default generator in JavaScript: `np.random.default_rng(seed).random()`, the
// same doubles bit for bit (SeedSequence -> PCG64 -> 53-bit float).
//
// Generation needs it twice: the warm-up that gives every sample its starting state
// draws its uniforms from default_rng(0) (charrnn/common/generate.py, Generator.warm_state),
// and with it a page seeded by `random_seed` draws the uniforms the CLI draws for
// `--random-seed`. The algorithms are NumPy's: numpy/random/bit_generator.pyx
// (SeedSequence, after Melissa O'Neill's seed_seq_fe) and numpy/random/src/pcg64/pcg64.h
// (PCG64: a 128-bit LCG, XSL-RR output). 128-bit and 32-bit unsigned arithmetic is done
// with BigInt and Math.imul; tests/test_web.py compares the doubles with NumPy's.

const MASK32 = 0xffffffffn;
const MASK64 = (1n << 64n) - 1n;
const MASK128 = (1n << 128n) - 1n;
const PCG_MULTIPLIER = 0x2360ed051fc65da44385df649fccf645n;

// SeedSequence's hashing constants (bit_generator.pyx).
const INIT_A = 0x43b0d7e5, MULT_A = 0x931e8875, INIT_B = 0x8b51f9dd, MULT_B = 0x58f38ded;
const MIX_MULT_L = 0xca01f9dd, MIX_MULT_R = 0x4973f715, XSHIFT = 16, POOL_SIZE = 4;

/** The uint32 words of a non-negative integer seed, least significant first ([0] for 0). */
function entropyWords(seed) {
  let value = BigInt(seed);
  if (value < 0n) throw new RangeError(`random seed ${seed}: must be >= 0`);
  const words = [];
  do {
    words.push(Number(value & MASK32));
    value >>= 32n;
  } while (value > 0n);
  return words;
}

/** `np.random.SeedSequence(seed).generate_state(4, np.uint64)` as four BigInts. */
export function seedSequenceState(seed) {
  const entropy = entropyWords(seed);
  let hashConst = INIT_A;
  const hashmix = (value) => {
    value = (value ^ hashConst) >>> 0;
    hashConst = Math.imul(hashConst, MULT_A) >>> 0;
    value = Math.imul(value, hashConst) >>> 0;
    return (value ^ (value >>> XSHIFT)) >>> 0;
  };
  const mix = (x, y) => {
    const result = (Math.imul(MIX_MULT_L, x) - Math.imul(MIX_MULT_R, y)) >>> 0;
    return (result ^ (result >>> XSHIFT)) >>> 0;
  };
  const pool = [];
  for (let i = 0; i < POOL_SIZE; i++) pool.push(hashmix(i < entropy.length ? entropy[i] : 0));
  for (let src = 0; src < POOL_SIZE; src++) {
    for (let dst = 0; dst < POOL_SIZE; dst++) {
      if (src !== dst) pool[dst] = mix(pool[dst], hashmix(pool[src]));
    }
  }
  for (let src = POOL_SIZE; src < entropy.length; src++) {
    for (let dst = 0; dst < POOL_SIZE; dst++) pool[dst] = mix(pool[dst], hashmix(entropy[src]));
  }
  // generate_state: 8 uint32 words from the pool, read as 4 little-endian uint64.
  hashConst = INIT_B;
  const words = [];
  for (let i = 0; i < 8; i++) {
    let value = (pool[i % POOL_SIZE] ^ hashConst) >>> 0;
    hashConst = Math.imul(hashConst, MULT_B) >>> 0;
    value = Math.imul(value, hashConst) >>> 0;
    words.push((value ^ (value >>> XSHIFT)) >>> 0);
  }
  const out = [];
  for (let i = 0; i < 4; i++) out.push((BigInt(words[2 * i + 1]) << 32n) | BigInt(words[2 * i]));
  return out;
}

/** `np.random.default_rng(seed)`: `random()` gives the same doubles as NumPy's. */
export class NumpyRandom {
  constructor(seed) {
    const [s0, s1, i0, i1] = seedSequenceState(seed);
    // pcg64_set_seed -> pcg_setseq_128_srandom_r
    this.inc = ((((i0 << 64n) | i1) << 1n) | 1n) & MASK128;
    this.state = 0n;
    this.step();
    this.state = (this.state + ((s0 << 64n) | s1)) & MASK128;
    this.step();
  }

  step() {
    this.state = (this.state * PCG_MULTIPLIER + this.inc) & MASK128;
  }

  /** The next uint64 (a BigInt): advance, then XSL-RR of the new state. */
  nextUint64() {
    this.step();
    const xored = ((this.state >> 64n) ^ this.state) & MASK64;
    const rot = this.state >> 122n;
    return ((xored >> rot) | (xored << ((64n - rot) & 63n))) & MASK64;
  }

  /** A double in [0, 1): the top 53 bits of a uint64 over 2^53. */
  random() {
    return Number(this.nextUint64() >> 11n) / 9007199254740992;
  }
}
