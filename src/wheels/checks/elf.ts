import { UserError } from '../../util/errors.js';

/**
 * A streaming ELF reader for the dynamic-linking facts of a file: DT_NEEDED, DT_RPATH, DT_RUNPATH,
 * DT_SONAME and the PT_INTERP interpreter. It reads from a byte stream that cannot seek (a deflated
 * zip entry, a NAR file), so it never asks for bytes twice:
 *
 *  - it retains a prefix of the file (bounded by `prefixLimit`) where headers and, in every usual
 *    linker layout, `.dynstr` lie;
 *  - once the program headers say where PT_DYNAMIC is, and the dynamic section says where the string
 *    table is, the byte ranges still ahead are captured as they stream past.
 *
 * When a string table lies before the dynamic section but beyond the retained prefix (a very large
 * C++ library), the first pass cannot see it again; the scan ends `incomplete` with a {@link ElfRereadPlan}
 * naming the exact byte ranges to capture on a second pass over the same bytes ({@link ElfScanner.reread}).
 */

export interface ElfFacts {
  elfClass: 32 | 64;
  endian: 'little' | 'big';
  /** e_type: 1 relocatable, 2 executable, 3 shared object (or PIE), 4 core. */
  type: number;
  /** e_machine: 62 x86-64, 183 AArch64, 3 i386, … */
  machine: number;
  /** PT_INTERP, e.g. `/lib64/ld-linux-x86-64.so.2`; null for shared libraries and static files. */
  interpreter: string | null;
  /** Whether the file has a PT_DYNAMIC segment (is dynamically linked). */
  dynamic: boolean;
  soname: string | null;
  needed: string[];
  /** DT_RPATH split on `:`, or null when absent. */
  rpath: string[] | null;
  /** DT_RUNPATH split on `:`, or null when absent. */
  runpath: string[] | null;
}

export type ElfScanResult =
  | { kind: 'not-elf' }
  | { kind: 'elf'; facts: ElfFacts }
  | { kind: 'incomplete'; plan: ElfRereadPlan };

/** What a second pass over the same bytes must capture to finish the facts. */
export interface ElfRereadPlan {
  /** The facts known from the first pass (strings still empty). */
  partial: ElfFacts;
  /** File offset of the dynamic string table and its size. */
  strtabOffset: number;
  strtabSize: number;
  /** String-table offsets of the strings to read. */
  refs: StringRefs;
}

interface StringRefs {
  needed: number[];
  soname: number | null;
  rpath: number | null;
  runpath: number | null;
}

export interface ElfScannerOptions {
  /** Name used in error messages (e.g. `torch-2.9.1-….whl: torch/lib/libc10.so`). */
  label?: string;
  /**
   * Bytes of the file's start kept in memory until the string table is found. Default 2 MiB: of the 57
   * ELF files of the ML stack's 42 wheels (torch 2.13 among them), 2 keep their string table beyond
   * 1 MiB (one beyond 4 MiB) and none beyond 16; one held past the prefix costs a second read of the entry's first bytes.
   */
  prefixLimit?: number;
}

const DEFAULT_PREFIX_LIMIT = 2 << 20;
const ELF_MAGIC = Buffer.from([0x7f, 0x45, 0x4c, 0x46]);
const ELF64_HEADER_SIZE = 64;
const PT_LOAD = 1;
const PT_DYNAMIC = 2;
const PT_INTERP = 3;
const DT_NULL = 0;
const DT_NEEDED = 1;
const DT_STRTAB = 5;
const DT_STRSZ = 10;
const DT_SONAME = 14;
const DT_RPATH = 15;
const DT_RUNPATH = 29;
/** Longest string (a library name or a search path list) read from the string table. */
const MAX_STRING = 16 * 1024;
/** Longest PT_INTERP / PT_DYNAMIC accepted: real ones are a few hundred bytes. */
const MAX_SEGMENT_READ = 1 << 20;

