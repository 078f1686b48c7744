import { UserError } from '../util/errors.js';

/**
 * Deterministic tar header encoding: POSIX ustar headers, with a PAX extended header in front only when
 * a field does not fit ustar (a long or non-ASCII name or link target, a size of 8 GiB or more, an mtime
 * past 2242). Owner is always 0:0 with empty user and group names; the mtime is the caller's fixed one.
 * Headers are written straight into the caller's buffer: this runs once per file of every layer.
 */

export const BLOCK_SIZE = 512;

/** The largest value an 11-digit octal field holds: 8 GiB − 1 for sizes, year 2242 for mtimes. */
const OCTAL_11_MAX = 0o77777777777;
/** The largest uid or gid ustar's 8-byte field holds; larger ones go in a PAX record. */
const OCTAL_7_MAX = 0o7777777;
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
  /** Owner; 0 (root) when left out, as for every store path. */
  uid?: number;
  gid?: number;
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

const ASCII = /^[\x01-\x7f]*$/;

/**
 * Writes the entry's ustar header at `target[offset…offset+512)` when ustar alone can hold it, and
 * returns true; returns false (writing nothing) when it needs PAX: then use `encodeHeaders`.
 */
export function writeUstarHeader(target: Buffer, offset: number, fields: HeaderFields): boolean {
  if (fields.size > OCTAL_11_MAX || fields.mtime > OCTAL_11_MAX) return false;
  if ((fields.uid ?? 0) > OCTAL_7_MAX || (fields.gid ?? 0) > OCTAL_7_MAX) return false;
  if (fields.linkname.length > NAME_SIZE || !ASCII.test(fields.linkname)) return false;
  const split = splitUstarName(fields.name);
  if (!split) return false;
  writeBlock(target, offset, {
    name: split.name,
    prefix: split.prefix,
    typeflag: fields.typeflag,
    mode: fields.mode,
    size: fields.size,
    mtime: fields.mtime,
    linkname: fields.linkname,
    uid: fields.uid ?? 0,
    gid: fields.gid ?? 0,
  });
  return true;
}

/**
 * The one header block of an archive member that holds a blob (`blobs/sha256/<hex>`, `<hex>.tar.gz`):
 * mode 0644, mtime 0, its size in base-256 beyond 8 GiB rather than in a PAX header, so the header is
 * 512 bytes whatever the size, and can be reserved before a layer written behind it knows its size.
 * Go's archive/tar (podman, skopeo, containerd, Docker), GNU tar and bsdtar read base-256 sizes.
 */
export function blobHeader(name: string, size: number): Buffer {
  const split = splitUstarName(name);
  if (!split) throw new Error(`blob member name ${name} does not fit a ustar header`);
  const block = Buffer.alloc(BLOCK_SIZE);
  writeBlock(block, 0, { name: split.name, prefix: split.prefix, typeflag: Typeflag.file, mode: 0o644, size, mtime: 0, linkname: '', uid: 0, gid: 0 });
  return block;
}

/**
 * The header blocks for one entry: a PAX header (with its data) when needed, then the ustar header.
 * The result is a whole number of 512-byte blocks.
 */
