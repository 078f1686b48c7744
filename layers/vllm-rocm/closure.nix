# The runtime closure of the vLLM ROCm image (layers/vllm-rocm/image.json, image.py311.json).
#
# Python with the vLLM runtime dependencies nixpkgs provides, the ROCm runtime libraries, the tools a
# running server and its health check need, and the `vllm-server` wrapper. torch and vLLM themselves
# are not built here: nix2oci installs their prebuilt wheels into the image.
#
# `python` picks the interpreter, and must match the wheels' tag:
#   "3.12" (default)  vLLM's prebuilt ROCm wheels are cp312 only (vLLM's
#                     docs/getting_started/installation/gpu.rocm.inc.md; docker/Dockerfile.rocm_base
#                     builds with PYTHON_VERSION=3.12), and so are the torch wheels that go with them
#   "3.11"            for wheels built for 3.11 (e.g. vLLM built from source against a cp311 torch)
#
# On a Nix machine: scripts/export-closure.sh layers/vllm-rocm/closure.nix out/vllm-rocm
# (or, for 3.11: … out/vllm-rocm-py311 --argstr python 3.11) writes <out>.closure and
# <out>.path-info.json for `nix2oci build-image`; the flake's `export-vllm-rocm` app does the same.
{
  pkgs ? import <nixpkgs> { config.allowUnfree = true; },
  python ? "3.12",
}:
let
  inherit (pkgs) lib;
  supportedPythons = [
    "3.12"
    "3.11"
  ];
  # python312, python311: nixpkgs' attribute of that interpreter.
  pythonAttr = "python${builtins.replaceStrings [ "." ] [ "" ] python}";
  interpreter =
    if builtins.elem python supportedPythons then
      pkgs.${pythonAttr}
    else
      throw ''vllm-rocm closure.nix: python = "${python}" is not supported; use "3.12" (vLLM's ROCm wheels) or "3.11"'';
  rocm = pkgs.rocmPackages;

  # vLLM detects the ROCm platform by importing `amdsmi`; nixpkgs builds it for its default Python,
  # so build it again for the image's (its site-packages must be lib/python3.X of that interpreter).
  amdsmi = rocm.amdsmi.override {
    python = interpreter;
    inherit (interpreter.pkgs) wrapPython;
  };

  # vLLM 0.12's requirements/common.txt and requirements/rocm.txt, and torch's own, by nixpkgs
  # attribute name. A name this nixpkgs lacks is left out with a trace; nix2oci's requirements check
  # then names what is missing when the wheels are installed (or the recipe waives it).
  pythonPackageNames = [
    # torch
    "filelock" "typing-extensions" "sympy" "networkx" "jinja2" "fsspec"
    # the OpenAI-compatible server
    "fastapi" "uvicorn" "uvloop" "httptools" "websockets" "python-multipart" "email-validator"
    "starlette" "pydantic" "aiohttp" "openai" "prometheus-client" "prometheus-fastapi-instrumentator"
    "watchfiles" "python-json-logger" "anthropic" "mcp" "grpcio" "openai-harmony"
    # tokenizers, models, structured output
    "regex" "cachetools" "psutil" "sentencepiece" "numpy" "requests" "tqdm" "blake3" "py-cpuinfo"
    "transformers" "tokenizers" "huggingface-hub" "safetensors" "protobuf" "pillow" "tiktoken"
    "lm-format-enforcer" "llguidance" "outlines-core" "diskcache" "lark" "xgrammar"
    "partial-json-parser" "pyzmq" "msgspec" "gguf" "mistral-common" "opencv4" "pyyaml" "einops"
    "compressed-tensors" "depyf" "cloudpickle" "ninja" "pybase64" "cbor2" "ijson" "setproctitle"
    "scipy" "numba" "datasets" "peft" "pytest-asyncio" "setuptools" "packaging"
  ];
  pickPythonPackages =
    ps:
    lib.concatMap (
      name:
      if ps ? ${name} then
        [ ps.${name} ]
      else
        builtins.trace "vllm-rocm: nixpkgs has no ${pythonAttr}Packages.${name}; left out" [ ]
    ) pythonPackageNames;

  pythonEnv = interpreter.withPackages (ps: pickPythonPackages ps ++ [ (ps.toPythonModule amdsmi) ]);

  # The ROCm runtime (ROCM_HOME). torch's ROCm wheels bundle most of these in torch/lib; the
  # closure's copies serve what they do not bundle and the tools (rocminfo, amd-smi).
  rocmLibraries = with rocm; [
    rocm-core
    rocm-runtime
    rocm-comgr
    rocm-device-libs
    clr
    rocminfo
    rocm-smi
    rocblas
    hipblas
    hipblas-common
    hipblaslt
    rocsolver
    hipsolver
    rocsparse
    hipsparse
    rocrand
    hiprand
    rocfft
    hipfft
    miopen
    rccl
    roctracer
    rocprofiler-register
    amdsmi
  ];
  rocmHome = pkgs.symlinkJoin {
    name = "rocm";
    paths = rocmLibraries;
  };

  # Libraries manylinux wheels expect from the system: torch bundles ROCm but not libstdc++ or
  # libgcc_s, and its bundled HSA runtime needs libdrm, libnuma and libelf.
  systemLibraries = [
    pkgs.stdenv.cc.cc.lib
    pkgs.glibc
    pkgs.zlib
    pkgs.zstd
    pkgs.libdrm
    pkgs.numactl
    pkgs.elfutils
    pkgs.libffi
    pkgs.openssl
    pkgs.bzip2
    pkgs.xz
  ];

  # The one wrapper script, shared with the tests (test/helpers/python-closure.ts).
  vllmServer = pkgs.writeShellScriptBin "vllm-server" ''
    export VLLM_PYTHON="''${VLLM_PYTHON:-${pythonEnv}/bin/python3}"
    ${builtins.readFile ./vllm-server.sh}
  '';
in
pkgs.buildEnv {
  name = "vllm-rocm-runtime";
  paths = [
    pythonEnv
    vllmServer
    rocmHome
    pkgs.bashInteractive
    pkgs.coreutils
    pkgs.curl
    pkgs.cacert
    # Triton compiles its launcher stubs at run time: a C compiler and Python's headers (in pythonEnv).
    pkgs.stdenv.cc
  ]
  ++ systemLibraries;
  pathsToLink = [
    "/bin"
    "/lib"
    "/etc"
    "/share"
    "/include"
  ];
  ignoreCollisions = true;
  passthru = {
    inherit
      interpreter
      pythonEnv
      rocmHome
      vllmServer
      ;
    pythonVersion = python;
  };
}
