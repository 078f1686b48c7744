import cliProgress from 'cli-progress';
import type { BlobOutcome, BlobProgress } from './blob-upload.js';
import { formatBytes } from '../util/units.js';

/**
 * What a push tells the user while it runs, on stderr: on a terminal a bar per blob in flight and
 * one overall (bytes, rate, ETA); otherwise plain lines (each blob's outcome, retries, and an
 * overall line every few seconds); nothing with --quiet.
 */
export type ProgressMode = 'tty' | 'plain' | 'quiet';

export interface BlobReporter extends BlobProgress {
  finished(outcome: BlobOutcome): void;
}

export interface PushProgress {
  /** A blob's upload begins (it is called when its turn in the queue comes, not before). */
  blob(digest: string, size: number, label?: string): BlobReporter;
  note(message: string): void;
  stop(): void;
}

export function chooseProgressMode(stream: NodeJS.WritableStream, quiet: boolean): ProgressMode {
  if (quiet) return 'quiet';
  return (stream as NodeJS.WriteStream).isTTY ? 'tty' : 'plain';
}

export function createProgress(mode: ProgressMode, stream: NodeJS.WritableStream, totalBytes: number): PushProgress {
  if (mode === 'quiet') return quietProgress;
  const totals = new Totals(totalBytes);
  return mode === 'tty' ? new TerminalProgress(stream as NodeJS.WriteStream, totals) : new PlainProgress(stream, totals);
}

const quietProgress: PushProgress = {
  blob: () => ({ transferred() {}, retrying() {}, finished() {} }),
  note() {},
  stop() {},
};

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
  private readonly bars: cliProgress.MultiBar;
  private readonly overall: cliProgress.SingleBar;
  private stopped = false;

  constructor(
    stream: NodeJS.WriteStream,
    private readonly totals: Totals,
  ) {
    this.bars = new cliProgress.MultiBar(
      {
        stream,
        format: '{label} {bar} {percentage}% {done}/{size} {rate} ETA {timeLeft}',
        barsize: 24,
        hideCursor: true,
        clearOnComplete: false,
        autopadding: true,
        fps: 10,
      },
      cliProgress.Presets.shades_classic,
    );
    this.overall = this.bars.create(Math.max(totals.total, 1), 0, this.payload('total', 0, totals.total, totals.rate(), totals.eta()));
  }

  blob(digest: string, size: number, label?: string): BlobReporter {
    const name = blobLabel(digest, label);
    const started = Date.now();
    let bar: cliProgress.SingleBar | undefined;
    let last = 0;
    const update = (bytes: number, force: boolean) => {
      this.totals.set(digest, bytes, true);
      const now = Date.now();
      if (!force && now - last < UPDATE_INTERVAL_MS) return;
      last = now;
      const rate = bytes / Math.max((now - started) / 1000, 0.001);
      bar ??= this.bars.create(Math.max(size, 1), 0, this.payload(name, 0, size, 0, '-'));
      bar.update(bytes, this.payload(name, bytes, size, rate, rate > 0 ? formatSeconds((size - bytes) / rate) : '-'));
      this.overall.update(this.totals.done, this.payload('total', this.totals.done, this.totals.total, this.totals.rate(), this.totals.eta()));
    };
    return {
      transferred: (bytes) => update(bytes, false),
      retrying: (reason, delayMs) => this.bars.log(`${name}: ${reason}; retrying in ${formatSeconds(delayMs / 1000)}\n`),
      finished: (outcome) => {
        if (outcome.kind !== 'uploaded') this.totals.set(digest, size, false);
        else update(size, true);
        if (bar) this.bars.remove(bar);
        this.overall.update(this.totals.done, this.payload('total', this.totals.done, this.totals.total, this.totals.rate(), this.totals.eta()));
        this.bars.log(`${describeOutcome(name, size, outcome, started)}\n`);
      },
    };
  }

  note(message: string): void {
    this.bars.log(`${message}\n`);
  }

  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.bars.update(); // writes out lines still waiting for the next redraw: stop() would drop them
    this.bars.stop();
  }

  /** Named apart from cli-progress's own tokens (eta, total, value), which would win. */
  private payload(label: string, done: number, size: number, rate: number, timeLeft: string) {
    return { label, done: formatBytes(done), size: formatBytes(size), rate: `${formatBytes(rate)}/s`, timeLeft };
  }
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


function formatSeconds(seconds: number): string {
  if (!Number.isFinite(seconds)) return '-';
  if (seconds < 10) return `${seconds.toFixed(1)}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60) > 0 ? `${Math.floor(seconds / 60)}m` : ''}${Math.round(seconds % 60)}s`;
  return `${Math.floor(seconds / 3600)}h${Math.round((seconds % 3600) / 60)}m`;
}
