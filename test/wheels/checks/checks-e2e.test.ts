import { describe, it, expect, beforeAll } from 'vitest';
import { join } from 'node:path';
import { tools } from '../../helpers/tools.js';
import { buildPythonClosure, canBuildPythonClosure, exportPythonClosure, type PythonClosure } from '../../helpers/python-closure.js';
import { debianWheels, makeVllmStandInWheel, makeZlibExtensionWheel, ZLIB_EXTENSION_ENTRY } from '../../helpers/vllm-wheels.js';
import { loadClosure } from '../../../src/nix/closure.js';
import type { Closure } from '../../../src/nix/types.js';
import type { TarSink } from '../../../src/layer/types.js';
import { readWheelInfo, type WheelInfo } from '../../../src/wheels/wheel-info.js';
import { wheelLayerSource } from '../../../src/wheels/install.js';
import { checkWheels, ElfCollector, inspectClosure } from '../../../src/wheels/checks/index.js';
import { useScratchDirs } from '../../helpers/scratch.js';

/**
 * The checks as the build runs them: a real `nix-store --export` of the Debian-based runtime closure
 * (with and without zlib), real wheels (Debian's pip and setuptools, the stand-in vLLM, an extension
 * module linking libz.so.1), installed by the real installer whose single pass feeds the ELF collector.
 */

const PREFIX = '/opt/python';

/** A sink that drains every body, as the layer writer would, without writing a tar. */
const drain: TarSink = {
  async add(entry) {
    if (entry.type !== 'file' || Buffer.isBuffer(entry.body)) return;
    for await (const _ of entry.body as AsyncIterable<Buffer>) void _;
  },
};

async function install(wheels: WheelInfo[], interpreter: string) {
  const elf = new ElfCollector();
  const files: string[] = [];
  for (const info of wheels) {
    const layer = wheelLayerSource(info, {
      prefix: PREFIX,
      pythonVersion: '3.11',
      interpreter,
      inspect: ({ path, entry }) => elf.entry(info.file, entry.name, path),
    });
    await layer.source(drain);
    files.push(...layer.files);
  }
  return { elf, files, elfObjects: await elf.finish() };
}

/** Temporary directories, removed after the tests. */
const scratchDir = useScratchDirs();

async function loadExported(closure: PythonClosure, name: string): Promise<Closure> {
  const dir = scratchDir('checks-e2e-');
  const { closureFile, pathInfoFile } = exportPythonClosure(closure, join(dir, name));
  return loadClosure([closureFile], { pathInfoFile, tmpDir: dir });
}

const ready = canBuildPythonClosure() && tools('nix-build', 'nix-store', 'gcc', 'python3');

