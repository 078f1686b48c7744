import { execFileSync, spawn } from 'node:child_process';
import { cpSync, mkdirSync, readdirSync, renameSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { readImage } from '../../src/output/read.js';
import { readPathInfo } from '../../src/nix/path-info.js';
import { UserError } from '../../src/util/errors.js';
import { runCli } from '../helpers/cli.js';
import { useScratchDirs } from '../helpers/scratch.js';
import { randomLayer, writeOciLayout, writeTestImage, type TestImage } from '../registry/support/test-image.js';

/**
 * An OCI layout from elsewhere is untrusted: a blob, index.json or a directory in it may be a symbolic
 * link to a host file, a FIFO or a device. None is ever followed or read, and no error quotes what a
 * file holds. The same holds for --path-info: a wrong or hostile path never shows its content and an
 * endless one never fills memory.
 */

const scratch = useScratchDirs();
/** What an attacker would like to read from the host: it must never appear anywhere. */
const SECRET = 'root:$6$TOP-SECRET-HASH$abcdefghijklmnop:19000:0:99999:7:::';

describe('a hostile OCI layout', () => {
  let dir: string;
  let image: TestImage;
  let secretFile: string;
  let pristine: string;

  beforeAll(async () => {
    dir = scratch('nix2oci-hostile-layout-');
    secretFile = join(dir, 'shadow');
    writeFileSync(secretFile, `${SECRET}\n`);
    image = await writeTestImage(join(dir, 'image'), { layers: [randomLayer('a', 4000)] });
    pristine = join(dir, 'pristine');
    writeOciLayout(pristine, image);
  });

  /** A copy of the good layout with `tamper` applied. */
  const layout = (name: string, tamper: (root: string, blob: string) => void): string => {
    const root = join(dir, name);
    cpSync(pristine, root, { recursive: true });
    tamper(root, join(root, 'blobs', 'sha256', image.layers[0]!.descriptor.digest.slice(7)));
    return root;
  };
  const readError = async (root: string): Promise<Error> => {
    const err = await readImage(root).then(
      () => new Error('read'),
      (e: unknown) => e as Error,
    );
    expect(err).toBeInstanceOf(UserError);
    expect(err.message).not.toContain('TOP-SECRET');
    expect(err.message).not.toContain('\n');
    return err;
  };

  it('refuses a blob that is a symbolic link to a host file, before anything is pushed', async () => {
    const root = layout('blob-link', (_, blob) => {
      unlinkSync(blob);
      symlinkSync(secretFile, blob);
    });
    const err = await readError(root);
    expect(err.message).toBe(
      `${root}: blobs/sha256/${image.layers[0]!.descriptor.digest.slice(7)} is a symbolic link; a layout's files are never read through links (it could point anywhere on this machine)`,
    );
    // The CLI fails before it connects anywhere (the registry named here does not exist).
    const push = runCli(['push', root, '--registry', '127.0.0.1:9/x/y', '--retries', '0']);
    expect(push.code).toBe(1);
    expect(push.stderr).toMatch(/is a symbolic link; a layout's files are never read through links/);
    expect(push.stderr).not.toContain('TOP-SECRET');
  });

  it('refuses index.json as a link, and inspect prints nothing of its target', async () => {
    const root = layout('index-link', (r) => {
      unlinkSync(join(r, 'index.json'));
      symlinkSync(secretFile, join(r, 'index.json'));
    });
    await readError(root);
    for (const args of [['inspect', root], ['inspect', root, '--json']]) {
      const result = runCli(args);
      expect(result.code).toBe(1);
      expect(`${result.stdout}${result.stderr}`).not.toContain('TOP-SECRET');
      expect(result.stderr.trim().split('\n')).toHaveLength(1);
    }
  });

  it('refuses a link on the way: blobs/ or blobs/sha256/ pointing elsewhere', async () => {
    const elsewhere = join(dir, 'elsewhere');
    cpSync(join(pristine, 'blobs'), elsewhere, { recursive: true });
    const root = layout('dir-link', (r) => {
      rmSync(join(r, 'blobs'), { recursive: true });
      symlinkSync(elsewhere, join(r, 'blobs'));
    });
    expect((await readError(root)).message).toMatch(/blobs is a symbolic link/);
  });

  it('refuses a FIFO or a device as a blob without hanging', async () => {
    const fifo = layout('blob-fifo', (_, blob) => {
      unlinkSync(blob);
      execFileSync('mkfifo', [blob]);
    });
    expect((await readError(fifo)).message).toMatch(/ is a pipe, not a regular file$/);
    const device = layout('index-device', (r) => {
      unlinkSync(join(r, 'index.json'));
      symlinkSync('/dev/zero', join(r, 'index.json'));
    });
    expect((await readError(device)).message).toMatch(/index\.json is a symbolic link/);
  });

  it('notices a blob swapped for a link after the image was read, and reads nothing through it', async () => {
    const root = layout('swapped', () => {});
    const read = await readImage(root);
    const blob = join(root, 'blobs', 'sha256', image.layers[0]!.descriptor.digest.slice(7));
    renameSync(blob, `${blob}.moved`);
    symlinkSync(secretFile, blob);
    const chunks: Buffer[] = [];
    const err = await (async () => {
      for await (const chunk of read.layers[0]!.open()) chunks.push(chunk as Buffer);
    })().then(
      () => null,
      (e: unknown) => e as Error,
    );
    expect(err).toBeInstanceOf(UserError);
    expect(err!.message).toMatch(/is a symbolic link/);
    expect(Buffer.concat(chunks).toString()).not.toContain('TOP-SECRET');
  });

  it('never quotes index.json when it is not JSON or not an index', async () => {
    const notJson = layout('index-text', (r) => writeFileSync(join(r, 'index.json'), SECRET));
    expect((await readError(notJson)).message).toBe(`${notJson}: index.json is not valid JSON: line 1 column 1: unexpected character, expected a value`);
    const badDescriptor = layout('index-descriptor', (r) =>
      writeFileSync(join(r, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: SECRET, digest: SECRET, size: -1 }] })),
    );
    expect((await readError(badDescriptor)).message).toBe(`${badDescriptor}: index.json manifests[0]: invalid descriptor: it has no a sha256 digest, a size`);
    expect(readdirSync(badDescriptor)).toContain('index.json');
  });
});

