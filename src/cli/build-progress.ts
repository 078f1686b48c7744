import cliProgress from 'cli-progress';
import { formatBytes } from '../util/units.js';
import type { BuildProgress, BuiltLayer } from '../build/build-image.js';

/**
 * Progress of a build on a terminal: a bar for reading the closure (bytes, rate, ETA) and one for the
 * layers (layers and bytes done, reused or built, rate, ETA). Off a terminal the build prints plain
 * lines instead (BuildImageOptions.log), so CI logs stay readable.
 */
export class TerminalBuildProgress implements BuildProgress {
  readonly #bars: cliProgress.MultiBar;
  #reading: cliProgress.SingleBar | null = null;
  #layers: cliProgress.SingleBar | null = null;
  #bytes = 0;
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
    this.#reading.update(bytesRead, { detail: `${formatBytes(bytesRead)} of ${formatBytes(totalBytes)} ${this.#rate(bytesRead)}` });
  }

  planned(layers: number): void {
    this.#reading?.stop();
    this.#started = Date.now();
    this.#layers = this.#bars.create(layers, 0, { label: 'layers ', detail: '' });
  }

  layerDone(layer: BuiltLayer): void {
    this.#bytes += layer.blob.uncompressedSize;
    if (layer.reused) this.#reused++;
    else this.#built++;
    this.#layers?.increment(1, {
      detail: `${formatBytes(this.#bytes)}, ${this.#built} built, ${this.#reused} reused ${this.#rate(this.#bytes)}`,
    });
  }

  log(line: string): void {
    this.#bars.log(`${line}\n`);
  }

  stop(): void {
    this.#bars.stop();
  }

  #rate(bytes: number): string {
    const seconds = (Date.now() - this.#started) / 1000;
    return seconds > 0.2 ? `(${formatBytes(bytes / seconds)}/s)` : '';
  }
}
