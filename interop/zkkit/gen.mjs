// Writes ../../tests/vectors/zkkit.json: reference roots and hashes produced
// by the JavaScript implementations that LeanIMT users run (zk-kit's LeanIMT,
// poseidon-lite, ethers' keccak256, Node's SHA-256).
//
// Usage: node gen.mjs [OUTPUT]   (default: ../../tests/vectors/zkkit.json)
//
// The output is deterministic: it depends only on the pinned package versions.
import { createHash } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { strict as assert } from "node:assert";
import { LeanIMT } from "@zk-kit/lean-imt";
import { keccak256 } from "ethers";
import * as poseidonLite from "poseidon-lite";
import { P, M, LEAF_RULE, leaf, leaves, hex32, be32, pkgVersion } from "./common.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const outPath = resolve(process.argv[2] ?? resolve(here, "../../tests/vectors/zkkit.json"));
const started = performance.now();
const log = (msg) =>
  process.stderr.write(`[${((performance.now() - started) / 1000).toFixed(1)}s] ${msg}\n`);

// ---------------------------------------------------------------------------
// Poseidon with memoization. The hash is a pure function, so caching it does not
// change any result; it lets the independent n-ary implementation below be
// checked against zk-kit's trees without paying for every hash twice (a wrong
// tree shape asks for different inputs and misses the cache).
const poseidonK = (k) => {
  const f = poseidonLite[`poseidon${k}`];
  if (typeof f !== "function") throw new Error(`poseidon-lite has no poseidon${k}`);
  return f;
};
const memo = new Map();
function poseidonMemo(children) {
  const key = children.map((c) => c.toString(16)).join(",");
  let v = memo.get(key);
  if (v === undefined) {
    v = poseidonK(children.length)(children);
    memo.set(key, v);
  }
  return v;
}
const hash2 = (a, b) => poseidonMemo([a, b]);

// ---------------------------------------------------------------------------
// Plain n-ary LeanIMT: level d+1 node j is the parent of level-d nodes
// [j*N, min((j+1)*N, len_d)); a group of one node is lifted unchanged, a group
// of k >= 2 nodes is hashGroup(those k). The root is the single top node.
function naryRoot(level, arity, hashGroup) {
  if (level.length === 0) throw new Error("empty tree has no root");
  while (level.length > 1) {
    const next = [];
    for (let start = 0; start < level.length; start += arity) {
      const group = level.slice(start, Math.min(start + arity, level.length));
      next.push(group.length === 1 ? group[0] : hashGroup(group));
    }
    level = next;
  }
  return level[0];
}

const keccakGroup = (group) => Buffer.from(keccak256(Buffer.concat(group)).slice(2), "hex");
const sha256Group = (group) => createHash("sha256").update(Buffer.concat(group)).digest();

// Fixed-seed PRNG (mulberry32) for the random tree sizes.
function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

const dedupSorted = (xs) => [...new Set(xs)].sort((a, b) => a - b);

// ---------------------------------------------------------------------------
const versions = {
  lean: pkgVersion("@zk-kit/lean-imt"),
  poseidon: pkgVersion("poseidon-lite"),
  ethers: pkgVersion("ethers"),
};
const out = {};
out.generated_by =
  `interop/zkkit/gen.mjs using @zk-kit/lean-imt ${versions.lean}, ` +
  `poseidon-lite ${versions.poseidon}, ethers ${versions.ethers} (keccak256), ` +
  `node:crypto (sha256)`;
out.modulus = hex32(P);
out.leaf_rule = LEAF_RULE;
out.M = hex32(M);

// Known answer: circomlib Poseidon(1, 2) (t = 3).
assert.equal(
  poseidonK(2)([1n, 2n]),
  7853200120776062878684798364095072458815029376092732009249414926327459813530n,
);

// Sanity of the leaf rule.
assert.equal(leaf(0), M);
assert.ok(leaves(5000).every((x) => x > 0n && x < P));

// --- poseidon2_incremental: zk-kit LeanIMT, insert one by one, k = 1..=2000.
{
  const tree = new LeanIMT(hash2);
  const roots = [];
  for (let i = 0; i < 2000; i += 1) {
    tree.insert(leaf(i));
    assert.equal(tree.size, i + 1);
    roots.push(tree.root);
  }
  // The n-ary implementation with N = 2 must reproduce zk-kit's binary roots.
  for (let n = 1; n <= 300; n += 1) {
    assert.equal(naryRoot(leaves(n), 2, poseidonMemo), roots[n - 1], `N=2 mismatch at size ${n}`);
  }
  // insertMany from scratch must agree with incremental insert.
  for (const n of [1, 2, 3, 7, 64, 65, 1000, 2000]) {
    assert.equal(new LeanIMT(hash2, leaves(n)).root, roots[n - 1], `insertMany mismatch at ${n}`);
  }
  out.poseidon2_incremental = roots.map(hex32);
  log("poseidon2_incremental done (n-ary N=2 check 1..300 passed)");
}

