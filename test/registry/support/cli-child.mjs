// Runs `nix2oci push …` from compiled sources, with the CLI's error handling (src/cli/main.ts):
// a UserError prints one line and exits 1; anything else is an internal error (exit 2).
// Usage: node cli-child.mjs OUT_DIR push ARGS...
import { join } from 'node:path';
import { Command, CommanderError } from 'commander';

const [outDir, ...args] = process.argv.slice(2);
const { pushCommand } = await import(join(outDir, 'cli', 'push-command.js'));
const { isUserError } = await import(join(outDir, 'util', 'errors.js'));
const program = new Command().name('nix2oci').exitOverride().addCommand(pushCommand());
try {
  await program.parseAsync(args, { from: 'user' });
} catch (err) {
  if (err instanceof CommanderError) {
    process.exitCode = err.exitCode;
  } else if (isUserError(err)) {
    process.stderr.write(`nix2oci: ${err.message}\n`);
    process.exitCode = 1;
  } else {
    process.stderr.write(`nix2oci: internal error: ${String(err?.message ?? err).split('\n')[0]}\n`);
    process.exitCode = 2;
  }
}
