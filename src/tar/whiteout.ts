/**
 * Whiteouts: in an OCI (and Docker) layer, an entry named `.wh.<name>` is not a file but an order to
 * delete `<name>` from the layers below when the layer is unpacked, and `.wh..wh..opq` empties its
 * directory. A file of that name can therefore never be shipped in a layer: every runtime would
 * act on it. nix2oci refuses such names wherever they come from (a store path, a wheel, the recipe).
 */
export const WHITEOUT_PREFIX = '.wh.';

/** Why a single path component cannot go into a layer, or null. */
export function whiteoutProblem(component: string): string | null {
  if (!component.startsWith(WHITEOUT_PREFIX)) return null;
  const effect =
    component === '.wh..wh..opq'
      ? 'would empty its directory'
      : component.startsWith('.wh..wh.')
        ? 'is reserved for whiteout metadata'
        : `would delete ${JSON.stringify(component.slice(WHITEOUT_PREFIX.length))} instead of creating a file`;
  return `starts with ${WHITEOUT_PREFIX}, which marks a whiteout in a layer: a runtime unpacking it ${effect}`;
}

/** The first component of a `/`-separated path that is a whiteout name, with why, or null. */
export function whiteoutInPath(path: string): { component: string; problem: string } | null {
  // Checked for every file of every layer: almost no path holds the prefix at all.
  if (!path.includes(WHITEOUT_PREFIX)) return null;
  for (const component of path.split('/')) {
    const problem = whiteoutProblem(component);
    if (problem) return { component, problem };
  }
  return null;
}
