/** The bench's statistics, one definition for the generator, the W7 driver and the table. */

/** The q-quantile of values already sorted ascending (NaN for none): the value at ⌊q·n⌋. */
export const quantile = (sorted: readonly number[], q: number): number =>
  sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? NaN;

/** The median of repeats, NaN when any failed: a failure shows as n/a, not as the median of the rest. */
export function median(values: readonly number[]): number {
  if (values.length === 0 || !values.every(Number.isFinite)) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}
