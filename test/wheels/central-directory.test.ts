import { open } from 'node:fs/promises';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { deflateRawSync } from 'node:zlib';
import { beforeAll, describe, expect, it } from 'vitest';
import yauzl from 'yauzl';
import { BlockReader } from '../../src/wheels/block-reader.js';
import { readCentralDirectory, type CentralEntry } from '../../src/wheels/central-directory.js';
import { mutate } from '../helpers/mutate.js';
import { useScratchDirs } from '../helpers/scratch.js';
import { tools } from '../helpers/tools.js';
import { makeWheel } from '../helpers/wheels.js';

/**
 * The hand-written central directory reader against yauzl, which nix2oci used before and which stays
 * the reference: on zips made by Python's zipfile (plain and zip64), on hand-made ones with what
 * wheels rarely hold (CP437 and control-character names, a Unicode Path field, comments, extra fields),
 * and on seeded mutants, both must read the same entries or both must refuse the zip.
 */

const scratch = useScratchDirs();

type SeenEntry = ReturnType<typeof seen>;
interface Seen {
  offset: number;
  entries: SeenEntry[];
}

/** An entry as either reader gives it (their field names are yauzl's), with its name's bytes in hex. */
function seen(e: Omit<CentralEntry, 'fileNameBytes'>, raw: Uint8Array) {
  return {
    fileName: e.fileName,
    fileNameRaw: Buffer.from(raw).toString('hex'),
    versionMadeBy: e.versionMadeBy,
    flags: e.generalPurposeBitFlag,
    method: e.compressionMethod,
    crc32: e.crc32,
    compressedSize: e.compressedSize,
    uncompressedSize: e.uncompressedSize,
    attributes: e.externalFileAttributes,
    at: e.relativeOffsetOfLocalHeader,
  };
}

async function ours(file: string): Promise<Seen | Error> {
  const handle = await open(file, 'r');
  try {
    const directory = await readCentralDirectory(new BlockReader(handle, (await handle.stat()).size));
    return {
      offset: directory.offset,
      entries: directory.entries.map((e) => seen(e, Buffer.from(e.fileNameBytes, 'latin1'))),
    };
  } catch (err) {
    return err as Error;
  } finally {
    await handle.close();
  }
}

async function reference(file: string): Promise<Seen | Error> {
  let zip: yauzl.ZipFile | undefined;
  try {
    // From memory: yauzl's file reader throws an uncaught error on a zip64 offset past 2^53.
    zip = await yauzl.fromBufferPromise(readFileSync(file), { autoClose: false, lazyEntries: true, decodeStrings: false, validateEntrySizes: true });
    const offset = zip.readEntryCursor as unknown as number;
    const entries: SeenEntry[] = [];
    for await (const e of zip.eachEntry()) {
      entries.push(seen({ ...e, fileName: yauzl.getFileNameLowLevel(e.generalPurposeBitFlag, e.fileNameRaw, e.extraFields, true) }, e.fileNameRaw));
    }
    return { offset, entries };
  } catch (err) {
    return err as Error;
  } finally {
    zip?.close();
  }
}

async function expectSame(file: string, label: string): Promise<'read' | 'refused'> {
  const [a, b] = [await ours(file), await reference(file)];
  if (b instanceof Error) {
    expect(a, `${label}: yauzl refused it (${b.message}); ours read it`).toBeInstanceOf(Error);
    return 'refused';
  }
  if (a instanceof Error) throw new Error(`${label}: ours refused it (${a.message}); yauzl read it`);
  expect(a, label).toEqual(b);
  return 'read';
}

/** A zip written field by field, for what Python's zipfile does not make. */
function handMade(entries: { name: Buffer; data: string; flags?: number; stored?: boolean; extra?: Buffer; comment?: string; sizeLie?: number }[], endComment = ''): Buffer {
  const locals: Buffer[] = [];
  const centrals: Buffer[] = [];
  let at = 0;
  for (const e of entries) {
    const raw = Buffer.from(e.data);
    const body = e.stored ? raw : deflateRawSync(raw);
    const method = e.stored ? 0 : 8;
    const crc = crc32(raw);
    const extra = e.extra ?? Buffer.alloc(0);
    const comment = Buffer.from(e.comment ?? '');
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt16LE(e.flags ?? 0, 6);
    local.writeUInt16LE(method, 8);
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(body.length, 18);
    local.writeUInt32LE(raw.length, 22);
    local.writeUInt16LE(e.name.length, 26);
    const central = Buffer.alloc(46);
    central.writeUInt32LE(0x02014b50, 0);
    central.writeUInt16LE((3 << 8) | 20, 4);
    central.writeUInt16LE(20, 6);
    central.writeUInt16LE(e.flags ?? 0, 8);
    central.writeUInt16LE(method, 10);
    central.writeUInt32LE(crc, 16);
    central.writeUInt32LE(body.length, 20);
    central.writeUInt32LE(raw.length + (e.sizeLie ?? 0), 24);
    central.writeUInt16LE(e.name.length, 28);
    central.writeUInt16LE(extra.length, 30);
    central.writeUInt16LE(comment.length, 32);
    central.writeUInt32LE((0o100644 << 16) >>> 0, 38);
    central.writeUInt32LE(at, 42);
    locals.push(local, e.name, body);
    centrals.push(central, e.name, extra, comment);
    at += 30 + e.name.length + body.length;
  }
  const directory = Buffer.concat(centrals);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(entries.length, 8);
  end.writeUInt16LE(entries.length, 10);
  end.writeUInt32LE(directory.length, 12);
  end.writeUInt32LE(at, 16);
  end.writeUInt16LE(Buffer.byteLength(endComment), 20);
  return Buffer.concat([...locals, directory, end, Buffer.from(endComment)]);
}

