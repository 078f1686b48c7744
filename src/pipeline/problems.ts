import { writeFileAtomically } from '../util/atomic.js';
import { UserError } from '../util/errors.js';
import { formatProblemsFile, summarizeProblems, type Problem } from '../wheels/checks/problems.js';

/**
 * A build stopped by problems a user can act on (the wheel checks', or the lock's). The message is
 * the summary; `problems` has every one, for `--problems FILE` and `--json`.
 */
export class ProblemsError extends UserError {
  constructor(
    message: string,
    readonly problems: Problem[],
  ) {
    super(message);
    this.name = 'ProblemsError';
  }
}

/** Lines of grouped errors shown before `… and N more`. */
const SHOWN = 20;

/**
 * The error for a build the checks failed: the grouped errors, each with its fix, then where every
 * problem is and, last, the switches that build anyway (an image that may not run).
 */
export function checksFailed(problems: Problem[], problemsFile: string | undefined): ProblemsError {
  const errors = problems.filter((p) => p.severity === 'error');
  const lines = summarizeProblems(problems).errors;
  const shown = lines.slice(0, SHOWN);
  if (lines.length > shown.length) shown.push(`… and ${lines.length - shown.length} more`);
  shown.push(problemsFile !== undefined ? `every problem is listed in ${problemsFile}` : 'to list every problem: --problems FILE (or --json)');
  const switches: string[] = [];
  if (errors.some((p) => p.check === 'libraries')) switches.push('--no-library-check (or checks.skipLibraries)');
  if (errors.some((p) => p.check === 'requirements')) switches.push('--no-requirements-check (or checks.skipRequirements)');
  if (switches.length > 0) shown.push(`to build anyway, an image that may fail when it runs: ${switches.join(', ')}`);
  const count = `${errors.length} problem${errors.length === 1 ? '' : 's'}`;
  return new ProblemsError(`the image cannot run as built (${count}):\n  ${shown.join('\n  ')}`, problems);
}

/** Writes every problem to `file`, atomically (a reader sees the old file or the whole new one). */
export async function writeProblemsFile(file: string, problems: Problem[]): Promise<void> {
  const text = formatProblemsFile(problems);
  await writeFileAtomically(file, text);
}

/** The error for wheels that do not match the lock: one line per problem. */
export function lockFailed(problems: Problem[], lockFile: string): ProblemsError {
  if (problems.length === 1) return new ProblemsError(problems[0]!.message, problems);
  return new ProblemsError(
    `the wheels do not match the lock ${lockFile} (${problems.length} problems):\n  ${problems.map((p) => p.message).join('\n  ')}`,
    problems,
  );
}