/** A byte range of the file wanted by the parser, filled as the bytes stream past. */
class Capture {
  readonly buf: Buffer;
  private filled = 0;
  constructor(
    readonly what: string,
    readonly offset: number,
    length: number,
    readonly then: (buf: Buffer) => void,
  ) {
    this.buf = Buffer.alloc(length);
  }
  get end(): number {
    return this.offset + this.buf.length;
  }
  get complete(): boolean {
    return this.filled === this.buf.length;
  }
  /** The file offset of the first byte still missing. */
  get next(): number {
    return this.offset + this.filled;
  }
  /**
   * Copies the part of `chunk` (which starts at file offset `at`) that falls in this range and is not
   * filled yet. Bytes arrive in file order, so a fill mark suffices (and overlapping sources are harmless).
   */
  take(chunk: Buffer, at: number): void {
    const from = Math.max(this.offset + this.filled, at);
    const to = Math.min(this.end, at + chunk.length);
    if (to <= from) return;
    if (from > this.offset + this.filled) throw new Error('ELF capture fed out of order');
    chunk.copy(this.buf, from - this.offset, from - at, to - at);
    this.filled = to - this.offset;
  }
}

interface Segment {
  type: number;
  offset: number;
  vaddr: number;
  filesz: number;
}

export class ElfScanner {
  private readonly label: string;
  /** Bytes seen so far: the file offset just past the last chunk pushed. */
  private pos = 0;
  /** Retained bytes [0, prefixLength) of the file. */
  private prefix: Buffer[] = [];
  private prefixLength = 0;
  /** Retention stops here (lowered once the dynamic section's place is known). */
  private retainUntil: number;
  /** The chunk being pushed, readable by requests made while it is processed. */
  private current: { chunk: Buffer; at: number } | null = null;
  private captures: Capture[] = [];
  /** Requests registered and not yet answered; the scan is done when none is left. */
  private outstanding = 0;
  private state: 'magic' | 'parsing' | 'not-elf' | 'done' | 'missed' = 'magic';
  private facts: ElfFacts | null = null;
  private segments: Segment[] = [];
  private plan: ElfRereadPlan | null = null;

  constructor(options: ElfScannerOptions = {}) {
    this.label = options.label ?? 'file';
    // The ELF header itself is always retained: it is read in two steps (ident, then the rest).
    this.retainUntil = Math.max(ELF64_HEADER_SIZE, options.prefixLimit ?? DEFAULT_PREFIX_LIMIT);
    this.need('ELF header', 0, 16, (b) => this.onIdent(b));
  }

  /** A scanner for the second pass of an incomplete scan: it captures just the planned strings. */
  static reread(plan: ElfRereadPlan, options: ElfScannerOptions = {}): ElfScanner {
    const scanner = new ElfScanner({ ...options, prefixLimit: 0 });
    scanner.captures = [];
    scanner.outstanding = 0;
    scanner.state = 'parsing';
    scanner.facts = { ...plan.partial, needed: [] };
    scanner.readStrings(plan.strtabOffset, plan.strtabSize, plan.refs);
    scanner.settle();
    return scanner;
  }

  /** Convenience: scans a whole stream. */
  static async scan(source: AsyncIterable<Buffer>, options: ElfScannerOptions = {}): Promise<ElfScanResult> {
    const scanner = new ElfScanner(options);
    for await (const chunk of source) scanner.push(chunk);
    return scanner.end();
  }

  /** Whether further bytes can change the result (false once the facts are known or the file is not ELF). */
  get wantsMore(): boolean {
    return this.state === 'magic' || this.state === 'parsing';
  }

  /**
   * The file offset of the next byte the scan needs, or null when it needs none: a reader that can seek
   * (a file already written) skips to it (`skipTo`) instead of reading every byte of a large library.
   */
  get wanted(): number | null {
    if (!this.wantsMore) return null;
    let next = this.pos < this.retainUntil && this.pos === this.prefixLength ? this.pos : Infinity;
    for (const capture of this.captures) next = Math.min(next, capture.next);
    return next === Infinity ? null : Math.max(next, this.pos);
  }

