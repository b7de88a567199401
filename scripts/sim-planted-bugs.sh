#!/usr/bin/env bash
# Plants known defects one at a time and lets the deterministic simulator
# find each: runs schedules from seed 0 on one thread until the first
# violation (so its seed + 1 is the number of schedules it took), replays
# that seed twice and compares the failures, then restores the file.
#
#   scripts/sim-planted-bugs.sh            # all six
#   scripts/sim-planted-bugs.sh lostwake   # one of: nosync lostwake segname
#                                          # shardsync nomid remapguard
#
# (Not zeroing the stale sums-file entries after a rewind needs the chain to
# flip back to the same leaves, which fresh leaves never do: that defect is
# found by tests/rewind.rs, a_flip_flop_reorganisation_survives_a_crash_at_
# every_step_of_a_checkpoint.)
#
# Needs a clean work tree (it edits and restores files under src/).
set -uo pipefail
cd "$(dirname "$0")/.."
N=${N:-20000}
OUT=${OUT:-target/planted}
mkdir -p "$OUT"

plant() { # NAME FILE OLD NEW
  local name=$1 file=$2 old=$3 new=$4
  cp "$file" "$OUT/$name.orig"
  python3 - "$file" "$old" "$new" <<'PY' || { echo "$name: cannot plant"; return 1; }
import sys
f, old, new = sys.argv[1:4]
s = open(f).read()
if s.count(old) != 1: sys.exit(f"found {s.count(old)} times")
open(f, "w").write(s.replace(old, new))
PY
  run() { cargo test --release --test sim -- schedules --nocapture "$@"; }
  RINGTREE_SIM_THREADS=1 RINGTREE_SIM_SCHEDULES=$N RINGTREE_SIM_SEED=0 run > "$OUT/$name.find" 2>&1
  local seed
  seed=$(grep -o 'RINGTREE_SIM_SEED=[0-9]*' "$OUT/$name.find" | head -1 | cut -d= -f2)
  if [ -z "$seed" ]; then
    echo "$name: not found in $N schedules"
  else
    for i in 1 2; do
      RINGTREE_SIM_THREADS=1 RINGTREE_SIM_SCHEDULES=1 RINGTREE_SIM_SEED=$seed run 2>&1 |
        sed -n '/simulation failed\|panicked at/,/^replay:/p' | sed -E 's/\([0-9]+\)//' > "$OUT/$name.replay$i"
    done
    local same="replays differently"
    cmp -s "$OUT/$name.replay1" "$OUT/$name.replay2" && [ -s "$OUT/$name.replay1" ] && same="replays identically"
    echo "$name: found by schedule $((seed + 1)) (seed $seed), $same:"
    grep -v "panicked at\|^replay:" "$OUT/$name.replay1" | head -3 | sed 's/^/    /'
  fi
  cp "$OUT/$name.orig" "$file"
}

want=${1:-all}
[[ $want == all || $want == nosync ]] && plant nosync src/io/mod.rs \
  $'        self.write_at(off, bufs)?;\n        self.sync_data()' \
  $'        self.write_at(off, bufs)'
[[ $want == all || $want == lostwake ]] && plant lostwake src/wal/mod.rs \
  $'            t.unpark();\n        }\n    }\n}' \
  $'            let _ = t;\n        }\n    }\n}'
[[ $want == all || $want == segname ]] && plant segname src/wal/segments/prepare.rs \
  $'    storage.rename(&tmp, &path)?;\n    storage.sync_dir(dir)?;\n    spares.zeroed' \
  $'    storage.rename(&tmp, &path)?;\n    spares.zeroed'
[[ $want == all || $want == shardsync ]] && plant shardsync src/checkpoint/writer.rs \
  $'        self.sync_level_files(&files, &shards)?;\n        let manifest' \
  $'        let manifest'
# The checkpoint of the rewound tree before one that writes over the
# chunks a rewind cut off.
[[ $want == all || $want == nomid ]] && plant nomid src/tree/checkpointing.rs \
  $'            if lw.size < cp.leaves() {' \
  $'            if false && lw.size < cp.leaves() {'
# Levels served from shards a rewind changed since the checkpoint wrote them.
[[ $want == all || $want == remapguard ]] && plant remapguard src/tree/checkpointing.rs \
  $'            let low = t.low_water.map(|lw| lw.size);' \
  $'            let low: Option<u64> = None;'
exit 0
