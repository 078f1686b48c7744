import { execFileSync } from 'node:child_process';
import { truncateSync, statSync } from 'node:fs';
import { join } from 'node:path';

/** A file's content: text, bytes, or pseudo-random (incompressible, deterministic) bytes made by Python. */
export type WheelFileContent = string | Buffer | { random: number; seed?: number };

export interface WheelFileSpec {
  content: WheelFileContent;
  /** Unix mode stored in the zip's external attributes (default 0o644). */
  mode?: number;
  /** Store instead of deflate, for this file. */
  stored?: boolean;
}

export interface MakeWheelOptions {
  /** Directory the wheel is written to. */
  dir: string;
  /** Project name as it appears in the file name (`demo_pkg`). */
  name: string;
  version: string;
  /** `python-abi-platform`, default `py3-none-any`. */
  tag?: string;
  build?: string;
  /** Files at the wheel's root (purelib or platlib per rootIsPurelib), by path: `demo/__init__.py`. */
  files?: Record<string, WheelFileContent | WheelFileSpec>;
  requires?: string[];
  requiresPython?: string;
  providesExtra?: string[];
  entryPoints?: { console_scripts?: Record<string, string>; gui_scripts?: Record<string, string> };
  /** `{name}-{version}.data/scripts/<name>` files. */
  dataScripts?: Record<string, WheelFileContent | WheelFileSpec>;
  /** Other `.data` keys: `{ headers: { 'demo.h': '…' }, data: {...}, purelib: {...}, platlib: {...} }`. */
  data?: Record<string, Record<string, WheelFileContent | WheelFileSpec>>;
  /** WHEEL's Root-Is-Purelib, default true. */
  rootIsPurelib?: boolean;
  /** WHEEL's Wheel-Version, default `1.0`. */
  wheelVersion?: string;
  /** More METADATA header lines, as written (`License-Expression: MIT`, `Summary: …`). */
  metadataLines?: string[];
  /** METADATA's Name when it should differ from `name`. */
  metadataName?: string;
  /**
   * Write every structure in zip64 form, as zipfile does past 4 GiB or 65535 entries: a zip64
   * end-of-central-directory record and zip64 extra fields in every local and central header.
   */
  zip64?: boolean;
  /** Zip directory entries (`demo/`) for every directory, as some wheel builders do. */
  dirEntries?: boolean;
  /** Ways to break the wheel. */
  corrupt?: {
    /** The zip holds different bytes of the same length for this path than RECORD hashes. */
    tamper?: string;
    /** RECORD states this size for the path instead of the real one. */
    recordSize?: { path: string; size: number };
    /** Leave this path out of RECORD. */
    unrecorded?: string;
    /** Entries added verbatim after the files and not listed in RECORD (`../evil.py`, `/etc/x`, a duplicate name). */
    rawEntries?: { name: string; content: string }[];
    /** Cut this many bytes off the end of the finished file. */
    truncate?: number;
  };
  /** Zip compression for files not marked `stored`: default deflated. */
  compression?: 'deflated' | 'stored';
}

/** Builds a wheel with Python's zipfile (as real wheel builders do) and returns its path. Deterministic for equal options. */
export function makeWheel(options: MakeWheelOptions): string {
  const tag = options.tag ?? 'py3-none-any';
  const fileName = `${options.name}-${options.version}${options.build ? `-${options.build}` : ''}-${tag}.whl`;
  const path = join(options.dir, fileName);
  const distInfo = `${options.metadataName ?? options.name}-${options.version}.dist-info`;
  const dataDir = `${options.name}-${options.version}.data`;

  const files: { name: string; spec: WheelFileSpec }[] = [];
  const add = (name: string, value: WheelFileContent | WheelFileSpec) =>
    files.push({ name, spec: isSpec(value) ? value : { content: value } });
  for (const [name, value] of Object.entries(options.files ?? {})) add(name, value);
  for (const [name, value] of Object.entries(options.dataScripts ?? {})) add(`${dataDir}/scripts/${name}`, value);
  for (const [key, entries] of Object.entries(options.data ?? {})) {
    for (const [name, value] of Object.entries(entries)) add(`${dataDir}/${key}/${name}`, value);
  }

  const metadata = [
    'Metadata-Version: 2.1',
    `Name: ${options.metadataName ?? options.name}`,
    `Version: ${options.version}`,
    ...(options.requiresPython ? [`Requires-Python: ${options.requiresPython}`] : []),
    ...(options.providesExtra ?? []).map((e) => `Provides-Extra: ${e}`),
    ...(options.requires ?? []).map((r) => `Requires-Dist: ${r}`),
    ...(options.metadataLines ?? []),
    '',
    'A test wheel.',
    '',
  ].join('\n');
  add(`${distInfo}/METADATA`, metadata);
  add(
    `${distInfo}/WHEEL`,
    `Wheel-Version: ${options.wheelVersion ?? '1.0'}\nGenerator: nix2oci-test\nRoot-Is-Purelib: ${options.rootIsPurelib ?? true ? 'true' : 'false'}\nTag: ${tag}\n\n`,
  );
  if (options.entryPoints) {
    let text = '';
    for (const group of ['console_scripts', 'gui_scripts'] as const) {
      const points = options.entryPoints[group];
      if (!points) continue;
      text += `[${group}]\n` + Object.entries(points).map(([k, v]) => `${k} = ${v}\n`).join('') + '\n';
    }
    add(`${distInfo}/entry_points.txt`, text);
  }

  const spec = {
    path,
    recordName: `${distInfo}/RECORD`,
    compression: options.compression ?? 'deflated',
    zip64: options.zip64 ?? false,
    dirEntries: options.dirEntries ?? false,
    corrupt: options.corrupt ?? {},
    files: files.map(({ name, spec: s }) => ({
      name,
      mode: s.mode ?? 0o644,
      stored: s.stored ?? false,
      ...encodeContent(s.content),
    })),
  };
  execFileSync('python3', ['-c', MAKE_WHEEL_PY], { input: JSON.stringify(spec), stdio: ['pipe', 'inherit', 'inherit'] });
  if (options.corrupt?.truncate) truncateSync(path, statSync(path).size - options.corrupt.truncate);
  return path;
}

