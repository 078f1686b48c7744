/**
 * An error caused by the user's input or environment (a bad file, a missing tool, a refused login).
 * The CLI prints its message as one line and exits non-zero, never a stack trace.
 * Messages say what went wrong and where: the file, the store path or entry, the byte offset.
 */
export class UserError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'UserError';
  }
}

export function isUserError(err: unknown): err is UserError {
  return err instanceof UserError;
}
