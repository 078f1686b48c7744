import { describe, expect, it } from 'vitest';
import { useDaemonAndImage, withWrongDiffId } from '../helpers/containerd.js';
import { startDockerd } from '../helpers/docker.js';
import { tools } from '../helpers/tools.js';

/*
 * Docker (Debian 12's docker.io 20.10) loads nix2oci's archives, whose layers are several gzip members
 * each (`docker load` computes every layer's diffID from the decompressed stream and compares it with
 * the config's), and runs the image.
 */
describe.runIf(tools('dockerd', 'docker', 'nix-build', 'nix-store', 'tar'))('Docker and multi-member gzip layers', () => {
  const fixture = useDaemonAndImage(startDockerd);

  it('builds a data layer of several gzip members', () => {
    expect(fixture.image.dataLayerMembers).toBeGreaterThanOrEqual(3);
  });

  // The oci-archive also holds a docker-style manifest.json, which is what `docker load` reads.
  for (const format of ['docker-archive', 'oci-archive'] as const) {
    it(`loads and runs the ${format}`, () => {
      const { daemon, image } = fixture;
      const archive = format === 'oci-archive' ? image.ociArchive : image.dockerArchive;
      expect(daemon.docker(['load', '-i', archive])).toContain(`Loaded image: ${image.name}`);
      expect(daemon.docker(['run', '--rm', '--network', 'none', image.name])).toBe(image.expectedOutput);
      daemon.docker(['rmi', image.name]);
    });
  }

  it('refuses a layer whose diffID is not the one its config names', () => {
    const bad = withWrongDiffId(fixture.image.dockerArchive, fixture.dir, 'localhost/nix2oci-wrong-diffid:test');
    expect(() => fixture.daemon.docker(['load', '-i', bad])).toThrow(/invalid diffID for layer 0/);
  });
});
