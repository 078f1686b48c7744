# NixOS module: vLLM on ROCm, one systemd service per model lane (services.vllm-rocm).
#
# Each lane is one vLLM process serving one model on its own port with its own share of the GPU's
# memory, run either
#   - from the nix2oci image with podman (runFrom = "image", the default): the same container as
#     ops/vllm-rocm@.service starts on hosts without NixOS, or
#   - straight from the Nix runtime (runFrom = "runtime"): layers/vllm-rocm/closure.nix's vllm-server,
#     with torch and vLLM from wheels installed into `pythonPath`.
# The flake exports this file as nixosModules.vllm-rocm, with `package` defaulting to its runtime.
#
# Bad input is refused at evaluation (assertions): two lanes on one port, GPU memory shares adding up
# to 1 or more, a model path that is absolute or leaves modelsDir, extra arguments with whitespace in
# them. A model that is not a directory on the host stops its lane at start, with a message.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.vllm-rocm;
  inherit (lib) mkOption types;

  laneNames = builtins.attrNames cfg.lanes;
  lanes = map (name: cfg.lanes.${name} // { inherit name; }) laneNames;

  # The environment the image sets (layers/vllm-rocm/image.json), for lanes run from the runtime:
  # the settings without the image's own paths, which the runtime's own take the place of.
  imageEnv = (builtins.fromJSON (builtins.readFile ../../layers/vllm-rocm/image.json)).env;
  imagePaths = [
    "PATH"
    "SSL_CERT_FILE"
    "ROCM_HOME"
    "ROCM_PATH"
    "LD_LIBRARY_PATH"
    "VLLM_HOST"
    "VLLM_PORT"
    "GPU_MEM_UTIL"
    "MAX_MODEL_LEN"
    "MODEL_PATH"
  ];
  imageSettings = builtins.removeAttrs imageEnv imagePaths;

  # 0.48, not toString's 0.480000 (the wrapper and the messages show what the user wrote).
  showFloat =
    f:
    let
      s = toString f;
      fraction = builtins.match "(-?[0-9]*\\.[0-9]*[1-9])0*" s;
      whole = builtins.match "(-?[0-9]*)\\.0*" s;
    in
    if fraction != null then
      builtins.head fraction
    else if whole != null then
      builtins.head whole
    else
      s;

  videoGid = toString config.users.groups.video.gid;
  renderGid = toString config.users.groups.render.gid;

  # What the wrapper (vllm-server) reads, per lane; as in ops/lanes/<lane>.env.
  laneEnv = lane: modelPath: {
    MODEL_PATH = modelPath;
    GPU_MEM_UTIL = showFloat lane.gpuMemoryUtilization;
    MAX_MODEL_LEN = toString lane.maxModelLen;
    EXTRA_VLLM_ARGS = builtins.concatStringsSep " " (
      [
        "--served-model-name"
        lane.name
      ]
      ++ lane.extraArgs
    );
  };

  checkModel =
    lane:
    pkgs.writeShellScript "vllm-rocm-${lane.name}-check-model" ''
      dir=${lib.escapeShellArg "${cfg.modelsDir}/${lane.model}"}
      if [ ! -d "$dir" ]; then
        echo "vllm-rocm-${lane.name}: the model $dir is not a directory (services.vllm-rocm.lanes.${lane.name}.model, under modelsDir)" >&2
        exit 1
      fi
    '';

  # The unit of a lane run with podman: ops/vllm-rocm@.service with the lane's values as Environment=
  # instead of EnvironmentFile= (a test compares the two).
  podmanService = lane: {
    description = "vLLM ROCm model lane ${lane.name} (podman)";
    wants = [ "network-online.target" ];
    after = [ "network-online.target" ];
    wantedBy = [ "multi-user.target" ];
    environment = laneEnv lane "/models/${lane.model}" // {
      PODMAN_SYSTEMD_UNIT = "%n";
      IMAGE = cfg.image;
      MODELS_DIR = cfg.modelsDir;
      VIDEO_GID = videoGid;
      RENDER_GID = renderGid;
      HOST_PORT = toString lane.port;
    };
    serviceConfig = {
      Type = "notify";
      NotifyAccess = "all";
      Restart = "on-failure";
      RestartSec = 30;
      TimeoutStartSec = 900;
      TimeoutStopSec = 70;
      ExecStartPre = "${checkModel lane}";
      ExecStart = builtins.concatStringsSep " " (
        [
        "${pkgs.podman}/bin/podman run --cidfile=%t/%n.ctr-id --cgroups=no-conmon --rm --sdnotify=conmon --replace -d"
        "--name vllm-${lane.name}"
        "--device /dev/kfd --device /dev/dri"
        "--group-add \${VIDEO_GID} --group-add \${RENDER_GID}"
        "--security-opt seccomp=unconfined"
        "--shm-size 16g"
      ]
      ++ (if cfg.memoryMax != null then [ "--memory ${cfg.memoryMax}" ] else [ ])
      ++ [
        "-p \${HOST_PORT}:8000"
        "-v \${MODELS_DIR}:/models:ro"
        "-e MODEL_PATH -e GPU_MEM_UTIL -e MAX_MODEL_LEN -e SWAP_SPACE -e EXTRA_VLLM_ARGS"
        ''--health-cmd "curl -fsS http://localhost:8000/health"''
        "--health-interval 30s --health-timeout 10s --health-retries 3 --health-start-period 10m"
        "--health-on-failure=kill"
        "\${IMAGE}"
      ]
      );
      ExecStop = "${pkgs.podman}/bin/podman stop --ignore -t 60 --cidfile=%t/%n.ctr-id";
      ExecStopPost = "${pkgs.podman}/bin/podman rm -f --ignore --cidfile=%t/%n.ctr-id";
    };
  };

  # The unit of a lane run from the Nix runtime, as the user, with the GPU's groups.
  runtimeService = lane: {
    description = "vLLM ROCm model lane ${lane.name}";
    wants = [ "network-online.target" ];
    after = [ "network-online.target" ];
    wantedBy = [ "multi-user.target" ];
    environment =
      imageSettings
      // laneEnv lane "${cfg.modelsDir}/${lane.model}"
      // {
        VLLM_HOST = cfg.host;
        VLLM_PORT = toString lane.port;
        ROCM_HOME = "${cfg.package}";
        ROCM_PATH = "${cfg.package}";
        LD_LIBRARY_PATH = "${cfg.package}/lib";
        PYTHONPATH = toString cfg.pythonPath;
        SSL_CERT_FILE = "${cfg.package}/etc/ssl/certs/ca-bundle.crt";
        # Triton's and vLLM's caches (compiled kernels) live under the state directory.
        HOME = "/var/lib/vllm-rocm/${lane.name}";
      };
    path = [ cfg.package ];
    serviceConfig = {
      Type = "simple";
      User = cfg.user;
      Group = cfg.user;
      SupplementaryGroups = [
        "video"
        "render"
      ];
      StateDirectory = "vllm-rocm/${lane.name}";
      Restart = "on-failure";
      RestartSec = 30;
      TimeoutStartSec = 900;
      ExecStartPre = "${checkModel lane}";
      ExecStart = "${cfg.package}/bin/vllm-server";
    }
    // limits;
  };

  # Resource limits in current systemd names (MemoryMax, not the deprecated MemoryLimit). A podman
  # lane's container runs outside the unit's cgroup (--cgroups=no-conmon): it gets podman's --memory.
  limits = if cfg.memoryMax != null then { MemoryMax = cfg.memoryMax; } else { };

  # Assertions (bad input refused at evaluation).
  portClashes = builtins.concatMap (
    a:
    builtins.concatMap (
      b:
      if a.name < b.name && a.port == b.port then
        [ "services.vllm-rocm.lanes: ${a.name} and ${b.name} both use port ${toString a.port}" ]
      else
        [ ]
    ) lanes
  ) lanes;
  shares = map (lane: lane.gpuMemoryUtilization) lanes;
  shareSum = builtins.foldl' (a: b: a + b) 0.0 shares;
  shareList = builtins.concatStringsSep " + " (
    map (lane: "${lane.name} ${showFloat lane.gpuMemoryUtilization}") lanes
  );
  badShares = builtins.filter (lane: lane.gpuMemoryUtilization <= 0 || lane.gpuMemoryUtilization >= 1) lanes;
  badModels = builtins.filter (
    lane:
    lane.model == ""
    || builtins.substring 0 1 lane.model == "/"
    || builtins.elem ".." (builtins.filter builtins.isString (builtins.split "/" lane.model))
  ) lanes;
  badArgs = builtins.filter (
    lane: builtins.any (arg: builtins.match ".*[[:space:]].*" arg != null || arg == "") lane.extraArgs
  ) lanes;
