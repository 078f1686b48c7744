/**
 * Seeded mutants of a file, for fuzzing readers of untrusted input: each seed gives the same mutant on
 * every machine, so a failure names a seed that reproduces it. Mutations are what an attacker or a
 * damaged disk would do: flipped bits and bytes, numbers set to boundary values (at 8-byte alignment,
 * where NARs keep their lengths, and next to `hotspots` such as zip signatures), cuts, repeated and
 * deleted ranges, swapped words.
 */

/** mulberry32: small, fast, good enough to pick offsets. */
export function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const BOUNDARY_U64 = [0n, 1n, 7n, 8n, 255n, 256n, 4095n, 65535n, 2n ** 31n, 2n ** 32n - 1n, 2n ** 32n, 2n ** 53n, 2n ** 63n, 2n ** 64n - 1n];
const BOUNDARY_U32 = [0, 1, 0xffff, 0x7fffffff, 0xfffffffe, 0xffffffff];
const BOUNDARY_U16 = [0, 1, 0xff, 0xffff];

export interface Mutant {
  bytes: Buffer;
  /** What was done, for the failure message. */
  what: string;
}

/**
 * The `seed`th mutant of `base`: one to three mutations. `hotspots` are offsets worth aiming at (record
 * headers); numbers written there are 16- and 32-bit, as zip fields are.
 */
export function mutate(base: Buffer, seed: number, hotspots: number[] = []): Mutant {
  const next = random(seed);
  const pick = (n: number) => Math.floor(next() * n);
  let bytes = Buffer.from(base);
  const done: string[] = [];
  const count = 1 + pick(3);
  for (let m = 0; m < count && bytes.length > 0; m++) {
    const at = pick(bytes.length);
    switch (pick(9)) {
      case 0: {
        const bit = pick(8);
        bytes[at]! ^= 1 << bit;
        done.push(`flip bit ${bit} at ${at}`);
        break;
      }
      case 1: {
        const value = [0, 0xff, 0x7f, 0x80, pick(256)][pick(5)]!;
        bytes[at] = value;
        done.push(`byte ${at} = ${value}`);
        break;
      }
      case 2: {
        const aligned = at - (at % 8);
        if (aligned + 8 > bytes.length) break;
        const value = BOUNDARY_U64[pick(BOUNDARY_U64.length)]!;
        bytes.writeBigUInt64LE(value, aligned);
        done.push(`u64 at ${aligned} = ${value}`);
        break;
      }
      case 3: {
        const cut = pick(bytes.length);
        bytes = bytes.subarray(0, cut);
        done.push(`cut at ${cut}`);
        break;
      }
      case 4: {
        const length = 1 + pick(Math.min(64, bytes.length - at));
        bytes = Buffer.concat([bytes.subarray(0, at + length), bytes.subarray(at, at + length), bytes.subarray(at + length)]);
        done.push(`repeat ${length} bytes at ${at}`);
        break;
      }
      case 5: {
        const length = 1 + pick(Math.min(64, bytes.length - at));
        bytes = Buffer.concat([bytes.subarray(0, at), bytes.subarray(at + length)]);
        done.push(`delete ${length} bytes at ${at}`);
        break;
      }
      case 6: {
        const a = at - (at % 8);
        const b = pick(bytes.length) & ~7;
        if (a + 8 > bytes.length || b + 8 > bytes.length) break;
        const word = Buffer.from(bytes.subarray(a, a + 8));
        bytes.copy(bytes, a, b, b + 8);
        word.copy(bytes, b);
        done.push(`swap words at ${a} and ${b}`);
        break;
      }
      default: {
        if (hotspots.length === 0) {
          bytes[at]! ^= 0xff;
          done.push(`invert byte ${at}`);
          break;
        }
        const spot = hotspots[pick(hotspots.length)]! + pick(46);
        if (spot + 4 > bytes.length) break;
        if (next() < 0.5) {
          const value = BOUNDARY_U16[pick(BOUNDARY_U16.length)]!;
          bytes.writeUInt16LE(value, spot);
          done.push(`u16 at ${spot} = ${value}`);
        } else {
          const value = BOUNDARY_U32[pick(BOUNDARY_U32.length)]!;
          bytes.writeUInt32LE(value, spot);
          done.push(`u32 at ${spot} = ${value}`);
        }
      }
    }
  }
  return { bytes, what: done.join('; ') || 'nothing' };
}

/** Runs `task`, failing if it takes longer than `ms` (a hang is a finding too). */
export async function within<T>(ms: number, task: () => Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: still running after ${ms} ms (a hang?)`)), ms);
  });
  try {
    return await Promise.race([task(), timeout]);
  } finally {
    clearTimeout(timer);
  }
}
