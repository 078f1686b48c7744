import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { createReadStream, readFileSync, readdirSync, rmSync, writeFileSync, mkdtempSync, openSync, closeSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { execFileSync, spawn } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { NarNode, NarVisitor, StorePathInfo } from '../../src/nix/types.js';
import { indexExport } from '../../src/nix/export.js';
import { readNar, listNar, readNarFile, parseNar } from '../../src/nix/nar.js';
import { ChunkReader } from '../../src/nix/chunk-reader.js';
import { loadClosure, type RememberedPath } from '../../src/nix/closure.js';
import { closureOf, pathInfoJson } from '../helpers/nix.js';
import { tools } from '../helpers/tools.js';
import { buildFixtures, diskTree, LONG_ENTRY, MARKER, type Fixtures, type NodeWithHash } from './fixtures.js';

/** Reads a path's NAR into nodes, hashing each file's contents as it streams by. */
async function narTree(info: StorePathInfo, chunkSize?: number): Promise<NodeWithHash[]> {
  const nodes: NodeWithHash[] = [];
  await readNar(
    info,
    {
      directory: (node) => void nodes.push(node),
      symlink: (node) => void nodes.push(node),
      regular: async (node, contents) => {
        const hash = createHash('sha256');
        for await (const chunk of contents) hash.update(chunk);
        nodes.push({ ...node, sha256: hash.digest('hex') });
      },
    },
    { chunkSize },
  );
  return nodes;
}

function withoutHashes(nodes: NodeWithHash[]): NodeWithHash[] {
  return nodes.map(({ sha256: _, ...node }) => node as NodeWithHash);
}

describe.runIf(tools('nix-build', 'nix-store', 'nix'))('reading real nix-store --export files', () => {
  let f: Fixtures;
  let infos: StorePathInfo[];
  const byPath = (path: string): StorePathInfo => infos.find((i) => i.path === path)!;

  beforeAll(async () => {
    f = buildFixtures();
    infos = await indexExport(f.appExport);
  });
  afterAll(() => rmSync(f.dir, { recursive: true, force: true }));

  it('indexes every path with the NAR hash, size, references and deriver that nix path-info reports', () => {
    expect(infos.map((i) => i.path).sort()).toEqual(closureOf([f.app]));
    const reported = JSON.parse(pathInfoJson([f.app])) as Array<{
      path: string;
      narHash: string;
      narSize: number;
      references: string[];
      deriver: string;
    }>;
    expect(reported).toHaveLength(infos.length);
    for (const nix of reported) {
      const info = byPath(nix.path);
      expect(info.narHash).toBe(Buffer.from(nix.narHash.replace(/^sha256-/, ''), 'base64').toString('hex'));
      expect(info.narSize).toBe(nix.narSize);
      expect(info.references).toEqual([...nix.references].sort());
      expect(info.deriver).toBe(nix.deriver);
      expect(info.source.file).toBe(f.appExport);
    }
    expect(byPath(f.app).references).toEqual([f.fixture]);
  });

  it('records where each NAR lies: the bytes there hash to narHash', () => {
    const bytes = readFileSync(f.appExport);
    for (const info of infos) {
      const nar = bytes.subarray(info.source.offset, info.source.offset + info.narSize);
      expect(createHash('sha256').update(nar).digest('hex')).toBe(info.narHash);
      expect(nar.subarray(8, 21).toString()).toBe('nix-archive-1');
    }
  });

  it('reads each path exactly as it is on disk: names, types, modes, targets and contents', async () => {
    const tree = await narTree(byPath(f.fixture));
    expect(tree).toEqual(diskTree(f.fixture));
    // The fixture's awkward cases are really there.
    const paths = tree.map((n) => n.path);
    expect(paths).toContain(LONG_ENTRY);
    expect(paths.some((p) => p.split('/').length > 40)).toBe(true);
    expect(paths).toContain('日本語/ファイル');
    expect(paths).toContain('new\nline');
    // Nix orders by bytes: U+FF5E (EF BD 9E) before U+1F389 (F0 9F 8E 89), the reverse of their UTF-16 order.
    expect(paths.filter((p) => p.startsWith('uni/'))).toEqual(['uni/z', 'uni/～', 'uni/🎉']);
    expect('🎉' < '～').toBe(true);
    expect(tree).toContainEqual({ type: 'symlink', path: 'dangling', target: 'does-not-exist' });
    expect(tree).toContainEqual({ type: 'symlink', path: 'link-to-dir', target: 'bin' });
    expect(tree).toContainEqual({ type: 'directory', path: 'empty-dir' });
    expect(tree).toContainEqual(expect.objectContaining({ type: 'regular', path: 'empty-file', size: 0, executable: false }));
    expect(tree).toContainEqual(expect.objectContaining({ type: 'regular', path: 'bin/empty-executable', size: 0, executable: true }));
    const big = tree.find((n) => n.path === 'big.txt');
    expect(big).toMatchObject({ type: 'regular' });
    expect(big!.type === 'regular' && big!.size).toBeGreaterThan(3 << 20);

    expect(await narTree(byPath(f.app))).toEqual(diskTree(f.app));
  });

  it('gives the same results with tiny reads, so tokens and files straddle read boundaries', async () => {
    const expected = diskTree(f.fixture);
    for (const chunkSize of [4096, 4104, 5000]) {
      expect(await indexExport(f.appExport, { chunkSize })).toEqual(infos);
      expect(await narTree(byPath(f.fixture), chunkSize)).toEqual(expected);
    }
  });

  it('lists a tree without reading the contents of files', async () => {
    const info = byPath(f.fixture);
    expect(await listNar(info)).toEqual(withoutHashes(diskTree(f.fixture)));

    // Skipped contents are not read at all: big.txt's megabytes never come off the disk.
    let bytesRead = 0;
    const fd = openSync(info.source.file, 'r');
    const reader = new ChunkReader(fd, info.source.offset, info.source.offset + info.narSize, {
      chunkSize: 4096,
      onRead: (n) => (bytesRead += n),
    });
    try {
      await parseNar(reader, { directory() {}, symlink() {}, regular() {} }, { file: info.source.file, label: info.path });
      expect(reader.position).toBe(info.source.offset + info.narSize);
    } finally {
      await reader.close();
      closeSync(fd);
    }
    expect(info.narSize).toBeGreaterThan(3 << 20);
    expect(bytesRead).toBeLessThan(64 << 10);
  });

  it('skips what a visitor leaves unread and carries on with the next node', async () => {
    const seen: string[] = [];
    const visitor: NarVisitor = {
      directory: () => {},
      symlink: (node) => void seen.push(node.path),
      regular: async (node, contents) => {
        if (node.path !== 'big.txt') return void seen.push(node.path);
        for await (const chunk of contents) {
          expect(chunk.subarray(0, 8).toString()).toBe('1\n2\n3\n4\n');
          break; // read only the first chunk
        }
        seen.push(node.path);
      },
    };
    await readNar(byPath(f.fixture), visitor);
    expect(seen).toEqual(
      diskTree(f.fixture)
        .filter((n) => n.type !== 'directory')
        .map((n) => n.path),
    );
  });

  it('reads one small file by path', async () => {
    const info = byPath(f.fixture);
    expect((await readNarFile(info, 'marker.txt', 1024))?.toString()).toBe(MARKER);
    expect((await readNarFile(info, 'deep/level-1/level-2/level-3', 1024))).toBeNull(); // a directory
    expect(await readNarFile(info, 'link-to-dir', 1024)).toBeNull(); // symlinks are not followed
    expect(await readNarFile(info, 'no/such/file', 1024)).toBeNull();
    expect((await readNarFile(info, 'empty-file', 0))?.length).toBe(0);
    await expect(readNarFile(info, 'big.txt', 1000)).rejects.toThrow(
      new RegExp(`^${f.fixture.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}/big\\.txt is \\d+ bytes, more than the 1000 expected$`),
    );
  });

  it('notes the nodes a listing keeps as it indexes, as listing each path afterwards would; a remembered index gives them again', async () => {
    const keep = (node: NarNode) => node.type !== 'directory' && node.path.endsWith('.txt');
    const expected = new Map(await Promise.all(infos.map(async (info) => [info.path, (await listNar(info)).filter(keep)] as const)));
    expect([...expected.values()].some((nodes) => nodes.length > 0)).toBe(true);
    const stored = new Map<string, RememberedPath[]>();
    const memo = { recall: async (key: string) => stored.get(key) ?? null, remember: async (key: string, value: RememberedPath[]) => void stored.set(key, value) };
    for (const round of ['indexed', 'recalled']) {
      const noted = new Map<string, NarNode[]>();
      const parsed: string[] = [];
      const closure = await loadClosure([f.appExport], { memo, listing: { keep, found: (path, nodes) => void noted.set(path, nodes) }, onParsed: (file) => parsed.push(file) });
      expect([round, noted]).toEqual([round, expected]);
      // Told once the NARs are parsed (their hashes may still be running); a recalled index parses nothing.
      expect([round, parsed]).toEqual([round, round === 'indexed' ? [f.appExport] : []]);
      expect([...closure.paths.values()].map(({ source: _, ...info }) => info)).toEqual(infos.map(({ source: _, ...info }) => info));
    }
  });

  it('merges exports: a path in both is read once, from the first file', async () => {
    const closure = await loadClosure([f.appExport, f.otherExport]);
    expect([...closure.paths.keys()]).toEqual([f.app, f.fixture, f.other].sort());
    expect(closure.roots).toEqual([f.app, f.other].sort());
    expect(closure.paths.get(f.fixture)!.source.file).toBe(f.appExport);
    expect(closure.paths.get(f.other)!.source.file).toBe(f.otherExport);
    expect(closure.paths.get(f.fixture)).toEqual(byPath(f.fixture));
  });

  it('checks the closure against nix path-info --json --recursive', async () => {
    const pathInfo = join(f.dir, 'path-info.json');
    writeFileSync(pathInfo, pathInfoJson([f.app]));
    const closure = await loadClosure([f.appExport], { pathInfoFile: pathInfo });
    expect(closure.roots).toEqual([f.app]);
    expect([...closure.paths.values()]).toEqual([...infos].sort((a, b) => (a.path < b.path ? -1 : 1)));
  });

  it('spools a named pipe (like <(nix-store --export …)) before indexing it', async () => {
    const tmp = mkdtempSync(join(tmpdir(), 'nix2oci-fifo-'));
    const fifo = join(f.dir, 'export.fifo');
    execFileSync('mkfifo', [fifo]);
    const writer = spawn('sh', ['-c', 'cat "$1" > "$2"', 'sh', f.appExport, fifo], { stdio: 'ignore' });
    try {
      const closure = await loadClosure([fifo], { tmpDir: tmp });
      const [spooled] = readdirSync(tmp);
      expect(closure.paths.get(f.fixture)!.source).toEqual({ file: join(tmp, spooled!), offset: byPath(f.fixture).source.offset });
      expect(closure.roots).toEqual([f.app]);
    } finally {
      writer.kill();
      rmSync(tmp, { recursive: true, force: true });
    }
  });

  it('spools stdin to a file in tmpDir, then reads it like any export', async () => {
    const tmp = mkdtempSync(join(tmpdir(), 'nix2oci-spool-'));
    try {
      const closure = await loadClosure(['-', f.otherExport], { stdin: createReadStream(f.appExport), tmpDir: tmp });
      const spooled = readdirSync(tmp);
      expect(spooled).toHaveLength(1); // the temporary name was renamed, nothing else left
      expect(spooled[0]).toMatch(/^stdin-[0-9a-f]{12}\.closure$/);
      const file = join(tmp, spooled[0]!);
      expect(readFileSync(file).equals(readFileSync(f.appExport))).toBe(true);
      expect(closure.paths.get(f.fixture)).toEqual({ ...byPath(f.fixture), source: { file, offset: byPath(f.fixture).source.offset } });
      expect(closure.roots).toEqual([f.app, f.other].sort());
      expect(await narTree(closure.paths.get(f.fixture)!)).toEqual(diskTree(f.fixture));
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});
