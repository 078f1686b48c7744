import { digestHex } from '../model/manifest.js';
import { imagePurl, isoSeconds, storePathPurl, uuidFrom, wheelPurl, type SbomFacts } from './facts.js';

/**
 * The SPDX 2.3 JSON document of an image: the image, its layers, a package per store path (checksum:
 * the NAR's sha256) and per wheel (checksum: the wheel file's sha256), and the relationships: the
 * image CONTAINS its layers, a layer CONTAINS what it holds, a store path DEPENDS_ON each reference, a
 * wheel DEPENDS_ON what serves its requirements. Written by hand (the format is plain JSON and no
 * well-kept JavaScript library writes SPDX 2.3); the tests validate it against SPDX's own schema.
 * The same facts give the same bytes: the namespace comes from the manifest digest, the time from
 * SOURCE_DATE_EPOCH, and every list keeps the facts' sorted order.
 */
export function spdxDocument(facts: SbomFacts): Buffer {
  const { image } = facts;
  const imageId = 'SPDXRef-Image';
  const layerId = (digest: string) => `SPDXRef-Layer-${digestHex(digest)}`;
  const storePathId = (path: string) => `SPDXRef-StorePath-${path.slice('/nix/store/'.length, '/nix/store/'.length + 32)}`;
  const wheelId = (name: string) => `SPDXRef-Wheel-${name.replace(/[^A-Za-z0-9.-]/g, '-')}`;
  const wheelNames = new Set(facts.wheels.map((w) => w.name));

  const packages: Record<string, unknown>[] = [
    {
      SPDXID: imageId,
      name: image.name ?? image.manifest.digest,
      ...(image.tags[0]?.includes(':') && { versionInfo: image.tags[0].slice(image.tags[0].lastIndexOf(':') + 1) }),
      downloadLocation: 'NOASSERTION',
      filesAnalyzed: false,
      checksums: [{ algorithm: 'SHA256', checksumValue: digestHex(image.manifest.digest) }],
      licenseConcluded: 'NOASSERTION',
      licenseDeclared: 'NOASSERTION',
      copyrightText: 'NOASSERTION',
      primaryPackagePurpose: 'CONTAINER',
      externalRefs: [purlRef(imagePurl(image))],
      comment: `OCI image manifest ${image.manifest.digest}${image.tags.length > 0 ? `, tags ${image.tags.join(', ')}` : ''}`,
    },
  ];
  const relationships: Record<string, string>[] = [{ spdxElementId: 'SPDXRef-DOCUMENT', relationshipType: 'DESCRIBES', relatedSpdxElement: imageId }];
  const seenLayers = new Set<string>();
  for (const layer of facts.layers) {
    if (seenLayers.has(layer.digest)) continue;
    seenLayers.add(layer.digest);
    packages.push({
      SPDXID: layerId(layer.digest),
      name: `layer ${layer.digest}`,
      downloadLocation: 'NOASSERTION',
      filesAnalyzed: false,
      checksums: [{ algorithm: 'SHA256', checksumValue: digestHex(layer.digest) }],
      licenseConcluded: 'NOASSERTION',
      licenseDeclared: 'NOASSERTION',
      copyrightText: 'NOASSERTION',
      primaryPackagePurpose: 'ARCHIVE',
      comment: `image layer blob; diffID ${layer.diffId}`,
    });
    relationships.push({ spdxElementId: imageId, relationshipType: 'CONTAINS', relatedSpdxElement: layerId(layer.digest) });
  }
  for (const p of facts.storePaths) {
    packages.push({
      SPDXID: storePathId(p.path),
      name: p.name,
      ...(p.version !== null && { versionInfo: p.version }),
      packageFileName: p.path,
      downloadLocation: 'NOASSERTION',
      filesAnalyzed: false,
      ...(p.narHash !== null && { checksums: [{ algorithm: 'SHA256', checksumValue: p.narHash }] }),
      licenseConcluded: 'NOASSERTION',
      licenseDeclared: 'NOASSERTION',
      copyrightText: 'NOASSERTION',
      externalRefs: [purlRef(storePathPurl(p))],
      comment: p.narHash !== null ? `Nix store path ${p.path}; checksum: sha256 of its NAR (${p.narSize} bytes)` : `Nix store path ${p.path}`,
    });
    for (const digest of p.layers) relationships.push({ spdxElementId: layerId(digest), relationshipType: 'CONTAINS', relatedSpdxElement: storePathId(p.path) });
    for (const ref of p.references) relationships.push({ spdxElementId: storePathId(p.path), relationshipType: 'DEPENDS_ON', relatedSpdxElement: storePathId(ref) });
  }
  for (const w of facts.wheels) {
    const license = w.license && 'expression' in w.license ? w.license.expression : 'NOASSERTION';
    packages.push({
      SPDXID: wheelId(w.name),
      name: w.name,
      versionInfo: w.version,
      packageFileName: w.fileName,
      downloadLocation: 'NOASSERTION',
      ...(w.homepage && { homepage: w.homepage }),
      filesAnalyzed: false,
      ...(w.sha256 !== null && { checksums: [{ algorithm: 'SHA256', checksumValue: w.sha256 }] }),
      licenseConcluded: 'NOASSERTION',
      licenseDeclared: license,
      ...(w.license && 'name' in w.license && { licenseComments: `METADATA License: ${w.license.name}` }),
      copyrightText: 'NOASSERTION',
      ...(w.summary && { summary: w.summary }),
      primaryPackagePurpose: 'LIBRARY',
      externalRefs: [purlRef(wheelPurl(w))],
      comment: w.sha256 !== null ? `Python wheel ${w.fileName} (${w.size} bytes); checksum: sha256 of the wheel file` : `Python wheel ${w.fileName}`,
    });
    for (const digest of w.layers) relationships.push({ spdxElementId: layerId(digest), relationshipType: 'CONTAINS', relatedSpdxElement: wheelId(w.name) });
    for (const r of w.requires) {
      if (r.served === null) continue;
      const target = 'storePath' in r.served ? storePathId(r.served.storePath) : wheelNames.has(r.served.wheel) ? wheelId(r.served.wheel) : null;
      if (target) relationships.push({ spdxElementId: wheelId(w.name), relationshipType: 'DEPENDS_ON', relatedSpdxElement: target });
    }
  }
  const document = {
    spdxVersion: 'SPDX-2.3',
    dataLicense: 'CC0-1.0',
    SPDXID: 'SPDXRef-DOCUMENT',
    name: image.name ? `${image.name}@${image.manifest.digest}` : image.manifest.digest,
    documentNamespace: `urn:uuid:${uuidFrom(`spdx:${image.manifest.digest}`)}`,
    creationInfo: { created: isoSeconds(image.created), creators: [`Tool: ${facts.tool.name}-${facts.tool.version}`] },
    packages,
    relationships: unique(relationships),
  };
  return Buffer.from(`${JSON.stringify(document, null, 2)}\n`, 'utf8');
}

function purlRef(locator: string): Record<string, string> {
  return { referenceCategory: 'PACKAGE-MANAGER', referenceType: 'purl', referenceLocator: locator };
}

/** A requirement served twice by one target (extras) is one edge. */
function unique(relationships: Record<string, string>[]): Record<string, string>[] {
  const seen = new Set<string>();
  return relationships.filter((r) => {
    const key = `${r.spdxElementId} ${r.relationshipType} ${r.relatedSpdxElement}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}
