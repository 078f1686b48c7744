import cliProgress from 'cli-progress';
import { formatBytes } from '../util/units.js';

/**
 * The progress display of every command: on a terminal, bars drawn on standard error, each a label,
 * the bar, its percentage and a detail its owner writes (bytes, rate, time left); elsewhere, plain
 * lines, so that CI logs stay readable; nothing with --quiet. build-image and push both draw with it.
 */
export type ProgressMode = 'tty' | 'plain' | 'quiet';

export function chooseProgressMode(stream: NodeJS.WritableStream, quiet: boolean): ProgressMode {
  if (quiet) return 'quiet';
  return (stream as NodeJS.WriteStream).isTTY ? 'tty' : 'plain';
}

/** One bar of a display. */
export interface Bar {
  update(value: number, detail: string): void;
  setTotal(total: number): void;
  remove(): void;
}

/** The bars of one display on a terminal, and lines logged above them. */
export class Bars {
  readonly #bars: cliProgress.MultiBar;
  #stopped = false;

  constructor(stream: NodeJS.WriteStream) {
    this.#bars = new cliProgress.MultiBar(
      {
        stream,
        format: '{label} |{bar}| {percentage}% {detail}',
        barsize: 24,
        hideCursor: true,
        clearOnComplete: false,
        autopadding: true,
        fps: 10,
      },
      cliProgress.Presets.shades_classic,
    );
  }

  add(label: string, total: number): Bar {
    const bar = this.#bars.create(Math.max(1, total), 0, { label, detail: '' });
    return {
      update: (value, detail) => bar.update(Math.min(value, bar.getTotal()), { detail }),
      setTotal: (n) => bar.setTotal(Math.max(1, n)),
      remove: () => this.#bars.remove(bar),
    };
  }

  log(line: string): void {
    this.#bars.log(`${line}\n`);
  }

  stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#bars.update(); // writes out lines still waiting for the next redraw: stop() would drop them
    this.#bars.stop();
  }
}

/** Bytes per second since `since` (ms), or 0 before there is anything to say. */
export function rateSince(bytes: number, since: number): number {
  const seconds = (Date.now() - since) / 1000;
  return seconds > 0.2 ? bytes / seconds : 0;
}

/** `12.3 MiB/s`, or '' when there is no rate yet. */
export function formatRate(rate: number): string {
  return rate > 0 ? `${formatBytes(rate)}/s` : '';
}

/** Time left for `remaining` bytes at `rate`, `-` when unknown. */
export function timeLeft(remaining: number, rate: number): string {
  return rate > 0 && remaining > 0 ? formatSeconds(remaining / rate) : '-';
}

export function formatSeconds(seconds: number): string {
  if (!Number.isFinite(seconds)) return '-';
  if (seconds < 10) return `${seconds.toFixed(1)}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60) > 0 ? `${Math.floor(seconds / 60)}m` : ''}${Math.round(seconds % 60)}s`;
  return `${Math.floor(seconds / 3600)}h${Math.round((seconds % 3600) / 60)}m`;
}
