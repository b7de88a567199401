// Prints zk-kit's LeanIMT root (poseidon2) of the leaves in a JSON file.
//
// Usage: node root.mjs LEAVES.json
//   LEAVES.json is an array of leaves as 0x-hex or decimal strings; the
//   root is printed as 0x + 64 hex digits.
import { readFileSync } from "node:fs";
import { LeanIMT } from "@zk-kit/lean-imt";
import { hash2, hex32 } from "./common.mjs";

const path = process.argv[2];
if (!path) {
  process.stderr.write("usage: node root.mjs LEAVES.json\n");
  process.exit(2);
}
const leaves = JSON.parse(readFileSync(path, "utf8")).map((x) => BigInt(x));
const tree = new LeanIMT(hash2, leaves);
process.stdout.write(hex32(tree.root) + "\n");
