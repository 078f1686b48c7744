# The demo closure: a static busybox, a data path and a small app that uses both.
# Built offline (builder /bin/sh, absolute tools from the host), so any Nix can build it:
#   scripts/make-demo-closure.sh   (writes layers/demo/demo.closure)
let
  mkDrv = name: script: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
    PATH = "/usr/bin:/bin";
  };

  busybox = mkDrv "busybox-demo" ''
    mkdir -p $out/bin
    cp /bin/busybox $out/bin/busybox
    chmod 0555 $out/bin/busybox
    for applet in $($out/bin/busybox --list); do
      [ "$applet" = busybox ] || ln -s busybox $out/bin/$applet
    done
  '';

  data = mkDrv "demo-data" ''
    mkdir -p $out/share/demo
    echo "served from a Nix store path" > $out/share/demo/message.txt
  '';
in
mkDrv "demo-app" ''
  mkdir -p $out/bin
  cat > $out/bin/hello <<SCRIPT
  #!${busybox}/bin/sh
  echo "hello from nix2oci"
  cat ${data}/share/demo/message.txt
  if [ -n "\$1" ]; then echo "args: \$*"; fi
  SCRIPT
  chmod 0555 $out/bin/hello
''
