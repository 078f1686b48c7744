import { describe, expect, it } from 'vitest';
import { execFile, execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO } from '../helpers/cli.js';
import { tools } from '../helpers/tools.js';

/**
 * The NixOS module (nix/modules/vllm-rocm.nix), evaluated with real Nix against the stand-in lib of
 * test/nix/stub-lib-for-module-tests.nix (no nixpkgs here: see that file for what it does and does
 * not do), and its units set against ops/vllm-rocm@.service, checked by systemd-analyze verify.
 */

const HARNESS = join(REPO, 'test/nix/stub-lib-for-module-tests.nix');
const MODULE = join(REPO, 'nix/modules/vllm-rocm.nix');
const OPS = join(REPO, 'ops');
const LANES = { orchestrator: 11434, coder: 11435, fast_rag: 11436 } as const;

/** The few packages the module uses: podman by name, and writeShellScript as a real (tiny) derivation. */
const PKGS = `{
  podman = { name = "podman-4.9.4"; type = "derivation"; outPath = "/nix/store/00000000000000000000000000000000-podman-4.9.4"; };
  writeShellScript = name: text: derivation {
    inherit name text;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "printf '#!/bin/bash\\\\n%s' \\"$text\\" > $out; chmod +x $out" ];
    PATH = "/usr/bin:/bin";
  };
}`;
/** What NixOS itself defines that the module reads: the numbers of the video and render groups. */
const HOST = '{ users.groups.video.gid = 26; users.groups.render.gid = 303; }';
const OPS_LANES = `{
  orchestrator = { model = "vllm/orchestrator/bf16"; port = 11434; gpuMemoryUtilization = 0.48; };
  coder = { model = "vllm/coder/bf16"; port = 11435; gpuMemoryUtilization = 0.30; };
  fast_rag = { model = "vllm/fast_rag/bf16"; port = 11436; gpuMemoryUtilization = 0.15; maxModelLen = 8192; };
}`;

function evaluate(definitions: string, select = 'r') {
  const expr = `let r = import ${HARNESS} { module = import ${MODULE}; pkgs = ${PKGS}; hostConfig = ${HOST};
    definitions.services.vllm-rocm = ${definitions}; }; in ${select}`;
  // --read-write-mode: the derivations it names (the model checks) are written to the store, to be built.
  return spawnSync('nix-instantiate', ['--eval', '--strict', '--json', '--read-write-mode', '-E', expr], { encoding: 'utf8' });
}

function evaluateOk(definitions: string, select = 'r') {
  const run = evaluate(definitions, select);
  expect(run.status, run.stderr).toBe(0);
  return JSON.parse(run.stdout);
}

interface Service {
  description: string;
  wants: string[];
  after: string[];
  wantedBy: string[];
  environment: Record<string, string>;
  serviceConfig: Record<string, string | number | string[]>;
}

/** A unit file's sections as [key, value] lines, continuation lines joined as systemd joins them. */
function parseUnit(text: string): Record<string, [string, string][]> {
  const sections: Record<string, [string, string][]> = {};
  let current = '';
  for (const line of text.replace(/\\\n\s*/g, '').split('\n')) {
    if (line.startsWith('#') || line.trim() === '') continue;
    const section = /^\[(.+)\]$/.exec(line);
    if (section) {
      current = section[1]!;
      sections[current] = [];
      continue;
    }
    const eq = line.indexOf('=');
    sections[current]!.push([line.slice(0, eq), line.slice(eq + 1)]);
  }
  return sections;
}

