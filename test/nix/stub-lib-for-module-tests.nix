# A STAND-IN, NOT nixpkgs' lib: the smallest lib that nix/modules/vllm-rocm.nix needs, and a stand-in
# for lib.evalModules that is just enough to evaluate that one module. It exists because this test
# machine has Nix but no nixpkgs. What it does, as nixpkgs does:
#   - options are declared with mkOption/mkEnableOption; defining one that is not declared is an
#     error ("The option `…' does not exist."), and so is a definition not of the option's type;
#   - defaults fill what is not defined; attrsOf (submodule …) options evaluate each entry's options;
#   - `mkIf cond x` in config is x when cond holds, null otherwise; failed assertions are listed.
# What it does NOT do: priorities (mkDefault, mkForce), mkMerge, merging several modules' definitions
# of one option, imports, types' merge functions, or anything of NixOS itself (units are not
# rendered here; the test renders the module's own attributes). Passing here says the module is
# consistent with itself and with this reading of the module system, not that NixOS accepts it.
#
# Use: import ./stub-lib-for-module-tests.nix { module = …; definitions = { services.vllm-rocm = …; };
#        hostConfig = { users.groups.video.gid = 26; … }; pkgs = …; }
{
  module,
  definitions,
  hostConfig ? { },
  pkgs,
}:
let
  inherit (builtins)
    all
    attrNames
    concatStringsSep
    elem
    filter
    head
    isAttrs
    isBool
    isFloat
    isInt
    isList
    isString
    mapAttrs
    toJSON
    ;

  simple = name: check: { inherit name check; };
  types = {
    bool = simple "boolean" isBool;
    str = simple "string" isString;
    float = simple "floating point number" isFloat;
    port = simple "16 bit unsigned integer; between 0 and 65535 (both inclusive)" (
      x: isInt x && x >= 0 && x <= 65535
    );
    ints.positive = simple "positive integer, meaning >0" (x: isInt x && x > 0);
    package = simple "package" (x: isAttrs x && x ? outPath);
    enum = values: simple "one of ${concatStringsSep ", " (map toJSON values)}" (x: elem x values);
    nullOr = t: {
      name = "null or ${t.name}";
      check = x: x == null || t.check x;
    };
    listOf = t: {
      name = "list of ${t.name}";
      check = x: isList x && all t.check x;
    };
    attrsOf = t: {
      name = "attribute set of ${t.name}";
      check = isAttrs;
      elemType = t;
    };
    submodule = m: {
      name = "submodule";
      check = isAttrs;
      submodule = m;
    };
  };

  lib = {
    inherit types;
    mkOption = attrs: attrs // { _type = "option"; };
    mkEnableOption = what: lib.mkOption {
      type = types.bool;
      default = false;
      description = "Whether to enable ${what}.";
    };
    mkIf = condition: content: {
      _type = "if";
      inherit condition content;
    };
    # As nixpkgs' lib.strings.escapeShellArg.
    escapeShellArg =
      arg:
      let
        s = toString arg;
      in
      if builtins.match "[[:alnum:],._+:@%/-]+" s != null then
        s
      else
        "'${builtins.replaceStrings [ "'" ] [ "'\\''" ] s}'";
  };

  showPath = path: concatStringsSep "." path;
  typeError =
    path: type: value:
    throw "A definition for option `${showPath path}' is not of type `${type.name}'. Definition: ${toJSON value}";

  evalValue =
    path: type: value:
    if type ? submodule then
      if isAttrs value then evalOptions path type.submodule.options value else typeError path type value
    else if type ? elemType then
      if isAttrs value then mapAttrs (n: v: evalValue (path ++ [ n ]) type.elemType v) value else typeError path type value
    else if type.check value then
      value
    else
      typeError path type value;

  evalOptions =
    path: options: defs:
    let
      unknown = filter (n: !(options ? ${n})) (attrNames defs);
      one =
        name:
        let
          option = options.${name};
          p = path ++ [ name ];
        in
        if (option._type or null) == "option" then
          if defs ? ${name} then
            evalValue p option.type defs.${name}
          else if option ? default then
            option.default
          else
            throw "The option `${showPath p}' is used but not defined."
        else
          evalOptions p option (defs.${name} or { });
    in
    if unknown != [ ] then
      throw "The option `${showPath (path ++ [ (head unknown) ])}' does not exist."
    else
      mapAttrs (name: _: one name) options;

  declared = module {
    inherit config lib pkgs;
  };
  ours = evalOptions [
    "services"
    "vllm-rocm"
  ] declared.options.services.vllm-rocm (definitions.services.vllm-rocm or { });
  config = hostConfig // {
    services = (hostConfig.services or { }) // {
      vllm-rocm = ours;
    };
  };

  # mkIf anywhere in the module's config: its content when the condition holds, else null (where
  # NixOS would have no definition). Lazily, as NixOS: failed assertions are found without forcing
  # the rest, which may not evaluate when they fail.
  resolve =
    value:
    if isAttrs value && (value._type or null) == "if" then
      (if value.condition then resolve value.content else null)
    else if isAttrs value && !(value ? outPath) then
      mapAttrs (_: resolve) value
    else
      value;
  result = resolve declared.config;
  resultConfig = if result == null then { } else result;
in
{
  options = ours;
  config = resultConfig;
  failedAssertions = map (a: a.message) (filter (a: !a.assertion) (resultConfig.assertions or [ ]));
}
