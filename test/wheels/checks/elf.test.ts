import { describe, it, expect } from 'vitest';
import { execFileSync } from 'node:child_process';
import { createReadStream, copyFileSync, existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ElfScanner, type ElfFacts, type ElfScanResult } from '../../../src/wheels/checks/elf.js';
import { UserError } from '../../../src/util/errors.js';
import { tools } from '../../helpers/tools.js';
import { useScratchDirs } from '../../helpers/scratch.js';

/** Temporary directories, removed after the tests. */
const scratchDir = useScratchDirs();

/** What `readelf` says about a file: the oracle. */
function readelfFacts(file: string) {
  const dyn = execFileSync('readelf', ['-dW', file], { encoding: 'utf8' });
  const prog = execFileSync('readelf', ['-lW', file], { encoding: 'utf8' });
  const pick = (kind: string) => [...dyn.matchAll(new RegExp(`\\(${kind}\\)\\s+.*?\\[(.*)\\]`, 'g'))].map((m) => m[1]!);
  const paths = (kind: string) => {
    const [v] = pick(kind);
    return v === undefined ? null : v === '' ? [] : v.split(':');
  };
  return {
    needed: pick('NEEDED'),
    soname: pick('SONAME')[0] ?? null,
    rpath: paths('RPATH'),
    runpath: paths('RUNPATH'),
    interpreter: /Requesting program interpreter: (.*)\]/.exec(prog)?.[1] ?? null,
  };
}

/** Scans a file as a stream of chunks of the given size (or the stream's own chunking). */
async function scanFile(file: string, chunkSize = 64 * 1024, prefixLimit?: number): Promise<ElfScanResult> {
  const scanner = new ElfScanner({ label: file, prefixLimit });
  for await (const chunk of createReadStream(file, { highWaterMark: chunkSize })) scanner.push(chunk as Buffer);
  return scanner.end();
}

/** Scans with the two-pass protocol: a second pass when the first could not see the string table. */
async function scanTwoPass(file: string, chunkSize: number, prefixLimit: number): Promise<{ facts: ElfFacts; passes: number }> {
  const first = await scanFile(file, chunkSize, prefixLimit);
  if (first.kind === 'elf') return { facts: first.facts, passes: 1 };
  if (first.kind !== 'incomplete') throw new Error(`${file}: ${first.kind}`);
  const second = ElfScanner.reread(first.plan, { label: file });
  for await (const chunk of createReadStream(file, { highWaterMark: chunkSize })) second.push(chunk as Buffer);
  const result = second.end();
  if (result.kind !== 'elf') throw new Error(`${file}: second pass ${result.kind}`);
  return { facts: result.facts, passes: 2 };
}

function pickFacts(f: ElfFacts) {
  return { needed: f.needed, soname: f.soname, rpath: f.rpath, runpath: f.runpath, interpreter: f.interpreter };
}

const libdir = '/usr/lib/x86_64-linux-gnu';
/** A spread of real files: executables (PIE), shared libraries big and small, a C++ library. */
const realFiles = ['/bin/ls', '/usr/bin/python3.11', '/bin/bash', `${libdir}/libz.so.1`, `${libdir}/libc.so.6`, `${libdir}/libstdc++.so.6`]
  .concat(readdirSync(libdir).filter((n) => /^lib(expat|ffi|ssl|crypto|sqlite3|gcc_s)\.so\.\d+$/.test(n)).map((n) => join(libdir, n)))
  .filter((f) => existsSync(f));