function crc32(bytes: Buffer): number {
  let c = 0xffffffff;
  for (const b of bytes) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xedb88320 : c >>> 1;
  }
  return (c ^ 0xffffffff) >>> 0;
}

/** An Info-ZIP Unicode Path extra field (0x7075) for a name whose raw bytes are `raw`. */
function unicodePath(raw: Buffer, name: string): Buffer {
  const utf8 = Buffer.from(name);
  const field = Buffer.alloc(4 + 5 + utf8.length);
  field.writeUInt16LE(0x7075, 0);
  field.writeUInt16LE(5 + utf8.length, 2);
  field.writeUInt8(1, 4);
  field.writeUInt32LE(crc32(raw), 5);
  utf8.copy(field, 9);
  return field;
}

describe.runIf(tools('python3'))('the central directory reader reads what yauzl reads', () => {
  let dir: string;
  let plain: string;
  let zip64: string;

  beforeAll(() => {
    dir = scratch('nix2oci-central-');
    const files = {
      'demo/__init__.py': 'print("hi")\n',
      'demo/data.bin': { content: { random: 5000, seed: 3 }, stored: true },
      'demo/ünïcode.txt': 'utf-8 name\n',
    };
    plain = makeWheel({ dir: scratch('nix2oci-central-plain-'), name: 'demo', version: '1.0', files, dirEntries: true });
    zip64 = makeWheel({ dir: scratch('nix2oci-central-zip64-'), name: 'demo', version: '1.0', files, zip64: true });
  }, 60_000);

  it('wheels made by Python, plain and zip64', async () => {
    expect(await expectSame(plain, 'plain')).toBe('read');
    expect(await expectSame(zip64, 'zip64')).toBe('read');
    const read = await ours(zip64);
    expect(read).not.toBeInstanceOf(Error);
    expect((read as Seen).entries.map((e) => e.fileName)).toContain('demo/ünïcode.txt');
  });

  it('names without the UTF-8 flag (CP437, control characters), a Unicode Path field, comments and extra fields', async () => {
    const cp437 = Buffer.from([0x63, 0x61, 0x66, 0x82, 0x2e, 0x74, 0x78, 0x74]); // "caf\x82.txt": é in CP437
    const control = Buffer.from('a\x01b.txt', 'latin1');
    const cases: [string, Buffer][] = [
      ['cp437', handMade([{ name: cp437, data: 'x' }])],
      ['control', handMade([{ name: control, data: 'x' }])],
      ['unicode path', handMade([{ name: cp437, data: 'x', extra: unicodePath(cp437, 'café-unicode.txt') }])],
      ['utf-8 flag', handMade([{ name: Buffer.from('naïve.txt'), data: 'x', flags: 0x800 }])],
      ['comments', handMade([{ name: Buffer.from('a.txt'), data: 'aaa', comment: 'an entry comment' }, { name: Buffer.from('b.txt'), data: 'b', stored: true }], 'a zip comment')],
      ['an unknown extra field', handMade([{ name: Buffer.from('a.txt'), data: 'a', extra: Buffer.from([0x55, 0x54, 0x05, 0x00, 1, 2, 3, 4, 5]) }])],
    ];
    const names: string[] = [];
    for (const [label, bytes] of cases) {
      const file = join(dir, `${label.replace(/ /g, '-')}.zip`);
      writeFileSync(file, bytes);
      expect(await expectSame(file, label)).toBe('read');
      names.push(...((await ours(file)) as Seen).entries.map((e) => e.fileName));
    }
    expect(names).toEqual(['café.txt', 'a☺b.txt', 'café-unicode.txt', 'naïve.txt', 'a.txt', 'b.txt', 'a.txt']);
  });

  it('refuses what yauzl refuses: an extra field past its end, a stored entry whose sizes differ, strong encryption, a cut end record', async () => {
    const cases: [string, Buffer][] = [
      ['extra overflow', handMade([{ name: Buffer.from('a.txt'), data: 'a', extra: Buffer.from([0x55, 0x54, 0x40, 0x00, 1, 2]) }])],
      ['stored size lie', handMade([{ name: Buffer.from('a.txt'), data: 'abc', stored: true, sizeLie: 1 }])],
      ['strong encryption', handMade([{ name: Buffer.from('a.txt'), data: 'a', flags: 0x41 }])],
      ['cut', handMade([{ name: Buffer.from('a.txt'), data: 'a' }]).subarray(0, -5)],
    ];
    for (const [label, bytes] of cases) {
      const file = join(dir, `${label.replace(/ /g, '-')}.zip`);
      writeFileSync(file, bytes);
      expect(await expectSame(file, label)).toBe('refused');
    }
  });

  it('reads or refuses 400 seeded mutants as yauzl does', async () => {
    const outcomes = { read: 0, refused: 0 };
    for (const [name, file] of [['plain', plain], ['zip64', zip64]] as const) {
      const base = readFileSync(file);
      const hotspots: number[] = [];
      for (let at = base.indexOf('PK'); at >= 0; at = base.indexOf('PK', at + 2)) hotspots.push(at);
      for (let seed = 1; seed <= 200; seed++) {
        const { bytes, what } = mutate(base, seed, hotspots);
        const mutant = join(dir, `${name}-m${seed}.zip`);
        writeFileSync(mutant, bytes);
        outcomes[await expectSame(mutant, `${name} seed ${seed} (${what})`)]++;
      }
    }
    // Both kinds of outcome happen: the comparison is not all one way.
    expect(outcomes.read).toBeGreaterThan(40);
    expect(outcomes.refused).toBeGreaterThan(40);
  }, 120_000);
});
