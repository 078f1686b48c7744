import { digestHex } from '../model/manifest.js';
import type { SbomFacts } from './facts.js';

/** One input of a build, by sha256: an export file, the path-info file, the recipe, a wheel. */
export interface ProvenanceInput {
  /** What it is to the build: `closure`, `path-info`, `recipe`, `wheel`. */
  kind: string;
  /** The file as given on the command line or in the recipe (`stdin` for `-`). */
  name: string;
  sha256: string;
}

/** The build type (a URI, as SLSA wants): the parameters and dependencies mean what README's "SBOM and provenance" says. */
export const BUILD_TYPE = 'urn:nix2oci:build-image:v1';

/**
 * An in-toto Statement (v1) whose subject is the image manifest and whose predicate is SLSA provenance
 * v1: the builder (nix2oci and its version), the flags and recipe values that decide the image's bytes
 * (`externalParameters`), SOURCE_DATE_EPOCH (`internalParameters`), and every input file by sha256
 * (`resolvedDependencies`). Nothing varies between runs: no start time, no invocation id, no host.
 */
export function provenanceStatement(options: { facts: SbomFacts; inputs: ProvenanceInput[]; parameters: Record<string, unknown> }): Buffer {
  const { facts } = options;
  const statement = {
    _type: 'https://in-toto.io/Statement/v1',
    subject: [
      {
        name: facts.image.name ?? facts.image.manifest.digest,
        digest: { sha256: digestHex(facts.image.manifest.digest) },
        ...(facts.image.tags.length > 0 && { annotations: { tags: facts.image.tags.join(' ') } }),
      },
    ],
    predicateType: 'https://slsa.dev/provenance/v1',
    predicate: {
      buildDefinition: {
        buildType: BUILD_TYPE,
        externalParameters: sortKeys(options.parameters),
        internalParameters: { sourceDateEpoch: facts.image.created },
        resolvedDependencies: options.inputs.map((input) => ({
          name: input.name,
          digest: { sha256: input.sha256 },
          annotations: { kind: input.kind },
        })),
      },
      runDetails: {
        builder: { id: `pkg:npm/${facts.tool.name}@${facts.tool.version}`, version: { [facts.tool.name]: facts.tool.version } },
        metadata: {},
      },
    },
  };
  return Buffer.from(`${JSON.stringify(statement, null, 2)}\n`, 'utf8');
}

/** Keys sorted, undefined values left out: the same parameters give the same bytes. */
function sortKeys(record: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(
    Object.keys(record)
      .filter((k) => record[k] !== undefined)
      .sort()
      .map((k) => [k, record[k]]),
  );
}
