import { formatBytes } from '../util/units.js';
import type { BuildProgress, LayerReport } from '../pipeline/build-image.js';
import { Bars, formatRate, rateSince, timeLeft, type Bar } from './progress.js';

/**
 * Progress of a build on a terminal: a bar for reading the closure (bytes, rate), one for all the
 * layers (bytes of files done, layers built and reused, rate, time left), and one per layer being made
 * (its bytes and rate), gone once the layer is done. Layers found in the cache count at once. Off a
 * terminal the build prints plain lines instead (BuildImageOptions.log), so CI logs stay readable.
 */
export class TerminalBuildProgress implements BuildProgress {
  readonly #bars: Bars;
  #reading: Bar | null = null;
  #layers: { bar: Bar; total: number } | null = null;
  #building = new Map<number, { bar: Bar; done: number; total: number; started: number }>();
  #bytes = 0;
  #done = 0;
  #count = 0;
  #reused = 0;
  #built = 0;
  #started = Date.now();

  constructor(stream: NodeJS.WriteStream) {
    this.#bars = new Bars(stream);
  }

  reading(bytesRead: number, totalBytes: number): void {
    this.#reading ??= this.#bars.add('closure', totalBytes);
    this.#reading.setTotal(totalBytes);
    this.#reading.update(bytesRead, `${formatBytes(bytesRead)} of ${formatBytes(totalBytes)} ${rate(bytesRead, this.#started)}`);
  }

  planned(layers: number, totalBytes: number): void {
    this.#started = Date.now();
    this.#count = layers;
    // Counted in bytes, so that one huge layer moves the bar (and the time left) as it goes.
    this.#layers = { bar: this.#bars.add('layers ', totalBytes), total: totalBytes };
  }

  layerStarted(index: number, label: string, totalBytes: number): void {
    const short = label.length > 40 ? `${label.slice(0, 39)}…` : label;
    const bar = this.#bars.add(`  ${short}`, totalBytes);
    this.#building.set(index, { bar, done: 0, total: totalBytes, started: Date.now() });
  }

  layerProgress(index: number, bytes: number): void {
    this.#bytes += bytes;
    const layer = this.#building.get(index);
    if (layer) {
      layer.done += bytes;
      layer.bar.update(layer.done, `${formatBytes(layer.done)} of ${formatBytes(layer.total)} ${rate(layer.done, layer.started)}`);
    }
    this.#overall();
  }

  layerDone(index: number, report: LayerReport, expectedBytes: number): void {
    const building = this.#building.get(index);
    if (building) {
      building.bar.remove();
      this.#building.delete(index);
      // Whatever the estimate missed (a NAR's size is not quite its files' size) is made up here.
      this.#bytes += Math.max(0, expectedBytes - building.done);
    } else {
      this.#bytes += expectedBytes;
    }
    this.#done++;
    if (report.reused) this.#reused++;
    else this.#built++;
    this.#overall();
  }

  log(line: string): void {
    this.#bars.log(line);
  }

  stop(): void {
    this.#bars.stop();
  }

  #overall(): void {
    if (!this.#layers) return;
    const speed = rateSince(this.#bytes, this.#started);
    this.#layers.bar.update(
      this.#bytes,
      `${this.#done}/${this.#count} layers, ${formatBytes(this.#bytes)}, ${this.#built} built, ${this.#reused} reused ${rate(this.#bytes, this.#started)} | ETA ${timeLeft(this.#layers.total - this.#bytes, speed)}`,
    );
  }
}

/** `(12.3 MiB/s)`, or '' before there is a rate. */
function rate(bytes: number, since: number): string {
  const text = formatRate(rateSince(bytes, since));
  return text ? `(${text})` : '';
}
