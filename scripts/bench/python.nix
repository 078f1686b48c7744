# A stand-in Python 3.11 for the layer-cache bench (scripts/bench/cache.mjs): Debian's own
# /usr/bin/python3.11 and the top level of its stdlib in one store path named as nixpkgs names it, so
# build-image finds the image's Python (bin/python3.11, lib/python3.11/site-packages) and installs
# wheels for it. Small on purpose (about 11 MB): the bench measures the wheels and the cache, not it.
{ version }:
derivation {
  name = "python3-${version}";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  PATH = "/usr/bin:/bin";
  args = [ "-c" ''
    set -e
    mkdir -p $out/bin $out/lib/python3.11/site-packages
    cp -L /usr/bin/python3.11 $out/bin/python3.11
    ln -s python3.11 $out/bin/python3
    find /usr/lib/python3.11 -maxdepth 1 -type f -name '*.py' -exec cp {} $out/lib/python3.11/ \;
  '' ];
}
