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

/** `512 B`, `1.5 KiB`, `42 MiB`: binary units, one decimal below 10, as inspect, progress and the build log show sizes. */
export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}
