import { UserError } from '../util/errors.js';

/**
 * Deterministic tar header encoding: POSIX ustar headers, with a PAX extended header in front only when
 * a field does not fit ustar (a long or non-ASCII name or link target, a size of 8 GiB or more, an mtime
 * past 2242). Owner is always 0:0 with empty user and group names; the mtime is the caller's fixed one.
 */

export const BLOCK_SIZE = 512;

/** The largest value an 11-digit octal field holds: 8 GiB − 1 for sizes, year 2242 for mtimes. */
const OCTAL_11_MAX = 0o77777777777;
const NAME_SIZE = 100;
const PREFIX_SIZE = 155;

/** What goes into one entry's header. `name` is the archive name as written (directories end in `/`). */
export interface HeaderFields {
  name: string;
  typeflag: Typeflag;
  mode: number;
  size: number;
  mtime: number;
  linkname: string;
}

export const Typeflag = {
  file: '0',
  hardlink: '1',
  symlink: '2',
  directory: '5',
  paxHeader: 'x',
} as const;
export type Typeflag = (typeof Typeflag)[keyof typeof Typeflag];

/** Name of PAX header entries: fixed, so archives do not depend on the process id as GNU tar's do. */
const PAX_HEADER_NAME = '././@PaxHeader';

/**
 * The header blocks for one entry: a PAX header (with its data) when needed, then the ustar header.
 * The result is a whole number of 512-byte blocks.
 */
export function encodeHeaders(fields: HeaderFields): Buffer {
  const pax: [string, string][] = [];
  const name = Buffer.from(fields.name, 'utf8');
  const ustarName = splitUstarName(name);
  if (!ustarName) pax.push(['path', fields.name]);
  const linkname = Buffer.from(fields.linkname, 'utf8');
  const linkFits = linkname.length <= NAME_SIZE && isAscii(linkname);
  if (!linkFits) pax.push(['linkpath', fields.linkname]);
  if (fields.size > OCTAL_11_MAX) pax.push(['size', String(fields.size)]);
  if (fields.mtime > OCTAL_11_MAX) pax.push(['mtime', String(fields.mtime)]);

  const ustar = Buffer.alloc(BLOCK_SIZE);
  writeUstar(ustar, {
    name: ustarName?.name ?? asciiFallback(name, NAME_SIZE),
    prefix: ustarName?.prefix ?? EMPTY,
    typeflag: fields.typeflag,
    mode: fields.mode,
    size: fields.size,
    mtime: fields.mtime,
    linkname: linkFits ? linkname : asciiFallback(linkname, NAME_SIZE),
  });
  if (pax.length === 0) return ustar;

  // Keys sorted, so the record order never depends on which fields overflowed first.
  pax.sort((a, b) => (a[0] < b[0] ? -1 : 1));
  const data = Buffer.from(pax.map(([key, value]) => paxRecord(key, value)).join(''), 'utf8');
  const paxHeader = Buffer.alloc(BLOCK_SIZE);
  writeUstar(paxHeader, {
    name: Buffer.from(PAX_HEADER_NAME),
    prefix: EMPTY,
    typeflag: Typeflag.paxHeader,
    mode: 0o644,
    size: data.length,
    mtime: Math.min(fields.mtime, OCTAL_11_MAX),
    linkname: EMPTY,
  });
  const padded = Buffer.alloc(padToBlock(data.length));
  data.copy(padded);
  return Buffer.concat([paxHeader, padded, ustar]);
}

/** Bytes needed to round `size` up to whole blocks. */
export function padToBlock(size: number): number {
  return Math.ceil(size / BLOCK_SIZE) * BLOCK_SIZE;
}

/** Checks an mtime once, before any header uses it. */
export function checkMtime(mtime: number): void {
  if (!Number.isSafeInteger(mtime) || mtime < 0) {
    throw new UserError(`layer mtime must be a whole number of seconds since 1970, got ${mtime} (check SOURCE_DATE_EPOCH)`);
  }
}

const EMPTY = Buffer.alloc(0);

