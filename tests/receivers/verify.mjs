// Verifies one received webhook the way a Node.js receiver of each scheme does, with Node's
// built-in crypto only. Reads {"scheme", "key", "headers", "body" (base64)} on stdin; exits
// 0 and prints "ok" when the signature verifies, else 1 and says why. `key` is what the
// receiver holds: the `whpk_` public key for standard-ed25519, the `whsec_` secret's text
// for convoy and github.
import { createHmac, createPublicKey, timingSafeEqual, verify as verifySignature } from "node:crypto";

function same(a, b) {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

export function verify({ scheme, key, headers, body }) {
  const h = Object.fromEntries(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
  const raw = Buffer.from(body, "base64");
  if (scheme === "standard-ed25519") {
    const x = Buffer.from(key.replace(/^whpk_/, ""), "base64").toString("base64url");
    const publicKey = createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x }, format: "jwk" });
    const signed = Buffer.concat([Buffer.from(`${h["webhook-id"]}.${h["webhook-timestamp"]}.`), raw]);
    const ok = (h["webhook-signature"] || "").split(" ").some((entry) => {
      const [version, signature] = entry.split(",", 2);
      return version === "v1a" && verifySignature(null, signed, publicKey, Buffer.from(signature, "base64"));
    });
    return ok ? null : "no v1a signature verifies under the public key";
  }
  if (scheme === "github") {
    const expected = "sha256=" + createHmac("sha256", key).update(raw).digest("hex");
    return same(expected, h["x-hub-signature-256"] || "") ? null : `x-hub-signature-256 ${h["x-hub-signature-256"]}`;
  }
  if (scheme === "convoy") {
    const fields = (h["x-convoy-signature"] || "").split(",").map((f) => f.split("=", 2));
    const timestamp = (fields.find(([k]) => k === "t") || [])[1] || "";
    const expected = createHmac("sha256", key).update(`${timestamp},`).update(raw).digest("hex");
    return fields.some(([k, v]) => k === "v1" && same(expected, v)) ? null : `x-convoy-signature ${h["x-convoy-signature"]}`;
  }
  return `unknown scheme ${scheme}`;
}

let input = "";
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", () => {
  const problem = verify(JSON.parse(input));
  console.log(problem || "ok");
  process.exit(problem ? 1 : 0);
});
