#!/usr/bin/env node
// Times `nix2oci push` (through dist/) against `skopeo copy` of the same image archive to a registry:
// a cold push (the registry has none of the blobs) and a warm one (it has them all).
//
//   node scripts/bench-push.mjs ARCHIVE [HOST:PORT]
//
// ARCHIVE is an oci-archive, docker-archive or oci-layout directory. Without HOST:PORT, two local
// docker-registry instances are started (one per tool, so neither finds the other's blobs) and
// stopped afterwards. With HOST:PORT, each tool pushes to its own repository there (plain HTTP or
// unverified TLS: this is a benchmark against a local registry, not a deployment).
// Targets (from the push issue): cold no slower than skopeo; warm under 2 s for 100 layers.
import { spawn } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readdirSync, readSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startBenchRegistry } from './bench/registry.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const cli = join(root, 'dist', 'cli', 'main.js');

const [archiveArg, registryArg] = process.argv.slice(2);
if (!archiveArg || archiveArg === '--help') {
  process.stderr.write('usage: node scripts/bench-push.mjs ARCHIVE [HOST:PORT]\n');
  process.exit(archiveArg ? 0 : 2);
}
const archive = resolve(archiveArg);
if (!existsSync(archive)) fail(`${archive} does not exist`);
if (!existsSync(cli)) fail('dist/cli/main.js is missing: run `npx tsc -p tsconfig.json` first');

const started = [];
try {
  const [skopeoRegistry, nix2ociRegistry] = registryArg
    ? [registryArg, registryArg]
    : await Promise.all([startRegistry(started), startRegistry(started)]);
  const stamp = Date.now().toString(36);
  const skopeoRef = `${skopeoRegistry}/bench/skopeo-${stamp}:latest`;
  const nix2ociRef = `${nix2ociRegistry}/bench/nix2oci-${stamp}:latest`;
  const source = skopeoSource(archive);
  const skopeo = ['copy', '--quiet', '--dest-tls-verify=false', source, `docker://${skopeoRef}`];
  const nix2oci = [cli, 'push', archive, '--registry', nix2ociRef, '--tls-verify=false', '--quiet'];

  process.stderr.write(`bench-push: ${archive} (${mib(sizeOf(archive))} MiB) to ${registryArg ?? 'two local registries'}\n`);
  const results = {};
  results.skopeoCold = await timed('skopeo copy, cold', 'skopeo', skopeo);
  results.nix2ociCold = await timed('nix2oci push, cold', process.execPath, nix2oci);
  results.nix2ociWarm = await timed('nix2oci push, warm', process.execPath, nix2oci);
  results.skopeoWarm = await timed('skopeo copy, warm', 'skopeo', skopeo);

  const ratio = results.nix2ociCold / results.skopeoCold;
  process.stdout.write(`cold: nix2oci takes ${ratio.toFixed(2)}x skopeo's time (target: at most 1.00x) ${ratio <= 1 ? 'ok' : 'MISSED'}\n`);
  process.stdout.write(`warm: nix2oci ${results.nix2ociWarm.toFixed(2)} s (target for 100 layers: under 2 s)\n`);
  process.stdout.write(`BENCH_PUSH_JSON ${JSON.stringify({ archive, ...results })}\n`);
} catch (err) {
  process.stderr.write(`bench-push: ${err.message}\n`);
  process.exitCode = 1;
} finally {
  for (const registry of started) await registry.stop();
}

/** Runs a command to completion and prints and returns its wall-clock seconds; throws when it fails. */
async function timed(label, command, args) {
  const begin = process.hrtime.bigint();
  await new Promise((resolvePromise, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (b) => (stderr += b));
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolvePromise() : reject(new Error(`${label} failed (exit ${code}): ${stderr.trim()}`))));
  });
  const seconds = Number(process.hrtime.bigint() - begin) / 1e9;
  process.stdout.write(`${label.padEnd(22)} ${seconds.toFixed(2).padStart(8)} s\n`);
  return seconds;
}

/** skopeo's name for the archive: `oci:DIR`, `oci-archive:FILE` or `docker-archive:FILE`. */
function skopeoSource(path) {
  if (statSync(path).isDirectory()) return `oci:${path}`;
  const names = tarNames(path);
  if (names.has('oci-layout') || (names.has('index.json') && !names.has('manifest.json'))) return `oci-archive:${path}`;
  if (names.has('manifest.json')) return `docker-archive:${path}`;
  throw new Error(`${path} is not an OCI or Docker archive`);
}

/** Top-level member names of a tar, read header by header (skipping the data, so big archives are quick). */
function tarNames(file) {
  const fd = openSync(file, 'r');
  const names = new Set();
  const header = Buffer.alloc(512);
  try {
    for (let offset = 0; readSync(fd, header, 0, 512, offset) === 512 && header[0] !== 0; ) {
      const name = header.toString('utf8', 0, 100).replace(/\0.*$/s, '').replace(/^\.\//, '');
      const size = parseInt(header.toString('ascii', 124, 136).replace(/\0.*$/s, '').trim() || '0', 8);
      names.add(name);
      offset += 512 + Math.ceil(size / 512) * 512;
    }
  } finally {
    closeSync(fd);
  }
  return names;
}

/** A local docker-registry (scripts/bench/registry.mjs), stopped by the caller; returns its host. */
async function startRegistry(registries) {
  const registry = await startBenchRegistry();
  registries.push(registry);
  return registry.host;
}

function sizeOf(path) {
  const info = statSync(path);
  if (!info.isDirectory()) return info.size;
  let total = 0;
  const blobs = join(path, 'blobs', 'sha256');
  for (const name of existsSync(blobs) ? readdirSync(blobs) : []) total += statSync(join(blobs, name)).size;
  return total;
}

function mib(bytes) {
  return (bytes / 1048576).toFixed(1);
}

function fail(message) {
  process.stderr.write(`bench-push: ${message}\n`);
  process.exit(1);
}
