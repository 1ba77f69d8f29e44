// gRPC-Web over fetch with a hand-written protobuf writer and reader: enough for the page's
// requests (strings, bytes, varints, doubles, nested messages) and its answers. Field numbers come
// from the page's one table (index.html, `proto-fields`), which tests/browser.rs checks.
"use strict";

const GrpcWeb = (() => {
  const utf8 = new TextEncoder();

  // --- Writer: a message is a list of byte arrays, joined by `concat`. ---
  function varint(out, n) {
    const bytes = [];
    while (n >= 0x80) { bytes.push((n % 0x80) | 0x80); n = Math.floor(n / 0x80); }
    bytes.push(n);
    out.push(Uint8Array.from(bytes));
  }
  function concat(parts) {
    const all = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
    let at = 0;
    for (const part of parts) { all.set(part, at); at += part.length; }
    return all;
  }
  const bytesField = (out, field, bytes) => { varint(out, (field << 3) | 2); varint(out, bytes.length); out.push(bytes); };
  const stringField = (out, field, text) => bytesField(out, field, utf8.encode(text));
  const varintField = (out, field, n) => { varint(out, field << 3); varint(out, n); };
  function doubleField(out, field, value) {
    varint(out, (field << 3) | 1);
    const bytes = new Uint8Array(8);
    new DataView(bytes.buffer).setFloat64(0, value, true);
    out.push(bytes);
  }

  // --- Reader: field number -> list of raw values (varints as numbers, fixed64 as doubles,
  // length-delimited as bytes, to decode again or as text). ---
  function decode(bytes) {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const fields = {};
    let pos = 0;
    const readVarint = () => {
      let n = 0, scale = 1, b;
      do { b = bytes[pos++]; n += (b & 0x7f) * scale; scale *= 0x80; } while (b & 0x80);
      return n;
    };
    while (pos < bytes.length) {
      const key = readVarint(), field = Math.floor(key / 8), wire = key & 7;
      let value;
      if (wire === 0) value = readVarint();
      else if (wire === 1) { value = view.getFloat64(pos, true); pos += 8; }
      else if (wire === 2) { const len = readVarint(); value = bytes.subarray(pos, pos + len); pos += len; }
      else if (wire === 5) { value = view.getFloat32(pos, true); pos += 4; }
      else throw new Error("unsupported wire type " + wire);
      (fields[field] ||= []).push(value);
    }
    return fields;
  }
  const text = (fields, n) => fields[n] ? new TextDecoder().decode(fields[n][0]) : "";
  const num = (fields, n) => fields[n] ? fields[n][0] : 0;
  const message = (fields, n) => fields[n] ? decode(fields[n][0]) : {};
  // A packed `repeated double`: 8 bytes each, little-endian.
  function doubles(fields, n) {
    if (!fields[n]) return [];
    return fields[n].flatMap((packed) => {
      if (typeof packed === "number") return [packed];
      const view = new DataView(packed.buffer, packed.byteOffset, packed.byteLength);
      return Array.from({ length: packed.byteLength / 8 }, (_, i) => view.getFloat64(8 * i, true));
    });
  }

  function parseTrailers(bytes) {
    const trailers = {};
    for (const line of new TextDecoder().decode(bytes).split("\r\n")) {
      const colon = line.indexOf(":");
      if (colon > 0) trailers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
    }
    return trailers;
  }

  // Calls `path` (a server-streaming or unary method) with `request` bytes; `onMessage` gets each
  // answer's fields. Frames are a flag byte, a 4-byte big-endian length, the payload; a frame
  // with the 0x80 flag holds the trailers. Throws "grpc-status N: message" on an error status.
  async function call(path, request, { token, signal }, onMessage) {
    const body = new Uint8Array(5 + request.length);
    new DataView(body.buffer).setUint32(1, request.length);
    body.set(request, 5);
    const headers = { "content-type": "application/grpc-web+proto", "x-grpc-web": "1", "accept": "application/grpc-web+proto" };
    if (token) headers.authorization = "Bearer " + token;
    const response = await fetch(path, { method: "POST", headers, body, signal });
    if (!response.ok) throw new Error("HTTP " + response.status + " " + response.statusText);
    let status = response.headers.get("grpc-status"), detail = response.headers.get("grpc-message");
    const reader = response.body.getReader();
    let buffer = new Uint8Array(0);
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      buffer = concat([buffer, value]);
      while (buffer.length >= 5) {
        const length = new DataView(buffer.buffer, buffer.byteOffset).getUint32(1);
        if (buffer.length < 5 + length) break;
        const flag = buffer[0], payload = buffer.subarray(5, 5 + length);
        buffer = buffer.subarray(5 + length);
        if (flag & 0x80) {
          const trailers = parseTrailers(payload);
          status = trailers["grpc-status"]; detail = trailers["grpc-message"];
          continue;
        }
        onMessage(decode(payload));
      }
    }
    if (status !== null && status !== undefined && status !== "0") {
      throw new Error("grpc-status " + status + (detail ? ": " + decodeURIComponent(detail) : ""));
    }
    if (status === null || status === undefined) throw new Error("the stream ended without a grpc-status");
  }

  return { concat, bytesField, stringField, varintField, doubleField, decode, text, num, message, doubles, call };
})();