  /** Goes on at `offset` (not past `wanted`): the bytes before it pass unread, as if streamed past unretained. */
  skipTo(offset: number): void {
    if (offset > this.pos) this.pos = offset;
  }

  /** Bytes held right now (retained prefix and capture buffers): bounded by prefixLimit plus a few KiB. */
  get bufferedBytes(): number {
    return this.prefixLength + this.captures.reduce((n, c) => n + c.buf.length, 0);
  }

  push(chunk: Buffer): void {
    const at = this.pos;
    this.pos += chunk.length;
    if (!this.wantsMore || chunk.length === 0) return;
    // The chunk is parsed first and retained after, only if the scan still wants bytes: most files are
    // not ELF, and a file the scan is done with is never copied. While parsing, requests read the chunk
    // as `current`.
    this.current = { chunk, at };
    const active = this.captures;
    this.captures = [];
    for (const capture of active) {
      capture.take(chunk, at);
      if (!capture.complete) this.captures.push(capture);
    }
    for (const capture of active) if (capture.complete) this.answer(capture.then, capture.buf);
    this.current = null;
    if (!this.wantsMore) return this.release();
    if (at < this.retainUntil && at === this.prefixLength) {
      // Copied: callers may reuse their chunk buffers.
      const keep = Buffer.from(chunk.subarray(0, Math.min(chunk.length, this.retainUntil - at)));
      this.prefix.push(keep);
      this.prefixLength += keep.length;
    }
  }

  end(): ElfScanResult {
    switch (this.state) {
      case 'not-elf':
      case 'magic': // shorter than an ELF ident
        return { kind: 'not-elf' };
      case 'missed':
        return { kind: 'incomplete', plan: this.plan! };
      case 'done':
        return { kind: 'elf', facts: this.facts! };
      case 'parsing': {
        const pending = this.captures[0];
        const what = pending
          ? `${pending.what} at bytes ${pending.offset}..${pending.end} lies beyond the end of the file (${this.pos} bytes)`
          : 'file ends before its dynamic section was read';
        throw this.malformed(what, pending?.offset ?? this.pos);
      }
    }
  }

  private malformed(what: string, offset: number): UserError {
    return new UserError(`${this.label}: malformed ELF: ${what} (byte ${offset})`);
  }

  /**
   * Asks for bytes [offset, offset+length); `then` runs as soon as they are all available (maybe at once).
   * Returns false when part of the range has already streamed past without being retained.
   */
  private need(what: string, offset: number, length: number, then: (buf: Buffer) => void): boolean {
    const capture = new Capture(what, offset, length, then);
    const passedEnd = Math.min(capture.end, this.pos);
    if (offset < passedEnd) {
      // Bytes already seen are readable from the prefix [0, prefixLength) and the current chunk.
      const lostFrom = this.prefixLength;
      const lostTo = this.current ? this.current.at : this.pos;
      if (lostFrom < lostTo && offset < lostTo && passedEnd > lostFrom) return false;
      for (const part of this.prefixParts()) capture.take(part.chunk, part.at);
      if (this.current) capture.take(this.current.chunk, this.current.at);
    }
    this.outstanding++;
    if (capture.complete) this.answer(then, capture.buf);
    else this.captures.push(capture);
    return true;
  }

  private answer(then: (buf: Buffer) => void, buf: Buffer): void {
    if (!this.wantsMore) return;
    then(buf);
    this.outstanding--;
    this.settle();
  }

  private settle(): void {
    if (this.state === 'parsing' && this.outstanding === 0) this.finish('done');
  }

  private *prefixParts(): Generator<{ chunk: Buffer; at: number }> {
    let at = 0;
    for (const chunk of this.prefix) {
      yield { chunk, at };
      at += chunk.length;
    }
  }

  private finish(state: 'done' | 'not-elf' | 'missed'): void {
    this.state = state;
    if (!this.current) this.release();
  }

