// Checks an OpenAPI document with an external validator
// (@seriousme/openapi-schema-validator) and, optionally, real responses
// against the response schemas the document gives (with Ajv).
//
//   node check.mjs NODE_MODULES_DIR DOC.json [SAMPLES.json]
//
// SAMPLES.json: [{name, method, path (as templated in the document), status,
// content_type, body}]. Each sample must match a documented operation and
// response (exact status, then 4XX/5XX, then default); a JSON body must
// validate against that response's application/json schema.
// Prints one line per check; exits 1 if any failed.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [modules, docPath, samplesPath] = process.argv.slice(2);
if (!modules || !docPath) {
  console.error("usage: node check.mjs NODE_MODULES_DIR DOC.json [SAMPLES.json]");
  process.exit(2);
}
const load = (rel) => import(pathToFileURL(join(modules, rel)).href);
const { Validator } = await load("@seriousme/openapi-schema-validator/index.js");
const AjvModule = await load("ajv/dist/ajv.js");
const Ajv = AjvModule.default.default ?? AjvModule.default;

let failed = 0;
const validator = new Validator();
const doc = JSON.parse(readFileSync(docPath, "utf8"));
const res = await validator.validate(doc);
if (res.valid) {
  console.log(`ok document: valid OpenAPI ${validator.version}`);
} else {
  failed++;
  console.log(`FAIL document: not valid OpenAPI: ${JSON.stringify(res.errors, null, 1).slice(0, 4000)}`);
}

if (samplesPath && res.valid) {
  const resolved = validator.resolveRefs();
  const ajv = new Ajv({ strict: false, allErrors: true });
  const samples = JSON.parse(readFileSync(samplesPath, "utf8"));
  for (const s of samples) {
    const where = `${s.name} (${s.method} ${s.path} -> ${s.status})`;
    const op = resolved.paths?.[s.path]?.[s.method.toLowerCase()];
    if (!op) {
      failed++;
      console.log(`FAIL ${where}: the document has no such operation`);
      continue;
    }
    const code = String(s.status);
    const response = op.responses?.[code] ?? op.responses?.[`${code[0]}XX`] ?? op.responses?.default;
    if (!response) {
      failed++;
      console.log(`FAIL ${where}: status ${code} is not documented`);
      continue;
    }
    const type = (s.content_type || "").split(";")[0].trim();
    if (type !== "application/json") {
      if (response.content && !response.content[type]) {
        failed++;
        console.log(`FAIL ${where}: content type ${type} is not documented (${Object.keys(response.content)})`);
      } else {
        console.log(`ok ${where}: ${type}`);
      }
      continue;
    }
    const schema = response.content?.["application/json"]?.schema;
    if (!schema) {
      failed++;
      console.log(`FAIL ${where}: no application/json schema documented for this response`);
      continue;
    }
    let body;
    try {
      body = JSON.parse(s.body);
    } catch (e) {
      failed++;
      console.log(`FAIL ${where}: body is not JSON: ${e}`);
      continue;
    }
    const validate = ajv.compile(schema);
    if (validate(body)) {
      console.log(`ok ${where}`);
    } else {
      failed++;
      const errors = validate.errors.map((e) => `${e.instancePath || "/"} ${e.message} ${JSON.stringify(e.params)}`);
      console.log(`FAIL ${where}: ${errors.join("; ")}\n  body: ${s.body.slice(0, 600)}`);
    }
  }
}
console.log(failed ? `${failed} check(s) failed` : "all checks passed");
process.exit(failed ? 1 : 0);
