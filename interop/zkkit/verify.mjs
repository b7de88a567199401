// Verifies LeanIMT Merkle proofs with zk-kit itself (poseidon2 hash).
//
// Usage:
//   node verify.mjs PROOFS.json
//     PROOFS.json is an array of
//       { "root": dec, "leaf": dec, "index": number, "siblings": [dec...], "expect": bool }
//     (zk-kit's LeanIMTMerkleProof with bigints as decimal strings). Each proof is
//     checked with LeanIMT.verifyProof(proof, (a, b) => poseidon2([a, b])) and the
//     result compared with "expect". A proof that makes verifyProof throw counts as
//     rejected (false). Prints one line per mismatch and "ok N" or "FAILED k of N".
//     Exit code 0 only if every result matched its expectation.
//
//   node verify.mjs --emit-reference SIZE INDEX
//     Prints, as JSON, zk-kit's tree.generateProof(INDEX) for a tree of SIZE leaves
//     built by the leaf rule (bigints as decimal strings).
//
// Exit codes: 0 all matched, 1 some mismatched, 2 usage or input error.
import { readFileSync } from "node:fs";
import { LeanIMT } from "@zk-kit/lean-imt";
import { hash2, leaves } from "./common.mjs";

function usage(msg) {
  if (msg) process.stderr.write(`error: ${msg}\n`);
  process.stderr.write(
    "usage: node verify.mjs PROOFS.json\n" + "       node verify.mjs --emit-reference SIZE INDEX\n",
  );
  process.exit(2);
}

function parseNonNegInt(s, name) {
  if (typeof s !== "string" || !/^[0-9]+$/.test(s)) usage(`${name} must be a non-negative integer`);
  const n = Number(s);
  if (!Number.isSafeInteger(n)) usage(`${name} is too large`);
  return n;
}

const dec = (x) => x.toString(10);

function emitReference(sizeArg, indexArg) {
  const size = parseNonNegInt(sizeArg, "SIZE");
  const index = parseNonNegInt(indexArg, "INDEX");
  if (size < 1) usage("SIZE must be at least 1");
  if (index >= size) usage("INDEX must be less than SIZE");
  const tree = new LeanIMT(hash2, leaves(size));
  const proof = tree.generateProof(index);
  const outp = {
    root: dec(proof.root),
    leaf: dec(proof.leaf),
    index: proof.index,
    siblings: proof.siblings.map(dec),
  };
  process.stdout.write(JSON.stringify(outp) + "\n");
}

// Decimal (or 0x-hex) string -> bigint; anything else is passed through as is so
// that malformed proofs reach zk-kit's own checks.
function toBig(x) {
  if (typeof x === "string" && /^(0x[0-9a-fA-F]+|[0-9]+)$/.test(x)) return BigInt(x);
  return x;
}

function verifyFile(path) {
  let cases;
  try {
    cases = JSON.parse(readFileSync(path, "utf8"));
  } catch (e) {
    usage(`cannot read ${path}: ${e.message}`);
  }
  if (!Array.isArray(cases)) usage(`${path}: expected a JSON array`);
  let failed = 0;
  cases.forEach((c, i) => {
    if (c === null || typeof c !== "object" || typeof c.expect !== "boolean") {
      failed += 1;
      process.stdout.write(`case ${i}: malformed entry (needs an object with boolean "expect")\n`);
      return;
    }
    const proof = {
      root: toBig(c.root),
      leaf: toBig(c.leaf),
      index: c.index,
      siblings: Array.isArray(c.siblings) ? c.siblings.map(toBig) : c.siblings,
    };
    let got;
    let note = "";
    try {
      got = LeanIMT.verifyProof(proof, hash2) === true;
    } catch (e) {
      got = false;
      note = ` (verifyProof threw: ${e.message})`;
    }
    if (got !== c.expect) {
      failed += 1;
      process.stdout.write(
        `case ${i}: expected ${c.expect}, zk-kit returned ${got}${note}` +
          ` [index=${JSON.stringify(c.index)}, siblings=${Array.isArray(c.siblings) ? c.siblings.length : "?"}]\n`,
      );
    }
  });
  if (failed === 0) {
    process.stdout.write(`ok ${cases.length}\n`);
    process.exit(0);
  }
  process.stdout.write(`FAILED ${failed} of ${cases.length}\n`);
  process.exit(1);
}

const args = process.argv.slice(2);
if (args[0] === "--emit-reference") {
  if (args.length !== 3) usage("--emit-reference takes SIZE and INDEX");
  emitReference(args[1], args[2]);
} else if (args.length === 1 && !args[0].startsWith("--")) {
  verifyFile(args[0]);
} else {
  usage();
}
