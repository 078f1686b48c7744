import { describe, it, expect } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync, lstatSync, readlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import tarStream from 'tar-stream';
import { TarWriter, tarFrame, tarSize, type FramedEntry, type SizedEntry } from '../../src/tar/writer.js';
import { encodeHeaders, Typeflag } from '../../src/tar/header.js';
import type { LayerSource, TarEntry } from '../../src/layer/types.js';
import { UserError } from '../../src/util/errors.js';
import { tools } from '../helpers/tools.js';
import { MemorySink, gnuTarList, tarStreamList, tarToBuffer, type ListedEntry } from './tar-tools.js';

const storeDir = 'nix/store/0123456789abcdfghijklmnpqrsvwxyz-example-1.0';
const longComponent = 'x'.repeat(120); // no ustar split can hold a 120-byte component: needs PAX
const deepButSplittable = `${storeDir}/lib/python3.11/site-packages/some_package/with/a/rather/deep/tree/module.py`;
const nonAscii = `${storeDir}/share/doc/café-ünïcødé-文档.txt`;
const longTarget = `/nix/store/0123456789abcdfghijklmnpqrsvwxyz-target-2.0/${'y'.repeat(80)}/bin/tool`;

function body(text: string): Buffer {
  return Buffer.from(text);
}

async function* chunked(data: Buffer, size: number): AsyncIterable<Buffer> {
  for (let i = 0; i < data.length; i += size) yield data.subarray(i, i + size);
}

const bigFile = Buffer.alloc(5000);
for (let i = 0; i < bigFile.length; i++) bigFile[i] = (i * 7) & 0xff;

/** Entries covering every type and every header path: ustar, ustar prefix split, PAX path/linkpath, non-ASCII. */
const sample: TarEntry[] = [
  { type: 'directory', name: 'nix', mode: 0o555 },
  { type: 'directory', name: 'nix/store', mode: 0o555 },
  { type: 'directory', name: storeDir, mode: 0o555 },
  { type: 'directory', name: `${storeDir}/bin`, mode: 0o555 },
  { type: 'file', name: `${storeDir}/bin/run`, mode: 0o555, size: 10, body: body('#!/bin/sh\n') },
  { type: 'file', name: `${storeDir}/empty`, mode: 0o444, size: 0, body: Buffer.alloc(0) },
  { type: 'file', name: `${storeDir}/big.bin`, mode: 0o444, size: bigFile.length, body: chunked(bigFile, 333) },
  { type: 'file', name: `${storeDir}/stream.txt`, mode: 0o444, size: 11, body: Readable.from([body('hello '), body('world')]) },
  { type: 'hardlink', name: `${storeDir}/big-again.bin`, target: `${storeDir}/big.bin` },
  { type: 'directory', name: `${storeDir}/${longComponent}`, mode: 0o555 },
  { type: 'file', name: `${storeDir}/${longComponent}/inside`, mode: 0o444, size: 3, body: body('in\n') },
  { type: 'file', name: deepButSplittable, mode: 0o444, size: 4, body: body('py!\n') },
  { type: 'file', name: nonAscii, mode: 0o444, size: 2, body: body('é') },
  { type: 'symlink', name: `${storeDir}/bin/relative`, target: 'run' },
  { type: 'symlink', name: `${storeDir}/bin/absolute`, target: longTarget },
  { type: 'symlink', name: `${storeDir}/bin/dangling-ünï`, target: '../nowhere/ünï' },
];

function sampleSource(): LayerSource {
  // Bodies that are iterables can be consumed once: rebuild them for every run.
  return async (sink) => {
    for (const entry of sample) {
      if (entry.type === 'file' && entry.name.endsWith('big.bin')) await sink.add({ ...entry, body: chunked(bigFile, 333) });
      else if (entry.type === 'file' && entry.name.endsWith('stream.txt')) {
        await sink.add({ ...entry, body: Readable.from([body('hello '), body('world')]) });
      } else await sink.add(entry);
    }
  };
}