describe.runIf(tools('readelf', 'patchelf'))('ElfScanner against readelf', () => {
  it.each(realFiles)('reads the dynamic facts of %s', async (file) => {
    const result = await scanFile(file);
    expect(result.kind).toBe('elf');
    if (result.kind !== 'elf') return;
    expect(result.facts.elfClass).toBe(64);
    expect(result.facts.endian).toBe('little');
    expect(result.facts.machine).toBe(62);
    expect(pickFacts(result.facts)).toEqual(readelfFacts(file));
  });

  it('gives the same facts whatever the chunk boundaries', async () => {
    const file = `${libdir}/libz.so.1`;
    const oracle = readelfFacts(file);
    for (const size of [1, 7, 63, 4096, 1 << 20]) {
      const result = await scanFile(file, size);
      expect(result.kind, `chunk ${size}`).toBe('elf');
      if (result.kind === 'elf') expect(pickFacts(result.facts), `chunk ${size}`).toEqual(oracle);
    }
  });

  it('plans a second pass when the string table streamed past beyond the retained prefix', async () => {
    const file = `${libdir}/libstdc++.so.6`;
    const first = await scanFile(file, 4096, 256);
    expect(first.kind).toBe('incomplete');
    const { facts, passes } = await scanTwoPass(file, 4096, 256);
    expect(passes).toBe(2);
    expect(pickFacts(facts)).toEqual(readelfFacts(file));
  });

  it('reads RPATH and RUNPATH set by patchelf (which moves the string table after the dynamic section)', async () => {
    const dir = scratchDir('elf-');
    const withRunpath = join(dir, 'runpath.so');
    const withRpath = join(dir, 'rpath.so');
    copyFileSync(`${libdir}/libz.so.1`, withRunpath);
    copyFileSync(`${libdir}/libz.so.1`, withRpath);
    execFileSync('patchelf', ['--set-rpath', '$ORIGIN/../lib:/opt/rocm/lib', withRunpath]);
    execFileSync('patchelf', ['--add-needed', 'libamdhip64.so.7', withRunpath]);
    execFileSync('patchelf', ['--force-rpath', '--set-rpath', '$ORIGIN', '--set-soname', 'libother.so.2', withRpath]);
    for (const file of [withRunpath, withRpath]) {
      for (const prefixLimit of [16 << 20, 0]) {
        const { facts } = await scanTwoPass(file, 1000, prefixLimit);
        expect(pickFacts(facts)).toEqual(readelfFacts(file));
      }
    }
    const { facts } = await scanTwoPass(withRunpath, 1000, 0);
    expect(facts.runpath).toEqual(['$ORIGIN/../lib', '/opt/rocm/lib']);
    expect(facts.rpath).toBeNull();
    expect(facts.needed).toContain('libamdhip64.so.7');
  });

  it('skips to the bytes it wants (`wanted`, `skipTo`) when the file can be read anywhere, with the same facts', async () => {
    for (const file of realFiles) {
      for (const prefixLimit of [64 * 1024, 2 << 20]) {
        const bytes = readFileSync(file);
        const scanner = new ElfScanner({ label: file, prefixLimit });
        let read = 0;
        for (let next = scanner.wanted; next !== null && next < bytes.length; next = scanner.wanted) {
          scanner.skipTo(next);
          const chunk = bytes.subarray(next, Math.min(bytes.length, next + 4096));
          read += chunk.length;
          scanner.push(chunk);
        }
        const result = scanner.end();
        if (result.kind === 'incomplete') continue; // a second pass, as when streaming (tested above)
        expect(result.kind, file).toBe('elf');
        if (result.kind === 'elf') expect(pickFacts(result.facts), file).toEqual(readelfFacts(file));
        // A large library is mostly skipped: its retained start, the dynamic section, its strings.
        if (bytes.length > 4 * prefixLimit) expect(read, file).toBeLessThan(bytes.length / 2);
      }
    }
  });

  it('keeps memory flat: what it holds stays within the prefix limit on a large file', async () => {
    const file = `${libdir}/libstdc++.so.6`;
    for (const prefixLimit of [1024, 64 * 1024]) {
      const scanner = new ElfScanner({ label: file, prefixLimit });
      let most = 0;
      for await (const chunk of createReadStream(file, { highWaterMark: 8192 })) {
        scanner.push(chunk as Buffer);
        most = Math.max(most, scanner.bufferedBytes);
      }
      scanner.end();
      expect(most).toBeLessThanOrEqual(prefixLimit + 8192 + 64 * 1024);
    }
  });

  it('holds nothing once the facts are known, even when a whole small library comes in one chunk', () => {
    const file = `${libdir}/libz.so.1`;
    const scanner = new ElfScanner({ label: file });
    scanner.push(readFileSync(file));
    expect(scanner.wantsMore).toBe(false);
    expect(scanner.bufferedBytes).toBe(0);
    const result = scanner.end();
    expect(result.kind === 'elf' && pickFacts(result.facts)).toEqual(readelfFacts(file));
  });
});

