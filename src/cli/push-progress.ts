import type { Image } from '../model/image.js';
import type { BlobOutcome } from '../registry/blob-upload.js';
import { silentProgress, type BlobReporter, type PushProgress } from '../registry/progress.js';
import type { PushOptions, PushResult } from '../registry/push.js';
import type { ImageReference } from '../model/reference.js';
import { formatBytes } from '../util/units.js';
import { Bars, chooseProgressMode, formatSeconds, type Bar, type ProgressMode } from './progress.js';

/**
 * What a push shows while it runs, on stderr: on a terminal a bar per blob in flight and one overall
 * (bytes, rate, time left); otherwise plain lines (each blob's outcome, retries, and an overall line
 * every few seconds); nothing with --quiet. The pushed reference is printed last, on stdout.
 */
export interface ShownPushOptions extends Omit<PushOptions, 'progress'> {
  quiet?: boolean;
  /** Overrides the style chosen from stderr being a terminal. */
  progress?: ProgressMode;
  /** Progress goes here (default process.stderr). */
  stderr?: NodeJS.WritableStream;
  /** The last line, `<reference>@<digest>`, goes here (default process.stdout); null prints nothing. */
  stdout?: NodeJS.WritableStream | null;
}

/** Pushes an image as the CLI does: with its progress display, and the pushed reference printed last. */
export async function pushAndShow(image: Image, reference: string | ImageReference, options: ShownPushOptions = {}): Promise<PushResult> {
  const { quiet, progress: mode, stderr = process.stderr, stdout, ...push } = options;
  const { pushImage } = await import('../registry/push.js');
  const chosen = mode ?? chooseProgressMode(stderr, quiet ?? false);
  const result = await pushImage(image, reference, { ...push, progress: (total) => createProgress(chosen, stderr, total) });
  (stdout === undefined ? process.stdout : stdout)?.write(`${result.reference}\n`);
  return result;
}

export function createProgress(mode: ProgressMode, stream: NodeJS.WritableStream, totalBytes: number): PushProgress {
  if (mode === 'quiet') return silentProgress;
  const totals = new Totals(totalBytes);
  return mode === 'tty' ? new TerminalProgress(stream as NodeJS.WriteStream, totals) : new PlainProgress(stream, totals);
}


/** Overall bytes, counting blobs the registry already had as done; the rate counts only bytes sent. */
class Totals {
  private readonly perBlob = new Map<string, number>();
  done = 0;
  private sent = 0;
  private readonly started = Date.now();

  constructor(readonly total: number) {}

  set(digest: string, bytes: number, counted: boolean): void {
    const before = this.perBlob.get(digest) ?? 0;
    this.perBlob.set(digest, bytes);
    this.done += bytes - before;
    if (counted) this.sent += Math.max(0, bytes - before);
  }

  rate(): number {
    const seconds = (Date.now() - this.started) / 1000;
    return seconds > 0 ? this.sent / seconds : 0;
  }

  eta(): string {
    const rate = this.rate();
    return rate > 0 && this.done < this.total ? formatSeconds((this.total - this.done) / rate) : '-';
  }
}

/** How often a bar is redrawn from progress callbacks, which come per 64 KiB read. */
const UPDATE_INTERVAL_MS = 100;

class TerminalProgress implements PushProgress {
  private readonly bars: Bars;
  private readonly overall: Bar;

  constructor(
    stream: NodeJS.WriteStream,
    private readonly totals: Totals,
  ) {
    this.bars = new Bars(stream);
    this.overall = this.bars.add('total', totals.total);
    this.drawOverall();
  }

  blob(digest: string, size: number, label?: string): BlobReporter {
    const name = blobLabel(digest, label);
    const started = Date.now();
    let bar: Bar | undefined;
    let last = 0;
    const update = (bytes: number, force: boolean) => {
      this.totals.set(digest, bytes, true);
      const now = Date.now();
      if (!force && now - last < UPDATE_INTERVAL_MS) return;
      last = now;
      const rate = bytes / Math.max((now - started) / 1000, 0.001);
      bar ??= this.bars.add(name, size);
      bar.update(bytes, detail(bytes, size, rate, rate > 0 ? formatSeconds((size - bytes) / rate) : '-'));
      this.drawOverall();
    };
    return {
      transferred: (bytes) => update(bytes, false),
      retrying: (reason, delayMs) => this.bars.log(`${name}: ${reason}; retrying in ${formatSeconds(delayMs / 1000)}`),
      finished: (outcome) => {
        if (outcome.kind !== 'uploaded') this.totals.set(digest, size, false);
        else update(size, true);
        bar?.remove();
        this.drawOverall();
        this.bars.log(describeOutcome(name, size, outcome, started));
      },
    };
  }

  note(message: string): void {
    this.bars.log(message);
  }

  stop(): void {
    this.bars.stop();
  }

  private drawOverall(): void {
    this.overall.update(this.totals.done, detail(this.totals.done, this.totals.total, this.totals.rate(), this.totals.eta()));
  }
}

/** `12 MiB/30 MiB 4 MiB/s ETA 5s` */
function detail(done: number, size: number, rate: number, left: string): string {
  return `${formatBytes(done)}/${formatBytes(size)} ${formatBytes(rate)}/s ETA ${left}`;
}

/** Seconds between the overall lines of plain output. */
const PLAIN_SUMMARY_INTERVAL_MS = 10_000;

class PlainProgress implements PushProgress {
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly stream: NodeJS.WritableStream,
    private readonly totals: Totals,
  ) {
    this.timer = setInterval(() => this.summary(), PLAIN_SUMMARY_INTERVAL_MS).unref();
  }

  blob(digest: string, size: number, label?: string): BlobReporter {
    const name = blobLabel(digest, label);
    const started = Date.now();
    return {
      transferred: (bytes) => this.totals.set(digest, bytes, true),
      retrying: (reason, delayMs) => this.line(`${name}: ${reason}; retrying in ${formatSeconds(delayMs / 1000)}`),
      finished: (outcome) => {
        this.totals.set(digest, size, outcome.kind === 'uploaded');
        this.line(describeOutcome(name, size, outcome, started));
      },
    };
  }

  note(message: string): void {
    this.line(message);
  }

  stop(): void {
    clearInterval(this.timer);
  }

  private summary(): void {
    const { done, total } = this.totals;
    if (done >= total) return;
    const percent = total > 0 ? Math.floor((done / total) * 100) : 100;
    this.line(`pushed ${formatBytes(done)} of ${formatBytes(total)} (${percent}%, ${formatBytes(this.totals.rate())}/s, ETA ${this.totals.eta()})`);
  }

  private line(text: string): void {
    this.stream.write(`${text}\n`);
  }
}

function describeOutcome(name: string, size: number, outcome: BlobOutcome, started: number): string {
  switch (outcome.kind) {
    case 'skipped':
      return `${name}: already in the registry`;
    case 'mounted':
      return `${name}: mounted from ${outcome.from}`;
    case 'uploaded': {
      const seconds = (Date.now() - started) / 1000;
      return `${name}: uploaded ${formatBytes(size)} in ${formatSeconds(seconds)} (${formatBytes(size / Math.max(seconds, 0.001))}/s)`;
    }
  }
}

/** `3f2a9c81d0e4 python3-3.11.9`: the short digest, and what the layer holds when known. */
function blobLabel(digest: string, label?: string): string {
  const short = digest.replace(/^sha256:/, '').slice(0, 12);
  return label ? `${short} ${label}` : short;
}