interface UstarFields {
  name: Buffer;
  prefix: Buffer;
  typeflag: Typeflag;
  mode: number;
  size: number;
  mtime: number;
  linkname: Buffer;
}

function writeUstar(block: Buffer, f: UstarFields): void {
  f.name.copy(block, 0);
  writeOctal(block, 100, 8, f.mode);
  writeOctal(block, 108, 8, 0); // uid
  writeOctal(block, 116, 8, 0); // gid
  writeNumeric12(block, 124, f.size);
  writeNumeric12(block, 136, f.mtime);
  block.write(f.typeflag, 156, 'latin1');
  f.linkname.copy(block, 157);
  block.write('ustar\x0000', 257, 'latin1');
  // uname and gname stay empty (all NUL); devmajor/devminor as zeros, as Go's archive/tar writes them.
  writeOctal(block, 329, 8, 0);
  writeOctal(block, 337, 8, 0);
  f.prefix.copy(block, 345);
  // Checksum: sum of all bytes with the checksum field read as spaces, written as 6 digits, NUL, space.
  block.fill(0x20, 148, 156);
  let sum = 0;
  for (let i = 0; i < BLOCK_SIZE; i++) sum += block[i]!;
  writeOctal(block, 148, 7, sum);
  block[155] = 0x20;
}

/** Zero-padded octal digits filling `width − 1` bytes, then NUL. */
function writeOctal(block: Buffer, offset: number, width: number, value: number): void {
  block.write(value.toString(8).padStart(width - 1, '0'), offset, width - 1, 'latin1');
  block[offset + width - 1] = 0;
}

/**
 * A 12-byte numeric field: octal when it fits, else GNU/star base-256 (high bit set, big-endian),
 * which GNU tar and tar-stream read; the PAX record carries the value for strict POSIX readers.
 */
function writeNumeric12(block: Buffer, offset: number, value: number): void {
  if (value <= OCTAL_11_MAX) {
    writeOctal(block, offset, 12, value);
    return;
  }
  let rest = BigInt(value);
  for (let i = offset + 11; i > offset; i--) {
    block[i] = Number(rest & 0xffn);
    rest >>= 8n;
  }
  block[offset] = 0x80;
}

/** `"<len> <key>=<value>\n"` where len counts the whole record, its own digits included. */
function paxRecord(key: string, value: string): string {
  const body = ` ${key}=${value}\n`;
  const bodyLength = Buffer.byteLength(body, 'utf8');
  // Adding the length's digits can itself add a digit (98 + 2 = 100): then one more.
  let length = bodyLength + String(bodyLength).length;
  if (String(length).length !== String(bodyLength).length) length++;
  return `${length}${body}`;
}

/**
 * Fits an ASCII name into ustar's name field, or splits it at a `/` into prefix (≤155) and name (≤100),
 * choosing the last `/` that works, as Go's archive/tar does. Null when only PAX can hold it.
 */
export function splitUstarName(name: Buffer): { prefix: Buffer; name: Buffer } | null {
  if (!isAscii(name)) return null;
  if (name.length <= NAME_SIZE) return { prefix: EMPTY, name };
  // The name part must be non-empty, so a trailing `/` cannot be the split point.
  const searchEnd = Math.min(name.length - 2, PREFIX_SIZE);
  for (let i = searchEnd; i > 0; i--) {
    if (name[i] !== 0x2f) continue;
    if (name.length - i - 1 > NAME_SIZE) return null;
    return { prefix: name.subarray(0, i), name: name.subarray(i + 1) };
  }
  return null;
}

/** What a reader that ignores PAX sees: the first bytes, non-ASCII bytes as `_`. */
function asciiFallback(bytes: Buffer, size: number): Buffer {
  const out = Buffer.from(bytes.subarray(0, size));
  for (let i = 0; i < out.length; i++) if (out[i]! >= 0x80) out[i] = 0x5f;
  return out;
}

function isAscii(bytes: Buffer): boolean {
  for (let i = 0; i < bytes.length; i++) if (bytes[i]! >= 0x80) return false;
  return true;
}
