import type { Image } from '../model/image.js';
import { isStorePath, storePathName } from '../nix/store-path.js';
import { parseWheelFileName } from '../wheels/filename.js';
import { byCodeUnits } from '../util/order.js';
import { sha256Digest } from '../model/manifest.js';
import { parseDrvName, TOOL_NAME, toolVersion, type SbomFacts } from './facts.js';

/**
 * An SBOM's facts from an image alone, for an image nix2oci built without one attached: what each
 * layer holds, as its `contents` say (the manifest's annotations, or a scan). Store paths and wheels
 * are listed with their layers, names and versions; NAR hashes, references, wheel hashes and licenses
 * are not in an image and are left out.
 */
export function factsFromImage(image: Image, created: number): SbomFacts {
  const storePaths = new Map<string, string[]>();
  const wheels = new Map<string, { fileName: string; layers: string[] }>();
  for (const layer of image.layers) {
    for (const item of layer.contents) {
      if (isStorePath(item)) {
        storePaths.set(item, [...(storePaths.get(item) ?? []), layer.descriptor.digest]);
      } else if (/^[^/:]+\.whl(: |$)/.test(item)) {
        const fileName = item.replace(/: .*$/, '');
        const entry = wheels.get(fileName) ?? { fileName, layers: [] };
        entry.layers.push(layer.descriptor.digest);
        wheels.set(fileName, entry);
      }
    }
  }
  const unique = (digests: string[]) => [...new Set(digests)].sort(byCodeUnits);
  return {
    image: {
      name: image.tags.length > 0 ? image.tags[0]!.replace(/:[^:/]*$/, '') : null,
      tags: [...image.tags],
      manifest: { mediaType: image.manifestMediaType, digest: sha256Digest(image.manifestBytes), size: image.manifestBytes.length },
      created,
    },
    tool: { name: TOOL_NAME, version: toolVersion() },
    layers: image.layers.map((l) => ({ digest: l.descriptor.digest, diffId: l.diffId })),
    storePaths: [...storePaths]
      .map(([path, layers]) => ({
        path,
        hashPart: path.slice('/nix/store/'.length, '/nix/store/'.length + 32),
        ...parseDrvName(storePathName(path)),
        narHash: null,
        narSize: null,
        references: [],
        layers: unique(layers),
      }))
      .sort((a, b) => byCodeUnits(a.path, b.path)),
    wheels: [...wheels.values()]
      .flatMap(({ fileName, layers }) => {
        try {
          const parsed = parseWheelFileName(fileName);
          return [{ name: parsed.name, version: parsed.version, fileName, sha256: null, size: null, requires: [], layers: unique(layers) }];
        } catch {
          return [];
        }
      })
      .sort((a, b) => byCodeUnits(a.name, b.name)),
  };
}
