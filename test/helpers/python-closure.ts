import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { nixBuild, closureOf, exportClosure, pathInfoJson } from './nix.js';

/**
 * A self-contained Python runtime closure built with the real, offline Nix from Debian's own
 * binaries: python3.11 and bash copied into store paths and relocated with patchelf (interpreter
 * and RUNPATH point at a `glibc` store path holding Debian's glibc), plus the recipe's very own
 * `vllm-server` wrapper. Nothing in it refers to /usr, /lib or /lib64, so it runs in an image
 * that holds only this closure (no busybox, no base image).
 *
 * Store paths (names as nixpkgs would spell them):
 *   glibc-debian-<v>      lib/ld-linux-x86-64.so.2, libc.so.6, libm, libpthread, libdl, librt, libutil
 *   bash-debian-<v>       bin/bash, bin/sh, lib/libtinfo.so.6
 *   python3-<v>           bin/python3.11 (+ python3, python), lib/python3.11 (stdlib, trimmed),
 *                         lib/python3.11/site-packages (empty), include/python3.11 when `headers`
 *   vllm-server           bin/vllm-server: layers/vllm-rocm/vllm-server.sh with `#!<bash>/bin/bash`
 *                         and VLLM_PYTHON defaulting to the python3 path
 *   zlib-debian-<v>       lib/libz.so.1, when `zlib`
 *   gcc-libs-debian-<v>   lib/libstdc++.so.6, lib/libgcc_s.so.1, when `cxxRuntime`
 *   python-stdlib-libs-debian  lib/ with libffi, libssl, libcrypto, libbz2, liblzma, libuuid, libsqlite3, when
 *                         `stdlibLibs`: the python path then also has the stdlib modules that need them
 *                         (ctypes, ssl, hashlib, bz2, lzma, uuid, sqlite3), their RUNPATH pointing there
 *   python-runtime        the root: bin/ symlinks (python3, python, bash, sh, vllm-server) and
 *                         references to every path above
 *
 * Python's own libz and libexpat (Debian links them into the interpreter) live in a private
 * `libexec/debian-libs` of the python path, not in a `lib/` directory, so that zlib is available to
 * wheels only when the separate zlib path is in the closure, as in Nix where zlib is its own package.
 * A sitecustomize.py adds `lib/python3.11/site-packages` to sys.path (Debian's site says dist-packages).
 * Stdlib extension modules that need more than libc and libm are left out (ssl, ctypes, sqlite3,
 * …); hashlib falls back to its builtin digests. The stdlib is about 25 MB with its bytecode, which is
 * compiled at build time with unchecked hashes so that no Python run ever writes into the store.
 *
 * Host files are read impurely (the offline Nix has sandbox = false); the Debian package versions
 * are part of the expression, so an upgraded package gives new store paths.
 */

export interface PythonClosureOptions {
  /** Add a zlib store path (lib/libz.so.1). */
  zlib?: boolean;
  /** Add libstdc++ and libgcc_s in a gcc-libs store path. */
  cxxRuntime?: boolean;
  /** Add Python's C headers (include/python3.11/Python.h) to the python path. */
  headers?: boolean;
  /**
   * The stdlib modules that need C libraries besides libc (ctypes, ssl, hashlib, bz2, lzma, uuid,
   * sqlite3), with those libraries in a store path of their own: what torch (ctypes) and uvicorn (ssl) import.
   */
  stdlibLibs?: boolean;
}

export interface PythonClosure {
  /** The root: python-runtime (bin/python3, bin/bash, bin/vllm-server symlinks). */
  root: string;
  glibc: string;
  bash: string;
  python: string;
  /** `<python>/bin/python3.11` */
  interpreter: string;
  vllmServer: string;
  zlib: string | null;
  cxxRuntime: string | null;
  /** Every store path of the closure, sorted. */
  paths: string[];
}

const hostLibDir = '/lib/x86_64-linux-gnu';
const hostLoader = '/lib64/ld-linux-x86-64.so.2';
const wrapperScript = fileURLToPath(new URL('../../layers/vllm-rocm/vllm-server.sh', import.meta.url));

/** Stdlib parts no server needs: tests, GUI, 2to3, the static libpython, docs data. */
const prunedStdlib = [
  'test',
  'idlelib',
  'tkinter',
  'turtledemo',
  'turtle.py',
  'lib2to3',
  'ensurepip',
  'pydoc_data',
  'distutils',
  'config-3.11-x86_64-linux-gnu',
  'sitecustomize.py', // Debian's, a symlink into /etc
  'EXTERNALLY-MANAGED',
];

function debianVersion(pkg: string): string {
  return execFileSync('dpkg-query', ['-W', '-f', '${Version}', pkg], { encoding: 'utf8' }).trim();
}

