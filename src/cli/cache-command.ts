import { Command } from 'commander';
import { cacheStats, pruneCache } from '../cache/maintenance.js';
import { sizeFlag } from './flags.js';
import { defaultCacheDir } from '../cache/store.js';
import { formatBytes } from '../util/units.js';

/** `nix2oci cache stats` and `nix2oci cache prune --max-size SIZE`. */
export function cacheCommand(): Command {
  const command = new Command('cache').description('Show or shrink the layer cache build-image keeps.');
  const dirOption = ['--cache-dir <dir>', 'the layer cache (default: $XDG_CACHE_HOME/nix2oci, else ~/.cache/nix2oci)'] as const;

  command
    .command('stats')
    .description('Entries, size and last use of the layer cache.')
    .option(...dirOption)
    .option('--json', 'print the figures as JSON')
    .action(async (flags: { cacheDir?: string; json?: boolean }) => {
      const stats = await cacheStats(flags.cacheDir ?? defaultCacheDir());
      if (flags.json) {
        process.stdout.write(`${JSON.stringify(stats, null, 2)}\n`);
        return;
      }
      const { entries } = stats;
      process.stdout.write(
        [
          `cache: ${stats.dir}`,
          `size: ${formatBytes(stats.bytes)} in ${stats.blobs} blobs (${stats.unreferencedBlobs} unreferenced)`,
          `entries: ${entries.parts} store path parts, ${entries.layers} composed layers, ${entries.wheels} wheel layers, ${entries.inputs} input files read, ${entries.listings} store path listings, ${entries.verified} layers measured`,
          `last used: ${stats.newestUse?.toISOString() ?? 'never'}; least recently: ${stats.oldestUse?.toISOString() ?? 'never'}`,
          ...(stats.tempFiles > 0 ? [`temporary files: ${stats.tempFiles} (builds running, or interrupted; prune removes old ones)`] : []),
        ].join('\n') + '\n',
      );
    });

  command
    .command('prune')
    .description('Remove the least recently used entries until the cache holds at most SIZE.')
    .requiredOption('--max-size <size>', 'size to shrink to: bytes, or with K, M, G, T (1024-based)')
    .option(...dirOption)
    .action(async (flags: { cacheDir?: string; maxSize: string }) => {
      const max = sizeFlag(flags.maxSize, '--max-size');
      const dir = flags.cacheDir ?? defaultCacheDir();
      const result = await pruneCache(dir, max);
      process.stdout.write(
        `pruned ${dir}: removed ${result.removedEntries} entries and ${result.removedBlobs} blobs (${formatBytes(result.freedBytes)}); ${formatBytes(result.bytes)} left\n`,
      );
    });
  return command;
}
