/**
 * The orders nix2oci sorts by. Layer bytes, plans and digests depend on them, so every sort says which
 * it means; none depends on the locale.
 */

/** UTF-16 code unit order (what JavaScript's `<` compares): wheel entries, store paths, file names. */
export function byCodeUnits(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * Unicode code point order, which is also UTF-8 byte order: the order of a NAR's directory entries
 * (Nix compares names as bytes) and of Python's string comparison (nixpkgs' closure-graph.py).
 */
export function byCodePoints(a: string, b: string): number {
  const length = Math.min(a.length, b.length);
  for (let i = 0; i < length; i++) {
    if (a.charCodeAt(i) !== b.charCodeAt(i)) return a.codePointAt(i)! - b.codePointAt(i)!;
  }
  return a.length - b.length;
}

/** NAR order of two relative paths: component by component, each by code points (bytes). */
export function byPathComponents(a: string, b: string): number {
  const left = a.split('/');
  const right = b.split('/');
  for (let i = 0; i < Math.min(left.length, right.length); i++) {
    const order = byCodePoints(left[i]!, right[i]!);
    if (order !== 0) return order;
  }
  return left.length - right.length;
}