// --- poseidon2_random: 12 sizes in 2001..=100000 from mulberry32(0x52494e47)
// plus 100000; one zk-kit tree grown with insertMany and sampled at sorted sizes.
{
  const rnd = mulberry32(0x52494e47);
  const picked = new Set();
  while (picked.size < 12) {
    const s = 2001 + (rnd() % 98000); // 2001..=100000
    if (s !== 100000) picked.add(s);
  }
  const sizes = dedupSorted([...picked, 100000]);
  assert.equal(sizes.length, 13);
  const tree = new LeanIMT(hash2);
  const all = leaves(100000);
  const result = [];
  for (const n of sizes) {
    tree.insertMany(all.slice(tree.size, n));
    assert.equal(tree.size, n);
    const root = tree.root;
    // Independent check with the n-ary implementation (N = 2).
    assert.equal(naryRoot(all.slice(0, n), 2, poseidonMemo), root, `N=2 mismatch at size ${n}`);
    result.push({ size: n, root: hex32(root) });
    log(`poseidon2_random size ${n}`);
  }
  out.poseidon2_random = result;
}

// --- poseidon_k: poseidon-lite poseidonK on k consecutive leaves.
{
  const pk = {};
  for (let k = 1; k <= 12; k += 1) {
    pk[k] = [0, 7, 1000].map((off) => {
      const inputs = leaves(off + k).slice(off);
      return { inputs: inputs.map(hex32), output: hex32(poseidonK(k)(inputs)) };
    });
  }
  out.poseidon_k = pk;
  log("poseidon_k done");
}

// --- nary_poseidon: n-ary LeanIMT, group hash = poseidonK(children).
{
  const res = [];
  for (const N of [3, 4, 5, 8, 12]) {
    const sizes = dedupSorted([1, 2, 3, N - 1, N, N + 1, N * N - 1, N * N, N * N + 1, 1000, 4321]);
    const all = leaves(4321);
    const roots = sizes.map((n) => ({ size: n, root: hex32(naryRoot(all.slice(0, n), N, poseidonMemo)) }));
    res.push({ arity: N, roots });
    log(`nary_poseidon N=${N} done`);
  }
  out.nary_poseidon = res;
}

// --- keccak / sha256: parent = H(c0 || c1 || ...) over 32-byte children.
{
  const sizes = [1, 2, 3, 4, 5, 15, 16, 17, 255, 256, 257, 1000, 4097];
  const all = leaves(4097).map(be32);
  // Spot-check the byte-level hashes against known values.
  assert.equal(
    keccak256(new Uint8Array(0)),
    "0xc5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470",
  );
  assert.equal(
    createHash("sha256").update("").digest("hex"),
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
  );
  for (const [name, h] of [["keccak", keccakGroup], ["sha256", sha256Group]]) {
    out[name] = [2, 3, 4, 16].map((N) => ({
      arity: N,
      roots: sizes.map((n) => ({ size: n, root: hex32(naryRoot(all.slice(0, n), N, h)) })),
    }));
  }
  // With N = 2 the rule is zk-kit's binary LeanIMT with a bytes hash.
  const kTree = new LeanIMT((a, b) => keccakGroup([a, b]), all.slice(0, 1000));
  assert.equal(hex32(kTree.root), out.keccak[0].roots.find((r) => r.size === 1000).root);
  log("keccak / sha256 done");
}

// ---------------------------------------------------------------------------
// Compact JSON: one value per line.
function isScalar(v) {
  return v === null || typeof v !== "object";
}
function fmt(v, ind) {
  if (isScalar(v)) return JSON.stringify(v);
  const pad = " ".repeat(ind + 1);
  if (Array.isArray(v)) {
    if (v.length === 0) return "[]";
    return "[\n" + v.map((x) => pad + fmt(x, ind + 1)).join(",\n") + "\n" + " ".repeat(ind) + "]";
  }
  const entries = Object.entries(v);
  // Objects whose values are scalars or arrays of scalars stay on one line.
  if (entries.every(([, x]) => isScalar(x) || (Array.isArray(x) && x.every(isScalar)))) {
    return JSON.stringify(v);
  }
  return (
    "{\n" +
    entries.map(([k, x]) => pad + JSON.stringify(k) + ": " + fmt(x, ind + 1)).join(",\n") +
    "\n" +
    " ".repeat(ind) +
    "}"
  );
}

const text = fmt(out, 0) + "\n";
assert.deepEqual(JSON.parse(text), out);
mkdirSync(dirname(outPath), { recursive: true });
writeFileSync(outPath, text);
log(`wrote ${outPath} (${text.length} bytes, ${memo.size} distinct poseidon hashes)`);
