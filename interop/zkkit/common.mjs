// Shared helpers for gen.mjs and verify.mjs: the BN254 scalar field, the
// deterministic leaf rule and hex formatting.
import { readFileSync } from "node:fs";
import { keccak256, toUtf8Bytes } from "ethers";
import { poseidon2 } from "poseidon-lite";

/** BN254 scalar field modulus p. */
export const P = 21888242871839275222246405745257275088548364400416034343698204186575808495617n;

/** M = keccak256("ringtree leaves") mod p. */
export const M = BigInt(keccak256(toUtf8Bytes("ringtree leaves"))) % P;

export const LEAF_RULE = "leaf i (0-based) = ((i + 1) * M) mod p, 32 bytes big-endian";

/** Leaf i (0-based) as a field element. */
export function leaf(i) {
  return ((BigInt(i) + 1n) * M) % P;
}

/** Leaves 0..n-1. */
export function leaves(n) {
  const out = new Array(n);
  for (let i = 0; i < n; i += 1) out[i] = leaf(i);
  return out;
}

/** 0x + 64 hex digits, big-endian. */
export function hex32(x) {
  if (typeof x === "bigint") {
    if (x < 0n || x >= 1n << 256n) throw new Error(`value out of 256-bit range: ${x}`);
    return "0x" + x.toString(16).padStart(64, "0");
  }
  const b = Buffer.from(x);
  if (b.length !== 32) throw new Error(`expected 32 bytes, got ${b.length}`);
  return "0x" + b.toString("hex");
}

/** 32-byte big-endian encoding of a field element. */
export function be32(x) {
  return Buffer.from(x.toString(16).padStart(64, "0"), "hex");
}

/** The two-to-one hash used with zk-kit's LeanIMT. */
export const hash2 = (a, b) => poseidon2([a, b]);

/** Version of an installed package, read from node_modules. */
export function pkgVersion(name) {
  const url = new URL(`./node_modules/${name}/package.json`, import.meta.url);
  return JSON.parse(readFileSync(url, "utf8")).version;
}
