// Bench hook (scripts/bench.mjs): gzip and zstd side by side (issue 10), on the bench closure and on an
// image of the torch-sized bench wheel: the blobs' total size, a cold build (--no-cache), the time to
// decompress every layer with the system's gzip / zstd (one core, as a runtime unpacking a layer does),
// and peak RSS. Goals: zstd no larger, built at least as fast, decompressed at least 2x faster.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { pythonClosure } from './cache.mjs';
import { benchWheelFile } from './wheel.mjs';

const MB = 1e6;

/** The layer blobs of an oci-archive, unpacked into `dir`: their paths and total size. */
function layerBlobs(archive, dir) {
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  execFileSync('tar', ['-xf', archive, '-C', dir]);
  const index = JSON.parse(readFileSync(join(dir, 'index.json'), 'utf8'));
  const manifest = JSON.parse(readFileSync(join(dir, 'blobs/sha256', index.manifests[0].digest.slice(7)), 'utf8'));
  const files = manifest.layers.map((l) => join(dir, 'blobs/sha256', l.digest.slice(7)));
  return { files, bytes: manifest.layers.reduce((sum, l) => sum + l.size, 0) };
}

/**
 * Seconds to decompress every blob to /dev/null with the system tool: one process for all of them, so a
 * closure of many small layers measures decompression, not process start-up.
 */
function decompressSeconds(files, compression) {
  const tool = compression === 'zstd' ? ['zstd', '-q', '-d', '-c'] : ['gzip', '-d', '-c'];
  const start = process.hrtime.bigint();
  execFileSync('sh', ['-c', '"$@" > /dev/null', 'sh', ...tool, ...files]);
  return Number(process.hrtime.bigint() - start) / 1e9;
}

export async function benchZstd({ repo, work, small, report, runMeasured, closure }) {
  const cli = join(repo, 'dist/cli/main.js');
  const scenarios = [{ name: 'bench closure', args: ['--closure', closure.file, '--entrypoint', ''] }];
  if (existsSync('/usr/bin/python3.11') && existsSync('/usr/lib/python3.11')) {
    const python = pythonClosure(repo, work);
    const { wheelFile } = await benchWheelFile({ repo, work, small });
    scenarios.push({
      name: 'torch-sized wheel',
      args: ['--closure', python.file, '--python', python.interpreter, '--wheel', wheelFile, '--no-deps-check', '--entrypoint', ''],
    });
  }
  const out = join(work, `zstd-out-${process.pid}.tar`);
  const blobs = join(work, `zstd-blobs-${process.pid}`);
  const rows = [];
  console.log('\ngzip and zstd (cold builds, --no-cache; decompression with the system gzip / zstd, one core):');
  try {
    for (const scenario of scenarios) {
      const measured = {};
      for (const compression of ['gzip', 'zstd']) {
        rmSync(out, { force: true });
        const run = await runMeasured(['build-image', '-q', '--no-cache', ...scenario.args, '--compression', compression, '--output', out], cli);
        const { files, bytes } = layerBlobs(out, blobs);
        decompressSeconds(files, compression); // warm the page cache
        const unpack = decompressSeconds(files, compression);
        measured[compression] = { seconds: run.seconds, bytes, unpack, peakRss: run.peakRss };
        report(`${scenario.name}, ${compression}: blobs`, `${(bytes / MB).toFixed(1)} MB`);
        report('  cold build', `${run.seconds.toFixed(1)} s`);
        report('  decompress every layer', `${unpack.toFixed(2)} s`);
        report('  peak RSS', `${(run.peakRss / 2 ** 20).toFixed(0)} MiB`, '< 300 MiB', run.peakRss < 300 * 2 ** 20);
      }
      const { gzip, zstd } = measured;
      report(`${scenario.name}: zstd size / gzip size`, (zstd.bytes / gzip.bytes).toFixed(3), '<= 1', zstd.bytes <= gzip.bytes);
      report(`${scenario.name}: zstd build time / gzip build time`, (zstd.seconds / gzip.seconds).toFixed(2), '<= 1', zstd.seconds <= gzip.seconds);
      report(`${scenario.name}: zstd decompression speed-up`, `${(gzip.unpack / zstd.unpack).toFixed(2)} x`, '>= 2', gzip.unpack / zstd.unpack >= 2);
      rows.push({ name: scenario.name, gzip, zstd });
    }
  } finally {
    rmSync(out, { force: true });
    rmSync(blobs, { recursive: true, force: true });
  }
  // The README's table, ready to paste.
  console.log('\n| image | compression | blobs | cold build | decompress all layers | peak RSS |\n| --- | --- | --- | --- | --- | --- |');
  for (const { name, gzip, zstd } of rows) {
    for (const [c, m] of [['gzip -6', gzip], ['zstd -3', zstd]]) {
      console.log(`| ${name} | ${c} | ${(m.bytes / MB).toFixed(1)} MB | ${m.seconds.toFixed(1)} s | ${m.unpack.toFixed(2)} s | ${(m.peakRss / 2 ** 20).toFixed(0)} MiB |`);
    }
  }
}
