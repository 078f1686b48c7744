/**
 * "Did you mean …?" for misspelt keys and names. Also knows the names other tools use for the same
 * thing (Docker's config keys, dockerTools' arguments), since those are the likeliest slips.
 */
const ALIASES: Record<string, string> = {
  workdir: 'workingDir',
  expose: 'ports',
  exposedports: 'ports',
  contents: 'copyToRoot',
  copytoroot: 'copyToRoot',
  arch: 'architecture',
  stopsignal: 'stopSignal',
  health: 'healthcheck',
  startperiod: 'startPeriod',
  startinterval: 'startPeriod',
  environment: 'env',
  command: 'cmd',
  volume: 'volumes',
  port: 'ports',
  label: 'labels',
  wheel: 'wheels',
};

/** The candidate closest to `word`, or undefined when none is close enough to be a plausible typo. */
export function closestWord(word: string, candidates: readonly string[]): string | undefined {
  const lower = word.toLowerCase();
  const alias = ALIASES[lower.replace(/[-_]/g, '')];
  if (alias !== undefined && candidates.includes(alias)) return alias;
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const candidate of candidates) {
    const distance = editDistance(lower, candidate.toLowerCase());
    if (distance < bestDistance) {
      best = candidate;
      bestDistance = distance;
    }
  }
  const allowed = Math.max(1, Math.floor(word.length / 3));
  return bestDistance <= allowed ? best : undefined;
}

/** Optimal string alignment distance: Levenshtein plus adjacent transpositions (`entrypiont` → 1). */
export function editDistance(a: string, b: string): number {
  const rows = a.length + 1;
  const cols = b.length + 1;
  const d: number[] = new Array<number>(rows * cols).fill(0);
  for (let i = 0; i < rows; i++) d[i * cols] = i;
  for (let j = 0; j < cols; j++) d[j] = j;
  for (let i = 1; i < rows; i++) {
    for (let j = 1; j < cols; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let value = Math.min(d[(i - 1) * cols + j]! + 1, d[i * cols + j - 1]! + 1, d[(i - 1) * cols + j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        value = Math.min(value, d[(i - 2) * cols + j - 2]! + 1);
      }
      d[i * cols + j] = value;
    }
  }
  return d[rows * cols - 1]!;
}
