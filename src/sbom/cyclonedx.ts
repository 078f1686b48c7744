import { Enums, Models, Serialize, Spec } from '@cyclonedx/cyclonedx-library';
import { imagePurl, storePathPurl, uuidFrom, wheelPurl, type SbomFacts } from './facts.js';

/** The CycloneDX version written: 1.6, what Dependency-Track and the scanners read today. */
const CYCLONEDX_SPEC = Spec.Spec1dot6;

/**
 * The CycloneDX JSON document of an image, made with the CycloneDX project's own library: the image as
 * `metadata.component` (a container, its purl the manifest digest), a component per store path
 * (`pkg:nix/…`, SHA-256 of its NAR, `nix:store_path`) and per wheel (`pkg:pypi/…`, SHA-256 of the
 * wheel file, its license), each with the layers holding it (`nix2oci:layer`), and the dependency
 * graph: references, and requirements as the build resolved them. Lists are sorted by the library
 * and the serial number comes from the manifest digest: the same facts give the same bytes.
 */
export function cyclonedxDocument(facts: SbomFacts): Buffer {
  const { image } = facts;
  const root = new Models.Component(Enums.ComponentType.Container, image.name ?? image.manifest.digest, {
    bomRef: image.manifest.digest,
    purl: imagePurl(image),
    ...(image.tags[0]?.includes(':') && { version: image.tags[0].slice(image.tags[0].lastIndexOf(':') + 1) }),
    hashes: new Models.HashDictionary([[Enums.HashAlgorithm['SHA-256'], image.manifest.digest.slice('sha256:'.length)]]),
    properties: new Models.PropertyRepository([
      ...image.tags.map((t) => new Models.Property('nix2oci:tag', t)),
      ...facts.layers.map((l) => new Models.Property('nix2oci:layer', l.digest)),
    ]),
  });
  const bom = new Models.Bom({
    serialNumber: `urn:uuid:${uuidFrom(`cyclonedx:${image.manifest.digest}`)}`,
    metadata: new Models.Metadata({
      timestamp: new Date(image.created * 1000),
      component: root,
      tools: new Models.Tools({
        components: new Models.ComponentRepository([new Models.Component(Enums.ComponentType.Application, facts.tool.name, { version: facts.tool.version })]),
      }),
    }),
  });
  const layerProperties = (digests: string[]) => digests.map((d) => new Models.Property('nix2oci:layer', d));
  const byPath = new Map<string, Models.Component>();
  for (const p of facts.storePaths) {
    const component = new Models.Component(Enums.ComponentType.Library, p.name, {
      bomRef: p.path,
      ...(p.version !== null && { version: p.version }),
      purl: storePathPurl(p),
      hashes: new Models.HashDictionary(p.narHash !== null ? [[Enums.HashAlgorithm['SHA-256'], p.narHash]] : []),
      properties: new Models.PropertyRepository([
        new Models.Property('nix:store_path', p.path),
        ...(p.narSize !== null ? [new Models.Property('nix:nar_size', String(p.narSize))] : []),
        ...layerProperties(p.layers),
      ]),
    });
    byPath.set(p.path, component);
    bom.components.add(component);
  }
  for (const p of facts.storePaths) for (const ref of p.references) byPath.get(p.path)!.dependencies.add(byPath.get(ref)!.bomRef);
  const byWheel = new Map<string, Models.Component>();
  for (const w of facts.wheels) {
    const licenses = new Models.LicenseRepository();
    if (w.license) licenses.add('expression' in w.license ? new Models.LicenseExpression(w.license.expression) : new Models.NamedLicense(w.license.name));
    const component = new Models.Component(Enums.ComponentType.Library, w.name, {
      bomRef: wheelPurl(w),
      version: w.version,
      purl: wheelPurl(w),
      ...(w.summary && { description: w.summary }),
      hashes: new Models.HashDictionary(w.sha256 !== null ? [[Enums.HashAlgorithm['SHA-256'], w.sha256]] : []),
      licenses,
      properties: new Models.PropertyRepository([new Models.Property('nix2oci:wheel_file', w.fileName), ...layerProperties(w.layers)]),
    });
    byWheel.set(w.name, component);
    bom.components.add(component);
  }
  for (const w of facts.wheels) {
    for (const r of w.requires) {
      const target = r.served === null ? undefined : 'storePath' in r.served ? byPath.get(r.served.storePath) : byWheel.get(r.served.wheel);
      if (target) byWheel.get(w.name)!.dependencies.add(target.bomRef);
    }
  }
  // The image depends on what it holds directly: the closure's roots (nothing else refers to them) and the wheels.
  const referenced = new Set(facts.storePaths.flatMap((p) => p.references));
  for (const p of facts.storePaths) if (!referenced.has(p.path)) root.dependencies.add(byPath.get(p.path)!.bomRef);
  for (const component of byWheel.values()) root.dependencies.add(component.bomRef);

  const serializer = new Serialize.JsonSerializer(new Serialize.JSON.Normalize.Factory(CYCLONEDX_SPEC));
  return Buffer.from(`${serializer.serialize(bom, { sortLists: true, space: 2 })}\n`, 'utf8');
}