function expected(): ListedEntry[] {
  return sample.map((e) => {
    switch (e.type) {
      case 'directory':
        return { name: e.name, type: 'directory', mode: e.mode, size: 0 };
      case 'file':
        return { name: e.name, type: 'file', mode: e.mode, size: e.size };
      case 'symlink':
        return { name: e.name, type: 'symlink', mode: 0o777, size: 0, target: e.target };
      case 'hardlink':
        return { name: e.name, type: 'hardlink', mode: 0o444, size: 0, target: e.target };
    }
  });
}

function writeTemp(name: string, bytes: Buffer): string {
  const file = join(mkdtempSync(join(tmpdir(), 'nix2oci-tar-')), name);
  writeFileSync(file, bytes);
  return file;
}

describe('TarWriter', () => {
  it('measures what it writes before anything is written (tarSize): every header path, owners, huge mtimes', async () => {
    const sized = (entries: TarEntry[]): SizedEntry[] =>
      entries.map((e) => (e.type === 'file' ? { type: 'file', name: e.name, mode: e.mode, size: e.size, ...(e.owner && { owner: e.owner }) } : e));
    for (const mtime of [1, 1_700_000_000, 8 ** 11 + 5]) {
      expect(tarSize(sized(sample), mtime)).toBe((await tarToBuffer(sampleSource(), mtime)).length);
    }
    // Owners too large for ustar's octal fields take PAX records; sizes that pad to a block or not.
    const owned: TarEntry[] = [
      { type: 'directory', name: 'home/user', mode: 0o700, owner: { uid: 1000, gid: 100 } },
      { type: 'file', name: 'home/user/a', mode: 0o600, size: 512, body: Buffer.alloc(512), owner: { uid: 3_000_000, gid: 3_000_000 } },
      { type: 'file', name: 'home/user/b', mode: 0o600, size: 513, body: Buffer.alloc(513) },
    ];
    const source: LayerSource = async (sink) => {
      for (const entry of owned) await sink.add(entry);
    };
    expect(tarSize(sized(owned), 1)).toBe((await tarToBuffer(source, 1)).length);
    expect(tarSize([], 1)).toBe(1024);
  });

  it('frames a tar for bodies written by someone else (tarFrame): filled in, its gaps give TarWriter’s bytes', async () => {
    // Every other file body is left as a gap; the rest go into the frame as bytes.
    const bytesOf = (e: Extract<TarEntry, { type: 'file' }>): Buffer =>
      e.name.endsWith('big.bin') ? bigFile : e.name.endsWith('stream.txt') ? body('hello world') : (e.body as Buffer);
    const gapped = new Set(sample.filter((e) => e.type === 'file').map((e, i) => (i % 2 === 0 ? e.name : '')));
    const framed = (entries: TarEntry[]): FramedEntry[] =>
      entries.map((e) => (e.type === 'file' ? { type: 'file', name: e.name, mode: e.mode, size: e.size, body: gapped.has(e.name) ? null : bytesOf(e), ...(e.owner && { owner: e.owner }) } : e));
    for (const mtime of [1, 1_700_000_000, 8 ** 11 + 5]) {
      const { bytes, gaps } = tarFrame(framed(sample), mtime);
      const bodies = sample.filter((e): e is Extract<TarEntry, { type: 'file' }> => e.type === 'file' && gapped.has(e.name)).map(bytesOf);
      expect(gaps.map((g) => g.size)).toEqual(bodies.map((b) => b.length));
      const parts: Buffer[] = [];
      let from = 0;
      gaps.forEach((gap, i) => {
        parts.push(bytes.subarray(from, gap.at), bodies[i]!);
        from = gap.at;
      });
      parts.push(bytes.subarray(from));
      expect(Buffer.concat(parts).equals(await tarToBuffer(sampleSource(), mtime))).toBe(true);
    }
    // What TarWriter refuses, the frame refuses with the same words.
    const twice: FramedEntry[] = [{ type: 'file', name: 'a', mode: 0o644, size: 1, body: null }, { type: 'directory', name: 'a', mode: 0o755 }];
    expect(() => tarFrame(twice, 1)).toThrow(/^layer has two entries named .a.$/);
    expect(() => tarFrame([{ type: 'file', name: '../x', mode: 0o644, size: 0, body: null }], 1)).toThrow(/is not a normalised relative path/);
    expect(() => tarFrame([{ type: 'file', name: 'x', mode: 0o644, size: 2, body: Buffer.from('abc') }], 1)).toThrow(/file has more than 3 bytes, its header says 2/);
  });

  it('writes byte-identical archives for the same entries, whatever the chunk size', async () => {
    const a = await tarToBuffer(sampleSource(), 1, 1000);
    const b = await tarToBuffer(sampleSource(), 1, 512 * 7);
    const c = await tarToBuffer(sampleSource(), 1, 1 << 20);
    expect(a.length % 512).toBe(0);
    expect(b.equals(a)).toBe(true);
    expect(c.equals(a)).toBe(true);
    // End of archive: two zero blocks.
    expect(a.subarray(a.length - 1024).every((x) => x === 0)).toBe(true);
  });

  it('is read the same by tar-stream: names, types, modes, sizes, targets, bodies, owner and mtime', async () => {
    const tar = await tarToBuffer(sampleSource(), 1_700_000_000);
    const entries = await tarStreamList(tar);
    expect(entries.map(({ name, type, mode, size, target }) => ({ name, type, mode, size, ...(target ? { target } : {}) }))).toEqual(
      expected().map((e) => (e.target ? e : { ...e })),
    );
    for (const e of entries) {
      expect(e.mtime).toBe(1_700_000_000);
      expect([e.uid, e.gid]).toEqual([0, 0]);
    }
    const byName = new Map(entries.map((e) => [e.name, e]));
    expect(byName.get(`${storeDir}/big.bin`)!.body.equals(bigFile)).toBe(true);
    expect(byName.get(`${storeDir}/stream.txt`)!.body.toString()).toBe('hello world');
    expect(byName.get(nonAscii)!.body.toString()).toBe('é');
  });

  describe.runIf(tools('tar'))('with GNU tar', () => {
    it('lists the same names, types, modes, sizes and link targets', async () => {
      const file = writeTemp('sample.tar', await tarToBuffer(sampleSource(), 1_700_000_000));
      const listed = gnuTarList(file);
      expect(listed.map(({ name, type, mode, size, target }) => ({ name, type, mode, size, ...(target ? { target } : {}) }))).toEqual(
        expected(),
      );
      for (const e of listed) {
        expect(e.owner).toBe('0/0');
        expect(e.mtime).toBe('2023-11-14 22:13:20');
      }
    });

    it('extracts a tree with the bodies, links and modes written', async () => {
      const file = writeTemp('sample.tar', await tarToBuffer(sampleSource()));
      const out = mkdtempSync(join(tmpdir(), 'nix2oci-untar-'));
      execFileSync('tar', ['-xf', file, '-C', out]);
      expect(readFileSync(join(out, storeDir, 'big.bin')).equals(bigFile)).toBe(true);
      expect(lstatSync(join(out, storeDir, 'big-again.bin')).ino).toBe(lstatSync(join(out, storeDir, 'big.bin')).ino);
      expect(readlinkSync(join(out, storeDir, 'bin/absolute'))).toBe(longTarget);
      expect(readFileSync(join(out, nonAscii), 'utf8')).toBe('é');
      expect(readFileSync(join(out, deepButSplittable), 'utf8')).toBe('py!\n');
      expect(lstatSync(join(out, storeDir, 'bin/run')).mode & 0o7777).toBe(0o555);
      expect(lstatSync(join(out, storeDir, 'empty')).mode & 0o7777).toBe(0o444);
      // Directories were read-only in the archive, and GNU tar applies that after extracting their contents.
      expect(lstatSync(join(out, storeDir)).mode & 0o7777).toBe(0o555);
      execFileSync('chmod', ['-R', 'u+w', out]);
    });

    it('uses a ustar prefix for long names that split, and PAX only where ustar cannot hold the name', async () => {
      const tar = await tarToBuffer(sampleSource());
      const paxHeaders = headersOfType(tar, 'x');
      // Exactly five entries need PAX: the directory with a 120-byte component and the file in it, the
      // non-ASCII file, the long symlink target and the non-ASCII symlink.
      expect(paxHeaders).toBe(5);
      const deep = findHeader(tar, 'module.py');
      expect(deep?.prefix).not.toBe('');
      expect(`${deep?.prefix}/${deep?.name}`).toBe(deepButSplittable);
    });

    it('writes PAX record lengths right where the length gains a digit', async () => {
      // ' path=<name>\n' is name + 7 bytes: names of 91, 92 and 93 bytes give records of 98, 99 and 100 bytes
      // before the length prefix, so the prefix goes from 2 to 3 digits around them.
      const names = [91, 92, 93].map((n) => 'a'.repeat(n - 2) + 'é');
      const tar = await tarToBuffer(async (sink) => {
        for (const name of names) await sink.add({ type: 'file', name, mode: 0o444, size: 1, body: body('x') });
      });
      const listed = gnuTarList(writeTemp('pax.tar', tar));
      expect(listed.map((e) => e.name)).toEqual(names);
      expect((await tarStreamList(tar)).map((e) => e.name)).toEqual(names);
    });
  });

  it('encodes sizes of 8 GiB and more as a PAX size with a base-256 field, read back by tar-stream and GNU tar', async () => {
    const size = 9 * 1024 ** 3 + 5;
    const header = encodeHeaders({ name: 'huge.bin', typeflag: Typeflag.file, mode: 0o444, size, mtime: 1, linkname: '' });
    const extract = tarStream.extract();
    const seen = new Promise<number | undefined>((resolve) => {
      extract.on('entry', (h, stream) => {
        resolve(h.size);
        stream.resume();
        extract.destroy();
      });
    });
    extract.write(header);
    expect(await seen).toBe(size);
    if (tools('tar')) {
      // The archive is cut after the header: GNU tar lists the entry and then complains about the missing body.
      const file = writeTemp('huge.tar', header);
      const result = spawnSync('tar', ['--list', '--verbose', '-f', file], { encoding: 'utf8' });
      expect(result.stdout).toContain(`${size} `);
      expect(result.stdout).toContain('huge.bin');
    }
  });

  it.runIf(tools('tar'))('writes an owner when one is given (root otherwise), in a PAX record when ustar cannot hold it', async () => {
    const source: LayerSource = async (sink) => {
      await sink.add({ type: 'directory', name: 'home', mode: 0o755 });
      await sink.add({ type: 'directory', name: 'home/app', mode: 0o755, owner: { uid: 1000, gid: 1001 } });
      await sink.add({ type: 'file', name: 'home/app/big-id', mode: 0o644, size: 2, body: body('hi'), owner: { uid: 3_000_000, gid: 5 } });
    };
    const tar = await tarToBuffer(source);
    // tar-stream reads the ustar fields (it ignores a PAX uid, where the ustar field says 0); GNU tar reads both.
    expect((await tarStreamList(tar)).map((e) => `${e.name} ${e.uid}:${e.gid}`)).toEqual(['home 0:0', 'home/app 1000:1001', 'home/app/big-id 0:5']);
    const listed = execFileSync('tar', ['--list', '--verbose', '--numeric-owner', '-f', writeTemp('owners.tar', tar)], { encoding: 'utf8' });
    expect(listed).toMatch(/^drwxr-xr-x 0\/0 .* home\/$/m);
    expect(listed).toMatch(/^drwxr-xr-x 1000\/1001 .* home\/app\/$/m);
    expect(listed).toMatch(/^-rw-r--r-- 3000000\/5 .* home\/app\/big-id$/m);
    await expect(tarToBuffer(async (sink) => sink.add({ type: 'directory', name: 'x', mode: 0o755, owner: { uid: -1, gid: 0 } }))).rejects.toThrow(
      new UserError("layer entry 'x': invalid owner -1:0"),
    );
  });

  it('refuses a second entry with the same name, naming it', async () => {
    const source: LayerSource = async (sink) => {
      await sink.add({ type: 'directory', name: 'nix', mode: 0o555 });
      await sink.add({ type: 'symlink', name: 'nix', target: 'x' });
    };
    await expect(tarToBuffer(source)).rejects.toThrow(new UserError("layer has two entries named 'nix'"));
    // Names are data: a newline in one is escaped, so the message stays one line.
    const twice: LayerSource = async (sink) => {
      await sink.add({ type: 'file', name: 'odd\nname', mode: 0o444, size: 0, body: Buffer.alloc(0) });
      await sink.add({ type: 'file', name: 'odd\nname', mode: 0o444, size: 0, body: Buffer.alloc(0) });
    };
    await expect(tarToBuffer(twice)).rejects.toThrow(new UserError("layer has two entries named 'odd\\nname'"));
  });

  it.each([
    ['/abs', 'absolute'],
    ['a//b', 'empty component'],
    ['a/../b', 'dot-dot'],
    ['a/./b', 'dot'],
    ['dir/', 'trailing slash'],
    ['', 'empty'],
  ])('refuses the entry name %j (%s)', async (name) => {
    const source: LayerSource = async (sink) => sink.add({ type: 'directory', name, mode: 0o555 });
    await expect(tarToBuffer(source)).rejects.toThrow(UserError);
    await expect(tarToBuffer(source)).rejects.toThrow(`layer entry name '${name}' is not a normalised relative path`);
  });

  it('refuses a body shorter or longer than the size in its header', async () => {
    const short: LayerSource = async (sink) => sink.add({ type: 'file', name: 'f', mode: 0o444, size: 10, body: chunked(body('abc'), 1) });
    await expect(tarToBuffer(short)).rejects.toThrow("layer entry 'f': file has only 3 bytes, its header says 10");
    const long: LayerSource = async (sink) => sink.add({ type: 'file', name: 'g', mode: 0o444, size: 2, body: body('abc') });
    await expect(tarToBuffer(long)).rejects.toThrow(/layer entry 'g': file has more than/);
  });

  it('refuses a hard link to anything but a file earlier in the layer', async () => {
    const source: LayerSource = async (sink) => {
      await sink.add({ type: 'directory', name: 'd', mode: 0o555 });
      await sink.add({ type: 'hardlink', name: 'l', target: 'd' });
    };
    await expect(tarToBuffer(source)).rejects.toThrow("layer entry 'l': hard link target 'd' is not a file earlier in the layer");
  });

  it('refuses a negative or fractional mtime', () => {
    expect(() => new TarWriter(new MemorySink(), { mtime: -1 })).toThrow(UserError);
    expect(() => new TarWriter(new MemorySink(), { mtime: 1.5 })).toThrow(/SOURCE_DATE_EPOCH/);
  });
});

/** Counts headers with the given typeflag by walking the archive's blocks. */
function headersOfType(tar: Buffer, typeflag: string): number {
  let count = 0;
  for (let off = 0; off + 512 <= tar.length; ) {
    const block = tar.subarray(off, off + 512);
    if (block.every((x) => x === 0)) break;
    const size = parseInt(block.toString('latin1', 124, 135), 8);
    if (String.fromCharCode(block[156]!) === typeflag) count++;
    off += 512 + Math.ceil(size / 512) * 512;
  }
  return count;
}

function findHeader(tar: Buffer, suffix: string): { name: string; prefix: string } | undefined {
  for (let off = 0; off + 512 <= tar.length; ) {
    const block = tar.subarray(off, off + 512);
    if (block.every((x) => x === 0)) break;
    const name = block.toString('latin1', 0, 100).replace(/\0.*$/s, '');
    const prefix = block.toString('latin1', 345, 500).replace(/\0.*$/s, '');
    if (name.endsWith(suffix)) return { name, prefix };
    const size = parseInt(block.toString('latin1', 124, 135), 8);
    off += 512 + Math.ceil(size / 512) * 512;
  }
  return undefined;
}
