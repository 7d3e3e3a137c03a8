// Bytes -> XML text. rss-parser only honours a charset in Content-Type (and only a handful of
// Node's own encodings), and chokes on a BOM or junk before the XML, so we do this ourselves.
// Order of authority follows RFC 7303: a BOM, then the Content-Type charset, then the XML
// declaration, then UTF-8. Labels in the wild are often wrong (a server's default
// "charset=ISO-8859-1" on a UTF-8 feed, a UTF-8 declaration on Windows-1252 bytes), so, as
// Python's feedparser does, a label the bytes contradict is passed over for the next one.

import { TextDecoder } from "node:util";

export interface DecodedFeed {
  xml: string;
  /** The encoding actually used (TextDecoder's canonical name). */
  charset: string;
  /** Where the charset came from, for diagnostics. */
  charsetSource: "bom" | "content-type" | "xml-declaration" | "default" | "fallback" | "sniffed";
}

function bomCharset(b: Uint8Array): string | undefined {
  if (b.length >= 3 && b[0] === 0xef && b[1] === 0xbb && b[2] === 0xbf) return "utf-8";
  if (b.length >= 2 && b[0] === 0xff && b[1] === 0xfe) return "utf-16le";
  if (b.length >= 2 && b[0] === 0xfe && b[1] === 0xff) return "utf-16be";
  return undefined;
}

export function charsetFromContentType(contentType: string | null | undefined): string | undefined {
  const m = /;\s*charset\s*=\s*(?:"([^"]*)"|([^;\s]+))/i.exec(contentType ?? "");
  const name = (m?.[1] ?? m?.[2] ?? "").trim();
  return name || undefined;
}

function charsetFromXmlDeclaration(b: Uint8Array): string | undefined {
  // The declaration is ASCII in every encoding we can read this way; latin1 maps bytes 1:1.
  // Look past a little junk, since junk before <?xml is something we tolerate.
  const head = Buffer.from(b.subarray(0, 2048)).toString("latin1");
  const m = /<\?xml\s[^>]*?encoding\s*=\s*["']([A-Za-z0-9._:-]+)["']/.exec(head);
  return m?.[1];
}

// windows-1252 at 0x80-0x9F (the rest is ISO-8859-1, byte = code point). Node 20's TextDecoder
// for "windows-1252" (and "iso-8859-1", "latin1", "us-ascii", which WHATWG maps to it) decodes
// these bytes as C1 controls, losing smart quotes, dashes and the euro sign (nodejs/node#56542),
// so we decode that one encoding ourselves. The five unassigned bytes map to C1, as WHATWG says.
const CP1252_HIGH = "€\u0081‚ƒ„…†‡ˆ‰Š‹Œ\u008DŽ\u008F\u0090‘’“”•–—˜™š›œ\u009DžŸ";

export function decodeWindows1252(bytes: Uint8Array): string {
  let out = "";
  for (let i = 0; i < bytes.length; i += 8192) {
    const codes = Array.from(bytes.subarray(i, i + 8192), (b) => (b >= 0x80 && b <= 0x9f ? CP1252_HIGH.charCodeAt(b - 0x80) : b));
    out += String.fromCharCode(...codes);
  }
  return out;
}

/** A decoder for a label, or undefined when Node does not know the label. */
function decoderFor(label: string): { encoding: string; decode(bytes: Uint8Array): string } | undefined {
  let decoder: TextDecoder;
  try {
    // Not fatal: one bad byte becomes U+FFFD instead of losing the whole feed.
    decoder = new TextDecoder(label, { fatal: false, ignoreBOM: false });
  } catch {
    return undefined;
  }
  if (decoder.encoding === "windows-1252") return { encoding: "windows-1252", decode: decodeWindows1252 };
  return { encoding: decoder.encoding, decode: (bytes) => decoder.decode(bytes) };
}

// Encodings in which every byte sequence decodes, so a wrong one never shows as an error.
const SINGLE_BYTE = /^(windows-125\d|windows-874|iso-8859-\d+|koi8-[ru]|macintosh|ibm866|x-mac-cyrillic)$/;

function isUtf8(bytes: Uint8Array): boolean {
  try {
    new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    return true;
  } catch {
    return false;
  }
}

export function decodeFeedBytes(bytes: Uint8Array, contentType?: string | null): DecodedFeed {
  const bom = bomCharset(bytes);
  if (bom) {
    const decoder = decoderFor(bom)!;
    return { xml: trimToXml(decoder.decode(bytes)), charset: decoder.encoding, charsetSource: "bom" };
  }
  const nonAscii = bytes.some((b) => b >= 0x80);
  const utf8 = !nonAscii || isUtf8(bytes);
  const hints: [string | undefined, DecodedFeed["charsetSource"]][] = [
    [charsetFromContentType(contentType), "content-type"],
    [charsetFromXmlDeclaration(bytes), "xml-declaration"],
  ];
  let named = false;
  for (const [label, from] of hints) {
    if (!label) continue;
    named = true;
    const decoder = decoderFor(label);
    // An unknown name (typos, vendor names) falls through to the next hint.
    if (!decoder) continue;
    // We could read the declaration as ASCII, so the bytes are not UTF-16 whatever it claims
    // (a real UTF-16 document carries a BOM, handled above).
    if (from === "xml-declaration" && decoder.encoding.startsWith("utf-16")) continue;
    // UTF-8 that does not decode is not UTF-8: try the next hint rather than store U+FFFD.
    if (decoder.encoding === "utf-8" && !utf8) continue;
    // Non-ASCII bytes that are well-formed UTF-8 are next to never meant as single-byte text
    // ("CafÃ©"): the label is a server default, not the feed's encoding.
    if (SINGLE_BYTE.test(decoder.encoding) && nonAscii && utf8) return decoded(bytes, "utf-8", "sniffed");
    return { xml: trimToXml(decoder.decode(bytes)), charset: decoder.encoding, charsetSource: from };
  }
  if (utf8) return decoded(bytes, "utf-8", named ? "fallback" : "default");
  // Not UTF-8 and no label that fits: Windows-1252, the usual encoding of unlabelled legacy text
  // (and a superset of ISO-8859-1), reads every byte.
  return decoded(bytes, "windows-1252", "sniffed");
}

function decoded(bytes: Uint8Array, label: string, source: DecodedFeed["charsetSource"]): DecodedFeed {
  const decoder = decoderFor(label)!;
  return { xml: trimToXml(decoder.decode(bytes)), charset: decoder.encoding, charsetSource: source };
}

/** Drop a BOM and anything before the XML starts (PHP warnings, blank lines, stray text). */
export function trimToXml(text: string): string {
  const s = text.replace(/^\uFEFF+/, "");
  // Prefer the declaration when one sits near the top: junk is often HTML ("<b>Warning</b>"),
  // so the first "<" would cut in the wrong place.
  const decl = s.slice(0, 4096).indexOf("<?xml");
  if (decl > 0) return s.slice(decl);
  if (decl === 0) return s;
  const lt = s.indexOf("<");
  return lt > 0 ? s.slice(lt) : s;
}
