// The layer cache in `npm run bench` (issue 5): a cold build, a rebuild with nothing changed and a
// rebuild with one changed store path, each on a fresh or warm cache in .bench/, with peak RSS and
// where the warm build's time goes (the --json summary's stage timings).
import { execFileSync, spawn } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** Runs the CLI with --json, sampling peak RSS (VmHWM covers the worker threads). */
function runJson(cli, args) {
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
      resolveRun({ seconds, peakRss: peak, summary: JSON.parse(stdout) });
    });
  });
}

/** A one-path closure whose content differs with `text`: the "changed store path" of a rebuild. */
function changedPathClosure(work, text) {
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

export async function benchCache({ repo, work, small, report }) {
  const cli = join(repo, 'dist/cli/main.js');
  const closure = join(work, small ? 'small.closure' : 'bench.closure');
  // Per run: two benches at once on one machine must not share (or delete) each other's cache.
  const cache = join(work, `cache-${process.pid}`);
  const out = join(work, `cache-out-${process.pid}.tar`);
  const seed = String(Date.now());
  const before = changedPathClosure(work, `a${seed}`);
  const after = changedPathClosure(work, `b${seed}`);
  const build = (extra) => runJson(cli, ['build-image', '-q', '--closure', closure, '--entrypoint', '/bin/sh', '--cache-dir', cache, '--output', out, ...extra]);

  console.log('\nlayer cache (gzip):');
  rmSync(cache, { recursive: true, force: true });
  const cold = await build(['--closure', before]);
  report('cold build, empty cache', `${cold.seconds.toFixed(1)} s`, `${cold.summary.built} layers built`);
  report('  peak RSS', `${(cold.peakRss / 2 ** 20).toFixed(0)} MiB`, '< 300 MiB', cold.peakRss < 300 * 2 ** 20);

  const same = await build(['--closure', before]);
  const sameRatio = same.seconds / cold.seconds;
  report('rebuild, nothing changed', `${(sameRatio * 100).toFixed(1)} % of cold`, '<= 5 %', sameRatio <= 0.05);
  report('  layers reused / built', `${same.summary.reused} / ${same.summary.built}`, 'all but the image root', same.summary.built === 1);
  report('  same image as the cold build', same.summary.manifestDigest === cold.summary.manifestDigest ? 'yes' : 'NO', '', same.summary.manifestDigest === cold.summary.manifestDigest);
  report('  peak RSS', `${(same.peakRss / 2 ** 20).toFixed(0)} MiB`, '< 300 MiB', same.peakRss < 300 * 2 ** 20);
  const t = same.summary.timings;
  report('  where the time goes', `${same.seconds.toFixed(2)} s`, `read closure ${t.closure.toFixed(2)} s, layers ${t.layers.toFixed(2)} s, write output ${t.output.toFixed(2)} s, start-up and rest ${(same.seconds - t.closure - t.layers - t.checks - t.output).toFixed(2)} s`);

  const changed = await build(['--closure', after]);
  const changedRatio = changed.seconds / cold.seconds;
  report('rebuild, one store path changed', `${(changedRatio * 100).toFixed(1)} % of cold`, '<= 10 %', changedRatio <= 0.1);
  report('  layers reused / built', `${changed.summary.reused} / ${changed.summary.built}`, 'the changed path and the image root built', changed.summary.built === 2);
  report('  peak RSS', `${(changed.peakRss / 2 ** 20).toFixed(0)} MiB`, '< 300 MiB', changed.peakRss < 300 * 2 ** 20);
  for (const file of [cache, out, before, after]) rmSync(file, { recursive: true, force: true });
}
