# The exact PyPI files the Nix package is built from (setup.cfg `install_requires` pins and the
# pinned packages' own new dependencies), each with its SRI hash.
#
# Hashes: PyPI's own sha256 digest of the file (https://pypi.org/pypi/NAME/json, `digests`),
# cross-checked for the claude-agent-sdk wheel, the sdbus and the mcp sdists by downloading the
# file and hashing it:
#
#   python3 -c 'import hashlib,base64,sys; print("sha256-" + base64.b64encode(
#       hashlib.sha256(open(sys.argv[1], "rb").read()).digest()).decode())' FILE
#
# Bumping a pin in setup.cfg means updating its entry here (same commands). Pure data: no
# nixpkgs needed to evaluate it (tests/test_nix_files.py checks it against setup.cfg).
let
  files = "https://files.pythonhosted.org/packages";
in
{
  # --- In nixpkgs under the same name; package.nix overrides their version and src with these
  # --- (pinned = true, the default) or takes nixpkgs' own (pinned = false).
  pykka = {
    version = "4.5.0";
    url = "${files}/2b/fd/818014aff9286434dc54a6d1fa993269a5f48d69b97ca5a06d5782c0cd19/pykka-4.5.0.tar.gz";
    hash = "sha256-gg/MNgRlUrSdfrYf6YCI0aKWMc8zFOjOS8Jqrq2NzU8=";
  };
  websockets = {
    version = "17.4";
    url = "${files}/75/79/590c5f0cc7d1661195aeefccb0e342b79f4c77d368d526d028821a390332/websockets-17.4.tar.gz";
    hash = "sha256-CdOTm3DfDIrS2hRevVCXi8yu4dVl6Diw55IaNNOFces=";
  };
  apsw = {
    version = "3.54.1.0";
    url = "${files}/84/75/be84a7237ea1af8374c67ff7468053bff538e1591526805c6574b2efef4d/apsw-3.54.1.0.tar.gz";
    hash = "sha256-2f1k7XbcDz0iZdSu7bdNZ4wqx9/71Oi6Bb+ah6p8NNM=";
  };
  prometheus-client = {
    version = "0.26.0";
    url = "${files}/52/73/f1334c29c2af4cd9dba6c7817e61b611bd0215e2eb5565c6064a4de18802/prometheus_client-0.26.0.tar.gz";
    hash = "sha256-BKkbz5Tiz3SkShqHTWUaLoU+01S26CLzt0h3UUZdXCs=";
  };
  starlette = {
    version = "1.10.0";
    url = "${files}/48/bb/3d8757f21e9a53d9035c9eb039a777047139a16bfdbedfc7a58241c3d914/starlette-1.10.0.tar.gz";
    hash = "sha256-uDmQmNTB41InNPcjXcebH8ln+WzxOcgeD6MEeeBoX5s=";
  };
  uvicorn = {
    version = "0.54.0";
    url = "${files}/da/34/30e9280707135d2cfc589dfff3cb796bd07a3aeb1a3e415ba09dd89d7bb4/uvicorn-0.54.0.tar.gz";
    hash = "sha256-ouM8v6oDBvjmsME+DLidfXoto+YrkMZuGMM9mAeyhiA=";
  };

  # --- Built here (package.nix): possibly missing from nixpkgs, or too old there (mcp 1.x has no
  # --- mcp.server.MCPServer; 2.x needs mcp-types, httpx2, httpcore2).
  sdbus = {
    version = "0.14.3";
    url = "${files}/69/0e/14b0f16087cf7f1e1817da9282dcb590fe27030c6ba136c3e35dff647f3a/sdbus-0.14.3.tar.gz";
    hash = "sha256-TsT6QQhim65asndeVXWwJR/bVV1KNhPJ3bN/xz+IKYM=";
  };
  mcp = {
    version = "2.3.0";
    url = "${files}/20/d7/4a2878f128df729db3ca04e71bfce26405cc2e0c9ebe19c592feeb4c61b9/mcp-2.3.0-py3-none-any.whl";
    hash = "sha256-3QxEwInRZFPorjGjh3oAVNeiMUyqqB9eBUG5sXNLI3c=";
  };
  mcp-types = {
    version = "2.3.0";
    url = "${files}/ce/48/32583066b155bb5d4507e7887dc88ee23118cc4de8e2a12870c49719e2a8/mcp_types-2.3.0-py3-none-any.whl";
    hash = "sha256-lo79va7fqwatrkDTeKNDlfEJDFkh1L48nN4oOq922R0=";
  };
  httpx2 = {
    version = "2.17.0";
    url = "${files}/a6/3c/6112b7c372a84a332db85f208ba31fccf9287d6ca67d6107c454e00ba4f3/httpx2-2.17.0-py3-none-any.whl";
    hash = "sha256-Q0WpMjkUlqCCtlkp9yJg28nOXNLSG8so0A8FaZNabrE=";
  };
  httpcore2 = {
    # httpx2 2.17.0 requires httpcore2==2.16.0.
    version = "2.16.0";
    url = "${files}/af/c2/ce417c397afa5181f0e3c6ff01a4d01639414e1adef08730d97571297151/httpcore2-2.16.0-py3-none-any.whl";
    hash = "sha256-XENYMZ8mAtmErZMYLJ/uUWDyLp2nur3ahwpefE4tw08=";
  };

  # --- The claude CLI: the wheel bundles claude_agent_sdk/_bundled/claude (a Bun executable,
  # --- ~400 MB, dynamically linked against glibc only), per platform.
  claude-agent-sdk = {
    version = "0.2.188";
    wheels = {
      x86_64-linux = {
        url = "${files}/a1/9c/362016e0b1ccd24193a6a41650c753e4d3db00a2903a1c7118eb622dde3f/claude_agent_sdk-0.2.188-py3-none-manylinux_2_17_x86_64.whl";
        hash = "sha256-AKbucvjX6zsCe6iIPs0yEIEG7PRgaMtjLEQBvkZck2Q=";
      };
      aarch64-linux = {
        url = "${files}/2b/7d/0054b1bb0bd58613694ee4f0bd286ee5580fe80e7d3b6c9473ac40175afd/claude_agent_sdk-0.2.188-py3-none-manylinux_2_17_aarch64.whl";
        hash = "sha256-jiG7L308HNCKAZ3yiZu7Ob5smG4l08lRAj0FQON6eCA=";
      };
    };
  };
}
