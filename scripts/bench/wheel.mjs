// Bench hook (scripts/bench.mjs): a wheel of realistic content — thousands of small .py files and a few
// large shared objects, deflated as wheel builders do — installed into a layer, next to a store-path
// layer of about the same size written by the same writer. Target: the wheel is not slower.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';

const MB = 1e6;

/** Builds the wheel once with Python's zipfile (the build machine needs Python only for this bench). */
export function makeWheel(work, small, bigFiles) {
  const dir = join(work, small ? 'wheel-small' : 'wheel-full');
  const wheel = join(dir, 'benchwheel-1.0-cp311-cp311-linux_x86_64.whl');
  if (existsSync(wheel)) return wheel;
  mkdirSync(dir, { recursive: true });
  const script = String.raw`
import base64, hashlib, os, sys, zipfile
out, copies, big = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
stdlib = '/usr/lib/python3.11'
py = []
for root, dirs, files in os.walk(stdlib):
    dirs.sort()
    for f in sorted(files):
        if f.endswith('.py'):
            py.append(os.path.join(root, f))
record = []
def add(z, name, data, method=zipfile.ZIP_DEFLATED):
    info = zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0))
    info.compress_type = method
    info.external_attr = 0o644 << 16
    z.writestr(info, data)
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()
    record.append('%s,sha256=%s,%d' % (name, digest, len(data)))
tmp = out + '.tmp'
with zipfile.ZipFile(tmp, 'w') as z:
    for c in range(copies):
        for p in py:
            with open(p, 'rb') as fh:
                add(z, 'benchwheel/copy%d/%s' % (c, os.path.relpath(p, stdlib)), fh.read())
    for i, b in enumerate(big):
        with open(b, 'rb') as fh:
            add(z, 'benchwheel/lib/libbig%d.so' % i, fh.read())
    di = 'benchwheel-1.0.dist-info/'
    add(z, di + 'METADATA', b'Metadata-Version: 2.1\nName: benchwheel\nVersion: 1.0\n')
    add(z, di + 'WHEEL', b'Wheel-Version: 1.0\nGenerator: bench\nRoot-Is-Purelib: false\nTag: cp311-cp311-linux_x86_64\n')
    record.append(di + 'RECORD,,')
    z.writestr(zipfile.ZipInfo(di + 'RECORD', (2020, 1, 1, 0, 0, 0)), '\n'.join(record) + '\n')
os.rename(tmp, out)
`;
  execFileSync('python3', ['-c', script, wheel, small ? '1' : '12', ...bigFiles], { stdio: 'inherit' });
  return wheel;
}

/** The bench wheel (made once) from the bench closure's big files, and that closure as loaded. */
export async function benchWheelFile({ repo, work, small }) {
  const { loadClosure } = await import(join(repo, 'dist', 'nix/closure.js'));
  const closure = await loadClosure([join(work, small ? 'small.closure' : 'bench.closure')]);
  const bigs = [...closure.paths.keys()].filter((p) => /-bench-big\d+$/.test(p)).sort();
  const bigFiles = bigs.slice(0, small ? 1 : 3).flatMap((p) => [`${p}/lib/libbig${p.slice(-1)}.so`]).filter(existsSync);
  return { closure, wheelFile: makeWheel(work, small, bigFiles) };
}

export async function benchWheel({ repo, work, small, report }) {
  if (!existsSync('/usr/lib/python3.11')) {
    report('wheel install', 'skipped', 'needs Debian\'s python3.11 stdlib (scripts/install-system-deps.sh)');
    return;
  }
  const dist = (p) => join(repo, 'dist', p);
  const { readWheelInfo } = await import(dist('wheels/wheel-info.js'));
  const { wheelLayerSource } = await import(dist('wheels/install.js'));
  // The writer build-image uses for wheel layers (and the same for the store paths compared with them).
  const { writeLayerFile, writeBlobFile } = await import(dist('layer/writer.js'));
  const writeLayer = async (source, { compression, dir, mtime }) => {
    const file = await writeLayerFile(source, { compression, gzipLevel: 6, mtime }, dir);
    return { ...file, uncompressedSize: file.tarSize };
  };
  const { storePathsSource } = await import(dist('layer/store-paths.js'));
  const { closure, wheelFile } = await benchWheelFile({ repo, work, small });

  const dir = mkdtempSync(join(work, 'wheel-'));
  try {
    for (const compression of ['none', 'gzip']) {
      const started = performance.now();
      const info = await readWheelInfo(wheelFile);
      const layer = wheelLayerSource(info, { prefix: '/opt/python', pythonVersion: '3.11', interpreter: '/nix/store/00000000000000000000000000000000-python3-3.11.2/bin/python3.11' });
      // Uncompressed, as build-image writes it: whole, on an unzip thread.
      const wheelBlob =
        compression === 'none'
          ? await writeBlobFile(dir, (out) => layer.writeTar(out, 1)).then((file) => ({ ...file, uncompressedSize: file.tarSize }))
          : await writeLayer(layer.source, { compression, dir, mtime: 1 });
      const wheelSeconds = (performance.now() - started) / 1000;
      rmSync(wheelBlob.file);

      // Store paths of about the same uncompressed size, through the same writer.
      const infos = [];
      let bytes = 0;
      const bySize = [...closure.paths.values()].sort((a, b) => b.narSize - a.narSize || (a.path < b.path ? -1 : 1));
      for (const info of bySize) {
        if (bytes >= wheelBlob.uncompressedSize) break;
        if (bytes + info.narSize > wheelBlob.uncompressedSize * 1.1) continue;
        infos.push(info);
        bytes += info.narSize;
      }
      const pathStarted = performance.now();
      const pathBlob = await writeLayer(storePathsSource(infos), { compression, dir, mtime: 1 });
      const pathSeconds = (performance.now() - pathStarted) / 1000;
      rmSync(pathBlob.file);

      const wheelRate = wheelBlob.uncompressedSize / MB / wheelSeconds;
      const pathRate = pathBlob.uncompressedSize / MB / pathSeconds;
      report(`wheel install (${(statSync(wheelFile).size / MB).toFixed(0)} MB zipped, ${(wheelBlob.uncompressedSize / MB).toFixed(0)} MB installed), ${compression}`, `${wheelRate.toFixed(0)} MB/s`, `>= ${pathRate.toFixed(0)} MB/s (store-path layer of ${(pathBlob.uncompressedSize / MB).toFixed(0)} MB)`, wheelRate >= pathRate);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