in
{
  options.services.vllm-rocm = {
    enable = lib.mkEnableOption "vLLM on ROCm, one systemd service (vllm-rocm-<lane>) per model lane";

    runFrom = mkOption {
      type = types.enum [
        "image"
        "runtime"
      ];
      default = "image";
      description = ''
        "image": run each lane from `image` with podman (load it first: podman load -i vllm-rocm.tar).
        "runtime": run vllm-server from `package`, with torch and vLLM from `pythonPath`.
      '';
    };

    image = mkOption {
      type = types.str;
      default = "nix2oci/vllm-rocm:0.12.0-rocm7.1";
      description = "The image the lanes run (runFrom = \"image\"), as podman names it.";
    };

    package = mkOption {
      type = types.nullOr types.package;
      default = null;
      description = "The runtime (layers/vllm-rocm/closure.nix) for runFrom = \"runtime\"; the flake's module sets its own.";
    };

    pythonPath = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/var/lib/vllm-rocm/site-packages";
      description = ''
        For runFrom = "runtime": the directory the torch and vLLM wheels are installed in
        (pip install --no-deps --target DIR torch-….whl vllm-….whl), put on PYTHONPATH.
      '';
    };

    modelsDir = mkOption {
      type = types.str;
      default = "/srv/models";
      description = "The host directory holding the models; lanes' `model` paths are under it (mounted read-only at /models in the image).";
    };

    user = mkOption {
      type = types.str;
      default = "vllm";
      description = "The system user lanes run as when run from the runtime (podman lanes run as root, as ops/vllm-rocm@.service does); it gets the video and render groups.";
    };

    host = mkOption {
      type = types.str;
      default = "127.0.0.1";
      description = "The address lanes run from the runtime listen on (image lanes publish their port on every address, as podman -p does).";
    };

    memoryMax = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "64G";
      description = "Most memory a lane may use: systemd MemoryMax= of a runtime lane, podman --memory of an image lane (on an APU, GPU memory is system memory).";
    };

    lanes = mkOption {
      default = { };
      description = "The model lanes, by name: each one vLLM process, one model, one port.";
      type = types.attrsOf (
        types.submodule {
          options = {
            model = mkOption {
              type = types.str;
              example = "vllm/orchestrator/bf16";
              description = "The model's directory, relative to modelsDir.";
            };
            port = mkOption {
              type = types.port;
              description = "The host port of the lane's OpenAI-compatible API (and /health, /metrics).";
            };
            gpuMemoryUtilization = mkOption {
              type = types.float;
              default = 0.3;
              description = "The lane's share of the GPU's memory (vLLM --gpu-memory-utilization); the lanes' shares add up to less than 1.";
            };
            maxModelLen = mkOption {
              type = types.ints.positive;
              default = 32768;
              description = "vLLM --max-model-len.";
            };
            extraArgs = mkOption {
              type = types.listOf types.str;
              default = [ ];
              example = [ "--enable-prefix-caching" ];
              description = "More vLLM arguments, one word each (the wrapper splits EXTRA_VLLM_ARGS on whitespace).";
            };
          };
        }
      );
    };
  };

  config = lib.mkIf cfg.enable {
    assertions =
      map (message: {
        assertion = false;
        inherit message;
      }) portClashes
      ++ [
        {
          assertion = shareSum < 1.0;
          message = "services.vllm-rocm.lanes: the GPU memory shares add up to ${showFloat shareSum} (${shareList}); lanes share one GPU, so they must add up to less than 1";
        }
      ]
      ++ map (lane: {
        assertion = false;
        message = "services.vllm-rocm.lanes.${lane.name}.gpuMemoryUtilization: ${showFloat lane.gpuMemoryUtilization} is not a share between 0 and 1";
      }) badShares
      ++ map (lane: {
        assertion = false;
        message = "services.vllm-rocm.lanes.${lane.name}.model: \"${lane.model}\" must be a path relative to modelsDir (${cfg.modelsDir}), without ..";
      }) badModels
      ++ map (lane: {
        assertion = false;
        message = "services.vllm-rocm.lanes.${lane.name}.extraArgs: each argument must be one word (EXTRA_VLLM_ARGS is split on whitespace): ${builtins.toJSON lane.extraArgs}";
      }) badArgs
      ++ [
        {
          assertion = cfg.runFrom != "runtime" || (cfg.package != null && cfg.pythonPath != null);
          message = "services.vllm-rocm: runFrom = \"runtime\" needs package (the runtime) and pythonPath (where the torch and vLLM wheels are installed)";
        }
      ];

    users.users.${cfg.user} = {
      isSystemUser = true;
      group = cfg.user;
      extraGroups = [
        "video"
        "render"
      ];
    };
    users.groups.${cfg.user} = { };

    virtualisation.podman.enable = lib.mkIf (cfg.runFrom == "image") true;

    systemd.services = builtins.listToAttrs (
      map (lane: {
        name = "vllm-rocm-${lane.name}";
        value = if cfg.runFrom == "image" then podmanService lane else runtimeService lane;
      }) lanes
    );
  };
}
