# A synthetic closure for `npm run bench`: hundreds of store paths with many small files, a few big
# ones, and a reference graph, built offline from the host's own binaries so that the bytes compress
# like real software does (not like random data, not like zeros).
{ paths ? 300, bigPaths ? 4, bigMiB ? 180 }:
let
  mkDrv = name: script: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
    PATH = "/usr/bin:/bin";
  };

  # ~64 MiB of real shared libraries and executables from the host.
  corpus = mkDrv "bench-corpus" ''
    for f in /usr/lib/x86_64-linux-gnu/*.so* /usr/bin/* /usr/lib/x86_64-linux-gnu/*/*.so*; do
      [ -f "$f" ] && cat "$f"
    done 2>/dev/null | head -c 67108864 > $out
  '';

  small = n: deps: mkDrv "bench-lib${toString n}-1.${toString n}" ''
    mkdir -p $out/lib $out/share/doc/lib${toString n} $out/bin
    # ~120 files of 1-16 KiB, taken from a different part of the corpus for each path.
    offset=$(( (${toString n} * 196613) % 60000000 ))
    tail -c +$offset ${corpus} | head -c 983040 | split -a 3 -b 8192 - $out/lib/part-
    tail -c +$(( offset + 1000000 )) ${corpus} | head -c 65536 | split -a 2 -b 1024 - $out/share/doc/lib${toString n}/note-
    ln -s ../lib/part-aaa $out/bin/tool${toString n}
    chmod 0555 $out/lib/part-aab
    echo ${toString deps} > $out/share/doc/lib${toString n}/references
  '';

  big = n: mkDrv "bench-big${toString n}" ''
    mkdir -p $out/lib
    i=0
    while [ $i -lt ${toString (bigMiB / 64)} ]; do
      echo "big ${toString n} chunk $i"
      cat ${corpus}
      i=$((i + 1))
    done | head -c ${toString (bigMiB * 1048576)} > $out/lib/libbig${toString n}.so
    head -c 1048576 /dev/urandom > $out/lib/random.bin
  '';

  range = from: to: if from > to then [ ] else [ from ] ++ range (from + 1) to;
  # lib n refers to lib n/2 and lib n/3, so popularity falls off with n.
  smallPaths = builtins.foldl' (acc: n:
    acc ++ [ (small n (if n < 2 then [ ] else [ (builtins.elemAt acc (n / 2)) (builtins.elemAt acc (n / 3)) ])) ]
  ) [ ] (range 0 (paths - 1));
  bigs = map big (range 1 bigPaths);
in
mkDrv "bench-app" ''
  mkdir -p $out
  echo ${toString (smallPaths ++ bigs)} > $out/references
''
