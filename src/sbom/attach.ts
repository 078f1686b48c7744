import { join } from 'node:path';
import { artifactOf, ArtifactTypes, ATTACHMENT_ANNOTATION, type Artifact } from '../model/artifact.js';
import { writeFileAtomically } from '../util/atomic.js';
import { UserError } from '../util/errors.js';
import { SBOM_CHOICES, type SbomChoice } from '../recipe/schema.js';
import { cyclonedxDocument } from './cyclonedx.js';
import type { SbomFacts } from './facts.js';
import { provenanceStatement, type ProvenanceInput } from './provenance.js';
import { spdxDocument } from './spdx.js';

export type { SbomChoice };

/** One document about an image: what it is, its file name under `--sbom-dir`, its bytes. */
export interface AttachedDocument {
  kind: 'spdx' | 'cyclonedx' | 'provenance';
  artifactType: string;
  fileName: string;
  bytes: Buffer;
}

/** `spdx`, `cyclonedx` or `both`, from a flag or the recipe; anything else is a one-line error. */
export function parseSbomChoice(text: string, where: string): SbomChoice {
  if ((SBOM_CHOICES as readonly string[]).includes(text)) return text as SbomChoice;
  throw new UserError(`${where}: unknown SBOM format ${JSON.stringify(text)} (use ${SBOM_CHOICES.join(', ')})`);
}

/** The documents asked for, in a fixed order (SPDX, CycloneDX, provenance). */
export function sbomDocuments(options: {
  facts: SbomFacts;
  sbom: SbomChoice | undefined;
  provenance: { inputs: ProvenanceInput[]; parameters: Record<string, unknown> } | undefined;
}): AttachedDocument[] {
  const { facts, sbom } = options;
  const documents: AttachedDocument[] = [];
  if (sbom === 'spdx' || sbom === 'both') documents.push({ kind: 'spdx', artifactType: ArtifactTypes.spdx, fileName: 'sbom.spdx.json', bytes: spdxDocument(facts) });
  if (sbom === 'cyclonedx' || sbom === 'both') {
    documents.push({ kind: 'cyclonedx', artifactType: ArtifactTypes.cyclonedx, fileName: 'sbom.cdx.json', bytes: cyclonedxDocument(facts) });
  }
  if (options.provenance) {
    documents.push({ kind: 'provenance', artifactType: ArtifactTypes.inToto, fileName: 'provenance.intoto.json', bytes: provenanceStatement({ facts, ...options.provenance }) });
  }
  return documents;
}

/** Each document as an artifact manifest whose subject is the image manifest (OCI 1.1). */
export function attachmentsOf(facts: SbomFacts, documents: AttachedDocument[]): Artifact[] {
  return documents.map((d) =>
    artifactOf({ artifactType: d.artifactType, document: d.bytes, subject: facts.image.manifest, annotations: { [ATTACHMENT_ANNOTATION]: d.kind } }),
  );
}

/** Writes each document into `dir` (which must exist), atomically. */
export async function writeSbomDir(dir: string, documents: AttachedDocument[]): Promise<void> {
  for (const d of documents) await writeFileAtomically(join(dir, d.fileName), d.bytes);
}
