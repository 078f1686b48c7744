import { randomBytes } from 'node:crypto';
import { lstatSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { manifestDigest } from '../../src/model/assemble.js';
import type { Image } from '../../src/model/image.js';
import { writeImage, type OutputFormat } from '../../src/output/write.js';
import { tools } from '../helpers/tools.js';
import { BUSYBOX_PATH, DATA_PATH, demoConfig, demoImage, demoLayers, run, tempDir } from './fixtures.js';

/*
 * The archives as real tools see them: skopeo inspects, umoci unpacks, runc and podman run them.
 * Each run labels its images with a nonce, so their IDs are its own and can be removed safely.
 */

const nonce = randomBytes(6).toString('hex');
let dir: string;
let layers: Awaited<ReturnType<typeof demoLayers>>;
const images = new Map<OutputFormat, Image>();
const outputs = new Map<OutputFormat, string>();
const formats: OutputFormat[] = ['oci-archive', 'docker-archive', 'oci-layout'];
const tagOf = (format: OutputFormat) => `nix2oci-test/tools-${nonce}:${format}`;

beforeAll(async () => {
  dir = tempDir();
  layers = await demoLayers(dir);
  for (const format of formats) {
    const { image } = await demoImage(dir, { layers, format, nonce: `${nonce}-${format}`, tags: [tagOf(format)] });
    const output = join(dir, format === 'oci-layout' ? 'layout' : `${format}.tar`);
    await writeImage(image, { format, output });
    images.set(format, image);
    outputs.set(format, output);
  }
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const transport = (format: OutputFormat) => (format === 'oci-layout' ? 'oci' : format);

describe.runIf(tools('skopeo'))('skopeo', () => {
  it.each(formats)('inspects %s: digest, layers and config', (format) => {
    const image = images.get(format)!;
    const ref = `${transport(format)}:${outputs.get(format)}`;
    const inspected = JSON.parse(run('skopeo', ['inspect', ref]));
    const diffIds = image.layers.map((l) => l.diffId);
    if (format === 'docker-archive') {
      // skopeo presents a docker-archive's layers uncompressed, under their diff IDs.
      expect(inspected.Layers).toEqual(diffIds);
    } else {
      expect(inspected.Digest).toBe(manifestDigest(image));
      expect(inspected.Layers).toEqual(image.layers.map((l) => l.descriptor.digest));
      expect(run('skopeo', ['inspect', '--raw', ref])).toBe(image.manifestBytes.toString());
    }
    expect(inspected.Architecture).toBe('amd64');
    expect(inspected.Os).toBe('linux');
    expect(inspected.Created).toBe('2023-11-14T22:13:20Z');
    const config = JSON.parse(run('skopeo', ['inspect', '--config', ref]));
    expect(config.rootfs.diff_ids).toEqual(diffIds);
    expect(config.config).toMatchObject({
      Entrypoint: [`${BUSYBOX_PATH}/bin/busybox`],
      Cmd: ['echo', 'default', 'command'],
      Env: [`PATH=${BUSYBOX_PATH}/bin:/bin`, 'GREETING=hi'],
      WorkingDir: '/tmp',
      ExposedPorts: { '53/udp': {}, '8000/tcp': {} },
      StopSignal: 'SIGINT',
    });
  });

  it('finds the image in an oci-archive by its recorded name', () => {
    const ref = `oci-archive:${outputs.get('oci-archive')}:${tagOf('oci-archive')}`;
    expect(JSON.parse(run('skopeo', ['inspect', ref])).Digest).toBe(manifestDigest(images.get('oci-archive')!));
  });

  it('reads the oci-archive as a docker-archive too (its manifest.json)', () => {
    const inspected = JSON.parse(run('skopeo', ['inspect', `docker-archive:${outputs.get('oci-archive')}`]));
    expect(inspected.Layers).toEqual(images.get('oci-archive')!.layers.map((l) => l.diffId));
    expect(inspected.RepoTags).toEqual([]);
  });
});

describe.runIf(tools('umoci', 'runc'))('umoci and runc', () => {
  let bundle: string;
  beforeAll(() => {
    bundle = join(dir, 'bundle');
    run('umoci', ['unpack', '--image', `${outputs.get('oci-layout')}:${tagOf('oci-layout')}`, bundle]);
  });

  it('unpacks the files with their modes and symlinks', () => {
    const root = join(bundle, 'rootfs');
    const mode = (path: string) => lstatSync(join(root, path)).mode & 0o7777;
    expect(mode(`${BUSYBOX_PATH}/bin/busybox`)).toBe(0o555);
    expect(mode(BUSYBOX_PATH)).toBe(0o555);
    expect(mode(`${DATA_PATH}/greeting.txt`)).toBe(0o444);
    expect(mode(`${DATA_PATH}/run.sh`)).toBe(0o555);
    expect(mode('tmp')).toBe(0o1777);
    expect(readFileSync(join(root, DATA_PATH, 'greeting.txt'), 'utf8')).toBe('hello from a nix2oci layer\n');
    expect(readFileSync(join(root, BUSYBOX_PATH, 'bin/busybox')).equals(readFileSync('/bin/busybox'))).toBe(true);
    expect(readlinkSync(join(root, 'bin/sh'))).toBe(`${BUSYBOX_PATH}/bin/busybox`);
    expect(readlinkSync(join(root, BUSYBOX_PATH, 'bin/sh'))).toBe('busybox');
  });

  it('gives a runtime config that runc runs', () => {
    const configFile = join(bundle, 'config.json');
    const config = JSON.parse(readFileSync(configFile, 'utf8'));
    expect(config.process.args).toEqual([`${BUSYBOX_PATH}/bin/busybox`, 'echo', 'default', 'command']);
    expect(config.process.cwd).toBe('/tmp');
    expect(config.process.env).toContain('GREETING=hi');
    delete config.process.rlimits;
    config.process.terminal = false;
    writeFileSync(configFile, JSON.stringify(config));
    expect(run('runc', ['run', '--bundle', bundle, `nix2oci-test-${nonce}`])).toBe('default command\n');
  });
});

describe.runIf(tools('podman'))('podman', () => {
  let env: NodeJS.ProcessEnv;
  const loaded = new Set<string>();
  beforeAll(() => {
    // podman run works here only without default ulimits and with runc (see the machine notes).
    const conf = join(dir, 'containers.conf');
    writeFileSync(conf, '[containers]\ndefault_ulimits = []\n');
    env = { CONTAINERS_CONF: conf };
  });
  afterAll(() => {
    for (const id of loaded) {
      try {
        run('podman', ['rmi', '--force', id], { env });
      } catch {
        // Already gone.
      }
    }
  });
  const podman = (...args: string[]) => run('podman', args, { env });

  it.each(formats)('loads %s, records the tag and runs busybox', (format) => {
    const image = images.get(format)!;
    const id = image.configDescriptor.digest.slice(7);
    // From a directory podman derives a name from the path it is given, which must be lowercase: give it a relative one.
    const out = run('podman', ['load', '-i', basename(outputs.get(format)!)], { env, cwd: dirname(outputs.get(format)!) });
    loaded.add(id);
    expect(out).toMatch(/Loaded image/);
    const names = podman('images', '--noheading', '--filter', `id=${id}`, '--format', '{{.Repository}}:{{.Tag}}').trim().split('\n');
    if (format === 'oci-layout') {
      // podman names an image loaded from a directory after the directory, whatever the index says.
      expect(names).toContain('localhost/layout:latest');
    } else {
      expect(names.some((n) => n.endsWith(`/${tagOf(format)}`))).toBe(true);
    }
    const runArgs = ['--runtime', 'runc', 'run', '--rm', '--network', 'none'];
    expect(podman(...runArgs, id)).toBe('default command\n');
    expect(podman(...runArgs, id, 'sh', '-c', `cat ${DATA_PATH}/greeting.txt; echo $GREETING; pwd`)).toBe(
      'hello from a nix2oci layer\nhi\n/tmp\n',
    );
  });

  it('honours a healthcheck from a docker-archive only, as the build warns', async () => {
    const healthcheck = { test: ['CMD-SHELL', 'true'], interval: '5s', retries: 2 };
    const seen: Record<string, unknown> = {};
    for (const format of ['docker-archive', 'oci-archive'] as OutputFormat[]) {
      const config = demoConfig({ healthcheck, labels: { 'test.nonce': `${nonce}-health-${format}` } });
      const { image, warnings } = await demoImage(dir, { layers, config, format, tags: [] });
      expect(warnings.length).toBe(format === 'docker-archive' ? 0 : 1);
      const file = join(dir, `health-${format}.tar`);
      await writeImage(image, { format, output: file });
      const id = image.configDescriptor.digest.slice(7);
      podman('load', '-i', file);
      loaded.add(id);
      seen[format] = JSON.parse(podman('image', 'inspect', id))[0].Healthcheck ?? null;
    }
    expect(seen['docker-archive']).toMatchObject({ Test: ['CMD-SHELL', 'true'], Interval: 5_000_000_000, Retries: 2 });
    expect(seen['oci-archive']).toBeNull();
  });
});