/** The stdlib extension modules `stdlibLibs` adds, and the host libraries they need. */
const STDLIB_MODULES = ['_ctypes', '_ssl', '_hashlib', '_bz2', '_lzma', '_uuid', '_sqlite3'];
const STDLIB_LIBS = ['libffi.so.8', 'libssl.so.3', 'libcrypto.so.3', 'libbz2.so.1.0', 'liblzma.so.5', 'libuuid.so.1', 'libsqlite3.so.0'];

/** Upstream part of a Debian version: `2.36-9+deb12u14` → `2.36`, `1:1.2.13.dfsg-1` → `1.2.13`. */
function upstream(version: string): string {
  return version.replace(/^\d+:/, '').replace(/-[^-]*$/, '').replace(/\.dfsg.*$/, '').replace(/\+.*$/, '');
}

/** lib-dynload modules whose libraries are only libc and libm (which python has already loaded). */
function selfContainedExtensionModules(): string[] {
  const dir = '/usr/lib/python3.11/lib-dynload';
  return readdirSync(dir)
    .filter((name) => name.endsWith('.so') && !/^(_test|_xx|xx)/.test(name))
    .filter((name) => {
      const dynamic = execFileSync('readelf', ['-dW', `${dir}/${name}`], { encoding: 'utf8' });
      const needed = [...dynamic.matchAll(/\(NEEDED\).*\[(.*)\]/g)].map((m) => m[1]);
      return needed.every((lib) => lib === 'libc.so.6' || lib === 'libm.so.6');
    })
    .sort();
}

/** Checks the host has what the build copies (Debian's python3.11, bash, glibc, patchelf). */
export function canBuildPythonClosure(): boolean {
  return ['/usr/bin/python3.11', '/bin/bash', hostLoader, '/usr/bin/patchelf', '/usr/lib/python3.11/os.py'].every((f) =>
    existsSync(f),
  );
}

