import cliProgress from 'cli-progress';
import { formatBytes } from '../util/units.js';
import type { BuildProgress, LayerReport } from '../pipeline/build-image.js';

/**
 * Progress of a build on a terminal: a bar for reading the closure (bytes, rate, ETA), one for all the
 * layers (bytes of files done, layers built and reused, rate, ETA), and one per layer being made (its
 * bytes, rate, ETA), gone once the layer is done. Layers found in the cache count at once. Off a
 * terminal the build prints plain lines instead (BuildImageOptions.log), so CI logs stay readable.
 */
export class TerminalBuildProgress implements BuildProgress {
  readonly #bars: cliProgress.MultiBar;
  #reading: cliProgress.SingleBar | null = null;
  #layers: cliProgress.SingleBar | null = null;
  #building = new Map<number, { bar: cliProgress.SingleBar; label: string; done: number; total: number; started: number }>();
  #bytes = 0;
  #done = 0;
  #count = 0;
  #reused = 0;
  #built = 0;
  #started = Date.now();

  constructor(stream: NodeJS.WriteStream) {
    this.#bars = new cliProgress.MultiBar(
      {
        stream,
        clearOnComplete: false,
        hideCursor: true,
        autopadding: true,
        etaBuffer: 50,
        format: '{label} |{bar}| {percentage}% {detail} | ETA {eta_formatted}',
      },
      cliProgress.Presets.shades_classic,
    );
  }

  reading(bytesRead: number, totalBytes: number): void {
    this.#reading ??= this.#bars.create(totalBytes, 0, { label: 'closure', detail: '' });
    this.#reading.setTotal(totalBytes);
    this.#reading.update(bytesRead, { detail: `${formatBytes(bytesRead)} of ${formatBytes(totalBytes)} ${rate(bytesRead, this.#started)}` });
  }

  planned(layers: number, totalBytes: number): void {
    this.#reading?.stop();
    this.#started = Date.now();
    this.#count = layers;
    // Counted in bytes, so that one huge layer moves the bar (and the ETA) as it goes.
    this.#layers = this.#bars.create(Math.max(1, totalBytes), 0, { label: 'layers ', detail: '' });
  }

  layerStarted(index: number, label: string, totalBytes: number): void {
    const short = label.length > 40 ? `${label.slice(0, 39)}…` : label;
    const bar = this.#bars.create(Math.max(1, totalBytes), 0, { label: `  ${short}`, detail: '' });
    this.#building.set(index, { bar, label: short, done: 0, total: totalBytes, started: Date.now() });
  }

  layerProgress(index: number, bytes: number): void {
    this.#bytes += bytes;
    const layer = this.#building.get(index);
    if (layer) {
      layer.done += bytes;
      layer.bar.update(Math.min(layer.done, layer.total), { detail: `${formatBytes(layer.done)} of ${formatBytes(layer.total)} ${rate(layer.done, layer.started)}` });
    }
    this.#overall();
  }

  layerDone(index: number, layer: LayerReport, expectedBytes: number): void {
    const building = this.#building.get(index);
    if (building) {
      this.#bars.remove(building.bar);
      this.#building.delete(index);
      // Whatever the estimate missed (a NAR's size is not quite its files' size) is made up here.
      this.#bytes += Math.max(0, expectedBytes - building.done);
    } else {
      this.#bytes += expectedBytes;
    }
    this.#done++;
    if (layer.reused) this.#reused++;
    else this.#built++;
    this.#overall();
  }

  log(line: string): void {
    this.#bars.log(`${line}\n`);
  }

  stop(): void {
    this.#bars.stop();
  }

  #overall(): void {
    const total = this.#layers?.getTotal() ?? 0;
    this.#layers?.update(Math.min(this.#bytes, total), {
      detail: `${this.#done}/${this.#count} layers, ${formatBytes(this.#bytes)}, ${this.#built} built, ${this.#reused} reused ${rate(this.#bytes, this.#started)}`,
    });
  }
}

function rate(bytes: number, since: number): string {
  const seconds = (Date.now() - since) / 1000;
  return seconds > 0.2 ? `(${formatBytes(bytes / seconds)}/s)` : '';
}
