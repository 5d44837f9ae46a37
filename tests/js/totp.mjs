// RFC 6238 TOTP as an authenticator app computes it, shared by the Chromium scripts
// (console.mjs, a11y.mjs) that enrol a second factor through the console.
import { createHmac } from 'node:crypto';

// HMAC-SHA-1, 6 digits, 30 s steps, from the RFC 4648 base32 key the enrolment page shows.
export function base32(text) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = 0, value = 0;
  const out = [];
  for (const c of text.replace(/[\s=]/g, '').toUpperCase()) {
    const i = alphabet.indexOf(c);
    if (i < 0) throw new Error(`not base32: ${c}`);
    value = ((value << 5) | i) & 0xffff;
    bits += 5;
    if (bits >= 8) { out.push((value >>> (bits - 8)) & 0xff); bits -= 8; }
  }
  return Buffer.from(out);
}
export function totp(key, seconds = Date.now() / 1000) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(seconds / 30)));
  const h = createHmac('sha1', base32(key)).update(counter).digest();
  const offset = h[h.length - 1] & 0x0f; // RFC 4226 §5.4, dynamic truncation
  return String((h.readUInt32BE(offset) & 0x7fffffff) % 1_000_000).padStart(6, '0');
}
