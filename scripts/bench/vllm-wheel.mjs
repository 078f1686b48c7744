// The "vllm" wheel of the layer-cache bench (scripts/bench/cache.mjs): a few hundred .py files (from
// Debian's python3.11 stdlib) and one large .so-like binary (bytes of the host's shared libraries,
// not an ELF file), tens of MB installed. Versions differ in content throughout, as a real release
// does: each .py file says its version and the binary is cut from another part of the libraries.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';

export const WHEEL_TAG = 'cp311-cp311-linux_x86_64';

const script = String.raw`
import base64, glob, hashlib, os, sys, zipfile
out, version, pyfiles, binary = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
stdlib = '/usr/lib/python3.11'
py = []
for root, dirs, files in os.walk(stdlib):
    dirs[:] = sorted(d for d in dirs if d not in ('test', 'tests', 'idlelib', 'tkinter', 'lib2to3'))
    py += [os.path.join(root, f) for f in sorted(files) if f.endswith('.py') and root != stdlib]
py = py[:pyfiles]
record = []
def add(z, name, data):
    info = zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    z.writestr(info, data)
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()
    record.append('%s,sha256=%s,%d' % (name, digest, len(data)))
def kernels():
    # Another stretch of the host's libraries for each version; a text prefix, so never ELF magic.
    skip = int(hashlib.sha256(version.encode()).hexdigest(), 16) % (200 << 20)
    data = bytearray(b'vllm kernels %s\n' % version.encode())
    for lib in sorted(glob.glob('/usr/lib/x86_64-linux-gnu/*.so*')):
        if len(data) >= binary:
            break
        if os.path.isfile(lib) and not os.path.islink(lib):
            with open(lib, 'rb') as fh:
                chunk = fh.read()
            cut = min(skip, len(chunk))
            skip -= cut
            data += chunk[cut:]
    return bytes(data[:binary])
tmp = out + '.tmp'
with zipfile.ZipFile(tmp, 'w') as z:
    header = ('# vllm %s\n' % version).encode()
    for p in py:
        with open(p, 'rb') as fh:
            add(z, 'vllm/' + os.path.relpath(p, stdlib), header + fh.read())
    add(z, 'vllm/__init__.py', ('__version__ = %r\n' % version).encode())
    add(z, 'vllm/_C.abi3.so', kernels())
    di = 'vllm-%s.dist-info/' % version
    add(z, di + 'METADATA', ('Metadata-Version: 2.1\nName: vllm\nVersion: %s\n' % version).encode())
    add(z, di + 'WHEEL', ('Wheel-Version: 1.0\nGenerator: bench\nRoot-Is-Purelib: false\nTag: ${WHEEL_TAG}\n').encode())
    record.append(di + 'RECORD,,')
    z.writestr(zipfile.ZipInfo(di + 'RECORD', (2020, 1, 1, 0, 0, 0)), '\n'.join(record) + '\n')
os.rename(tmp, out)
`;

/** Makes (once) vllm-<version>-cp311-cp311-linux_x86_64.whl: ~300 .py files and a 40 MB binary, or less when small. */
export function makeVllmWheel(work, small, version) {
  const dir = join(work, small ? 'vllm-wheel-small' : 'vllm-wheel-full');
  const wheel = join(dir, `vllm-${version}-${WHEEL_TAG}.whl`);
  if (existsSync(wheel)) return wheel;
  mkdirSync(dir, { recursive: true });
  execFileSync('python3', ['-c', script, wheel, version, small ? '150' : '400', String(small ? 8e6 : 40e6)], { stdio: 'inherit' });
  return wheel;
}
