/** Values a handler receives, with a promise that settles once `count` have arrived (more are kept too, to catch a duplicate). */
export function collector<T>(count: number) {
  const values: T[] = [];
  let done!: () => void;
  const complete = new Promise<void>((resolve) => (done = resolve));
  return {
    values,
    complete,
    push(value: T) {
      values.push(value);
      if (values.length === count) done();
    },
  };
}
