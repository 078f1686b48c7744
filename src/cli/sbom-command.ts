import { existsSync } from 'node:fs';
import { Command, Option } from 'commander';
import { parseBoolean } from './flags.js';
import { UserError } from '../util/errors.js';
import type { Image } from '../model/image.js';

const FORMATS = ['spdx', 'cyclonedx', 'provenance'] as const;
type DocumentFormat = (typeof FORMATS)[number];

/**
 * `nix2oci sbom IMAGE`: the SBOM of an image nix2oci built, from an oci-archive, an oci-layout, a
 * docker-archive or a registry reference. The attached document when there is one (an artifact in the
 * layout's index.json, a referrer in the registry); otherwise one rebuilt from what the image's layers
 * hold (their contents annotations), with a warning saying what such an SBOM lacks.
 */
export function sbomCommand(): Command {
  return new Command('sbom')
    .description("Print the SBOM of an image nix2oci built: the attached document, or one rebuilt from the image's layers.")
    .argument('<image>', 'an oci-archive, oci-layout or docker-archive path, or a registry reference HOST[:PORT]/REPO[:TAG|@DIGEST]')
    .addOption(new Option('--format <format>', 'which document: spdx, cyclonedx or provenance (default: the attached SBOM, SPDX first)').choices(FORMATS))
    .option('--image <name>', 'which image of an archive holding several (e.g. nix2oci/demo:latest)')
    .option('--creds <user:password>', 'credentials for the registry')
    .option('--authfile <file>', 'auth file to read registry credentials from')
    .option('--cert-dir <dir>', 'directory with CA certificates for the registry')
    .option('--tls-verify [bool]', 'verify TLS certificates; false also allows plain HTTP', parseBoolean, true)
    .action(async (target: string, flags: { format?: DocumentFormat; image?: string; creds?: string; authfile?: string; certDir?: string; tlsVerify: boolean }) => {
      const image = await openImage(target, flags);
      const { ArtifactTypes } = await import('../model/artifact.js');
      const typeOf: Record<DocumentFormat, string> = { spdx: ArtifactTypes.spdx, cyclonedx: ArtifactTypes.cyclonedx, provenance: ArtifactTypes.inToto };
      const wanted = flags.format ? [flags.format] : (['spdx', 'cyclonedx'] as const);
      for (const format of wanted) {
        const attached = image.attachments?.find((a) => a.artifactType === typeOf[format]);
        const document = attached?.blobs.find((b) => b.descriptor.mediaType === typeOf[format]);
        if (document) {
          process.stdout.write(document.bytes);
          return;
        }
      }
      if (flags.format === 'provenance') throw new UserError(`${target} has no provenance attached (build it with --provenance)`);
      const [{ factsFromImage }, { spdxDocument }, { cyclonedxDocument }] = await Promise.all([
        import('../sbom/rebuild.js'),
        import('../sbom/spdx.js'),
        import('../sbom/cyclonedx.js'),
      ]);
      process.stderr.write(
        `warning: ${target} has no SBOM attached; this one is rebuilt from what its layers hold: no NAR hashes, references, wheel hashes or licenses (build with --sbom for those)\n`,
      );
      const created = createdOf(image) ?? (Number(process.env.SOURCE_DATE_EPOCH ?? '') || 1);
      const facts = factsFromImage(existsSync(target) ? await withScannedContents(image) : image, created);
      process.stdout.write(flags.format === 'cyclonedx' ? cyclonedxDocument(facts) : spdxDocument(facts));
    });
}

/** A path on disk is read as an archive or layout; anything else is taken as a registry reference. */
async function openImage(target: string, flags: { image?: string; creds?: string; authfile?: string; certDir?: string; tlsVerify: boolean }): Promise<Image> {
  if (existsSync(target)) {
    const { readImage } = await import('../output/read.js');
    return readImage(target, { tag: flags.image });
  }
  const [{ parseReference }, { pullManifestAndAttachments }] = await Promise.all([import('../model/reference.js'), import('../registry/pull.js')]);
  let ref;
  try {
    ref = parseReference(target);
  } catch (err) {
    throw new UserError(`${target}: no such file or directory, and not a registry reference (${(err as Error).message})`);
  }
  return pullManifestAndAttachments(ref, { creds: flags.creds, authfile: flags.authfile, certDir: flags.certDir, tlsVerify: flags.tlsVerify });
}

/** The config's `created`, in seconds (what SOURCE_DATE_EPOCH was at the build), when the config was read. */
function createdOf(image: Image): number | undefined {
  try {
    const created = (JSON.parse(image.configBytes.toString('utf8')) as { created?: unknown }).created;
    const ms = typeof created === 'string' ? Date.parse(created) : NaN;
    return Number.isFinite(ms) ? Math.floor(ms / 1000) : undefined;
  } catch {
    return undefined;
  }
}

/** Layers whose contents the manifest does not name (a docker-archive, a layer of too many paths) are read to find their store paths. */
async function withScannedContents(image: Image): Promise<Image> {
  const { scanLayer } = await import('../layer/scan.js');
  const layers = [];
  for (const [i, layer] of image.layers.entries()) {
    if (layer.contents.length > 0) {
      layers.push(layer);
      continue;
    }
    const { storePaths } = await scanLayer(layer.open(), `layer ${i + 1} (${layer.descriptor.digest})`);
    layers.push({ ...layer, contents: storePaths });
  }
  return { ...image, layers };
}
