import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { readFileSync, rmSync, truncateSync, writeFileSync, copyFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import type { StorePathInfo } from '../../src/nix/types.js';
import { UserError } from '../../src/util/errors.js';
import { indexExport } from '../../src/nix/export.js';
import { readNar } from '../../src/nix/nar.js';
import { loadClosure } from '../../src/nix/closure.js';
import { pathInfoJson } from '../helpers/nix.js';
import { tools } from '../helpers/tools.js';
import { buildFixtures, diskTree, findToken, MARKER, type Fixtures } from './fixtures.js';

/** Awaits `promise`, which must fail with a one-line UserError saying exactly `message`. */
async function expectUserError(promise: Promise<unknown>, message: string): Promise<void> {
  const err = await promise.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(UserError);
  expect((err as Error).message).toBe(message);
  expect((err as Error).message).not.toContain('\n');
}

const sri = (hex: string): string => `sha256-${Buffer.from(hex, 'hex').toString('base64')}`;

describe.runIf(tools('nix-build', 'nix-store', 'nix'))('bad exports: one-line errors naming file, path, entry and offset', () => {
  let f: Fixtures;
  let bytes: Buffer;
  let infos: StorePathInfo[];
  let fixture: StorePathInfo;
  /** 1-based position of the fixture path in the export. */
  let k: number;
  let pending: string;
  let narEnd: number;

  /** Offset of the name token of the entry named `name` (the token after a `name` tag) inside the fixture's NAR. */
  const nameToken = (name: string): number => {
    const at = findToken(bytes, name, fixture.source.offset);
    expect(bytes.subarray(at - 16, at).equals(Buffer.from('0400000000000000' + Buffer.from('name\0\0\0\0').toString('hex'), 'hex'))).toBe(true);
    expect(at).toBeLessThan(narEnd);
    return at;
  };

  /** A copy of the good export with `edits` applied (offset → bytes), or cut to `length` bytes. */
  const variant = (name: string, edits: Array<[number, string | Buffer]>, length?: number): string => {
    const copy = Buffer.from(length === undefined ? bytes : bytes.subarray(0, length));
    for (const [at, data] of edits) (typeof data === 'string' ? Buffer.from(data, 'latin1') : data).copy(copy, at);
    const file = join(f.dir, name);
    writeFileSync(file, copy);
    return file;
  };

  beforeAll(async () => {
    f = buildFixtures();
    bytes = readFileSync(f.appExport);
    infos = await indexExport(f.appExport);
    k = infos.findIndex((i) => i.path === f.fixture) + 1;
    fixture = infos[k - 1]!;
    pending = `path #${k} (store path not yet read)`;
    narEnd = fixture.source.offset + fixture.narSize;
  });
  afterAll(() => rmSync(f.dir, { recursive: true, force: true }));

  it('an empty file', async () => {
    const file = join(f.dir, 'empty.closure');
    writeFileSync(file, '');
    await expectUserError(indexExport(file), `${file} is empty: not a nix-store --export stream`);
    await expectUserError(loadClosure([file]), `${file} is empty: not a nix-store --export stream`);
  });

  it('an export of no paths at all', async () => {
    const file = join(f.dir, 'nothing.closure');
    writeFileSync(file, Buffer.alloc(8));
    expect(await indexExport(file)).toEqual([]);
    await expectUserError(loadClosure([file]), `${file}: no store paths in the export (was nix-store --export given none?)`);
  });

  it('a file that is not an export at all', async () => {
    const file = join(f.dir, 'text.closure');
    writeFileSync(file, 'hello world, this is not an export\n');
    await expectUserError(indexExport(file), `${file}: byte 0: not a nix-store --export stream (it starts with 0x6f77206f6c6c6568, not 1)`);
  });

  it('a missing file, a directory', async () => {
    const file = join(f.dir, 'no-such.closure');
    await expectUserError(loadClosure([file]), `${file}: cannot open: no such file`);
    await expectUserError(loadClosure([f.dir]), `${f.dir} is a directory, not a nix-store --export file`);
  });

  it('truncated inside a file’s contents', async () => {
    const cut = bytes.indexOf(MARKER, fixture.source.offset) + 5;
    const file = variant('cut-contents.closure', [], cut);
    await expectUserError(indexExport(file), `${file}: ${pending}: entry 'marker.txt': unexpected end of file at byte ${cut}`);
  });

  it('truncated inside a token', async () => {
    const cut = nameToken('xy') + 4;
    const file = variant('cut-token.closure', [], cut);
    await expectUserError(indexExport(file), `${file}: ${pending}: entry 'dots': unexpected end of file at byte ${cut}`);
  });

  it('truncated after a NAR, before its store path is complete', async () => {
    const cut = narEnd + 12;
    const file = variant('cut-trailer.closure', [], cut);
    await expectUserError(indexExport(file), `${file}: ${pending}: unexpected end of file at byte ${cut}`);
  });

  it('truncated before the final 0', async () => {
    const cut = bytes.length - 8;
    const file = variant('cut-end.closure', [], cut);
    await expectUserError(indexExport(file), `${file}: after ${infos.at(-1)!.path}: unexpected end of file at byte ${cut}`);
  });

  it('a bad NAR magic', async () => {
    const at = infos[0]!.source.offset;
    const file = variant('nar-magic.closure', [[at + 8, 'N']]);
    await expectUserError(
      indexExport(file),
      `${file}: byte ${at}: path #1 (store path not yet read): bad NAR magic: expected 'nix-archive-1', got 'Nix-archive-1'`,
    );
  });

  it('a wrong export magic after the NAR', async () => {
    const file = variant('export-magic.closure', [[narEnd, 'O']]);
    await expectUserError(
      indexExport(file),
      `${file}: byte ${narEnd}: ${pending}: wrong export magic 0x4558494f after the NAR (expected 0x4558494e, "NIXE")`,
    );
  });

  it('an entry named ..', async () => {
    const at = nameToken('xy');
    const file = variant('dotdot.closure', [[at + 8, '..']]);
    // The name is fine as NAR grammar, so the reader goes on to learn whose NAR it is and names the store path.
    await expectUserError(indexExport(file), `${file}: byte ${at}: ${f.fixture}: entry 'dots/..': name '..' is not allowed`);
  });

  it('an entry named .', async () => {
    const at = nameToken('xy');
    const file = variant('dot.closure', [[at, Buffer.from([1])], [at + 8, '.\0']]);
    await expectUserError(indexExport(file), `${file}: byte ${at}: ${f.fixture}: entry 'dots/.': name '.' is not allowed`);
  });

  it('an entry name holding a slash', async () => {
    const at = nameToken('a-b');
    const file = variant('slash.closure', [[at + 8, 'a/b']]);
    await expectUserError(indexExport(file), `${file}: byte ${at}: ${f.fixture}: entry 'slash/a/b': name 'a/b' contains '/'`);
  });

  it('an entry name holding a NUL byte', async () => {
    const at = nameToken('xy');
    const file = variant('nul.closure', [[at + 9, '\0']]);
    await expectUserError(indexExport(file), `${file}: byte ${at}: ${f.fixture}: entry 'dots/x\0': name 'x\\x00' contains a NUL byte`.replace('\0', '\\x00'));
  });

  it('unsorted entries', async () => {
    const aa = nameToken('aa');
    const bb = nameToken('bb');
    const file = variant('unsorted.closure', [[aa + 8, 'cc']]);
    await expectUserError(
      indexExport(file),
      `${file}: byte ${bb}: ${f.fixture}: entry 'order/bb': entries are not sorted: 'bb' comes after 'cc'`,
    );
  });

  it('a duplicate entry', async () => {
    const bb = nameToken('bb');
    const file = variant('duplicate.closure', [[bb + 8, 'aa']]);
    await expectUserError(indexExport(file), `${file}: byte ${bb}: ${f.fixture}: entry 'order/aa': duplicate entry name 'aa'`);
  });

  it('non-zero padding', async () => {
    const at = nameToken('xy');
    const file = variant('padding.closure', [[at + 10, '\x01']]);
    await expectUserError(indexExport(file), `${file}: byte ${at + 10}: ${pending}: entry 'dots/xy': non-zero padding after a string`);
  });

  it('an unknown file type', async () => {
    const at = findToken(bytes, 'regular', fixture.source.offset);
    const firstFile = diskTree(f.fixture).find((n) => n.type === 'regular')!.path;
    const file = variant('type.closure', [[at + 8, 'regulax']]);
    await expectUserError(indexExport(file), `${file}: byte ${at}: ${pending}: entry '${firstFile}': unknown file type 'regulax'`);
  });

  it('an invalid store path after the NAR', async () => {
    const at = narEnd + 8;
    const file = variant('store-path.closure', [[at + 8 + '/nix/store/'.length, 'e']]);
    const bad = `/nix/store/e${f.fixture.slice('/nix/store/'.length + 1)}`;
    await expectUserError(
      indexExport(file),
      `${file}: byte ${at}: ${pending}: store path '${bad}' is not a valid store path: its hash part has characters outside nix-base32`,
    );
  });

  it('data after the final 0 (concatenated exports)', async () => {
    const file = join(f.dir, 'twice.closure');
    writeFileSync(file, Buffer.concat([bytes, bytes]));
    await expectUserError(
      indexExport(file),
      `${file}: byte ${bytes.length}: data after the end of the export (the final 0 at byte ${bytes.length - 8}); concatenated exports must be given as separate files`,
    );
  });

  it('accepts an old export’s legacy signature after a 1 flag, as Nix does', async () => {
    // The last path's trailer ends with the u64 signature flag 0, before the export's final 0.
    const flagAt = bytes.length - 16;
    expect(bytes.readBigUInt64LE(flagAt)).toBe(0n);
    const signature = Buffer.alloc(8 + 8 + 8);
    signature.writeUInt32LE(1, 0);
    signature.writeUInt32LE(3, 8);
    signature.write('sig', 16);
    const file = join(f.dir, 'signed.closure');
    writeFileSync(file, Buffer.concat([bytes.subarray(0, flagAt), signature, bytes.subarray(flagAt + 8)]));
    const signed = await indexExport(file);
    expect(signed.map((i) => ({ ...i, source: null }))).toEqual(infos.map((i) => ({ ...i, source: null })));
  });

  it('a reference missing from the closure names the missing path and a path that refers to it', async () => {
    await expectUserError(
      loadClosure([f.appOnlyExport]),
      `closure is incomplete: ${f.app} (from ${f.appOnlyExport}) refers to ${f.fixture}, which is in none of ${f.appOnlyExport}`,
    );
    // With the dependency's export added, it is complete.
    const closure = await loadClosure([f.appOnlyExport, f.otherExport]);
    expect(closure.roots).toEqual([f.app, f.other].sort());
  });

  it('a path seen twice with different contents', async () => {
    const at = bytes.indexOf(MARKER, fixture.source.offset);
    const file = variant('changed.closure', [[at, 'W']]);
    const changed = createHash('sha256')
      .update(readFileSync(file).subarray(fixture.source.offset, narEnd))
      .digest('hex');
    await expectUserError(
      loadClosure([f.appExport, file]),
      `${f.fixture} has different contents in ${f.appExport} (byte ${fixture.source.offset}) and ${file} (byte ${fixture.source.offset}): NAR hash ${sri(fixture.narHash)} vs ${sri(changed)}`,
    );
  });

  it('path-info: hash mismatch, size mismatch, missing entry; base32 hashes and keyed JSON accepted', async () => {
    const reported = JSON.parse(pathInfoJson([f.app])) as Array<{ path: string; narHash: string; narSize: number }>;
    const app = reported.find((e) => e.path === f.app)!;
    const write = (name: string, json: unknown): string => {
      const file = join(f.dir, name);
      writeFileSync(file, JSON.stringify(json));
      return file;
    };

    const wrongHash = write('pi-hash.json', reported.map((e) => (e.path === f.fixture ? { ...e, narHash: app.narHash } : e)));
    await expectUserError(
      loadClosure([f.appExport], { pathInfoFile: wrongHash }),
      `${f.fixture}: NAR hash mismatch: ${f.appExport} has ${sri(fixture.narHash)}, ${wrongHash} says ${app.narHash}`,
    );

    const wrongSize = write('pi-size.json', reported.map((e) => (e.path === f.fixture ? { ...e, narSize: e.narSize + 8 } : e)));
    await expectUserError(
      loadClosure([f.appExport], { pathInfoFile: wrongSize }),
      `${f.fixture}: NAR size mismatch: ${f.appExport} has ${fixture.narSize} bytes, ${wrongSize} says ${fixture.narSize + 8}`,
    );

    const missing = write('pi-missing.json', reported.filter((e) => e.path !== f.fixture));
    await expectUserError(
      loadClosure([f.appExport], { pathInfoFile: missing }),
      `${missing}: no entry for ${f.fixture} (read from ${f.appExport})`,
    );

    // Older Nix prints sha256:<nix-base32>; newer Nix keys the JSON by path. Converted by Nix itself.
    const base32 = reported.map((e) => ({
      ...e,
      narHash: `sha256:${execFileSync('nix', ['hash', 'to-base32', e.narHash], { encoding: 'utf8' }).trim()}`,
    }));
    expect(base32[0]!.narHash).toMatch(/^sha256:[0-9a-df-np-sv-z]{52}$/);
    const keyed = write('pi-keyed.json', Object.fromEntries(base32.map(({ path, ...rest }) => [path, rest])));
    const closure = await loadClosure([f.appExport], { pathInfoFile: keyed });
    expect(closure.paths.size).toBe(infos.length);

    const notJson = write('pi-bad.json', 'x');
    writeFileSync(notJson, '[{"path": ');
    const err = await loadClosure([f.appExport], { pathInfoFile: notJson }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UserError);
    expect((err as Error).message).toMatch(new RegExp(`^${notJson}: not valid JSON \\(expected the output of nix path-info --json --recursive\\): `));
  });

  it('a NAR that does not fill exactly its recorded size', async () => {
    const consume = { directory() {}, symlink() {}, regular() {} };
    const short = { ...fixture, narSize: fixture.narSize - 8 };
    await expectUserError(
      readNar(short, consume),
      `${f.appExport}: ${f.fixture}: NAR root: the NAR runs past its recorded size of ${short.narSize} bytes (was the file changed after it was indexed?)`,
    );
    const long = { ...fixture, narSize: fixture.narSize + 8 };
    await expectUserError(
      readNar(long, consume),
      `${f.appExport}: byte ${narEnd}: ${f.fixture}: the NAR ends before its recorded size of ${long.narSize} bytes (was the file changed after it was indexed?)`,
    );
  });

  it('closure arguments: none, or stdin twice', async () => {
    await expectUserError(loadClosure([]), 'no closure files given: pass one or more nix-store --export files (or - for stdin)');
    await expectUserError(loadClosure(['-', '-']), "stdin ('-') can be given only once");
  });

  it('a file changed after indexing: re-reading its NAR fails clearly', async () => {
    const file = join(f.dir, 'changing.closure');
    copyFileSync(f.appExport, file);
    const [changing] = (await indexExport(file)).filter((i) => i.path === f.fixture);
    const cut = bytes.indexOf(MARKER, fixture.source.offset) + 5;
    truncateSync(file, cut);
    const consume = { directory() {}, symlink() {}, async regular(_: unknown, contents: AsyncIterable<Buffer>) { for await (const _c of contents); } };
    await expectUserError(
      readNar(changing!, consume),
      `${file}: ${f.fixture}: entry 'marker.txt': unexpected end of file at byte ${cut} (was the file changed after it was indexed?)`,
    );
  });
});
