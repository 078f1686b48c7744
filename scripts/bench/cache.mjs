// The layer cache in `npm run bench` (issue 5), on an image shaped like the vLLM one: the bench closure,
// a stand-in Python 3.11 closure, the big bench wheel as "torch" and a smaller "vllm" wheel. Scenarios,
// each on the same cache in .bench/: a cold build, a rebuild with nothing changed, a rebuild with the
// vllm wheel changed (1.0 → 1.1) and a rebuild with one changed store path. Each reports its time
// against the cold build's, the layers reused and built, peak RSS, and the bytes a push would upload:
// the blobs (layers, config, manifest) whose digests the previous build's image did not have.
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { benchWheelFile } from './wheel.mjs';
import { makeVllmWheel, WHEEL_TAG } from './vllm-wheel.mjs';

const MB = 1e6;
const MiB = 2 ** 20;

/** Runs the CLI with --json, sampling peak RSS (VmHWM covers the worker threads). */
export function runJson(cli, args) {
  // The disk's writeback of what earlier runs wrote is done first: a run pays for its own writes only.
  execFileSync('sync');
  return new Promise((resolveRun, reject) => {
    const start = process.hrtime.bigint();
    const child = spawn(process.execPath, [cli, ...args, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let peak = 0;
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setInterval(() => {
      try {
        const kb = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'));
        if (kb) peak = Math.max(peak, Number(kb[1]) * 1024);
      } catch {
        // The process just ended.
      }
    }, 50);
    child.on('close', (code) => {
      clearInterval(timer);
      const seconds = Number(process.hrtime.bigint() - start) / 1e9;
      if (code !== 0) return reject(new Error(`nix2oci ${args.join(' ')} exited ${code}: ${stderr}`));
      // With --push, the pushed reference follows the summary on stdout.
      resolveRun({ seconds, peakRss: peak, summary: JSON.parse(stdout.slice(0, stdout.lastIndexOf('}') + 1)) });
    });
  });
}

/** A one-path closure whose content differs with `text`: the "changed store path" of a rebuild. */
export function changedPathClosure(work, text) {
  const expr = join(work, 'cache-changed.nix');
  writeFileSync(
    expr,
    `derivation { name = "bench-changed"; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/usr/bin:/bin";
       args = [ "-c" "mkdir -p $out/share; echo ${text} > $out/share/version; head -c 4000000 /usr/bin/ls /usr/bin/* 2>/dev/null | head -c 4000000 > $out/share/data" ]; }\n`,
  );
  const path = execFileSync('nix-build', ['--no-out-link', '--quiet', expr], { encoding: 'utf8' }).trim();
  const file = join(work, `cache-changed-${text}.closure`);
  execFileSync('sh', ['-c', `nix-store --export "$1" > '${file}'`, 'sh', path]);
  return file;
}

/** The stand-in Python 3.11 (scripts/bench/python.nix) as a closure file of its own, exported once. */
export function pythonClosure(repo, work) {
  const version = execFileSync('/usr/bin/python3.11', ['-c', 'import platform; print(platform.python_version())'], { encoding: 'utf8' }).trim();
  const args = ['--no-out-link', '--quiet', join(repo, 'scripts/bench/python.nix'), '--argstr', 'version', version];
  const path = execFileSync('nix-build', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }).trim();
  const file = join(work, `${basename(path)}.closure`);
  if (!existsSync(file)) {
    execFileSync('sh', ['-c', `nix-store --export $(nix-store -qR "$1") > '${file}.${process.pid}'`, 'sh', path]);
    renameSync(`${file}.${process.pid}`, file);
  }
  return { file, interpreter: `${path}/bin/python3.11` };
}

/** Every blob a push of the build's image sends (layers, config, manifest), from the summary and the archive. */
function imageBlobs(archive, summary) {
  const manifestBlob = `blobs/sha256/${summary.manifestDigest.slice('sha256:'.length)}`;
  const manifestText = execFileSync('tar', ['-xOf', archive, manifestBlob], { encoding: 'utf8' });
  const { config } = JSON.parse(manifestText);
  const blobs = new Map(summary.layers.map((l) => [l.digest, { size: l.size, layer: l }]));
  blobs.set(config.digest, { size: config.size });
  blobs.set(summary.manifestDigest, { size: Buffer.byteLength(manifestText) });
  return blobs;
}

const mb = (bytes) => (bytes >= 0.1 * MB ? `${(bytes / MB).toFixed(1)} MB` : bytes >= 1000 ? `${(bytes / 1000).toFixed(1)} kB` : `${bytes} B`);

/** The inputs of the image shaped like the vLLM one: the bench closure, the stand-in Python, "torch" and two "vllm" wheels. */
export async function vllmShapedInputs({ repo, work, small }) {
  const cli = join(repo, 'dist/cli/main.js');
  const closure = join(work, small ? 'small.closure' : 'bench.closure');
  const python = pythonClosure(repo, work);
  const { wheelFile: torch } = await benchWheelFile({ repo, work, small });
  const vllm = { '1.0': makeVllmWheel(work, small, '1.0'), '1.1': makeVllmWheel(work, small, '1.1') };
  for (const wheel of [torch, ...Object.values(vllm)]) {
    if (!basename(wheel).endsWith(`-${WHEEL_TAG}.whl`)) throw new Error(`${wheel}: not tagged ${WHEEL_TAG}`);
  }
  return { cli, closure, python, torch, vllm };
}

export async function benchCache({ repo, work, small, report }) {
  if (!existsSync('/usr/bin/python3.11') || !existsSync('/usr/lib/python3.11')) {
    report('layer cache', 'skipped', 'needs Debian\'s python3.11 (scripts/install-system-deps.sh)');
    return;
  }
  const { cli, closure, python, torch, vllm } = await vllmShapedInputs({ repo, work, small });
  // Per run: two benches at once on one machine must not share (or delete) each other's cache.
  const cache = join(work, `cache-${process.pid}`);
  const out = join(work, `cache-out-${process.pid}.tar`);
  const seed = String(Date.now());
  const before = changedPathClosure(work, `a${seed}`);
  const after = changedPathClosure(work, `b${seed}`);
  const build = async (path, vllmWheel) => {
    const run = await runJson(cli, [
      'build-image', '-q', '--closure', closure, '--closure', python.file, '--closure', path, '--python', python.interpreter,
      '--wheel', torch, '--wheel', vllmWheel, '--no-deps-check', '--entrypoint', '', '--cache-dir', cache, '--output', out,
    ]);
    return { ...run, blobs: imageBlobs(out, run.summary) };
  };

  console.log('\nlayer cache (gzip; bench closure, python closure, torch and vllm wheels):');
  rmSync(cache, { recursive: true, force: true });
  let previous = new Map();
  /** The lines every scenario has: layers, push bytes (blobs the previous image lacked), peak RSS. */
  const scenario = (run, layersTarget, layersOk, pushTarget) => {
    const { reused, built } = run.summary;
    report('  layers reused / built', `${reused} / ${built}`, layersTarget, layersOk);
    const total = [...run.blobs.values()].reduce((sum, b) => sum + b.size, 0);
    const upload = [...run.blobs].filter(([digest]) => !previous.has(digest)).map(([, b]) => b);
    const bytes = upload.reduce((sum, b) => sum + b.size, 0);
    // A push sends only what changed: no layer that this build reused from the cache is new.
    const pushOk = upload.every((b) => !b.layer?.reused);
    report('  push would upload', mb(bytes), `${((bytes / total) * 100).toFixed(1)} % of the image's ${mb(total)}; ${pushTarget}`, pushOk);
    report('  peak RSS', `${(run.peakRss / MiB).toFixed(0)} MiB`, '< 300 MiB', run.peakRss < 300 * MiB);
    previous = run.blobs;
  };
  /** The --json summary's stage timings; the rest is start-up (and exit). */
  const timeSpent = (run) => {
    const t = run.summary.timings;
    const rest = run.seconds - t.closure - t.layers - t.checks - t.output;
    report('  where the time goes', `${run.seconds.toFixed(2)} s`, `read closure ${t.closure.toFixed(2)} s, layers ${t.layers.toFixed(2)} s, checks ${t.checks.toFixed(2)} s, write output ${t.output.toFixed(2)} s, start-up and rest ${rest.toFixed(2)} s`);
  };
  const ofCold = (run, cold, limit, name) => {
    const ratio = run.seconds / cold.seconds;
    report(name, `${run.seconds.toFixed(2)} s, ${(ratio * 100).toFixed(1)} %`, `<= ${limit * 100} % of cold`, ratio <= limit);
  };

  const cold = await build(before, vllm['1.0']);
  report('cold build, empty cache', `${cold.seconds.toFixed(1)} s, 100 %`, `${cold.summary.layers.length} layers`);
  for (const [role, wheel] of [['torch', torch], ['vllm', vllm['1.0']]]) {
    const layer = cold.summary.layers.find((l) => l.contents.includes(basename(wheel)));
    report(`  ${role} wheel (${basename(wheel).split('-').slice(0, 2).join(' ')}), installed`, mb(layer.uncompressedSize), `${mb(statSync(wheel).size)} zipped, ${mb(layer.size)} gzip layer`);
  }
  scenario(cold, 'all built', cold.summary.reused === 0, 'everything');

  const same = await build(before, vllm['1.0']);
  ofCold(same, cold, 0.05, 'rebuild, nothing changed');
  report('  same image as the cold build', same.summary.manifestDigest === cold.summary.manifestDigest ? 'yes' : 'NO', '', same.summary.manifestDigest === cold.summary.manifestDigest);
  scenario(same, 'all but the image root', same.summary.built === 1, 'the config and root layer at most');
  timeSpent(same);

  const wheel = await build(before, vllm['1.1']);
  ofCold(wheel, cold, 0.1, 'rebuild, one changed wheel (vllm 1.0 -> 1.1)');
  scenario(wheel, 'the changed wheel and the image root built', wheel.summary.built === 2, 'the new wheel layer, config and root');
  timeSpent(wheel);

  const changed = await build(after, vllm['1.1']);
  ofCold(changed, cold, 0.1, 'rebuild, one store path changed');
  scenario(changed, 'the changed path and the image root built', changed.summary.built === 2, 'the new path\'s layer, config and root');
  timeSpent(changed);
  for (const file of [cache, out, before, after]) rmSync(file, { recursive: true, force: true });
}
