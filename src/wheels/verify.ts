/**
 * Checking a wheel's file bodies against RECORD while they stream: the size the zip directory and
 * RECORD agree on, and RECORD's hash. Installing uses {@link verifiedChunks} so each body is read,
 * checked and written in the same pass; {@link verifyWheel} is the same check without installing.
 */
import { createHash } from 'node:crypto';
import { UserError } from '../util/errors.js';
import { recordHash } from './record.js';
import type { WheelEntry, WheelInfo } from './wheel-info.js';
import { sizeMismatch, ZipReader, type ZipEntry } from './zip.js';

/** Something that sees a file's bytes as they pass (a hash, an ELF scanner). */
export interface ChunkObserver {
  push(chunk: Buffer): void;
}

/**
 * The entry's bytes; throws a UserError naming the wheel and entry, after the last chunk and before
 * returning, when the size or the hash differs from RECORD. A consumer that writes the chunks as they
 * come (the layer writer) therefore fails before the entry is complete, and its output is discarded.
 */
export async function* verifiedChunks(
  zip: ZipReader,
  zipEntry: ZipEntry,
  entry: WheelEntry,
  observers: ChunkObserver[] = [],
): AsyncGenerator<Buffer> {
  const expected = entry.recordHash;
  const hash = expected ? createHash(expected.algorithm) : null;
  let seen = 0;
  for await (const chunk of zip.read(zipEntry)) {
    seen += chunk.length;
    if (seen > entry.size) throw sizeMismatch(zip.file, zipEntry, seen);
    hash?.update(chunk);
    for (const observer of observers) observer.push(chunk);
    yield chunk;
  }
  if (seen !== entry.size) throw sizeMismatch(zip.file, zipEntry, seen);
  if (hash && expected) {
    const actual = hash.digest();
    if (actual.toString('hex') !== expected.hex) {
      const listed = recordHash(expected.algorithm, Buffer.from(expected.hex, 'hex'));
      throw new UserError(
        `${zip.file}: entry ${entry.name} does not match RECORD: RECORD says ${listed}, the entry has ${recordHash(expected.algorithm, actual)}`,
      );
    }
  }
}

/**
 * Reads every file of the wheel once, in the zip's own order (sequential reads), and checks it
 * against RECORD. For a clean error before any output starts; installing checks the same as it goes.
 */
export async function verifyWheel(info: WheelInfo): Promise<void> {
  const zip = await ZipReader.open(info.file);
  try {
    const byName = new Map(info.entries.map((e) => [e.name, e]));
    for (const zipEntry of [...zip.entries].sort((a, b) => a.offset - b.offset)) {
      if (zipEntry.isDir) continue;
      const entry = byName.get(zipEntry.name);
      if (!entry) throw changedSinceRead(info, zipEntry.name);
      for await (const _ of verifiedChunks(zip, zipEntry, entry)) {
        // Only the check matters here.
      }
    }
  } finally {
    await zip.close();
  }
}

export function changedSinceRead(info: WheelInfo, entryName: string): UserError {
  return new UserError(`${info.file}: changed since it was read (entry ${entryName} differs); run again`);
}
