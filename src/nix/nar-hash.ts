import { NIX_BASE32_DIGITS } from './store-path.js';

const SHA256_BYTES = 32;
const BASE32_CHARS = Math.ceil((SHA256_BYTES * 8) / 5); // 52
const BASE32_VALUE = new Map([...NIX_BASE32_DIGITS].map((ch, i) => [ch, i]));

/**
 * A sha256 hash as Nix prints it, as lowercase hex; null when it is not one.
 * Accepts SRI (`sha256-<base64>`, Nix ≥ 2.4 path-info) and `sha256:` followed by nix-base32 (older Nix),
 * hex or base64; the `sha256:` prefix may be left out for base32 and hex.
 */
export function sha256ToHex(text: string): string | null {
  let body: string;
  if (text.startsWith('sha256-')) return base64ToHex(text.slice(7));
  if (text.startsWith('sha256:')) body = text.slice(7);
  else body = text;
  if (body.length === 64 && /^[0-9a-fA-F]+$/.test(body)) return body.toLowerCase();
  if (body.length === BASE32_CHARS) return nixBase32ToHex(body);
  if (text.startsWith('sha256:')) return base64ToHex(body);
  return null;
}

function base64ToHex(body: string): string | null {
  if (!/^[A-Za-z0-9+/]{43}=$/.test(body)) return null;
  const bytes = Buffer.from(body, 'base64');
  return bytes.length === SHA256_BYTES ? bytes.toString('hex') : null;
}

/**
 * Nix's base-32 is little-endian in an unusual way: the last character holds the lowest 5 bits of byte 0.
 * Mirrors libutil's parseHash for base32 (and rejects bits beyond the hash's size like it does).
 */
function nixBase32ToHex(text: string): string | null {
  const bytes = Buffer.alloc(SHA256_BYTES);
  for (let n = 0; n < text.length; n++) {
    const digit = BASE32_VALUE.get(text[text.length - 1 - n]!);
    if (digit === undefined) return null;
    const bit = n * 5;
    const i = bit >> 3;
    const j = bit & 7;
    bytes[i] |= (digit << j) & 0xff;
    const carry = digit >> (8 - j);
    if (i < SHA256_BYTES - 1) bytes[i + 1] |= carry;
    else if (carry !== 0) return null;
  }
  return bytes.toString('hex');
}
