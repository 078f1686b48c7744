/**
 * What the wheel checks found, one record per problem, and how to tell a user about them: every
 * problem stands alone (for `--problems FILE` and `--json`), and the summary printed on a terminal
 * groups them so that each line says what to do — libraries by the missing soname and its fix, the
 * executables no import runs by wheel.
 */

export type ProblemCheck = 'requirements' | 'libraries' | 'traps' | 'closure' | 'lock';

export type ProblemKind =
  /** A wheel's Requires-Dist the image does not satisfy. */
  | 'unmet-requirement'
  /** A DT_NEEDED library the image lacks. */
  | 'missing-library'
  /** An ELF file that does not parse. */
  | 'malformed-elf'
  /** An executable whose PT_INTERP the image does not have. */
  | 'foreign-interpreter'
  /** An ELF file built for another machine. */
  | 'foreign-machine'
  /** More than one glibc, one of which needs LD_LIBRARY_PATH. */
  | 'mixed-glibc'
  /** Something the image lacks that a known stack needs at run time. */
  | 'trap'
  /** A distribution in the closure without a name or version. */
  | 'unreadable-distribution'
  /** The wheels do not match the lock file. */
  | 'not-in-lock'
  | 'hash-mismatch'
  | 'version-mismatch'
  | 'pinned-wheel-missing';

export interface Problem {
  severity: 'error' | 'warning';
  check: ProblemCheck;
  kind: ProblemKind;
  /** The problem in one line, naming where it is. */
  message: string;
  /** What to do about it, when that is known. */
  fix?: string;
  /** A waiver in the recipe made this error a warning. */
  waived?: boolean;
  /** The wheel's file name. */
  wheel?: string;
  /** The wheel's distribution name (`torch`). */
  distribution?: string;
  /** The file inside the wheel. */
  entry?: string;
  /** The missing library's soname (or path). */
  library?: string;
  /** The missing executable loader. */
  interpreter?: string;
}

/** A closure path's fix for sonames of well-known packages (nixpkgs attribute names). */
const LIBRARY_FIXES: { match: RegExp; fix: string }[] = [
  {
    match: /^lib(stdc\+\+\.so\.6|gcc_s\.so\.1|gomp\.so\.1|atomic\.so\.1|quadmath\.so\.0|itm\.so\.1)$/,
    fix: "add gcc's runtime libraries to the closure (stdenv.cc.cc.lib)",
  },
  { match: /^libgfortran\.so\.\d+$/, fix: "add gfortran's runtime libraries to the closure (gfortran.cc.lib)" },
  { match: /^libz\.so\.1$/, fix: 'add zlib to the closure (zlib)' },
  { match: /^libbz2\.so\.1(\.0)?$/, fix: 'add bzip2 to the closure (bzip2.out)' },
  { match: /^liblzma\.so\.5$/, fix: 'add xz to the closure (xz.out)' },
  { match: /^libzstd\.so\.1$/, fix: 'add zstd to the closure (zstd.out)' },
  { match: /^libffi\.so\.\d+$/, fix: 'add libffi to the closure (libffi)' },
  { match: /^lib(ssl|crypto)\.so\.3$/, fix: 'add OpenSSL to the closure (openssl.out)' },
  { match: /^libnuma\.so\.1$/, fix: 'add numactl to the closure (numactl)' },
  { match: /^libuuid\.so\.1$/, fix: "add util-linux's libuuid to the closure (libuuid.lib)" },
  { match: /^libexpat\.so\.1$/, fix: 'add expat to the closure (expat)' },
  { match: /^libsqlite3\.so\.0$/, fix: 'add SQLite to the closure (sqlite.out)' },
  { match: /^libxml2\.so\.2$/, fix: 'add libxml2 to the closure (libxml2.out)' },
  { match: /^libcurl\.so\.4$/, fix: 'add curl to the closure (curl.out)' },
  { match: /^libdrm(_amdgpu)?\.so\.[12]$/, fix: 'add libdrm to the closure (libdrm)' },
  { match: /^libelf\.so\.1$/, fix: 'add elfutils to the closure (elfutils.out)' },
  { match: /^libGL\.so\.1$/, fix: 'add libGL to the closure (libGL)' },
  { match: /^lib(glib|gthread|gobject)-2\.0\.so\.0$/, fix: 'add GLib to the closure (glib.out)' },
  { match: /^libopenblas\.so\.0$/, fix: 'add OpenBLAS to the closure (openblas)' },
  { match: /^lib(amdhip64|hsa-runtime64)\.so\.\d+$/, fix: "add ROCm's HIP runtime to the closure (rocmPackages.clr)" },
  { match: /^libpython3\.\d+\.so(\.1\.0)?$/, fix: "use a Python with a shared libpython (nixpkgs' python3 has one)" },
];

/** Libraries a GPU host's driver brings at run time: no closure path is the fix, a waiver is. */
const HOST_LIBRARY = /^lib(cuda|nvidia-[a-z-]+|nvcuvid|cudadebugger)\.so(\.\d+)*$/;

/** What to do about a missing library: a closure path where one is known; a waiver only for a host's driver. */
export function libraryFix(library: string): string {
  if (HOST_LIBRARY.test(library)) {
    return "provided by the host's GPU driver at run time: waive it in the recipe (checks.waiveLibraries)";
  }
  const known = LIBRARY_FIXES.find((f) => f.match.test(library));
  if (known) return known.fix;
  if (library.includes('/')) return 'the image has no file at that path: add the store path that holds it to the closure';
  return `add the store path that provides ${library} (in its lib/ directory) to the closure`;
}

/** What to do about an unmet requirement: bring the distribution (waiving it is the last resort). */
export function requirementFix(name: string, found: string | null): string {
  return found === null
    ? `add a wheel of ${name} (--wheel), or a closure path with it in site-packages`
    : `give a wheel of ${name} in a version that fits`;
}

