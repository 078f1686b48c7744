import { ElfScanner, type ElfFacts, type ElfRereadPlan, type ElfScanResult } from './elf.js';
import { ZipReader } from '../zip.js';
import { isUserError } from '../../util/errors.js';
import { byCodeUnits } from '../../util/order.js';

/**
 * Collects the ELF facts of wheel entries during the single streaming pass that installs them.
 * The installer taps each file's body through {@link ElfCollector.tap} (or feeds an {@link EntryTap}
 * itself); non-ELF files cost a 4-byte look. When a huge library's string table streamed past
 * before its dynamic section named it, {@link ElfCollector.finish} reads just that entry again.
 */

/** A loadable ELF file a wheel installs, with where it lands in the image. */
export interface ElfObject {
  /** The wheel file. */
  wheel: string;
  /** Path inside the wheel: `vllm/_C.abi3.so`. */
  entry: string;
  /** Absolute path in the image: `/nix/store/…/site-packages/vllm/_C.abi3.so`. */
  imagePath: string;
  facts: ElfFacts;
}

/** Feeds one entry's bytes; `end` once the body is through (also when it ends early on error). */
export interface EntryTap {
  push(chunk: Buffer): void;
  end(): void;
  /** The offset of the next byte wanted (null: none): a reader that can seek skips to it with `skipTo`. */
  wanted(): number | null;
  skipTo(offset: number): void;
}

interface Pending {
  wheel: string;
  entry: string;
  imagePath: string;
  plan: ElfRereadPlan;
}

export class ElfCollector {
  private readonly objects: ElfObject[] = [];
  private readonly pending: Pending[] = [];
  /** `wheel\0entry` of every entry judged, so a layer source run twice records each file once. */
  private readonly judged = new Set<string>();
  /** Malformed ELF files, one line each (`wheel: entry: malformed ELF: … (byte N)`). */
  readonly problems: string[] = [];

  constructor(private readonly options: { prefixLimit?: number } = {}) {}

  /** Starts scanning an entry. */
  entry(wheel: string, entry: string, imagePath: string): EntryTap {
    const scanner = new ElfScanner({ label: `${baseName(wheel)}: ${entry}`, prefixLimit: this.options.prefixLimit });
    const key = `${wheel}\0${entry}`;
    let failed = false;
    const fail = (err: unknown) => {
      if (!isUserError(err)) throw err;
      failed = true;
      if (!this.judged.has(key)) this.problems.push(err.message);
      this.judged.add(key);
    };
    return {
      push: (chunk) => {
        if (failed || !scanner.wantsMore) return;
        try {
          scanner.push(chunk);
        } catch (err) {
          fail(err);
        }
      },
      wanted: () => (failed ? null : scanner.wanted),
      skipTo: (offset) => scanner.skipTo(offset),
      end: () => {
        if (failed || this.judged.has(key)) return;
        let result: ElfScanResult;
        try {
          result = scanner.end();
        } catch (err) {
          return fail(err);
        }
        this.judged.add(key);
        if (result.kind === 'elf') this.objects.push({ wheel, entry, imagePath, facts: result.facts });
        else if (result.kind === 'incomplete') this.pending.push({ wheel, entry, imagePath, plan: result.plan });
      },
    };
  }

  /** Passes `body` through unchanged while scanning it. */
  async *tap(wheel: string, entry: string, imagePath: string, body: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
    const tap = this.entry(wheel, entry, imagePath);
    let complete = false;
    try {
      for await (const chunk of body) {
        tap.push(chunk);
        yield chunk;
      }
      complete = true;
    } finally {
      // An aborted body says nothing about the file; only a whole one is judged.
      if (complete) tap.end();
    }
  }

  /** Entries still needing a second read (their string table lay beyond the retained prefix). */
  get incomplete(): readonly { wheel: string; entry: string }[] {
    return this.pending;
  }

  /**
   * Completes the pending entries by reading each once more, capturing only the planned bytes,
   * and returns every ELF object collected, sorted by wheel then entry.
   * `open` defaults to reading the entry from the wheel file.
   */
  async finish(open: (wheel: string, entry: string) => AsyncIterable<Buffer> = readWheelEntry): Promise<ElfObject[]> {
    for (const p of this.pending.splice(0)) {
      const scanner = ElfScanner.reread(p.plan, { label: `${baseName(p.wheel)}: ${p.entry}` });
      try {
        for await (const chunk of open(p.wheel, p.entry)) {
          scanner.push(chunk);
          if (!scanner.wantsMore) break;
        }
        const result = scanner.end();
        if (result.kind === 'elf') this.objects.push({ wheel: p.wheel, entry: p.entry, imagePath: p.imagePath, facts: result.facts });
      } catch (err) {
        if (!isUserError(err)) throw err;
        this.problems.push(err.message);
      }
    }
    return [...this.objects].sort((a, b) => byCodeUnits(a.wheel, b.wheel) || byCodeUnits(a.entry, b.entry));
  }
}

async function* readWheelEntry(wheel: string, entryName: string): AsyncGenerator<Buffer> {
  const zip = await ZipReader.open(wheel);
  try {
    const entry = zip.entries.find((e) => e.name === entryName && !e.isDir);
    if (!entry) throw new Error(`${wheel}: entry ${entryName} vanished between two reads`);
    yield* zip.read(entry);
  } finally {
    await zip.close();
  }
}

function baseName(file: string): string {
  return file.slice(file.lastIndexOf('/') + 1);
}