  private release(): void {
    this.prefix = [];
    this.prefixLength = 0;
    this.retainUntil = 0;
    this.captures = [];
  }

  private onIdent(ident: Buffer): void {
    if (!ident.subarray(0, 4).equals(ELF_MAGIC)) return this.finish('not-elf');
    const elfClass = ident[4] === 1 ? 32 : ident[4] === 2 ? 64 : null;
    const endian = ident[5] === 1 ? 'little' : ident[5] === 2 ? 'big' : null;
    if (!elfClass) throw this.malformed(`unknown ELF class ${ident[4]}`, 4);
    if (!endian) throw this.malformed(`unknown ELF data encoding ${ident[5]}`, 5);
    this.state = 'parsing';
    this.facts = {
      elfClass,
      endian,
      type: 0,
      machine: 0,
      interpreter: null,
      dynamic: false,
      soname: null,
      needed: [],
      rpath: null,
      runpath: null,
    };
    this.need('ELF header', 0, elfClass === 64 ? ELF64_HEADER_SIZE : 52, (b) => this.onHeader(b));
  }

  private reader(buf: Buffer) {
    const { elfClass, endian } = this.facts!;
    const le = endian === 'little';
    const u16 = (o: number) => (le ? buf.readUInt16LE(o) : buf.readUInt16BE(o));
    const u32 = (o: number) => (le ? buf.readUInt32LE(o) : buf.readUInt32BE(o));
    const u64 = (o: number) => {
      const v = le ? buf.readBigUInt64LE(o) : buf.readBigUInt64BE(o);
      // Past 2^53 no offset or size can be real; clamping makes it "beyond the end of the file".
      return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
    };
    const word = elfClass === 64 ? u64 : u32;
    return { u16, u32, u64, word };
  }

  private onHeader(h: Buffer): void {
    const f = this.facts!;
    const r = this.reader(h);
    f.type = r.u16(16);
    f.machine = r.u16(18);
    const is64 = f.elfClass === 64;
    const phoff = r.word(is64 ? 32 : 28);
    const phentsize = r.u16(is64 ? 54 : 42);
    const phnum = r.u16(is64 ? 56 : 44);
    if (phnum === 0) return; // a relocatable object: nothing is loaded, nothing linked
    const minEntry = is64 ? 56 : 32;
    if (phentsize < minEntry) throw this.malformed(`program header entry size ${phentsize} < ${minEntry}`, is64 ? 54 : 42);
    const ok = this.need('program headers', phoff, phentsize * phnum, (b) => this.onProgramHeaders(b, phentsize, phnum));
    if (!ok) throw this.malformed('program headers lie beyond the retained prefix, before the point already read', phoff);
  }

  private onProgramHeaders(table: Buffer, entsize: number, count: number): void {
    const f = this.facts!;
    const r = this.reader(table);
    const is64 = f.elfClass === 64;
    for (let i = 0; i < count; i++) {
      const o = i * entsize;
      const type = r.u32(o);
      this.segments.push(
        is64
          ? { type, offset: r.u64(o + 8), vaddr: r.u64(o + 16), filesz: r.u64(o + 32) }
          : { type, offset: r.u32(o + 4), vaddr: r.u32(o + 8), filesz: r.u32(o + 16) },
      );
    }
    const dyn = this.segments.find((s) => s.type === PT_DYNAMIC);
    const interp = this.segments.find((s) => s.type === PT_INTERP);
    // Nothing before the dynamic section is read after it except the string table, which is found
    // through it: keep retaining up to there (bounded by prefixLimit), not beyond.
    if (dyn) this.retainUntil = Math.min(this.retainUntil, dyn.offset);
    else this.retainUntil = Math.min(this.retainUntil, this.pos);
    if (interp) {
      const length = Math.min(interp.filesz, MAX_SEGMENT_READ);
      const ok = this.need('PT_INTERP', interp.offset, length, (b) => {
        const nul = b.indexOf(0);
        f.interpreter = b.toString('utf8', 0, nul < 0 ? b.length : nul);
      });
      if (!ok) throw this.malformed('PT_INTERP lies before the point already read', interp.offset);
    }
    if (dyn) {
      f.dynamic = true;
      if (dyn.filesz > MAX_SEGMENT_READ) throw this.malformed(`dynamic section of ${dyn.filesz} bytes`, dyn.offset);
      const ok = this.need('dynamic section', dyn.offset, dyn.filesz, (b) => this.onDynamic(b, dyn.offset));
      if (!ok) throw this.malformed('dynamic section lies before the point already read', dyn.offset);
    }
  }

