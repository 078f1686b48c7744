import { expect } from 'vitest';
import { UserError } from '../../src/util/errors.js';

/** The UserError message `fn` throws, checked to be one line (fails the test if it throws anything else or nothing). */
export function userErrorOf(fn: () => unknown): string {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(UserError);
    const message = (error as Error).message;
    expect(message).not.toContain('\n');
    return message;
  }
  throw new Error('expected a UserError');
}
