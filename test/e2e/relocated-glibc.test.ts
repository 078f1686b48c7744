import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { cliOk } from '../helpers/cli.js';
import { compileExtension } from '../helpers/native-wheels.js';
import { podmanLoad, podmanRemove, podmanRun } from '../helpers/podman.js';
import { buildPythonClosure, canBuildPythonClosure, exportPythonClosure, type PythonClosure } from '../helpers/python-closure.js';
import { useScratchDirs } from '../helpers/scratch.js';
import { tools } from '../helpers/tools.js';
import { makeWheel } from '../helpers/wheels.js';

/**
 * A closure whose glibc was not built by Nix: Debian's glibc copied into a store path and Python
 * relocated onto it with patchelf. Its loader's built-in search path is /lib/x86_64-linux-gnu/ and
 * the like, which the image does not have, so a library of glibc that Python has not loaded itself
 * (librt.so.1, libpthread.so.0: what manylinux extensions list) is found only through LD_LIBRARY_PATH.
 */
const ready = tools('nix-build', 'nix-store', 'patchelf', 'gcc', 'podman', 'runc') && canBuildPythonClosure();
const scratch = useScratchDirs();

describe.runIf(ready)('an image on a relocated distribution glibc', () => {
  let dir: string;
  let python: PythonClosure;
  let closureFile: string;
  let wheel: string;
  const loaded: string[] = [];

  beforeAll(() => {
    dir = scratch('nix2oci-relocated-glibc-');
    python = buildPythonClosure();
    closureFile = exportPythonClosure(python, join(dir, 'runtime')).closureFile;
    wheel = makeWheel({
      dir,
      name: 'rtext',
      version: '1.0',
      tag: 'cp311-cp311-linux_x86_64',
      rootIsPurelib: false,
      files: {
        'rtext/__init__.py': 'from ._rt import ping\n',
        'rtext/_rt.cpython-311-x86_64-linux-gnu.so': { content: compileExtension('_rt', ['librt.so.1', 'libpthread.so.0']), mode: 0o755 },
      },
    });
  });
  afterAll(() => podmanRemove(...loaded));

  it("imports an extension needing glibc's librt and libpthread: the loader's directory is on LD_LIBRARY_PATH", () => {
    const out = join(dir, 'image.tar');
    cliOk(['build-image', '-q', '--closure', closureFile, '--no-cache', '--wheel', wheel, '--output', out]);
    const config = JSON.parse(cliOk(['inspect', '--json', out]).stdout).config as { env: string[] };
    expect(config.env).toContain(`LD_LIBRARY_PATH=${python.glibc}/lib`);

    const id = podmanLoad(out);
    loaded.push(id);
    const code = 'import rtext; print(rtext.ping())';
    expect(podmanRun(id, [python.interpreter, '-c', code])).toBe('pong\n');
    // Without it, the relocated loader does not find them: this is the failure the directory prevents.
    expect(() => podmanRun(id, [python.interpreter, '-c', code], ['--env', 'LD_LIBRARY_PATH='])).toThrow(
      /lib(rt\.so\.1|pthread\.so\.0): cannot open shared object file/,
    );
  });
});
