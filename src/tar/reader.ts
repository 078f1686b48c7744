import { open } from 'node:fs/promises';
import { UserError } from '../util/errors.js';

/** One member of a tar archive, located by byte offset so its body can be read in place. */
export interface TarMember {
  /** Name without a leading `./` or a trailing `/`. */
  name: string;
  type: 'file' | 'directory' | 'symlink' | 'hardlink' | 'other';
  size: number;
  /** Byte offset of the member's body in the archive. */
  offset: number;
  /** Byte offset of the member's (first) header, for messages. */
  headerOffset: number;
  linkname?: string;
}

const BLOCK = 512;
/** PAX and GNU long-name records are metadata: anything this large is not a real archive. */
const MAX_META_RECORD = 1 << 20;

/**
 * Reads only the headers of a seekable tar file (ustar, PAX `x` records, GNU `L`/`K` long names,
 * base-256 sizes) and returns its members by name; a later member of the same name wins, as on
 * extraction. Bodies are skipped, never read.
 */
export async function indexTar(file: string): Promise<Map<string, TarMember>> {
  const handle = await open(file, 'r').catch((err: NodeJS.ErrnoException) => {
    throw new UserError(`cannot read ${file}: ${err.code ?? err.message}`, { cause: err });
  });
  try {
    const fileSize = (await handle.stat()).size;
    const header = Buffer.alloc(BLOCK);
    const members = new Map<string, TarMember>();
    let position = 0;
    let pax: Record<string, string> = {};
    let longName: string | undefined;
    let longLink: string | undefined;
    const fail = (why: string, at: number): never => {
      throw new UserError(`${file}: ${why} at byte ${at}`);
    };
    const readMeta = async (size: number, at: number): Promise<Buffer> => {
      if (size > MAX_META_RECORD) fail(`tar metadata record of ${size} bytes is too large`, at);
      if (at + size > fileSize) fail('archive is truncated inside a header record', at);
      const body = Buffer.alloc(size);
      await handle.read(body, 0, size, at);
      return body;
    };

    while (true) {
      const { bytesRead } = await handle.read(header, 0, BLOCK, position);
      if (bytesRead === 0 && position > 0) break; // no end-of-archive blocks: tolerated, as GNU tar does
      if (bytesRead < BLOCK) fail(bytesRead === 0 ? 'empty file, not a tar archive' : 'archive is truncated in a header', position);
      if (header.every((b) => b === 0)) break;
      if (position === 0 && header[0] === 0x1f && header[1] === 0x8b) {
        throw new UserError(`${file} is gzip-compressed; decompress it first (gunzip)`);
      }
      if (!checksumOk(header)) fail(position === 0 ? 'not a tar archive (bad header checksum)' : 'bad tar header checksum', position);

      const typeflag = String.fromCharCode(header[156]!);
      let size = parseNumber(header, 124, 12);
      if (size === undefined) fail('invalid size in tar header', position);
      const bodyAt = position + BLOCK;
      const next = bodyAt + Math.ceil(size! / BLOCK) * BLOCK;

      if (typeflag === 'x' || typeflag === 'g') {
        const records = parsePax(await readMeta(size!, bodyAt));
        if (typeflag === 'x') pax = { ...pax, ...records };
        position = next;
        continue;
      }
      if (typeflag === 'L' || typeflag === 'K') {
        const text = cString(await readMeta(size!, bodyAt), 0, size!);
        if (typeflag === 'L') longName = text;
        else longLink = text;
        position = next;
        continue;
      }

      let name = pax.path ?? longName ?? ustarName(header);
      const linkname = pax.linkpath ?? longLink ?? cString(header, 157, 100);
      if (pax.size !== undefined) {
        size = Number(pax.size);
        if (!Number.isSafeInteger(size) || size < 0) fail(`invalid PAX size "${pax.size}"`, position);
      }
      const bodyEnd = bodyAt + size!;
      if (bodyEnd > fileSize && (typeflag === '0' || typeflag === '\0' || typeflag === '7')) {
        fail(`archive is truncated: member "${name}" needs ${size} bytes`, position);
      }
      name = name.replace(/^(\.\/)+/, '').replace(/\/+$/, '');
      const type =
        typeflag === '0' || typeflag === '\0' || typeflag === '7'
          ? 'file'
          : typeflag === '5'
            ? 'directory'
            : typeflag === '2'
              ? 'symlink'
              : typeflag === '1'
                ? 'hardlink'
                : 'other';
      const headerOffset = position;
      members.set(name, {
        name,
        type,
        size: type === 'file' ? size! : 0,
        offset: bodyAt,
        headerOffset,
        ...(linkname !== '' && { linkname }),
      });
      pax = {};
      longName = undefined;
      longLink = undefined;
      // Links and directories carry no body even if a size is written.
      position = type === 'file' || type === 'other' ? bodyAt + Math.ceil(size! / BLOCK) * BLOCK : bodyAt;
    }
    return members;
  } finally {
    await handle.close();
  }
}

function checksumOk(header: Buffer): boolean {
  const stored = parseNumber(header, 148, 8);
  if (stored === undefined) return false;
  let unsigned = 0;
  for (let i = 0; i < BLOCK; i++) unsigned += i >= 148 && i < 156 ? 0x20 : header[i]!;
  return stored === unsigned;
}

/** An octal field, or GNU's base-256 form (high bit of the first byte set). */
function parseNumber(buf: Buffer, offset: number, length: number): number | undefined {
  const field = buf.subarray(offset, offset + length);
  if (field[0]! & 0x80) {
    let value = field[0]! & 0x7f;
    for (let i = 1; i < field.length; i++) value = value * 256 + field[i]!;
    return Number.isSafeInteger(value) ? value : undefined;
  }
  const text = field.toString('latin1').replace(/\0.*$/s, '').trim();
  if (text === '') return 0;
  if (!/^[0-7]+$/.test(text)) return undefined;
  return parseInt(text, 8);
}

function cString(buf: Buffer, offset: number, length: number): string {
  const field = buf.subarray(offset, offset + length);
  const end = field.indexOf(0);
  return field.subarray(0, end === -1 ? field.length : end).toString('utf8');
}

function ustarName(header: Buffer): string {
  const name = cString(header, 0, 100);
  const isUstar = header.subarray(257, 262).toString('latin1') === 'ustar';
  const prefix = isUstar ? cString(header, 345, 155) : '';
  return prefix !== '' ? `${prefix}/${name}` : name;
}

/** PAX records: `<length> <key>=<value>\n`. */
function parsePax(body: Buffer): Record<string, string> {
  const records: Record<string, string> = {};
  let at = 0;
  while (at < body.length) {
    const space = body.indexOf(0x20, at);
    if (space === -1) break;
    const length = Number(body.subarray(at, space).toString('latin1'));
    if (!Number.isInteger(length) || length <= 0 || at + length > body.length) break;
    const record = body.subarray(space + 1, at + length - 1).toString('utf8');
    const eq = record.indexOf('=');
    if (eq > 0) records[record.slice(0, eq)] = record.slice(eq + 1);
    at += length;
  }
  return records;
}
