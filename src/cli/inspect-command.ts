import { Command } from 'commander';

export function inspectCommand(): Command {
  return new Command('inspect')
    .description('List an image\'s layers: digest, sizes and the store paths (or wheels) each holds.')
    .argument('<image>', 'an oci-archive, docker-archive or oci-layout directory')
    .option('--image <name>', 'which image to show when the archive holds several (e.g. nix2oci/demo:latest)')
    .option('--json', 'print the description as JSON')
    .option('--no-scan', 'do not read layers to find what the manifest does not record')
    .action(async (path: string, flags: { image?: string; json?: boolean; scan: boolean }) => {
      const [{ readImage }, { describeImage, formatImageDescription }] = await Promise.all([import('../output/read.js'), import('./inspect.js')]);
      const image = await readImage(path, { tag: flags.image });
      const description = await describeImage(image, { scan: flags.scan });
      const text = flags.json ? JSON.stringify(description, null, 2) : formatImageDescription(description);
      process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
    });
}
