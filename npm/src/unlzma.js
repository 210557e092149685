// Unpacks the wasm that the default and Node entries inline. npm/build.mjs packs it as a raw
// LZMA stream (xz --format=raw --lzma1=preset=9e,lc=3,lp=0,pb=0) in base64: about 15 % smaller
// than gzip's deflate, which is what DecompressionStream would have offered, and this decoder
// costs well under a kilobyte. npm/build.mjs decodes its own output with this very function and
// refuses to build unless it gets the wasm back byte for byte, so the decoder only ever meets
// input it is known to handle.
//
// It follows the LZMA specification's reference decoder (LzmaSpec.cpp in the LZMA SDK) for those
// parameters: 3 literal context bits, no literal or match position bits. It stops after `size`
// bytes (the stream's end marker is not read).

// Where each group of probabilities starts in `probs`; with pb=0 every per-position group has one
// entry per state. Bit trees are addressed from 1, so a tree's slot 0 goes unused.
const IS_REP = 12;
const IS_REP_G0 = 24;
const IS_REP_G1 = 36;
const IS_REP_G2 = 48;
const IS_REP0_LONG = 60;
const POS_SLOT = 72; // 4 trees of 64
const POS_SPECIAL = 328; // 115, reverse trees for distance slots 4 to 13
const ALIGN = 443; // 16
const MATCH_LENGTH = 459; // choice, choice 2, low (8), mid (8), high (256)
const REP_LENGTH = 733;
const LITERAL = 1007; // 8 contexts of 0x300
const PROBS = LITERAL + 8 * 0x300;

/** The `size` bytes that the raw LZMA stream `input` (a Uint8Array) decodes to. */
export function unlzma(input, size) {
  const out = new Uint8Array(size);
  const probs = new Uint16Array(PROBS).fill(1024);
  // The range coder; both numbers stay below 2^32 (plain doubles, no sign trouble).
  let range = 0xffffffff;
  let code = ((input[1] << 24) | (input[2] << 16) | (input[3] << 8) | input[4]) >>> 0;
  let next = 5;
  const normalize = () => {
    if (range < 0x1000000) {
      range *= 256;
      code = code * 256 + input[next++];
    }
  };
  const bit = (index) => {
    const probability = probs[index];
    const bound = (range >>> 11) * probability;
    let value = 0;
    if (code < bound) {
      range = bound;
      probs[index] = probability + ((2048 - probability) >> 5);
    } else {
      range -= bound;
      code -= bound;
      probs[index] = probability - (probability >> 5);
      value = 1;
    }
    normalize();
    return value;
  };
  const tree = (base, bits) => {
    let node = 1;
    for (let count = 0; count < bits; count++) node = node * 2 + bit(base + node);
    return node - (1 << bits);
  };
  const reverseTree = (base, bits) => {
    let node = 1;
    let value = 0;
    for (let count = 0; count < bits; count++) {
      const next = bit(base + node);
      node = node * 2 + next;
      value += next << count;
    }
    return value;
  };
  const direct = (bits) => {
    let value = 0;
    while (bits--) {
      range = range >>> 1;
      value *= 2;
      if (code >= range) {
        code -= range;
        value++;
      }
      normalize();
    }
    return value;
  };
  const length = (base) =>
    !bit(base) ? tree(base + 2, 3) : !bit(base + 1) ? 8 + tree(base + 10, 3) : 16 + tree(base + 18, 8);

  let state = 0;
  let rep0 = 0;
  let rep1 = 0;
  let rep2 = 0;
  let rep3 = 0;
  let position = 0;
  while (position < size) {
    if (!bit(state)) {
      // A literal, coded against the byte at rep0 right after a match.
      const literal = LITERAL + 0x300 * (position ? out[position - 1] >> 5 : 0);
      let symbol = 1;
      if (state >= 7) {
        let match = out[position - rep0 - 1];
        while (symbol < 256) {
          const matchBit = (match >> 7) & 1;
          match <<= 1;
          const value = bit(literal + ((1 + matchBit) << 8) + symbol);
          symbol = symbol * 2 + value;
          if (matchBit !== value) break;
        }
      }
      while (symbol < 256) symbol = symbol * 2 + bit(literal + symbol);
      out[position++] = symbol;
      state = state < 4 ? 0 : state < 10 ? state - 3 : state - 6;
      continue;
    }
    let count;
    if (!bit(IS_REP + state)) {
      // A match at a new distance.
      rep3 = rep2;
      rep2 = rep1;
      rep1 = rep0;
      count = length(MATCH_LENGTH);
      state = state < 7 ? 7 : 10;
      const slot = tree(POS_SLOT + 64 * (count < 3 ? count : 3), 6);
      if (slot < 4) {
        rep0 = slot;
      } else {
        const bits = (slot >> 1) - 1;
        rep0 = (2 | (slot & 1)) * 2 ** bits;
        rep0 += slot < 14 ? reverseTree(POS_SPECIAL + rep0 - slot, bits) : direct(bits - 4) * 16 + reverseTree(ALIGN, 4);
      }
    } else {
      // A match at one of the last four distances.
      if (!bit(IS_REP_G0 + state)) {
        if (!bit(IS_REP0_LONG + state)) {
          // One byte from rep0.
          state = state < 7 ? 9 : 11;
          out[position] = out[position - rep0 - 1];
          position++;
          continue;
        }
      } else {
        let distance;
        if (!bit(IS_REP_G1 + state)) {
          distance = rep1;
        } else {
          if (!bit(IS_REP_G2 + state)) {
            distance = rep2;
          } else {
            distance = rep3;
            rep3 = rep2;
          }
          rep2 = rep1;
        }
        rep1 = rep0;
        rep0 = distance;
      }
      count = length(REP_LENGTH);
      state = state < 7 ? 8 : 11;
    }
    for (count += 2; count-- && position < size; position++) out[position] = out[position - rep0 - 1];
  }
  return out;
}