describe.runIf(ready)('wheel checks on a real closure and real wheels', () => {
  let withZlib: PythonClosure;
  let withoutZlib: PythonClosure;
  let wheels: { vllm: WheelInfo; zlibext: WheelInfo; pip: WheelInfo; setuptools: WheelInfo };

  beforeAll(async () => {
    withZlib = buildPythonClosure({ zlib: true });
    withoutZlib = buildPythonClosure();
    const dir = scratchDir('checks-wheels-');
    const debian = debianWheels();
    wheels = {
      vllm: await readWheelInfo(makeVllmStandInWheel(dir)),
      zlibext: await readWheelInfo(makeZlibExtensionWheel(dir)),
      pip: await readWheelInfo(debian.pip),
      setuptools: await readWheelInfo(debian.setuptools),
    };
  });

  it('finds the Debian python in the export and passes when zlib is in the closure', async () => {
    const closure = await loadExported(withZlib, 'with-zlib');
    const { index, python } = await inspectClosure(closure);
    expect(python).toEqual({
      storePath: withZlib.python,
      interpreter: withZlib.interpreter,
      version: '3.11',
      fullVersion: '3.11.2',
      sitePackages: [`${withZlib.python}/lib/python3.11/site-packages`],
    });
    const all = [wheels.vllm, wheels.zlibext, wheels.pip, wheels.setuptools];
    const { elf, files, elfObjects } = await install(all, python.interpreter);
    expect(elf.problems).toEqual([]);
    expect(elfObjects.map((o) => o.entry)).toEqual([ZLIB_EXTENSION_ENTRY]);
    expect(elfObjects[0]!.imagePath).toBe(`${PREFIX}/lib/python3.11/site-packages/${ZLIB_EXTENSION_ENTRY}`);
    expect(elfObjects[0]!.facts.needed).toContain('libz.so.1');

    const report = await checkWheels({ closure, index, python, wheels: all, wheelFiles: files, elfObjects, elfProblems: elf.problems, ldLibraryPath: ['/opt/rocm/lib'] });
    expect(report.errors).toEqual([]);
    // zlib's lib directory is added after the recipe's; glibc's is not, though its loader does not search
    // it (Debian's glibc, relocated): the extension needs none of glibc's libraries (see relocated-glibc.test.ts).
    expect(report.env.LD_LIBRARY_PATH).toEqual(['/opt/rocm/lib', `${withZlib.zlib}/lib`]);
    // The test closure has no gcc runtime, compiler, headers or amdsmi: every trap warns.
    expect(report.warnings).toHaveLength(4);
    expect(report.warnings.join('\n')).toMatch(/libstdc\+\+\.so\.6 or libgcc_s\.so\.1[\s\S]*amdsmi[\s\S]*C compiler[\s\S]*Python\.h/);
  });

  it('reports the extension linking libz.so.1 when the closure has no zlib', async () => {
    const closure = await loadExported(withoutZlib, 'without-zlib');
    const { index, python } = await inspectClosure(closure);
    const all = [wheels.vllm, wheels.zlibext, wheels.pip, wheels.setuptools];
    const { elf, files, elfObjects } = await install(all, python.interpreter);
    const report = await checkWheels({ closure, index, python, wheels: all, wheelFiles: files, elfObjects, elfProblems: elf.problems });
    const wheelName = wheels.zlibext.file.split('/').pop();
    expect(report.errors).toEqual([`${wheelName}: ${ZLIB_EXTENSION_ENTRY} needs libz.so.1: not found`]);
    expect(report.env.LD_LIBRARY_PATH).toEqual([]);
    const waived = await checkWheels({ closure, index, python, wheels: all, wheelFiles: files, elfObjects, waiveLibraries: ['libz.so.1'] });
    expect(waived.errors).toEqual([]);
    expect(waived.warnings).toContain(`waived library: ${wheelName}: ${ZLIB_EXTENSION_ENTRY} needs libz.so.1: not found`);
  });

  it('fails on unmet requirements, unless waived or the deps check is off', async () => {
    const closure = await loadExported(withZlib, 'reqs');
    const { index, python } = await inspectClosure(closure);
    const some = [wheels.vllm, wheels.pip]; // the stand-in vLLM also needs setuptools
    const { files, elfObjects } = await install(some, python.interpreter);
    const base = { closure, index, python, wheels: some, wheelFiles: files, elfObjects };
    const strict = await checkWheels(base);
    expect(strict.errors).toEqual([`unmet requirement: vllm 0.12.0+rocm711 requires setuptools>=60, not found`]);
    const waived = await checkWheels({ ...base, waiveRequirements: ['SetupTools'] });
    expect(waived.errors).toEqual([]);
    expect(waived.warnings).toContain('waived requirement: vllm 0.12.0+rocm711 requires setuptools>=60, not found');
    expect((await checkWheels({ ...base, depsCheck: false })).errors).toEqual([]);
  });

  it('quiets the traps a closure provides for (gcc runtime, headers)', async () => {
    const fuller = buildPythonClosure({ zlib: true, cxxRuntime: true, headers: true });
    const closure = await loadExported(fuller, 'fuller');
    const { index, python } = await inspectClosure(closure);
    const { files, elfObjects } = await install([wheels.vllm], python.interpreter);
    const report = await checkWheels({ closure, index, python, wheels: [wheels.vllm], wheelFiles: files, elfObjects, depsCheck: false });
    expect(report.warnings).toHaveLength(2);
    expect(report.warnings.join('\n')).toMatch(/amdsmi[\s\S]*C compiler/);
  });

  it('gives the vLLM/Triton traps only to an image with vLLM, and leaves out the ones the recipe skips', async () => {
    const closure = await loadExported(withZlib, 'quiet');
    const { index, python } = await inspectClosure(closure);
    const plain = [wheels.pip, wheels.setuptools, wheels.zlibext];
    const installed = await install(plain, python.interpreter);
    const report = await checkWheels({ closure, index, python, wheels: plain, wheelFiles: installed.files, elfObjects: installed.elfObjects });
    expect(report.errors).toEqual([]);
    // Only gcc's runtime, which any C++ extension would need: nothing of amdsmi, a compiler or Python.h.
    expect(report.warnings).toEqual([expect.stringMatching(/^the closure has no libstdc\+\+\.so\.6 or libgcc_s\.so\.1/)]);

    const all = [wheels.vllm, ...plain];
    const full = await install(all, python.interpreter);
    const base = { closure, index, python, wheels: all, wheelFiles: full.files, elfObjects: full.elfObjects };
    const aiterOn = { ...base, env: { VLLM_ROCM_USE_AITER: '1', PYTORCH_ROCM_ARCH: 'gfx1151' } };
    expect((await checkWheels(aiterOn)).warnings).toHaveLength(5);
    const skipped = await checkWheels({ ...aiterOn, skipTraps: ['amdsmi', 'c-compiler', 'python-headers', 'aiter'] });
    expect(skipped.warnings).toEqual([expect.stringMatching(/libstdc\+\+/)]);
  });
});
