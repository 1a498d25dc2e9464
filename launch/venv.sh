# Sourced by launch/smoke.sh and tests/run.sh: creates .venv if missing, installs requirements.txt
# when it changed since the last install, and activates the environment.
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  python -m pip install -q --upgrade pip
  python -m pip install -q -r requirements.txt
  echo "$want" > "$stamp"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# tcmalloc: CPU training steps run ~1.5x faster with it (gemb/runtime/allocator.py says why, and
# preloads it). Installed here where this shell may use apt-get; else training warns once.
install_tcmalloc() {
  local apt=(timeout 120 env DEBIAN_FRONTEND=noninteractive apt-get -y -qq)
  "${apt[@]}" install libtcmalloc-minimal4 \
    || { "${apt[@]}" update && "${apt[@]}" install libtcmalloc-minimal4; }
}
if [ "$(uname -s)" = Linux ] && ! ldconfig -p 2>/dev/null | grep -q libtcmalloc \
    && [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
  install_tcmalloc > /dev/null 2>&1 || echo "note: apt-get could not install libtcmalloc-minimal4" >&2
fi
