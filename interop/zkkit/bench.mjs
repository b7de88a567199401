// zk-kit's LeanIMT with poseidon-lite's poseidon2: leaves/s of insertMany
// into an empty tree, and one poseidon2 alone (best of 3 runs each).
//
// Usage: node bench.mjs [LEAVES]   (default 100000)
import { LeanIMT } from "@zk-kit/lean-imt";
import { poseidon2 } from "poseidon-lite";
import { hash2, leaves, pkgVersion } from "./common.mjs";

const n = Number(process.argv[2] ?? 100000);
const input = leaves(n);

function best(runs, f) {
  let min = Infinity;
  for (let r = 0; r < runs; r += 1) {
    const t = process.hrtime.bigint();
    f();
    min = Math.min(min, Number(process.hrtime.bigint() - t) / 1e9);
  }
  return min;
}

const calls = 20000;
const alone = best(3, () => {
  let x = 1n;
  for (let i = 0; i < calls; i += 1) x = poseidon2([x, 2n]);
}) / calls;
const insert = best(3, () => {
  const tree = new LeanIMT(hash2);
  tree.insertMany(input);
});
console.log(
  JSON.stringify({
    implementation: `@zk-kit/lean-imt ${pkgVersion("@zk-kit/lean-imt")}, poseidon-lite ${pkgVersion("poseidon-lite")}, node ${process.version}`,
    leaves: n,
    poseidon2_alone_us: +(alone * 1e6).toFixed(2),
    insert_many_leaves_per_s: Math.round(n / insert),
  }),
);
