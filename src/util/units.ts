const BINARY_UNITS: Record<string, number> = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 };

/**
 * `2048`, `512K`, `16M`, `1.5GiB`, `10G`: a size in bytes with binary (1024-based) units, as podman and
 * skopeo write them; null when `text` is not one. Callers turn null into their own flag's error.
 */
export function parseByteSize(text: string): number | null {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$/i.exec(text);
  if (!match) return null;
  return Math.floor(Number(match[1]) * BINARY_UNITS[match[2]!.toLowerCase()]!);
}
