// Self-test of verify.mjs: emits zk-kit reference proofs, feeds them back with
// expect=true, and tampered copies with expect=false; also checks that a wrong
// expectation is reported as a failure.  Usage: node selftest.mjs
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { strict as assert } from "node:assert";

const here = dirname(fileURLToPath(import.meta.url));
const verify = join(here, "verify.mjs");
const emit = (size, index) =>
  JSON.parse(execFileSync(process.execPath, [verify, "--emit-reference", String(size), String(index)]));
const run = (file) => spawnSync(process.execPath, [verify, file], { encoding: "utf8" });
const bump = (d) => (BigInt(d) + 1n).toString();

const cases = [];
for (const [size, index] of [[1, 0], [2, 1], [3, 2], [6, 4], [13, 12], [13, 5], [100, 37], [257, 256]]) {
  const p = emit(size, index);
  cases.push({ ...p, expect: true });
  cases.push({ ...p, leaf: bump(p.leaf), expect: false });
  cases.push({ ...p, root: bump(p.root), expect: false });
  if (p.siblings.length > 0) {
    const s = [...p.siblings];
    s[s.length - 1] = bump(s[s.length - 1]);
    cases.push({ ...p, siblings: s, expect: false });
    cases.push({ ...p, siblings: p.siblings.slice(1), expect: false });
    cases.push({ ...p, index: p.index ^ 1, expect: false });
  }
}

const dir = mkdtempSync(join(tmpdir(), "zkkit-selftest-"));
try {
  const good = join(dir, "good.json");
  writeFileSync(good, JSON.stringify(cases));
  let r = run(good);
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, new RegExp(`^ok ${cases.length}\\n$`));

  const bad = join(dir, "bad.json");
  writeFileSync(bad, JSON.stringify([cases[0], { ...cases[1], expect: true }]));
  r = run(bad);
  assert.equal(r.status, 1, r.stdout + r.stderr);
  assert.match(r.stdout, /FAILED 1 of 2\n$/);

  r = run(join(dir, "missing.json"));
  assert.equal(r.status, 2);
  console.log(`selftest: ${cases.length} proofs round-tripped, 1 planted mismatch caught`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
