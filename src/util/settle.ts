/**
 * Every result once all have settled, in the order given; if any failed, the first failure in that
 * order (not the first to happen), after the others have ended, so nothing still runs when it is told.
 */
export async function settleInOrder<T>(pending: Promise<T>[]): Promise<T[]> {
  const settled = await Promise.allSettled(pending);
  const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (failed) throw failed.reason;
  return settled.map((s) => (s as PromiseFulfilledResult<T>).value);
}
