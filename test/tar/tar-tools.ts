import { execFileSync } from 'node:child_process';
import { Readable } from 'node:stream';
import tarStream from 'tar-stream';
import { TarWriter, type ChunkSink } from '../../src/tar/writer.js';
import type { LayerSource } from '../../src/layer/types.js';

/** One entry as a tar reader reports it, normalised for comparison (no trailing `/` on directories). */
export interface ListedEntry {
  name: string;
  type: 'file' | 'directory' | 'symlink' | 'hardlink';
  mode: number;
  size: number;
  target?: string;
}

/** A ChunkSink that collects everything in memory, with deliberately odd chunk sizes to cross boundaries. */
export class MemorySink implements ChunkSink {
  readonly chunks: Buffer[] = [];
  constructor(private readonly chunkSize = 1000) {}
  acquire(): Buffer {
    return Buffer.alloc(this.chunkSize, 0xaa); // garbage-filled, as recycled buffers are
  }
  submit(chunk: Buffer, length: number): void {
    this.chunks.push(Buffer.from(chunk.subarray(0, length)));
  }
  bytes(): Buffer {
    return Buffer.concat(this.chunks);
  }
}

/** Runs a source through a TarWriter into memory. */
export async function tarToBuffer(source: LayerSource, mtime = 1, chunkSize = 1000): Promise<Buffer> {
  const sink = new MemorySink(chunkSize);
  const writer = new TarWriter(sink, { mtime });
  await source(writer);
  await writer.finish();
  const bytes = sink.bytes();
  if (bytes.length !== writer.bytesWritten) throw new Error('bytesWritten disagrees with the bytes written');
  return bytes;
}

/** `tar -tvf` by GNU tar, parsed. */
export function gnuTarList(file: string): (ListedEntry & { mtime: string; owner: string })[] {
  const out = execFileSync('tar', ['--list', '--verbose', '--numeric-owner', '--full-time', '--quoting-style=literal', '-f', file], {
    encoding: 'utf8',
    env: { ...process.env, LC_ALL: 'C.UTF-8', TZ: 'UTC' },
    maxBuffer: 64 << 20,
  });
  return out
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const m = /^(\S{10}) (\d+\/\d+)\s+(\d+) (\S+ \S+) (.*)$/.exec(line);
      if (!m) throw new Error(`unparsed tar line: ${line}`);
      const [, perms, owner, size, mtime, rest] = m as unknown as [string, string, string, string, string, string];
      const kind = perms[0];
      let name = rest;
      let target: string | undefined;
      if (kind === 'l') [name, target] = split2(rest, ' -> ');
      if (kind === 'h') [name, target] = split2(rest, ' link to ');
      const type = kind === 'd' ? 'directory' : kind === 'l' ? 'symlink' : kind === 'h' ? 'hardlink' : 'file';
      return { name: name.replace(/\/$/, ''), type, mode: modeFromPerms(perms), size: Number(size), target, mtime, owner };
    });
}

/** Reads a tar with tar-stream's extract, bodies included. */
export async function tarStreamList(tar: Buffer): Promise<(ListedEntry & { mtime: number; uid: number; gid: number; body: Buffer })[]> {
  const extract = tarStream.extract();
  const entries: (ListedEntry & { mtime: number; uid: number; gid: number; body: Buffer })[] = [];
  const done = new Promise<void>((resolve, reject) => {
    extract.on('entry', (header, stream, next) => {
      const parts: Buffer[] = [];
      stream.on('data', (d: unknown) => {
        parts.push(d as Buffer);
      });
      stream.on('end', () => {
        const type = header.type === 'link' ? 'hardlink' : (header.type as ListedEntry['type']);
        entries.push({
          name: header.name.replace(/\/$/, ''),
          type,
          mode: header.mode ?? -1,
          size: header.size ?? 0,
          target: header.linkname ?? undefined,
          mtime: (header.mtime as Date).getTime() / 1000,
          uid: header.uid ?? -1,
          gid: header.gid ?? -1,
          body: Buffer.concat(parts),
        });
        next();
      });
    });
    extract.on('finish', resolve);
    extract.on('error', reject);
  });
  Readable.from([tar]).pipe(extract);
  await done;
  return entries;
}

function split2(text: string, sep: string): [string, string] {
  const i = text.indexOf(sep);
  if (i < 0) throw new Error(`no "${sep}" in ${text}`);
  return [text.slice(0, i), text.slice(i + sep.length)];
}

/** `-r-xr-xr-x` → 0o555 (set-id and sticky bits are not used in layers). */
export function modeFromPerms(perms: string): number {
  let mode = 0;
  for (let i = 1; i < 10; i++) if (perms[i] !== '-') mode |= 1 << (9 - i);
  return mode;
}
