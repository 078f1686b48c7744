import { execFileSync } from 'node:child_process';
import { closeSync, lstatSync, mkdtempSync, openSync, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { NarNode } from '../../src/nix/types.js';
import { nixBuild, exportClosure } from '../helpers/nix.js';

/** 118 chars: store path and entry names together exceed tar's 100-byte name field. */
export const LONG_DRV_NAME = `fixture-${'long-name-'.repeat(11)}`;
export const LONG_ENTRY = 'n'.repeat(200);
export const MARKER = 'MARKER-CONTENTS-0123456789';

/**
 * A store path with the awkward cases a NAR reader must get right, built by real Nix:
 * long names, deep nesting, non-ASCII names (incl. two whose UTF-16 order differs from their byte order),
 * a name with a newline, empty files and dirs, executables, symlinks to dirs, dangling symlinks,
 * a file of a few MB, and entries meant for byte-patching (`dots/xy`, `slash/a-b`, `order/aa`+`order/bb`).
 */
const FIXTURE_SCRIPT = String.raw`
set -e
mkdir -p $out/bin $out/empty-dir $out/dots $out/slash $out/order $out/uni
printf '#!/bin/sh\necho hi\n' > $out/bin/run
chmod +x $out/bin/run
: > $out/empty-file
: > $out/bin/empty-executable
chmod +x $out/bin/empty-executable
printf x > $out/dots/xy
printf y > $out/slash/a-b
printf A > $out/order/aa
printf B > $out/order/bb
printf '%s' '${MARKER}' > $out/marker.txt
seq 1 600000 > $out/big.txt
printf long > $out/${LONG_ENTRY}
d=$out/deep
for i in $(seq 1 40); do d=$d/level-$i; done
mkdir -p $d
echo bottom > $d/file.txt
printf x > "$out/héllo wörld.txt"
mkdir "$out/日本語"
echo > "$out/日本語/ファイル"
printf 1 > "$out/uni/～"
printf 2 > "$out/uni/🎉"
printf 3 > "$out/uni/z"
printf nl > "$out/new
line"
ln -s bin $out/link-to-dir
ln -s does-not-exist $out/dangling
ln -s ../big.txt $out/bin/rel-link
`;

export interface Fixtures {
  dir: string;
  /** The awkward store path. */
  fixture: string;
  /** Refers to `fixture` (symlink and text). */
  app: string;
  /** Also refers to `fixture`; exported separately to test merging. */
  other: string;
  /** Closure of app: app + fixture. */
  appExport: string;
  /** Closure of other: other + fixture. */
  otherExport: string;
  /** app alone, without fixture: an incomplete closure. */
  appOnlyExport: string;
}

export function buildFixtures(): Fixtures {
  const expr = `let fixture = mkDrv "${LONG_DRV_NAME}" ''${FIXTURE_SCRIPT.replace(/\$\{(?!out)/g, "''${")}'';
    in [ fixture
         (mkDrv "nix-reader-app" "mkdir -p $out/bin; ln -s \${fixture}/bin/run $out/bin/app; echo \${fixture} > $out/uses")
         (mkDrv "nix-reader-other" "echo \${fixture} > $out") ]`;
  const [fixture, app, other] = nixBuild(expr) as [string, string, string];
  const dir = mkdtempSync(join(tmpdir(), 'nix2oci-nix-reader-'));
  const appExport = join(dir, 'app.closure');
  const otherExport = join(dir, 'other.closure');
  const appOnlyExport = join(dir, 'app-only.closure');
  exportClosure([app], appExport);
  exportClosure([other], otherExport);
  exportPaths([app], appOnlyExport);
  return { dir, fixture, app, other, appExport, otherExport, appOnlyExport };
}

/** `nix-store --export` of exactly `paths` (not their closure). */
export function exportPaths(paths: string[], outFile: string): void {
  const fd = openSync(outFile, 'w');
  try {
    execFileSync('nix-store', ['--export', ...paths], { stdio: ['ignore', fd, 'pipe'] });
  } finally {
    closeSync(fd);
  }
}

/** A node with, for regular files, the sha256 of the contents. */
export type NodeWithHash = NarNode & { sha256?: string };

/**
 * The tree of a store path as it is on disk, in NAR order (entries sorted by the bytes of their names),
 * with each regular file's sha256: what reading its NAR must give.
 */
export function diskTree(root: string): NodeWithHash[] {
  const nodes: NodeWithHash[] = [];
  const walk = (rel: string): void => {
    const full = rel === '' ? root : join(root, rel);
    const st = lstatSync(full);
    if (st.isSymbolicLink()) nodes.push({ type: 'symlink', path: rel, target: readlinkSync(full) });
    else if (st.isFile()) {
      const sha256 = createHash('sha256').update(readFileSync(full)).digest('hex');
      nodes.push({ type: 'regular', path: rel, executable: (st.mode & 0o100) !== 0, size: st.size, sha256 });
    } else {
      nodes.push({ type: 'directory', path: rel });
      const names = readdirSync(full, { encoding: 'buffer' }).sort(Buffer.compare);
      for (const name of names) walk(rel === '' ? name.toString('utf8') : `${rel}/${name.toString('utf8')}`);
    }
  };
  walk('');
  return nodes;
}

/** The offset of the NAR string token (its length field) holding exactly `text`, searching from `from`. */
export function findToken(bytes: Buffer, text: string, from = 0): number {
  const data = Buffer.from(text);
  const token = Buffer.alloc(8 + Math.ceil(data.length / 8) * 8);
  token.writeUInt32LE(data.length, 0);
  data.copy(token, 8);
  const at = bytes.indexOf(token, from);
  if (at < 0) throw new Error(`token ${JSON.stringify(text)} not found`);
  return at;
}
