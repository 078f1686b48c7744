import { layerOf, type Layer } from '../../src/model/image.js';
import { Turns } from '../../src/layer/codec.js';
import { DEFAULT_GZIP_LEVEL, type Compression } from '../../src/layer/format.js';
import type { LayerSource } from '../../src/layer/types.js';
import { writeLayerFile, type LayerFile } from '../../src/layer/writer.js';

/** A whole layer written to `<dir>/<digest hex>` by the layer writer, with the fields tests look at. */
export async function writeLayer(
  source: LayerSource,
  options: { compression: Compression; dir: string; mtime: number; gzipLevel?: number; zstdLevel?: number; jobs?: number; turns?: Turns },
): Promise<LayerFile & { uncompressedSize: number; compression: Compression }> {
  const format = {
    compression: options.compression,
    gzipLevel: options.gzipLevel ?? DEFAULT_GZIP_LEVEL,
    ...(options.zstdLevel !== undefined && { zstdLevel: options.zstdLevel }),
    mtime: options.mtime,
  };
  const file = await writeLayerFile(source, format, options.dir, { turns: options.turns ?? (options.jobs !== undefined ? new Turns(options.jobs) : undefined) });
  return { ...file, uncompressedSize: file.tarSize, compression: options.compression };
}

/** The one layer record of a layer written by `writeLayer`, holding `contents`. */
export function asLayer(file: Awaited<ReturnType<typeof writeLayer>>, contents: string[]): Layer {
  return layerOf({ digest: file.digest, size: file.size, diffId: file.diffId, uncompressedSize: file.tarSize, compression: file.compression, pieces: file.pieces, contents });
}

/** Deterministic pseudo-random bytes: incompressible enough to make gzip work, cheap to make. */
export function noise(size: number, seed: number): Buffer {
  const out = Buffer.alloc(size + 3);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < size; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out.writeUInt32LE(x >>> 0, i);
  }
  return out.subarray(0, size);
}