describe('a hostile --path-info', () => {
  let dir: string;
  beforeAll(() => {
    dir = scratch('nix2oci-hostile-path-info-');
  });
  const errorOf = async (file: string): Promise<Error> => {
    const err = await readPathInfo(file).then(
      () => new Error('read'),
      (e: unknown) => e as Error,
    );
    expect(err).toBeInstanceOf(UserError);
    expect(err.message).not.toContain('TOP-SECRET');
    return err;
  };

  it('never quotes a file that is not path-info', async () => {
    const shadow = join(dir, 'shadow');
    writeFileSync(shadow, `${SECRET}\n`);
    expect((await errorOf(shadow)).message).toBe(
      `${shadow}: not valid JSON (expected the output of nix path-info --json --recursive): line 1 column 1: unexpected character, expected a value`,
    );
    const json = join(dir, 'secrets.json');
    writeFileSync(json, JSON.stringify({ [SECRET]: { narHash: SECRET } }));
    expect((await errorOf(json)).message).toBe(`${json}: key #1: not a valid store path: it is not in /nix/store`);
    const store = join(dir, 'store.json');
    writeFileSync(store, JSON.stringify({ '/nix/store/0123456789abcdfghijklmnpqrsvwxyz-x': { narHash: SECRET, narSize: 1 } }));
    expect((await errorOf(store)).message).toBe(
      `${store}: /nix/store/0123456789abcdfghijklmnpqrsvwxyz-x: narHash is not a sha256 hash (sha256-<base64> or sha256:<nix-base32>)`,
    );
  });

  it('refuses a device at once and stops an endless pipe at the limit', async () => {
    expect((await errorOf('/dev/zero')).message).toBe('/dev/zero: cannot read path-info: it is a character device, not a file');
    const fifo = join(dir, 'endless');
    execFileSync('mkfifo', [fifo]);
    const writer = spawn('sh', ['-c', `exec cat /dev/zero > ${fifo}`], { stdio: 'ignore' });
    try {
      const started = Date.now();
      expect((await errorOf(fifo)).message).toBe(`${fifo}: path-info is larger than the 64 MiB allowed (stopped reading at byte ${64 << 20})`);
      expect(Date.now() - started).toBeLessThan(20_000);
    } finally {
      writer.kill();
    }
  });

  it('fails the build in one line, exit 1, for --path-info /dev/zero', () => {
    mkdirSync(join(dir, 'out'), { recursive: true });
    const result = runCli(['build-image', '-q', '--closure', 'layers/demo/demo.closure', '--path-info', '/dev/zero', '--no-cache', '--output', join(dir, 'out', 'x.tar')]);
    expect(result.code).toBe(1);
    expect(result.stderr).toBe('nix2oci: /dev/zero: cannot read path-info: it is a character device, not a file\n');
  });
});