/** Files under a tests directory: no import runs them. */
const TEST_FILE = /(^|\/)tests?\//;

/**
 * The problems as a user reads them, most useful first: missing libraries grouped by fix (sonames that
 * share one on one line), other problems one a line with their fix, a wheel's programs that cannot
 * start (built for another system's loader) one line per wheel, and so are those of its test directories.
 */
export function summarizeProblems(problems: readonly Problem[]): { errors: string[]; warnings: string[] } {
  const errors: string[] = [];
  const warnings: string[] = [];
  const missing = { error: [] as Problem[], warning: [] as Problem[], waived: [] as Problem[] };
  const tests = new Map<string, Problem[]>();
  const programs = new Map<string, Problem[]>();
  for (const p of problems) {
    if (p.kind === 'missing-library') {
      (p.waived ? missing.waived : missing[p.severity]).push(p);
    } else if (p.kind === 'foreign-interpreter' && p.entry && p.severity === 'warning') {
      const group = TEST_FILE.test(p.entry) ? tests : programs;
      const key = `${p.wheel}\0${p.interpreter}`;
      group.set(key, [...(group.get(key) ?? []), p]);
    } else {
      (p.severity === 'error' ? errors : warnings).push(withFix(p));
    }
  }
  errors.push(...groupMissing(missing.error, true));
  warnings.push(...groupMissing(missing.warning, true).map((line) => `${line} (the library check is off)`));
  warnings.push(...groupMissing(missing.waived, false).map((line) => `waived: ${line}`));
  for (const group of programs.values()) {
    const first = group[0]!;
    if (group.length === 1) {
      warnings.push(withFix(first));
      continue;
    }
    // A wheel's programs built for another system's loader (torch's bin/: protoc, its store tests):
    // one line per wheel, the first named; --problems lists each.
    const names = group.map((p) => p.entry!);
    const shown = names.slice(0, 3).join(', ') + (names.length > 3 ? ', …' : '');
    warnings.push(`${first.wheel}: ${group.length} programs (${shown}) run with ${first.interpreter}, which the image does not have: they cannot start in it`);
  }
  for (const group of tests.values()) {
    const first = group[0]!;
    const dirs = [...new Set(group.map((p) => testDir(p.entry!)))];
    const shown = dirs.slice(0, 2).join(', ') + (dirs.length > 2 ? ', …' : '');
    const count = group.length === 1 ? 'a test executable' : `${group.length} test executables`;
    warnings.push(
      `${first.wheel}: ${count} (${shown}) run${group.length === 1 ? 's' : ''} with ${first.interpreter}, which the image does not have; no import runs ${group.length === 1 ? 'it' : 'them'}`,
    );
  }
  return { errors, warnings };
}

/** The text of the problems file: the summary as comments, then every problem, one a line. */
export function formatProblemsFile(problems: readonly Problem[]): string {
  const errors = problems.filter((p) => p.severity === 'error').length;
  const warnings = problems.length - errors;
  const { errors: errorLines, warnings: warningLines } = summarizeProblems(problems);
  const lines = [
    `# ${problems.length} problem${problems.length === 1 ? '' : 's'}: ${errors} error${errors === 1 ? '' : 's'}, ${warnings} warning${warnings === 1 ? '' : 's'}`,
    ...errorLines.map((l) => `# error: ${l}`),
    ...warningLines.map((l) => `# warning: ${l}`),
    ...problems.map((p) => `${p.severity}: ${withFix(p)}`),
  ];
  return `${lines.join('\n')}\n`;
}

function withFix(p: Problem): string {
  return p.fix ? `${p.message} — ${p.fix}` : p.message;
}

/**
 * `libstdc++.so.6, libgcc_s.so.1: needed by 231 files in 6 wheels (torch, numpy, …) — add gcc's runtime …`:
 * one line per fix, sonames by how many files need them, wheels likewise.
 */
function groupMissing(problems: Problem[], fixes: boolean): string[] {
  const groups = new Map<string, Problem[]>();
  for (const p of problems) {
    const key = fixes ? (p.fix ?? p.library!) : p.library!;
    groups.set(key, [...(groups.get(key) ?? []), p]);
  }
  const lines = [...groups.values()].map((group) => {
    const files = new Set(group.map((p) => `${p.wheel}\0${p.entry}`));
    const libraries = byCount(group.map((p) => p.library!));
    const wheels = byCount([...new Map(group.map((p) => [`${p.wheel}\0${p.entry}`, p.distribution ?? p.wheel!])).values()]);
    const names = wheels.slice(0, 3).join(', ') + (wheels.length > 3 ? ', …' : '');
    const fix = fixes && group[0]!.fix ? ` — ${group[0]!.fix}` : '';
    return {
      files: files.size,
      line: `${libraries.join(', ')}: needed by ${files.size} file${files.size === 1 ? '' : 's'} in ${wheels.length} wheel${wheels.length === 1 ? '' : 's'} (${names})${fix}`,
    };
  });
  return lines.sort((a, b) => b.files - a.files || (a.line < b.line ? -1 : a.line > b.line ? 1 : 0)).map((l) => l.line);
}

/** Distinct values, the most frequent first (ties in the order they came). */
function byCount(values: string[]): string[] {
  const counts = new Map<string, number>();
  for (const v of values) counts.set(v, (counts.get(v) ?? 0) + 1);
  return [...counts.entries()].sort((a, b) => b[1] - a[1]).map(([v]) => v);
}

/** `torch/test/cpp/api/test_api` → `torch/test/`. */
function testDir(entry: string): string {
  const match = TEST_FILE.exec(entry)!;
  return entry.slice(0, match.index + match[0].length);
}
