/**
 * Executable scripts a wheel install writes into `bin`: launchers for console_scripts and gui_scripts
 * entry points (the text pip writes through distlib), and the `#!python` rewrite of `.data/scripts`
 * files (PEP 427: a first line starting with `#!python` is replaced by the image's interpreter).
 */
import { UserError } from '../util/errors.js';
import type { EntryPoint } from './metadata.js';

/** Linux reads at most this many bytes of a `#!` line (before 5.1: 128 with the newline), as distlib assumes. */
const MAX_SHEBANG_LENGTH = 127;

/**
 * The first line(s) that run `interpreter`. A path with a space or too long for the kernel goes
 * through /bin/sh, which re-executes the script with the interpreter (distlib's trick): the line is
 * a shell command to sh and the opening of a string to Python.
 */
export function shebang(interpreter: string): string {
  if (interpreter.length + 3 <= MAX_SHEBANG_LENGTH && !/\s/.test(interpreter)) return `#!${interpreter}\n`;
  return `#!/bin/sh\n'''exec' "${interpreter}" "$0" "$@"\n' '''\n`;
}

export function checkInterpreter(interpreter: string): void {
  if (!interpreter.startsWith('/') || /[\n\r\0"$`\\]/.test(interpreter)) {
    throw new UserError(`Python interpreter "${interpreter}" must be an absolute path without quotes, $, \` or newlines`);
  }
}

/** The launcher pip writes for `name = module:func`. */
export function launcherScript(point: EntryPoint, interpreter: string, where: string): string {
  if (point.attr === null) {
    throw new UserError(`${where}: entry point ${point.name} = ${point.module} names no function (expected module:function)`);
  }
  const importName = point.attr.split('.')[0]!;
  return (
    shebang(interpreter) +
    `# -*- coding: utf-8 -*-\n` +
    `import re\n` +
    `import sys\n` +
    `from ${point.module} import ${importName}\n` +
    `if __name__ == '__main__':\n` +
    `    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n` +
    `    sys.exit(${point.attr}())\n`
  );
}

const PYTHON_SHEBANG = Buffer.from('#!python');
/** A `#!python…` first line longer than this is not a shebang anyone wrote by hand; refuse rather than buffer it. */
const MAX_FIRST_LINE = 64 << 10;

export interface ScriptHead {
  /** Bytes to write first: the new shebang, or the original head unchanged. */
  head: Buffer;
  /** Bytes of the original file that `head` replaces or holds. */
  consumed: number;
  rewritten: boolean;
}

/**
 * Reads just enough of a script to decide on the `#!python` rewrite, from an iterator whose remaining
 * chunks the caller streams afterwards. Returns the head to write in place of the consumed bytes.
 */
export async function readScriptHead(chunks: AsyncIterator<Buffer>, interpreter: string, where: string): Promise<ScriptHead> {
  const pieces: Buffer[] = [];
  let length = 0;
  let done = false;
  const pull = async () => {
    const next = await chunks.next();
    if (next.done) done = true;
    else {
      pieces.push(next.value);
      length += next.value.length;
    }
  };
  while (!done && length < PYTHON_SHEBANG.length) await pull();
  let buffered = Buffer.concat(pieces, length);
  if (buffered.length < PYTHON_SHEBANG.length || !buffered.subarray(0, PYTHON_SHEBANG.length).equals(PYTHON_SHEBANG)) {
    return { head: buffered, consumed: buffered.length, rewritten: false };
  }
  let newline = buffered.indexOf(0x0a);
  while (newline < 0 && !done) {
    if (length > MAX_FIRST_LINE) throw new UserError(`${where}: #!python line longer than ${MAX_FIRST_LINE} bytes`);
    await pull();
    buffered = Buffer.concat(pieces, length);
    newline = buffered.indexOf(0x0a);
  }
  const lineEnd = newline < 0 ? buffered.length : newline + 1;
  return {
    head: Buffer.concat([Buffer.from(shebang(interpreter)), buffered.subarray(lineEnd)]),
    consumed: buffered.length,
    rewritten: true,
  };
}