function isSpec(value: WheelFileContent | WheelFileSpec): value is WheelFileSpec {
  return typeof value === 'object' && !Buffer.isBuffer(value) && 'content' in value;
}

function encodeContent(content: WheelFileContent): { base64?: string; random?: number; seed?: number } {
  if (typeof content === 'string') return { base64: Buffer.from(content).toString('base64') };
  if (Buffer.isBuffer(content)) return { base64: content.toString('base64') };
  return { random: content.random, seed: content.seed ?? 0 };
}

const MAKE_WHEEL_PY = String.raw`
import base64, hashlib, json, random, sys, warnings, zipfile
warnings.simplefilter('ignore')  # zipfile warns about the duplicate names some tests add on purpose
spec = json.load(sys.stdin)
corrupt = spec['corrupt']
default = zipfile.ZIP_STORED if spec['compression'] == 'stored' else zipfile.ZIP_DEFLATED
DATE = (1980, 1, 1, 0, 0, 0)
if spec['zip64']:
    # zipfile switches to zip64 past these limits; at 0 it writes zip64 records for a small file too.
    zipfile.ZIP64_LIMIT = 0
    zipfile.ZIP_FILECOUNT_LIMIT = 0

def chunks(f):
    if 'base64' in f:
        yield base64.b64decode(f['base64'])
        return
    rng = random.Random(f['seed'])
    left = f['random']
    while left > 0:
        n = min(left, 1 << 20)
        yield rng.randbytes(n)
        left -= n

def info(name, mode, method):
    zi = zipfile.ZipInfo(name, DATE)
    if not mode & 0o170000:
        mode |= 0o100000  # a regular file, as zipfile records st_mode
    zi.external_attr = (mode & 0xFFFF) << 16
    zi.create_system = 3
    zi.compress_type = method
    return zi

record = []
with zipfile.ZipFile(spec['path'], 'w') as zf:
    if spec['dirEntries']:
        dirs = sorted({n.rsplit('/', i)[0] for f in spec['files'] for n in [f['name']] for i in range(1, n.count('/') + 1)})
        for d in dirs:
            zi = info(d + '/', 0o40755, zipfile.ZIP_STORED)
            zf.writestr(zi, b'')
    for f in spec['files']:
        zi = info(f['name'], f['mode'], zipfile.ZIP_STORED if f['stored'] else default)
        h = hashlib.sha256()
        size = 0
        tamper = corrupt.get('tamper') == f['name']
        with zf.open(zi, 'w', force_zip64=spec['zip64']) as out:
            for chunk in chunks(f):
                h.update(chunk)
                size += len(chunk)
                if tamper:
                    chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                    tamper = False
                out.write(chunk)
        if corrupt.get('unrecorded') == f['name']:
            continue
        rs = corrupt.get('recordSize')
        if rs and rs['path'] == f['name']:
            size = rs['size']
        digest = base64.urlsafe_b64encode(h.digest()).rstrip(b'=').decode()
        record.append('%s,sha256=%s,%d' % (f['name'], digest, size))
    for raw in corrupt.get('rawEntries', []):
        zf.writestr(info(raw['name'], 0o644, default), raw['content'])
    record.append(spec['recordName'] + ',,')
    zf.writestr(info(spec['recordName'], 0o644, default), '\n'.join(record) + '\n')
`;
