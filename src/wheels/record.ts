/**
 * RECORD (PEP 376 / PEP 427): one CSV row per file, `path,algorithm=urlsafe-base64-digest,size`.
 * Parsed and written as Python's csv module does (quotes only where needed), so pip and
 * importlib.metadata read what we write.
 */
import { UserError } from '../util/errors.js';

export type HashAlgorithm = 'sha256' | 'sha384' | 'sha512';

export interface RecordRow {
  path: string;
  /** Null for RECORD itself and its signatures (RECORD.jws, RECORD.p7s), which cannot hash themselves. */
  hash: { algorithm: HashAlgorithm; hex: string } | null;
  size: number | null;
}

const ALGORITHMS: ReadonlySet<string> = new Set(['sha256', 'sha384', 'sha512']);
const HEX_LENGTH: Record<HashAlgorithm, number> = { sha256: 64, sha384: 96, sha512: 128 };

export function parseRecord(text: string, where: string): RecordRow[] {
  const rows: RecordRow[] = [];
  parseCsv(text, where).forEach((fields, index) => {
    // Made only for a message: torch's RECORD has tens of thousands of rows.
    const at = () => `${where}: line ${index + 1}`;
    if (fields.length === 1 && fields[0] === '') return;
    if (fields.length !== 3) throw new UserError(`${at()}: expected 3 fields (path,hash,size), got ${fields.length}`);
    const [path, hashField, sizeField] = fields as [string, string, string];
    if (path === '') throw new UserError(`${at()}: empty path`);
    let hash: RecordRow['hash'] = null;
    if (hashField !== '') {
      const eq = hashField.indexOf('=');
      const algorithm = eq > 0 ? hashField.slice(0, eq) : '';
      if (!ALGORITHMS.has(algorithm)) {
        throw new UserError(`${at()}: ${path} has hash "${hashField}"; RECORD hashes must be sha256, sha384 or sha512`);
      }
      const encoded = hashField.slice(eq + 1);
      if (!/^[A-Za-z0-9_-]+=*$/.test(encoded)) throw new UserError(`${at()}: ${path} has a malformed ${algorithm} hash`);
      hash = { algorithm: algorithm as HashAlgorithm, hex: Buffer.from(encoded, 'base64url').toString('hex') };
      const expectedLength = HEX_LENGTH[hash.algorithm];
      if (hash.hex.length !== expectedLength) throw new UserError(`${at()}: ${path} has a malformed ${algorithm} hash`);
    }
    let size: number | null = null;
    if (sizeField !== '') {
      if (!/^\d+$/.test(sizeField)) throw new UserError(`${at()}: ${path} has size "${sizeField}", not a number`);
      size = Number(sizeField);
    }
    rows.push({ path, hash, size });
  });
  return rows;
}

/** `sha256=<urlsafe base64 without padding>` as RECORD writes a digest. */
export function recordHash(algorithm: HashAlgorithm, digest: Buffer): string {
  return `${algorithm}=${digest.toString('base64url')}`;
}

/** One RECORD line (with its `\n`) as Python's csv.writer quotes it. */
export function formatRecordLine(path: string, hash: string, size: number | null): string {
  // Hashes and sizes never need quoting.
  return `${csvField(path)},${hash},${size === null ? '' : size}\n`;
}

function csvField(value: string): string {
  return /[",\r\n]/.test(value) ? `"${value.replace(/"/g, '""')}"` : value;
}

/** RFC 4180 CSV with Python's defaults: `"` quoting, `""` escape, `\n` or `\r\n` row ends. */
function parseCsv(text: string, where: string): string[][] {
  // Almost every RECORD quotes nothing: split it directly (torch's has tens of thousands of rows).
  if (!text.includes('"')) {
    const lines = text.split(/\r?\n|\r/);
    if (lines[lines.length - 1] === '') lines.pop();
    return lines.map((line) => line.split(','));
  }
  return parseQuotedCsv(text, where);
}

function parseQuotedCsv(text: string, where: string): string[][] {
  const rows: string[][] = [];
  let row: string[] = [];
  let field = '';
  let quoted = false;
  let i = 0;
  let line = 1;
  while (i < text.length) {
    const c = text[i]!;
    if (quoted) {
      if (c === '"') {
        if (text[i + 1] === '"') {
          field += '"';
          i += 2;
          continue;
        }
        quoted = false;
      } else {
        if (c === '\n') line++;
        field += c;
      }
      i++;
      continue;
    }
    if (c === '"' && field === '') quoted = true;
    else if (c === ',') {
      row.push(field);
      field = '';
    } else if (c === '\n' || c === '\r') {
      if (c === '\r' && text[i + 1] === '\n') i++;
      row.push(field);
      rows.push(row);
      row = [];
      field = '';
      line++;
    } else field += c;
    i++;
  }
  if (quoted) throw new UserError(`${where}: line ${line}: unterminated quoted field`);
  if (field !== '' || row.length > 0) {
    row.push(field);
    rows.push(row);
  }
  return rows;
}
