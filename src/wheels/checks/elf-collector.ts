import { ElfScanner, type ElfFacts, type ElfRereadPlan, type ElfScanResult } from './elf.js';
import { ZipReader, type ZipEntry } from '../zip.js';
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
  zip?: ZipEntry;
}

export class ElfCollector {
  private readonly objects: ElfObject[] = [];
  private readonly pending: Pending[] = [];
  /** `wheel\0entry` of every entry judged, so a layer source run twice records each file once. */
  private readonly judged = new Set<string>();
  /** Malformed ELF files, one line each (`wheel: entry: malformed ELF: … (byte N)`). */
  readonly problems: string[] = [];

  constructor(private readonly options: { prefixLimit?: number } = {}) {}

  /** Starts scanning an entry; `zip`, where it lies in the wheel, spares a second read the zip's directory. */
  entry(wheel: string, entry: string, imagePath: string, zip?: ZipEntry): EntryTap {
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
        else if (result.kind === 'incomplete') this.pending.push({ wheel, entry, imagePath, plan: result.plan, zip });
      },
    };
  }

  /** Passes `body` through unchanged while scanning it. */
  async *tap(wheel: string, entry: string, imagePath: string, body: AsyncIterable<Buffer>, zip?: ZipEntry): AsyncGenerator<Buffer> {
    const tap = this.entry(wheel, entry, imagePath, zip);
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
   * `open` defaults to opening the wheel file; each wheel is opened once for all its entries.
   */
  async finish(open: (wheel: string, entries: (ZipEntry | undefined)[]) => Promise<EntryReader> = openWheel): Promise<ElfObject[]> {
    const byWheel = new Map<string, Pending[]>();
    for (const p of this.pending.splice(0)) byWheel.set(p.wheel, [...(byWheel.get(p.wheel) ?? []), p]);
    // Opening a wheel reads its whole zip directory (torch's has 20,000 entries): once per entry, that
    // was megabytes of garbage per library at the end of the build, where its memory peaked.
    for (const [wheel, pending] of byWheel) {
      const reader = await open(wheel, pending.map((p) => p.zip));
      try {
        for (const p of pending) {
          const scanner = ElfScanner.reread(p.plan, { label: `${baseName(p.wheel)}: ${p.entry}` });
          try {
            for await (const chunk of reader.read(p.entry)) {
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
      } finally {
        await reader.close();
      }
    }
    return [...this.objects].sort((a, b) => byCodeUnits(a.wheel, b.wheel) || byCodeUnits(a.entry, b.entry));
  }
}

/** Entries of one wheel read by name, until closed. */
export interface EntryReader {
  read(entry: string): AsyncIterable<Buffer>;
  close(): Promise<void>;
}

/** The wheel's entries: where the first read said they lie, else as its zip directory says. */
async function openWheel(wheel: string, known: (ZipEntry | undefined)[]): Promise<EntryReader> {
  const entries = known.every((e) => e !== undefined) ? (known as ZipEntry[]) : null;
  const zip = entries ? await ZipReader.reopen(wheel, entries) : await ZipReader.open(wheel);
  const files = new Map(zip.entries.filter((e) => !e.isDir).map((e) => [e.name, e]));
  return {
    read: (name) => {
      const entry = files.get(name);
      if (!entry) throw new Error(`${wheel}: entry ${name} vanished between two reads`);
      // The scanner copies what it keeps, and the read stops once it has the bytes it planned.
      return zip.readInPlace(entry);
    },
    close: () => zip.close(),
  };
}

function baseName(file: string): string {
  return file.slice(file.lastIndexOf('/') + 1);
}

