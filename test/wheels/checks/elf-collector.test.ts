import { describe, it, expect } from 'vitest';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { tools } from '../../helpers/tools.js';
import { makeWheel } from '../../helpers/wheels.js';
import { ElfCollector } from '../../../src/wheels/checks/elf-collector.js';
import { ZipReader } from '../../../src/wheels/zip.js';
import { useScratchDirs } from '../../helpers/scratch.js';

/** Temporary directories, removed after the tests. */
const scratchDir = useScratchDirs();

const libstdcxx = '/usr/lib/x86_64-linux-gnu/libstdc++.so.6';

/** Streams every file of a wheel through the collector, entry by entry, as the installer does (telling where each lies, if `located`). */
async function streamWheel(collector: ElfCollector, wheel: string, located = false): Promise<void> {
  const zip = await ZipReader.open(wheel);
  try {
    for (const entry of zip.entries) {
      if (entry.isDir) continue;
      for await (const _ of collector.tap(wheel, entry.name, `/opt/python/lib/python3.11/site-packages/${entry.name}`, zip.read(entry), located ? entry : undefined)) void _;
    }
  } finally {
    await zip.close();
  }
}

/** A platform wheel `cxx` of these files. */
function cxxWheel(files: Parameters<typeof makeWheel>[0]['files']): string {
  return makeWheel({ dir: scratchDir('collector-'), name: 'cxx', version: '1.0', tag: 'cp311-cp311-linux_x86_64', files });
}

function neededByReadelf(file: string): string[] {
  const out = execFileSync('readelf', ['-dW', file], { encoding: 'utf8' });
  return [...out.matchAll(/\(NEEDED\).*\[(.*)\]/g)].map((m) => m[1]!);
}

describe.runIf(tools('python3', 'readelf'))('ElfCollector on wheel entries', () => {
  it('collects ELF files only, and reads a large library again when its string table streamed past', async () => {
    const wheel = cxxWheel({
      'cxx/__init__.py': 'print("hi")\n',
      'cxx/lib/libstdc++.so.6': readFileSync(libstdcxx),
      'cxx/bin/ls': { content: readFileSync('/bin/ls'), mode: 0o755 },
    });
    // A tiny prefix forces a second pass for the 2 MB library (whose string table and dynamic section
    // come in different chunks); /bin/ls fits in one inflated chunk and needs none.
    const collector = new ElfCollector({ prefixLimit: 512 });
    await streamWheel(collector, wheel);
    expect(collector.incomplete.map((p) => p.entry)).toContain('cxx/lib/libstdc++.so.6');
    const objects = await collector.finish();
    expect(collector.problems).toEqual([]);
    expect(objects.map((o) => o.entry)).toEqual(['cxx/bin/ls', 'cxx/lib/libstdc++.so.6']);
    expect(objects[1]!.facts.needed).toEqual(neededByReadelf(libstdcxx));
    expect(objects[1]!.facts.soname).toBe('libstdc++.so.6');
    expect(objects[0]!.facts.interpreter).toBe('/lib64/ld-linux-x86-64.so.2');
    expect(objects[0]!.imagePath).toBe('/opt/python/lib/python3.11/site-packages/cxx/bin/ls');

    // With the default prefix, the same wheel needs one pass only.
    const onePass = new ElfCollector();
    await streamWheel(onePass, wheel);
    expect(onePass.incomplete).toEqual([]);
    expect((await onePass.finish()).map((o) => o.facts.needed)).toEqual(objects.map((o) => o.facts.needed));
  });

  it('reads a library again where the first read found it, without the zip’s directory, once per wheel', async () => {
    const wheel = cxxWheel({ 'cxx/lib/a/libstdc++.so.6': readFileSync(libstdcxx), 'cxx/lib/b/libstdc++.so.6': readFileSync(libstdcxx), 'cxx/x.py': 'x = 1\n' });
    const unlocated = new ElfCollector({ prefixLimit: 512 });
    await streamWheel(unlocated, wheel);
    const expected = await unlocated.finish();
    expect(expected.map((o) => o.facts.needed)).toEqual([neededByReadelf(libstdcxx), neededByReadelf(libstdcxx)]);

    const located = new ElfCollector({ prefixLimit: 512 });
    await streamWheel(located, wheel, true);
    expect(located.incomplete).toHaveLength(2);
    const opened: { wheel: string; entries: (string | undefined)[] }[] = [];
    const objects = await located.finish(async (file, entries) => {
      opened.push({ wheel: file, entries: entries.map((e) => e?.name) });
      const zip = await ZipReader.reopen(file, entries.map((e) => e!));
      return { read: (name) => zip.readInPlace(zip.entries.find((e) => e.name === name)!), close: () => zip.close() };
    });
    expect(opened).toEqual([{ wheel, entries: ['cxx/lib/a/libstdc++.so.6', 'cxx/lib/b/libstdc++.so.6'] }]);
    expect(objects).toEqual(expected);
    // And the collector's own way of opening gives the same.
    const byDefault = new ElfCollector({ prefixLimit: 512 });
    await streamWheel(byDefault, wheel, true);
    expect(await byDefault.finish()).toEqual(expected);
  });

  it('records a malformed ELF file as a problem naming the wheel, the entry and the byte, and goes on', async () => {
    const dir = scratchDir('collector-');
    const truncated = readFileSync(libstdcxx).subarray(0, 4000); // headers intact, dynamic section cut off
    const wheel = makeWheel({ dir, name: 'broken', version: '1.0', files: { 'broken/_x.so': truncated, 'broken/ok.so': readFileSync(libstdcxx) } });
    const collector = new ElfCollector();
    await streamWheel(collector, wheel);
    await streamWheel(collector, wheel); // a layer written twice records each file once
    const objects = await collector.finish();
    expect(objects.map((o) => o.entry)).toEqual(['broken/ok.so']);
    expect(collector.problems).toHaveLength(1);
    expect(collector.problems[0]).toMatch(
      /^broken-1\.0-py3-none-any\.whl: broken\/_x\.so: malformed ELF: dynamic section at bytes \d+\.\.\d+ lies beyond the end of the file \(4000 bytes\) \(byte \d+\)$/,
    );
  });

  it('judges only whole bodies: an aborted read records nothing', async () => {
    const collector = new ElfCollector();
    async function* partial() {
      yield readFileSync(libstdcxx).subarray(0, 100);
      throw new Error('disk gone');
    }
    await expect(async () => {
      for await (const _ of collector.tap('/w/x.whl', 'x.so', '/x.so', partial())) void _;
    }).rejects.toThrow('disk gone');
    expect(await collector.finish()).toEqual([]);
    expect(collector.problems).toEqual([]);
  });
});