/** Builds (or finds, Nix being a cache) the closure; see the module comment for what is in it. */
export function buildPythonClosure(options: PythonClosureOptions = {}): PythonClosure {
  const glibcVersion = debianVersion('libc6');
  const bashVersion = debianVersion('bash');
  const pythonVersion = debianVersion('python3.11-minimal');
  const zlibVersion = debianVersion('zlib1g');
  const cxxVersion = debianVersion('libstdc++6');
  const modules = selfContainedExtensionModules();
  const stdlibLibsVersion = debianVersion('libpython3.11-stdlib');
  const loaderName = 'ld-linux-x86-64.so.2';

  const expr = `
let
  glibc = mkDrv "glibc-debian-${upstream(glibcVersion)}" ''
    set -e
    # debian ${glibcVersion}
    mkdir -p $out/lib
    cp -L ${hostLoader} $out/lib/${loaderName}
    for f in libc.so.6 libm.so.6 libpthread.so.0 libdl.so.2 librt.so.1 libutil.so.1; do
      cp -L ${hostLibDir}/$f $out/lib/$f
    done
  '';
  stdlibLibs = mkDrv "python-stdlib-libs-debian-${upstream(stdlibLibsVersion)}" ''
    set -e
    # debian ${stdlibLibsVersion}
    mkdir -p $out/lib
    for f in ${STDLIB_LIBS.join(' ')}; do cp -L ${hostLibDir}/$f $out/lib/$f; done
  '';
  relocate = file: rpath: "chmod u+w \${file} && patchelf --set-interpreter \${glibc}/lib/${loaderName} --set-rpath \${rpath} \${file}";
  bash = mkDrv "bash-debian-${upstream(bashVersion)}" ''
    set -e
    # debian ${bashVersion}
    mkdir -p $out/bin $out/lib
    cp -L /bin/bash $out/bin/bash
    cp -L ${hostLibDir}/libtinfo.so.6 $out/lib/libtinfo.so.6
    \${relocate "$out/bin/bash" "\${glibc}/lib:$out/lib"}
    ln -s bash $out/bin/sh
  '';
  python = mkDrv "python3-${upstream(pythonVersion)}" ''
    set -e
    # debian ${pythonVersion}
    mkdir -p $out/bin $out/lib $out/libexec/debian-libs
    cp -L /usr/bin/python3.11 $out/bin/python3.11
    cp -L ${hostLibDir}/libz.so.1 ${hostLibDir}/libexpat.so.1 $out/libexec/debian-libs/
    \${relocate "$out/bin/python3.11" "\${glibc}/lib:$out/libexec/debian-libs"}
    ln -s python3.11 $out/bin/python3
    ln -s python3.11 $out/bin/python
    cp -R /usr/lib/python3.11 $out/lib/python3.11
    cd $out/lib/python3.11
    rm -rf ${prunedStdlib.join(' ')}
    find . -name __pycache__ -prune -exec rm -rf {} +
    mv lib-dynload lib-dynload.all && mkdir lib-dynload
    for m in ${modules.join(' ')}; do mv lib-dynload.all/$m lib-dynload/$m; done
${options.stdlibLibs ? `    for m in ${STDLIB_MODULES.map((m) => `${m}.cpython-311-x86_64-linux-gnu.so`).join(' ')}; do
      mv lib-dynload.all/$m lib-dynload/$m
      chmod u+w lib-dynload/$m && patchelf --set-rpath \${stdlibLibs}/lib lib-dynload/$m
    done
` : ''}    rm -rf lib-dynload.all
    # Debian's site module (frozen into the interpreter, so site.py cannot be patched) looks in
    # dist-packages; add site-packages, where upstream CPython and nixpkgs look.
    mkdir site-packages
    cat > sitecustomize.py <<'PY'
import os, site, sys
site.addsitedir(os.path.join(sys.prefix, "lib", "python%d.%d" % sys.version_info[:2], "site-packages"))
PY
    ${options.headers ? 'mkdir -p $out/include && cp -RL /usr/include/python3.11 $out/include/python3.11' : ''}
    # Bytecode made now and trusted as is (PEP 552): otherwise Python, run as root, would write
    # __pycache__ into the store path (root ignores its read-only modes) and corrupt it. From /, so
    # the compiling Python imports nothing from (nor writes timestamped bytecode into) the copy.
    cd /
    PYTHONDONTWRITEBYTECODE=1 /usr/bin/python3.11 -m compileall -q -f --invalidation-mode unchecked-hash $out/lib/python3.11 >/dev/null
  '';
  vllmServer = mkDrv "vllm-server" ''
    set -e
    mkdir -p $out/bin
    {
      echo "#!\${bash}/bin/bash"
      echo 'export VLLM_PYTHON="\${"$"}{VLLM_PYTHON:-\${python}/bin/python3.11}"'
      tail -n +2 \${${wrapperScript}}
    } > $out/bin/vllm-server
    chmod 0555 $out/bin/vllm-server
  '';
  zlib = mkDrv "zlib-debian-${upstream(zlibVersion)}" ''
    set -e
    # debian ${zlibVersion}
    mkdir -p $out/lib
    cp -L ${hostLibDir}/libz.so.1 $out/lib/libz.so.1
    ln -s libz.so.1 $out/lib/libz.so
  '';
  cxxRuntime = mkDrv "gcc-libs-debian-${upstream(cxxVersion)}" ''
    set -e
    # debian ${cxxVersion}
    mkdir -p $out/lib
    cp -L ${hostLibDir}/libstdc++.so.6 ${hostLibDir}/libgcc_s.so.1 $out/lib/
  '';
  extras = ${options.zlib ? '[ zlib ]' : '[ ]'} ++ ${options.cxxRuntime ? '[ cxxRuntime ]' : '[ ]'}${options.stdlibLibs ? ' ++ [ stdlibLibs ]' : ''};
  root = mkDrv "python-runtime" ''
    set -e
    mkdir -p $out/bin $out/nix-support
    ln -s \${python}/bin/python3.11 $out/bin/python3
    ln -s \${python}/bin/python3.11 $out/bin/python
    ln -s \${bash}/bin/bash $out/bin/bash
    ln -s \${bash}/bin/bash $out/bin/sh
    ln -s \${vllmServer}/bin/vllm-server $out/bin/vllm-server
    echo \${builtins.concatStringsSep " " (map toString extras)} > $out/nix-support/runtime-paths
  '';
in [ root glibc bash python vllmServer ] ++ extras
`;
  const outs = nixBuild(expr);
  const named = (suffix: RegExp) => outs.find((p) => suffix.test(p.replace(/^\/nix\/store\/[0-9a-z]{32}-/, ''))) ?? null;
  const root = named(/^python-runtime$/)!;
  const python = named(/^python3-/)!;
  return {
    root,
    glibc: named(/^glibc-debian-/)!,
    bash: named(/^bash-debian-/)!,
    python,
    interpreter: `${python}/bin/python3.11`,
    vllmServer: named(/^vllm-server$/)!,
    zlib: options.zlib ? named(/^zlib-debian-/) : null,
    cxxRuntime: options.cxxRuntime ? named(/^gcc-libs-debian-/) : null,
    paths: closureOf([root]),
  };
}

/** Exports the closure to `<prefix>.closure` and `<prefix>.path-info.json`; returns both file names. */
export function exportPythonClosure(closure: PythonClosure, prefix: string): { closureFile: string; pathInfoFile: string } {
  const closureFile = `${prefix}.closure`;
  const pathInfoFile = `${prefix}.path-info.json`;
  exportClosure([closure.root], closureFile);
  execFileSync('sh', ['-c', 'cat > "$1"', 'sh', pathInfoFile], { input: pathInfoJson([closure.root]) });
  return { closureFile, pathInfoFile };
}