describe('ElfScanner on synthetic files', () => {
  it('says not-elf for other files, without buffering them', async () => {
    const scanner = new ElfScanner();
    scanner.push(Buffer.from('PK\x03\x04 a zip, not an ELF file'));
    expect(scanner.wantsMore).toBe(false);
    // Nothing of it is held.
    expect(scanner.bufferedBytes).toBe(0);
    expect(scanner.end()).toEqual({ kind: 'not-elf' });
    const short = new ElfScanner();
    short.push(Buffer.from('\x7fEL'));
    expect(short.end()).toEqual({ kind: 'not-elf' });
  });

  it.runIf(tools('readelf'))('reads a 32-bit big-endian file, agreeing with readelf', async () => {
    const file = join(scratchDir('elf-'), 'be32.so');
    writeFileSync(file, makeElf({ is64: false, big: true, needed: ['libfoo.so.1', 'libbar.so'], runpath: '$ORIGIN/lib', soname: 'libbe.so.3' }));
    const result = await scanFile(file, 3);
    expect(result.kind).toBe('elf');
    if (result.kind !== 'elf') return;
    expect(result.facts).toMatchObject({ elfClass: 32, endian: 'big', machine: 20 });
    expect(pickFacts(result.facts)).toEqual(readelfFacts(file));
    expect(result.facts.needed).toEqual(['libfoo.so.1', 'libbar.so']);
  });

  it.runIf(tools('readelf'))('reads a 64-bit file whose string table lies after the dynamic section', async () => {
    const file = join(scratchDir('elf-'), 'late.so');
    writeFileSync(file, makeElf({ is64: true, big: false, needed: ['libz.so.1'], rpath: '/a:/b', stringsAfterDynamic: true }));
    const result = await scanFile(file, 5, 0);
    expect(result.kind).toBe('elf');
    if (result.kind === 'elf') expect(pickFacts(result.facts)).toEqual(readelfFacts(file));
  });

  it('reports a truncated file with its label and the byte offset', async () => {
    const whole = makeElf({ is64: true, big: false, needed: ['libz.so.1'] });
    const scanner = new ElfScanner({ label: 'x.whl: pkg/_c.so' });
    scanner.push(whole.subarray(0, 200));
    expect(() => scanner.end()).toThrowError(UserError);
    expect(() => scanner.end()).toThrowError(/^x\.whl: pkg\/_c\.so: malformed ELF: dynamic section at bytes 256\.\.\d+ lies beyond the end of the file \(200 bytes\) \(byte 256\)$/);
  });

  it('reports a string offset outside the string table', async () => {
    const bad = makeElf({ is64: true, big: false, needed: ['libz.so.1'], badStringOffset: true });
    const scanner = new ElfScanner({ label: 'bad.so' });
    expect(() => scanner.push(bad)).toThrowError(/bad\.so: malformed ELF: string offset \d+ outside the string table/);
  });

  it('reads a static executable (no dynamic section) and a relocatable object', async () => {
    const dir = scratchDir('elf-');
    if (existsSync('/bin/busybox')) {
      const result = await scanFile('/bin/busybox');
      expect(result).toMatchObject({ kind: 'elf', facts: { dynamic: false, needed: [], interpreter: null } });
    }
    const obj = join(dir, 'a.o');
    writeFileSync(join(dir, 'a.c'), 'int f(void) { return 1; }\n');
    if (tools('cc')) {
      execFileSync('cc', ['-c', '-o', obj, join(dir, 'a.c')]);
      const result = await scanFile(obj);
      expect(result).toMatchObject({ kind: 'elf', facts: { type: 1, dynamic: false, needed: [] } });
    }
  });
});

interface SyntheticElf {
  is64: boolean;
  big: boolean;
  needed: string[];
  soname?: string;
  rpath?: string;
  runpath?: string;
  /** Put .dynstr after .dynamic in the file (as patchelf does). */
  stringsAfterDynamic?: boolean;
  badStringOffset?: boolean;
}

