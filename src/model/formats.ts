import { UserError } from '../util/errors.js';

/** What `--format` can ask for. */
export type OutputFormat = 'oci-archive' | 'docker-archive' | 'oci-layout';

export const OUTPUT_FORMATS: readonly OutputFormat[] = ['oci-archive', 'docker-archive', 'oci-layout'];

export function parseOutputFormat(text: string): OutputFormat {
  if ((OUTPUT_FORMATS as readonly string[]).includes(text)) return text as OutputFormat;
  throw new UserError(`unknown format "${text}": expected one of ${OUTPUT_FORMATS.join(', ')}`);
}
