{
  description = "nix2oci: the vLLM ROCm runtime (layers/vllm-rocm), its export for nix2oci, a dev shell and a NixOS module";

  # ROCm 7 is in nixos-unstable. No flake.lock is committed: the first `nix develop` or `nix build`
  # writes one; commit yours to pin nixpkgs.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      system = "x86_64-linux";
      pkgs = import nixpkgs {
        inherit system;
        config.allowUnfree = true;
      };
      runtimeFor = python: import ./layers/vllm-rocm/closure.nix { inherit pkgs python; };
      runtime = runtimeFor "3.12";
      runtimePy311 = runtimeFor "3.11";

      # `nix run .#export-vllm-rocm -- out/vllm-rocm` writes out/vllm-rocm.closure and
      # out/vllm-rocm.path-info.json, what `nix2oci build-image --closure … --path-info …` reads.
      exportApp =
        name: root:
        pkgs.writeShellApplication {
          inherit name;
          runtimeInputs = [
            pkgs.nix
            pkgs.coreutils
          ];
          text = ''
            export NIX2OCI_EXPORT_ROOTS=${root}
            ${builtins.readFile ./nix/export-runtime.sh}
          '';
        };

      # The image's settings (layers/vllm-rocm/image.json's env) in a shell, with the runtime's own
      # paths in place of the image's; torch and vLLM come from wheels installed into .vllm/site-packages.
      devShell =
        runtime:
        let
          imageEnv = (builtins.fromJSON (builtins.readFile ./layers/vllm-rocm/image.json)).env;
          settings = builtins.removeAttrs imageEnv [
            "PATH"
            "SSL_CERT_FILE"
            "ROCM_HOME"
            "ROCM_PATH"
            "LD_LIBRARY_PATH"
          ];
        in
        pkgs.mkShell (
          settings
          // {
            packages = [
              runtime
              runtime.passthru.interpreter.pkgs.pip
            ];
            ROCM_HOME = "${runtime}";
            ROCM_PATH = "${runtime}";
            LD_LIBRARY_PATH = "${runtime}/lib";
            SSL_CERT_FILE = "${runtime}/etc/ssl/certs/ca-bundle.crt";
            shellHook = ''
              export PYTHONPATH="$PWD/.vllm/site-packages''${PYTHONPATH:+:$PYTHONPATH}"
              echo "vllm-rocm (Python ${runtime.passthru.pythonVersion}): install the wheels once with"
              echo "  pip install --no-deps --target .vllm/site-packages torch-….whl vllm-….whl"
              echo "then: MODEL_PATH=/path/to/model vllm-server"
            '';
          }
        );
    in
    {
      packages.${system} = {
        default = runtime;
        vllm-rocm-runtime = runtime;
        vllm-rocm-runtime-py311 = runtimePy311;
        export-vllm-rocm = exportApp "export-vllm-rocm" runtime;
        export-vllm-rocm-py311 = exportApp "export-vllm-rocm-py311" runtimePy311;
      };

      apps.${system} = {
        export-vllm-rocm = {
          type = "app";
          program = "${self.packages.${system}.export-vllm-rocm}/bin/export-vllm-rocm";
        };
        export-vllm-rocm-py311 = {
          type = "app";
          program = "${self.packages.${system}.export-vllm-rocm-py311}/bin/export-vllm-rocm-py311";
        };
      };

      # `nix develop .#vllm`: the runtime of layers/vllm-rocm/closure.nix, vllm-server on PATH.
      devShells.${system} = {
        vllm = devShell runtime;
        vllm-py311 = devShell runtimePy311;
      };

      # services.vllm-rocm; for lanes run from the runtime, set
      # services.vllm-rocm.package = nix2oci.packages.x86_64-linux.vllm-rocm-runtime.
      nixosModules.vllm-rocm = import ./nix/modules/vllm-rocm.nix;
    };
}
