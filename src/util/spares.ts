/**
 * Buffers of one size kept for the next user: a build writes many layers, each needing the same few
 * buffers (tar chunks, frame parts, read-back buffers), and making them anew for each layer left
 * hundreds of MB of garbage that V8 frees only when its external memory has grown by tens of MB.
 */
export class Spares {
  readonly #free: Buffer[] = [];
  constructor(
    readonly size: number,
    readonly keep: number,
    readonly make: (size: number) => Buffer = Buffer.allocUnsafeSlow,
  ) {}
  take(): Buffer {
    return this.#free.pop() ?? this.make(this.size);
  }
  give(buffer: Buffer): void {
    if (buffer.length === this.size && this.#free.length < this.keep) this.#free.push(buffer);
  }
}
