import { readNar } from '../nix/nar.js';
import { storePathProblem } from '../nix/store-path.js';
import { quote } from '../util/quote.js';
import type { NarVisitor, StorePathInfo } from '../nix/types.js';
import { UserError } from '../util/errors.js';
import type { LayerSource, TarSink } from './types.js';
import { codecOf, type Turns } from './codec.js';
import { countingSource } from './counting-source.js';
import { END_OF_ARCHIVE, type LayerFormat } from './format.js';
import { tarSegmentBytes, writeComposedLayer, type LayerOutput, type Written } from './writer.js';
import { byCodeUnits } from '../util/order.js';

/** Modes as the Nix store has them: everything read-only, executables and directories searchable. */
export const StoreModes = {
  directory: 0o555,
  file: 0o444,
  executable: 0o555,
} as const;

export interface StorePathsSourceOptions {
  /** Emit the `nix` and `nix/store` directory entries first (default true). */
  storeDirEntries?: boolean;
}

/**
 * The layer entries for some store paths: `nix/` and `nix/store/` (mode 0555), then each store path's
 * tree, paths in sorted order, each in NAR order (depth first, names sorted), under
 * `nix/store/<hash>-<name>/`, with the store's modes and symlink targets as they are.
 * The entries depend only on the paths given, so a path alone in a layer always gives the same layer.
 */
export function storePathsSource(paths: StorePathInfo[], options: StorePathsSourceOptions = {}): LayerSource {
  const sorted = [...paths].sort((a, b) => byCodeUnits(a.path, b.path));
  for (const [i, info] of sorted.entries()) {
    const problem = storePathProblem(info.path);
    if (problem) throw new UserError(`cannot put ${quote(info.path)} in a layer: ${problem}`);
    if (i > 0 && sorted[i - 1]!.path === info.path) throw new Error(`store path ${info.path} given twice for one layer`);
  }
  return async (sink) => {
    if (options.storeDirEntries ?? true) {
      await sink.add({ type: 'directory', name: 'nix', mode: StoreModes.directory });
      await sink.add({ type: 'directory', name: 'nix/store', mode: StoreModes.directory });
    }
    for (const info of sorted) await readNar(info, storePathVisitor(info, sink));
  };
}

/** Turns one store path's NAR nodes into tar entries. */
function storePathVisitor(info: StorePathInfo, sink: TarSink): NarVisitor {
  const root = info.path.slice(1); // `/nix/store/…` → `nix/store/…`
  const nameOf = (path: string) => (path === '' ? root : `${root}/${path}`);
  return {
    directory: (node) => sink.add({ type: 'directory', name: nameOf(node.path), mode: StoreModes.directory }),
    regular: (node, contents) =>
      sink.add({
        type: 'file',
        name: nameOf(node.path),
        mode: node.executable ? StoreModes.executable : StoreModes.file,
        size: node.size,
        body: contents,
      }),
    symlink: (node) => sink.add({ type: 'symlink', name: nameOf(node.path), target: node.target }),
  };
}

/** A store-path layer's first and last bytes, tar and stored: `nix/` and `nix/store/`, and the end-of-archive blocks. */
export interface StorePathsEnds {
  head: { tar: Buffer; stored: Buffer };
  end: { tar: Buffer; stored: Buffer };
}

/** The head and end of every store-path layer in a format (each compressed as a frame of its own). */
export async function storePathsEnds(format: LayerFormat): Promise<StorePathsEnds> {
  const codec = codecOf(format);
  const stored = (tar: Buffer) => (codec ? codec.frameSync(tar) : tar);
  const head = await tarSegmentBytes(storePathsSource([]), format.mtime);
  return { head: { tar: head, stored: stored(head) }, end: { tar: END_OF_ARCHIVE, stored: stored(END_OF_ARCHIVE) } };
}

/**
 * Writes a layer of store paths straight to `out`: the head, each path as a segment of its own, the
 * end. The same bytes as the layer cache composes from its parts, so a layer's digest does
 * not depend on whether a cache was used.
 */
export function writeStorePathsLayer(
  paths: StorePathInfo[],
  ends: StorePathsEnds,
  format: LayerFormat,
  out: LayerOutput,
  options: { turns?: Turns; onBytes?: (bytes: number) => void } = {},
): Promise<Written> {
  storePathsSource(paths); // checks the paths
  const sorted = [...paths].sort((a, b) => byCodeUnits(a.path, b.path));
  const segments = sorted.map((info) => countingSource(storePathsSource([info], { storeDirEntries: false }), options.onBytes));
  return writeComposedLayer(ends.head, segments, ends.end, format, out, options.turns);
}

/** Thrown through the NAR parser once a slice's last node is written. */
class SliceDone extends Error {}

/**
 * The entries of one slice of a store path (`--max-layer-size`): `nix/`, `nix/store/`, the directories
 * above the slice's first node (as the whole path's layer has them, so the image's tree is unchanged),
 * then NAR nodes `from` to `to` (exclusive) as `storePathsSource` writes them. Nodes before the slice are
 * skipped unread; reading stops after its last.
 */
export function storePathSliceSource(info: StorePathInfo, range: { from: number; to: number }): LayerSource {
  const problem = storePathProblem(info.path);
  if (problem) throw new UserError(`cannot put ${quote(info.path)} in a layer: ${problem}`);
  return async (sink) => {
    await sink.add({ type: 'directory', name: 'nix', mode: StoreModes.directory });
    await sink.add({ type: 'directory', name: 'nix/store', mode: StoreModes.directory });
    const write = storePathVisitor(info, sink);
    const above: string[] = []; // directories above the current node, outermost first
    let index = 0;
    const visit = async (path: string, emit: () => void | Promise<void>, isDirectory: boolean) => {
      const at = index++;
      if (at >= range.to) throw new SliceDone();
      while (above.length > 0 && !(above[above.length - 1] === '' || path.startsWith(`${above[above.length - 1]}/`))) above.pop();
      if (at === range.from) for (const dir of above) await write.directory({ type: 'directory', path: dir });
      if (at >= range.from) await emit();
      if (isDirectory) above.push(path);
    };
    try {
      await readNar(info, {
        directory: (node) => visit(node.path, () => write.directory(node), true),
        regular: (node, contents) => visit(node.path, () => write.regular(node, contents), false),
        symlink: (node) => visit(node.path, () => write.symlink(node), false),
      });
    } catch (err) {
      if (!(err instanceof SliceDone)) throw err;
    }
  };
}
