#!/usr/bin/env node
import { Command, CommanderError } from 'commander';
import { isUserError } from '../util/errors.js';
import { describeOsError, ENVIRONMENT_CODES, environmentErrorMessage } from '../util/os-errors.js';
import { buildImageCommand } from './build-image-command.js';
import { inspectCommand } from './inspect-command.js';
import { pushCommand } from './push-command.js';
import { cacheCommand } from './cache-command.js';
import { sbomCommand } from './sbom-command.js';
import { runCleanups } from '../util/cleanup.js';
import { holdYoungGeneration } from '../util/young-generation.js';

// First: the main thread's memory stays down for the whole run (see young-generation.ts).
holdYoungGeneration();

const program = new Command()
  .name('nix2oci')
  .description('Build OCI images from `nix-store --export` closures and Python wheels, without Nix or Docker; push them to registries.')
  .version(process.env.npm_package_version ?? '0.1.0')
  .showHelpAfterError('(run with --help for usage)')
  .exitOverride();

program.addCommand(buildImageCommand());
program.addCommand(inspectCommand());
program.addCommand(pushCommand());
program.addCommand(cacheCommand());
program.addCommand(sbomCommand());

// An interrupted build removes its temporary files and leaves no output.
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    runCleanups();
    process.exit(signal === 'SIGINT' ? 130 : 143);
  });
}

try {
  await program.parseAsync(process.argv);
} catch (err) {
  runCleanups();
  if (err instanceof CommanderError) {
    process.exitCode = err.exitCode;
  } else if (isUserError(err)) {
    process.stderr.write(`nix2oci: ${err.message}\n`);
    process.exitCode = 1;
  } else if (environmentErrorMessage(err) !== null) {
    // A full disk, a read-only or missing directory, a permission: the user's to fix, not a bug.
    process.stderr.write(`nix2oci: ${environmentErrorMessage(err)}\n`);
    process.exitCode = 1;
  } else if (ENVIRONMENT_CODES.has((err as NodeJS.ErrnoException | undefined)?.code ?? '')) {
    // The same without a path (a write on an open file): at least what happened.
    const syscall = (err as NodeJS.ErrnoException).syscall;
    process.stderr.write(`nix2oci: ${describeOsError(err)}${syscall ? ` (${syscall})` : ''}\n`);
    process.exitCode = 1;
  } else {
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`nix2oci: internal error: ${message.split('\n')[0]}\n`);
    if (process.env.NIX2OCI_DEBUG && err instanceof Error) process.stderr.write(`${err.stack}\n`);
    else process.stderr.write('nix2oci: set NIX2OCI_DEBUG=1 for details, and please report this as a bug\n');
    process.exitCode = 2;
  }
}

// Ending the process outright skips tearing down the heap and the worker threads piece by piece, which
// takes tens of milliseconds after the work is done; what was written to stdout and stderr (pipes,
// perhaps) drains first.
await Promise.all([process.stdout, process.stderr].map((stream) => new Promise<void>((resolve) => stream.write('', () => resolve()))));
process.exit();
