import { describe, expect, it } from 'vitest';
import { startContainerd, useDaemonAndImage, withWrongDiffId } from '../helpers/containerd.js';
import { tools } from '../helpers/tools.js';

/*
 * containerd (Debian 12's 1.6) imports nix2oci's archives, whose layers are several gzip members each,
 * unpacks them (computing every layer's diffID from the decompressed stream and comparing it with the
 * config's) and runs the image with runc.
 */
describe.runIf(tools('containerd', 'ctr', 'runc', 'nix-build', 'nix-store', 'tar'))('containerd and multi-member gzip layers', () => {
  const fixture = useDaemonAndImage(startContainerd);

  it('builds a data layer of several gzip members', () => {
    expect(fixture.image.dataLayerMembers).toBeGreaterThanOrEqual(3);
  });

  for (const format of ['oci-archive', 'docker-archive'] as const) {
    it(`imports, unpacks and runs the ${format}`, () => {
      const { daemon, image } = fixture;
      const archive = format === 'oci-archive' ? image.ociArchive : image.dockerArchive;
      expect(daemon.ctr(['images', 'import', '--snapshotter', 'native', archive])).toContain(`unpacking ${image.name}`);
      const check = daemon.ctr(['images', 'check']);
      expect(check).toMatch(new RegExp(`${image.name.replace(/[.:/]/g, '\\$&')} .* complete \\(\\d+/\\d+\\) .* true`));
      const output = daemon.ctr(['run', '--rm', '--snapshotter', 'native', '--runtime', 'io.containerd.runc.v2', image.name, `multimember-${format}`]);
      expect(output).toBe(image.expectedOutput);
      daemon.ctr(['images', 'rm', '--sync', image.name]);
    });
  }

  it('refuses a layer whose diffID is not the one its config names', () => {
    const bad = withWrongDiffId(fixture.image.dockerArchive, fixture.dir, 'localhost/nix2oci-wrong-diffid:test');
    expect(() => fixture.daemon.ctr(['images', 'import', '--snapshotter', 'native', bad])).toThrow(/wrong diff id calculated on extraction/);
  });
});