export function encodeHeaders(fields: HeaderFields): Buffer {
  const ustar = Buffer.alloc(BLOCK_SIZE);
  if (writeUstarHeader(ustar, 0, fields)) return ustar;

  const pax: [string, string][] = [];
  const split = splitUstarName(fields.name);
  if (!split) pax.push(['path', fields.name]);
  const linkFits = fields.linkname.length <= NAME_SIZE && ASCII.test(fields.linkname);
  if (!linkFits) pax.push(['linkpath', fields.linkname]);
  if (fields.size > OCTAL_11_MAX) pax.push(['size', String(fields.size)]);
  if (fields.mtime > OCTAL_11_MAX) pax.push(['mtime', String(fields.mtime)]);
  const uid = fields.uid ?? 0;
  const gid = fields.gid ?? 0;
  if (uid > OCTAL_7_MAX) pax.push(['uid', String(uid)]);
  if (gid > OCTAL_7_MAX) pax.push(['gid', String(gid)]);
  writeBlock(ustar, 0, {
    typeflag: fields.typeflag,
    mode: fields.mode,
    size: fields.size,
    mtime: fields.mtime,
    uid: uid > OCTAL_7_MAX ? 0 : uid,
    gid: gid > OCTAL_7_MAX ? 0 : gid,
    name: split?.name ?? asciiFallback(fields.name),
    prefix: split?.prefix ?? '',
    linkname: linkFits ? fields.linkname : asciiFallback(fields.linkname),
  });

  // Keys sorted, so the record order never depends on which fields overflowed first.
  pax.sort((a, b) => (a[0] < b[0] ? -1 : 1));
  const data = Buffer.from(pax.map(([key, value]) => paxRecord(key, value)).join(''), 'utf8');
  const header = Buffer.alloc(BLOCK_SIZE + padToBlock(data.length) + BLOCK_SIZE);
  writeBlock(header, 0, {
    name: PAX_HEADER_NAME,
    prefix: '',
    typeflag: Typeflag.paxHeader,
    mode: 0o644,
    size: data.length,
    mtime: Math.min(fields.mtime, OCTAL_11_MAX),
    linkname: '',
    uid: 0,
    gid: 0,
  });
  data.copy(header, BLOCK_SIZE);
  ustar.copy(header, header.length - BLOCK_SIZE);
  return header;
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

/** A block's fields, all strings ASCII (one byte per character) and fitting their fields. */
interface BlockFields {
  name: string;
  prefix: string;
  typeflag: Typeflag;
  mode: number;
  size: number;
  mtime: number;
  linkname: string;
  uid: number;
  gid: number;
}

/** The bytes every header shares: magic and version, uid, gid, devmajor and devminor as zeros. */
const TEMPLATE = (() => {
  const block = Buffer.alloc(BLOCK_SIZE);
  block.write('0000000\0', 108, 'latin1'); // uid
  block.write('0000000\0', 116, 'latin1'); // gid
  block.write('ustar\x0000', 257, 'latin1');
  // uname and gname stay empty; devmajor/devminor as zeros, as Go's archive/tar writes them.
  block.write('0000000\0', 329, 'latin1');
  block.write('0000000\0', 337, 'latin1');
  block.fill(0x20, 148, 156); // the checksum field counts as spaces in the checksum
  return block;
})();
const TEMPLATE_SUM = TEMPLATE.reduce((sum, byte) => sum + byte, 0);
/** The sum of a template uid or gid field's bytes ('0000000' and a NUL), taken off when one is written. */
const ZERO_ID_SUM = 7 * 0x30;

/**
 * Fills one header block. The checksum (the sum of all bytes, its own field read as spaces) is the
 * template's sum plus that of the bytes written here, so the block is not summed again.
 */
function writeBlock(block: Buffer, at: number, f: BlockFields): void {
  TEMPLATE.copy(block, at);
  let sum = TEMPLATE_SUM;
  sum += writeAscii(block, at, f.name);
  sum += writeOctal(block, at + 100, 8, f.mode);
  if (f.uid !== 0) sum += writeOctal(block, at + 108, 8, f.uid) - ZERO_ID_SUM;
  if (f.gid !== 0) sum += writeOctal(block, at + 116, 8, f.gid) - ZERO_ID_SUM;
  sum += writeNumeric12(block, at + 124, f.size);
  sum += writeNumeric12(block, at + 136, f.mtime);
  block[at + 156] = f.typeflag.charCodeAt(0);
  sum += block[at + 156]!;
  sum += writeAscii(block, at + 157, f.linkname);
  sum += writeAscii(block, at + 345, f.prefix);
  // Written as 6 digits, NUL, space.
  writeOctal(block, at + 148, 7, sum);
  block[at + 155] = 0x20;
}

/** Copies a string of single-byte characters; returns the sum of the bytes. */
function writeAscii(block: Buffer, at: number, text: string): number {
  let sum = 0;
  for (let i = 0; i < text.length; i++) {
    const byte = text.charCodeAt(i);
    block[at + i] = byte;
    sum += byte;
  }
  return sum;
}

/** Zero-padded octal digits filling `width − 1` bytes, then NUL; returns the sum of the bytes. */
function writeOctal(block: Buffer, offset: number, width: number, value: number): number {
  let rest = value;
  let sum = 0;
  for (let i = offset + width - 2; i >= offset; i--) {
    const digit = 0x30 + (rest % 8);
    block[i] = digit;
    sum += digit;
    rest = Math.floor(rest / 8);
  }
  block[offset + width - 1] = 0;
  return sum;
}

/**
 * A 12-byte numeric field: octal when it fits, else GNU/star base-256 (high bit set, big-endian),
 * which GNU tar and tar-stream read; the PAX record carries the value for strict POSIX readers.
 */
function writeNumeric12(block: Buffer, offset: number, value: number): number {
  if (value <= OCTAL_11_MAX) return writeOctal(block, offset, 12, value);
  let rest = BigInt(value);
  let sum = 0x80;
  for (let i = offset + 11; i > offset; i--) {
    block[i] = Number(rest & 0xffn);
    sum += block[i]!;
    rest >>= 8n;
  }
  block[offset] = 0x80;
  return sum;
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
export function splitUstarName(name: string): { prefix: string; name: string } | null {
  if (!ASCII.test(name)) return null;
  if (name.length <= NAME_SIZE) return { prefix: '', name };
  // The name part must be non-empty, so a trailing `/` cannot be the split point.
  const i = name.lastIndexOf('/', Math.min(name.length - 2, PREFIX_SIZE));
  if (i <= 0 || name.length - i - 1 > NAME_SIZE) return null;
  return { prefix: name.slice(0, i), name: name.slice(i + 1) };
}

/** What a reader that ignores PAX sees: the first 100 bytes, non-ASCII bytes as `_`. */
function asciiFallback(text: string): string {
  const bytes = Buffer.from(text, 'utf8').subarray(0, NAME_SIZE);
  for (let i = 0; i < bytes.length; i++) if (bytes[i]! >= 0x80) bytes[i] = 0x5f;
  return bytes.toString('latin1');
}
