// The registry cache in `npm run bench` (issue 12): CI runners start with an empty local cache. On the
// image shaped like the vLLM one (bench closure, stand-in Python, "torch" and "vllm" wheels), each
// build runs as a fresh runner (a new, empty --cache-dir) and pushes to a local docker-registry without
// writing an archive:
//   cold                         build + push, nothing in the registry
//   fresh, nothing changed       the registry cache (--push implies --cache-from/--cache-to)
//   fresh, one wheel changed     vllm 1.0 -> 1.1
//   fresh, one store path changed
// and the same four with --no-registry-cache (every layer built again, the push skipping what the
// registry has), and, for comparison, the archive route: build to an oci-archive and `skopeo copy` it
// with skopeo's own blob-info cache empty (a fresh runner). Each line gives the time against its cold
// build and the bytes the registry gained (what was uploaded: new blobs only).
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { changedPathClosure, runJson, vllmShapedInputs } from './cache.mjs';
import { startBenchRegistry } from './registry.mjs';

const MB = 1e6;
/** Runs of a fresh runner with nothing changed. */
const REPEATS = 3;
/** The run of median time. */
const median = (runs) => [...runs].sort((a, b) => a.seconds - b.seconds)[Math.floor(runs.length / 2)];
const mb = (bytes) => (bytes >= 0.1 * MB ? `${(bytes / MB).toFixed(1)} MB` : bytes >= 1000 ? `${(bytes / 1000).toFixed(1)} kB` : `${bytes} B`);

export async function benchRegistryCache({ repo, work, small, report }) {
  if (!existsSync('/usr/bin/python3.11') || !existsSync('/usr/lib/python3.11') || spawnSync('docker-registry', ['--version']).error) {
    report('registry cache', 'skipped', 'needs Debian\'s python3.11 and docker-registry (scripts/install-system-deps.sh)');
    return;
  }
  const { cli, closure, python, torch, vllm } = await vllmShapedInputs({ repo, work, small });
  const seed = String(Date.now());
  // A fresh runner with nothing changed runs REPEATS times and the median is reported: a run of two
  // seconds moves by ±10 % from one to the next on a shared machine. The changed scenarios run once,
  // on the same change as always (another vllm version or path is another workload, not a repeat).
  const repeats = small ? 1 : REPEATS;
  const before = changedPathClosure(work, `rc-a${seed}`);
  const after = changedPathClosure(work, `rc-b${seed}`);
  const runners = mkdtempSync(join(work, 'runners-'));
  let runner = 0;
  const inputs = (path, wheel) => [
    '--closure', closure, '--closure', python.file, '--closure', path, '--python', python.interpreter,
    '--wheel', torch, '--wheel', wheel, '--no-deps-check', '--entrypoint', '',
  ];
  /** One CI run on a fresh runner: an empty local cache; the registry's gain is what it uploaded. */
  const fresh = async (registry, ref, path, wheel, flags = []) => {
    const stored = registry.stored();
    const run = await runJson(cli, ['build-image', '-q', ...inputs(path, wheel), '--cache-dir', join(runners, String(++runner)), '--push', ref, '--tls-verify=false', ...flags]);
    return { ...run, uploaded: registry.stored() - stored };
  };
  const line = (name, run, cold, limit, layersNote, uploadNote) => {
    const ratio = run.seconds / cold.seconds;
    const s = run.summary;
    const built = s.layers.filter((l) => l.from === 'built').length;
    const hits = s.layers.filter((l) => l.from === 'registry').length;
    report(name, `${run.seconds.toFixed(2)} s, ${(ratio * 100).toFixed(1)} %`, limit ? `<= ${limit * 100} % of cold` : 'of cold', limit ? ratio <= limit : undefined);
    report('  layers from the registry / built', `${hits} / ${built}`, layersNote);
    report('  uploaded (the registry grew by)', mb(run.uploaded), uploadNote);
  };

  const registries = [];
  try {
    const [cached, plain] = await Promise.all([startBenchRegistry(), startBenchRegistry()]);
    registries.push(cached, plain);
    console.log('\nregistry cache (fresh runner each time: empty local cache; push to a local docker-registry, no archive):');

    const cold = await fresh(cached, `${cached.host}/bench/vllm:cold`, before, vllm['1.0']);
    report('cold: build + push, registry empty', `${cold.seconds.toFixed(1)} s, 100 %`, `${cold.summary.layers.length} layers, ${mb(cold.uploaded)} uploaded`);
    const sames = [];
    for (let i = 0; i < repeats; i++) sames.push(await fresh(cached, `${cached.host}/bench/vllm:same-${i}`, before, vllm['1.0']));
    line(`fresh runner, nothing changed${repeats > 1 ? ` (median of ${repeats})` : ''}`, median(sames), cold, 0.05, 'all from the registry', 'the config and manifest');
    const alike = sames.every((same) => same.summary.manifestDigest === cold.summary.manifestDigest);
    report('  same image as cold', alike ? 'yes' : 'NO', '', alike);
    const wheel = await fresh(cached, `${cached.host}/bench/vllm:wheel`, before, vllm['1.1']);
    line('fresh runner, one wheel changed', wheel, cold, 0.1, 'the new wheel and the image root built', 'only the changed layers');
    const path = await fresh(cached, `${cached.host}/bench/vllm:path`, after, vllm['1.1']);
    line('fresh runner, one store path changed', path, cold, 0.1, 'the new path\'s layer and the image root built', 'only the changed layers');

    console.log('\nthe same without the registry cache (--no-registry-cache):');
    const off = ['--no-registry-cache'];
    const coldOff = await fresh(plain, `${plain.host}/bench/vllm:cold`, before, vllm['1.0'], off);
    report('cold: build + push, registry empty', `${coldOff.seconds.toFixed(1)} s`, `${(coldOff.seconds / cold.seconds * 100).toFixed(1)} % of cold with the cache (the index costs)`);
    line('fresh runner, nothing changed', await fresh(plain, `${plain.host}/bench/vllm:same`, before, vllm['1.0'], off), coldOff, 0, 'every layer built again', 'nothing new');
    line('fresh runner, one wheel changed', await fresh(plain, `${plain.host}/bench/vllm:wheel`, before, vllm['1.1'], off), coldOff, 0, 'every layer built again', 'the changed layers');
    line('fresh runner, one store path changed', await fresh(plain, `${plain.host}/bench/vllm:path`, after, vllm['1.1'], off), coldOff, 0, 'every layer built again', 'the changed layers');

    // The archive route: a fresh runner builds the archive and skopeo copies it (its blob-info cache empty).
    const home = mkdtempSync(join(runners, 'skopeo-home-'));
    const archive = join(runners, 'image.tar');
    const start = process.hrtime.bigint();
    await runJson(cli, ['build-image', '-q', ...inputs(before, vllm['1.0']), '--cache-dir', join(runners, String(++runner)), '--output', archive]);
    execFileSync('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', `oci-archive:${archive}`, `docker://${plain.host}/bench/vllm:skopeo`], { env: { ...process.env, HOME: home }, stdio: ['ignore', 'ignore', 'inherit'] });
    const skopeo = Number(process.hrtime.bigint() - start) / 1e9;
    report('fresh runner, nothing changed: archive + skopeo copy', `${skopeo.toFixed(2)} s, ${(skopeo / cold.seconds * 100).toFixed(1)} %`, 'of cold with the cache');
    rmSync(archive, { force: true });
  } finally {
    for (const registry of registries) await registry.stop();
    for (const file of [runners, before, after]) rmSync(file, { recursive: true, force: true });
  }
}
