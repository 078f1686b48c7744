import type { NarNode, StorePathInfo } from '../nix/types.js';
import { narListingKey } from './keys.js';
import { isRecord, isSize, type CacheStore } from './store.js';

const isNode = (v: unknown): v is NarNode =>
  isRecord(v) &&
  typeof v.path === 'string' &&
  ((v.type === 'directory') ||
    (v.type === 'regular' && typeof v.executable === 'boolean' && isSize(v.size)) ||
    (v.type === 'symlink' && typeof v.target === 'string'));
/** A list of NAR nodes, as a memo keeps them (checked for shape: the cache's contents are not trusted). */
export const isListedNodes = (v: unknown): v is NarNode[] => Array.isArray(v) && v.every(isNode);
const isListing = (v: unknown): v is { nodes: NarNode[] } => isRecord(v) && isListedNodes(v.nodes);

/**
 * A store path's NAR listing, kept in the cache by the path's NAR hash (its files cannot differ), with
 * only the nodes `keep` takes: the wheel checks index a closure's libraries, interpreters and
 * site-packages on every build, and a warm build then reads a few small entries instead of every NAR.
 * A listing already `noted` (taken as the export was indexed, or recalled with its index) is used as it is.
 */
export function memoizedListing(
  store: CacheStore,
  list: (info: StorePathInfo) => Promise<NarNode[]>,
  keep: (node: NarNode) => boolean,
  noted: (info: StorePathInfo) => NarNode[] | undefined = () => undefined,
): (info: StorePathInfo) => Promise<NarNode[]> {
  return async (info) => {
    const taken = noted(info);
    if (taken) return taken;
    const key = narListingKey(info);
    const known = await store.readEntry('listings', key, isListing);
    if (known) return known.nodes;
    const nodes = (await list(info)).filter(keep);
    await store.writeEntry('listings', key, { nodes });
    return nodes;
  };
}