  private onDynamic(d: Buffer, at: number): void {
    const f = this.facts!;
    const r = this.reader(d);
    const entsize = f.elfClass === 64 ? 16 : 8;
    const half = entsize / 2;
    const refs: StringRefs = { needed: [], soname: null, rpath: null, runpath: null };
    let strtab: number | null = null;
    let strsz: number | null = null;
    for (let o = 0; o + entsize <= d.length; o += entsize) {
      const tag = r.word(o);
      const val = r.word(o + half);
      if (tag === DT_NULL) break;
      if (tag === DT_NEEDED) refs.needed.push(val);
      else if (tag === DT_STRTAB) strtab = val;
      else if (tag === DT_STRSZ) strsz = val;
      else if (tag === DT_SONAME) refs.soname = val;
      else if (tag === DT_RPATH) refs.rpath = val;
      else if (tag === DT_RUNPATH) refs.runpath = val;
    }
    const hasStrings = refs.needed.length > 0 || refs.soname !== null || refs.rpath !== null || refs.runpath !== null;
    if (!hasStrings) return;
    if (strtab === null || strsz === null) throw this.malformed('dynamic section names strings but no DT_STRTAB/DT_STRSZ', at);
    const load = this.segments.find((s) => s.type === PT_LOAD && s.vaddr <= strtab! && strtab! < s.vaddr + s.filesz);
    if (!load) throw this.malformed(`DT_STRTAB address 0x${strtab.toString(16)} is in no PT_LOAD segment`, at);
    this.readStrings(strtab - load.vaddr + load.offset, strsz, refs);
  }

  private readStrings(strtabOffset: number, strtabSize: number, refs: StringRefs): void {
    const f = this.facts!;
    const wanted: { ref: number; set: (s: string) => void }[] = [];
    const paths = (s: string) => (s === '' ? [] : s.split(':'));
    refs.needed.forEach((ref, i) => {
      f.needed.push('');
      wanted.push({ ref, set: (s) => (f.needed[i] = s) });
    });
    if (refs.soname !== null) wanted.push({ ref: refs.soname, set: (s) => (f.soname = s) });
    if (refs.rpath !== null) wanted.push({ ref: refs.rpath, set: (s) => (f.rpath = paths(s)) });
    if (refs.runpath !== null) wanted.push({ ref: refs.runpath, set: (s) => (f.runpath = paths(s)) });
    for (const { ref } of wanted) {
      if (ref >= strtabSize) throw this.malformed(`string offset ${ref} outside the string table (${strtabSize} bytes)`, strtabOffset);
    }
    for (const { ref, set } of wanted) {
      const offset = strtabOffset + ref;
      const ok = this.need('dynamic string', offset, Math.min(MAX_STRING, strtabSize - ref), (b) => {
        const nul = b.indexOf(0);
        if (nul < 0) throw this.malformed('unterminated dynamic string', offset);
        set(b.toString('utf8', 0, nul));
      });
      if (!ok) {
        // The string table streamed past before the dynamic section named it: plan a second pass.
        this.plan = {
          partial: { ...f, needed: [], soname: null, rpath: null, runpath: null },
          strtabOffset,
          strtabSize,
          refs,
        };
        return this.finish('missed');
      }
    }
  }
}
