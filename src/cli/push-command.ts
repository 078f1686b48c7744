import { Command, Option } from 'commander';
import type { ShownPushOptions } from './push-progress.js';
import { DEFAULT_CHUNK_SIZE, DEFAULT_JOBS } from '../registry/push-defaults.js';
import { collect, parseBoolean, parseSize, parseWholeNumber } from './flags.js';
import { parseReference } from '../model/reference.js';

/**
 * `nix2oci push SOURCE --registry HOST[:PORT]/REPO[:TAG]`: SOURCE is anything build-image writes
 * (oci-archive, docker-archive, oci-layout). The push flags are shared with `build-image --push`
 * through addPushOptions and pushOptionsFromFlags.
 */
export function pushCommand(): Command {
  const command = new Command('push')
    .description('Push an image (oci-archive, docker-archive or oci-layout) to an OCI registry, uploading only what it lacks.')
    .argument('<source>', 'image written by build-image: an oci-archive, a docker-archive or an oci-layout directory')
    .requiredOption('--registry <ref>', 'where to push: HOST[:PORT]/REPO[:TAG] (tag defaults to latest)')
    .option('--image <name>', 'which image of SOURCE to push when it holds several (its recorded name, e.g. nix2oci/demo:latest)');
  addPushOptions(command);
  command.action(async (source: string, flags: PushFlags & { registry: string; image?: string }) => {
    const ref = parseReference(flags.registry);
    // The HTTP client loads only when pushing: it is most of the CLI's start-up time otherwise.
    const [{ pushAndShow }, { readImage }] = await Promise.all([import('./push-progress.js'), import('../output/read.js')]);
    const image = await readImage(source, { tag: flags.image });
    await pushAndShow(image, ref, pushOptionsFromFlags(flags));
  });
  return command;
}

/** The flags of a push, as commander parses them with addPushOptions. */
export interface PushFlags {
  tag?: string[];
  creds?: string;
  authfile?: string;
  certDir?: string;
  tlsVerify: boolean;
  jobs: number;
  chunkSize: number;
  mountFrom?: string[];
  retries: number;
  digestfile?: string;
  quiet?: boolean;
}

/** Adds the push flags (all but the destination) to a command, e.g. build-image for `--push REF`. */
export function addPushOptions(command: Command): Command {
  return command
    .option('--tag <tag>', 'also tag the image TAG (repeatable)', collect)
    .option('--creds <user:password>', 'credentials for the registry (else auth files and credential helpers are used)')
    .option('--authfile <file>', "auth file to read credentials from (podman auth.json or docker config.json; default: $REGISTRY_AUTH_FILE, podman's, docker's)")
    .option('--cert-dir <dir>', 'directory with CA certificates (*.crt) and a client certificate (client.cert, client.key)')
    .option('--tls-verify [bool]', 'verify TLS certificates; false also allows plain HTTP', parseBoolean, true)
    .option('--jobs <n>', 'blobs to push at once', parseWholeNumber, DEFAULT_JOBS)
    .addOption(
      new Option('--chunk-size <size>', 'blobs larger than this are sent in chunks of this size (e.g. 16M, 1G)')
        .argParser(parseSize)
        .default(DEFAULT_CHUNK_SIZE, '64M'),
    )
    .option('--mount-from <repo>', 'repository on the same registry to mount existing blobs from (repeatable)', collect)
    .option('--retries <n>', 'failures in a row tolerated per blob before giving up', parseWholeNumber, 5)
    .option('--digestfile <file>', 'write the pushed manifest digest to FILE')
    .option('-q, --quiet', 'print no progress, only the pushed reference');
}

export function pushOptionsFromFlags(flags: PushFlags): ShownPushOptions {
  return {
    tags: flags.tag ?? [],
    creds: flags.creds,
    authfile: flags.authfile,
    certDir: flags.certDir,
    tlsVerify: flags.tlsVerify,
    jobs: flags.jobs,
    chunkSize: flags.chunkSize,
    mountFrom: flags.mountFrom ?? [],
    retries: flags.retries,
    digestFile: flags.digestfile,
    quiet: flags.quiet ?? false,
  };
}
