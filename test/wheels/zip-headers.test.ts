import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { readWheelInfo } from '../../src/wheels/wheel-info.js';
import { verifyWheel } from '../../src/wheels/verify.js';
import { ZipReader } from '../../src/wheels/zip.js';
import { UserError } from '../../src/util/errors.js';
import { useScratchDirs } from '../helpers/scratch.js';
import { tools } from '../helpers/tools.js';
import { makeWheel } from '../helpers/wheels.js';

/**
 * A zip has two views of each entry, the central directory and the local header before its data. A
 * wheel whose views disagree installs one file for the tools that read one view and another for the
 * others; Python's zipfile (and so pip) refuses one that names a different file. nix2oci refuses any
 * disagreement, naming the wheel, the entry and the header's offset.
 */

const scratch = useScratchDirs();

describe.runIf(tools('python3'))('local headers that disagree with the central directory', () => {
  let dir: string;
  let wheel: string;
  let bytes: Buffer;
  /** Offset of each entry's local header, by name. */
  const local = new Map<string, number>();

  beforeAll(async () => {
    dir = scratch('nix2oci-zip-headers-');
    wheel = makeWheel({
      dir,
      name: 'demo',
      version: '1.0',
      files: { 'demo/__init__.py': 'print("central")\n', 'demo/aaa.py': 'print("aaa")\n', 'demo/data.bin': { content: 'stored bytes\n', stored: true } },
    });
    bytes = readFileSync(wheel);
    const zip = await ZipReader.open(wheel);
    for (const entry of zip.entries) local.set(entry.name, entry.offset);
    await zip.close();
  });

  /** A copy of the wheel with `patch` applied to its bytes. */
  const variant = (name: string, patch: (b: Buffer) => void): string => {
    const copy = Buffer.from(bytes);
    patch(copy);
    const file = join(dir, name, 'demo-1.0-py3-none-any.whl');
    spawnSync('mkdir', ['-p', join(dir, name)]);
    writeFileSync(file, copy);
    return file;
  };
  /** Whether Python's zipfile reads every member of the file. */
  const pythonReads = (file: string): boolean =>
    spawnSync('python3', ['-c', 'import sys, zipfile\nz = zipfile.ZipFile(sys.argv[1])\nfor n in z.namelist(): z.read(n)', file]).status === 0;
  const refusal = async (file: string): Promise<string> => {
    const err = await (async () => {
      const info = await readWheelInfo(file);
      await verifyWheel({ ...info, file });
    })().then(
      () => null,
      (e: unknown) => e as Error,
    );
    expect(err).toBeInstanceOf(UserError);
    expect(err!.message).not.toContain('\n');
    return err!.message;
  };

  it('reads the wheel as made (the oracle agrees)', async () => {
    expect(pythonReads(wheel)).toBe(true);
    const info = await readWheelInfo(wheel);
    await verifyWheel({ ...info, file: wheel });
  });

  it('refuses a local header naming another file (the issue’s case), as Python does', async () => {
    const at = local.get('demo/__init__.py')!;
    // A name of the same length, so nothing else moves.
    const file = variant('renamed', (b) => b.write('demo/__initX_.py', at + 30, 'latin1'));
    expect(pythonReads(file)).toBe(false);
    expect(await refusal(file)).toBe(
      `${file}: entry "demo/__init__.py" (local header at byte ${at}): the local header disagrees with the central directory: it names "demo/__initX_.py", the directory "demo/__init__.py"`,
    );
  });

  it('refuses another compression method, an encryption flag, a CRC or a size that differ', async () => {
    const at = local.get('demo/aaa.py')!;
    const cases: Array<[string, (b: Buffer) => void, RegExp]> = [
      ['method', (b) => b.writeUInt16LE(0, at + 8), /compression method 0 here, 8 there$/],
      ['encrypted', (b) => b.writeUInt16LE(b.readUInt16LE(at + 6) | 1, at + 6), /one says the entry is encrypted, the other not$/],
      ['crc', (b) => b.writeUInt32LE(b.readUInt32LE(at + 14) ^ 1, at + 14), /CRC-32 0x[0-9a-f]+ here, 0x[0-9a-f]+ there$/],
      ['size', (b) => b.writeUInt32LE(b.readUInt32LE(at + 22) + 1, at + 22), /size \d+ here, \d+ there$/],
    ];
    for (const [name, patch, message] of cases) {
      const file = variant(name, patch);
      expect(await refusal(file), name).toMatch(message);
    }
  });

  it('accepts a streamed entry whose local header leaves CRC and sizes to a data descriptor', async () => {
    const streamed = join(dir, 'streamed');
    spawnSync('mkdir', ['-p', streamed]);
    // zipfile writing to a pipe (unseekable) sets flag bit 3 and writes zeros in the local header.
    const script = String.raw`
import base64, hashlib, io, sys, zipfile
class Pipe(io.RawIOBase):
    def __init__(self, f): self.f = f
    def writable(self): return True
    def seekable(self): return False
    def write(self, b): return self.f.write(b)
def rec(name, data):
    return '%s,sha256=%s,%d' % (name, base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode(), len(data))
files = {'demo/__init__.py': b'x = 1\n', 'demo-1.0.dist-info/METADATA': b'Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n\n', 'demo-1.0.dist-info/WHEEL': b'Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n\n'}
with open(sys.argv[1], 'wb') as raw:
    with zipfile.ZipFile(Pipe(raw), 'w', zipfile.ZIP_DEFLATED) as z:
        for n, d in files.items(): z.writestr(n, d)
        z.writestr('demo-1.0.dist-info/RECORD', '\n'.join([rec(n, d) for n, d in files.items()] + ['demo-1.0.dist-info/RECORD,,']) + '\n')
`;
    const file = join(streamed, 'demo-1.0-py3-none-any.whl');
    expect(spawnSync('python3', ['-c', script, file]).status).toBe(0);
    const flags = readFileSync(file).readUInt16LE(6);
    expect(flags & 8).toBe(8);
    const info = await readWheelInfo(file);
    await verifyWheel({ ...info, file });
  });
});
