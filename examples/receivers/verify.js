#!/usr/bin/env node
// Verify a keygate webhook (Standard Webhooks v1) with nothing but Node's standard library.
//
// Usage: verify.js SECRET WEBHOOK_ID WEBHOOK_TIMESTAMP WEBHOOK_SIGNATURE BODY_FILE [NOW]
// Exits 0 and prints "valid", or exits 1 with the reason.
"use strict";
const crypto = require("node:crypto");
const fs = require("node:fs");

const TOLERANCE = 5 * 60;

function verify(secret, id, timestamp, signatures, body, now = Math.floor(Date.now() / 1000)) {
  const key = Buffer.from(secret.replace(/^whsec_/, ""), "base64");
  if (Math.abs(now - Number(timestamp)) > TOLERANCE) {
    throw new Error("timestamp outside the 5-minute tolerance");
  }
  const signed = Buffer.concat([Buffer.from(`${id}.${timestamp}.`), body]);
  const expected = crypto.createHmac("sha256", key).update(signed).digest();
  for (const entry of signatures.split(" ")) {
    const [version, signature] = entry.split(",", 2);
    if (version !== "v1" || !signature) continue;
    const given = Buffer.from(signature, "base64");
    if (given.length === expected.length && crypto.timingSafeEqual(given, expected)) return;
  }
  throw new Error("no signature matches");
}

const [secret, id, timestamp, signatures, bodyFile, now] = process.argv.slice(2);
try {
  verify(secret, id, timestamp, signatures, fs.readFileSync(bodyFile), now ? Number(now) : undefined);
  console.log("valid");
} catch (err) {
  console.error(`not valid: ${err.message}`);
  process.exit(1);
}
