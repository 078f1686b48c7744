import { describe, it, expect } from 'vitest';
import type { NarNode } from '../../src/nix/types.js';
import { checkLayerSize, splitStorePath } from '../../src/plan/size-cap.js';
import { UserError } from '../../src/util/errors.js';

const dir = (path: string): NarNode => ({ type: 'directory', path });
const file = (path: string, size: number): NarNode => ({ type: 'regular', path, size, executable: false });
const root = 'nix/store/00000000000000000000000000000000-big';

describe('splitStorePath', () => {
  const nodes: NarNode[] = [
    dir(''),
    dir('lib'),
    dir('lib/a'),
    file('lib/a/one', 100_000),
    file('lib/a/two', 100_000),
    dir('lib/b'),
    file('lib/b/three', 100_000),
    file('lib/huge', 500_000),
    { type: 'symlink', path: 'lib/link', target: 'huge' },
    dir('share'),
  ];

  it('cuts at file boundaries, in NAR order, every node in exactly one slice', () => {
    const slices = splitStorePath(nodes, root, 210_000);
    // Each node's bound: 512 of header, the body padded to 512. The second slice starts with `three`,
    // so it also repeats '', lib and lib/b (1.5 KiB), which count against it.
    expect(slices.map((s) => [s.from, s.to])).toEqual([
      [0, 6],
      [6, 7],
      [7, 8],
      [8, 10],
    ]);
    expect(slices.map((s) => `${s.index}/${s.count}`)).toEqual(['1/4', '2/4', '3/4', '4/4']);
    // A file larger than the limit is a slice alone, and named in case it will not fit.
    expect(slices[2]!.onlyFile).toEqual({ path: 'lib/huge', size: 500_000 });
    expect(slices[1]!.onlyFile).toEqual({ path: 'lib/b/three', size: 100_000 });
    expect(slices[3]!.onlyFile).toBeUndefined();
  });

  it('depends on the path and the limit only: the same slices every time', () => {
    expect(splitStorePath(nodes, root, 210_000)).toEqual(splitStorePath([...nodes], root, 210_000));
    expect(splitStorePath(nodes, root, 10_000_000)).toEqual([{ index: 1, count: 1, from: 0, to: nodes.length }]);
  });
});

describe('checkLayerSize', () => {
  it('names the one file a slice holds when it is over the cap, and any layer otherwise', () => {
    expect(() => checkLayerSize(1000, 1000, { contents: ['/nix/store/x-a'] })).not.toThrow();
    const slice = { index: 2, count: 3, from: 4, to: 5, onlyFile: { path: 'lib/huge', size: 2 << 20 } };
    expect(() => checkLayerSize(1 << 20, 1_500_000, { contents: ['/nix/store/x-a'], slice })).toThrow(
      new UserError('--max-layer-size 1.0 MiB: /nix/store/x-a/lib/huge is 2.0 MiB (1.4 MiB compressed), larger than the cap; files are not split, so raise the cap'),
    );
    expect(() => checkLayerSize(1 << 20, 1_500_000, { contents: ['a', 'b', 'c', 'd'] })).toThrow(/the layer of a, b, c and 1 more is 1\.4 MiB compressed, larger than the cap/);
  });
});