/**
 * A minimal shared object: ELF header, two program headers (PT_LOAD covering the file, PT_DYNAMIC),
 * a dynamic section at 256 and a string table; enough for readelf and the loader's view of DT_NEEDED.
 */
function makeElf(spec: SyntheticElf): Buffer {
  const strings: string[] = [''];
  const strOffsets = new Map<string, number>();
  let strSize = 1;
  const addString = (s: string) => {
    if (!strOffsets.has(s)) {
      strOffsets.set(s, strSize);
      strings.push(s);
      strSize += Buffer.byteLength(s) + 1;
    }
    return strOffsets.get(s)!;
  };
  const dyn: [number, number][] = [];
  for (const n of spec.needed) dyn.push([1, addString(n)]);
  if (spec.soname) dyn.push([14, addString(spec.soname)]);
  if (spec.rpath) dyn.push([15, addString(spec.rpath)]);
  if (spec.runpath) dyn.push([29, addString(spec.runpath)]);
  if (spec.badStringOffset) dyn[0]![1] = 10_000;
  const strtab = Buffer.from(strings.map((s) => s + '\0').join(''), 'utf8');
  const word = spec.is64 ? 8 : 4;
  const dynEntries = dyn.length + 3; // + DT_STRTAB, DT_STRSZ, DT_NULL
  const dynSize = dynEntries * word * 2;
  const dynOffset = 256;
  const strOffset = spec.stringsAfterDynamic ? dynOffset + dynSize : 160;
  const size = Math.max(dynOffset + dynSize, strOffset + strtab.length);
  const vbase = 0x10000;
  const buf = Buffer.alloc(size);
  const w16 = (o: number, v: number) => (spec.big ? buf.writeUInt16BE(v, o) : buf.writeUInt16LE(v, o));
  const w32 = (o: number, v: number) => (spec.big ? buf.writeUInt32BE(v, o) : buf.writeUInt32LE(v, o));
  const wWord = (o: number, v: number) =>
    spec.is64 ? (spec.big ? buf.writeBigUInt64BE(BigInt(v), o) : buf.writeBigUInt64LE(BigInt(v), o)) : w32(o, v);
  Buffer.from([0x7f, 0x45, 0x4c, 0x46, spec.is64 ? 2 : 1, spec.big ? 2 : 1, 1]).copy(buf, 0);
  const ehsize = spec.is64 ? 64 : 52;
  const phentsize = spec.is64 ? 56 : 32;
  w16(16, 3); // ET_DYN
  w16(18, spec.is64 ? 62 : 20); // x86-64, or PowerPC for the 32-bit big-endian one
  w32(20, 1);
  if (spec.is64) {
    wWord(32, ehsize); // e_phoff
    w16(52, ehsize);
    w16(54, phentsize);
    w16(56, 2);
  } else {
    wWord(28, ehsize);
    w16(40, ehsize);
    w16(42, phentsize);
    w16(44, 2);
  }
  const phdr = (i: number, type: number, offset: number, filesz: number) => {
    const o = ehsize + i * phentsize;
    w32(o, type);
    if (spec.is64) {
      w32(o + 4, 4); // flags R
      wWord(o + 8, offset);
      wWord(o + 16, vbase + offset);
      wWord(o + 24, vbase + offset);
      wWord(o + 32, filesz);
      wWord(o + 40, filesz);
      wWord(o + 48, 8);
    } else {
      wWord(o + 4, offset);
      wWord(o + 8, vbase + offset);
      wWord(o + 12, vbase + offset);
      wWord(o + 16, filesz);
      wWord(o + 20, filesz);
      w32(o + 24, 4);
      w32(o + 28, 4);
    }
  };
  phdr(0, 1, 0, size);
  phdr(1, 2, dynOffset, dynSize);
  const all: [number, number][] = [...dyn, [5, vbase + strOffset], [10, strtab.length], [0, 0]];
  all.forEach(([tag, val], i) => {
    wWord(dynOffset + i * 2 * word, tag);
    wWord(dynOffset + i * 2 * word + word, val);
  });
  strtab.copy(buf, strOffset);
  if (!spec.stringsAfterDynamic && strOffset + strtab.length > dynOffset) throw new Error('synthetic ELF: strings overlap');
  return buf;
}
