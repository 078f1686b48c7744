import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Ajv2019 } from 'ajv/dist/2019.js';
import { Spec, Validation } from '@cyclonedx/cyclonedx-library';

/** SPDX's own 2.3 schema, vendored (see test/sbom/SPDX-SCHEMA.md). */
const validateSpdx = new Ajv2019({ strict: false, allErrors: true }).compile(JSON.parse(readFileSync(join(import.meta.dirname, '../sbom/spdx-2.3-schema.json'), 'utf8')));

/** Null when the SPDX document is valid against SPDX's schema, else the errors. */
export function spdxErrors(text: string): string | null {
  return validateSpdx(JSON.parse(text)) ? null : JSON.stringify(validateSpdx.errors).slice(0, 1000);
}

/** Null when the CycloneDX document is valid (the CycloneDX library's own strict validator), else the errors. */
export async function cyclonedxErrors(text: string): Promise<string | null> {
  const errors = await new Validation.JsonStrictValidator(Spec.Version.v1dot6).validate(text);
  return errors === null ? null : JSON.stringify(errors).slice(0, 1000);
}