/** The module's service rendered as unit text: its own attributes only (NixOS adds PATH and more). */
function renderUnit(service: Service, replace: (value: string) => string = (v) => v): string {
  const quote = (v: string) => (/[\s"\\]/.test(v) ? `"${v.replace(/["\\]/g, '\\$&')}"` : v);
  const lines = ['[Unit]', `Description=${service.description}`];
  for (const w of service.wants) lines.push(`Wants=${w}`);
  for (const a of service.after) lines.push(`After=${a}`);
  lines.push('', '[Service]');
  for (const name of Object.keys(service.environment).sort()) lines.push(`Environment=${quote(`${name}=${service.environment[name]}`)}`);
  for (const [key, value] of Object.entries(service.serviceConfig)) {
    for (const v of Array.isArray(value) ? value : [value]) lines.push(`${key}=${replace(String(v))}`);
  }
  lines.push('', '[Install]');
  for (const w of service.wantedBy) lines.push(`WantedBy=${w}`);
  return `${lines.join('\n')}\n`;
}

function envFile(file: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    if (line.startsWith('#') || !line.includes('=')) continue;
    env[line.slice(0, line.indexOf('='))] = line.slice(line.indexOf('=') + 1);
  }
  return env;
}

const PODMAN = '/nix/store/00000000000000000000000000000000-podman-4.9.4/bin/podman';

describe.runIf(tools('nix-instantiate', 'nix-store'))('the vllm-rocm NixOS module, evaluated with the stand-in lib', () => {
  it('parses, as do the stand-in lib and the flake', () => {
    for (const file of [MODULE, HARNESS, join(REPO, 'flake.nix')]) {
      execFileSync('nix-instantiate', ['--parse', file], { stdio: ['ignore', 'ignore', 'pipe'] });
    }
  });

  it('declares its options with types and defaults', () => {
    const options = evaluateOk(`{ lanes.a = { model = "m"; port = 8001; }; }`, 'r.options');
    expect(options).toEqual({
      enable: false,
      runFrom: 'image',
      image: 'nix2oci/vllm-rocm:0.12.0-rocm7.1',
      package: null,
      pythonPath: null,
      modelsDir: '/srv/models',
      user: 'vllm',
      host: '127.0.0.1',
      memoryMax: null,
      lanes: { a: { model: 'm', port: 8001, gpuMemoryUtilization: 0.3, maxModelLen: 32768, extraArgs: [] } },
    });
    // Disabled, it defines nothing.
    expect(evaluateOk(`{ lanes.a = { model = "m"; port = 8001; }; }`, 'r.config')).toEqual({});
    expect(evaluateOk(`{ lanes.a = { model = "m"; port = 8001; }; }`, 'r.failedAssertions')).toEqual([]);
  });

  it('gives the podman lanes the very units of ops/vllm-rocm@.service and ops/lanes/*.env', () => {
    const services: Record<string, Service> = evaluateOk(`{ enable = true; lanes = ${OPS_LANES}; }`, 'r.config.systemd.services');
    expect(Object.keys(services).sort()).toEqual(['vllm-rocm-coder', 'vllm-rocm-fast_rag', 'vllm-rocm-orchestrator']);
    const ops = readFileSync(join(OPS, 'vllm-rocm@.service'), 'utf8');
    for (const lane of Object.keys(LANES)) {
      const expected = parseUnit(ops.replaceAll('%i', lane));
      const actual = parseUnit(renderUnit(services[`vllm-rocm-${lane}`]!, (v) => v.replaceAll(PODMAN, '/usr/bin/podman')));
      expect(actual.Unit).toEqual(expected.Unit);
      expect(actual.Install).toEqual(expected.Install);
      // Every [Service] line but the environment and the model check (compared below) is the same.
      // (NixOS writes the keys sorted; the order of [Service] keys means nothing to systemd.)
      const rest = (lines: [string, string][]) =>
        lines.filter(([k]) => !['Environment', 'EnvironmentFile', 'ExecStartPre'].includes(k)).sort(([a], [b]) => a.localeCompare(b));
      expect(rest(actual.Service!)).toEqual(rest(expected.Service!));
      // The environment: what ops/lanes/common.env and ops/lanes/<lane>.env hold, with NixOS's group numbers.
      const files = { ...envFile(join(OPS, 'lanes/common.env')), ...envFile(join(OPS, `lanes/${lane}.env`)) };
      files.GPU_MEM_UTIL = String(Number(files.GPU_MEM_UTIL)); // 0.30 is written 0.3 by Nix
      expect(services[`vllm-rocm-${lane}`]!.environment).toEqual({ ...files, PODMAN_SYSTEMD_UNIT: '%n', VIDEO_GID: '26', RENDER_GID: '303' });
      expect(expected.Service!.filter(([k]) => k === 'EnvironmentFile').map(([, v]) => v)).toEqual([
        '/etc/vllm-rocm/common.env',
        `/etc/vllm-rocm/${lane}.env`,
      ]);
    }
  });

  it('refuses clashing ports, GPU shares adding up to 1 or more, model paths leaving modelsDir, and split arguments', () => {
    const failed = (lanes: string, more = '') => evaluateOk(`{ enable = true; lanes = ${lanes}; ${more} }`, 'r.failedAssertions');
    expect(failed(OPS_LANES)).toEqual([]);
    expect(
      failed(`{ a = { model = "a"; port = 8000; gpuMemoryUtilization = 0.2; }; b = { model = "b"; port = 8000; gpuMemoryUtilization = 0.2; }; }`),
    ).toEqual(['services.vllm-rocm.lanes: a and b both use port 8000']);
    expect(failed(`{ a = { model = "a"; port = 8000; gpuMemoryUtilization = 0.5; }; b = { model = "b"; port = 8001; gpuMemoryUtilization = 0.5; }; }`)).toEqual([
      'services.vllm-rocm.lanes: the GPU memory shares add up to 1 (a 0.5 + b 0.5); lanes share one GPU, so they must add up to less than 1',
    ]);
    expect(failed(`{ a = { model = "a"; port = 8000; gpuMemoryUtilization = 0.48; }; b = { model = "b"; port = 8001; gpuMemoryUtilization = 0.6; }; }`)[0]).toContain(
      'add up to 1.08 (a 0.48 + b 0.6)',
    );
    expect(failed(`{ a = { model = "/srv/models/a"; port = 8000; }; b = { model = "x/../../etc"; port = 8001; }; }`)).toEqual([
      'services.vllm-rocm.lanes.a.model: "/srv/models/a" must be a path relative to modelsDir (/srv/models), without ..',
      'services.vllm-rocm.lanes.b.model: "x/../../etc" must be a path relative to modelsDir (/srv/models), without ..',
    ]);
    expect(failed(`{ a = { model = "a"; port = 8000; extraArgs = [ "--served-model-name x" ]; }; }`)).toEqual([
      'services.vllm-rocm.lanes.a.extraArgs: each argument must be one word (EXTRA_VLLM_ARGS is split on whitespace): ["--served-model-name x"]',
    ]);
    expect(failed(`{ a = { model = "a"; port = 8000; }; }`, 'runFrom = "runtime";')).toEqual([
      'services.vllm-rocm: runFrom = "runtime" needs package (the runtime) and pythonPath (where the torch and vLLM wheels are installed)',
    ]);
  });

  it('refuses undeclared options and definitions of the wrong type, naming the option', () => {
    const fails = (definitions: string) => {
      const run = evaluate(definitions, 'r.options');
      expect(run.status).not.toBe(0);
      return run.stderr;
    };
    expect(fails(`{ lanes.a = { model = "m"; port = 8001; gpuMemoryUtilisation = 0.3; }; }`)).toContain(
      "The option `services.vllm-rocm.lanes.a.gpuMemoryUtilisation' does not exist.",
    );
    expect(fails(`{ lanes.a = { model = "m"; port = 80000; }; }`)).toContain(
      "A definition for option `services.vllm-rocm.lanes.a.port' is not of type `16 bit unsigned integer",
    );
    expect(fails(`{ lanes.a = { model = "m"; port = 8001; gpuMemoryUtilization = 1; }; }`)).toContain('is not of type `floating point number');
    expect(fails(`{ runFrom = "docker"; }`)).toContain('is not of type `one of "image", "runtime"');
    expect(fails(`{ lanes.a = { port = 8001; }; }`)).toContain("The option `services.vllm-rocm.lanes.a.model' is used but not defined.");
  });

  it('runs lanes from the runtime as the user with the GPU groups, the image settings and MemoryMax', () => {
    const runtime = `{ name = "vllm-rocm-runtime"; type = "derivation"; outPath = "/nix/store/11111111111111111111111111111111-vllm-rocm-runtime"; }`;
    const services: Record<string, Service> = evaluateOk(
      `{ enable = true; runFrom = "runtime"; package = ${runtime}; pythonPath = "/var/lib/vllm-rocm/site-packages"; memoryMax = "48G";
         lanes.coder = { model = "vllm/coder/bf16"; port = 11435; extraArgs = [ "--enable-prefix-caching" ]; }; }`,
      'r.config.systemd.services',
    );
    const coder = services['vllm-rocm-coder']!;
    const root = '/nix/store/11111111111111111111111111111111-vllm-rocm-runtime';
    expect(coder.serviceConfig).toMatchObject({
      User: 'vllm',
      SupplementaryGroups: ['video', 'render'],
      ExecStart: `${root}/bin/vllm-server`,
      MemoryMax: '48G',
      Restart: 'on-failure',
    });
    expect(JSON.stringify(services)).not.toContain('MemoryLimit');
    const image = JSON.parse(readFileSync(join(REPO, 'layers/vllm-rocm/image.json'), 'utf8'));
    expect(coder.environment).toMatchObject({
      MODEL_PATH: '/srv/models/vllm/coder/bf16',
      VLLM_PORT: '11435',
      VLLM_HOST: '127.0.0.1',
      GPU_MEM_UTIL: '0.3',
      EXTRA_VLLM_ARGS: '--served-model-name coder --enable-prefix-caching',
      PYTHONPATH: '/var/lib/vllm-rocm/site-packages',
      ROCM_HOME: root,
      LD_LIBRARY_PATH: `${root}/lib`,
      // The image's settings, from image.json itself.
      VLLM_ROCM_USE_AITER: image.env.VLLM_ROCM_USE_AITER,
      PYTORCH_ROCM_ARCH: image.env.PYTORCH_ROCM_ARCH,
      HIP_FORCE_DEV_KERNARG: image.env.HIP_FORCE_DEV_KERNARG,
    });
    const users = evaluateOk(`{ enable = true; lanes = { }; }`, 'r.config.users');
    expect(users.users.vllm).toEqual({ isSystemUser: true, group: 'vllm', extraGroups: ['video', 'render'] });
  });

  it("refuses at start a lane whose model is not a directory, as the ops unit's check does", () => {
    const dir = mkdtempSync(join(tmpdir(), 'nix2oci-models-'));
    try {
      mkdirSync(join(dir, 'vllm/coder/bf16'), { recursive: true });
      writeFileSync(join(dir, 'vllm/orchestrator'), 'not a directory');
      const drvs: Record<string, string[]> = evaluateOk(
        `{ enable = true; modelsDir = "${dir}"; lanes = ${OPS_LANES}; }`,
        'builtins.mapAttrs (_: s: builtins.attrNames (builtins.getContext s.serviceConfig.ExecStartPre)) r.config.systemd.services',
      );
      const script = (lane: string) => execFileSync('nix-store', ['--realise', drvs[`vllm-rocm-${lane}`]![0]!], { encoding: 'utf8' }).trim();
      const run = (file: string, args: string[] = [], env: Record<string, string> = {}) =>
        spawnSync(file, args, { encoding: 'utf8', env: { PATH: '/usr/bin:/bin', ...env } });

      expect(run(script('coder')).status).toBe(0);
      const missing = run(script('orchestrator'));
      expect(missing.status).toBe(1);
      expect(missing.stderr).toBe(
        `vllm-rocm-orchestrator: the model ${dir}/vllm/orchestrator/bf16 is not a directory (services.vllm-rocm.lanes.orchestrator.model, under modelsDir)\n`,
      );

      // ops/vllm-rocm@.service's ExecStartPre, with systemd's %i and $$ undone, run by sh with the lane's env files.
      const unit = parseUnit(readFileSync(join(OPS, 'vllm-rocm@.service'), 'utf8'));
      const pre = unit.Service!.find(([k]) => k === 'ExecStartPre')![1];
      const argv = /^\/bin\/sh -c '(.*)'$/.exec(pre);
      expect(argv, pre).not.toBeNull();
      const opsCheck = (lane: string) =>
        run('/bin/sh', ['-c', argv![1]!.replaceAll('%i', lane).replaceAll('$$', '$')], { ...envFile(join(OPS, `lanes/${lane}.env`)), MODELS_DIR: dir });
      expect(opsCheck('coder').status).toBe(0);
      const opsMissing = opsCheck('orchestrator');
      expect(opsMissing.status).toBe(1);
      expect(opsMissing.stderr).toBe(
        `vllm-rocm@orchestrator: the model /models/vllm/orchestrator/bf16 is ${dir}/vllm/orchestrator/bf16 on this host, which is not a directory (MODELS_DIR=${dir})\n`,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe.runIf(tools('nix-instantiate', 'nix-store', 'systemd-analyze'))('the units, checked by systemd-analyze verify', () => {
  it('passes for ops/vllm-rocm@.service and for the units the module generates', () => {
    const dir = mkdtempSync(join(tmpdir(), 'nix2oci-units-'));
    try {
      writeFileSync(join(dir, 'vllm-rocm@orchestrator.service'), readFileSync(join(OPS, 'vllm-rocm@.service')));
      const services: Record<string, Service> = evaluateOk(`{ enable = true; lanes = ${OPS_LANES}; }`, 'r.config.systemd.services');
      const drvs: Record<string, string[]> = evaluateOk(
        `{ enable = true; lanes = ${OPS_LANES}; }`,
        'builtins.mapAttrs (_: s: builtins.attrNames (builtins.getContext s.serviceConfig.ExecStartPre)) r.config.systemd.services',
      );
      const files = [join(dir, 'vllm-rocm@orchestrator.service')];
      for (const [name, service] of Object.entries(services)) {
        execFileSync('nix-store', ['--realise', drvs[name]![0]!], { stdio: ['ignore', 'ignore', 'pipe'] });
        // The stand-in podman path does not exist; the host's podman does (verify checks executables).
        const file = join(dir, `${name}.service`);
        writeFileSync(file, renderUnit(service, (v) => v.replaceAll(PODMAN, '/usr/bin/podman')));
        files.push(file);
      }
      const verify = spawnSync('systemd-analyze', ['verify', '--man=no', ...files], { encoding: 'utf8' });
      expect(verify.stderr).toBe('');
      expect(verify.status).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe.runIf(tools('curl'))('the health checks treat 503 as unhealthy', () => {
  it('fails each health command (image, compose, ops unit, module) when /health answers 503, passes on 200', async () => {
    let status = 200;
    const server = createServer((req, res) => {
      res.writeHead(req.url === '/health' ? status : 404);
      res.end();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as { port: number }).port;
    try {
      const image = JSON.parse(readFileSync(join(REPO, 'layers/vllm-rocm/image.json'), 'utf8')).healthcheck.test as string[];
      const compose = /test: (\[.*\])/.exec(readFileSync(join(OPS, 'docker-compose.nix.yml'), 'utf8'))![1]!;
      const unit = /--health-cmd "([^"]+)"/.exec(readFileSync(join(OPS, 'vllm-rocm@.service'), 'utf8'))![1]!;
      const module = /--health-cmd "([^"]+)"/.exec(readFileSync(MODULE, 'utf8').replace(/\\"/g, '"'))![1]!;
      const commands = [image.slice(1), JSON.parse(compose).slice(1) as string[], unit.split(' '), module.split(' ')];
      expect(commands.map((c) => c.join(' '))).toEqual(Array(4).fill('curl -fsS http://localhost:8000/health'));
      // Asynchronously: the server answers from this very process.
      const run = (argv: string[]) =>
        new Promise<{ status: number | null; stderr: string }>((resolve) => {
          const args = argv.slice(1).map((a) => a.replace('localhost:8000', `127.0.0.1:${port}`));
          execFile(argv[0]!, args, { timeout: 20_000, encoding: 'utf8' }, (error, _stdout, stderr) =>
            resolve({ status: error ? ((error as { code?: number }).code ?? null) : 0, stderr }),
          );
        });
      for (const command of commands) {
        status = 200;
        expect((await run(command)).status).toBe(0);
        status = 503;
        const dead = await run(command);
        expect(dead.status).toBe(22); // curl -f: HTTP error
        expect(dead.stderr).toContain('503');
      }
      // The unit kills an unhealthy container, so that systemd restarts it.
      expect(readFileSync(join(OPS, 'vllm-rocm@.service'), 'utf8')).toMatch(/--health-on-failure=kill[\s\S]*/);
      expect(readFileSync(join(OPS, 'vllm-rocm@.service'), 'utf8')).toMatch(/^Restart=on-failure$/m);
    } finally {
      server.close();
    }
  });
});
